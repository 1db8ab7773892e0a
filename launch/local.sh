#!/usr/bin/env bash
# Runs big_distill on this machine: launch/local.sh CONFIG WORKDIR [--config.key=value ...]
# DEVICES=N simulates N CPU devices (XLA_FLAGS); on a GPU/TPU host all local devices are used.
# Exit code: 0 done, 2 bad input (nothing written), other non-zero: failure.
set -euo pipefail
if [[ $# -lt 2 || "$1" == "--help" ]]; then sed -n '2,4p' "$0"; exit $([[ "${1:-}" == "--help" ]] && echo 0 || echo 2); fi
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
config="$1"; workdir="$2"; shift 2
if [[ -n "${DEVICES:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES}"
fi
exec "$PY" -m big_distill.main --config="$config" --workdir="$workdir" "$@"
