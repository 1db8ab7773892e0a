r"""Tables and plots of finished (or running) runs, from their workdirs.

  python -m big_distill.report --workdirs=DIR1,DIR2,... --output=OUTDIR [--labels=A,B,...]

Reads each workdir's `config.json` and `metrics.jsonl` and writes to OUTDIR, for each dataset:
- `results.md`: the final student accuracy and top-1 agreement with the teacher per variant
  (rows) and schedule length (columns), the teacher's accuracy, and one line per run;
- `accuracy_<dataset>.png`: student accuracy against epochs, one colour per variant: every run's
  eval curve (thin) and the final accuracy of each schedule length (markers on a line), the
  teacher's accuracy dashed;
- `agreement_<dataset>.png`: final top-1 agreement against final student accuracy, one point
  per distillation run.

Supervised runs (`eval/accuracy`) count as the variant `supervised`. Epochs are
`step * batch_size / N`, N the training examples, taken from the `epoch` field of the metrics
(step / epoch is the steps per epoch) or else from the TFDS metadata of the run's train split;
without either, lengths and x axes are in steps.
"""

import dataclasses
import os

from absl import flags
import matplotlib
from matplotlib.figure import Figure
import numpy as np

from big_distill import cli, errors, variants, workdir as workdir_lib

STUDENT_KEYS = ('eval/student_accuracy', 'eval/accuracy')
AGREEMENT = 'eval/agreement_top1'
TEACHER = 'eval/teacher_accuracy'


@dataclasses.dataclass(frozen=True)
class Run:
  """One workdir: its resolved config, metric records and derived lengths."""
  workdir: str
  label: str
  config: dict
  records: list[dict]
  steps_per_epoch: float | None  # None: epochs unknown, lengths in steps.

  @property
  def dataset(self) -> str:
    return self.config.get('input', {}).get('dataset', '?')

  @property
  def variant(self) -> str:
    if self.config.get('mode') == 'supervised':
      return 'supervised'
    return self.config.get('variant', 'funmatch')

  @property
  def student_key(self) -> str:
    return next((k for k in STUDENT_KEYS if any(k in r for r in self.records)), STUDENT_KEYS[0])

  @property
  def last_step(self) -> int:
    return max((r['step'] for r in self.records), default=0)

  @property
  def epochs(self) -> float | None:
    """The schedule's length in epochs: `total_epochs`, or `total_steps` converted."""
    if self.config.get('total_steps'):
      return self.config['total_steps'] / self.steps_per_epoch if self.steps_per_epoch else None
    return self.config.get('total_epochs')

  @property
  def length(self) -> str:
    """Schedule length for tables: '1000 epochs', or '500 steps' where epochs are unknown."""
    if self.epochs is not None:
      return f'{self.epochs:g} epochs'
    return f'{self.config.get("total_steps") or self.last_step} steps'

  def final(self, key: str) -> float | None:
    """The value of `key` in the last record that has it."""
    return next((r[key] for r in reversed(self.records) if key in r), None)

  def curve(self, key: str, in_epochs: bool) -> tuple[np.ndarray, np.ndarray]:
    """(x, values) of `key` over the run, x in epochs or steps; of a step logged again after a
    resume, the last record."""
    by_step = {r['step']: r[key] for r in self.records if key in r}
    steps = np.array(sorted(by_step), dtype=float)
    values = np.array([by_step[s] for s in sorted(by_step)], dtype=float)
    return (steps / self.steps_per_epoch if in_epochs else steps), values


def load_runs(workdirs: list[str], labels: list[str] | None = None) -> list[Run]:
  """Reads the runs in `workdirs`; `labels` default to the workdirs' base names."""
  if labels is not None and len(labels) != len(workdirs):
    raise errors.BadInput(f'{len(labels)} labels for {len(workdirs)} workdirs.')
  runs = []
  for i, workdir in enumerate(workdirs):
    config, records = workdir_lib.read_config(workdir), workdir_lib.read_metrics(workdir)
    label = labels[i] if labels else os.path.basename(os.path.normpath(workdir))
    runs.append(Run(workdir, label, config, records, _steps_per_epoch(config, records)))
  return runs


def _steps_per_epoch(config: dict, records: list[dict]) -> float | None:
  for r in records:
    if r.get('epoch'):
      return r['step'] / r['epoch']
  num_train = _num_train_examples(config.get('input', {}))
  return num_train / config['input']['batch_size'] if num_train else None


def _num_train_examples(cfg: dict) -> int | None:
  """Size of the train split from the TFDS metadata, if the dataset is prepared here."""
  import tensorflow_datasets as tfds  # Only here: slow to import, often not needed.
  try:
    builder = tfds.builder(cfg['dataset'], data_dir=cfg.get('data_dir'))
  except (KeyError, tfds.core.registered.DatasetNotFoundError):
    return None
  if not builder.is_prepared():
    return None
  return builder.info.splits[cfg['train_split']].num_examples


def _percent(value: float | None) -> str:
  return '—' if value is None else f'{100 * value:.2f}%'


def _mean(values: list[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def _sort_key(run: Run) -> tuple:
  return (run.epochs is None, run.epochs or 0, run.config.get('total_steps') or run.last_step)


def _by_dataset(runs: list[Run]) -> dict[str, list[Run]]:
  groups = {}
  for run in runs:
    groups.setdefault(run.dataset, []).append(run)
  return groups


def _variants(runs: list[Run]) -> list[str]:
  """The runs' variants in the paper's order, then any others, then 'supervised'."""
  order = variants.NAMES
  return sorted({r.variant for r in runs}, key=lambda v: (
      v == 'supervised', order.index(v) if v in order else len(order), v))


def results_markdown(runs: list[Run]) -> str:
  """`results.md`: per dataset, a variant x schedule-length table, the teacher, the runs."""
  lines = ['# Results', '',
           'Cells: final student accuracy (top-1 agreement with the teacher) on the eval split; '
           'the mean where several runs share a cell (their count in square brackets).']
  for dataset, group in _by_dataset(runs).items():
    lengths = list(dict.fromkeys(r.length for r in sorted(group, key=_sort_key)))
    lines += ['', f'## {dataset}', '', '| variant | ' + ' | '.join(lengths) + ' |',
              '|---' * (len(lengths) + 1) + '|']
    for variant in _variants(group):
      cells = []
      for length in lengths:
        cell = [r for r in group if r.variant == variant and r.length == length]
        accuracy = _mean([r.final(r.student_key) for r in cell])
        agreement = _mean([r.final(AGREEMENT) for r in cell])
        text = _percent(accuracy) if cell else '—'
        if agreement is not None:
          text += f' ({_percent(agreement)})'
        if len(cell) > 1:
          text += f' [{len(cell)}]'
        cells.append(text)
      lines.append(f'| {variant} | ' + ' | '.join(cells) + ' |')
    teachers = {}
    for r in group:
      if r.final(TEACHER) is not None:
        teachers.setdefault(_percent(r.final(TEACHER)), []).append(r.label)
    if len(teachers) == 1:
      lines += ['', f'Teacher accuracy: {next(iter(teachers))}.']
    elif teachers:
      lines += ['', 'Teacher accuracy: ' + '; '.join(
          f'{value} ({", ".join(labels)})' for value, labels in teachers.items()) + '.']
    lines += ['', '| run | variant | length | steps | student accuracy | agreement top-1 | '
              'teacher accuracy | workdir |', '|---|---|---|---|---|---|---|---|']
    for r in sorted(group, key=lambda r: (_variants(group).index(r.variant), _sort_key(r))):
      lines.append(f'| {r.label} | {r.variant} | {r.length} | {r.last_step} | '
                   f'{_percent(r.final(r.student_key))} | {_percent(r.final(AGREEMENT))} | '
                   f'{_percent(r.final(TEACHER))} | {r.workdir} |')
  return '\n'.join(lines) + '\n'


def plot_accuracy(runs: list[Run], path: str) -> None:
  """Student accuracy against epochs (or steps): curves, final points per variant, teacher."""
  in_epochs = all(r.steps_per_epoch for r in runs)
  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  for color, variant in zip(matplotlib.colormaps['tab10'].colors, _variants(runs)):
    members = sorted((r for r in runs if r.variant == variant), key=_sort_key)
    finals = []
    for r in members:
      x, y = r.curve(r.student_key, in_epochs)
      ax.plot(x, 100 * y, color=color, alpha=0.3, linewidth=1)
      if len(y):
        finals.append((x[-1], 100 * y[-1]))
    if finals:
      ax.plot(*zip(*finals), 'o-', color=color, label=variant)
  for i, value in enumerate(sorted({r.final(TEACHER) for r in runs} - {None})):
    ax.axhline(100 * value, color='red', linestyle='--', label='teacher' if i == 0 else None)
  xs = [x for r in runs for x in r.curve(r.student_key, in_epochs)[0] if x > 0]
  if xs and max(xs) / min(xs) > 20:
    ax.set_xscale('log')
  ax.set_xlabel('epochs' if in_epochs else 'steps')
  ax.set_ylabel('student accuracy (%)')
  ax.set_title(runs[0].dataset)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_agreement(runs: list[Run], path: str) -> bool:
  """Final agreement against final accuracy, one point per run; False if no run has both."""
  fig = Figure(figsize=(5.5, 4.5))
  ax = fig.subplots()
  drawn = False
  for color, variant in zip(matplotlib.colormaps['tab10'].colors, _variants(runs)):
    points = [(100 * r.final(AGREEMENT), 100 * r.final(r.student_key), r.length)
              for r in runs if r.variant == variant
              and r.final(AGREEMENT) is not None and r.final(r.student_key) is not None]
    if points:
      x, y, _ = zip(*points)
      ax.scatter(x, y, color=color, label=variant)
      for xi, yi, length in points:
        ax.annotate(length, (xi, yi), textcoords='offset points', xytext=(4, 4), fontsize=7)
      drawn = True
  if drawn:
    ax.set_xlabel('top-1 agreement with the teacher (%)')
    ax.set_ylabel('student accuracy (%)')
    ax.set_title(runs[0].dataset)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
  return drawn


def write_report(runs: list[Run], output_dir: str) -> list[str]:
  """Writes `results.md` and the plots of every dataset to `output_dir`; returns their paths."""
  if not runs:
    raise errors.BadInput('No runs to report.')
  workdir_lib.check_writable(output_dir, '--output')
  os.makedirs(output_dir, exist_ok=True)
  paths = [os.path.join(output_dir, 'results.md')]
  with open(paths[0], 'w') as f:
    f.write(results_markdown(runs))
  for dataset, group in _by_dataset(runs).items():
    name = dataset.replace('/', '_')
    paths.append(os.path.join(output_dir, f'accuracy_{name}.png'))
    plot_accuracy(group, paths[-1])
    agreement = os.path.join(output_dir, f'agreement_{name}.png')
    if plot_agreement(group, agreement):
      paths.append(agreement)
  return paths


_WORKDIRS = flags.DEFINE_list('workdirs', None, 'Comma-separated run workdirs.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Directory for results.md and the plots.',
                              required=True)
_LABELS = flags.DEFINE_list('labels', None, 'Names of the runs (default: workdir base names).')


def main(argv):
  del argv
  paths = write_report(load_runs(_WORKDIRS.value, _LABELS.value), _OUTPUT.value)
  print('\n'.join(f'Wrote {p}' for p in paths))


if __name__ == '__main__':
  cli.run(main)
