#!/usr/bin/env bash
# Runs big_distill on all workers of an existing Cloud TPU VM (a pod slice, or a single host).
#
# Usage: launch/tpu_pod.sh [--dry-run] [--project=ID] TPU_NAME ZONE CONFIG WORKDIR [--config.*]
#   Copies this checkout to ~/big_distill on every worker (gcloud ... tpu-vm scp --worker=all),
#   installs it there (pip install -e ., jax[tpu], google-cloud-storage), then runs the same
#   `python3 -m big_distill.main --config=CONFIG --workdir=WORKDIR ...` on all workers at once
#   (gcloud ... tpu-vm ssh --worker=all); JAX finds the other workers by itself.
#   Paths are read on the workers, which run in their copy of the checkout (~/big_distill):
#   CONFIG: a file of this checkout, relative to its root wherever you call this from, e.g.
#     configs/imagenet_funmatch.py:epochs=300 (checked here: usage error if it is not there).
#   WORKDIR: one directory all workers share: a Cloud Storage URI, gs://BUCKET/run (written
#     directly, no mount; the TPU VM's service account needs write access), or NFS at the same
#     absolute path on every worker (a worker-local path leaves each worker its own, partial
#     checkpoints). A relative WORKDIR is a usage error: it would land in ~/big_distill, which the
#     next launch replaces. Teacher checkpoints and data likewise: gs:// or absolute paths on the
#     workers, e.g. --config.input.data_dir=gs://BUCKET/tfds (TFDS reads gs:// too).
#   --project=ID: the Google Cloud project (default: gcloud's configured one).
#   --dry-run (or DRY_RUN=1): print the commands instead of running them.
#   Creates no TPU; make one first, e.g. gcloud compute tpus tpu-vm create TPU_NAME --zone=ZONE
#   --accelerator-type=v4-32 --version=tpu-ubuntu2204-base.
# Exit code: 0 done; 2 bad input (a usage error here, or the trainer's: nothing written);
#   75 preempted (SIGTERM; checkpointed): run the same command again to resume from WORKDIR,
#   after re-creating the TPU if it is gone; other: failure (the trainer's codes arrive through
#   gcloud's ssh).
set -euo pipefail
source "$(dirname "$0")/common.sh"

parse_args tpu_pod.sh 4 '--project=?*' "$@"
project=(${options[@]+"${options[@]}"})
set -- "${args[@]}"
tpu="$1"; zone="$2"; config="$3"; workdir="$4"; shift 4
if [[ ! -f "$checkout/${config%%:*}" ]]; then
  echo "tpu_pod.sh: CONFIG must be a file of this checkout, relative to its root" \
    "(e.g. configs/imagenet_funmatch.py); not found: $checkout/${config%%:*}" >&2
  exit 2
fi
if [[ "$workdir" != /* && "$workdir" != *://* ]]; then
  echo "tpu_pod.sh: WORKDIR must be shared by all workers: gs://BUCKET/DIR or an absolute" \
    "path (NFS); a relative one would land in each worker's ~/big_distill: $workdir" >&2
  exit 2
fi
archive="${TMPDIR:-/tmp}/big_distill-$tpu.tar.gz"

run() {  # Prints the command; runs it unless this is a dry run.
  if [[ "$dry_run" != 0 ]]; then quote "$@"; else echo "+ $(quote "$@")" >&2; "$@"; fi
}
on_all_workers() {  # gcloud ssh to every worker, running the command line $1 there.
  run gcloud compute tpus tpu-vm ssh "$tpu" --worker=all --zone="$zone" \
    ${project[@]+"${project[@]}"} --command="$1"
}

run tar -czf "$archive" --exclude=./.git --exclude=./.venv --exclude='*.egg-info' \
  --exclude=__pycache__ -C "$checkout" .
run gcloud compute tpus tpu-vm scp "$archive" "$tpu:big_distill.tar.gz" --worker=all \
  --zone="$zone" ${project[@]+"${project[@]}"}
on_all_workers "rm -rf ~/big_distill && mkdir ~/big_distill && tar -xzf ~/big_distill.tar.gz \
-C ~/big_distill && python3 -m pip install -q -e ~/big_distill 'jax[tpu]' google-cloud-storage"
on_all_workers "cd ~/big_distill && $(quote python3 -m big_distill.main --config="$config" \
  --workdir="$workdir" "$@")"
