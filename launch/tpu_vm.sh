#!/usr/bin/env bash
# Cloud TPU VM slices: create, set up every worker, run a bigssl stage on all workers, logs,
# stop, delete. Every gcloud call goes through `run`, so --dry-run prints exactly what would
# run (one command per line, shell-quoted) and runs nothing.
#
#   launch/tpu_vm.sh [options] create [--queued]     # a slice (or a queued resource)
#   launch/tpu_vm.sh [options] setup                 # code + venv + install on every worker
#   launch/tpu_vm.sh [options] run STAGE [ARGS...]   # `bigssl STAGE ARGS...` on every worker
#   launch/tpu_vm.sh [options] logs [--follow]       # each worker's log of the last run
#   launch/tpu_vm.sh [options] stop                  # SIGTERM the job: it checkpoints, exits
#   launch/tpu_vm.sh [options] delete [--queued]     # the slice (and its queued resource)
#
# Options (each also an environment variable; defaults in brackets):
#   --name=N          TPU_NAME        [bigssl]
#   --project=P       TPU_PROJECT     [gcloud's default project]
#   --zone=Z          TPU_ZONE        [us-central2-b]
#   --type=T          TPU_TYPE        [v4-64]             accelerator type, e.g. v5p-256
#   --version=V       TPU_VERSION     [tpu-ubuntu2204-base] runtime (v5p: v2-alpha-tpuv5)
#   --spot            TPU_SPOT=1      spot capacity
#   --repo=URL        BIGSSL_REPO     [empty: copy this checkout as a tarball with scp]
#   --ref=REF         BIGSSL_REF      [main]               branch / tag / commit of --repo
#   --remote_dir=D    BIGSSL_DIR      [bigssl_jax]         code directory on each worker ($HOME)
#   --mount_bucket=B  BIGSSL_BUCKET   [none]  `setup` also mounts gs://B at /gcs/B (gcsfuse)
#   --detach          TPU_DETACH=1    `run` returns at once; the job keeps running (see logs)
#   --dry-run                         print the commands, run nothing
#
# The job on each worker is launch/on_worker.sh (venv, environment, BIGSSL_DISTRIBUTED=1,
# `bigssl STAGE --distributed ARGS`, log under ~/bigssl_logs). On a TPU slice JAX finds the
# coordinator, process count and index itself. See launch/README.md for the recipes.
set -euo pipefail

NAME="${TPU_NAME:-bigssl}"
PROJECT="${TPU_PROJECT:-}"
ZONE="${TPU_ZONE:-us-central2-b}"
TYPE="${TPU_TYPE:-v4-64}"
VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
SPOT="${TPU_SPOT:-0}"
REPO="${BIGSSL_REPO:-}"
REF="${BIGSSL_REF:-main}"
REMOTE_DIR="${BIGSSL_DIR:-bigssl_jax}"
BUCKET="${BIGSSL_BUCKET:-}"
DETACH="${TPU_DETACH:-0}"
DRY_RUN=0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARBALL="${TMPDIR:-/tmp}/bigssl_jax_src.tar.gz"

usage() {
  sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
  echo "tpu_vm.sh: $*" >&2
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

# Flags every `gcloud compute tpus ...` call takes.
location() {
  LOCATION=(--zone="${ZONE}")
  if [[ -n "${PROJECT}" ]]; then
    LOCATION+=(--project="${PROJECT}")
  fi
}

# Runs a shell command on every worker of the slice.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "${NAME}" "${LOCATION[@]}" --worker=all --command="$1"
}

cmd_create() {
  local queued=0
  for arg in "$@"; do
    case "${arg}" in
      --queued) queued=1 ;;
      *) die "create: unknown argument ${arg}" ;;
    esac
  done
  local spot=()
  if [[ "${SPOT}" == 1 ]]; then
    spot=(--spot)
  fi
  if ((queued)); then
    run gcloud compute tpus queued-resources create "${NAME}" "${LOCATION[@]}" \
      --node-id="${NAME}" --accelerator-type="${TYPE}" --runtime-version="${VERSION}" \
      "${spot[@]}"
  else
    run gcloud compute tpus tpu-vm create "${NAME}" "${LOCATION[@]}" \
      --accelerator-type="${TYPE}" --version="${VERSION}" "${spot[@]}"
  fi
}

# The worker-side set-up after the code is in ~/REMOTE_DIR: Python 3.11, a venv, the package.
install_command() {
  local dir
  dir="$(printf '%q' "${REMOTE_DIR}")"
  echo "set -e; sudo apt-get -qq update && sudo apt-get -qq install -y python3.11 python3.11-venv" \
    "&& cd ~/${dir} && python3.11 -m venv ~/bigssl_venv" \
    "&& ~/bigssl_venv/bin/pip install -q --upgrade pip" \
    "&& ~/bigssl_venv/bin/pip install -q -e '.[tpu-aot,gcs]'"
}

# Installs gcsfuse and mounts gs://BUCKET at /gcs/BUCKET (the same path on every machine, so
# the absolute shard paths in a data dir's registry.json hold everywhere).
mount_command() {
  local bucket
  bucket="$(printf '%q' "${BUCKET}")"
  echo "set -e; if ! command -v gcsfuse >/dev/null; then" \
    "echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc]" \
    "https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\"" \
    "| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null" \
    "&& curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg" \
    "| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null" \
    "&& sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse; fi;" \
    "sudo mkdir -p /gcs/${bucket} && sudo chown \$(id -u):\$(id -g) /gcs/${bucket};" \
    "mountpoint -q /gcs/${bucket} || gcsfuse --implicit-dirs ${bucket} /gcs/${bucket}"
}

cmd_setup() {
  (($# == 0)) || die "setup takes no arguments"
  local dir
  dir="$(printf '%q' "${REMOTE_DIR}")"
  if [[ -n "${REPO}" ]]; then
    local repo ref
    repo="$(printf '%q' "${REPO}")"
    ref="$(printf '%q' "${REF}")"
    on_all_workers "set -e; if [ -d ~/${dir}/.git ]; then git -C ~/${dir} fetch -q origin; \
else git clone -q ${repo} ~/${dir}; fi; git -C ~/${dir} checkout -q ${ref}"
  else
    run tar -czf "${TARBALL}" -C "${ROOT}" --exclude=.git --exclude=.venv --exclude=venv \
      --exclude=bigssl_data --exclude=runs --exclude='*.egg-info' --exclude=__pycache__ .
    run gcloud compute tpus tpu-vm scp "${TARBALL}" "${NAME}:bigssl_jax_src.tar.gz" \
      "${LOCATION[@]}" --worker=all
    on_all_workers "set -e; mkdir -p ~/${dir} && tar -xzf ~/bigssl_jax_src.tar.gz -C ~/${dir}"
  fi
  on_all_workers "$(install_command)"
  if [[ -n "${BUCKET}" ]]; then
    on_all_workers "$(mount_command)"
  fi
}

cmd_run() {
  (($# >= 1)) || die "run needs a STAGE (a bigssl command, e.g. train)"
  local dir remote
  dir="$(printf '%q' "${REMOTE_DIR}")"
  remote="cd ~/${dir} && launch/on_worker.sh$(printf ' %q' "$@")"
  if ((DETACH)); then
    remote="cd ~/${dir} && nohup launch/on_worker.sh$(printf ' %q' "$@") >/dev/null 2>&1 &"
  fi
  on_all_workers "${remote}"
}

cmd_logs() {
  local tail_flags="-n 200"
  for arg in "$@"; do
    case "${arg}" in
      --follow | -f) tail_flags="-n 50 -F" ;;
      *) die "logs: unknown argument ${arg}" ;;
    esac
  done
  on_all_workers "tail ${tail_flags} ~/bigssl_logs/latest.log"
}

cmd_stop() {
  (($# == 0)) || die "stop takes no arguments"
  on_all_workers "if [ -f ~/bigssl_logs/bigssl.pid ]; then kill -TERM \$(cat ~/bigssl_logs/bigssl.pid) || true; fi"
}

cmd_delete() {
  local queued=0
  for arg in "$@"; do
    case "${arg}" in
      --queued) queued=1 ;;
      *) die "delete: unknown argument ${arg}" ;;
    esac
  done
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "${NAME}" "${LOCATION[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "${NAME}" "${LOCATION[@]}" --quiet
  fi
}

main() {
  while (($#)); do
    case "$1" in
      --name=*) NAME="${1#*=}" ;;
      --project=*) PROJECT="${1#*=}" ;;
      --zone=*) ZONE="${1#*=}" ;;
      --type=*) TYPE="${1#*=}" ;;
      --version=*) VERSION="${1#*=}" ;;
      --spot) SPOT=1 ;;
      --repo=*) REPO="${1#*=}" ;;
      --ref=*) REF="${1#*=}" ;;
      --remote_dir=*) REMOTE_DIR="${1#*=}" ;;
      --mount_bucket=*) BUCKET="${1#*=}" ;;
      --detach) DETACH=1 ;;
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      -*) die "unknown option $1 (see --help)" ;;
      *) break ;;
    esac
    shift
  done
  (($#)) || { usage >&2; exit 2; }
  local command="$1"
  shift
  location
  case "${command}" in
    create) cmd_create "$@" ;;
    setup) cmd_setup "$@" ;;
    run) cmd_run "$@" ;;
    logs) cmd_logs "$@" ;;
    stop) cmd_stop "$@" ;;
    delete) cmd_delete "$@" ;;
    *) die "unknown command ${command} (create, setup, run, logs, stop, delete)" ;;
  esac
}

main "$@"
