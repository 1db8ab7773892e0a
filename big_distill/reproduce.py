r"""The paper's comparison at small scale: teaching setups x schedule lengths on Fashion-MNIST.

  python -m big_distill.reproduce --workdir=/tmp/fmnist_repro [--teacher=DIR] [--epochs=1,3,9]
      [--variants=fixed,...] [--seeds=0,1] [--train_examples=N] [--optimizer=adam|shampoo]
      [--baseline] [--override=KEY=VALUE ...]

Trains the demo teacher (`configs/fashion_mnist_teacher.py`, on the whole train split) unless
`--teacher` names a finished run, then, for each seed, schedule length and variant, distils it
with `configs/fashion_mnist_funmatch.py` into the demo student (a fixed teacher's logits are
computed once and shared). `--baseline` also trains that student from scratch on labels (the
teacher config with the student's depth and width) for each length and seed: the supervised
baseline. Students see `--augment`; `--optimizer=shampoo` trains them with Shampoo (its defaults:
Adam grafting, at Adam's learning rate); `--override` sets a config key of every student run.

The small-data regime, `--train_examples=N`: the students (baseline included) train on
`train[:N]`, the first N examples of the train split in TFDS's order, the same images for every
run and invocation; the teacher still learns from the whole split. A run's warm-up is then at
most a tenth of its steps, and the run also evaluates on its N training examples
(`config.evals`: `train_eval/*`, for the report's fit to the teacher).
Every student run evaluates about `EVALS_PER_RUN` times (at least `MIN_EVAL_INTERVAL` steps
apart) and saves a checkpoint at every eval and every 500 steps.

Runs live in `WORKDIR/<variant>_<E>ep[_n<N>][_<optimizer>]_s<seed>` (`supervised_...` for the
baseline). A finished run (the checkpoint of its last step saved) is not started again; delete
its directory to redo it. An unfinished one resumes from its newest checkpoint, so the command
can be stopped and run again. After each run, `big_distill.report` rebuilds `results.md` and the
plots in WORKDIR from every finished run there, those of earlier invocations included (e.g.
other `--epochs`).
"""

import dataclasses
import importlib.util
import math
import os

from absl import flags
import ml_collections
from ml_collections import config_flags

from big_distill import cli, configlib, errors, variants, workdir as workdir_lib
from big_distill.data import input_pipeline
from big_distill.runs import CONFIGS, finished, run_command, run_stage

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/fmnist_repro', 'Where every run lives.')
_TEACHER = flags.DEFINE_string('teacher', None, 'A finished teacher run (default: train one).')
_EPOCHS = flags.DEFINE_list('epochs', ['1', '3', '9'], 'Schedule lengths in epochs.')
_VARIANTS = flags.DEFINE_list('variants', list(variants.NAMES), 'Teaching setups to compare.')
_AUGMENT = flags.DEFINE_string('augment', 'inception_crop', 'The students\' augmentation.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'config.seed of the runs: one run per seed.')
_TRAIN_EXAMPLES = flags.DEFINE_integer(
    'train_examples', None, 'Train the students on the first N examples of the train split '
    '(default: all of it).')
_OPTIMIZER = flags.DEFINE_enum('optimizer', 'adam', ['adam', 'shampoo'],
                               'The students\' optimizer.')
_BASELINE = flags.DEFINE_bool('baseline', False,
                              'Also train the student from scratch on labels (supervised).')
_OVERRIDES = flags.DEFINE_multi_string(
    'override', [], 'KEY=VALUE: --config.KEY=VALUE for every student run (repeatable), e.g. '
    'input.batch_size=256.')

TRAIN_EVAL = 'train_eval'  # The eval set of a run's own training examples (`report.TRAIN_EVAL`).
EVALS_PER_RUN = 20
MIN_EVAL_INTERVAL = 100  # Steps.
SUPERVISED = 'supervised'


@dataclasses.dataclass(frozen=True)
class Stage:
  """One run: `big_distill.main --config=<config> --workdir=<workdir> <overrides>`."""
  label: str
  config: str
  workdir: str
  overrides: tuple[str, ...] = ()


def _config_file(name: str, arg: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of `CONFIGS/<name>`."""
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIGS, name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _resolve(name: str, arg: str, overrides: list[str]) -> ml_collections.ConfigDict:
  """The config `big_distill.main` builds from `--config=CONFIGS/<name>:<arg> <overrides>`."""
  argv, values = ['reproduce', *overrides], flags.FlagValues()
  try:
    holder = config_flags.DEFINE_config_dict('config', _config_file(name, arg),
                                             flag_values=values, sys_argv=argv)
    values(argv)
  except (flags.Error, AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
    while e.args and isinstance(e.args[0], BaseException):  # ml_collections wraps a KeyError.
      e = e.args[0]
    text = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise errors.BadInput(f'--override: {" ".join(str(text).split())}') from None
  return holder.value


def _positive(text: str, flag: str, what: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not value > 0:
    raise errors.BadInput(f'{flag}: {text!r} is not a {what}.')
  return value


def plan(root: str, teacher: str, *, epochs: list[str], variant_names: list[str],
         seeds: list[str], train_examples: int | None = None, optimizer: str = 'adam',
         baseline: bool = False, augment: str = 'inception_crop',
         overrides: list[str] = ()) -> list[Stage]:
  """The student runs, seed by seed, shortest schedule first, the baseline before the variants.
  Every argument is checked (bad input) before anything is written."""
  for name in variant_names:
    if name not in variants.VARIANTS:
      raise errors.BadInput(f'--variants: {name!r} is not a variant; use '
                            f'{", ".join(variants.NAMES)}.')
  lengths = [_positive(e, '--epochs', 'positive number of epochs') for e in epochs]
  if not all(s.isdigit() for s in seeds) or not seeds:
    raise errors.BadInput(f'--seeds: {",".join(seeds)!r}; use non-negative integers.')
  for item in overrides:
    if '=' not in item:
      raise errors.BadInput(f'--override: {item!r} is not KEY=VALUE.')
  student = _config_file('fashion_mnist_funmatch.py', f'teacher={teacher}')
  builder = input_pipeline.get_builder(student.input.dataset, student.input.data_dir)
  split = student.input.train_split
  common = [f'--config.input.augment={augment}']
  if optimizer != 'adam':
    common.append(f'--config.optimizer.name={optimizer}')
  if train_examples is not None:
    available = input_pipeline.num_examples(builder, split)
    if not 0 < train_examples <= available:
      raise errors.BadInput(f'--train_examples={train_examples}; use 1 to {available}, the '
                            f'examples of {student.input.dataset}\'s {split} split.')
    split = f'{split}[:{train_examples}]'
    common.append(f'--config.input.train_split={split}')
    common.append(f'--config.evals={TRAIN_EVAL}={split}')
  suffix = (f'_n{train_examples}' if train_examples else '') + (
      f'_{optimizer}' if optimizer != 'adam' else '')
  cache = workdir_lib.TEACHER_LOGITS if train_examples is None else (
      f'teacher_logits_n{train_examples}.npy')
  stages = []
  for seed in dict.fromkeys(int(s) for s in seeds):
    for length in lengths:
      for setup in ([SUPERVISED] if baseline else []) + variant_names:
        config_args = [f'--config.seed={seed}', *common]
        if setup == SUPERVISED:
          name, arg = 'fashion_mnist_teacher.py', f'epochs={length}'
          config_args += [f'--config.student.depth={student.student.depth}',
                          f'--config.student.width={student.student.width}']
        else:
          name = 'fashion_mnist_funmatch.py'
          arg = f'epochs={length},teacher={teacher},variant={setup}'
          if variants.get(setup).cacheable:
            config_args.append(f'--config.teacher_logits_cache={os.path.join(root, cache)}')
        config_args += [f'--config.{o}' for o in overrides]
        config = _resolve(name, arg, config_args)
        steps = configlib.total_steps(
            config, input_pipeline.num_examples(builder, config.input.train_split))
        runtime = [f'--config.eval_every_steps='
                   f'{max(MIN_EVAL_INTERVAL, math.ceil(steps / EVALS_PER_RUN))}']
        if train_examples is not None and config.schedule.warmup_steps > steps // 10:
          runtime.append(f'--config.schedule.warmup_steps={steps // 10}')
        stages.append(Stage(
            f'{setup}, {length:g} epochs, seed {seed}', f'{CONFIGS}/{name}:{arg}',
            os.path.join(root, f'{setup}_{length:g}ep{suffix}_s{seed}'),
            tuple(runtime + config_args)))
  return stages


def _report(root: str, teacher: str) -> None:
  """`big_distill.report` of every finished run in `root` but the teacher, into `root`."""
  done = sorted(p for p in (os.path.join(root, d) for d in os.listdir(root))
                if p != teacher and finished(p))
  if done:
    run_command('report', 'big_distill.report', f'--workdirs={",".join(done)}',
                f'--output={root}')


def main(argv):
  del argv
  root = os.path.abspath(_WORKDIR.value)
  teacher = os.path.abspath(_TEACHER.value or os.path.join(root, 'teacher'))
  students = plan(root, teacher, epochs=_EPOCHS.value, variant_names=_VARIANTS.value,
                  seeds=_SEEDS.value, train_examples=_TRAIN_EXAMPLES.value,
                  optimizer=_OPTIMIZER.value, baseline=_BASELINE.value,
                  augment=_AUGMENT.value, overrides=_OVERRIDES.value)
  stages = list(enumerate(students, 1))
  if not _TEACHER.value:
    stages.insert(0, (0, Stage('teacher', f'{CONFIGS}/fashion_mnist_teacher.py', teacher)))
  ran = False
  for i, stage in stages:
    name = f'{i}/{len(students)} {stage.label}'
    if finished(stage.workdir):
      print(f'[{name}] finished: {stage.workdir}', flush=True)
      continue
    run_stage(name, stage.config, stage.workdir, *stage.overrides)
    if i:
      _report(root, teacher)  # What has finished so far, should the command be stopped.
      ran = True
  if not ran:
    _report(root, teacher)


if __name__ == '__main__':
  cli.run(main)
