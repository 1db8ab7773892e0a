"""BiT ResNet-v2: forward pass against an independent NumPy BiT reference, and `.npz` I/O."""

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax import ad_checkpoint

from big_distill import models
from big_distill.models import bit

DEPTH, WIDTH, CLASSES = 26, 0.5, 10  # 2 units per stage, channels 32..1024: all divisible by 32.
UNITS = (2, 2, 2, 2)


def random_bit_npz_dict(rng, units=UNITS, width=WIDTH, classes=CLASSES, in_ch=3):
  """Random non-zero weights keyed by the BiT `.npz` layout, built from the BiT definition alone
  (not from `big_distill`): root 7x7 conv, bottleneck units a (1x1) / b (3x3) / c (1x1, 4x),
  projection `a/proj` on each stage's first unit, final group_norm, 1x1-conv head."""
  w = {}
  base = int(64 * width)
  # Conv kernels at a realistic scale (std 0.02): standardisation hides the scale, except for its
  # epsilon (1e-10), which a 1e-5 would then visibly change.
  conv = lambda *shape: 0.02 * rng.normal(size=shape)
  w['resnet/root_block/standardized_conv2d/kernel'] = conv(7, 7, in_ch, base)
  cin = base
  for b, n in enumerate(units, 1):
    mid = base * 2**(b - 1)
    for u in range(1, n + 1):
      p = f'resnet/block{b}/unit{u:02d}/'
      for part, c_in, c_out, k in (('a', cin, mid, 1), ('b', mid, mid, 3), ('c', mid, 4 * mid, 1)):
        w[p + f'{part}/group_norm/gamma'] = 1 + 0.2 * rng.normal(size=c_in)
        w[p + f'{part}/group_norm/beta'] = 0.2 * rng.normal(size=c_in)
        w[p + f'{part}/standardized_conv2d/kernel'] = conv(k, k, c_in, c_out)
      if u == 1:
        w[p + 'a/proj/standardized_conv2d/kernel'] = conv(1, 1, cin, 4 * mid)
      cin = 4 * mid
  w['resnet/group_norm/gamma'] = 1 + 0.2 * rng.normal(size=cin)
  w['resnet/group_norm/beta'] = 0.2 * rng.normal(size=cin)
  w['resnet/head/conv2d/kernel'] = rng.normal(size=(1, 1, cin, classes)) / np.sqrt(cin)
  w['resnet/head/conv2d/bias'] = rng.normal(size=classes)
  return {k: v.astype(np.float32) for k, v in w.items()}


# ----- independent NumPy (float64) BiT forward pass, following bit_tf2/models.py ---------------

def np_pad(x, before, after, value=0.0):
  return np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)), constant_values=value)


def np_std_conv(x, kernel, stride=1):
  """StandardizedConv2D: HWIO kernel standardised over HWI (var + 1e-10), VALID conv."""
  kernel = kernel.astype(np.float64)
  kernel = (kernel - kernel.mean((0, 1, 2))) / np.sqrt(kernel.var((0, 1, 2)) + 1e-10)
  kh, kw = kernel.shape[:2]
  ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      out += x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] @ kernel[i, j]
  return out


def np_fixed_pad_conv(x, kernel, stride=1):
  """PaddingFromKernelSize(k) (pad (k-1)//2 before, the rest after) then a VALID conv."""
  total = kernel.shape[0] - 1
  return np_std_conv(np_pad(x, total // 2, total - total // 2), kernel, stride)


def np_gn_relu(x, w, prefix, groups=32, eps=1e-5):
  n, h, wd, c = x.shape
  g = x.reshape(n, h, wd, groups, c // groups)
  mean = g.mean((1, 2, 4), keepdims=True)
  var = ((g - mean)**2).mean((1, 2, 4), keepdims=True)
  x = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
  return np.maximum(x * w[prefix + 'group_norm/gamma'] + w[prefix + 'group_norm/beta'], 0)


def np_max_pool_3x3_s2(x):
  x = np_pad(x, 1, 1)  # PaddingFromKernelSize(3): zeros, then VALID pooling.
  ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
  return np.max([x[:, i:i + 2 * ho - 1:2, j:j + 2 * wo - 1:2]
                 for i in range(3) for j in range(3)], axis=0)


def np_bit_forward(w, images):
  x = np_fixed_pad_conv(images.astype(np.float64), w['resnet/root_block/standardized_conv2d/kernel'], 2)
  x = np_max_pool_3x3_s2(x)
  units = sorted({m.group(0) for k in w for m in [re.match(r'resnet/block\d+/unit\d+/', k)] if m},
                 key=lambda s: [int(t) for t in re.findall(r'\d+', s)])
  for p in units:
    stride = 2 if p.endswith('unit01/') and not p.startswith('resnet/block1/') else 1
    shortcut = x
    x = np_gn_relu(x, w, p + 'a/')
    if p + 'a/proj/standardized_conv2d/kernel' in w:
      shortcut = np_std_conv(x, w[p + 'a/proj/standardized_conv2d/kernel'], stride)
    x = np_std_conv(x, w[p + 'a/standardized_conv2d/kernel'])
    x = np_fixed_pad_conv(np_gn_relu(x, w, p + 'b/'), w[p + 'b/standardized_conv2d/kernel'], stride)
    x = np_std_conv(np_gn_relu(x, w, p + 'c/'), w[p + 'c/standardized_conv2d/kernel'])
    x = x + shortcut
  x = np_gn_relu(x, w, 'resnet/').mean((1, 2))
  return x @ w['resnet/head/conv2d/kernel'][0, 0] + w['resnet/head/conv2d/bias']


# ----- tests -----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def model():
  return bit.ResNetV2(depth=DEPTH, width=WIDTH, num_classes=CLASSES)


@pytest.fixture(scope='module')
def npz_path(tmp_path_factory):
  path = tmp_path_factory.mktemp('bit') / 'bit.npz'
  np.savez(path, **random_bit_npz_dict(np.random.default_rng(0)))
  return str(path)


def test_forward_matches_numpy_bit_reference(model, npz_path):
  with np.load(npz_path) as f:
    w = {k: f[k] for k in f.files}
  images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  params = bit.load_bit_npz(npz_path, model)
  logits = np.asarray(jax.jit(model.apply)({'params': params}, images))
  expected = np_bit_forward(w, images)
  assert logits.shape == (2, CLASSES)
  assert np.abs(expected).max() > 0.1  # non-trivial logits
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


def test_group_norm_is_two_pass_when_mean_is_large():
  x = (300 + np.random.default_rng(2).normal(size=(2, 4, 4, 64))).astype(np.float32)
  gn = bit.group_norm(64, 'gn', jnp.float32)
  out = np.asarray(gn.apply(gn.init(jax.random.PRNGKey(0), x), x))
  g = x.astype(np.float64).reshape(2, 4, 4, 32, 2)
  ref = ((g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(g.var((1, 2, 4), keepdims=True) + 1e-5))
  np.testing.assert_allclose(out, ref.reshape(x.shape), atol=1e-3)


def test_save_load_round_trip_is_exact(model, npz_path, tmp_path):
  params = bit.load_bit_npz(npz_path, model)
  flat = traverse_util.flatten_dict(params)  # same tree and shapes as model.init(...)['params']
  assert {k: v.shape for k, v in flat.items()} == {
      k: v.shape for k, v in bit.model_param_shapes(model).items()}
  out = str(tmp_path / 'saved')  # no suffix: the path is used as given
  bit.save_bit_npz(params, out)
  with np.load(out) as f, np.load(npz_path) as g:
    assert sorted(f.files) == sorted(g.files)
    assert f['resnet/head/conv2d/kernel'].shape == (1, 1, 1024, CLASSES)
    for key in f.files:
      np.testing.assert_array_equal(f[key], g[key])
  again = bit.load_bit_npz(out, model)
  jax.tree.map(np.testing.assert_array_equal, again, params)
  assert params['head']['kernel'].shape == (1024, CLASSES)


def test_numbered_conv_names_load_as_the_plain_ones(model, npz_path, tmp_path):
  """Some BiT files call their convolutions `standardized_conv2d_N`."""
  with np.load(npz_path) as f:
    arrays = {k: f[k] for k in f.files}
  numbered = {k.replace('/standardized_conv2d/', f'/standardized_conv2d_{i}/'): v
              for i, (k, v) in enumerate(arrays.items())}
  assert sum('standardized_conv2d_' in k for k in numbered) > 10
  out = tmp_path / 'numbered.npz'
  np.savez(out, **numbered)
  jax.tree.map(np.testing.assert_array_equal, bit.load_bit_npz(str(out), model),
               bit.load_bit_npz(npz_path, model))


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_classes=7), 'resnet/head/conv2d/kernel: file has (1, 1, 1024, 10), '
                          'model expects (1, 1, 1024, 7)'),
    (dict(width=1), 'file has (7, 7, 3, 32), model expects (7, 7, 3, 64)'),
    (dict(depth=50), 'resnet/block1/unit03/a/group_norm/gamma: missing from file, '
                     'model expects (128,)'),
    (dict(depth=14), 'resnet/block1/unit02/a/group_norm/beta: in file with shape (128,), '
                     'not in model'),
])
def test_mismatching_model_raises(npz_path, kwargs, message):
  config = dict(depth=DEPTH, width=WIDTH, num_classes=CLASSES) | kwargs
  with pytest.raises(ValueError) as e:
    bit.load_bit_npz(npz_path, bit.ResNetV2(**config))
  assert message in str(e.value)
  assert '\n' not in str(e.value)
  if 'width' in kwargs:
    assert re.search(r'resnet/\S+/standardized_conv2d/kernel: file has', str(e.value))


def test_missing_key_is_named(model, npz_path, tmp_path):
  with np.load(npz_path) as f:
    arrays = {k: f[k] for k in f.files if k != 'resnet/block3/unit02/b/group_norm/gamma'}
  with pytest.raises(ValueError, match='resnet/block3/unit02/b/group_norm/gamma: missing'):
    bit.bit_npz_dict_to_params(arrays, model)
  with pytest.raises(ValueError, match=r'root_block/standardized_conv2d/kernel: file has '
                                       r'\(7, 7, 3, 32\), model expects \(7, 7, 1, 32\)'):
    bit.load_bit_npz(npz_path, model, input_channels=1)


def test_skip_head_gives_zero_head_and_same_body(model, npz_path):
  full = bit.load_bit_npz(npz_path, model)
  new = bit.load_bit_npz(npz_path, bit.ResNetV2(DEPTH, WIDTH, num_classes=5), skip_head=True)
  assert new['head']['kernel'].shape == (1024, 5) and new['head']['bias'].shape == (5,)
  assert not np.any(new['head']['kernel']) and not np.any(new['head']['bias'])
  full.pop('head')
  new.pop('head')
  jax.tree.map(np.testing.assert_array_equal, new, full)
  # A file without a head loads too.
  with np.load(npz_path) as f:
    arrays = {k: f[k] for k in f.files if '/head/' not in k}
  headless = bit.bit_npz_dict_to_params(arrays, model, skip_head=True)
  assert headless['head']['kernel'].shape == (1024, CLASSES)


def test_frozen_model_gives_the_same_logits(model, npz_path):
  """Kernels standardised once (frozen teachers) give the logits of standardising every call."""
  params = bit.load_bit_npz(npz_path, model)
  frozen_model, frozen_params = model.frozen(params)
  assert frozen_model.prestandardized and not model.prestandardized
  kernel = frozen_params['block1']['unit01']['conv1']['kernel']
  np.testing.assert_allclose(kernel.mean((0, 1, 2)), 0, atol=1e-6)
  np.testing.assert_allclose(kernel.std((0, 1, 2)), 1, rtol=1e-4)
  np.testing.assert_array_equal(frozen_params['head']['kernel'], params['head']['kernel'])
  images = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(frozen_model.apply({'params': frozen_params}, images),
                             model.apply({'params': params}, images), rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters_and_logits(model, npz_path):
  params = bit.load_bit_npz(npz_path, model)
  low = models.resolve(f'bit:depth={DEPTH},width={WIDTH}').create(CLASSES, 'bfloat16')
  images = np.random.default_rng(5).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  abstract = jax.eval_shape(low.init, jax.random.PRNGKey(0), images)['params']
  assert {x.dtype for x in jax.tree_util.tree_leaves(abstract)} == {jnp.dtype(jnp.float32)}
  jaxpr = str(jax.make_jaxpr(low.apply)({'params': params}, images))
  assert 'dot_general' in jaxpr and 'conv_general_dilated' in jaxpr
  for line in jaxpr.splitlines():  # Every convolution and matmul computes in bfloat16.
    if 'conv_general_dilated[' in line or 'dot_general[' in line:
      assert line.split('=')[0].strip().endswith('bf16[') or ':bf16[' in line, line
  logits = low.apply({'params': params}, images)
  expected = model.apply({'params': params}, images)
  assert logits.dtype == jnp.float32
  # bfloat16 keeps 8 bits of mantissa: a few percent of error after 26 layers, not more.
  assert np.linalg.norm(logits - expected) < 0.1 * np.linalg.norm(expected)
  with pytest.raises(ValueError, match=r"config.dtype='bf16'; use one of float32, bfloat16"):
    models.resolve('bit').create(CLASSES, 'bf16')


def test_group_norm_is_flaxs_in_float32_and_keeps_bfloat16_for_the_backward_pass(capsys):
  x = (3 + 2 * np.random.default_rng(4).normal(size=(2, 5, 5, 64))).astype(np.float32)
  theirs = flax.linen.GroupNorm(num_groups=32, epsilon=1e-5, use_fast_variance=False)
  variables = jax.tree.map(lambda p: p + np.random.default_rng(5).normal(size=p.shape),
                           theirs.init(jax.random.PRNGKey(0), x))
  ours = bit.group_norm(64, 'gn', jnp.float32)
  np.testing.assert_array_equal(ours.apply(variables, x), theirs.apply(variables, x))
  grads = [jax.grad(lambda v, x, m=m: jnp.sum(jnp.sin(m.apply(v, x))), (0, 1))(variables, x)
           for m in (ours, theirs)]
  for a, b in zip(*map(jax.tree.leaves, grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # In bfloat16 the backward pass keeps no float32 array of the activations' size (flax's does).
  low = bit.group_norm(64, 'gn', jnp.bfloat16)
  ad_checkpoint.print_saved_residuals(lambda x: jnp.sum(low.apply(variables, x)),
                                      x.astype(jnp.bfloat16))
  saved = capsys.readouterr().out.splitlines()
  assert any(line.startswith('bf16[2,5,5,32,2]') for line in saved), saved
  assert not [line for line in saved if line.startswith('f32[2,5,5')], saved
  out = low.apply(variables, x.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(np.float32), theirs.apply(variables, x), atol=0.1)


def test_frozen_kernels_round_alike_whatever_their_memory_layout():
  """`standardize_params` (a frozen teacher's kernels, in NumPy) gives the model's own
  standardisation, and the same bits for a kernel held as a transposed view (what timm's OIHW
  layout reads back as) as for its contiguous copy (an `.npz`'s)."""
  rng = np.random.default_rng(0)
  kernel = (rng.standard_normal((3, 3, 16, 32)) * 0.3 + 0.05).astype(np.float32)
  view = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)).transpose(2, 3, 1, 0)
  assert not view.flags.c_contiguous and np.array_equal(view, kernel)
  head = {'kernel': np.ones((32, 10), np.float32), 'bias': np.zeros(10, np.float32)}
  a, b = (bit.standardize_params({'conv_root': {'kernel': k}, 'head': head}) for k in (kernel, view))
  assert a['conv_root']['kernel'].dtype == np.float32
  assert np.array_equal(a['conv_root']['kernel'], b['conv_root']['kernel'])
  assert all(a['head'][k] is head[k] for k in head)  # The head as it was.
  np.testing.assert_allclose(a['conv_root']['kernel'], bit.standardize(jnp.asarray(kernel)),
                             rtol=1e-5, atol=1e-5)
