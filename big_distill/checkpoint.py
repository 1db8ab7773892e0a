"""Checkpoints: orbax for the training state (`WORKDIR/checkpoints/<step>/{params,opt_state}`),
preemption (SIGTERM), and reading parameters for teachers and student initialisation (orbax runs
or BiT `.npz` files).

Parameters and optimizer state are separate items, so a finished supervised run can serve as a
teacher by restoring `params` alone. Orbax writes each checkpoint atomically (a temporary
directory renamed when complete); a checkpoint that cannot be read back is moved aside to
`WORKDIR/corrupt_checkpoints/` (never deleted) and the next older one is used.
"""

import os
import signal
import time
from typing import Any

from absl import logging
from etils import epath
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from big_distill.models import bit

ITEMS = ('params', 'opt_state')


def absolute(path: str | os.PathLike) -> epath.Path:
  """`path` as an `epath.Path` (local, or remote such as `gs://bucket/dir`); a relative local path
  is made absolute."""
  path = epath.Path(path)
  return path if path.is_absolute() else path.absolute()


def make_manager(workdir: str, *, keep: int) -> ocp.CheckpointManager:
  """Keeps the newest `keep` checkpoints; the loop decides when to save."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(absolute(workdir) / 'checkpoints', options=options,
                               item_names=ITEMS)


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: preempted, a checkpoint was written; run it again.


class Preempted(Exception):
  """Raised once the run is saved up to the step at which a preemption was noticed."""

  def __init__(self, step: int):
    super().__init__(f'Preempted at step {step}; the run is saved up to it. Run the same command '
                     'again to resume.')
    self.step = step


class Preemption:
  """Notices SIGTERM. One process: its own handler; several: JAX's preemption sync point, so
  that every process saves at the same step."""

  def __init__(self):
    self._requested = False
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint after this step, then exiting.')
    self._requested = True

  @property
  def requested(self) -> bool:
    """Whether this process has had a SIGTERM (one process only)."""
    return self._requested

  def reached(self, manager: ocp.CheckpointManager, step: int) -> bool:
    return self._requested or manager.reached_preemption(step)

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves `state` (a TrainState) at `step`, asynchronously (orbax writes atomically)."""
  try:
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state)), force=True)
  except Exception as e:  # An earlier asynchronous write may fail here too.
    raise _write_error(manager, e) from e


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for pending asynchronous writes; a failed one raises OSError."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise _write_error(manager, e) from e


def _write_error(manager: ocp.CheckpointManager, error: Exception) -> OSError:
  message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return OSError(f'Writing a checkpoint to {manager.directory} failed ({message}); earlier '
                 f'checkpoints are intact (newest: step {manager.latest_step()}). Free disk space '
                 'and run the same command again to resume.')


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   workdir: str) -> Any | None:
  """The newest intact saved state, laid out like `abstract_state` (shapes, dtypes, shardings).

  Unreadable checkpoints are moved to `workdir/corrupt_checkpoints/` with a warning that names
  them; interrupted writes (orbax temporary directories) are reported and ignored. A checkpoint
  whose shapes do not fit the configured model is bad input: ValueError.
  """
  for name in sorted(p.name for p in manager.directory.iterdir()) if manager.directory.exists() else []:
    if '.orbax-checkpoint-tmp' in name:
      logging.warning('Ignoring %s: a checkpoint whose writing was interrupted.',
                      manager.directory / name)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_state.params),
          opt_state=ocp.args.StandardRestore(abstract_state.opt_state)))
    except ValueError as e:
      if 'shape' in str(e) or 'tree structures' in str(e):
        raise ValueError(f'The checkpoint of step {step} in {manager.directory} does not fit the '
                         f'configured model or optimizer ({str(e).splitlines()[0]}); use a new '
                         '--workdir.') from None
      _set_aside(manager, step, workdir, e)
      continue
    except Exception as e:  # Truncated or garbled files: tensorstore, JSON or msgpack errors.
      _set_aside(manager, step, workdir, e)
      continue
    return abstract_state.replace(
        step=jax.device_put(np.int32(step), abstract_state.step.sharding),
        params=restored.params, opt_state=restored.opt_state)
  return None


def _set_aside(manager: ocp.CheckpointManager, step: int, workdir: str, error: Exception) -> None:
  source = manager.directory / str(step)
  target = epath.Path(workdir) / 'corrupt_checkpoints' / f'{step}-{int(time.time())}'
  reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
  logging.warning('Checkpoint %s is unreadable (%s); moving it to %s and trying an older one.',
                  source, reason, target)
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
  multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
  manager.reload()


def _checkpoints_dir(path: str) -> epath.Path:
  """A run's `checkpoints/` directory, given the run's workdir or that directory itself."""
  path = absolute(path)
  return path / 'checkpoints' if (path / 'checkpoints').is_dir() else path


def read_params(path: str, step: int | None = None) -> tuple[Any, int]:
  """The parameters (host arrays, as saved) and step of a run's checkpoint (default: latest).

  Any device layout may have written it: the arrays are restored whole onto this process's first
  device, with the shapes and dtypes of the checkpoint's own metadata.
  """
  handlers = {name: ocp.StandardCheckpointHandler() for name in ITEMS}
  with ocp.CheckpointManager(_checkpoints_dir(path), item_handlers=handlers) as manager:
    steps = manager.all_steps()
    if not steps:
      raise ValueError(f'No checkpoint found in {path!r}.')
    step = max(steps) if step is None else step
    if step not in steps:
      raise ValueError(f'No checkpoint of step {step} in {path!r}; it has {sorted(steps)}.')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        manager.item_metadata(step).params)
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target)))
  return jax.tree_util.tree_map(np.asarray, restored.params), step


def load_params(path: str, model: bit.ResNetV2, abstract_params: Any, *,
                allow_new_head: bool = False) -> Any:
  """Parameters for `model` from a BiT `.npz` file or a run's orbax checkpoint.

  Shapes must fit `abstract_params`, else ValueError names the first mismatching key (or the
  class counts, for the head). With `allow_new_head`, a head for another class count is replaced
  by a zero head (BiT fine-tuning). An unreadable file is a ValueError too.
  """
  try:
    if path.endswith('.npz'):
      with epath.Path(path).open('rb') as file, np.load(file) as f:
        head = f['resnet/head/conv2d/kernel'] if 'resnet/head/conv2d/kernel' in f.files else None
      new_head = allow_new_head and (head is None or head.shape[-1] != model.num_classes)
      if head is not None and not new_head:
        _check_classes(path, head.shape[-1], model)
      channels = abstract_params['conv_root']['kernel'].shape[2]
      return bit.load_bit_npz(path, model, skip_head=new_head, input_channels=channels)
    params, step = read_params(path)
  except ValueError:
    raise
  except Exception as e:  # Truncated or garbled files: zip, tensorstore, JSON errors.
    raise ValueError(f'Cannot read the checkpoint {path} ({type(e).__name__}: '
                     f'{(str(e).strip().splitlines() or [""])[0][:200]}).') from None
  if allow_new_head and params['head']['bias'].shape != (model.num_classes,):
    params = bit.replace_head(params, model)
  _check_classes(f'{path} (step {step})', params['head']['bias'].shape[0], model)
  got = traverse_util.flatten_dict(params, sep='/')
  want = traverse_util.flatten_dict(abstract_params, sep='/')
  for key in sorted(set(got) | set(want)):
    shapes = [tuple(t[key].shape) if key in t else 'nothing' for t in (got, want)]
    if shapes[0] != shapes[1]:
      raise ValueError(f'Checkpoint {path} (step {step}) does not fit the configured model: '
                       f'{key}: checkpoint has {shapes[0]}, model expects {shapes[1]}.')
  return params


def _check_classes(source: str, classes: int, model: bit.ResNetV2) -> None:
  if classes != model.num_classes:
    raise ValueError(f'{source} predicts {classes} classes, but the dataset has '
                     f'{model.num_classes}; use a model trained on this dataset\'s classes.')
