"""The demo's and reproduce's runs: planning a study's runs (`plan`) and running each as
`big_distill.main` in a subprocess."""

import dataclasses
import math
import os
import shlex
import subprocess
import sys
import time

import ml_collections

from big_distill import errors, reinforcement, variants, workdir as workdir_lib


def _configs_dir() -> str:
  """The directory of the config files: `big_distill/configs/` where the package was installed
  with them (setup.py ships `configs/` as `big_distill.configs`), else `configs/` of the checkout
  that holds the package (running from a checkout, or an editable install)."""
  package = os.path.dirname(os.path.abspath(__file__))
  installed = os.path.join(package, 'configs')
  if os.path.isfile(os.path.join(installed, 'teacher.py')):
    return installed
  return os.path.join(os.path.dirname(package), 'configs')


CONFIGS = _configs_dir()


def run_command(name: str, module: str, *args: str) -> float:
  """Runs `python -m <module> <args>` as the stage `name` (its progress and errors go to this
  process's terminal); returns its wall time in seconds. A failed or interrupted stage has said
  why: `errors.StageFailed` with its exit code (after a Ctrl-C, once the stage has saved)."""
  cmd = [sys.executable, '-m', module, *args]
  print(f'[{name}]', shlex.join(cmd), flush=True)
  start = time.time()
  with subprocess.Popen(cmd) as stage:
    try:
      code = stage.wait()
    except KeyboardInterrupt:  # The stage had the Ctrl-C too: it saves its step, then stops.
      code = stage.wait()
  if code:
    raise errors.StageFailed(code)
  return time.time() - start


MAIN, REINFORCE = 'big_distill.main', 'big_distill.reinforce'


def run_stage(name: str, config: str, workdir: str, *overrides: str, module: str = MAIN) -> float:
  """`run_command` of one training run (or, `module=REINFORCE`, of one reinforcement)."""
  return run_command(name, module, f'--config={config}', f'--workdir={workdir}', *overrides)


def finished(workdir: str) -> bool:
  """Whether `workdir` holds a run that has saved the checkpoint of its last step (False for no
  run, or one that predates `data.json`, which records its training examples), or a complete
  reinforcement."""
  p = workdir_lib.path(workdir)  # Local or remote (gs://).
  if (p / reinforcement.META).exists():
    return (p / reinforcement.COMPLETE).exists()
  data = workdir_lib.read_data(workdir) if p.is_dir() else None
  if data is None or not (p / workdir_lib.CONFIG).exists():
    return False
  from big_distill import checkpoint, configlib  # pylint: disable=g-import-not-at-top  # JAX.
  config = ml_collections.ConfigDict(workdir_lib.read_config(workdir))
  return configlib.total_steps(config, data['num_train']) in checkpoint.saved_steps(workdir)


TRAIN_EVAL = 'train_eval'  # The eval set (metrics prefix) of a run's own training examples.
EVALS_PER_RUN = 20
MIN_EVAL_INTERVAL = 100  # Steps.
SUPERVISED = 'supervised'  # The setup name of a run on labels (the baseline).


@dataclasses.dataclass(frozen=True)
class Stage:
  """One run: `python -m <module> --config=<config> --workdir=<workdir> <overrides>` (a training
  run, or a reinforcement that training runs replay)."""
  label: str
  config: str
  workdir: str
  overrides: tuple[str, ...] = ()
  module: str = MAIN


def _config_file(name: str, arg: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of `CONFIGS/<name>`."""
  from big_distill import configlib  # pylint: disable=g-import-not-at-top  # Loads JAX.
  return configlib.load(os.path.join(CONFIGS, name), arg)


def _resolve(name: str, arg: str, overrides: list[str]) -> ml_collections.ConfigDict:
  """The config `big_distill.main` builds from `--config=CONFIGS/<name>:<arg> <overrides>`."""
  from big_distill import configlib  # pylint: disable=g-import-not-at-top  # Loads JAX.
  try:
    return configlib.override(_config_file(name, arg), overrides)
  except errors.BadInput as e:
    raise errors.BadInput(f'--override: {e}') from None


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
         overrides: list[str] = (), views: int | None = None,
         top_k: int | None = None) -> list[Stage]:
  """The student runs, seed by seed, shortest schedule first, the baseline before the variants.
  With `views`, the students of a variant whose teacher sees augmented views replay one
  reinforcement of `views` views (and `top_k`) per variant and seed, made by a stage of its own
  before its first student and shared by every schedule length. Every argument is checked (bad
  input) before anything is written."""
  for name in variant_names:
    if name not in variants.VARIANTS:
      raise errors.BadInput(f'--variants: {name!r} is not a variant; use '
                            f'{", ".join(variants.NAMES)}.')
  lengths = [_positive(e, '--epochs', 'positive number of epochs') for e in epochs]
  if views is not None and views < 1:
    raise errors.BadInput(f'--views={views}; store at least one view of every example.')
  if not all(s.isdigit() for s in seeds) or not seeds:
    raise errors.BadInput(f'--seeds: {",".join(seeds)!r}; use non-negative integers.')
  for item in overrides:
    if '=' not in item:
      raise errors.BadInput(f'--override: {item!r} is not KEY=VALUE.')
  from big_distill import configlib  # pylint: disable=g-import-not-at-top  # JAX, TensorFlow.
  from big_distill.data import input_pipeline  # pylint: disable=g-import-not-at-top
  student = _config_file('distill.py', f'teacher={teacher}')
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
  stages, stores = [], set()
  for seed in dict.fromkeys(int(s) for s in seeds):
    for length in lengths:
      for setup in ([SUPERVISED] if baseline else []) + variant_names:
        config_args = [f'--config.seed={seed}', *common]
        if setup == SUPERVISED:
          name, arg = 'teacher.py', f'epochs={length}'
          config_args.append(f'--config.student.model={student.student.model}')
        else:
          name = 'distill.py'
          arg = f'epochs={length},teacher={teacher},variant={setup}'
          if variants.get(setup).cacheable:
            config_args.append(f'--config.teacher_logits_cache={os.path.join(root, cache)}')
        config_args += [f'--config.{o}' for o in overrides]
        if views and setup != SUPERVISED and not variants.get(setup).cacheable:
          replay = f'_k{views}' + (f'top{top_k}' if top_k else '')
          store = os.path.join(root, f'reinforcement_{setup}{replay}{suffix}_s{seed}')
          if store not in stores:  # Its views depend on the variant and seed, not the length.
            stores.add(store)
            stages.append(Stage(
                f'reinforce {setup}, K={views}, seed {seed}',
                f'{CONFIGS}/distill.py:teacher={teacher},variant={setup}', store,
                (*config_args, f'--views={views}', *([f'--top_k={top_k}'] if top_k else [])),
                REINFORCE))
          config_args.append(f'--config.reinforcement.path={store}')
        else:
          replay = ''
        config = _resolve(name, arg, config_args)
        steps = configlib.total_steps(
            config, input_pipeline.num_examples(builder, config.input.train_split))
        runtime = [f'--config.eval_every_steps='
                   f'{max(MIN_EVAL_INTERVAL, math.ceil(steps / EVALS_PER_RUN))}']
        if train_examples is not None and config.schedule.warmup_steps > steps // 10:
          runtime.append(f'--config.schedule.warmup_steps={steps // 10}')
        stages.append(Stage(
            f'{setup}, {length:g} epochs, seed {seed}', f'{CONFIGS}/{name}:{arg}',
            os.path.join(root, f'{setup}_{length:g}ep{suffix}{replay}_s{seed}'),
            tuple(runtime + config_args)))
  return stages
