#!/usr/bin/env bash
# Runs big_distill on a multi-node GPU cluster with SLURM: one task (process) per GPU.
#
# Usage: sbatch [--nodes=N ...] launch/gpu_slurm.sh CONFIG WORKDIR [--config.key=value ...]
#        bash launch/gpu_slurm.sh [--dry-run | --help] CONFIG WORKDIR [...]
#   Submit from the repository root. Runs `srun python -m big_distill.main --config=CONFIG
#   --workdir=WORKDIR ...`; each task joins the run through JAX's SLURM detection
#   (jax.distributed.initialize) and, seeing all GPUs of its node, drives the one numbered by its
#   SLURM_LOCALID: keep --ntasks-per-node equal to --gpus-per-node and do not bind GPUs to tasks
#   (no --gpus-per-task). Defaults below: 2 nodes x 8 GPUs, 24 h, requeued when preempted.
#   WORKDIR: a filesystem all nodes share. PYTHON: the interpreter (default .venv/bin/python if
#   present, else python3), with the package and jax[cuda12] installed.
#   --dry-run (or DRY_RUN=1): print the command instead of running it.
# Exit code: 0 done; 2 bad input (nothing written, or a usage error of this script);
#   75 preempted (SIGTERM, e.g. SLURM preemption or --signal before the time limit; the run
#   checkpointed): the job requeues itself (scontrol requeue) and resumes from WORKDIR;
#   other: failure.
#SBATCH --job-name=big_distill
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=big_distill-%j.out
set -euo pipefail
# sbatch runs a copy of this file elsewhere: the helpers come from the submit dir.
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/launch/common.sh"

dry_run="${DRY_RUN:-0}"
while [[ $# -gt 0 && "$1" == --* && "$1" != --config.* ]]; do
  case "$1" in
    --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    *) echo "gpu_slurm.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ $# -lt 2 ]]; then usage >&2; exit 2; fi
config="$1"; workdir="$2"; shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"  # sbatch runs a copy of this file elsewhere.
PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
cmd=(srun "$PY" -m big_distill.main --config="$config" --workdir="$workdir" "$@")
if [[ "$dry_run" != 0 ]]; then quote "${cmd[@]}"; exit 0; fi
echo "+ $(quote "${cmd[@]}")" >&2
# SLURM signals this shell too: outlive the run, which checkpoints and exits 75, then requeue.
trap 'echo "gpu_slurm.sh: SIGTERM; waiting for the run to stop" >&2' TERM
status=0
"${cmd[@]}" || status=$?
if [[ $status -eq 75 ]]; then
  echo "gpu_slurm.sh: preempted (exit 75); requeueing job $SLURM_JOB_ID to resume" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
