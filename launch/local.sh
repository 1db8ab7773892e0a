#!/usr/bin/env bash
# Runs big_distill on this machine.
#
# Usage: launch/local.sh [--dry-run] CONFIG WORKDIR [--config.key=value ...]
#   Runs `python -m big_distill.main --config=CONFIG --workdir=WORKDIR ...` in the current
#   directory, with this checkout's package (first on PYTHONPATH): relative paths (CONFIG, WORKDIR,
#   checkpoints in the overrides) are relative to where you call it from; the printed command
#   gives WORKDIR as an absolute path.
#   --dry-run (or DRY_RUN=1): print the command instead of running it.
#   DEVICES=N simulates N CPU devices (XLA_FLAGS); on a GPU/TPU host all local devices are used.
#   PYTHON: the interpreter (default the checkout's .venv/bin/python if present, else python3).
# Exit code: 0 done; 2 bad input (nothing written, or a usage error of this script);
#   75 preempted (SIGTERM; checkpointed): run the same command again to resume; other: failure.
set -euo pipefail
source "$(dirname "$0")/common.sh"

parse_args local.sh 2 '' "$@"
set -- "${args[@]}"
config="$1"; workdir="$(absolute "$2")"; shift 2
PY="${PYTHON:-$(default_python)}"
cmd=("$PY" -m big_distill.main --config="$config" --workdir="$workdir" "$@")
if [[ -n "${DEVICES:-}" ]]; then
  flags="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES"
  cmd=(env "XLA_FLAGS=$flags" "${cmd[@]}")
fi
if [[ "$dry_run" != 0 ]]; then quote "${cmd[@]}"; exit 0; fi
export_checkout
exec "${cmd[@]}"
