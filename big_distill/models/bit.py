"""BiT ResNet-v2: GroupNorm, weight-standardised convolutions, pre-activation units.

Follows the "Big Transfer" (BiT) definition, so that the released BiT `.npz` files map onto it
one to one: a 7x7/2 root convolution and a 3x3/2 max-pool (both with the symmetric zero padding of
the TensorFlow original), four stages of pre-activation bottleneck units (stride on the 3x3
convolution), a final GroupNorm + ReLU, global average pooling and a linear head (zero-initialised,
as BiT does). Inputs are NHWC images in [-1, 1].

Checked against google-research/big_transfer (bit_tf2/models.py + normalization.py, bit_jax/models.py,
bit_pytorch/models.py): zero padding (3, 3) before the VALID 7x7/2 root conv, zero padding (1, 1)
before the VALID 3x3/2 max-pool, stride on the 3x3 conv (padding (1, 1)), projection on the
pre-activated input, 32 GroupNorm groups with epsilon 1e-5 and two-pass variance (as
`tf.nn.moments`), weight standardisation with the biased variance + 1e-10, GroupNorm + ReLU before
global average pooling.

Widths below 1 (for small experiments) give channel counts that 32 may not divide; GroupNorm then
uses `gcd(32, channels)` groups (32 whenever the channels allow it, so BiT widths are unaffected).

BiT `.npz` checkpoints: `load_bit_npz` / `save_bit_npz` (and the in-memory
`bit_npz_dict_to_params` / `params_to_bit_npz_dict`) convert between our parameter tree and the
released key layout; `bit_npz_key` is the single name mapping both directions use.
"""

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from big_distill import errors
from big_distill.models import family, kernels, matching, normalization

# Units per stage for each depth (depth = 3 * sum(units) + 2).
BLOCK_UNITS = {
    14: (1, 1, 1, 1),
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def standardize(kernel: jnp.ndarray, eps: float = 1e-10, xp: Any = jnp) -> jnp.ndarray:
  """Weight standardisation over all but the output axis of an HWIO kernel; `xp=np` computes it
  on the host (`standardize_params`)."""
  kernel = kernel - xp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  return kernel / xp.sqrt(xp.var(kernel, axis=(0, 1, 2), keepdims=True) + eps)


class StdConv(nn.Module):
  """Bias-free convolution with a weight-standardised kernel and explicit zero padding.

  `prestandardized`: the kernel parameter is already standardised (`standardize_params`, for
  frozen weights), so it is used as it is.
  """
  features: int
  kernel_size: int
  stride: int = 1
  dtype: Any = jnp.float32
  prestandardized: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features), jnp.float32)
    if not self.prestandardized:
      kernel = standardize(kernel)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return kernels.conv2d(x, kernel, self.stride, ((k - 1) // 2, k - 1 - (k - 1) // 2))


class GroupNorm(nn.Module):
  """flax's `GroupNorm` (parameters `scale`, `bias`), with BiT's two-pass variance
  E[(x - E[x])^2] (`tf.nn.moments`; flax's default E[x^2] - E[x]^2 loses most float32 digits once
  a group's mean is large relative to its spread), applied in the compute dtype: a bfloat16 run
  keeps bfloat16 deviations from the mean for its backward pass, where flax's keeps them in
  float32. The statistics are float32 sums either way; in float32 this is flax's arithmetic, step
  for step."""
  num_groups: int
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = x.shape[-1]
    per_group = (self.num_groups, channels // self.num_groups)
    scale, bias = (self.param(name, init, (channels,), jnp.float32).reshape(per_group)
                   for name, init in (('scale', nn.initializers.ones),
                                      ('bias', nn.initializers.zeros)))
    x = x.astype(self.dtype).reshape(*x.shape[:-1], *per_group)
    axes = (*range(1, x.ndim - 2), x.ndim - 1)  # Space and the channels of a group.
    mean = jnp.mean(x.astype(jnp.float32), axes, keepdims=True)
    deviation = (x.astype(jnp.float32) - mean).astype(self.dtype)
    var = jnp.mean((deviation * deviation).astype(jnp.float32), axes, keepdims=True)
    y = deviation * (jax.lax.rsqrt(var + self.epsilon) * scale).astype(self.dtype)
    return (y + bias.astype(self.dtype)).reshape(*x.shape[:-2], channels)


def group_norm(channels: int, name: str, dtype: Any) -> GroupNorm:
  # Widths below 1 give channel counts that 32 may not divide: their largest common divisor.
  return GroupNorm(num_groups=math.gcd(32, channels), dtype=dtype, name=name)


class BottleneckUnit(nn.Module):
  """Pre-activation bottleneck: GN-ReLU-conv1x1, GN-ReLU-conv3x3(stride), GN-ReLU-conv1x1."""
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  prestandardized: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    out = 4 * self.features
    conv = functools.partial(StdConv, dtype=self.dtype, prestandardized=self.prestandardized)
    residual = x
    x = nn.relu(group_norm(x.shape[-1], 'gn1', self.dtype)(x))
    if x.shape[-1] != out or self.stride != 1:
      residual = conv(out, 1, self.stride, name='conv_proj')(x)
    x = conv(self.features, 1, 1, name='conv1')(x)
    x = nn.relu(group_norm(self.features, 'gn2', self.dtype)(x))
    x = conv(self.features, 3, self.stride, name='conv2')(x)
    x = nn.relu(group_norm(self.features, 'gn3', self.dtype)(x))
    x = conv(out, 1, 1, name='conv3')(x)
    return x + residual


class ResNetStage(nn.Module):
  """`units` bottleneck units; the first one strides and projects (`remat`:
  `family.rematerialized`)."""
  units: int
  features: int
  stride: int
  dtype: Any = jnp.float32
  prestandardized: bool = False
  remat: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    unit = family.rematerialized(BottleneckUnit, self.remat)
    for j in range(self.units):
      x = unit(self.features, self.stride if j == 0 else 1, self.dtype, self.prestandardized,
               name=f'unit{j + 1:02d}')(x)
    return x


class ResNetV2(nn.Module):
  """BiT ResNet-v2 classifier: `ResNetV2(depth=50, width=1, num_classes=1000)`.

  `dtype` is the compute dtype (e.g. bfloat16; parameters and logits stay float32).
  `prestandardized`: the conv kernels in the parameters are already standardised (see `frozen`).
  `remat`: each bottleneck unit rematerialised in the backward pass (`family.rematerialized`).
  """
  depth: int = 50
  width: float = 1
  num_classes: int = 1000
  dtype: Any = jnp.float32
  prestandardized: bool = False
  normalization: str = 'minus_one_to_one'
  remat: bool = False

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train  # The same computation in training and evaluation.
    images = normalization.normalize(images, self.normalization)
    if self.depth not in BLOCK_UNITS:
      raise errors.BadInput(f'ResNetV2 depth {self.depth} is not one of {sorted(BLOCK_UNITS)}.')
    base = int(64 * self.width)
    if base < 1:
      raise errors.BadInput(f'ResNetV2 width {self.width} gives no channels; use width >= 1/64.')
    x = StdConv(base, 7, 2, self.dtype, self.prestandardized, name='conv_root')(images)
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')
    for i, units in enumerate(BLOCK_UNITS[self.depth]):
      x = ResNetStage(units, base * 2**i, 1 if i == 0 else 2, self.dtype, self.prestandardized,
                      self.remat, name=f'block{i + 1}')(x)
    x = nn.relu(group_norm(x.shape[-1], 'norm_pre_head', self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                 name='head')(x)
    return x.astype(jnp.float32)

  def architecture(self) -> dict[str, Any]:
    """The arguments that make this architecture (`family.Family`)."""
    return dict(depth=self.depth, width=self.width, normalization=self.normalization)

  def frozen(self, params: Mapping[str, Any]) -> tuple['ResNetV2', dict[str, Any]]:
    """This model for fixed `params` (frozen teachers): the kernels standardised once, and a
    model that applies them as they are. Its outputs equal this model's up to float rounding."""
    return self.clone(prestandardized=True), standardize_params(params)


def standardize_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """`params` with every conv kernel weight-standardised (host arrays; the head is unchanged), in
  NumPy: op by op, JAX would lower and compile a few programs per kernel shape.
  Each kernel is made C-contiguous first: NumPy's sums follow the memory layout, and a kernel read
  from timm's layout (a transposed view) must round as the same kernel read from an `.npz`."""
  return traverse_util.unflatten_dict({
      path: standardize(np.ascontiguousarray(v), xp=np)
      if path[-1] == 'kernel' and path[0] != 'head' else v
      for path, v in _flat_params(params).items()})


# ---------------------------------------------------------------------------------------------
# BiT `.npz` checkpoints.
#
# Our tree                               BiT key (all under `resnet/`)
#   conv_root/kernel                     root_block/standardized_conv2d/kernel
#   blockN/unitMM/gn1/{scale,bias}       blockN/unitMM/a/group_norm/{gamma,beta}  (unit input)
#   blockN/unitMM/conv1/kernel           blockN/unitMM/a/standardized_conv2d/kernel
#   blockN/unitMM/conv_proj/kernel       blockN/unitMM/a/proj/standardized_conv2d/kernel
#   blockN/unitMM/{gn2,conv2}/...        blockN/unitMM/b/...   (GN before / the 3x3 conv)
#   blockN/unitMM/{gn3,conv3}/...        blockN/unitMM/c/...
#   norm_pre_head/{scale,bias}           group_norm/{gamma,beta}
#   head/kernel (C, N)                   head/conv2d/kernel, stored as a 1x1 conv (1, 1, C, N)
#   head/bias (N,)                       head/conv2d/bias
# ---------------------------------------------------------------------------------------------

_UNIT_PART = {'gn1': 'a', 'conv1': 'a', 'gn2': 'b', 'conv2': 'b', 'gn3': 'c', 'conv3': 'c'}
_GN_PARAM = {'scale': 'gamma', 'bias': 'beta'}
HEAD_KEYS = ('resnet/head/conv2d/kernel', 'resnet/head/conv2d/bias')


def bit_npz_key(path: tuple[str, ...]) -> str:
  """The BiT `.npz` key of the parameter at `path` in our tree, e.g. ('block1', 'unit01', 'gn1',
  'scale') -> 'resnet/block1/unit01/a/group_norm/gamma'. Raises ValueError for unknown paths."""
  match tuple(path):
    case ('conv_root', 'kernel'):
      return 'resnet/root_block/standardized_conv2d/kernel'
    case ('norm_pre_head', p) if p in _GN_PARAM:
      return f'resnet/group_norm/{_GN_PARAM[p]}'
    case ('head', ('kernel' | 'bias') as p):
      return f'resnet/head/conv2d/{p}'
    case (block, unit, layer, p) if re.fullmatch(r'block\d+', block) and re.fullmatch(
        r'unit\d+', unit):
      prefix = f'resnet/{block}/{unit}/'
      if layer == 'conv_proj' and p == 'kernel':
        return prefix + 'a/proj/standardized_conv2d/kernel'
      if layer.startswith('conv') and layer in _UNIT_PART and p == 'kernel':
        return prefix + f'{_UNIT_PART[layer]}/standardized_conv2d/kernel'
      if layer.startswith('gn') and layer in _UNIT_PART and p in _GN_PARAM:
        return prefix + f'{_UNIT_PART[layer]}/group_norm/{_GN_PARAM[p]}'
  raise ValueError(f'Parameter {"/".join(path)} has no BiT .npz key.')


def _npz_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """Shape of the parameter at `path` in the `.npz` layout (the head is a 1x1 conv there)."""
  return (1, 1) + tuple(shape) if tuple(path) == ('head', 'kernel') else tuple(shape)


_LAYER_ORDER = ('conv_root', 'gn1', 'conv_proj', 'conv1', 'gn2', 'conv2', 'gn3', 'conv3',
                'norm_pre_head', 'head')
_PARAM_ORDER = ('kernel', 'scale', 'bias')


def _network_order(path: tuple[str, ...]) -> tuple[Any, ...]:
  """Sort key putting parameter paths in forward-pass order (so errors name the earliest key)."""
  stage = [int(re.sub(r'\D', '', p) or 0) for p in path[:-2]]  # blockN, unitMM
  block = stage[0] if stage else (0 if path[0] == 'conv_root' else 10**6)
  return (block, stage[1:], _LAYER_ORDER.index(path[-2]), _PARAM_ORDER.index(path[-1]))


def _flat_params(params: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
  params = params.unfreeze() if hasattr(params, 'unfreeze') else params
  return traverse_util.flatten_dict(dict(params))


def params_to_bit_npz_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our parameter tree -> {BiT key: float32 array} (the head kernel reshaped to (1, 1, C, N))."""
  out = {}
  for path, value in _flat_params(params).items():
    value = np.asarray(value, dtype=np.float32)
    out[bit_npz_key(path)] = value.reshape(_npz_shape(path, value.shape))
  return out


def model_param_shapes(model: ResNetV2, input_channels: int = 3
                       ) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
  """Flat {path: ShapeDtypeStruct} of `model`'s parameters for `input_channels`-channel images,
  computed abstractly (nothing is allocated). Spatial size does not affect parameter shapes."""
  images = jax.ShapeDtypeStruct((1, 32, 32, input_channels), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  return _flat_params(variables['params'])


def _describe(model: ResNetV2) -> str:
  return f'ResNetV2(depth={model.depth}, width={model.width}, num_classes={model.num_classes})'


def _from_bit_npz_dict(arrays: Mapping[str, np.ndarray], model: ResNetV2, skip_head: bool,
                       input_channels: int | None, source: str) -> dict[str, Any]:
  root_key = bit_npz_key(('conv_root', 'kernel'))
  if input_channels is None:
    root = arrays.get(root_key)
    input_channels = root.shape[2] if root is not None and np.ndim(root) == 4 else 3
  expected = model_param_shapes(model, input_channels)
  problems, flat = [], {}
  for path, spec in sorted(expected.items(), key=lambda item: _network_order(item[0])):
    if skip_head and path[0] == 'head':
      continue
    key, want = bit_npz_key(path), _npz_shape(path, spec.shape)
    wrong = matching.problem(key, arrays.get(key), want)
    if wrong:
      problems.append(wrong)
    else:
      flat[path] = np.asarray(arrays[key], dtype=spec.dtype).reshape(spec.shape)
  known = {bit_npz_key(path) for path in expected} | (set(HEAD_KEYS) if skip_head else set())
  matching.check(problems, {k: arrays[k] for k in set(arrays) - known},
             f'{source} does not match {_describe(model)}')
  params = traverse_util.unflatten_dict(flat)
  return family.with_zero_head(params, expected['head', 'kernel'].shape) if skip_head else params


def bit_npz_dict_to_params(arrays: Mapping[str, np.ndarray], model: ResNetV2, *,
                           skip_head: bool = False, input_channels: int | None = None,
                           source: str = 'BiT parameters') -> dict[str, Any]:
  """Inverse of `params_to_bit_npz_dict`, checked against `model`; see `load_bit_npz`."""
  return _from_bit_npz_dict(arrays, model, skip_head, input_channels, source)


def renumbered(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Some BiT files number their convolutions (`standardized_conv2d_3`): one name for all."""
  return {re.sub(r'/standardized_conv2d_\d+/', '/standardized_conv2d/', key): value
          for key, value in arrays.items()}


def load_bit_npz(path: str, model: ResNetV2, *, skip_head: bool = False,
                 input_channels: int | None = None) -> dict[str, Any]:
  """Loads a BiT `.npz` checkpoint into a params tree (numpy arrays) for `model`.

  The result matches `model.init(...)['params']`. Every key and shape must match the configured
  model, else ValueError names the first mismatching key with both shapes (or the missing /
  unexpected key) in one line. With `skip_head=True` the file's head (if any, of any shape) is
  ignored and the head comes back zero-initialised with `model.num_classes` classes, as BiT does
  for fine-tuning. `input_channels` is the image channel count the root kernel must have; None
  takes it from the file's root kernel (the model itself accepts any channel count).
  """
  with epath.Path(path).open('rb') as file, np.load(file, allow_pickle=False) as f:
    arrays = renumbered({key: f[key] for key in f.files})
  return _from_bit_npz_dict(arrays, model, skip_head, input_channels, f'BiT checkpoint {path}')


def save_bit_npz(params: Mapping[str, Any], path: str) -> None:
  """Writes `params` to `path` (used as given, no suffix added) in the BiT `.npz` key layout,
  as float32. Loading it back with `load_bit_npz` gives the same values exactly."""
  with epath.Path(path).open('wb') as f:
    np.savez(f, **params_to_bit_npz_dict(params))


# ---------------------------------------------------------------------------------------------
# timm's ResNetV2 (`resnetv2_50x1_bit` ...) state dicts: the same network, other names and
# PyTorch's OIHW kernels. (timm standardises kernels with epsilon 1e-8, BiT with 1e-10.)
# ---------------------------------------------------------------------------------------------

_TIMM_LAYER = {'gn1': 'norm1', 'gn2': 'norm2', 'gn3': 'norm3', 'conv1': 'conv1',
               'conv2': 'conv2', 'conv3': 'conv3', 'conv_proj': 'downsample.conv'}
_TIMM_PARAM = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
TIMM_HEAD = 'head.fc.weight'  # (classes, features, 1, 1)


def timm_arguments(name: str) -> dict[str, Any] | None:
  """Our arguments for a timm BiT name (`resnetv2_152x2_bit`, tags such as `.goog_in21k` too);
  their inputs are in [-1, 1] (mean = std = 0.5)."""
  match = re.fullmatch(r'resnetv2_(\d+)x(\d+)_bit(\.[\w]+)?', name)
  return dict(depth=int(match.group(1)), width=int(match.group(2)),
              normalization='minus_one_to_one') if match else None


def timm_key(path: tuple[str, ...]) -> str:
  """timm's state-dict key of our parameter at `path`."""
  match tuple(path):
    case ('conv_root', 'kernel'):
      return 'stem.conv.weight'
    case ('norm_pre_head', p):
      return f'norm.{_TIMM_PARAM[p]}'
    case ('head', p):
      return f'head.fc.{_TIMM_PARAM[p]}'
    case (block, unit, layer, p):
      stage, index = int(block[len('block'):]) - 1, int(unit[len('unit'):]) - 1
      return f'stages.{stage}.blocks.{index}.{_TIMM_LAYER[layer]}.{_TIMM_PARAM[p]}'
  raise ValueError(f'Parameter {"/".join(path)} has no timm key.')


def _to_torch(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path == ('head', 'kernel'):
    return value.T[:, :, None, None]  # (C, N) -> (N, C, 1, 1).
  return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value  # HWIO -> OIHW.


def params_to_timm(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our parameter tree -> timm's ResNetV2 state dict (float32 NumPy arrays)."""
  return {timm_key(path): np.ascontiguousarray(_to_torch(path, np.asarray(v, np.float32)))
          for path, v in _flat_params(params).items()}


def params_from_timm(state_dict: Mapping[str, np.ndarray], model: ResNetV2, abstract_params: Any,
                     *, skip_head: bool, source: str) -> dict[str, Any]:
  """timm's state dict -> our tree, checked against `abstract_params` (one line naming the first
  mismatching key and both shapes). A 3-channel stem loads into a 1-channel model summed over its
  input channels (timm's `adapt_input_conv`); `skip_head`: a zero head of `model.num_classes`."""
  expected = _flat_params(abstract_params)
  problems, flat = [], {}
  for path, spec in sorted(expected.items(), key=lambda item: _network_order(item[0])):
    if skip_head and path[0] == 'head':
      continue
    key, want = timm_key(path), _to_torch(path, np.zeros(spec.shape, np.float32)).shape
    value = state_dict.get(key)
    if value is not None and path == ('conv_root', 'kernel') and value.shape[1] == 3 and (
        want[1] == 1):
      value = np.sum(value, axis=1, keepdims=True)
    wrong = matching.problem(key, value, want)
    if wrong:
      problems.append(wrong)
    else:
      value = np.asarray(value, np.float32)
      flat[path] = (value[:, :, 0, 0].T if path == ('head', 'kernel') else
                    value.transpose(2, 3, 1, 0) if value.ndim == 4 else value)
  known = {timm_key(path) for path in expected} | (
      {TIMM_HEAD, 'head.fc.bias'} if skip_head else set())
  matching.check(problems, {k: state_dict[k] for k in set(state_dict) - known},
             f'{source} does not match {_describe(model)}')
  params = traverse_util.unflatten_dict(flat)
  return family.with_zero_head(params, expected['head', 'kernel'].shape) if skip_head else params


# ---------------------------------------------------------------------------------------------
# The family's record: both layouts, and the architecture a file says.
# ---------------------------------------------------------------------------------------------


def _architecture(units: tuple[int, ...], root_channels: int, source: str) -> dict[str, Any]:
  """depth and width of a file whose four stages have `units` units and whose root convolution
  has `root_channels` outputs."""
  depth = next((d for d, u in BLOCK_UNITS.items() if u == units), None)
  if depth is None:
    raise errors.BadInput(f'{source} has stages of {units} units, which is no BiT depth '
                          f'({", ".join(map(str, sorted(BLOCK_UNITS)))}).')
  width = root_channels / 64
  return dict(depth=depth, width=int(width) if width.is_integer() else width)


def _units(shapes: family.Shapes, pattern: str) -> tuple[int, ...]:
  """Units per stage, counted from the keys that `pattern` (stage, unit groups) matches."""
  found = {}
  for key in shapes:
    match = re.match(pattern, key)
    if match:
      found.setdefault(int(match[1]), set()).add(int(match[2]))
  return tuple(len(found[s]) for s in sorted(found))


def _npz_arguments(shapes: family.Shapes) -> dict[str, Any]:
  root = shapes[bit_npz_key(('conv_root', 'kernel'))]
  return _architecture(_units(shapes, r'resnet/block(\d+)/unit(\d+)/'), root[-1], 'The BiT file')


def _timm_arguments_of(shapes: family.Shapes) -> dict[str, Any]:
  return _architecture(_units(shapes, r'stages\.(\d+)\.blocks\.(\d+)\.'),
                       shapes['stem.conv.weight'][0], 'The timm ResNetV2 file')


def _read_npz(arrays, model, abstract, *, skip_head, source) -> family.Variables:
  channels = abstract['params']['conv_root']['kernel'].shape[2]
  return {'params': bit_npz_dict_to_params(renumbered(arrays), model, skip_head=skip_head,
                                           input_channels=channels,
                                           source=f'BiT checkpoint {source}')}


def _read_timm(arrays, model, abstract, *, skip_head, source) -> family.Variables:
  return {'params': params_from_timm(arrays, model, abstract['params'], skip_head=skip_head,
                                     source=source)}


FAMILY = family.Family(
    name='bit', model=ResNetV2, timm_arguments=timm_arguments,
    timm_names='resnetv2_{50,101,152}x{1,2,3,4}_bit',
    layouts=(
        family.Layout(
            'bit', family.NPZ,
            matches=lambda shapes: any(k.startswith('resnet/') for k in shapes),
            head_classes=lambda shapes: (shapes[HEAD_KEYS[0]][-1] if HEAD_KEYS[0] in shapes
                                         else None),
            arguments=lambda shapes: _npz_arguments(renumbered(shapes)), read=_read_npz,
            write=lambda variables, model: params_to_bit_npz_dict(variables['params'])),
        family.Layout(
            'timm', family.TIMM,
            matches=lambda shapes: 'stem.conv.weight' in shapes,
            head_classes=lambda shapes: shapes[TIMM_HEAD][0] if TIMM_HEAD in shapes else None,
            arguments=_timm_arguments_of, read=_read_timm,
            write=lambda variables, model: params_to_timm(variables['params']))),
    demo_teacher=dict(depth=14, width=0.25),  # 0.51 M parameters.
    demo_student=dict(depth=14, width=0.125),  # 0.13 M parameters.
    tiny=dict(depth=14, width=0.25))
