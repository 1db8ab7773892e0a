"""The training state in orbax: `WORKDIR/checkpoints/<step>/{params,opt_state[,model_state]
[,metrics]}`.

Parameters, optimizer state and the model's other variables (BatchNorm statistics; no item for
models without any) are separate items, so a finished run can serve as a teacher or an
initialisation without its optimizer state. Orbax writes each checkpoint atomically (a
temporary directory renamed when complete). Which checkpoints stay is orbax's preservation policy:
the newest `keep`, and with `keep_best` also the one with the best eval accuracy (saved with its
eval metrics). A checkpoint that cannot be read back is moved aside (`workdir.corrupt_checkpoint`,
never deleted) and the next older one is used.
"""

import asyncio
import contextlib
import json
from typing import Any, Callable, Iterator

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from big_distill import errors, workdir as workdir_lib

ITEMS = ('params', 'opt_state', 'model_state')
# The eval metric that ranks checkpoints: the student's accuracy (distill or supervised mode).
BEST_METRICS = ('eval/student_accuracy', 'eval/accuracy')


def best_metric(metrics: dict[str, float]) -> float:
  """The value that ranks a checkpoint saved with eval `metrics` (higher is better)."""
  return next(metrics[k] for k in BEST_METRICS if k in metrics)


def create_manager(workdir: str, *, keep: int, keep_best: bool) -> ocp.CheckpointManager:
  """A manager that keeps the newest `keep` checkpoints and, with `keep_best`, the best one;
  the loop decides when to save."""
  policies = [checkpoint_managers.LatestN(n=keep)]
  if keep_best:
    policies.append(checkpoint_managers.BestN(get_metric_fn=best_metric, n=1,
                                              keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
      best_fn=best_metric if keep_best else None, best_mode='max', create=True)
  return ocp.CheckpointManager(workdir_lib.checkpoints(workdir), options=options,
                               item_names=ITEMS)


def saved_steps(workdir: str) -> list[int]:
  """The steps of the finished checkpoints in `workdir` (read without creating anything)."""
  directory = workdir_lib.checkpoints(workdir)
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if (
      directory.is_dir()) else []


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         metrics: dict[str, float] | None = None) -> None:
  """Saves `state` (a TrainState) at `step`, asynchronously, with the eval `metrics` of the step
  if it has them (they rank it for `keep_best`)."""
  items = dict(params=ocp.args.StandardSave(state.params),
               opt_state=ocp.args.StandardSave(state.opt_state))
  if state.model_state:  # Orbax refuses empty items.
    items['model_state'] = ocp.args.StandardSave(state.model_state)
  try:
    manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
  except Exception as e:  # An earlier asynchronous write may fail here too.
    raise _write_error(manager, e) from e


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for pending asynchronous writes; a failed one raises `errors.WriteFailed`."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise _write_error(manager, e) from e


def _write_error(manager: ocp.CheckpointManager, error: Exception) -> errors.WriteFailed:
  message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return errors.WriteFailed(
      f'Writing a checkpoint to {manager.directory} failed ({message}); earlier checkpoints are '
      f'intact (newest: step {manager.latest_step()}). Free disk space and run the same command '
      'again to resume.')


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   workdir: str) -> Any | None:
  """The newest intact saved state, laid out like `abstract_state` (shapes, dtypes, shardings).

  Unreadable checkpoints are moved aside with a warning that names them; interrupted writes
  (orbax temporary directories) are reported and ignored. A checkpoint whose shapes do not fit the
  configured model is bad input.
  """
  if manager.directory.exists():
    for name in sorted(p.name for p in manager.directory.iterdir()):
      if '.orbax-checkpoint-tmp' in name:
        logging.warning('Ignoring %s: a checkpoint whose writing was interrupted.',
                        manager.directory / name)
  for step in sorted(manager.all_steps(), reverse=True):
    items = dict(params=ocp.args.StandardRestore(abstract_state.params),
                 opt_state=ocp.args.StandardRestore(abstract_state.opt_state))
    if abstract_state.model_state:
      items['model_state'] = ocp.args.StandardRestore(abstract_state.model_state)
    try:
      with _tolerant_event_loops():
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except ValueError as e:
      if 'shape' in str(e) or 'tree structures' in str(e):
        raise errors.BadInput(
            f'The checkpoint of step {step} in {manager.directory} does not fit the configured '
            f'model or optimizer ({str(e).splitlines()[0]}); use a new --workdir.') from None
      _set_aside(manager, step, workdir, e)
      continue
    except Exception as e:  # Truncated or garbled files: tensorstore, JSON or msgpack errors.
      _set_aside(manager, step, workdir, e)
      continue
    return abstract_state.replace(
        step=jax.device_put(np.int32(step), abstract_state.step.sharding),
        params=restored.params, opt_state=restored.opt_state,
        model_state=restored.get('model_state', {}))
  return None


def _set_aside(manager: ocp.CheckpointManager, step: int, workdir: str, error: Exception) -> None:
  source = manager.directory / str(step)
  target = workdir_lib.corrupt_checkpoint(workdir, step)
  reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
  logging.warning('Checkpoint %s is unreadable (%s); moving it to %s and trying an older one.',
                  source, reason, target)
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
  multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
  manager.reload()


def describe(manager: ocp.CheckpointManager, step: int) -> str:
  """'step N' and, for a checkpoint saved with eval metrics, its accuracy."""
  metrics = manager.metrics(step)
  return f'step {step}' + (f' ({best_metric(metrics):.2%} eval accuracy)' if metrics else '')


def read_variables(source: str, step: int | str | None = None
                   ) -> tuple[dict[str, Any], int, str]:
  """The student's variables (`{'params': ...}` plus its model state, host arrays as saved) of a
  run's checkpoint, with its step and a note of which one it is. `step`: a step number,
  'latest', or 'best' (the best eval accuracy; the latest where no checkpoint has eval metrics);
  None: 'best'.

  `source` is a run's workdir or its checkpoints directory; nothing is created or changed there
  (the manager never saves; orbax's `read_only` option would warn on every read that it is
  read-only). Any device layout may have written the checkpoint: the arrays are restored whole
  onto this process's first device, with the shapes and dtypes of the checkpoint's own metadata.
  A damaged or incomplete checkpoint is bad input that names it.
  """
  directory = workdir_lib.find_checkpoints(source)
  if not directory.is_dir():
    raise errors.BadInput(f'No checkpoint found in {source!r} (no such directory).')
  handlers = {name: ocp.StandardCheckpointHandler() for name in ITEMS}
  # Metrics are read per step below, so that a damaged file names its step.
  options = ocp.CheckpointManagerOptions(create=False, lightweight_initialize=True)
  with _tolerant_event_loops(), ocp.CheckpointManager(
      directory, item_handlers=handlers, options=options) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise errors.BadInput(f'No checkpoint found in {source!r}.')
    if step in (None, 'best'):
      metrics = {s: _read(manager.metrics, s, source, steps) for s in steps}
      ranked = [s for s in steps if metrics[s]]
      step, which = ((max(ranked, key=lambda s: (best_metric(metrics[s]), s)), 'best') if ranked
                     else (steps[-1], 'latest'))
    elif step == 'latest':
      step, which = steps[-1], 'latest'
    else:
      which = 'requested'
      if not str(step).isdigit() or int(step) not in steps:
        raise errors.BadInput(f'No checkpoint of step {step} in {source!r}; it has '
                              f'{steps} (or use best or latest).')
      step = int(step)
    note = f'the {which} checkpoint, {_read(lambda s: describe(manager, s), step, source, steps)}'
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def restore(s: int) -> Any:
      metadata = manager.item_metadata(s)
      if metadata.get('params') is None:
        raise FileNotFoundError(f'{manager.directory / str(s)} holds no params')
      items = {name: ocp.args.StandardRestore(jax.tree_util.tree_map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata[name]))
               for name in ('params', 'model_state') if metadata.get(name) is not None}
      return manager.restore(s, args=ocp.args.Composite(**items))

    restored = _read(restore, step, source, steps)
  variables = {'params': restored['params'], **(restored.get('model_state') or {})}
  return jax.tree_util.tree_map(np.asarray, variables), step, note


def _read(fn: Callable[[int], Any], step: int, source: str, steps: list[int]) -> Any:
  """`fn(step)`, a read of the checkpoint of `step`; a damaged or missing file is bad input that
  names the checkpoint and the run's others."""
  try:
    return fn(step)
  except (ValueError, OSError, KeyError, TypeError) as e:
    others = ', '.join(str(s) for s in steps if s != step)
    rest = (f'its other checkpoints: step {others} (evaluate, predict and export take --step)'
            if others else 'it is the only checkpoint there')
    raise errors.BadInput(f'The checkpoint of step {step} in {source} is damaged or incomplete '
                          f'({_reason(e)}); {rest}.') from None


def _reason(error: Exception) -> str:
  """The gist of a failed read: tensorstore's status, innermost file and complaint, without its
  spec."""
  text = (str(error).strip().splitlines() or [type(error).__name__])[0]
  text = text.split(' [tensorstore_spec=')[0]
  if 'local file "' in text:
    status = text.split(':', 1)[0]
    path, _, complaint = text[text.rindex('local file "') + len('local file "'):].partition('"')
    text = f'{status}: {path}{complaint}' if status.isupper() else f'{path}{complaint}'
  if isinstance(error, json.JSONDecodeError):
    text = f'a metadata file is not JSON: {text}'
  return text[:300]


class _TolerantEventLoop(asyncio.SelectorEventLoop):
  """Drops what reaches the loop after it closed: callbacks scheduled by other threads, and the
  errors of its unfinished tasks."""

  def call_soon_threadsafe(self, callback, *args, context=None):
    if self.is_closed():
      return None
    return super().call_soon_threadsafe(callback, *args, context=context)

  def call_exception_handler(self, context: dict[str, Any]) -> None:
    if not self.is_closed():  # Closed: a task of a read that already failed was collected.
      super().call_exception_handler(context)


class _TolerantEventLoopPolicy(asyncio.DefaultEventLoopPolicy):
  _loop_factory = _TolerantEventLoop


@contextlib.contextmanager
def _tolerant_event_loops() -> Iterator[None]:
  """Orbax reads in a new event loop that it closes as soon as one read fails; tensorstore's
  reads still in flight then complete into the closed loop, and each one's error is printed as a
  traceback from a tensorstore thread (about one per array). The loops created meanwhile drop
  those completions instead."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_TolerantEventLoopPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)
