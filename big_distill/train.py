"""The training loop: data, models, state, restore, step, eval, checkpoint. Read top to bottom."""

import functools
import itertools
import json
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import periodic_actions

from big_distill import checkpoint, configlib, metrics, parallel, steps
from big_distill import teachers as teachers_lib
from big_distill.data import input_pipeline
from big_distill.models import compute_dtype, from_config
from big_distill.optim import make_optimizer


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks that need no data or model, so bad input fails before anything is written."""
  if config.mode not in ('supervised', 'distill'):
    raise ValueError(f"config.mode={config.mode!r}; use 'supervised' or 'distill'.")
  if config.mode == 'distill' and config.variant not in steps.VARIANTS:
    raise ValueError(f'config.variant={config.variant!r}; use one of {", ".join(steps.VARIANTS)}.')
  if config.teacher_logits_cache and (config.mode, config.variant) != ('distill', 'fixed'):
    raise ValueError("config.teacher_logits_cache needs config.variant='fixed' (only a teacher "
                     'that sees un-augmented images has logits that can be precomputed).')
  if config.input.extra_data.dataset:
    if config.mode != 'distill' or config.teacher_logits_cache:
      raise ValueError('config.input.extra_data needs distill mode without a teacher logits cache '
                       '(extra images have no labels and no precomputed logits).')
    if not 0 < config.input.extra_data.fraction < 1:
      raise ValueError(f'config.input.extra_data.fraction={config.input.extra_data.fraction}; '
                       'use a share of the batch between 0 and 1.')
  for key in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    if config[key] < 1:
      raise ValueError(f'config.{key}={config[key]}; use a positive integer.')
  if config.mode == 'distill' and config.temperature <= 0:
    raise ValueError(f'config.temperature={config.temperature}; use a positive temperature.')
  if config.mode == 'distill' and config.variant == 'funmatch' and config.mixup_alpha <= 0:
    raise ValueError(f'config.mixup_alpha={config.mixup_alpha}; function matching mixes with '
                     'ratios ~ Beta(alpha, alpha), alpha > 0.')
  compute_dtype(config.dtype, 'config.dtype')
  compute_dtype(config.teacher_dtype, 'config.teacher_dtype')
  input_pipeline.check_input(config.input)
  parallel.check_batch_size(config.input.batch_size)
  parallel.check_batch_size(config.input.eval_batch_size, 'input.eval_batch_size')


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


# Keys that change how a run executes or what it logs, not what it computes: a workdir may
# continue with other values.
RUNTIME_KEYS = ('mesh.', 'profile.', 'log_every_steps', 'eval_every_steps',
                'checkpoint_every_steps', 'keep_checkpoints', 'input.prefetch', 'input.data_dir')


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir that holds a run of another config (the device mesh may differ: state
  is restored onto any layout), or that cannot be written.

  Reads only, except for creating the workdir (and a probe file, removed) when it is writable.
  """
  path = epath.Path(workdir) / 'config.json'
  if path.exists() and not config.allow_config_change:
    with path.open() as f:
      stored = _flatten(json.load(f))
    new = _flatten(_config_json(config))
    changed = sorted(k for k in set(stored) | set(new) if stored.get(k) != new.get(k) and
                     k != 'allow_config_change' and not k.startswith(RUNTIME_KEYS))
    if changed:
      raise ValueError(f'{workdir} holds a run of another config (differs in: '
                       f'{", ".join(changed[:8])}{", ..." if len(changed) > 8 else ""}); use a new '
                       '--workdir, or pass --config.allow_config_change=True to continue it.')
  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    probe = epath.Path(workdir) / f'.write_probe_{jax.process_index()}'
    probe.write_text('ok')
    probe.unlink()
  except Exception as e:  # OSError locally; remote filesystems (gs://) raise their own errors.
    raise ValueError(f'Cannot write to --workdir={workdir} ({getattr(e, "strerror", None) or e}); '
                     'choose a writable directory.') from None


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  if jax.process_index() == 0:
    with (epath.Path(workdir) / 'config.json').open('w') as f:
      json.dump(_config_json(config), f, indent=2, sort_keys=True)


def evaluate(eval_step, params: Any, teacher_params: Any, eval_ds, mesh) -> dict[str, float]:
  """Runs the eval split once; returns per-example means of the eval step's sums."""
  totals = None
  for local in eval_ds.as_numpy_iterator():
    sums = eval_step(params, teacher_params, parallel.to_global(local, mesh))
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = totals.pop('count')
  return {f'eval/{k}': float(v / count) for k, v in totals.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains per `config` in `workdir` (resuming from its latest checkpoint); returns final eval.

  A SIGTERM from here on, even during start-up, makes the run save and exit as preempted.
  """
  validate(config)
  preemption = checkpoint.Preemption()
  try:
    return _train(config, workdir, preemption)
  finally:
    preemption.close()


def _train(config: ml_collections.ConfigDict, workdir: str,
           preemption: checkpoint.Preemption) -> dict[str, float]:
  """The body of `train_and_evaluate`."""
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
  replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)

  # Data.
  builder = input_pipeline.get_builder(config.input.dataset, config.input.data_dir)
  num_train = input_pipeline.num_examples(builder, config.input.train_split)
  input_pipeline.num_examples(builder, config.input.eval_split)
  num_classes = input_pipeline.num_classes(builder)
  channels = input_pipeline.channels(builder)
  extra = config.input.extra_data
  extra_builder = (input_pipeline.get_builder(extra.dataset, extra.data_dir)
                   if extra.dataset else None)
  if extra_builder:
    input_pipeline.num_examples(extra_builder, extra.split)
  image_shape = (config.input.resolution, config.input.resolution, channels)
  num_steps = configlib.total_steps(config, num_train)

  # Models, optimizer and the (student's) training state.
  student = from_config(config.student, num_classes, config.dtype)
  tx, schedule = make_optimizer(config, num_steps)
  rng = jax.random.PRNGKey(config.seed)
  init = functools.partial(steps.init_state, student, tx, image_shape=image_shape)
  abstract = jax.eval_shape(init, rng)
  state_sharding = parallel.param_shardings(abstract, mesh, config.mesh.student_fsdp)
  init = jax.jit(init, out_shardings=state_sharding)
  teacher_params, teacher_sharding, teacher_view = (), (), 'same'
  if config.mode == 'distill':
    teacher_view = 'index' if config.teacher_logits_cache else steps.TEACHER_VIEWS[config.variant]
    teachers, teacher_params = teachers_lib.load_teachers(config.teachers, num_classes,
                                                          image_shape, config.teacher_dtype)
    teacher_sharding = parallel.param_shardings(teacher_params, mesh, config.mesh.teacher_fsdp)
    teacher_params = jax.device_put(teacher_params, teacher_sharding)
    train_step = functools.partial(
        steps.distill_step, student=student, teachers=teachers, tx=tx, schedule=schedule,
        variant=config.variant, temperature=config.temperature, mixup_alpha=config.mixup_alpha)
    eval_step = functools.partial(steps.distill_eval_step, student=student, teachers=teachers)
  else:
    train_step = functools.partial(steps.supervised_step, model=student, tx=tx,
                                   schedule=schedule)
    train_step = _ignore_teacher(train_step)
    eval_step = _ignore_teacher(functools.partial(steps.supervised_eval_step, model=student))
  train_step = jax.jit(train_step, donate_argnums=0,
                       in_shardings=(state_sharding, teacher_sharding, batch_sharding, replicated),
                       out_shardings=(state_sharding, replicated))
  eval_step = jax.jit(eval_step,
                      in_shardings=(state_sharding.params, teacher_sharding, batch_sharding),
                      out_shardings=replicated)

  # Workdir: resume from the newest intact checkpoint if there is one, else start from
  # `student.init` or from scratch.
  check_workdir(config, workdir)
  table = None
  if teacher_view == 'index':  # Before anything is written: a stale cache is bad input.
    table = _teacher_logits(config, workdir, builder, teachers, teacher_params,
                            teacher_sharding, mesh)
  abstract = parallel.with_shardings(abstract, state_sharding)
  manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
  state = checkpoint.restore_latest(manager, abstract, workdir)
  if state is None and config.student.get('init'):
    init_params = checkpoint.load_params(config.student['init'], student, abstract.params,
                                         allow_new_head=True)
    state = jax.jit(functools.partial(steps.new_state, tx=tx), out_shardings=state_sharding)(
        init_params)
  elif state is None:
    state = init(rng)
  start_step = int(state.step)
  if preemption.requested:  # During start-up: nothing new to save.
    raise checkpoint.Preempted(start_step)
  if start_step:
    logging.info('Resuming from the checkpoint of step %d.', start_step)
  write_config(config, workdir)
  writer = metrics.create_writer(workdir)
  writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()})

  # The loop.
  def batches_from(step: int):
    stream = input_pipeline.train_batches(config.input, builder, seed=config.seed,
                                          start_step=step, teacher_view=teacher_view,
                                          extra_builder=extra_builder)
    if table is not None:
      stream = ({**b, 'teacher_logits': np.asarray(table[b.pop('index')])} for b in stream)
    return stream

  batches = parallel.prefetch_to_mesh(batches_from(start_step), mesh, config.input.prefetch)
  if start_step < num_steps:  # Compiled ahead of time, to report the compile time.
    batch = next(batches)
    t_compile = time.perf_counter()
    train_step = train_step.lower(state, teacher_params, batch, rng).compile()
    compile_seconds = time.perf_counter() - t_compile
    logging.info('Compiled the train step in %.1f s.', compile_seconds)
    writer.write_scalars(start_step + 1, {'train/compile_seconds': compile_seconds})
    batches = itertools.chain([batch], batches)
  eval_ds = input_pipeline.eval_batches(config.input, builder)
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                             every_secs=30)
  hooks = [progress]
  if config.profile.num_steps:
    hooks.append(periodic_actions.Profile(
        logdir=workdir, num_profile_steps=config.profile.num_steps, profile_duration_ms=None,
        first_profile=config.profile.first_step, every_secs=None))
  logging.info('Training %s for %d steps (%d examples/step, %d devices).', config.mode,
               num_steps, config.input.batch_size, jax.device_count())
  eval_results, pending, t_log = {}, [], time.time()
  try:
    for step in range(start_step + 1, num_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, step_metrics = train_step(state, teacher_params, next(batches), rng)
      pending.append(step_metrics)
      for hook in hooks:
        hook(step)
      preempted = preemption.reached(manager, step)
      log_now = step % config.log_every_steps == 0 or step == num_steps
      save_now = step % config.checkpoint_every_steps == 0 or step == num_steps or preempted
      if log_now or save_now:
        pending = jax.device_get(pending)
        _check_finite(pending, step - len(pending) + 1, manager, batches_from)
      if log_now:
        means = {f'train/{k}': float(np.mean([m[k] for m in pending])) for k in pending[0]}
        now = time.time()
        means['train/img_per_sec'] = len(pending) * config.input.batch_size / (now - t_log)
        means['epoch'] = step * config.input.batch_size / num_train
        writer.write_scalars(step, means)
        pending, t_log = [], now
      if step % config.eval_every_steps == 0 or step == num_steps:
        t_eval = time.time()
        with progress.timed('eval'):
          eval_results = evaluate(eval_step, state.params, teacher_params, eval_ds, mesh)
        writer.write_scalars(step, eval_results)
        t_log += time.time() - t_eval  # Training throughput leaves out the time of eval.
      if save_now:
        checkpoint.save(manager, step, state)
      if preempted:
        checkpoint.wait(manager)
        raise checkpoint.Preempted(step)
    checkpoint.wait(manager)
  finally:
    writer.flush()
    manager.close()
  if not eval_results and start_step >= num_steps:
    eval_results = evaluate(eval_step, state.params, teacher_params, eval_ds, mesh)
  return eval_results


def _check_finite(pending: list[dict[str, np.ndarray]], first_step: int, manager,
                  batches_from) -> None:
  """Stops at the first step whose loss, gradient or parameters are not finite.

  Nothing of that step is saved; the log gets the statistics of its batch, which is recomputed
  from the data pipeline (a pure function of the step).
  """
  for i, m in enumerate(pending):
    bad = [k for k in ('loss', 'grad_norm', 'param_norm') if not np.isfinite(m[k])]
    if not bad:
      continue
    step = first_step + i
    batch = next(batches_from(step - 1))
    for key, value in batch.items():
      value = np.asarray(value, np.float64)
      logging.error('Batch of step %d: %s shape=%s min=%g max=%g mean=%g std=%g non-finite=%d',
                    step, key, value.shape, np.nanmin(value), np.nanmax(value),
                    np.nanmean(value), np.nanstd(value), np.sum(~np.isfinite(value)))
    raise FloatingPointError(
        f'Non-finite {", ".join(bad)} at step {step} '
        f'({", ".join(f"{k}={m[k]:g}" for k in ("loss", "grad_norm", "param_norm"))}); '
        f'nothing of it was saved, the newest checkpoint is step {manager.latest_step()}. '
        'The batch statistics are in the log; lower config.lr or set config.grad_clip_norm.')


def _teacher_logits(config: ml_collections.ConfigDict, workdir: str, builder, teachers,
                    teacher_params: tuple[Any, ...], teacher_sharding: tuple[Any, ...],
                    mesh) -> np.ndarray:
  """The fixed teachers' [example, teacher, class] logits on the un-augmented train split."""
  split = config.input.train_split
  num = input_pipeline.num_examples(builder, split)
  meta = teachers_lib.fingerprint(
      config.teachers, teacher_params, dataset=builder.info.full_name, split=split,
      num_examples=num, resolution=config.input.resolution,
      central_crop=config.input.central_crop)
  logits_fn = jax.jit(lambda p, batch: teachers.logits(p, batch['image']),
                      in_shardings=(teacher_sharding, parallel.batch_sharded(mesh)),
                      out_shardings=parallel.batch_sharded(mesh))
  batches = (parallel.to_global(b, mesh) for b in input_pipeline.eval_batches(
      config.input, builder, split=split, cache=False).as_numpy_iterator())
  return teachers_lib.cached_logits(
      epath.Path(workdir) / epath.Path(config.teacher_logits_cache), meta,
      lambda: teachers_lib.compute_logits(functools.partial(logits_fn, teacher_params), batches,
                                          num))


def _ignore_teacher(fn):
  """Gives a supervised step the distill step's signature (teacher params in 2nd place)."""
  @functools.wraps(fn)
  def wrapped(state_or_params, teacher_params, *args):
    del teacher_params
    return fn(state_or_params, *args)
  return wrapped


def _flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  """{'a.b': v, 'teachers[0].depth': v, ...}; values other than scalars become strings."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    elif isinstance(v, (list, tuple)) and v and all(isinstance(x, dict) for x in v):
      for i, x in enumerate(v):
        out.update(_flatten(x, f'{prefix}{k}[{i}].'))
    else:
      out[f'{prefix}{k}'] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out
