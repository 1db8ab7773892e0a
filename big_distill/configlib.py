"""What config files share: the defaults of every key (`base_config`), the arguments after a
config file's `:` (`parse_arg`), reading a config file (`load`), and mechanical transforms
(`teacher_entries`, `model_arg`, `distillation`, `shrink_for_local_run`).

Config files call `base_config()` and set what their run needs, so every run carries the same set
of keys and a command-line override of a misspelt key fails loudly.
"""

import difflib
import importlib.util
import os
import re
import traceback

from absl import flags
import ml_collections
from ml_collections import config_flags

from big_distill import errors, models, variants, workdir


_FAMILY_ARGUMENTS = re.compile(r'^\w+:\w+=')  # `bit:depth=50`, a model spec with arguments.


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `k=v,k2=v2` (the part after `:` in `--config=file.py:k=v`) against typed defaults.

  Values are converted to the type of their default (bools accept true/false/1/0). A bare `k`
  means `k=True`. Unknown keys are bad input. A model spec keeps its own commas
  (`student=bit:depth=50,width=1,epochs=10`): an item that is no argument continues a value
  that names a family with arguments.
  """
  result = ml_collections.ConfigDict(dict(defaults))
  items = []
  for item in filter(None, (arg or '').split(',')):
    key = item.partition('=')[0].strip()
    if key not in defaults and items and _FAMILY_ARGUMENTS.match(items[-1].partition('=')[2]):
      items[-1] += ',' + item
    else:
      items.append(item)
  for item in items:
    key, _, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise errors.BadInput(
          f'Unknown config argument {key!r}; known: {", ".join(sorted(defaults))}.')
    default = defaults[key]
    if not _:
      value = 'True'
    if isinstance(default, bool):
      if value.lower() not in ('true', 'false', '1', '0'):
        raise errors.BadInput(f'Config argument {key}={value!r} is not a bool.')
      result[key] = value.lower() in ('true', '1')
    elif default is None:
      result[key] = value
    else:
      try:
        result[key] = type(default)(value)
      except ValueError:
        raise errors.BadInput(f'Config argument {key}={value!r} is not a '
                              f'{type(default).__name__}.') from None
  return result


def base_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with defaults; experiments override these."""
  c = ml_collections.ConfigDict()
  c.mode = 'distill'  # 'supervised' (train on labels) or 'distill' (match frozen teachers).
  # Distillation setup (what the teacher sees): 'fixed' (un-augmented image), 'independent' (its
  # own augmentation), 'consistent' (the student's augmented image), 'funmatch' (consistent and
  # mixup).
  c.variant = 'funmatch'
  # 'fixed' only: .npy file of precomputed teacher logits (relative paths are in the workdir),
  # computed on first use and reused by later runs; '' computes the teacher every step.
  c.teacher_logits_cache = ''
  c.seed = 0

  c.input = ml_collections.ConfigDict()
  c.input.dataset = 'fashion_mnist'  # Any TFDS name with 'image' and 'label' features.
  c.input.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data_dir.
  c.input.skip_bad_images = False  # Image folders: leave out unreadable files (logged).
  c.input.train_split = 'train'
  c.input.eval_split = 'test'  # Its metrics are `eval/*`; the best checkpoint is chosen on them.
  c.input.batch_size = 128  # Global, over all devices and processes.
  c.input.eval_batch_size = 1024  # Global; the last batch is padded. Splits over 2^k devices.
  c.input.resolution = 28  # Student input side; teachers may set their own.
  c.input.augment = 'crop_flip'  # 'crop_flip' (pad + random crop), 'inception_crop' or 'none'.
  c.input.crop_padding = 2  # Pixels of padding for 'crop_flip'.
  c.input.flip = True  # Random horizontal flips in training.
  c.input.shuffle_buffer = 50_000
  c.input.cache = False  # Cache train examples (still encoded) and eval batches in host memory.
  c.input.prefetch = 2  # Batches put on device ahead of the step.
  c.input.central_crop = 1.0  # Eval: resize the short side to resolution / this, crop the centre.
  # Data order is a function of (seed, step, data_shards): each of `data_shards` slices of the
  # train split is shuffled and augmented on its own and fills its rows of every global batch.
  # 0 means one shard per process; equal values give equal batches on any process layout.
  c.input.data_shards = 0
  # Function matching on extra images: an unlabelled TFDS source mixed into the train batches.
  c.input.extra_data = ml_collections.ConfigDict(dict(
      dataset='', split='train', fraction=0.5,  # Share of every batch taken from the extra data.
      data_dir=ml_collections.FieldReference(None, field_type=str)))

  # More eval sets, evaluated with the eval split and logged as `<name>/*`: comma-separated
  # NAME=SPLIT (of input.dataset) or NAME=SPLIT@DATASET, e.g.
  # 'train_eval=train[:1000],holdout=test@imagefolder:/data/holdout'.
  c.evals = ''

  # The model being trained (in both modes): `model` names the architecture (`models`: a family
  # with its arguments or a timm name); `init`: weights or a run to start from (its head replaced
  # where the class count differs).
  c.student = ml_collections.ConfigDict(dict(model='bit:depth=26,width=0.25', init=''))

  # Distill mode: `teacher_entries` (model, checkpoint, resolution; model '': the checkpoint's).
  c.teachers = []
  # Distill mode: a reinforcement (`python -m big_distill.reinforce`) of this run's teachers and
  # views to replay: the steps take its stored targets, and the teachers' weights are not loaded.
  # `live_fraction`: that share of the steps (evenly spaced) trains on fresh live views instead.
  c.reinforcement = ml_collections.ConfigDict(dict(path='', live_fraction=0.0))
  c.temperature = 1.0  # Softmax temperature of the KL(teacher || student) loss.
  c.mixup_alpha = 1.0  # Mixing ratio ~ Beta(alpha, alpha), one per batch ('funmatch').

  c.total_steps = ml_collections.FieldReference(None, field_type=int)
  c.total_epochs = ml_collections.FieldReference(None, field_type=float)  # Used if steps unset.
  c.optimizer = ml_collections.ConfigDict({'name': 'adam'})  # 'adam' | 'sgd' | 'shampoo' + kwargs.
  c.lr = 1e-3
  c.wd = 0.0  # Decoupled weight decay, multiplied by the learning rate; skips biases and norms.
  c.grad_clip_norm = ml_collections.FieldReference(None, field_type=float)
  c.schedule = ml_collections.ConfigDict({'name': 'cosine', 'warmup_steps': 0})

  # Device mesh: `data` x `fsdp` devices (-1: the rest); the batch is split over both. With
  # fsdp > 1 each parameter array (and its optimizer state) of the models marked below is split
  # over `fsdp` along its largest divisible dimension, for models too big to replicate.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, student_fsdp=True, teacher_fsdp=True))
  # Rematerialise the student's blocks in the backward pass: less memory, one more forward pass.
  c.remat = False

  # Compute dtypes ('float32', 'bfloat16', 'float16') of the student and of the teachers;
  # parameters, logits, the loss and the optimizer stay float32.
  c.dtype = 'float32'
  c.teacher_dtype = 'float32'
  # How every model of the run (student and teachers) computes MobileNetV3's depthwise
  # convolutions ('taps' or 'grouped') and ViT's attention ('einsum', 'fused' or 'heads_first');
  # 'auto': the backend's choice (`models.kernels`).
  c.kernels = ml_collections.ConfigDict(dict(depthwise='auto', attention='auto', scheduler='auto'))
  # A jax.profiler trace of `num_steps` steps from `first_step` into the workdir (TensorBoard's
  # profile tab, or Perfetto); 0 steps: none.
  c.profile = ml_collections.ConfigDict(dict(first_step=10, num_steps=0))

  c.log_every_steps = 50
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3  # The newest this many checkpoints stay.
  # Also keep the checkpoint with the best eval accuracy (None: on in distill mode, off in
  # supervised mode); `export` takes it by default.
  c.keep_best = ml_collections.FieldReference(None, field_type=bool)
  c.allow_config_change = False  # Continue a workdir whose run had another config.
  return c


def load(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file `path`. A missing file, one that does not run (a syntax
  error: its line) or has no `get_config` is bad input naming the file."""
  if not os.path.isfile(path):
    raise errors.BadInput(f'Config file {path} does not exist.')
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not callable(getattr(module, 'get_config', None)):
      raise errors.BadInput(f'{path} has no get_config(arg) function.')
    return module.get_config(arg or None)
  except SyntaxError as e:
    raise errors.BadInput(f'{path}, line {e.lineno}: {e.msg}.') from None
  except errors.Error:
    raise
  except Exception as e:  # pylint: disable=broad-except  # The user's code: name where it failed.
    frame = next((f for f in reversed(traceback.extract_tb(e.__traceback__))
                  if os.path.abspath(f.filename) == os.path.abspath(path)), None)
    where = f', line {frame.lineno}' if frame else ''
    raise errors.BadInput(f'{path}{where}: {type(e).__name__}: {e}') from None


def override(config: ml_collections.ConfigDict, overrides: list[str],
             flag: str = 'config') -> ml_collections.ConfigDict:
  """`config` with command-line overrides (`--config.a.b=value`, `--config.teachers[1].x=value`)
  applied by ml_collections' config flags, as `big_distill.main` applies them. A key or list entry
  that the config does not have, or a value of the wrong type, is bad input."""
  for item in overrides:
    _check_key(config, item, flag)
  values, argv = flags.FlagValues(), ['big_distill', *overrides]
  holder = config_flags.DEFINE_config_dict(flag, config, flag_values=values, sys_argv=argv)
  try:
    values(argv)
  except flags.Error as e:  # A value that does not parse as the key's type.
    raise errors.BadInput(str(e)) from None
  return holder.value


def _check_key(config: ml_collections.ConfigDict, item: str, flag: str) -> None:
  """Bad input unless `item` (`--<flag>.a.b[i].c=value`) names a key `config` has."""
  path = item.split('=', 1)[0][len(f'--{flag}.'):]
  node, walked = config, flag
  for name, index in re.findall(r'([^.\[\]]+)(?:\[(\d+)\])?', path):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      keys = sorted(node) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(name, keys, n=1)
      hint = (f'; did you mean {close[0]!r}?' if close else
              f' (its keys: {", ".join(keys)}).' if keys else '.')
      raise errors.BadInput(f'{item.split("=", 1)[0]}: {walked} has no key {name!r}{hint}')
    node, walked = node[name], f'{walked}.{name}'
    if index:
      if not isinstance(node, (list, tuple)) or int(index) >= len(node):
        entries = len(node) if isinstance(node, (list, tuple)) else 0
        how = (' List the teachers in the config argument, their checkpoints joined by "+" '
               '(--config=FILE:teacher=A.npz+B.npz), then set --config.teachers[1].* as needed.'
               if name == 'teachers' else '')
        raise errors.BadInput(f'{item.split("=", 1)[0]}: {walked} has {entries} '
                              f'entr{"y" if entries == 1 else "ies"}, so [{index}] does not '
                              f'exist.{how}')
      node, walked = node[int(index)], f'{walked}[{index}]'


def teacher_entries(checkpoints: str, model: str = '') -> list[ml_collections.ConfigDict]:
  """One `config.teachers` entry per checkpoint of `checkpoints` joined by '+' (an ensemble; each
  entry can then be changed from the command line, e.g. `--config.teachers[1].resolution=384`):
  its `model` ('': what the checkpoint says), `checkpoint`, and `resolution` (None: the
  student's). None for '' (a replay takes its reinforcement's teachers)."""
  return [ml_collections.ConfigDict(dict(
      model=model, checkpoint=path, resolution=ml_collections.FieldReference(None, field_type=int)))
          for path in checkpoints.split('+') if path]


def model_arg(text: str, role: str, arg: str) -> str:
  """A config argument `arg` naming a model as `model` takes it; a family's name alone is the
  demo's size of that family for `role` ('teacher' or 'student'), e.g. 'vit'. Refused here if
  unknown; '' stays '' (a teacher's checkpoint says its model)."""
  if text in models.FAMILIES:
    found = models.FAMILIES[text]
    return str(models.spec(found, **getattr(found, f'demo_{role}')))
  if text:
    models.resolve(text, arg)
  return text


def distillation(config: ml_collections.ConfigDict, variant: str) -> None:
  """Distill mode with `variant`; a variant whose teacher logits can be precomputed gets the
  default cache in the workdir."""
  config.mode = 'distill'
  config.variant = variant
  if variants.get(variant).cacheable:
    config.teacher_logits_cache = workdir.TEACHER_LOGITS


def total_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """`config.total_steps`, or `config.total_epochs` converted with the global batch size."""
  if config.total_steps:
    return int(config.total_steps)
  if config.total_epochs:
    return max(1, int(config.total_epochs * num_train_examples / config.input.batch_size))
  raise errors.BadInput('Set config.total_steps or config.total_epochs.')


def shrink_for_local_run(config: ml_collections.ConfigDict, tiny_models: bool = False) -> None:
  """`runlocal=True`: 10 steps of batch 32 on at most the first 1,024 train and 256 eval examples
  (fewer where the splits have fewer), to try a config in a minute.

  `tiny_models` also swaps in small models at 32 px, for configs whose real models are too big for
  a CPU: the student family's demo student, and each teacher named in its entry the tiny model of
  its family (`family.Family.tiny`, with the entry's input normalisation), whose files the
  teacher checkpoints must then be (a teacher without `model` takes its checkpoint's).
  """
  config.input.train_split = f'{config.input.train_split.split("[")[0]}[:1024]'
  config.input.eval_split = f'{config.input.eval_split.split("[")[0]}[:256]'
  config.input.batch_size = 32
  config.input.eval_batch_size = 128
  config.input.shuffle_buffer = 1024
  config.total_epochs = None
  config.total_steps = 10
  config.schedule.warmup_steps = 2
  config.log_every_steps = 5
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 5
  if tiny_models:
    config.input.resolution = 32
    student = models.resolve(config.student, 'config.student').family
    config.student.model = str(models.spec(student, **student.demo_student))
    for i, entry in enumerate(config.teachers):
      if entry.model:
        spec = models.resolve(entry, f'config.teachers[{i}]')
        entry.model = str(models.spec(spec.family, **spec.family.tiny,
                                      normalization=spec.architecture()['normalization']))
