"""The training loop: build, check, restore, then step, log, eval, checkpoint. Top to bottom.

A run is resumable at any point: its data and randomness are functions of (seed, step), so the
same command continues from the newest intact checkpoint with the batches it would have seen.
"""

import contextlib
import dataclasses
import itertools
import time
from typing import Any, Iterator

from absl import logging
from clu import periodic_actions
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from big_distill import build, checkpoint, console, errors, metrics, parallel, preemption, steps
from big_distill import targets as targets_lib, workdir as workdir_lib
from big_distill.data import locks


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains per `config` in `workdir`; returns the final eval metrics.

  Bad input is refused before anything is written. A SIGTERM from the start on makes the run save
  the step it has finished and raise `errors.Preempted`; a Ctrl-C during the steps, likewise
  `errors.Interrupted`.
  """
  with preemption.Preemption() as preempt, contextlib.ExitStack() as held:
    config = targets_lib.with_stored_teachers(config)
    run = build.create_run(workdir_lib.with_stored_models(config, workdir), prepare=False)
    config = run.config  # With every model's architecture and split resolved.
    workdir_lib.check(config, workdir)
    targets = targets_lib.open_targets(run, workdir)  # Read and checked: nothing written.
    saved = checkpoint.saved_steps(workdir)  # A resumed run needs no `student.init`.
    init = config.student.get('init')
    init_params = build.load_student_init(run) if init and not saved else None
    if preempt.requested:  # During start-up: nothing new to save.
      raise errors.Preempted(max(saved, default=0))
    run = build.prepare_data(run)  # Every check has passed: image folders may be written.

    workdir_lib.create(workdir)
    held.enter_context(locks.only_user(workdir))
    console.log_to(workdir_lib.log_file(workdir, jax.process_index()))
    targets = dataclasses.replace(targets, run=run).ready()
    keep_best = run.distill if config.keep_best is None else config.keep_best
    manager = checkpoint.create_manager(workdir, keep=config.keep_checkpoints,
                                        keep_best=keep_best)
    try:
      state = checkpoint.restore_latest(manager, run.abstract_state, workdir)
      if state is not None:
        logging.info('Resuming from the checkpoint of step %d, the newest intact one%s.',
                     state.step, _best_so_far(manager, keep_best))
      elif init_params is not None:
        state = run.new_state(init_params)
      else:
        state = run.init_state(jax.random.PRNGKey(config.seed))
      if jax.process_index() == 0:
        workdir_lib.write_config(config, workdir)
        workdir_lib.write_data(workdir, num_classes=run.data.num_classes,
                               channels=run.data.channels, num_train=run.data.num_train,
                               class_names=list(run.data.class_names))
      return _loop(targets, state, workdir, manager, preempt, keep_best)
    finally:
      manager.close()


def _loop(targets: targets_lib.Targets, state: steps.TrainState, workdir: str,
          manager: ocp.CheckpointManager, preempt: preemption.Preemption,
          keep_best: bool) -> dict[str, float]:
  """Steps from `state.step` to the end: log, eval, checkpoint, stop when preempted."""
  run = targets.run
  config, num_steps, start_step = run.config, run.num_steps, int(state.step)
  rng = jax.random.PRNGKey(config.seed)
  writer = metrics.create_writer(workdir)
  writer.write_hparams(workdir_lib.flatten(config.to_dict()))
  batches_from = targets.train_batches
  batches = parallel.prefetch_to_mesh(batches_from(start_step), run.mesh, config.input.prefetch)
  train_step, batches = _compiled(run, state, batches, rng, writer)
  eval_sets, hooks = targets.eval_sets(), _hooks(config, num_steps, writer, workdir)
  logging.info('Training %s for %d steps (%d examples/step, %d devices).', config.mode,
               num_steps, config.input.batch_size, jax.device_count())
  train_log, eval_results = _TrainLog(writer, run), {}
  bar = console.Bar('train', total=num_steps, initial=start_step)
  try:
    with preempt.interruptible():  # Ctrl-C: save this step, then stop.
      for step in range(start_step + 1, num_steps + 1):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, step_metrics = train_step(state, run.teacher_params, next(batches), rng)
        train_log.add(step_metrics)
        for hook in hooks:
          hook(step)
        preempted = preempt.reached(manager, step)
        eval_now = step % config.eval_every_steps == 0 or step == num_steps
        save_now = (step % config.checkpoint_every_steps == 0 or step == num_steps or preempted
                    or (keep_best and eval_now))
        if save_now:
          train_log.check(step, manager, batches_from)  # Nothing non-finite is saved.
        if step % config.log_every_steps == 0 or step == num_steps:
          bar.update(0, loss=f'{train_log.write(step, manager, batches_from):.4g}')
        if eval_now:
          with hooks[0].timed('eval'), train_log.paused():
            eval_results = run.evaluate(state.variables, eval_sets)
          writer.write_scalars(step, eval_results)
          bar.update(0, eval=f'{checkpoint.best_metric(eval_results):.2%}')
        if save_now:
          checkpoint.save(manager, step, state, eval_results if eval_now and keep_best else None)
        bar.update()
        if preempted:
          checkpoint.wait(manager)
          raise (errors.Interrupted if preempt.interrupted else errors.Preempted)(step)
    checkpoint.wait(manager)
  finally:
    bar.close()
    writer.flush()
  return eval_results or run.evaluate(state.variables, eval_sets)


def _compiled(run: build.Run, state: steps.TrainState, batches: Iterator[Any], rng: jax.Array,
              writer: Any) -> tuple[Any, Iterator[Any]]:
  """The train step compiled ahead of time on the first batch (its compile time logged as
  `train/compile_seconds`), and the batches, that one included; as they are if none is left. A
  batch of another kind (a replay's live steps, `targets`) compiles its own program when it
  first comes."""
  batch = next(batches, None)
  if batch is None or int(state.step) >= run.num_steps:
    return run.train_step, batches
  start = time.perf_counter()
  with console.Bar('compile', total=1, leave=False) as bar:
    compiled = run.train_step.lower(state, run.teacher_params, batch, rng).compile()
    bar.update()
  writer.write_scalars(int(state.step) + 1,
                       {'train/compile_seconds': time.perf_counter() - start})
  kind = jax.tree_util.tree_structure(batch)

  def train_step(state, teacher_params, batch, rng):
    step = compiled if jax.tree_util.tree_structure(batch) == kind else run.train_step
    return step(state, teacher_params, batch, rng)
  return train_step, itertools.chain([batch], batches)


def _hooks(config: ml_collections.ConfigDict, num_steps: int, writer: Any,
           workdir: str) -> list[Any]:
  """clu's progress report (first: it also times the evals) and, if asked for, a profile."""
  hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_secs=30)]
  if config.profile.num_steps:
    hooks.append(periodic_actions.Profile(
        logdir=workdir, num_profile_steps=config.profile.num_steps, profile_duration_ms=None,
        first_profile=config.profile.first_step, every_secs=None))
  return hooks


class _TrainLog:
  """The steps' metrics since the last log: checked for non-finite values, and written as their
  means with the training throughput (the time of evals left out) and the epoch."""

  def __init__(self, writer: Any, run: build.Run):
    self._writer, self._run = writer, run
    self._pending, self._start = [], time.time()

  def add(self, step_metrics: dict[str, Any]) -> None:
    self._pending.append(step_metrics)

  def check(self, step: int, manager: ocp.CheckpointManager, batches_from) -> None:
    """Stops (`_check_finite`) at the first non-finite step up to `step`."""
    self._pending = jax.device_get(self._pending)
    _check_finite(self._pending, step - len(self._pending) + 1, manager, batches_from)

  def write(self, step: int, manager: ocp.CheckpointManager, batches_from) -> float:
    """Writes the means since the last write; returns the mean loss."""
    self.check(step, manager, batches_from)
    batch_size, now = self._run.config.input.batch_size, time.time()
    means = {f'train/{k}': float(np.mean([m[k] for m in self._pending]))
             for k in self._pending[0]}
    means['train/img_per_sec'] = len(self._pending) * batch_size / (now - self._start)
    means['epoch'] = step * batch_size / self._run.data.num_train
    self._writer.write_scalars(step, means)
    self._pending, self._start = [], now
    return means['train/loss']

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Leaves the time of the block out of the throughput."""
    start = time.time()
    yield
    self._start += time.time() - start


def _best_so_far(manager: ocp.CheckpointManager, keep_best: bool) -> str:
  best = manager.best_step() if keep_best else None
  return f'; the best eval so far is {checkpoint.describe(manager, best)}' if best else ''


def _check_finite(pending: list[dict[str, Any]], first_step: int, manager: ocp.CheckpointManager,
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
    raise errors.Diverged(
        f'Non-finite {", ".join(bad)} at step {step} '
        f'({", ".join(f"{k}={m[k]:g}" for k in ("loss", "grad_norm", "param_norm"))}); '
        f'nothing of it was saved, the newest checkpoint is step {manager.latest_step()}. '
        'The batch statistics are in the log; lower config.lr or set config.grad_clip_norm.')
