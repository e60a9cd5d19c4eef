#!/usr/bin/env bash
# The job on one worker (TPU VM host or GPU node): the venv, the environment, then
#
#   bigssl STAGE --distributed ARGS...
#
# with its output shown and appended to ~/bigssl_logs/STAGE-HOST-TIME.log (linked as
# ~/bigssl_logs/latest.log). The process id goes to ~/bigssl_logs/bigssl.pid so that
# `launch/tpu_vm.sh stop` can SIGTERM it: the trainer then saves a checkpoint and exits.
# The exit code is bigssl's.
#
#   launch/on_worker.sh [--dry-run] STAGE [ARGS...]
#
# Environment (defaults in brackets):
#   BIGSSL_VENV       the virtual environment               [~/bigssl_venv]
#   BIGSSL_LOG_DIR    where logs and the pid file go       [~/bigssl_logs]
# Passed through to JAX: JAX_COORDINATOR_ADDRESS, BIGSSL_NUM_PROCESSES, BIGSSL_PROCESS_ID
# (set by launch/gpu_cluster.sh; on TPU slices and under srun JAX detects them itself).
set -euo pipefail

VENV="${BIGSSL_VENV:-${HOME}/bigssl_venv}"
LOG_DIR="${BIGSSL_LOG_DIR:-${HOME}/bigssl_logs}"
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
if (($# < 1)); then
  echo "usage: launch/on_worker.sh [--dry-run] STAGE [ARGS...]" >&2
  exit 2
fi
STAGE="$1"
shift

export BIGSSL_DISTRIBUTED=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
COMMAND=(bigssl "${STAGE}" --distributed "$@")
LOG="${LOG_DIR}/${STAGE}-$(hostname)-$(date -u +%Y%m%dT%H%M%SZ).log"

if ((DRY_RUN)); then
  echo "source $(printf '%q' "${VENV}/bin/activate")"
  echo "export BIGSSL_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL}"
  printf '%q ' "${COMMAND[@]}" | sed 's/ $//'
  echo " 2>&1 | tee -a $(printf '%q' "${LOG}")"
  exit 0
fi

# shellcheck source=/dev/null
source "${VENV}/bin/activate"
mkdir -p "${LOG_DIR}"
ln -sfn "${LOG}" "${LOG_DIR}/latest.log"
"${COMMAND[@]}" > >(tee -a "${LOG}") 2>&1 &
PID=$!
echo "${PID}" > "${LOG_DIR}/bigssl.pid"
trap 'kill -TERM "${PID}" 2>/dev/null || true' TERM INT
STATUS=0
wait "${PID}" || STATUS=$?
# A trapped signal interrupts the first wait: wait again for the checkpoint and the exit.
if kill -0 "${PID}" 2>/dev/null; then
  wait "${PID}" || STATUS=$?
fi
rm -f "${LOG_DIR}/bigssl.pid"
exit "${STATUS}"
