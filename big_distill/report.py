r"""Tables and plots of finished (or running) runs, from their workdirs.

  python -m big_distill.report --workdirs=DIR1,DIR2,... --output=OUTDIR [--labels=A,B,...]

Reads each workdir's `config.json` and `metrics.jsonl` and writes to OUTDIR, for each section
(a dataset, and the training split where it is not the whole `train` split, e.g. `train[:1000]`):
- `results.md`: the final student accuracy and top-1 agreement with the teacher per setup
  (rows: the variant, with the optimizer where it is not Adam) and schedule length (columns),
  mean ± half the range over the runs of a cell (seeds); the teacher's accuracy; the supervised
  baseline (the best schedule of the supervised runs, trained from scratch on the same split) and
  the share of the teacher's lead over it that each student recovers (or why there is none);
  one line per run;
- `accuracy_<section>.png`: student accuracy against epochs, one colour per setup: every run's
  eval curve (thin) and each schedule length's final accuracy (markers on a line, min-max error
  bars over seeds), the teacher's accuracy dashed, the supervised baseline dotted;
- `teacher_fit_<section>.png`: top-1 agreement and KL with the teacher against epochs, on the eval
  split and, next to it, on the run's own training examples where the runs evaluate them
  (`train_eval/*`: `config.evals='train_eval=<train split>'`): agreement on the training examples
  that keeps rising while that on the eval split stalls is overfitting to the teacher;
- `agreement_<section>.png`: final top-1 agreement against final student accuracy, one point
  per distillation run.

Supervised runs (`eval/accuracy`) count as the variant `supervised`, the baseline, except those
that a distillation run of the report learns from (its `teachers[i].checkpoint` is their workdir
or its checkpoints): they are `teacher`. Epochs are `step * batch_size / N`, N the training
examples, taken from the `epoch` field of the metrics (step / epoch is the steps per epoch) or else
from the TFDS metadata of the run's train split; without either, lengths and x axes are in steps.
Lengths in epochs are shown to 3 significant digits.
"""

import dataclasses
import os
import re

from absl import flags
import matplotlib
from matplotlib.figure import Figure
import numpy as np

from big_distill import cli, errors, reinforcement, variants, workdir as workdir_lib
from big_distill.runs import SUPERVISED, TRAIN_EVAL

STUDENT_KEYS = ('eval/student_accuracy', 'eval/accuracy')
TEACHER_RUN = 'teacher'  # The setup of a supervised run that a distillation run learns from.
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
  teaches: bool = False  # A distillation run of the report names it as a teacher.
  replayed: dict | None = None  # The meta and cost of the reinforcement it replays (if found).

  @property
  def dataset(self) -> str:
    return self.config.get('input', {}).get('dataset', '?')

  @property
  def section(self) -> str:
    """The dataset, and the training split where it is not all of `train`."""
    split = self.config.get('input', {}).get('train_split', 'train')
    return self.dataset if split == 'train' else f'{self.dataset}, {split}'

  @property
  def distills(self) -> bool:
    return self.config.get('mode') != 'supervised'

  @property
  def variant(self) -> str:
    if not self.distills:
      return TEACHER_RUN if self.teaches else SUPERVISED
    return self.config.get('variant', 'funmatch')

  @property
  def optimizer(self) -> str:
    return self.config.get('optimizer', {}).get('name', 'adam')

  @property
  def replays(self) -> str | None:
    """The reinforcement the run replays (`config.reinforcement.path`), if any."""
    return (self.config.get('reinforcement') or {}).get('path') or None

  @property
  def setup(self) -> str:
    """The variant, with the optimizer where it is not Adam and the views where it replays a
    reinforcement: 'funmatch (shampoo)', 'funmatch, K=30'."""
    setup = self.variant if self.optimizer == 'adam' else f'{self.variant} ({self.optimizer})'
    if self.replays:
      setup += f', K={self.replayed["views"]}' if self.replayed else ', replayed'
    return setup

  @property
  def seed(self) -> int:
    return self.config.get('seed', 0)

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

  def x_length(self, in_epochs: bool) -> float:
    """The schedule's length on an x axis in epochs or steps."""
    if in_epochs and self.epochs is not None:
      return self.epochs
    return self.config.get('total_steps') or self.last_step

  @property
  def length(self) -> str:
    """Schedule length for tables: '1000 epochs', '3.44 epochs', or '500 steps' where epochs are
    unknown."""
    if self.epochs is not None:
      return f'{float(f"{self.epochs:.3g}"):g} epochs'
    return f'{self.config.get("total_steps") or self.last_step} steps'

  @property
  def teacher_forwards(self) -> float | None:
    """Teacher forwards per training image: a live run's, one per teacher and epoch; a replay's,
    its reinforcement's (K per teacher) plus its live steps'; a cached fixed teacher's, one per
    teacher; None for supervised runs or where unknown."""
    if not self.distills:
      return None
    teachers = max(1, len(self.config.get('teachers') or []))
    epochs = self.epochs
    if self.replays:
      stored = (self.replayed or {}).get('summary', {}).get('teacher_forwards_per_example')
      fraction = (self.config.get('reinforcement') or {}).get('live_fraction', 0.0)
      if stored is None or (fraction and epochs is None):
        return None
      return stored + (fraction * epochs * teachers if fraction else 0.0)
    if self.config.get('teacher_logits_cache'):
      return float(teachers)
    return None if epochs is None else epochs * teachers

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
    runs.append(Run(workdir, label, config, records, _steps_per_epoch(config, records),
                    replayed=_reinforcement((config.get('reinforcement') or {}).get('path'))))
  taught = {_run_dir(t['checkpoint']) for r in runs if r.distills
            for t in r.config.get('teachers') or [] if t.get('checkpoint')}
  return [dataclasses.replace(r, teaches=_run_dir(r.workdir) in taught) for r in runs]


def _reinforcement(path: str | None) -> dict | None:
  """The views and cost (`summary`) of the reinforcement at `path`; None if there is none."""
  if not path:
    return None
  try:
    store = reinforcement.open_store(path)
  except errors.BadInput:
    return None
  return dict(views=store.meta['views'], summary=store.summary or {})


def teacher_cost(runs: list[Run]) -> list[str]:
  """The markdown of what the teachers cost: per reinforcement, its forwards, time and size and
  the runs that replayed it; and what the live runs paid (one forward per teacher, image and
  epoch). Empty without distillation runs."""
  stores, live = {}, []
  for r in runs:
    if r.replays:
      stores.setdefault(r.replays, []).append(r)
    elif r.distills and r.epochs is not None:
      live.append(r)
  if not stores:
    return []
  lines = ['Teacher cost: a reinforcement is paid once and replayed by every run that names it '
           '(teacher forwards per training image: its views, K; a live run pays one per epoch).',
           '', '| reinforcement | views (K) | teacher forwards | per image | seconds | size | '
           'replayed by | student epochs replayed |', '|---|---|---|---|---|---|---|---|']
  for path, group in stores.items():
    info = group[0].replayed or {'views': '?', 'summary': {}}
    cost = info['summary']
    size = cost.get('stored_bytes')
    lines.append(
        f'| {path} | {info["views"]} | {cost.get("teacher_forwards", "?")} | '
        f'{cost.get("teacher_forwards_per_example", "?")} | {cost.get("seconds", "?")} | '
        f'{f"{size / 2**20:.1f} MiB" if size else "?"} | '
        f'{len(group)} run{"" if len(group) == 1 else "s"} | '
        f'{sum(r.epochs or 0 for r in group):g} |')
  if live:
    lines += ['', f'Live distillation runs here ({len(live)}) paid '
              f'{sum(r.epochs for r in live):g} teacher forwards per training image in all (one '
              'per epoch).']
  return lines


def _run_dir(path: str) -> str:
  """A run's workdir, given it or its checkpoints directory, comparable with others."""
  path = path.rstrip('/')
  if os.path.basename(path) == workdir_lib.CHECKPOINTS:
    path = os.path.dirname(path)
  return path if workdir_lib.is_remote(path) else os.path.realpath(path)


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


def _count(value: float | None) -> str:
  return '—' if value is None else f'{value:,.4g}'


def _spread(values: list[float]) -> str:
  """'71.00%', or '71.00 ± 1.00%' (mean ± half the range) for several values; '—' for none."""
  if not values:
    return '—'
  if len(values) == 1:
    return _percent(values[0])
  return f'{100 * np.mean(values):.2f} ± {50 * (max(values) - min(values)):.2f}%'


def _finals(runs: list[Run], key: str | None = None) -> list[float]:
  """The final value of `key` (default: the student's accuracy) of each run that has one."""
  values = [r.final(key or r.student_key) for r in runs]
  return [v for v in values if v is not None]


def _mean(values: list[float]) -> float | None:
  return float(np.mean(values)) if values else None


def _sort_key(run: Run) -> tuple:
  return (run.epochs is None, run.epochs or 0, run.config.get('total_steps') or run.last_step)


def _by_section(runs: list[Run]) -> dict[str, list[Run]]:
  groups = {}
  for run in runs:
    groups.setdefault(run.section, []).append(run)
  return groups


def _by_length(runs: list[Run]) -> dict[str, list[Run]]:
  """The runs grouped by schedule length, shortest first."""
  groups = {}
  for run in sorted(runs, key=_sort_key):
    groups.setdefault(run.length, []).append(run)
  return groups


def _setups(runs: list[Run]) -> list[str]:
  """The runs' setups in the paper's order of variants (Adam before other optimizers), then any
  others, then the teachers, then the supervised ones."""
  order = variants.NAMES
  first = {}
  for r in runs:
    first.setdefault(r.setup, r)
  return sorted(first, key=lambda s: (
      not first[s].distills, first[s].variant == SUPERVISED,
      order.index(first[s].variant) if first[s].variant in order else len(order),
      first[s].optimizer != 'adam', s))


def _colors(runs: list[Run]) -> dict[str, tuple]:
  """One colour per setup, the same in every plot of a section."""
  return dict(zip(_setups(runs), matplotlib.colormaps['tab10'].colors))


def baseline(runs: list[Run]) -> tuple[float, str] | None:
  """The supervised baseline: the best seed-mean final accuracy of the supervised runs over their
  setups and schedule lengths, and which one that is; None without supervised runs."""
  cells = []
  for setup in _setups([r for r in runs if r.variant == SUPERVISED]):
    for length, cell in _by_length([r for r in runs if r.setup == setup]).items():
      if _finals(cell):
        cells.append((_mean(_finals(cell)),
                      length if setup == SUPERVISED else f'{setup}, {length}'))
  return max(cells) if cells else None


def _recovered(run: Run, base: float) -> float | None:
  """(student - baseline) / (teacher - baseline): the share of the teacher's lead over the
  supervised baseline that the student recovers."""
  student, teacher = run.final(run.student_key), run.final(TEACHER)
  if student is None or teacher is None or teacher <= base:
    return None
  return (student - base) / (teacher - base)


def _recovered_shares(runs: list[Run], setups: list[str], lengths: dict[str, list[Run]],
                      base: tuple[float, str] | None) -> list[str]:
  """The markdown of the share of the teacher's lead over the baseline that the distillation
  `setups` recover per schedule length, or the sentence that says why there is none."""
  if base is None:
    return ['No share of the teacher\'s lead recovered: that needs a supervised baseline, a run '
            'of the student\'s model trained on labels from scratch on the same training '
            'examples, and none of these runs is one (a supervised run that a distillation run '
            'here learns from is its teacher).']
  if all(r.final(TEACHER) <= base[0] for r in runs if r.final(TEACHER) is not None):
    return [f'No share of the teacher\'s lead recovered: the teacher is not ahead of the '
            f'supervised baseline ({_percent(base[0])}).']
  lines = ['Share of the teacher\'s lead over the supervised baseline that the student recovers, '
           '(student - baseline) / (teacher - baseline), mean over the cell\'s runs:', '',
           '| setup | ' + ' | '.join(lengths) + ' |', '|---' * (len(lengths) + 1) + '|']
  for setup in setups:
    shares = [[v for v in (_recovered(r, base[0]) for r in c if r.setup == setup)
               if v is not None] for c in lengths.values()]
    lines.append(f'| {setup} | ' + ' | '.join(
        f'{100 * np.mean(v):.0f}%' if v else '—' for v in shares) + ' |')
  return lines


def results_markdown(runs: list[Run]) -> str:
  """`results.md`: per section, a setup x schedule-length table, the teacher, the supervised
  baseline and what the students recover of the teacher's lead over it, the runs."""
  lines = ['# Results', '',
           'Cells: final student accuracy on the eval split (top-1 agreement with the teacher); '
           'where several runs (seeds) share a cell, their mean ± half their range (min to max) '
           'and their count in square brackets.']
  for section, group in _by_section(runs).items():
    lengths = _by_length(group)
    setups = _setups(group)
    lines += ['', f'## {section}', '', '| setup | ' + ' | '.join(lengths) + ' |',
              '|---' * (len(lengths) + 1) + '|']
    for setup in setups:
      cells = []
      for cell in ([r for r in c if r.setup == setup] for c in lengths.values()):
        text = _spread(_finals(cell))
        agreement = _finals(cell, AGREEMENT)
        if agreement:
          text += f' ({_percent(_mean(agreement))})'
        if len(cell) > 1:
          text += f' [{len(cell)}]'
        cells.append(text)
      lines.append(f'| {setup} | ' + ' | '.join(cells) + ' |')
    teachers = {}
    for r in group:
      if r.final(TEACHER) is not None:
        teachers.setdefault(_percent(r.final(TEACHER)), []).append(r.label)
    if len(teachers) == 1:
      lines += ['', f'Teacher accuracy: {next(iter(teachers))}.']
    elif teachers:
      lines += ['', 'Teacher accuracy: ' + '; '.join(
          f'{value} ({", ".join(labels)})' for value, labels in teachers.items()) + '.']
    base = baseline(group)
    distilled = list(dict.fromkeys(r.setup for r in sorted(
        group, key=lambda r: setups.index(r.setup)) if r.distills))
    if base is not None:
      lines += ['', f'Supervised baseline (from scratch on the same training examples, its best '
                f'schedule): {_percent(base[0])} ({base[1]}).']
    if teachers and distilled:
      lines += ['', *_recovered_shares(group, distilled, lengths, base)]
    cost = teacher_cost(group)
    if cost:
      lines += ['', *cost]
    lines += ['', '| run | setup | length | seed | steps | student accuracy | agreement top-1 | '
              'train agreement top-1 | teacher accuracy | teacher forwards / image | workdir |',
              '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in sorted(group, key=lambda r: (setups.index(r.setup), _sort_key(r), r.seed)):
      lines.append(f'| {r.label} | {r.setup} | {r.length} | {r.seed} | {r.last_step} | '
                   f'{_percent(r.final(r.student_key))} | {_percent(r.final(AGREEMENT))} | '
                   f'{_percent(r.final(f"{TRAIN_EVAL}/agreement_top1"))} | '
                   f'{_percent(r.final(TEACHER))} | {_count(r.teacher_forwards)} | '
                   f'{r.workdir} |')
  return '\n'.join(lines) + '\n'


def _draw(ax, runs: list[Run], key: str, in_epochs: bool, color: tuple, label: str,
          scale: float = 100.0) -> None:
  """Each run's curve of `key` (thin) and, per schedule length, the mean final value with min-max
  error bars over the runs (markers on a line)."""
  points = []
  for r in runs:
    x, y = r.curve(key, in_epochs)
    ax.plot(x, scale * y, color=color, alpha=0.3, linewidth=1)
  for cell in _by_length(runs).values():
    values = _finals(cell, key)
    if values:
      points.append((cell[0].x_length(in_epochs), scale * np.mean(values),
                     scale * min(values), scale * max(values)))
  if points:
    x, mean, low, high = map(np.array, zip(*points))
    ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt='o-', color=color, label=label,
                capsize=3)


def _finish(ax, runs: list[Run], in_epochs: bool, ylabel: str) -> None:
  """Log x axis where the runs span more than 20x, labels, grid, legend."""
  xs = [x for r in runs for x in r.curve(r.student_key, in_epochs)[0] if x > 0]
  if xs and max(xs) / min(xs) > 20:
    ax.set_xscale('log')
  ax.set_xlabel('epochs' if in_epochs else 'steps')
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)


def plot_accuracy(runs: list[Run], path: str) -> None:
  """Student accuracy against epochs (or steps) per setup; the teacher; the supervised baseline."""
  in_epochs = all(r.steps_per_epoch for r in runs)
  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  for setup, color in _colors(runs).items():
    members = [r for r in runs if r.setup == setup]
    _draw(ax, members, members[0].student_key, in_epochs, color, setup)
  for i, value in enumerate(sorted({r.final(TEACHER) for r in runs} - {None})):
    ax.axhline(100 * value, color='red', linestyle='--', label='teacher' if i == 0 else None)
  base = baseline(runs)
  if base is not None:
    ax.axhline(100 * base[0], color='black', linestyle=':',
               label=f'supervised baseline ({base[1]})')
  _finish(ax, runs, in_epochs, 'student accuracy (%)')
  ax.set_title(runs[0].section)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_teacher_fit(runs: list[Run], path: str) -> bool:
  """Top-1 agreement (top) and KL (bottom) with the teacher against epochs, on the eval split and
  on the runs' own training examples where logged; False if no run has an agreement."""
  colors = _colors(runs)
  runs = [r for r in runs if r.final(AGREEMENT) is not None]
  if not runs:
    return False
  splits = [(prefix, title) for prefix, title in (
      ('eval', 'eval split'), (TRAIN_EVAL, 'training examples'))
            if any(r.final(f'{prefix}/agreement_top1') is not None for r in runs)]
  metrics = (('agreement_top1', 'top-1 agreement with the teacher (%)', 100.0),
             ('kl', 'KL(teacher || student)', 1.0))
  in_epochs = all(r.steps_per_epoch for r in runs)
  fig = Figure(figsize=(5 * len(splits) + 1, 8))
  axes = fig.subplots(len(metrics), len(splits), sharex=True, sharey='row', squeeze=False)
  for column, (prefix, title) in enumerate(splits):
    for row, (name, ylabel, scale) in enumerate(metrics):
      ax = axes[row][column]
      for setup in _setups(runs):
        _draw(ax, [r for r in runs if r.setup == setup], f'{prefix}/{name}', in_epochs,
              colors[setup], setup, scale)
      _finish(ax, runs, in_epochs, ylabel)
      if row == 0:
        ax.set_title(f'{runs[0].section}: {title}')
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return True


def plot_teacher_cost(runs: list[Run], path: str) -> bool:
  """Student accuracy against teacher forwards per training image (log axis): one line per
  replayed setup and length over its reinforcements' K, live runs as points; False if no run
  replays a reinforcement."""
  if not any(r.replays for r in runs):
    return False
  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  groups = {}
  for r in runs:
    if r.teacher_forwards is not None and r.final(r.student_key) is not None:
      kind = r.variant + (', replayed' if r.replays else ', live')
      groups.setdefault((kind, r.length), []).append(r)
  for (kind, length), members in sorted(groups.items()):
    by_x = {}
    for r in members:
      by_x.setdefault(r.teacher_forwards, []).append(100 * r.final(r.student_key))
    x = sorted(by_x)
    y = [np.mean(by_x[v]) for v in x]
    style = 'o-' if 'replayed' in kind else 's'
    ax.plot(x, y, style, label=f'{kind}, {length}', markersize=7)
  for i, value in enumerate(sorted({r.final(TEACHER) for r in runs} - {None})):
    ax.axhline(100 * value, color='red', linestyle='--', label='teacher' if i == 0 else None)
  ax.set_xscale('log')
  ax.set_xlabel('teacher forwards per training image')
  ax.set_ylabel('student accuracy (%)')
  ax.grid(alpha=0.3)
  ax.set_title(runs[0].section)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return True


def plot_agreement(runs: list[Run], path: str) -> bool:
  """Final agreement against final accuracy, one point per run; False if no run has both."""
  fig = Figure(figsize=(5.5, 4.5))
  ax = fig.subplots()
  drawn = False
  for setup, color in _colors(runs).items():
    points = [(100 * r.final(AGREEMENT), 100 * r.final(r.student_key), r.length)
              for r in runs if r.setup == setup
              and r.final(AGREEMENT) is not None and r.final(r.student_key) is not None]
    if points:
      x, y, _ = zip(*points)
      ax.scatter(x, y, color=color, label=setup)
      for xi, yi, length in points:
        ax.annotate(length, (xi, yi), textcoords='offset points', xytext=(4, 4), fontsize=7)
      drawn = True
  if drawn:
    ax.set_xlabel('top-1 agreement with the teacher (%)')
    ax.set_ylabel('student accuracy (%)')
    ax.set_title(runs[0].section)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
  return drawn


def write_report(runs: list[Run], output_dir: str) -> list[str]:
  """Writes `results.md` and the plots of every section to `output_dir`; returns their paths."""
  if not runs:
    raise errors.BadInput('No runs to report.')
  workdir_lib.check_writable(output_dir, '--output')
  os.makedirs(output_dir, exist_ok=True)
  paths = [os.path.join(output_dir, 'results.md')]
  with open(paths[0], 'w') as f:
    f.write(results_markdown(runs))
  for section, group in _by_section(runs).items():
    name = re.sub(r'[^\w.-]+', '_', section).strip('_')
    paths.append(os.path.join(output_dir, f'accuracy_{name}.png'))
    plot_accuracy(group, paths[-1])
    for prefix, plot in (('teacher_fit', plot_teacher_fit), ('agreement', plot_agreement),
                         ('teacher_cost', plot_teacher_cost)):
      path = os.path.join(output_dir, f'{prefix}_{name}.png')
      if plot(group, path):
        paths.append(path)
  return paths


def define_flags() -> None:
  flags.DEFINE_list('workdirs', None, 'Comma-separated run workdirs.', required=True)
  flags.DEFINE_string('output', None, 'Directory for results.md and the plots.', required=True)
  flags.DEFINE_list('labels', None, 'Names of the runs (default: workdir base names).')


def main(argv):
  del argv
  f = flags.FLAGS
  paths = write_report(load_runs(f.workdirs, f.labels), f.output)
  print('\n'.join(f'Wrote {p}' for p in paths))


if __name__ == '__main__':
  define_flags()
  cli.run(main, announce=lambda: (
      f'big_distill.report: {len(flags.FLAGS.workdirs)} runs into {flags.FLAGS.output}.'))
