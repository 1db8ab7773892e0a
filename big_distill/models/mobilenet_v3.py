"""MobileNetV3 (timm's `mobilenetv3_large_*` / `mobilenetv3_small_*`): the small student.

Follows timm's `_gen_mobilenet_v3` (timm 1.0), so that timm's weights map onto it one to one:
a 3x3/2 stem conv + BN + hard-swish, stages of depthwise-separable (`ds`), inverted-residual
(`ir`) and conv-BN-act (`cn`) blocks, global average pooling, then `conv_head` (a 1x1 conv with
bias, here a Dense, + hard-swish) and the linear classifier (`head`, zero-initialised).

Facts taken from timm: channels `make_divisible(c * width)` (multiples of 8, at most 10% below),
the stem fixed at 16 for widths below 0.75, expanded channels `make_divisible(in * e)`,
squeeze-excite on the expanded channels reduced to `make_divisible(mid / 4)`, with ReLU and a
hard-sigmoid gate; residuals where stride is 1 and channels are kept (never on `cn`); symmetric
zero padding `((s - 1) + (k - 1)) // 2` on every conv (timm's default `pad_type=''`, not the TF
'SAME' of `tf_mobilenetv3_*`); BatchNorm epsilon 1e-5, momentum 0.1 (flax 0.9); `conv_head`
width 1280 (large) / 1024 (small) at every width multiplier.

BatchNorm differs from torch in one way: in training, flax updates the running variance with the
biased batch variance (torch: the unbiased one, n / (n - 1) larger). The outputs are the same.
"""

import functools
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from big_distill import errors
from big_distill.models import family, matching, normalization
from big_distill.models import kernels as kernels_lib

# timm's arch strings: block type, r repeats, k depthwise kernel, s stride (of the first block
# of a stage), e expansion, c output channels (times `width`), se squeeze-excite, nre ReLU (else
# hard-swish).
ARCH = {
    'large': (('ds_r1_k3_s1_e1_c16_nre',),
              ('ir_r1_k3_s2_e4_c24_nre', 'ir_r1_k3_s1_e3_c24_nre'),
              ('ir_r3_k5_s2_e3_c40_se0.25_nre',),
              ('ir_r1_k3_s2_e6_c80', 'ir_r1_k3_s1_e2.5_c80', 'ir_r2_k3_s1_e2.3_c80'),
              ('ir_r2_k3_s1_e6_c112_se0.25',),
              ('ir_r3_k5_s2_e6_c160_se0.25',),
              ('cn_r1_k1_s1_c960',)),
    'small': (('ds_r1_k3_s2_e1_c16_se0.25_nre',),
              ('ir_r1_k3_s2_e4.5_c24_nre', 'ir_r1_k3_s1_e3.67_c24_nre'),
              ('ir_r1_k5_s2_e4_c40_se0.25', 'ir_r2_k5_s1_e6_c40_se0.25'),
              ('ir_r2_k5_s1_e3_c48_se0.25',),
              ('ir_r3_k5_s2_e6_c96_se0.25',),
              ('cn_r1_k1_s1_c576',)),
}
HEAD_FEATURES = {'large': 1280, 'small': 1024}
BN_EPSILON = 1e-5


class BlockSpec(NamedTuple):
  kind: str  # 'ds', 'ir' or 'cn'.
  kernel: int
  stride: int
  in_channels: int
  mid: int  # Expanded channels ('ir'); the input channels otherwise.
  out: int
  se: int  # Squeeze-excite channels; 0 for none.
  relu: bool  # ReLU, else hard-swish.


def make_divisible(v: float, divisor: int = 8) -> int:
  """timm's `make_divisible`: the nearest multiple of `divisor` (at least `divisor`), raised by
  `divisor` where it would be more than 10% below `v`."""
  rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * v else rounded


def stem_channels(width: float) -> int:
  return 16 if width < 0.75 else make_divisible(16 * width)


def block_specs(variant: str, width: float) -> list[list[BlockSpec]]:
  """The blocks of each stage, with their channel counts, as timm builds them."""
  if variant not in ARCH:
    raise errors.BadInput(f'MobileNetV3 variant={variant!r}; use one of {", ".join(ARCH)}.')
  if not width > 0:
    raise errors.BadInput(f'MobileNetV3 width={width}; use a positive channel multiplier.')
  channels, stages = stem_channels(width), []
  for stage in ARCH[variant]:
    blocks = []
    for block in stage:
      kind, *ops = block.split('_')
      o = dict(re.fullmatch(r'([a-z]+)([\d.]*)', op).groups() for op in ops)
      for _ in range(int(o['r'])):
        mid = make_divisible(channels * float(o['e'])) if kind == 'ir' else channels
        blocks.append(BlockSpec(
            kind, int(o['k']), 1 if blocks else int(o['s']), channels, mid,
            make_divisible(int(o['c']) * width),
            make_divisible(mid * float(o['se'])) if 'se' in o else 0, 'nre' in o))
        channels = blocks[-1].out
    stages.append(blocks)
  return stages


def padding(kernel: int, stride: int) -> int:
  """timm's symmetric zero padding on each side (`pad_type=''`)."""
  return ((stride - 1) + (kernel - 1)) // 2


class Conv(nn.Module):
  """Bias-free convolution with timm's symmetric padding: `nn.Conv`'s parameter, computed by
  `kernels.conv2d`, so that the pointwise convolutions and their kernels' gradients are dots
  (XLA:CPU computes a 1x1 convolution's kernel gradient as a convolution over the whole image,
  slowly)."""
  features: int
  kernel_size: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k, s = self.kernel_size, self.stride
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features), jnp.float32)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return kernels_lib.conv2d(x, kernel, s, (padding(k, s),) * 2)


def conv(x: jnp.ndarray, features: int, kernel: int, stride: int, name: str,
         dtype: Any) -> jnp.ndarray:
  """`Conv` (inside a compact method)."""
  return Conv(features, kernel, stride, dtype, name=name)(x)


class DepthwiseConv(nn.Module):
  """Bias-free depthwise convolution (kernel (k, k, 1, channels)), padded as `conv`, computed by
  the depthwise kernel of `kernels`."""
  kernel_size: int
  stride: int = 1
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.Kernels()

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k, s = self.kernel_size, self.stride
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, k, 1, x.shape[-1]),
                        jnp.float32)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return self.kernels.depthwise_conv()(x, kernel, s, padding(k, s))


def batch_norm(name: str, train: bool, dtype: Any) -> nn.BatchNorm:
  # Two-pass batch variance, as torch computes it (flax's default E[x^2] - E[x]^2 loses digits).
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON,
                      use_fast_variance=False, dtype=dtype, name=name)


class SqueezeExcite(nn.Module):
  """timm's `SqueezeExcite`: mean-pool, 1x1 conv + ReLU, 1x1 conv, hard-sigmoid gate."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    # Pooled to [batch, C], not [batch, 1, 1, C]: TFLite's converter rejects a [1, 1, 1, C] x
    # [C, D] product (a batch-1 export).
    s = jnp.mean(x, axis=(1, 2))
    s = nn.relu(nn.Dense(self.features, dtype=self.dtype, name='conv_reduce')(s))
    s = nn.Dense(x.shape[-1], dtype=self.dtype, name='conv_expand')(s)
    return x * nn.hard_sigmoid(s)[:, None, None, :]


class Block(nn.Module):
  """One timm block: `ds` (conv_dw, bn1, se, conv_pw, bn2), `ir` (conv_pw, bn1, conv_dw, bn2,
  se, conv_pwl, bn3) or `cn` (conv, bn1); the layers named as timm's."""
  spec: BlockSpec
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.Kernels()

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    s, dtype = self.spec, self.dtype
    act = nn.relu if s.relu else nn.hard_swish
    norm = functools.partial(batch_norm, train=train, dtype=dtype)
    if s.kind == 'cn':
      return act(norm('bn1')(conv(x, s.out, s.kernel, s.stride, 'conv', dtype)))
    shortcut, ir = x, s.kind == 'ir'
    if ir:
      x = act(norm('bn1')(conv(x, s.mid, 1, 1, 'conv_pw', dtype)))
    x = DepthwiseConv(s.kernel, s.stride, dtype, self.kernels, name='conv_dw')(x)
    x = act(norm('bn2' if ir else 'bn1')(x))
    if s.se:
      x = SqueezeExcite(s.se, dtype, name='se')(x)
    x = conv(x, s.out, 1, 1, 'conv_pwl' if ir else 'conv_pw', dtype)
    x = norm('bn3' if ir else 'bn2')(x)
    return x + shortcut if s.stride == 1 and s.in_channels == s.out else x


class MobileNetV3(nn.Module):
  """timm's MobileNetV3: `MobileNetV3(variant='small', width=0.75)` is `mobilenetv3_small_075`.

  `dtype` is the compute dtype (parameters, batch statistics and logits stay float32);
  `kernels.depthwise` computes the depthwise convolutions. Variables are `{'params',
  'batch_stats'}`; `train=True` normalises with batch statistics and updates the running averages
  (apply with `mutable=['batch_stats']`). `remat`: each block rematerialised in the backward pass
  (`family.rematerialized`).
  """
  variant: str = 'large'
  width: float = 1.0
  num_classes: int = 1000
  dtype: Any = jnp.float32
  normalization: str = 'imagenet'
  kernels: kernels_lib.Kernels = kernels_lib.Kernels()
  remat: bool = False

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = normalization.normalize(images, self.normalization)
    stages = block_specs(self.variant, self.width)
    x = conv(x, stem_channels(self.width), 3, 2, 'conv_stem', self.dtype)
    x = nn.hard_swish(batch_norm('bn1', train, self.dtype)(x))
    block = family.rematerialized(Block, self.remat, static_argnums=(2,))  # `train`.
    for i, stage in enumerate(stages):
      for j, spec in enumerate(stage):
        x = block(spec, self.dtype, self.kernels, name=f'blocks_{i}_{j}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.hard_swish(nn.Dense(HEAD_FEATURES[self.variant], dtype=self.dtype,
                               name='conv_head')(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                 name='head')(x)
    return x.astype(jnp.float32)

  def architecture(self) -> dict[str, Any]:
    """The arguments that make this architecture (`family.Family`)."""
    return dict(variant=self.variant, width=self.width, normalization=self.normalization)

  def frozen(self, variables: Mapping[str, Any]) -> tuple['MobileNetV3', Mapping[str, Any]]:
    """This model for fixed `variables` (frozen teachers): nothing to precompute, so both come
    back unchanged (apply with the default `train=False`: BN uses the running statistics)."""
    return self, variables


# ---------------------------------------------------------------------------------------------
# timm weights (torch state dicts, e.g. from safetensors). Our path -> timm key:
#   conv_stem/kernel (H, W, I, O)           conv_stem.weight (O, I, H, W)
#   bn1/{scale,bias}, batch_stats bn1/{mean,var}   bn1.{weight,bias,running_mean,running_var}
#   blocks_I_J/conv_dw/kernel (H, W, 1, C)  blocks.I.J.conv_dw.weight (C, 1, H, W)
#   blocks_I_J/se/conv_reduce/kernel (C, R) blocks.I.J.se.conv_reduce.weight (R, C, 1, 1)
#   conv_head/kernel (C, F)                 conv_head.weight (F, C, 1, 1)
#   head/{kernel (F, N), bias}              classifier.{weight (N, F), bias}
# ---------------------------------------------------------------------------------------------

_TIMM_NAME = re.compile(r'mobilenetv3_(large|small)_(\d{3})(\.[\w-]+)?')
TIMM_WIDTHS = {'large': ('075', '100'), 'small': ('050', '075', '100')}  # As timm registers.
_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
         'var': 'running_var'}
_TOP = ('conv_stem', 'bn1', 'blocks', 'conv_head', 'classifier')
_IN_BLOCK = {'ds': ('conv_dw', 'bn1', 'se', 'conv_pw', 'bn2'),
             'ir': ('conv_pw', 'bn1', 'conv_dw', 'bn2', 'se', 'conv_pwl', 'bn3'),
             'cn': ('conv', 'bn1')}
_IN_LAYER = ('conv_reduce', 'conv_expand', 'weight', 'bias', 'running_mean', 'running_var')


def timm_arguments(name: str) -> dict[str, Any] | None:
  """Our arguments for a timm model name (`mobilenetv3_small_075`, with or without a `.tag`),
  or None if it is not one of timm's `mobilenetv3_{large,small}_*` widths; their inputs are
  normalised with ImageNet's mean and std."""
  match = _TIMM_NAME.fullmatch(name)
  if not match or match[2] not in TIMM_WIDTHS[match[1]]:
    return None
  return dict(variant=match[1], width=int(match[2]) / 100, normalization='imagenet')


def timm_key(path: tuple[str, ...]) -> str:
  """The timm state-dict key of the variable at `path`, e.g. ('blocks_2_0', 'bn1', 'mean') ->
  'blocks.2.0.bn1.running_mean'."""
  *layers, leaf = path
  layers = ['classifier' if p == 'head' else re.sub(r'^blocks_(\d+)_(\d+)$', r'blocks.\1.\2', p)
            for p in layers]
  return '.'.join(layers + [_LEAF[leaf]])


def _timm_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape of our variable at `path` in timm's layout (OIHW convs, (O, I) Linear)."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:
    return (shape[1], shape[0]) + (() if path[0] == 'head' else (1, 1))
  return tuple(shape)


def _forward_order(key: str, stages: list[list[BlockSpec]]) -> tuple[int, ...]:
  """Sort key putting timm keys in forward-pass order (so errors name the earliest key)."""
  parts = key.split('.')
  if parts[0] == 'blocks':
    i, j = int(parts[1]), int(parts[2])
    rank, rest = (2, i, j, _IN_BLOCK[stages[i][j].kind].index(parts[3])), parts[4:]
  else:
    rank, rest = (_TOP.index(parts[0]), 0, 0, 0), parts[1:]
  return rank + tuple(_IN_LAYER.index(p) for p in rest)


def _describe(model: MobileNetV3) -> str:
  return f'MobileNetV3(variant={model.variant}, width={model.width})'


def variables_from_timm(state_dict: Mapping[str, np.ndarray], model: MobileNetV3,
                        abstract_variables: Mapping[str, Any], *, skip_head: bool,
                        source: str) -> dict[str, Any]:
  """`{'params', 'batch_stats'}` (host float32 arrays) for `model` from a timm MobileNetV3 state
  dict, shaped as `abstract_variables` (`jax.eval_shape(model.init, ...)`).

  Every key and shape must fit, else `errors.BadInput` names (in one line) the first mismatching
  timm key with both shapes in timm's layout; keys the model lacks are mismatches too
  (`num_batches_tracked` is ignored). A 3-channel stem loaded into a 1-channel model is summed
  over its input channels (timm's `adapt_input_conv`). `skip_head=True` ignores the file's
  classifier and returns a zero head of `model.num_classes` classes.
  """
  stages = block_specs(model.variant, model.width)
  expected = {timm_key(path): (collection, path, spec)
              for collection in ('params', 'batch_stats')
              for path, spec in traverse_util.flatten_dict(abstract_variables[collection]).items()}
  arrays = {k: v for k, v in state_dict.items() if not k.endswith('.num_batches_tracked')}
  problems, flat = [], {'params': {}, 'batch_stats': {}}
  for key in sorted(expected, key=lambda k: _forward_order(k, stages)):
    collection, path, spec = expected[key]
    want = _timm_shape(path, spec.shape)
    if skip_head and path[0] == 'head':
      continue
    value = arrays.get(key)
    if value is not None:
      value = np.asarray(value, spec.dtype)
      if (path == ('conv_stem', 'kernel') and want[1] == 1
          and value.shape == (want[0], 3) + want[2:]):
        value = value.sum(axis=1, keepdims=True)  # timm's `adapt_input_conv` for grey images.
    wrong = matching.problem(key, value, want)
    if wrong:
      problems.append(wrong)
    elif len(spec.shape) == 4:
      flat[collection][path] = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    else:  # Dense kernels from (O, I) or 1x1 convs (O, I, 1, 1); vectors as they are.
      flat[collection][path] = value.reshape(value.shape[:2]).T if value.ndim > 1 else value
  matching.check(problems, {k: arrays[k] for k in set(arrays) - set(expected)},
             f'{source} does not fit {_describe(model)}')
  variables = {collection: traverse_util.unflatten_dict(f) for collection, f in flat.items()}
  if skip_head:
    variables['params'] = family.with_zero_head(
        variables['params'], abstract_variables['params']['head']['kernel'].shape)
  return variables


def variables_to_timm(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """`{'params', 'batch_stats'}` -> timm's MobileNetV3 state dict (C-contiguous float32 NumPy
  arrays); `variables_from_timm` reads it back exactly. torch's `load_state_dict` fills in the
  BatchNorm counters (`num_batches_tracked`) that it leaves out."""
  out = {}
  for collection in ('params', 'batch_stats'):
    for path, value in traverse_util.flatten_dict(dict(variables[collection])).items():
      value = np.asarray(value, np.float32)
      if value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW.
      elif value.ndim == 2:  # (I, O) -> a Linear's (O, I), or a 1x1 conv's (O, I, 1, 1).
        value = value.T if path[0] == 'head' else value.T[:, :, None, None]
      out[timm_key(path)] = np.ascontiguousarray(value)
  return out


def _timm_arguments_of(shapes: family.Shapes) -> dict[str, Any]:
  """The variant (its stage count) and width (the multiplier, rounder ones first, whose channels
  are the file's) of a timm state dict."""
  stages = len({k.split('.')[1] for k in shapes if k.startswith('blocks.')})
  variant = next((v for v, arch in ARCH.items() if len(arch) == stages), None)
  if variant is None:
    raise errors.BadInput(f'The timm MobileNetV3 file has {stages} stages; large has '
                          f'{len(ARCH["large"])}, small {len(ARCH["small"])}.')
  out_key = {'ds': 'conv_pw', 'ir': 'conv_pwl', 'cn': 'conv'}
  for width in (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, *(k / 100 for k in range(5, 301, 5))):
    specs = block_specs(variant, width)
    if shapes.get('conv_stem.weight', (0,))[0] == stem_channels(width) and all(
        shapes.get(f'blocks.{i}.{j}.{out_key[b.kind]}.weight', (0,))[0] == b.out
        for i, stage in enumerate(specs) for j, b in enumerate(stage)):
      return dict(variant=variant, width=width)
  raise errors.BadInput(f'The timm MobileNetV3 {variant} file has channels of no width '
                        'multiplier from 0.05 to 3.')


FAMILY = family.Family(
    name='mobilenet_v3', model=MobileNetV3, timm_arguments=timm_arguments,
    timm_names='mobilenetv3_large_{075,100}, mobilenetv3_small_{050,075,100}',
    layouts=(family.Layout(
        'timm', family.TIMM, matches=lambda shapes: 'conv_stem.weight' in shapes,
        head_classes=lambda shapes: (shapes['classifier.weight'][0]
                                     if 'classifier.weight' in shapes else None),
        arguments=_timm_arguments_of,
        read=variables_from_timm,
        write=lambda variables, model: variables_to_timm(variables)),),
    demo_teacher=dict(variant='small', width=1.0),
    demo_student=dict(variant='small', width=0.5),  # 0.58 M parameters.
    tiny=dict(variant='small', width=0.25),
    cpu_scheduler='memory')  # Its steps faster on XLA:CPU (docs/performance.md).
