"""Shared config pieces: argument parsing for `get_config(arg)` and the defaults of every key.

Config files call `base_config()` and override what their experiment needs, so every run carries
the same set of keys and a command-line override of a misspelt key fails loudly.
"""

from typing import Any

import ml_collections

from big_distill import errors, models, variants, workdir


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `k=v,k2=v2` (the part after `:` in `--config=file.py:k=v`) against typed defaults.

  Values are converted to the type of their default (bools accept true/false/1/0). A bare `k`
  means `k=True`. Unknown keys are bad input.
  """
  result = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (arg or '').split(',')):
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
      result[key] = type(default)(value)
  return result


def base_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with defaults; experiments override these."""
  c = ml_collections.ConfigDict()
  c.mode = 'distill'  # 'supervised' (train on labels) or 'distill' (match frozen teachers).
  # Distillation setup (what the teacher sees): 'fixed' (un-augmented image), 'independent' (its
  # own augmentation), 'consistent' (the student's augmented image), 'funmatch' (consistent + mixup).
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

  c.student = ml_collections.ConfigDict()  # The model being trained (in both modes).
  c.student.model = 'bit'
  c.student.depth = 26
  c.student.width = 0.25
  c.student.init = ''  # Optional BiT .npz or run to start from (head replaced if classes differ).

  c.teachers = []  # Distill mode: `teacher_entry` dicts (model, kwargs, checkpoint, resolution).
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

  # Compute dtypes ('float32', 'bfloat16', 'float16') of the student and of the teachers;
  # parameters, logits, the loss and the optimizer stay float32.
  c.dtype = 'float32'
  c.teacher_dtype = 'float32'
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


def teacher_entry(checkpoint: str, model: str = 'bit', **kwargs: Any) -> ml_collections.ConfigDict:
  """A `config.teachers` entry: the model (a registry name and its arguments, e.g. BiT's `depth`
  and `width`), its `checkpoint`, and `resolution` None (the student's), which can be set to an
  int from the command line (`--config.teachers[0].resolution=384`)."""
  return ml_collections.ConfigDict(dict(
      model=model, **kwargs, checkpoint=checkpoint,
      resolution=ml_collections.FieldReference(None, field_type=int)))


# The demo's teachers by family (`configs/fashion_mnist_teacher.py:model=`, the student configs'
# `teacher_model=`), at 56 px.
DEMO_TEACHERS = {
    'bit': dict(model='bit', depth=14, width=0.25),  # 0.51 M parameters.
    'vit': dict(model='vit', patch_size=8, width=128, depth=6, num_heads=4, mlp_dim=256,
                pool_type='gap'),  # 49 tokens; 0.81 M parameters.
}


# The paper's teacher, BiT-M-R152x2 (the paper configs' `teacher_model` default), and the tiny
# model of each family that `runlocal=True` swaps in for a paper config's teachers, at 32 px.
PAPER_TEACHER = 'bit:depth=152,width=2'
TINY_TEACHERS = {
    'bit': dict(depth=14, width=0.25),
    'vit': dict(patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, pool_type='gap'),
    'mobilenet_v3': dict(variant='small', width=0.25),
}


def teacher_entries(checkpoints: str, **model: Any) -> list[ml_collections.ConfigDict]:
  """One `teacher_entry` per checkpoint of `checkpoints` joined by '+' (the config argument
  `teacher=A.npz+B.npz` makes an ensemble; each entry can then be changed from the command line,
  e.g. `--config.teachers[1].resolution=384`)."""
  return [teacher_entry(path, **model) for path in checkpoints.split('+')]


def distillation(config: ml_collections.ConfigDict, variant: str) -> None:
  """Distill mode with `variant`; a variant whose teacher logits can be precomputed gets the
  default cache in the workdir."""
  config.mode = 'distill'
  config.variant = variant
  if variants.get(variant).cacheable:
    config.teacher_logits_cache = workdir.TEACHER_LOGITS


def demo_recipe(config: ml_collections.ConfigDict, epochs: float, runlocal: bool) -> None:
  """The demo's training (both stages, `configs/fashion_mnist_*.py`): `epochs` of Adam at lr 3e-3,
  weight decay 1e-4, cosine decay after 200 warm-up steps, inputs cached, eval and checkpoint
  every 500 steps; `runlocal` shrinks it (`shrink_for_local_run`)."""
  config.input.cache = True
  config.total_epochs = epochs
  config.optimizer = dict(name='adam')
  config.lr = 3e-3
  config.wd = 1e-4
  config.schedule = dict(name='cosine', warmup_steps=200)
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  if runlocal:
    shrink_for_local_run(config)


def total_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """`config.total_steps`, or `config.total_epochs` converted with the global batch size."""
  if config.total_steps:
    return int(config.total_steps)
  if config.total_epochs:
    return max(1, int(config.total_epochs * num_train_examples / config.input.batch_size))
  raise errors.BadInput('Set config.total_steps or config.total_epochs.')


def shrink_for_local_run(config: ml_collections.ConfigDict, tiny_models: bool = False) -> None:
  """`runlocal=True`: a few steps on a slice of the data, to try a config in a minute.

  `tiny_models` also swaps in tiny models at 32 px, for configs whose real models are too big for
  a CPU: a BiT R14 x1/8 student and each teacher's family's `TINY_TEACHERS` model (`tiny_teacher`)
  at the student's resolution, whose files the teacher checkpoints must then be.
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
    config.student.update(depth=14, width=0.125)
    config.teachers = [tiny_teacher(t) for t in config.teachers]


def tiny_teacher(entry: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`entry` with its family's `TINY_TEACHERS` model, keeping its input normalisation (its own
  or its timm name's)."""
  family, kwargs = models.resolve(**{k: v for k, v in entry.items()
                                     if k not in models.LOADING_KEYS})
  norm = {'normalization': kwargs['normalization']} if 'normalization' in kwargs else {}
  return teacher_entry(entry.checkpoint, model=family, **TINY_TEACHERS[family], **norm)


def paper_funmatch(arg: ml_collections.ConfigDict, *, epochs: float, lr: float, wd: float,
                   temperature: float, warmup_steps: int) -> ml_collections.ConfigDict:
  """What all the paper's configs share: R152x2 (`arg.teacher`; another architecture with
  `arg.teacher_model`, a `models.parse_spec` string such as `timm:<name>` or `vit:variant=B/16`)
  -> R50x1 by `arg.variant` (function matching by default), the same inception crop + flip for
  both, mixup ratios ~ Beta(1, 1), Adam (bfloat16 first moment), clipping at 1, warm-up then
  cosine decay.

  `wd` is the paper's, as its big_vision code applies it: each step decays by wd x the schedule's
  multiplier. `config.wd` is also multiplied by the learning rate, so the config holds wd / lr.

  The arguments every paper config takes after its `:` (in `arg`): `variant` (fixed |
  independent | consistent | funmatch; `fixed` computes the teacher's logits once, into
  WORKDIR/teacher_logits.npy), `teacher` (the teacher's weights, a BiT .npz or a timm
  .safetensors; several joined by `+` are an ensemble), `teacher_model` (its architecture where it
  is not BiT-M-R152x2: a timm name, `timm:vit_base_patch16_224.augreg2_in21k_ft_in1k`, or a family
  with one argument, `vit:variant=B/16`), `runlocal` (`shrink_for_local_run` with tiny models, so
  `teacher` must then be a file of the teacher family's `TINY_TEACHERS` model, e.g. R14 x1/4).
  """
  config = base_config()
  distillation(config, arg.variant)
  config.input.update(augment='inception_crop', flip=True)
  config.student.update(depth=50, width=1.0)
  teacher_model = models.parse_spec(arg.teacher_model, 'teacher_model')
  models.resolve(**teacher_model)  # An unknown name is refused here, before any run starts.
  config.teachers = teacher_entries(arg.teacher, **teacher_model)
  config.temperature = temperature
  config.mixup_alpha = 1.0
  config.total_epochs = float(epochs)
  config.optimizer = dict(name='adam', mu_dtype='bfloat16')
  config.lr = lr
  config.wd = wd / lr
  config.grad_clip_norm = 1.0
  config.schedule = dict(name='cosine', warmup_steps=warmup_steps)
  return config


def small_dataset_funmatch(arg: str | None, *, dataset: str, train_split: str, eval_split: str,
                           schedules: dict[str, dict], teacher: str, cache: bool,
                           log_every_steps: int = 100,
                           runlocal_train_split: str | None = None) -> ml_collections.ConfigDict:
  """The paper's 128 px recipe for Flowers, Pets, Food and SUN (`paper_funmatch`, batch 512,
  1500 warm-up steps); `schedules` gives each length's epochs, lr, wd and T.

  Arguments after the config file's `:`: schedule, variant, teacher, teacher_model, runlocal.
  """
  arg = parse_arg(arg, schedule='fast', variant='funmatch', teacher=teacher,
                  teacher_model=PAPER_TEACHER, runlocal=False)
  if arg.schedule not in schedules:
    raise errors.BadInput(f'schedule={arg.schedule!r}; use one of {", ".join(schedules)}.')
  config = paper_funmatch(arg, warmup_steps=1500, **schedules[arg.schedule])
  config.input.update(dataset=dataset, train_split=train_split, eval_split=eval_split,
                      batch_size=512, resolution=128, central_crop=128 / 160, cache=cache)
  config.log_every_steps = log_every_steps
  config.eval_every_steps = 2500
  config.checkpoint_every_steps = 2500
  if arg.runlocal:
    shrink_for_local_run(config, tiny_models=True)
    config.input.train_split = runlocal_train_split or config.input.train_split
  return config
