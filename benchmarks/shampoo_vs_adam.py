r"""Adam vs Shampoo on a distillation, as the paper compares them: shorter Shampoo schedules
against Adam's full one. JSON lines.

  python -m benchmarks.shampoo_vs_adam \
      --config=configs/distill.py:teacher=/tmp/big_distill_demo/teacher \
      --epochs=8 --shampoo_fractions=0.25,0.5

Beyer et al. (2022) ran Shampoo for 1200 ImageNet epochs against Adam's 4800: each optimizer gets
its own complete schedule (warm-up, then decay to the end). Likewise here: Adam runs `--epochs`
epochs, Shampoo runs each fraction of that in `--shampoo_fractions` (warm-up scaled alike), each
with every learning rate of its grid and every seed of `--seeds` (the seed changes the
initialisation, the data order and mixup). A setting's accuracy is its mean final student accuracy
over the seeds; the target is that of Adam's best learning rate. The summary gives Adam's steps and
time and, per Shampoo length, its best setting's accuracy, spread over seeds (sample standard
deviation), margin over the target with the margin's standard error, steps and training time, and
the smallest Shampoo length that reaches the target with its wall time as a fraction of Adam's
(goal: <= 0.5); each best learning rate says whether its grid brackets it.
Training time is steps x seconds per step (the median of the logged intervals, which exclude
compilation and evaluation). One line per run, then the summary.
"""

import json
import os
import tempfile

from absl import flags, logging
import numpy as np
import ml_collections

from benchmarks import comparison
from big_distill import cli, train, workdir as workdir_lib

_EPOCHS = flags.DEFINE_float('epochs', 8.0, 'Adam\'s schedule length in epochs.')
_FRACTIONS = flags.DEFINE_list('shampoo_fractions', ['0.25', '0.5'],
                               'Shampoo schedule lengths, as fractions of Adam\'s.')
_ADAM_LRS = flags.DEFINE_list('adam_lrs', ['0.01', '0.03', '0.1'], 'Adam grid.')
_SHAMPOO_LRS = flags.DEFINE_list('shampoo_lrs', ['0.01', '0.03', '0.1'], 'Shampoo grid.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'config.seed of the runs of every setting.')
_SHAMPOO = flags.DEFINE_string(
    'shampoo', json.dumps(dict(name='shampoo', block_size=128, preconditioning_compute_steps=10,
                               start_preconditioning_step=10, graft_type='adam', beta2=0.99)),
    'config.optimizer of the Shampoo runs, as JSON.')


def run(config: ml_collections.ConfigDict, optimizer: dict, lr: float, fraction: float,
        seed: int, workdir: str) -> dict:
  """One complete run of `config` for `fraction` of Adam's schedule; its final accuracy and
  time."""
  config = config.copy_and_resolve_references()
  config.optimizer = optimizer
  config.lr = lr
  config.seed = seed
  config.total_steps = None
  config.total_epochs = _EPOCHS.value * fraction
  config.schedule.warmup_steps = int(config.schedule.warmup_steps * fraction)
  config.checkpoint_every_steps = 10**9
  train.train_and_evaluate(config, workdir)
  records = workdir_lib.read_metrics(workdir)
  img_s = [r['train/img_per_sec'] for r in records if 'train/img_per_sec' in r]
  final = workdir_lib.last_metrics(workdir)
  steps = final['step']
  sec_per_step = config.input.batch_size / float(np.median(img_s))
  return {'optimizer': optimizer['name'], 'lr': lr, 'seed': seed, 'epochs': config.total_epochs,
          'steps': steps, 'final_accuracy': final['eval/student_accuracy'],
          'agreement_top1': final['eval/agreement_top1'], 'sec_per_step': sec_per_step,
          'train_seconds': steps * sec_per_step}


def main(argv, config):
  del argv
  logging.set_verbosity(logging.WARNING)
  shampoo = json.loads(_SHAMPOO.value)
  plan = [('adam', {'name': 'adam'}, 1.0, lr) for lr in map(float, _ADAM_LRS.value)]
  plan += [('shampoo', shampoo, float(f), lr) for f in _FRACTIONS.value
           for lr in map(float, _SHAMPOO_LRS.value)]
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for i, (name, optimizer, fraction, lr) in enumerate(plan):
      for seed in map(int, _SEEDS.value):
        result = run(config, dict(optimizer), lr, fraction, seed,
                     os.path.join(tmp, f'{i}_{seed}'))
        print(json.dumps(result), flush=True)
        results.append({**result, 'fraction': fraction})

  summary = comparison.summarize(results, len(_SEEDS.value))
  print(json.dumps(summary))


if __name__ == '__main__':
  cli.run(main, config='configs/distill.py:teacher=/tmp/big_distill_demo/teacher')
