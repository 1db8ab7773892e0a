"""Parameters for a model from a file people have: a BiT `.npz` file or a run's workdir.

One entry point, `load_params`, for teachers (`config.teachers[i].checkpoint`), the student's
initialisation (`config.student.init`) and the commands. A file that does not fit the model is
bad input, naming the first mismatching key and both shapes; a head for another class count is
replaced by a zero head where `allow_new_head` (fine-tuning, `student.init`), and refused
otherwise (a teacher must predict the dataset's classes).
"""

from typing import Any

from etils import epath
from flax import traverse_util
import flax.linen as nn
import numpy as np

from big_distill import checkpoint, errors
from big_distill.models import bit


def check_exists(path: str, key: str) -> None:
  """Bad input unless `path` (the value of config `key`) is set and exists."""
  if not path:
    raise errors.BadInput(f'{key} is not set: give a BiT .npz file or a run\'s workdir.')
  if not epath.Path(path).exists():
    raise errors.BadInput(f'{key} {path!r} does not exist.')


def load_params(path: str, model: nn.Module, abstract_params: Any, *,
                allow_new_head: bool = False) -> Any:
  """Parameters for `model` (host arrays) from a BiT `.npz` file or a run's latest checkpoint;
  their shapes must fit `abstract_params`. An unreadable file is bad input too."""
  try:
    if path.endswith('.npz'):
      return _from_bit_npz(path, model, abstract_params, allow_new_head)
    params, step, _ = checkpoint.read_params(path, 'latest')
  except errors.BadInput:
    raise
  except Exception as e:  # Truncated or garbled files: zip, tensorstore, JSON errors.
    raise errors.BadInput(f'Cannot read the checkpoint {path} ({type(e).__name__}: '
                          f'{(str(e).strip().splitlines() or [""])[0][:200]}).') from None
  if allow_new_head and params['head']['bias'].shape != (model.num_classes,):
    params = bit.replace_head(params, model)
  _check_classes(f'{path} (step {step})', params['head']['bias'].shape[0], model)
  check_fits(params, abstract_params, f'Checkpoint {path} (step {step})')
  return params


def check_fits(params: Any, abstract_params: Any, source: str) -> None:
  """Bad input naming the first key whose shape differs between `params` and the model's."""
  got = traverse_util.flatten_dict(params, sep='/')
  want = traverse_util.flatten_dict(abstract_params, sep='/')
  for key in sorted(set(got) | set(want)):
    shapes = [tuple(t[key].shape) if key in t else 'nothing' for t in (got, want)]
    if shapes[0] != shapes[1]:
      raise errors.BadInput(f'{source} does not fit the configured model: {key}: checkpoint has '
                            f'{shapes[0]}, model expects {shapes[1]}.')


def _from_bit_npz(path: str, model: nn.Module, abstract_params: Any, allow_new_head: bool) -> Any:
  with epath.Path(path).open('rb') as file, np.load(file, allow_pickle=False) as f:
    head = f['resnet/head/conv2d/kernel'] if 'resnet/head/conv2d/kernel' in f.files else None
  new_head = allow_new_head and (head is None or head.shape[-1] != model.num_classes)
  if head is not None and not new_head:
    _check_classes(path, head.shape[-1], model)
  channels = abstract_params['conv_root']['kernel'].shape[2]
  return bit.load_bit_npz(path, model, skip_head=new_head, input_channels=channels)


def _check_classes(source: str, classes: int, model: nn.Module) -> None:
  if classes != model.num_classes:
    raise errors.BadInput(f'{source} predicts {classes} classes, but the dataset has '
                          f'{model.num_classes}; use a model trained on this dataset\'s classes.')
