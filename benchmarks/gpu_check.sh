#!/usr/bin/env bash
# The GPU figures of issue 26 in one call (about 8 minutes on an H100; docs/accelerators.md):
#   1. the BEST-RQ pre-training step of L and of XL, bf16 (the platform's defaults);
#   2. XL again with XLA's attention instead of cuDNN's, and with no remat (what the defaults
#      buy);
#   3. the CTC and RNN-T fine-tuning steps of L;
#   4. the small encoder's step on the GPU against one CPU device in float32 (same loss to a
#      bf16 tolerance).
# Each run is its own process (clean peak memory) under `timeout`; one failing does not stop
# the others. Under $OUT (default ./out): results.jsonl (each run's JSON lines, then
# {"run": NAME, "exit": CODE}), log.txt (stderr of every run), env.txt (GPU, versions).
# Needs JAX with a CUDA plugin; not TensorFlow, seqio, gin or clu.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
PY=${PYTHON:-python3}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__); print(jax.devices())'
} >"$OUT/env.txt" 2>&1

step() {  # step NAME SECONDS FLAGS...
  local name=$1 limit=$2 code
  shift 2
  echo "== $name: $*" | tee -a "$OUT/log.txt"
  timeout "$limit" $PY benchmarks/accelerator_step.py "$@" >>"$OUT/results.jsonl" 2>>"$OUT/log.txt"
  code=$?
  echo "{\"run\": \"$name\", \"exit\": $code}" >>"$OUT/results.jsonl"
  echo "   exit $code"
}

step L_pretrain 75 --models=L --objectives=pretrain --batch=16 --steps=5
step XL_pretrain 105 --models=XL --objectives=pretrain --batch=16 --steps=5
step XL_pretrain_xla_attention 75 --models=XL --objectives=pretrain --batch=16 --steps=5 --attention=xla
step XL_pretrain_no_remat 75 --models=XL --objectives=pretrain --batch=8 --steps=5 --remat=none
step L_finetune 90 --models=L --objectives=ctc,rnnt --batch=16 --steps=5
step small_check 50 --models=small --check --batch=4 --seconds=4
cat "$OUT/results.jsonl"
