r"""Adam vs Shampoo on a distillation, as the paper compares them: shorter Shampoo schedules
against Adam's full one. JSON lines.

  python benchmarks/shampoo_vs_adam.py \
      --config=configs/fashion_mnist_funmatch.py:teacher=/tmp/big_distill_demo/teacher \
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
(goal: <= 0.5).
Training time is steps x seconds per step (the median of the logged intervals, which exclude
compilation and evaluation). One line per run, then the summary.
"""

import json
import os
import tempfile

from absl import app, flags, logging
import numpy as np
from ml_collections import config_flags

from big_distill import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/fashion_mnist_funmatch.py:teacher=/tmp/big_distill_demo/teacher',
    'The distillation config every run starts from.')
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


def run(optimizer: dict, lr: float, fraction: float, seed: int, workdir: str) -> dict:
  """One complete run of `fraction` of Adam's schedule; its final accuracy and time."""
  config = _CONFIG.value.copy_and_resolve_references()
  config.optimizer = optimizer
  config.lr = lr
  config.seed = seed
  config.total_steps = None
  config.total_epochs = _EPOCHS.value * fraction
  config.schedule.warmup_steps = int(config.schedule.warmup_steps * fraction)
  config.checkpoint_every_steps = 10**9
  train.train_and_evaluate(config, workdir)
  img_s, final = [], {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for record in map(json.loads, f):
      final.update(record)
      if 'train/img_per_sec' in record:
        img_s.append(record['train/img_per_sec'])
  steps = final['step']
  sec_per_step = config.input.batch_size / float(np.median(img_s))
  return {'optimizer': optimizer['name'], 'lr': lr, 'seed': seed, 'epochs': config.total_epochs,
          'steps': steps, 'final_accuracy': final['eval/student_accuracy'],
          'agreement_top1': final['eval/agreement_top1'], 'sec_per_step': sec_per_step,
          'train_seconds': steps * sec_per_step}


def settings(results: list[dict]) -> list[dict]:
  """Runs grouped by (optimizer, fraction, lr): mean accuracy and time, spread over seeds."""
  groups = {}
  for r in results:
    groups.setdefault((r['optimizer'], r['fraction'], r['lr']), []).append(r)
  out = []
  for (name, fraction, lr), runs in groups.items():
    acc = np.array([r['final_accuracy'] for r in runs])
    out.append({'optimizer': name, 'fraction': fraction, 'lr': lr, 'epochs': runs[0]['epochs'],
                'steps': runs[0]['steps'], 'seeds': len(runs), 'accuracy': float(acc.mean()),
                'accuracy_std': float(acc.std(ddof=1)) if len(runs) > 1 else None,
                'train_seconds': float(np.mean([r['train_seconds'] for r in runs]))})
  return out


def margin_stderr(a: dict, b: dict) -> float | None:
  """Standard error of the difference of two settings' mean accuracies (None for one seed)."""
  if a['accuracy_std'] is None or b['accuracy_std'] is None:
    return None
  return float(np.sqrt(a['accuracy_std']**2 / a['seeds'] + b['accuracy_std']**2 / b['seeds']))


def main(argv):
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
        result = run(dict(optimizer), lr, fraction, seed, os.path.join(tmp, f'{i}_{seed}'))
        print(json.dumps(result), flush=True)
        results.append({**result, 'fraction': fraction})

  grouped = settings(results)

  def best(candidates):
    return max(candidates, key=lambda s: s['accuracy'])

  adam = best(s for s in grouped if s['optimizer'] == 'adam')
  summary = {'measure': 'summary', 'seeds': len(_SEEDS.value),
             'target_accuracy': adam['accuracy'], 'target_accuracy_std': adam['accuracy_std'],
             'adam_epochs': adam['epochs'], 'adam_steps': adam['steps'],
             'adam_best_lr': adam['lr'], 'adam_train_seconds': adam['train_seconds'],
             'shampoo': {}}
  for fraction in sorted({s['fraction'] for s in grouped if s['optimizer'] == 'shampoo'}):
    top = best(s for s in grouped if s['optimizer'] == 'shampoo' and s['fraction'] == fraction)
    margin = top['accuracy'] - adam['accuracy']
    summary['shampoo'][str(fraction)] = {
        'epochs': top['epochs'], 'steps': top['steps'], 'best_lr': top['lr'],
        'accuracy': top['accuracy'], 'accuracy_std': top['accuracy_std'], 'margin': margin,
        'margin_stderr': margin_stderr(top, adam), 'train_seconds': top['train_seconds'],
        'reaches_target': margin >= 0}
  reaching = [v for v in summary['shampoo'].values() if v['reaches_target']]
  fastest = min(reaching, key=lambda v: v['train_seconds']) if reaching else None
  summary['shampoo_wall_fraction_of_adam'] = (
      fastest['train_seconds'] / adam['train_seconds'] if fastest else None)
  summary['shampoo_step_overhead'] = float(
      np.median([r['sec_per_step'] for r in results if r['optimizer'] == 'shampoo']) /
      np.median([r['sec_per_step'] for r in results if r['optimizer'] == 'adam']))
  print(json.dumps(summary))


if __name__ == '__main__':
  app.run(main)
