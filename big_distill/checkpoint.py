"""Orbax checkpoints of the student's training state: `WORKDIR/checkpoints/<step>/{params,opt_state}`.

Parameters and optimizer state are separate items, so a finished supervised run can serve as a
teacher by restoring `params` alone.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ('params', 'opt_state')


def make_manager(workdir: str, *, keep: int, every_steps: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every_steps,
                                         create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options, item_names=ITEMS)


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
  """Saves `state` (a TrainState) at `step` if the interval says so or `force`."""
  return manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state.params),
      opt_state=ocp.args.StandardSave(state.opt_state)), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> Any | None:
  """The newest saved state, laid out like `abstract_state` (shapes, dtypes, shardings)."""
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_state.params),
      opt_state=ocp.args.StandardRestore(abstract_state.opt_state)))
  return abstract_state.replace(step=jax.numpy.asarray(step, jax.numpy.int32),
                                params=restored.params, opt_state=restored.opt_state)


def load_params(path: str, abstract_params: Any) -> Any:
  """Parameters of a run's latest checkpoint; `path` is its workdir or its `checkpoints/` dir."""
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  with ocp.CheckpointManager(os.path.abspath(path), item_names=ITEMS) as manager:
    step = manager.latest_step()
    if step is None:
      raise ValueError(f'No checkpoint found in {path!r}.')
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params)))
    except ValueError as e:
      raise ValueError(f'Checkpoint {path!r} (step {step}) does not fit the configured '
                       f'model: {str(e).splitlines()[0]}') from None
  return restored.params
