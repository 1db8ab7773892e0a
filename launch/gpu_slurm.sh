#!/usr/bin/env bash
# Runs big_distill on a multi-node GPU cluster with SLURM: one task (process) per GPU.
#
# Usage: sbatch [--nodes=N ...] launch/gpu_slurm.sh CONFIG WORKDIR [--config.key=value ...]
#        bash launch/gpu_slurm.sh [--dry-run | --help] CONFIG WORKDIR [...]
#   Submit from the repository root: sbatch runs a copy of this file, which finds the checkout as
#   the submit directory. Runs `srun python -m big_distill.main --config=CONFIG --workdir=WORKDIR
#   ...` in the directory it is called from (sbatch: the submit directory) with this checkout's
#   package first on PYTHONPATH: relative paths (CONFIG, WORKDIR, checkpoints in the overrides) are
#   relative to that directory; WORKDIR is passed on as an absolute path. Each task joins the run
#   through JAX's SLURM detection (jax.distributed.initialize) and, seeing all GPUs of its node,
#   drives the one numbered by its SLURM_LOCALID: keep --ntasks-per-node equal to --gpus-per-node
#   and do not bind GPUs to tasks (no --gpus-per-task). Defaults below: 2 nodes x 8 GPUs, 24 h,
#   requeued when preempted.
#   WORKDIR: a filesystem all nodes share. PYTHON: the interpreter (default the checkout's
#   .venv/bin/python if present, else python3), with the package's dependencies and jax[cuda12].
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
# sbatch runs a copy of this file elsewhere: then the helpers come from the submit directory.
launch="$(dirname "$0")"
[[ -f "$launch/common.sh" ]] || launch="${SLURM_SUBMIT_DIR:-.}/launch"
if [[ ! -f "$launch/common.sh" ]]; then
  echo "gpu_slurm.sh: submit from the repository root (no $launch/common.sh)" >&2; exit 2
fi
source "$launch/common.sh"

parse_args gpu_slurm.sh 2 '' "$@"
set -- "${args[@]}"
config="$1"; workdir="$(absolute "$2")"; shift 2
PY="${PYTHON:-$(default_python)}"
cmd=(srun "$PY" -m big_distill.main --config="$config" --workdir="$workdir" "$@")
if [[ "$dry_run" != 0 ]]; then quote "${cmd[@]}"; exit 0; fi
echo "+ $(quote "${cmd[@]}")" >&2
export_checkout
# SLURM signals this shell too: outlive the run, which checkpoints and exits 75, then requeue.
trap 'echo "gpu_slurm.sh: SIGTERM; waiting for the run to stop" >&2' TERM
status=0
"${cmd[@]}" || status=$?
if [[ $status -eq 75 ]]; then
  echo "gpu_slurm.sh: preempted (exit 75); requeueing job $SLURM_JOB_ID to resume" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
