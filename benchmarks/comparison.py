"""The summary of an Adam-vs-Shampoo comparison, shared by `shampoo_vs_adam.py` (the training
loop, one run at a time) and `shampoo_vs_adam_sweep.py` (the whole grid in one program).

A run is a dict with `optimizer`, `fraction` (of Adam's schedule), `lr`, `seed`, `epochs`,
`steps`, `final_accuracy`, `sec_per_step` and `train_seconds`.
"""

import numpy as np


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


def bracketed(grouped: list[dict], top: dict) -> bool:
  """Whether the grid of `top`'s optimizer and length has learning rates above and below its own:
  if not, the grid's best may not be the optimizer's best."""
  lrs = [s['lr'] for s in grouped
         if (s['optimizer'], s['fraction']) == (top['optimizer'], top['fraction'])]
  return min(lrs) < top['lr'] < max(lrs)


def margin_stderr(a: dict, b: dict) -> float | None:
  """Standard error of the difference of two settings' mean accuracies (None for one seed)."""
  if a['accuracy_std'] is None or b['accuracy_std'] is None:
    return None
  return float(np.sqrt(a['accuracy_std']**2 / a['seeds'] + b['accuracy_std']**2 / b['seeds']))


def summarize(results: list[dict], seeds: int) -> dict:
  """The target (Adam's best full-length setting) and, per Shampoo length, its best setting's
  margin over the target; the shortest Shampoo length reaching it as a fraction of Adam's time.
  Each best learning rate says whether its grid brackets it (a grid value on either side)."""
  grouped = settings(results)

  def best(candidates):
    return max(candidates, key=lambda s: s['accuracy'])

  adam = best(s for s in grouped if s['optimizer'] == 'adam' and s['fraction'] == 1.0)
  summary = {'measure': 'summary', 'seeds': seeds,
             'target_accuracy': adam['accuracy'], 'target_accuracy_std': adam['accuracy_std'],
             'adam_epochs': adam['epochs'], 'adam_steps': adam['steps'],
             'adam_best_lr': adam['lr'], 'adam_best_lr_bracketed': bracketed(grouped, adam),
             'adam_train_seconds': adam['train_seconds'],
             'shampoo': {}}
  for fraction in sorted({s['fraction'] for s in grouped if s['optimizer'] == 'shampoo'}):
    top = best(s for s in grouped if s['optimizer'] == 'shampoo' and s['fraction'] == fraction)
    margin = top['accuracy'] - adam['accuracy']
    summary['shampoo'][str(fraction)] = {
        'epochs': top['epochs'], 'steps': top['steps'], 'best_lr': top['lr'],
        'best_lr_bracketed': bracketed(grouped, top),
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
  return summary
