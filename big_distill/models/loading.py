"""Weights for a model from the files people have: the one entry point, `load_variables`, for
teachers (`config.teachers[i].checkpoint`), the student's initialisation (`config.student.init`)
and `big_distill.convert`.

Formats: a run's workdir (or its `checkpoints/`); a BiT `.npz`; a big_vision ViT `.npz`; a timm
state dict (`.safetensors`, read with `safetensors.numpy` without torch; `.pth`/`.pt`/`.bin` only
where torch is installed, read with `torch.load(weights_only=True)`). Nothing is ever unpickled
into arbitrary objects (`.npz` files are read with `allow_pickle=False`). Each model family owns
the conversion of its foreign layouts (`bit.params_from_timm`, ...); this module picks the reader.

A file that does not fit the model is bad input, naming the first mismatching key and both
shapes; a head for another class count is replaced by a zero head where `allow_new_head`
(fine-tuning, `student.init`) and refused otherwise (a teacher must predict the dataset's classes).
"""

import os
from typing import Any, Callable, Mapping

from etils import epath
from flax import traverse_util
import flax.linen as nn
import jax
import numpy as np

from big_distill import checkpoint, errors
from big_distill.models import bit, mobilenet_v3, vit

Variables = dict[str, Any]
TORCH_SUFFIXES = ('.pth', '.pt', '.bin')


def check_exists(path: str, key: str) -> None:
  """Bad input unless `path` (the value of config `key`) is set and exists."""
  if not path:
    raise errors.BadInput(f'{key} is not set: give a weights file (.npz, .safetensors) or a '
                          'run\'s workdir.')
  if not epath.Path(path).exists():
    raise errors.BadInput(f'{key} {path!r} does not exist.')


def load_variables(path: str, model: nn.Module, abstract: Variables, *,
                   allow_new_head: bool = False) -> Variables:
  """The variables (`{'params': ...}`, plus `batch_stats` for BatchNorm models; host arrays) of
  `model` from `path`, checked against `abstract` (the model's `jax.eval_shape`d init at the
  run's resolution and channels). Unreadable files are bad input too."""
  try:
    if epath.Path(path).is_dir():
      return _from_run(path, model, abstract, allow_new_head)
    return _from_file(path, model, abstract, allow_new_head)
  except errors.BadInput:
    raise
  except Exception as e:  # Truncated or garbled files: zip, safetensors, tensorstore errors.
    raise errors.BadInput(f'Cannot read the checkpoint {path} ({type(e).__name__}: '
                          f'{(str(e).strip().splitlines() or [""])[0][:200]}).') from None


def _from_run(path: str, model: nn.Module, abstract: Variables,
              allow_new_head: bool) -> Variables:
  variables, step, _ = checkpoint.read_variables(path, 'latest')
  params = variables['params']
  if allow_new_head and params['head']['bias'].shape != (model.num_classes,):
    variables = {**variables, 'params': replace_head(params, model.num_classes)}
  check_classes(f'{path} (step {step})', variables['params']['head']['bias'].shape[0], model)
  check_fits(variables, abstract, f'Checkpoint {path} (step {step})')
  return variables


def model_from_file(path: str, spec: Mapping[str, Any], *, channels: int = 3,
                    resolution: int | None = None) -> tuple[nn.Module, str, Variables, int]:
  """(model, family, variables, input side) of a weights file whose architecture the config
  entry `spec` names (`models.parse_spec`), with the class count of the file's head; the side is
  `resolution`, else a ViT file's own position-embedding grid, else 224."""
  from big_distill import models  # pylint: disable=g-import-not-at-top  # The registry imports us.
  check_exists(path, 'The weights file')
  arrays = read_arrays(path)
  family, kwargs = models.resolve(**spec)
  classes = next((reader[0](arrays) for (f, _), reader in READERS.items()
                  if f == family and reader[0](arrays) is not None), None)
  if classes is None:
    raise errors.BadInput(f'{path} has no classifier head a {family} model recognises.')
  model = models.get_model(family, **kwargs, num_classes=classes)
  side = resolution or (
      vit.checkpoint_side(arrays, model.dims()[0]) if family == 'vit' else None) or 224
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            np.zeros((1, side, side, channels), np.float32))
  return model, family, load_variables(path, model, abstract), side


def read_arrays(path: str) -> dict[str, np.ndarray]:
  """The named arrays of a weights file (see the module docstring for the formats)."""
  suffix = os.path.splitext(path)[1]
  if suffix == '.npz':
    with epath.Path(path).open('rb') as file, np.load(file, allow_pickle=False) as f:
      return {key: f[key] for key in f.files}
  if suffix == '.safetensors':
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    return dict(safetensors_numpy.load(epath.Path(path).read_bytes()))
  if suffix in TORCH_SUFFIXES:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise errors.BadInput(f'{path} is a PyTorch file, which needs torch; convert it to '
                            '.safetensors, or install torch.') from None
    state = torch.load(path, map_location='cpu', weights_only=True)
    state = state.get('state_dict', state.get('model', state))
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, 'numpy')}
  raise errors.BadInput(f'{path}: unknown weights format {suffix!r}; use a .npz (BiT or '
                        f'big_vision), .safetensors or {"/".join(TORCH_SUFFIXES)} (timm) file, '
                        'or a run\'s workdir.')


def _family(model: nn.Module) -> str:
  from big_distill import models  # pylint: disable=g-import-not-at-top  # The registry imports us.
  return next(name for name, cls in models.MODELS.items() if isinstance(model, cls))


def _from_file(path: str, model: nn.Module, abstract: Variables,
               allow_new_head: bool) -> Variables:
  arrays = read_arrays(path)
  family = _family(model)
  layout = 'timm'
  if path.endswith('.npz'):
    layout = ('bit' if any(k.startswith('resnet/') for k in arrays) else
              'big_vision' if vit.is_big_vision(arrays) else None)
    if layout is None:
      raise errors.BadInput(f'{path} is neither a BiT nor a big_vision ViT .npz file.')
  readers = READERS.get((family, layout))
  if readers is None:
    raise errors.BadInput(f'{path} holds {layout} weights, which a {family} model cannot load; '
                          f'set the config entry\'s model to the file\'s architecture.')
  head_classes, convert = readers
  classes = head_classes(arrays)
  new_head = allow_new_head and classes != model.num_classes
  if classes is not None and not new_head:
    check_classes(path, classes, model)
  return convert(arrays, model, abstract, skip_head=new_head, source=path)


def _bit_npz(arrays, model, abstract, *, skip_head, source) -> Variables:
  channels = abstract['params']['conv_root']['kernel'].shape[2]
  arrays = bit.renumbered(arrays)
  return {'params': bit.bit_npz_dict_to_params(arrays, model, skip_head=skip_head,
                                               input_channels=channels,
                                               source=f'BiT checkpoint {source}')}


def _bit_timm(arrays, model, abstract, *, skip_head, source) -> Variables:
  return {'params': bit.params_from_timm(arrays, model, abstract['params'], skip_head=skip_head,
                                         source=source)}


def _vit(convert: Callable[..., Any]) -> Callable[..., Variables]:
  def read(arrays, model, abstract, *, skip_head, source) -> Variables:
    return {'params': convert(arrays, model, abstract['params'], skip_head=skip_head,
                              source=source)}
  return read


def _classes(key: str, axis: int) -> Callable[[Mapping[str, np.ndarray]], int | None]:
  return lambda arrays: arrays[key].shape[axis] if key in arrays else None


# (family, layout) -> (the file's head class count, the conversion to variables).
READERS = {
    ('bit', 'bit'): (_classes(bit.HEAD_KEYS[0], -1), _bit_npz),
    ('bit', 'timm'): (_classes(bit.TIMM_HEAD, 0), _bit_timm),
    ('vit', 'big_vision'): (_classes('head/kernel', -1), _vit(vit.params_from_big_vision)),
    ('vit', 'timm'): (_classes('head.weight', 0), _vit(vit.params_from_timm)),
    ('mobilenet_v3', 'timm'): (_classes('classifier.weight', 0),
                               mobilenet_v3.variables_from_timm),
}


def replace_head(params: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
  """A copy of `params` whose `head` (every family names its classifier so) is zero for
  `num_classes` classes, as fine-tuning starts; everything else is shared."""
  params = dict(params)
  features = params['head']['kernel'].shape[0]
  params['head'] = {'kernel': np.zeros((features, num_classes), np.float32),
                    'bias': np.zeros((num_classes,), np.float32)}
  return params


def check_fits(variables: Any, abstract: Any, source: str) -> None:
  """Bad input naming the first key whose shape differs between `variables` and the model's."""
  got = traverse_util.flatten_dict(variables, sep='/')
  want = traverse_util.flatten_dict(abstract, sep='/')
  for key in sorted(set(got) | set(want)):
    shapes = [tuple(t[key].shape) if key in t else 'nothing' for t in (got, want)]
    if shapes[0] != shapes[1]:
      raise errors.BadInput(f'{source} does not fit the configured model: {key}: checkpoint has '
                            f'{shapes[0]}, model expects {shapes[1]}.')


def check_classes(source: str, classes: int, model: nn.Module) -> None:
  if classes != model.num_classes:
    raise errors.BadInput(f'{source} predicts {classes} classes, but the dataset has '
                          f'{model.num_classes}; use a model trained on this dataset\'s classes.')
