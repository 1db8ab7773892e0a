"""Checkpoints: orbax for the training state (`WORKDIR/checkpoints/<step>/{params,opt_state}`),
and reading parameters for teachers and student initialisation (orbax runs or BiT `.npz` files).

Parameters and optimizer state are separate items, so a finished supervised run can serve as a
teacher by restoring `params` alone.
"""

import os
from typing import Any

from flax import traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

from big_distill.models import bit

ITEMS = ('params', 'opt_state')


def make_manager(workdir: str, *, keep: int) -> ocp.CheckpointManager:
  """Keeps the newest `keep` checkpoints; the loop decides when to save."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options, item_names=ITEMS)


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves `state` (a TrainState) at `step`, asynchronously (orbax writes atomically)."""
  manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state.params),
      opt_state=ocp.args.StandardSave(state.opt_state)), force=True)


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


def _checkpoints_dir(path: str) -> str:
  """A run's `checkpoints/` directory, given the run's workdir or that directory itself."""
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  return os.path.abspath(path)


def read_params(path: str, step: int | None = None) -> tuple[Any, int]:
  """The parameters (host arrays, as saved) and step of a run's checkpoint (default: latest)."""
  with ocp.CheckpointManager(_checkpoints_dir(path), item_names=ITEMS) as manager:
    steps = manager.all_steps()
    if not steps:
      raise ValueError(f'No checkpoint found in {path!r}.')
    step = max(steps) if step is None else step
    if step not in steps:
      raise ValueError(f'No checkpoint of step {step} in {path!r}; it has {sorted(steps)}.')
    restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
  return jax.tree_util.tree_map(np.asarray, restored.params), step


def load_params(path: str, model: bit.ResNetV2, abstract_params: Any, *,
                allow_new_head: bool = False) -> Any:
  """Parameters for `model` from a BiT `.npz` file or a run's orbax checkpoint.

  Shapes must fit `abstract_params`, else ValueError names the first mismatching key. With
  `allow_new_head`, a head for another class count is replaced by a zero head (BiT fine-tuning).
  """
  if path.endswith('.npz'):
    with np.load(path) as f:
      head = f.get('resnet/head/conv2d/kernel')
      new_head = allow_new_head and (head is None or head.shape[-1] != model.num_classes)
    channels = abstract_params['conv_root']['kernel'].shape[2]
    return bit.load_bit_npz(path, model, skip_head=new_head, input_channels=channels)
  params, step = read_params(path)
  if allow_new_head and params['head']['bias'].shape != (model.num_classes,):
    params = bit.replace_head(params, model)
  got = traverse_util.flatten_dict(params, sep='/')
  want = traverse_util.flatten_dict(abstract_params, sep='/')
  for key in sorted(set(got) | set(want)):
    shapes = [tuple(t[key].shape) if key in t else 'nothing' for t in (got, want)]
    if shapes[0] != shapes[1]:
      raise ValueError(f'Checkpoint {path} (step {step}) does not fit the configured model: '
                       f'{key}: checkpoint has {shapes[0]}, model expects {shapes[1]}.')
  return params
