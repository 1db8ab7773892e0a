#!/usr/bin/env bash
# Runs big_distill on this machine.
#
# Usage: launch/local.sh [--dry-run] CONFIG WORKDIR [--config.key=value ...]
#   --dry-run (or DRY_RUN=1): print the command instead of running it.
#   DEVICES=N simulates N CPU devices (XLA_FLAGS); on a GPU/TPU host all local devices are used.
#   PYTHON: the interpreter (default .venv/bin/python if present, else python3).
# Exit code: 0 done; 2 bad input (nothing written, or a usage error of this script);
#   75 preempted (SIGTERM; checkpointed): run the same command again to resume; other: failure.
set -euo pipefail
source "$(dirname "$0")/common.sh"

dry_run="${DRY_RUN:-0}"
while [[ $# -gt 0 && "$1" == --* && "$1" != --config.* ]]; do
  case "$1" in
    --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    *) echo "local.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ $# -lt 2 ]]; then usage >&2; exit 2; fi
config="$1"; workdir="$2"; shift 2
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
cmd=("$PY" -m big_distill.main --config="$config" --workdir="$workdir" "$@")
if [[ -n "${DEVICES:-}" ]]; then
  flags="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES"
  cmd=(env "XLA_FLAGS=$flags" "${cmd[@]}")
fi
if [[ "$dry_run" != 0 ]]; then quote "${cmd[@]}"; exit 0; fi
exec "${cmd[@]}"
