"""ViT: the Vision Transformer of "An Image is Worth 16x16 Words", as timm and big_vision define it.

Patches embedded by a strided convolution, a class token, learned position embeddings (the class
token's first; sized for the resolution the model is initialised at), pre-LayerNorm encoder blocks
(LayerNorm eps 1e-6, multi-head self-attention with biases, an MLP with the exact (erf) GELU), a
final LayerNorm and a linear head (zero-initialised, as BiT's). Inputs are NHWC images in [-1, 1].

`pool_type='tok'` is timm's default `global_pool='token'` (the AugReg, original, DINO and MAE
ViTs): the final norm, then the class token. `pool_type='gap'` is timm's `global_pool='avg'` with
its default `fc_norm` and class token (EVA, MAE fine-tuning): the mean of the patch tokens (the
class token attends but is left out), then the final norm. timm's `*_gap_*` models and
big_vision's `gap` (no class token, the norm before pooling) are neither.

The parameter tree is the layout of the AugReg / `vit_jax` `.npz` files (keys: its paths joined
by '/'); `params_from_timm` / `params_to_timm` convert to and from timm's `state_dict`.
"""

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from big_distill import errors
from big_distill.models import family, matching, normalization
from big_distill.models import kernels as kernels_lib

# width, depth, mlp_dim, num_heads of the 'Ti/16'-style variants.
VARIANTS = {'Ti': (192, 12, 768, 3), 'S': (384, 12, 1536, 6), 'B': (768, 12, 3072, 12),
            'L': (1024, 24, 4096, 16)}
_DIMS = ('patch_size', 'width', 'depth', 'mlp_dim', 'num_heads')
_POSEMB = 'Transformer/posembed_input/pos_embedding'


def layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=dtype, name=name)


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name,
                                     kernel_init=nn.initializers.xavier_uniform(),
                                     dot_general=kernels_lib.dot_general)
    y = nn.gelu(dense(self.mlp_dim, 'Dense_0')(x), approximate=False)
    return dense(x.shape[-1], 'Dense_1')(y)


class EncoderBlock(nn.Module):
  mlp_dim: int
  num_heads: int
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.Kernels()

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = layer_norm('LayerNorm_0', self.dtype)(x)
    x = x + nn.MultiHeadDotProductAttention(
        self.num_heads, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
        attention_fn=self.kernels.attention_fn(), deterministic=True,
        qkv_dot_general=kernels_lib.dot_general, out_dot_general=kernels_lib.dot_general,
        name='MultiHeadDotProductAttention_1')(y)
    return x + MlpBlock(self.mlp_dim, self.dtype, name='MlpBlock_3')(
        layer_norm('LayerNorm_2', self.dtype)(x))


class PositionEmbedding(nn.Module):
  """Adds a learned embedding per token, for the token count of the init's resolution."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    posemb = self.param('pos_embedding', nn.initializers.normal(0.02), (1,) + x.shape[1:])
    return x + posemb.astype(x.dtype)


class Encoder(nn.Module):
  """Position embeddings, the blocks, pooling and the final norm (see the module docstring);
  `remat`: `family.rematerialized` blocks."""
  depth: int
  mlp_dim: int
  num_heads: int
  pool_type: str
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.Kernels()
  remat: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = PositionEmbedding(name='posembed_input')(x)
    block = family.rematerialized(EncoderBlock, self.remat)
    for i in range(self.depth):
      x = block(self.mlp_dim, self.num_heads, self.dtype, self.kernels,
                name=f'encoderblock_{i}')(x)
    norm = layer_norm('encoder_norm', self.dtype)
    return norm(x)[:, 0] if self.pool_type == 'tok' else norm(jnp.mean(x[:, 1:], axis=1))


class ViT(nn.Module):
  """ViT classifier: `ViT(variant='S/16', num_classes=1000)`, or explicit sizes with no variant.

  `variant` ('Ti', 'S', 'B' or 'L', '/', the patch size) sets `patch_size`, `width`, `depth`,
  `mlp_dim` and `num_heads`; sizes also given must agree with it. Without a variant, unset sizes
  are Ti/16's and `mlp_dim` is 4 * width. `dtype` is the compute dtype (parameters and logits
  stay float32); `kernels.attention` computes the attention. `train` changes nothing: there is no
  dropout or stochastic depth. `remat`: each encoder block rematerialised in the backward pass
  (`family.rematerialized`).
  """
  variant: str | None = None
  patch_size: int | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  pool_type: str = 'tok'
  num_classes: int = 1000
  dtype: Any = jnp.float32
  normalization: str = 'minus_one_to_one'
  kernels: kernels_lib.Kernels = kernels_lib.Kernels()
  remat: bool = False

  def dims(self) -> tuple[int, int, int, int, int]:
    """(patch_size, width, depth, mlp_dim, num_heads), from `variant` where it is set."""
    given = (self.patch_size, self.width, self.depth, self.mlp_dim, self.num_heads)
    if self.variant is None:
      patch, width, depth, _, heads = (g or d for g, d in zip(given, (16, *VARIANTS['Ti'])))
      return patch, width, depth, self.mlp_dim or 4 * width, heads
    size, _, patch = self.variant.partition('/')
    if size not in VARIANTS or not patch.isdigit():
      raise errors.BadInput(f"ViT variant {self.variant!r}: use {'/'.join(VARIANTS)}, '/' and a "
                            "patch size, e.g. 'S/16'.")
    dims = (int(patch),) + VARIANTS[size]
    for name, value, want in zip(_DIMS, given, dims):
      if value is not None and value != want:
        raise errors.BadInput(f'ViT variant {self.variant!r} has {name}={want}, not {value}.')
    return dims

  def architecture(self) -> dict[str, Any]:
    """The arguments that make this architecture (`family.Family`)."""
    return dict(zip(_DIMS, self.dims()), pool_type=self.pool_type,
                normalization=self.normalization)

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = normalization.normalize(images, self.normalization)
    patch, width, depth, mlp_dim, num_heads = self.dims()
    if self.pool_type not in ('tok', 'gap'):
      raise errors.BadInput(f"ViT pool_type={self.pool_type!r}; use 'tok' or 'gap'.")
    if x.shape[1] % patch or x.shape[2] % patch:
      raise errors.BadInput(f'ViT patch size {patch} does not divide the image size '
                            f'{x.shape[1]}x{x.shape[2]}.')
    x = nn.Conv(width, (patch, patch), strides=(patch, patch), padding='VALID', dtype=self.dtype,
                name='embedding')(x)
    x = x.reshape(x.shape[0], -1, width)
    cls = self.param('cls', nn.initializers.zeros, (1, 1, width))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, width)), x], 1)
    x = Encoder(depth, mlp_dim, num_heads, self.pool_type, self.dtype, self.kernels, self.remat,
                name='Transformer')(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                 name='head')(x)
    return x.astype(jnp.float32)

  def frozen(self, params: Mapping[str, Any]) -> tuple['ViT', Mapping[str, Any]]:
    """This model and `params` as they are (teachers call it; nothing to precompute)."""
    return self, params


def _describe(model: ViT) -> str:
  patch, width, depth, mlp_dim, heads = model.dims()
  size = (f'variant={model.variant!r}' if model.variant else f'patch_size={patch}, width={width}, '
          f'depth={depth}, mlp_dim={mlp_dim}, num_heads={heads}')
  return f'ViT({size}, pool_type={model.pool_type!r}, num_classes={model.num_classes})'


def _flat(params: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.flatten_dict(dict(params), sep='/')


def resample_posemb(posemb: np.ndarray, tokens: int) -> np.ndarray:
  """`posemb` (1, 1 + g*g, D), class token first, for `tokens` = 1 + n*n tokens: the class
  token's row kept, the g x g grid resized to n x n bilinearly with half-pixel centres and no
  antialiasing, as timm's `.npz` loader does (`resample_abs_pos_embed(interpolation='bilinear',
  antialias=False)`; big_vision's `scipy.ndimage.zoom(order=1)` aligns corners instead).
  Unchanged where either grid is not square (the caller then reports the shapes)."""
  old, new = (math.isqrt(max(n - 1, 0)) for n in (posemb.shape[1], tokens))
  if not old or not new or (old**2 + 1, new**2 + 1) != (posemb.shape[1], tokens):
    return posemb
  grid = posemb[:, 1:].reshape(1, old, old, -1).astype(np.float32)
  grid = jax.image.resize(grid, (1, new, new, grid.shape[-1]), 'bilinear', antialias=False)
  return np.concatenate([posemb[:, :1], np.asarray(grid).reshape(1, new * new, -1)], axis=1)


def _fit(arrays: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], model: ViT,
         layout: tuple[str, tuple[int, int], int, str, tuple[str, str]], skip_head: bool,
         source: str) -> dict[str, np.ndarray]:
  """`arrays` adapted to and checked against `expected` ({key: shape}, in forward order): the
  head dropped where `skip_head`, a 3-channel patch kernel summed for a 1-channel model, position
  embeddings resized; else BadInput naming the first mismatching key in one line. `layout`: the
  patch kernel's key, its patch and input-channel axes, the posemb's key, the head's keys."""
  kernel_key, patch_axes, channel_axis, posemb_key, head_keys = layout
  arrays, expected = {k: np.asarray(v) for k, v in arrays.items()}, dict(expected)
  if skip_head:
    for key in head_keys:
      arrays.pop(key, None)
      expected.pop(key)
  fits = f'{source} does not fit {_describe(model)}'
  kernel, want = arrays.get(kernel_key), expected[kernel_key]
  if kernel is not None and kernel.ndim == 4:
    sizes = [tuple(shape[a] for a in patch_axes) for shape in (kernel.shape, want)]
    if sizes[0] != sizes[1]:
      got, model_patch = (s[0] if s[0] == s[1] else f'{s[0]}x{s[1]}' for s in sizes)
      raise errors.BadInput(f'{fits}: {kernel_key}: patch size {got}, model expects '
                            f'{model_patch}.')
    if kernel.shape[channel_axis] == 3 and want[channel_axis] == 1:
      arrays[kernel_key] = kernel.sum(channel_axis, keepdims=True)  # timm's adapt_input_conv
  posemb, want = arrays.get(posemb_key), expected[posemb_key]
  if posemb is not None and posemb.ndim == 3 and posemb.shape[::2] == want[::2]:
    arrays[posemb_key] = resample_posemb(posemb, want[1])
  problems = [p for p in (matching.problem(k, arrays.get(k), w) for k, w in expected.items()) if p]
  matching.check(problems, {k: arrays[k] for k in set(arrays) - set(expected)}, fits)
  return arrays


def _tree(flat: Mapping[str, Any], abstract: Mapping[str, Any], skip_head: bool) -> dict:
  """Float32 parameter tree of `flat` ('/'-joined keys), with a zero head where `skip_head`."""
  tree = traverse_util.unflatten_dict({k: np.asarray(v, np.float32) for k, v in flat.items()},
                                      sep='/')
  return family.with_zero_head(tree, abstract['head/kernel'].shape) if skip_head else tree


# ----- timm's `state_dict()`: Linear weights (out, in), the patch conv OIHW, the query, key and
# value projections one `qkv` Linear (rows: q, k, v; heads within each). ------------------------

_BLOCK_LINKS = (('norm1', 'LayerNorm_0'), ('attn.qkv', 'MultiHeadDotProductAttention_1'),
                ('attn.proj', 'MultiHeadDotProductAttention_1/out'), ('norm2', 'LayerNorm_2'),
                ('mlp.fc1', 'MlpBlock_3/Dense_0'), ('mlp.fc2', 'MlpBlock_3/Dense_1'))


def _timm_links(depth: int, pool_type: str) -> Iterator[tuple[str, list[str], str]]:
  """(timm key, our '/'-joined paths, kind of conversion) per timm parameter, in forward order."""
  yield 'patch_embed.proj.weight', ['embedding/kernel'], 'conv'
  yield 'patch_embed.proj.bias', ['embedding/bias'], 'same'
  yield 'cls_token', ['cls'], 'same'
  yield 'pos_embed', [_POSEMB], 'same'
  links = [(f'blocks.{i}.{t}', f'Transformer/encoderblock_{i}/{o}') for i in range(depth)
           for t, o in _BLOCK_LINKS]
  links += [('norm' if pool_type == 'tok' else 'fc_norm', 'Transformer/encoder_norm'),
            ('head', 'head')]
  for timm, ours in links:
    if timm.endswith('qkv'):
      for leaf, param in (('weight', 'kernel'), ('bias', 'bias')):
        yield f'{timm}.{leaf}', [f'{ours}/{n}/{param}' for n in ('query', 'key', 'value')], 'qkv'
    else:
      norm = 'norm' in timm  # LayerNorm scales as they are; Linear weights transposed.
      yield timm + '.weight', [ours + ('/scale' if norm else '/kernel')], ('dense', 'same')[norm]
      yield timm + '.bias', [ours + '/bias'], 'same'


def _to_timm(flat: Mapping[str, Any], model: ViT, xp: Any) -> dict[str, Any]:
  """Flat params in timm's layout, computed with `xp` (numpy; jax.numpy for `jax.eval_shape`)."""
  out = {}
  for key, paths, kind in _timm_links(model.dims()[2], model.pool_type):
    xs = [flat[p] for p in paths]
    if kind == 'conv':
      out[key] = xs[0].transpose(3, 2, 0, 1)
    elif kind == 'dense':  # (*in, out) kernels, e.g. the attention's (heads, head_dim, width).
      out[key] = xs[0].reshape(-1, xs[0].shape[-1]).T
    elif kind == 'qkv':  # (width, heads, head_dim) kernels, (heads, head_dim) biases.
      out[key] = xp.concatenate([x.reshape(x.shape[0], -1).T if x.ndim == 3 else x.reshape(-1)
                                 for x in xs])
    else:
      out[key] = xs[0]
  return out


def params_to_timm(params: Mapping[str, Any], model: ViT) -> dict[str, np.ndarray]:
  """Our parameter tree -> timm's `VisionTransformer.state_dict()` (float32 NumPy arrays), e.g. for
  `safetensors.numpy.save_file`. `params_from_timm` gives `params` back exactly. The arrays are
  C-contiguous: safetensors writes a transposed view's memory as it lies, not its values."""
  flat = _to_timm({k: np.asarray(v, np.float32) for k, v in _flat(params).items()}, model, np)
  return {k: np.ascontiguousarray(v) for k, v in flat.items()}


def params_from_timm(state_dict: Mapping[str, np.ndarray], model: ViT, abstract_params: Any, *,
                     skip_head: bool, source: str) -> dict[str, Any]:
  """Our parameter tree (float32 NumPy) from a timm ViT's `state_dict` (NumPy arrays).

  `abstract_params`: `jax.eval_shape` of `model`'s init params at the run's resolution and
  channels. Position embeddings of another grid are resized (`resample_posemb`), a 3-channel patch
  kernel is summed for a 1-channel model; `skip_head=True` ignores the file's head and returns a
  zero head. Any other difference (keys, shapes, patch size) is BadInput naming the first one.
  """
  abstract, links = _flat(abstract_params), list(_timm_links(model.dims()[2], model.pool_type))
  shapes = jax.eval_shape(lambda p: _to_timm(_flat(p), model, jnp), abstract_params)
  layout = ('patch_embed.proj.weight', (2, 3), 1, 'pos_embed', ('head.weight', 'head.bias'))
  arrays = _fit(state_dict, {key: shapes[key].shape for key, _, _ in links}, model, layout,
                skip_head, source)
  flat = {}
  for key, paths, kind in links:
    parts = np.split(arrays[key], 3) if kind == 'qkv' else [arrays.get(key)]
    for path, w in zip(paths, parts):
      if w is None:  # The head, skipped.
        continue
      if kind == 'conv':
        w = w.transpose(2, 3, 1, 0)
      elif kind != 'same':  # Linear weights transposed, then shaped as ours (as q, k, v biases).
        w = (w.T if w.ndim == 2 else w).reshape(abstract[path].shape)
      flat[path] = w
  return _tree(flat, abstract, skip_head)


_TIMM_NAME = re.compile(r'vit_(tiny|small|base|large)_patch(\d+)_\d+(\.[\w-]+)?')
# Pretrained tags whose timm `pretrained_cfg` mean and std are not 0.5 ('minus_one_to_one', that
# of the AugReg, `orig_in21k` and SAM weights), and the bare names whose default tag is not such.
TIMM_TAG_NORMALIZATION = {'dino': 'imagenet', 'mae': 'imagenet'}
_TIMM_DEFAULT_TAG = {'vit_small_patch8_224': 'dino'}


def timm_arguments(name: str) -> dict[str, Any] | None:
  """Our arguments for timm's plain ViTs, `vit_{tiny,small,base,large}_patch{P}_{res}` with any
  pretrained tag (e.g. 'vit_small_patch32_384.augreg_in21k_ft_in1k' -> `dict(variant='S/32',
  pool_type='tok', normalization='minus_one_to_one')`), the normalisation that of the tag's
  weights; None for other names (CLIP, `*_gap_*`, ...)."""
  m = _TIMM_NAME.fullmatch(name)
  if m is None:
    return None
  tag = name.partition('.')[2] or _TIMM_DEFAULT_TAG.get(name, '')
  if tag == 'bamboo':
    raise errors.BadInput(f'timm model {name!r} expects OpenAI CLIP mean and std, which '
                          'big_distill has no normalisation for.')
  size = {'tiny': 'Ti', 'small': 'S', 'base': 'B', 'large': 'L'}[m[1]]
  return dict(variant=f'{size}/{m[2]}', pool_type='tok',
              normalization=TIMM_TAG_NORMALIZATION.get(tag, 'minus_one_to_one'))


# ----- big_vision / AugReg `.npz` files: our tree's paths joined by '/'. Also read: a top-level
# `pos_embedding` (newer big_vision), with the class token's row or without (no position added to
# the class token: a zero row here). ----------------------------------------------------------

_BV_ORDER = ('embedding/', 'cls', _POSEMB, 'Transformer/encoderblock_', 'Transformer/encoder_norm',
             'head/')


def _bv_order(key: str) -> tuple[Any, ...]:
  rank = next((i for i, p in enumerate(_BV_ORDER) if key.startswith(p)), len(_BV_ORDER))
  layer, _, leaf = key.rpartition('/')
  return rank, [int(n) for n in re.findall(r'\d+', key)], layer, leaf == 'bias'


def is_big_vision(keys: Iterable[str]) -> bool:
  """Whether `.npz` `keys` are a big_vision ViT's (BiT files' keys start with 'resnet/')."""
  keys = set(keys)
  return 'Transformer/encoder_norm/scale' in keys or 'embedding/kernel' in keys


def params_to_big_vision(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our parameter tree -> {AugReg `.npz` key: float32 array}: what `np.savez` needs to write a
  file that big_vision and timm's `load_pretrained` read."""
  return {k: np.asarray(v, np.float32) for k, v in _flat(params).items()}


def params_from_big_vision(arrays: Mapping[str, np.ndarray], model: ViT, abstract_params: Any, *,
                           skip_head: bool, source: str) -> dict[str, Any]:
  """Our parameter tree from a big_vision / AugReg `.npz` file's arrays; the rules of
  `params_from_timm` (posemb resize, channel sum, `skip_head`, one-line errors)."""
  arrays = dict(arrays)
  if 'pos_embedding' in arrays and _POSEMB not in arrays:
    posemb = np.asarray(arrays.pop('pos_embedding'))
    if posemb.ndim == 3 and math.isqrt(posemb.shape[1])**2 == posemb.shape[1]:
      posemb = np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)
    arrays[_POSEMB] = posemb
  abstract = _flat(abstract_params)
  expected = {k: tuple(abstract[k].shape) for k in sorted(abstract, key=_bv_order)}
  layout = ('embedding/kernel', (0, 1), 2, _POSEMB, ('head/kernel', 'head/bias'))
  return _tree(_fit(arrays, expected, model, layout, skip_head, source), abstract, skip_head)


def _side(shapes: family.Shapes) -> int | None:
  """The input side a ViT weights file (timm or big_vision) was made for: its position-embedding
  grid (with or without the class token's row) times its patch size; None if it has none."""
  posemb = next((shapes[k] for k in ('pos_embed', _POSEMB, 'pos_embedding') if k in shapes), None)
  if posemb is None:
    return None
  tokens = posemb[1]
  grid = math.isqrt(tokens) if math.isqrt(tokens)**2 == tokens else math.isqrt(tokens - 1)
  return grid * _patch(shapes)


def _patch(shapes: family.Shapes) -> int:
  kernel = shapes.get('patch_embed.proj.weight')
  return kernel[2] if kernel else shapes['embedding/kernel'][0]


def _blocks(shapes: family.Shapes, pattern: str) -> int:
  return len({int(m[1]) for m in (re.match(pattern, k) for k in shapes) if m})


def _big_vision_arguments(shapes: family.Shapes) -> dict[str, Any]:
  """The sizes of a big_vision file; its pooling is taken as the class token's ('tok'), which
  big_vision's classifiers with a class token use (the file does not say)."""
  block = 'Transformer/encoderblock_0/'
  width, heads, _ = shapes[block + 'MultiHeadDotProductAttention_1/query/kernel']
  return dict(patch_size=_patch(shapes), width=width,
              depth=_blocks(shapes, r'Transformer/encoderblock_(\d+)/'),
              mlp_dim=shapes[block + 'MlpBlock_3/Dense_0/kernel'][1], num_heads=heads,
              pool_type='tok')


def _timm_arguments_of(shapes: family.Shapes) -> dict[str, Any]:
  """The sizes of a timm state dict, and the pooling its norms say. A state dict does not say its
  head count: it is that of the variant of its width (Ti, S, B, L: heads of 64 dimensions), and
  other widths must be named."""
  width = shapes['patch_embed.proj.weight'][0]
  heads = {w: h for w, _, _, h in VARIANTS.values()}.get(width)
  if heads is None:
    raise errors.BadInput(f'The timm ViT file of width {width} does not say its number of heads; '
                          'name its model, e.g. vit:...,num_heads=N.')
  return dict(patch_size=_patch(shapes), width=width, depth=_blocks(shapes, r'blocks\.(\d+)\.'),
              mlp_dim=shapes['blocks.0.mlp.fc1.weight'][0], num_heads=heads,
              pool_type='gap' if 'fc_norm.weight' in shapes else 'tok')


def _reader(convert):
  def read(arrays, model, abstract, *, skip_head, source) -> family.Variables:
    return {'params': convert(arrays, model, abstract['params'], skip_head=skip_head,
                              source=source)}
  return read


FAMILY = family.Family(
    name='vit', model=ViT, timm_arguments=timm_arguments,
    timm_names='vit_{tiny,small,base,large}_patch{P}_{res} (the plain ViTs, any tag)',
    layouts=(
        family.Layout(
            'big_vision', family.NPZ, matches=is_big_vision,
            head_classes=lambda shapes: shapes['head/kernel'][-1] if 'head/kernel' in shapes
            else None,
            arguments=_big_vision_arguments, read=_reader(params_from_big_vision),
            write=lambda variables, model: params_to_big_vision(variables['params']), side=_side),
        family.Layout(
            'timm', family.TIMM, matches=lambda shapes: 'patch_embed.proj.weight' in shapes,
            head_classes=lambda shapes: shapes['head.weight'][0] if 'head.weight' in shapes
            else None,
            arguments=_timm_arguments_of, read=_reader(params_from_timm),
            write=lambda variables, model: params_to_timm(variables['params'], model),
            side=_side)),
    # 49 tokens at 56 px; 0.81 M and 0.14 M parameters.
    demo_teacher=dict(patch_size=8, width=128, depth=6, num_heads=4, mlp_dim=256, pool_type='gap'),
    demo_student=dict(patch_size=8, width=64, depth=4, num_heads=4, mlp_dim=128, pool_type='gap'),
    tiny=dict(patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, pool_type='gap'))
