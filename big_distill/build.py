"""A config -> everything a run needs, built once, as one `Run`: the dataset, the device mesh, the
student and the frozen teachers with their parameters, optimizer and schedule, shardings, the
jitted train and eval steps, and what the teacher sees. The training loop (`train.py`), the
benchmarks, `export` and the tests all build through `create_run`; mode and variant are resolved
here and nowhere else.

Every check that can fail on bad input runs before anything is written anywhere, cheapest first
(`validate`: the config alone; then the dataset; then the teachers' files).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epy
with epy.lazy_imports():  # TensorFlow loads where data is read, not with the module.
  import tensorflow as tf
  import tensorflow_datasets as tfds

from big_distill import checkpoint, configlib, console, errors, models, optim, parallel, steps
from big_distill import targets as targets_lib, teachers as teachers_lib
from big_distill import variants, workdir as workdir_lib
from big_distill.data import input_pipeline, sources
from big_distill.models import compute_dtype, kernels as kernels_lib, loading

TEACHER_PARAMS = ('load', 'random', 'abstract', 'none')  # 'none': no teacher is built.
EVAL = 'eval'  # The metrics prefix of `config.input.eval_split`.


@dataclasses.dataclass(frozen=True)
class Data:
  """The dataset of a run: its shape, and the TFDS builders to read it (None for benchmarks on
  random images)."""
  num_classes: int
  channels: int
  num_train: int
  class_names: tuple[str, ...] = ()  # Empty where the dataset names none.
  builder: tfds.core.DatasetBuilder | None = None
  extra_builder: tfds.core.DatasetBuilder | None = None
  # `config.evals`: name -> (builder, split).
  evals: dict[str, tuple[tfds.core.DatasetBuilder, str]] = dataclasses.field(default_factory=dict)
  # The train and eval splits read (`input_pipeline.fit_split`); None: the config's.
  splits: tuple[str, str] | None = None
  full_name: str = ''  # TFDS's name/config/version of the dataset (known before it is prepared).


@dataclasses.dataclass(frozen=True)
class Run:
  """What `create_run` builds. `train_step(state, teacher_params, batch, rng)` and
  `eval_step(variables, teacher_params, batch)` are jitted with the mesh's shardings (`variables`:
  the student's, `TrainState.variables`); `step_kwargs`
  are the pure `steps.train_step`'s keyword arguments, for code that transforms it (the sweep)."""
  config: ml_collections.ConfigDict
  variant: variants.Variant | None  # None: supervised.
  teacher_view: str  # One of `variants.VIEWS`: what the input pipeline adds for the teacher.
  data: Data
  image_shape: tuple[int, int, int]
  num_steps: int
  mesh: jax.sharding.Mesh
  student_spec: models.Spec
  student: Any
  teachers: teachers_lib.Teachers | None
  teacher_params: tuple[Any, ...]
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state_sharding: Any
  teacher_sharding: Any
  abstract_state: steps.TrainState  # ShapeDtypeStructs carrying `state_sharding`.
  init_state: Callable[[jax.Array], steps.TrainState]
  train_step: Callable[..., tuple[steps.TrainState, dict[str, jax.Array]]]
  eval_step: Callable[..., dict[str, jax.Array]]
  step_kwargs: dict[str, Any]

  @property
  def distill(self) -> bool:
    return self.variant is not None

  def new_state(self, variables: dict[str, Any]) -> steps.TrainState:
    """Step 0 with the student's `variables` (e.g. `student.init`'s), a fresh optimizer state."""
    return jax.jit(functools.partial(steps.new_state, tx=self.tx),
                   out_shardings=self.state_sharding)(variables)

  def train_batches(self, start_step: int = 0, *, seed: int | None = None,
                    teacher_view: str | None = None, with_index: bool = False,
                    blocks: list[tuple[int, int]] | None = None
                    ) -> Iterator[dict[str, np.ndarray]]:
    """This process's endless training batches from `start_step` on, or those of `blocks`
    ((first step, steps) pairs, in their order) (see `input_pipeline.train_batches`)."""
    return input_pipeline.train_batches(
        self.config.input, self.data.builder, start_step=start_step,
        seed=self.config.seed if seed is None else seed,
        teacher_view=self.teacher_view if teacher_view is None else teacher_view,
        with_index=with_index, blocks=blocks, extra_builder=self.data.extra_builder)

  def eval_batches(self, split: str | None = None, cache: bool | None = None,
                   builder: tfds.core.DatasetBuilder | None = None) -> tf.data.Dataset:
    """A split (default the eval split) of the dataset (or `builder`'s) as the run evaluates
    it (`input_pipeline.eval_batches`), cached as `config.input.cache` says unless `cache`."""
    cfg = self.config.input
    return input_pipeline.eval_batches(
        builder or self.data.builder, split or cfg.eval_split, batch_size=cfg.eval_batch_size,
        resolution=cfg.resolution, central_crop=cfg.central_crop,
        cache=cfg.cache if cache is None else cache)

  def eval_sets(self) -> dict[str, tf.data.Dataset]:
    """The eval split as `eval`, then `config.evals` under their names."""
    return {EVAL: self.eval_batches(), **{
        name: self.eval_batches(split, builder=builder)
        for name, (builder, split) in self.data.evals.items()}}

  def evaluate(self, variables: Any,
               eval_sets: dict[str, tf.data.Dataset] | None = None) -> dict[str, float]:
    """Per-example means of the eval step's sums over each eval set (default `eval_sets()`),
    keyed `<set>/<metric>`."""
    results = {}
    for name, ds in (eval_sets or self.eval_sets()).items():
      totals = None
      with console.Bar(name, total=int(ds.cardinality()), unit='batch', leave=False) as bar:
        for local in ds.as_numpy_iterator():
          sums = self.eval_step(variables, self.teacher_params,
                                parallel.to_global(local, self.mesh))
          totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
          bar.update()
      totals = jax.device_get(totals)
      count = totals.pop('count')
      results.update({f'{name}/{k}': float(v / count) for k, v in totals.items()})
    return results

  @property
  def eval_names(self) -> list[str]:
    """The names of the eval sets (`eval_sets`), known before the data is prepared."""
    return [EVAL, *self.data.evals]


_POSITIVE = (lambda v: v >= 1, 'a positive integer')
# The numeric keys' valid values, checked by `validate` (a key set to None passes):
# (key, a valid value's test, what to use instead).
LIMITS = (
    ('total_steps', *_POSITIVE),
    ('total_epochs', lambda v: v > 0, 'a positive number of epochs'),
    ('lr', lambda v: v >= 0, 'a learning rate >= 0'),
    ('wd', lambda v: v >= 0, 'a weight decay >= 0'),
    ('grad_clip_norm', lambda v: v > 0, 'a positive norm, or None for no clipping'),
    ('schedule.warmup_steps', lambda v: v >= 0, 'a number of steps >= 0'),
    *((key, *_POSITIVE) for key in ('log_every_steps', 'eval_every_steps',
                                    'checkpoint_every_steps', 'keep_checkpoints')),
    ('profile.first_step', lambda v: v >= 0, 'a step >= 0'),
    ('profile.num_steps', lambda v: v >= 0, 'a number of steps >= 0 (0: no profile)'),
    ('input.resolution', lambda v: v >= 1, 'a positive side in pixels'),
    ('input.crop_padding', lambda v: v >= 0, 'a number of pixels >= 0'),
    ('input.central_crop', lambda v: 0 < v <= 1, 'a fraction of the short side in (0, 1]'),
    ('input.shuffle_buffer', *_POSITIVE),
    ('input.prefetch', lambda v: v >= 0, 'a number of batches >= 0'),
    ('input.data_shards', lambda v: v >= 0, 'a number of data slices, or 0 for one per process'),
)


def validate(config: ml_collections.ConfigDict,
             teachers: bool = True) -> variants.Variant | None:
  """Checks that need no data and no model; returns the variant (None in supervised mode).
  Without `teachers`, a distillation may name none (`reinforce --teacher_fn` brings its own)."""
  if config.mode not in ('supervised', 'distill'):
    raise errors.BadInput(f"config.mode={config.mode!r}; use 'supervised' or 'distill'.")
  variant = variants.get(config.variant) if config.mode == 'distill' else None
  if config.reinforcement.path and (not variant or config.teacher_logits_cache):
    raise errors.BadInput('config.reinforcement.path replays teachers\' targets: it needs '
                          'config.mode=\'distill\' and no config.teacher_logits_cache.')
  if config.teacher_logits_cache and not (variant and variant.cacheable):
    raise errors.BadInput(
        'config.teacher_logits_cache needs a variant whose teacher logits can be precomputed '
        f'({", ".join(v.name for v in variants.VARIANTS.values() if v.cacheable)}): only a '
        'teacher that sees un-augmented images has logits that are a function of the example.')
  if config.input.extra_data.dataset:
    if not variant or config.teacher_logits_cache:
      raise errors.BadInput('config.input.extra_data needs distill mode without a teacher logits '
                            'cache (extra images have no labels and no precomputed logits).')
    if not 0 < config.input.extra_data.fraction < 1:
      raise errors.BadInput(
          f'config.input.extra_data.fraction={config.input.extra_data.fraction}; use a share of '
          'the batch between 0 and 1.')
  for key, valid, use in LIMITS:
    value = functools.reduce(getattr, key.split('.'), config)
    if value is not None and not valid(value):
      raise errors.BadInput(f'config.{key}={value}; use {use}.')
  for i, entry in enumerate(config.teachers):
    if entry.get('resolution') is not None and entry.resolution < 1:
      raise errors.BadInput(f'config.teachers[{i}].resolution={entry.resolution}; use a '
                            'positive side in pixels, or None for input.resolution.')
  if variant and config.temperature <= 0:
    raise errors.BadInput(f'config.temperature={config.temperature}; use a positive temperature.')
  if variant and variant.mixup and config.mixup_alpha <= 0:
    raise errors.BadInput(f'config.mixup_alpha={config.mixup_alpha}; mixup draws its ratios '
                          '~ Beta(alpha, alpha), alpha > 0.')
  parse_evals(config.evals)
  compute_dtype(config.dtype, 'config.dtype')
  compute_dtype(config.teacher_dtype, 'config.teacher_dtype')
  kernels_lib.Kernels(**config.kernels).resolved()
  input_pipeline.check_input(config.input)
  parallel.check_batch_size(config.input.batch_size)
  parallel.check_batch_size(config.input.eval_batch_size, 'input.eval_batch_size')
  parallel.mesh_shape(config.mesh.data, config.mesh.fsdp, jax.device_count())
  if variant and teachers and not config.teachers and targets_lib.needs_teachers(config):
    raise errors.BadInput("config.mode='distill' needs at least one entry in config.teachers.")
  return variant


def parse_evals(text: str) -> dict[str, tuple[str, str]]:
  """`config.evals` as name -> (split, dataset; '' for `config.input.dataset`)."""
  evals = {}
  for item in filter(None, (i.strip() for i in text.split(','))):
    name, sep, where = item.partition('=')
    split, _, dataset = where.partition('@')
    name = name.strip()
    if not sep or not split.strip():
      raise errors.BadInput(f'config.evals: {item!r} is not NAME=SPLIT or NAME=SPLIT@DATASET.')
    if not name.isidentifier() or name in (EVAL, 'train') or name in evals:
      raise errors.BadInput(f'config.evals: {name!r} cannot name an eval set; use a new word '
                            f'other than {EVAL!r} and \'train\' (metrics are <name>/...).')
    evals[name] = (split.strip(), dataset.strip())
  return evals


def dataset_shape(config: ml_collections.ConfigDict) -> Data:
  """The classes and channels of the config's dataset, for measurements on random images: a
  TFDS dataset's from its metadata (not prepared, not read), an image folder's as `describe_data`
  checks it; nothing is written. `num_train` is one batch."""
  cfg = config.input
  source = sources.describe(cfg.dataset, cfg.data_dir, read_tfds=False,
                            skip_bad=cfg.get('skip_bad_images', False))
  return Data(len(source.class_names), source.channels, cfg.batch_size, source.class_names)


def describe_data(config: ml_collections.ConfigDict) -> Data:
  """The run's datasets, every check done and nothing written (`sources.describe_run`: splits,
  image folders' layouts and files, eval sets' channels and class names). Builders are None
  for image folders not prepared yet; a TFDS dataset is prepared on first use, as only then are
  its split sizes known."""
  return create_data(config, prepare=False)


def create_data(config: ml_collections.ConfigDict, *, prepare: bool = True) -> Data:
  """The run's datasets, every check done (`describe_data`), then with `prepare` the image
  folders prepared: every builder set."""
  found = sources.describe_run(config, parse_evals(config.evals))
  get = (lambda s: s and s.prepare()) if prepare else (lambda s: s and s.builder)
  main = found.main
  return Data(len(main.class_names), main.channels, found.num_train, main.class_names, get(main),
              get(found.extra), {name: (get(source), split)
                                 for name, (source, split) in found.evals.items()},
              (found.train_split, found.eval_split), main.full_name)


def create_teacher_params(config: ml_collections.ConfigDict, teachers: teachers_lib.Teachers,
                          image_shape: tuple[int, int, int], how: str, mesh: jax.sharding.Mesh
                          ) -> tuple[teachers_lib.Teachers, tuple[Any, ...]]:
  """The teachers and their parameters: loaded from their checkpoints and frozen ('load'),
  randomly initialised and frozen ('random', for benchmarks), or shapes only ('abstract')."""
  abstract = jax.eval_shape(functools.partial(teachers_lib.init_params, teachers, image_shape),
                            jax.random.PRNGKey(0))
  if how == 'abstract':
    return teachers, abstract
  if how == 'random':
    params = jax.device_get(teachers_lib.init_params(teachers, image_shape, jax.random.PRNGKey(0),
                                                     init_options(mesh)))
  else:
    params = teachers_lib.load_params(config.teachers, teachers, abstract)
  return teachers_lib.freeze(teachers, params)


def check_teacher_files(config: ml_collections.ConfigDict) -> None:
  """Bad input unless every teacher's checkpoint exists."""
  for i, entry in enumerate(config.teachers):
    loading.check_exists(entry.get('checkpoint'), f'config.teachers[{i}].checkpoint')


def resolve_models(config: ml_collections.ConfigDict, teacher_params: str = 'load'
                   ) -> tuple[ml_collections.ConfigDict, models.Spec, tuple[models.Spec, ...]]:
  """(the config with each model's `model` filled in where a checkpoint says it (a teacher's,
  the student's `init`), the student's spec, the teachers' specs): what the run builds, resolved
  once. Benchmarks on random weights (`teacher_params='random'`) name every teacher's model."""
  init = config.student.get('init')
  student = models.resolve(config.student, 'config.student', default=loading.spec_of(
      init, 'config.student.init') if init and not config.student.get('model') else None)
  specs = ()
  if targets_lib.needs_teachers(config) and teacher_params != 'none':
    if teacher_params == 'load':
      check_teacher_files(config)
    specs = teachers_lib.resolve(config.teachers)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for entry, spec in zip([config.student, *config.teachers], (student, *specs)):
      entry['model'] = entry.get('model') or str(spec)
  return config, student, specs


def create_run(config: ml_collections.ConfigDict, *, data: Data | None = None,
               teacher_params: str = 'load', prepare: bool = True) -> Run:
  """Builds the run of `config` (see the module docstring). `data` replaces the dataset (the
  benchmarks' random images); `teacher_params` is one of `TEACHER_PARAMS`; without `prepare`,
  image folders are checked but not yet prepared (`prepare_data` writes them, once the caller's
  own checks have passed too). `Run.config` is `config` with every model's architecture and the
  splits it reads resolved (`resolve_models`, `input_pipeline.fit_split`)."""
  if teacher_params not in TEACHER_PARAMS:
    raise ValueError(f'teacher_params={teacher_params!r}; use one of {TEACHER_PARAMS}.')
  variant = validate(config, teachers=teacher_params != 'none')
  config, student_spec, teacher_specs = resolve_models(config, teacher_params)
  data = data or describe_data(config)  # Checked; nothing is written before every check passed.
  if data.splits:
    config.input.update(train_split=data.splits[0], eval_split=data.splits[1])
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
  replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  image_shape = (config.input.resolution, config.input.resolution, data.channels)
  num_steps = configlib.total_steps(config, data.num_train)

  kernels = kernels_lib.Kernels(**config.kernels)
  student = student_spec.create(data.num_classes, config.dtype, kernels, config.remat)
  norm = optim.global_norm(split=config.mesh.student_fsdp and mesh.shape['fsdp'] > 1)
  tx, schedule = optim.make_optimizer(config, num_steps, norm)
  init = functools.partial(steps.init_state, student, tx, image_shape=image_shape)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  state_sharding = parallel.param_shardings(abstract, mesh, config.mesh.student_fsdp)

  teachers, params, teacher_sharding = None, (), ()
  step_kwargs = dict(student=student, tx=tx, schedule=schedule, norm=norm)
  if variant:
    step_kwargs.update(variant=variant, temperature=config.temperature,
                       mixup_alpha=config.mixup_alpha)
  if teacher_specs:
    teachers = teachers_lib.build(teacher_specs, config.teachers, data.num_classes,
                                  config.teacher_dtype, kernels)
    teachers, params = create_teacher_params(config, teachers, image_shape, teacher_params,
                                            mesh)
    teacher_sharding = parallel.param_shardings(params, mesh, config.mesh.teacher_fsdp)
    if teacher_params != 'abstract':
      params = jax.device_put(params, teacher_sharding)
    step_kwargs.update(teachers=teachers)
  if data.splits and prepare:  # Every check has passed: image folders may be written now.
    data = create_data(config)
  train_step = jax.jit(
      functools.partial(steps.train_step, **step_kwargs), donate_argnums=0,
      in_shardings=(state_sharding, teacher_sharding, batch_sharding, replicated),
      out_shardings=(state_sharding, replicated),
      compiler_options=train_step_options(config, mesh, student_spec))
  eval_step = jax.jit(functools.partial(steps.eval_step, student=student, teachers=teachers),
                      in_shardings=(state_sharding.variables, teacher_sharding, batch_sharding),
                      out_shardings=replicated)
  return Run(
      config=config, variant=variant, teacher_view=targets_lib.teacher_view(config, variant),
      data=data,
      image_shape=image_shape, num_steps=num_steps, mesh=mesh, student_spec=student_spec,
      student=student, teachers=teachers, teacher_params=params, tx=tx, schedule=schedule,
      state_sharding=state_sharding, teacher_sharding=teacher_sharding,
      abstract_state=parallel.with_shardings(abstract, state_sharding),
      init_state=jax.jit(init, out_shardings=state_sharding, compiler_options=init_options(mesh)),
      train_step=train_step,
      eval_step=eval_step, step_kwargs=step_kwargs)


def train_step_options(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                       student: models.Spec) -> dict[str, str] | None:
  """XLA options of the train step: the scheduler of `config.kernels` (on a CPU, 'auto' is the
  student family's, `kernels.SCHEDULERS`), and with `config.remat` on a CPU, its
  `cse_barrier_expander` off (it removes the barriers that keep remat's recomputation apart,
  which then merges with the forward pass: every activation kept, as without remat)."""
  platform = mesh.devices.flat[0].platform
  options = kernels_lib.Kernels(**config.kernels).scheduler_options(
      platform, student.family.cpu_scheduler)
  if config.remat and platform == 'cpu':
    options = {**options, 'xla_disable_hlo_passes': 'cse_barrier_expander'}
  return options or None


def init_options(mesh: jax.sharding.Mesh | None = None) -> dict[str, Any] | None:
  """XLA options of the programs that initialise parameters on `mesh` (default: JAX's default
  backend): on a CPU, LLVM at optimisation level 1. Such a program runs once, and its random
  initialisers then compile several times faster, with values bit-identical to the default
  level's (level 0 compiles faster still but rounds differently; docs/performance.md)."""
  platform = mesh.devices.flat[0].platform if mesh else jax.default_backend()
  if platform == 'cpu':
    return {'xla_backend_optimization_level': 1}
  return None


def dry_run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """What `big_distill.main` would run in `workdir`, every check done and nothing written: the
  resolved config, the models with their parameter counts and the teachers' sources, the data,
  the steps, and the step a restart would resume from. A TFDS dataset that is not prepared yet is
  not downloaded: only its metadata is read (its sizes are then unknown, None, and so are the
  steps of a schedule in epochs)."""
  cfg = config.input
  data = None if sources.readable(cfg.dataset, cfg.data_dir) else dataset_shape(config)
  config = targets_lib.with_stored_teachers(config)
  if targets_lib.needs_teachers(config):  # A run loads its teachers' files: they must exist.
    check_teacher_files(config)
  run = create_run(workdir_lib.with_stored_models(config, workdir), data=data,
                   teacher_params='abstract', prepare=False)
  workdir_lib.check(run.config, workdir)
  targets = targets_lib.open_targets(run, workdir)  # Checked: another run's targets are refused.
  cfg = run.config.input
  return {
      'config': workdir_lib.config_json(run.config),
      'student': dict(model=str(run.student_spec), parameters=_count(run.abstract_state.params),
                      init=run.config.student.get('init') or None),
      'teachers': [dict(model=str(spec), parameters=_count(params['params']),
                        checkpoint=entry.get('checkpoint'),
                        resolution=entry.get('resolution') or cfg.resolution)
                   for spec, params, entry in zip(run.teachers.specs if run.teachers else (),
                                                  run.teacher_params, run.config.teachers)],
      'data': dict(dataset=cfg.dataset, classes=run.data.num_classes,
                   class_names=list(run.data.class_names), channels=run.data.channels,
                   train_split=cfg.train_split,
                   train_examples=run.data.num_train if data is None else None,
                   eval_split=cfg.eval_split, evals=sorted(run.data.evals)),
      'targets': dict(source=targets.kind, path=config.reinforcement.path or (
          str(targets.path) if targets.path else None)),
      'steps': run.num_steps if data is None or run.config.total_steps else None,
      'epochs': run.num_steps * cfg.batch_size / run.data.num_train if data is None else None,
      'devices': jax.device_count(),
      'resumes_from_step': max(checkpoint.saved_steps(workdir), default=None),
  }


def _count(tree: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def prepare_data(run: Run) -> Run:
  """`run` with its image folders prepared (written into the TFDS data dir) if they were not."""
  if not run.data.splits or run.data.builder is not None:
    return run
  return dataclasses.replace(run, data=create_data(run.config))


def create_run_from_workdir(workdir: str, teacher_params: str = 'abstract') -> Run:
  """The run stored in `workdir` (its config, and what it trained on), for using its student:
  on any devices (the stored mesh is not used), no dataset needed; teachers as shapes only
  unless `teacher_params` says otherwise (then a replayed run's teachers are built as well)."""
  config = ml_collections.ConfigDict(workdir_lib.read_config(workdir))
  config.mesh.update(data=-1, fsdp=1)
  for key in ('reinforcement', 'kernels', 'remat'):  # A run from before these keys.
    if key not in config:
      config[key] = configlib.base_config()[key]
  if teacher_params == 'load' and config.teachers:
    config.reinforcement.path = ''  # A replayed run's teachers too (the reinforcement's).
  info = workdir_lib.read_data(workdir)
  data = (Data(info['num_classes'], info['channels'], info['num_train'],
               tuple(info.get('class_names', ()))) if info else create_data(config))
  return create_run(config, data=data, teacher_params=teacher_params)


def load_student_init(run: Run) -> dict[str, Any]:
  """The variables of `config.student.init` for the run's student (a head for another class
  count replaced by a zero head)."""
  loading.check_exists(run.config.student.init, 'config.student.init')
  return loading.load_variables(run.config.student.init, run.student_spec.family, run.student,
                                run.abstract_state.variables, allow_new_head=True)
