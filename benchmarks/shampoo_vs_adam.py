r"""Adam vs Shampoo on the Fashion-MNIST distillation: steps and wall time to a student accuracy.

  python benchmarks/shampoo_vs_adam.py \
      --config=configs/fashion_mnist_funmatch.py:teacher=/tmp/big_distill_demo/teacher,epochs=2

For each optimizer and learning rate of a small grid, runs the config (the demo distillation by
default) for its full length, evaluating every `--eval_every` steps. The target is the best accuracy Adam reaches in its full
budget; for each optimizer's best learning rate the benchmark reports the first evaluated step at
or above the target and the wall time to it (steps x measured seconds per step). One JSON line per
run, then a summary line with Shampoo's wall-time fraction of Adam's and its per-step overhead.
"""

import json
import os
import tempfile

from absl import app, flags, logging
import numpy as np

from ml_collections import config_flags

from big_distill import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/fashion_mnist_funmatch.py:teacher=/tmp/big_distill_demo/teacher,epochs=2',
    'The distillation config every run starts from.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 100, 'Steps between evaluations.')
_ADAM_LRS = flags.DEFINE_list('adam_lrs', ['0.001', '0.003', '0.01'], 'Adam grid.')
_SHAMPOO_LRS = flags.DEFINE_list('shampoo_lrs', ['0.001', '0.003', '0.01'], 'Shampoo grid.')
_SHAMPOO = {'name': 'shampoo', 'block_size': 128, 'preconditioning_compute_steps': 10,
            'start_preconditioning_step': 10, 'graft_type': 'adam'}


def run(optimizer: dict, lr: float, workdir: str) -> dict:
  """One distillation run; returns its eval curve and seconds per training step."""
  config = _CONFIG.value.copy_and_resolve_references()
  config.optimizer = optimizer
  config.lr = lr
  config.eval_every_steps = _EVAL_EVERY.value
  config.checkpoint_every_steps = 10**9
  config.log_every_steps = _EVAL_EVERY.value
  train.train_and_evaluate(config, workdir)
  curve, img_s = {}, []
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for record in map(json.loads, f):
      if 'eval/student_accuracy' in record:
        curve[record['step']] = record['eval/student_accuracy']
      if 'train/img_per_sec' in record and record['step'] > _EVAL_EVERY.value:
        img_s.append(record['train/img_per_sec'])  # The first interval includes compilation.
  sec_per_step = config.input.batch_size / float(np.median(img_s))
  return {'optimizer': optimizer['name'], 'lr': lr, 'curve': curve,
          'final_accuracy': curve[max(curve)], 'best_accuracy': max(curve.values()),
          'sec_per_step': sec_per_step}


def time_to(result: dict, target: float) -> tuple[int | None, float | None]:
  steps = [s for s, acc in sorted(result['curve'].items()) if acc >= target]
  return (steps[0], steps[0] * result['sec_per_step']) if steps else (None, None)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, lrs, opt in (('adam', _ADAM_LRS.value, {'name': 'adam'}),
                           ('shampoo', _SHAMPOO_LRS.value, _SHAMPOO)):
      for lr in map(float, lrs):
        result = run(dict(opt), lr, os.path.join(tmp, f'{name}_{lr}'))
        print(json.dumps({k: v for k, v in result.items() if k != 'curve'}), flush=True)
        results.append(result)
  adam = max((r for r in results if r['optimizer'] == 'adam'), key=lambda r: r['best_accuracy'])
  target = adam['best_accuracy']
  summary = {'target_accuracy': target, 'total_steps': max(adam['curve'])}
  for name in ('adam', 'shampoo'):
    runs = [r for r in results if r['optimizer'] == name]
    timed = [(time_to(r, target), r) for r in runs]
    reached = [(t, r) for t, r in timed if t[0] is not None]
    best = min(reached, key=lambda tr: tr[0][1]) if reached else None
    summary[f'{name}_best_lr'] = best[1]['lr'] if best else None
    summary[f'{name}_steps_to_target'] = best[0][0] if best else None
    summary[f'{name}_seconds_to_target'] = best[0][1] if best else None
    summary[f'{name}_sec_per_step'] = float(np.median([r['sec_per_step'] for r in runs]))
  if summary['shampoo_seconds_to_target'] is not None:
    summary['shampoo_wall_fraction_of_adam'] = (
        summary['shampoo_seconds_to_target'] / summary['adam_seconds_to_target'])
  summary['shampoo_step_overhead'] = summary['shampoo_sec_per_step'] / summary['adam_sec_per_step']
  print(json.dumps(summary))


if __name__ == '__main__':
  app.run(main)
