r"""Finished distillation runs' students side by side: accuracy, agreement with the teacher,
parameters, FLOPs and inference latency on this machine. One JSON line per run.

  python -m benchmarks.students --workdirs=/tmp/demo/student,/tmp/demo/student_vit

Each student is rebuilt from its run (`build.create_run_from_workdir`) with its latest
checkpoint; accuracy and agreement are the run's final eval. FLOPs are XLA's cost analysis of
the compiled forward pass for one image; latency is the median over `--rounds` timings of the
jitted forward pass (after compilation) on random images at the run's resolution, per image, at
batch 1 and at `--batch`. Training throughput is the median of the run's logged
`train/img_per_sec`.
"""

import json
import statistics
import time

from absl import flags
import jax
import numpy as np

from big_distill import build, checkpoint, cli, workdir as workdir_lib

_WORKDIRS = flags.DEFINE_list('workdirs', None, 'Finished distillation runs.', required=True)
_BATCH = flags.DEFINE_integer('batch', 32, 'The larger batch of the latency measurement.')
_ROUNDS = flags.DEFINE_integer('rounds', 20, 'Timings per batch size; the median.')


def latency(forward, variables, images: np.ndarray) -> float:
  """Median seconds per image of `forward` on `images`, after a compiling call."""
  jax.block_until_ready(forward(variables, images))
  times = []
  for _ in range(_ROUNDS.value):
    start = time.perf_counter()
    jax.block_until_ready(forward(variables, images))
    times.append((time.perf_counter() - start) / len(images))
  return statistics.median(times)


def measure(path: str) -> dict:
  run = build.create_run_from_workdir(path)
  variables, step, _ = checkpoint.read_variables(path, 'latest')
  records = workdir_lib.read_metrics(path)
  final = workdir_lib.last_metrics(path)
  forward = jax.jit(run.student.apply)
  images = np.random.default_rng(0).uniform(-1, 1, (_BATCH.value, *run.image_shape))
  images = images.astype(np.float32)
  cost = forward.lower(variables, images[:1]).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {
      'measure': 'student', 'workdir': path, 'model': str(run.student_spec),
      'steps': step, 'epochs': final.get('epoch'),
      'student_accuracy': final.get('eval/student_accuracy'),
      'teacher_accuracy': final.get('eval/teacher_accuracy'),
      'agreement_top1': final.get('eval/agreement_top1'),
      'params_m': sum(np.size(x) for x in jax.tree_util.tree_leaves(variables['params'])) / 1e6,
      'gflop_per_image': float(cost.get('flops', 0.0)) / 1e9,
      'train_img_per_sec': statistics.median(
          r['train/img_per_sec'] for r in records if 'train/img_per_sec' in r),
      'latency_ms_batch1': 1e3 * latency(forward, variables, images[:1]),
      f'latency_ms_per_image_batch{_BATCH.value}': 1e3 * latency(forward, variables, images),
  }


def main(argv):
  del argv
  for path in _WORKDIRS.value:
    workdir_lib.read_config(path)  # Bad input before any measurement: not a run.
  for path in _WORKDIRS.value:
    print(json.dumps(measure(path)), flush=True)


if __name__ == '__main__':
  cli.run(main)
