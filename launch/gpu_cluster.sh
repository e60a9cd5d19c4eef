#!/usr/bin/env bash
# Multi-node GPU jobs: one process per node, all of the node's GPUs, joined by
# jax.distributed. First, once, on a filesystem every node mounts (the checkout and
# $BIGSSL_VENV, default ~/bigssl_venv):
#
#      launch/gpu_cluster.sh [--dry-run] setup     # python3.11 venv + pip install -e '.[gpu,gcs]'
#
# Then two ways to start them:
#
# 1. Under SLURM (inside an allocation, or see launch/slurm.sbatch), one srun for all nodes;
#    JAX reads the coordinator, process count and index from SLURM's variables:
#
#      launch/gpu_cluster.sh [--dry-run] srun --nodes=N [--gpus_per_node=G] STAGE [ARGS...]
#
# 2. Anywhere else, the same command on every node, each with its own --process_id
#    (0 on the coordinator node):
#
#      launch/gpu_cluster.sh [--dry-run] node --coordinator=HOST:PORT --num_processes=N \
#          --process_id=I STAGE [ARGS...]
#
#    which exports JAX_COORDINATOR_ADDRESS, BIGSSL_NUM_PROCESSES and BIGSSL_PROCESS_ID
#    (read by bigssl_jax/distributed.py) and runs launch/on_worker.sh STAGE ARGS...
#
# --dry-run prints the exact command (and environment) and runs nothing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DRY_RUN=0

usage() {
  sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
  echo "gpu_cluster.sh: $*" >&2
  exit 2
}

# Runs (or, with --dry-run, prints) one command.
run() {
  if ((DRY_RUN)); then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

# The venv launch/on_worker.sh activates, with the CUDA build of the pinned jaxlib.
cmd_setup() {
  (($# == 0)) || die "setup takes no arguments"
  local venv="${BIGSSL_VENV:-${HOME}/bigssl_venv}"
  run python3.11 -m venv "${venv}"
  run "${venv}/bin/pip" install -q -e "${HERE}/..[gpu,gcs]"
}

cmd_srun() {
  local nodes="" gpus=8
  while (($#)); do
    case "$1" in
      --nodes=*) nodes="${1#*=}" ;;
      --gpus_per_node=*) gpus="${1#*=}" ;;
      -*) die "srun: unknown option $1" ;;
      *) break ;;
    esac
    shift
  done
  [[ -n "${nodes}" ]] || die "srun: --nodes=N is required"
  (($#)) || die "srun: a STAGE is required"
  run srun --nodes="${nodes}" --ntasks-per-node=1 --gpus-per-node="${gpus}" \
    --kill-on-bad-exit=1 "${HERE}/on_worker.sh" "$@"
}

cmd_node() {
  local coordinator="" num_processes="" process_id=""
  while (($#)); do
    case "$1" in
      --coordinator=*) coordinator="${1#*=}" ;;
      --num_processes=*) num_processes="${1#*=}" ;;
      --process_id=*) process_id="${1#*=}" ;;
      -*) die "node: unknown option $1" ;;
      *) break ;;
    esac
    shift
  done
  [[ "${coordinator}" == *:* ]] || die "node: --coordinator=HOST:PORT is required"
  [[ "${num_processes}" =~ ^[0-9]+$ ]] || die "node: --num_processes=N is required"
  [[ "${process_id}" =~ ^[0-9]+$ ]] || die "node: --process_id=I is required"
  ((process_id < num_processes)) || die "node: --process_id must be below --num_processes"
  (($#)) || die "node: a STAGE is required"
  run env JAX_COORDINATOR_ADDRESS="${coordinator}" BIGSSL_NUM_PROCESSES="${num_processes}" \
    BIGSSL_PROCESS_ID="${process_id}" "${HERE}/on_worker.sh" "$@"
}

main() {
  if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
  fi
  (($#)) || { usage >&2; exit 2; }
  local mode="$1"
  shift
  case "${mode}" in
    setup) cmd_setup "$@" ;;
    srun) cmd_srun "$@" ;;
    node) cmd_node "$@" ;;
    -h | --help) usage ;;
    *) die "unknown mode ${mode} (setup, srun or node)" ;;
  esac
}

main "$@"
