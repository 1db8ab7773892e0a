"""ViT: logits against timm's and an independent NumPy ViT, weight conversion in both directions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from big_distill import errors
from big_distill.models import loading, normalization, vit

timm = pytest.importorskip('timm')
torch = pytest.importorskip('torch')
safetensors_numpy = pytest.importorskip('safetensors.numpy')
safetensors_torch = pytest.importorskip('safetensors.torch')
scipy_special = pytest.importorskip('scipy.special')

PATCH, WIDTH, DEPTH, HEADS, MLP, CLASSES, SIZE = 8, 32, 2, 2, 128, 10, 32  # A 4x4 grid.
POSEMB = 'Transformer/posembed_input/pos_embedding'


def tiny(**kwargs) -> vit.ViT:
  return vit.ViT(**dict(patch_size=PATCH, width=WIDTH, depth=DEPTH, num_heads=HEADS,
                        num_classes=CLASSES) | kwargs)


def abstract(model, size=SIZE, channels=3):
  images = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), images)['params']


@functools.partial(jax.jit, static_argnums=0)
def logits(model, params, images):
  return model.apply({'params': params}, images)


def images01(size=SIZE, channels=3, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (2, size, size, channels)).astype(np.float32)


def assert_close(ours, theirs, rtol=1e-4):
  assert np.abs(theirs).std() > 0.1  # Non-trivial logits.
  np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max())


def assert_trees_equal(a, b):
  a, b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


# ----- timm --------------------------------------------------------------------------------------

def timm_vit(global_pool='token', size=SIZE, seed=0):
  """A tiny timm ViT with random non-zero weights everywhere (timm zero-inits biases and may
  zero-init the head): LayerNorm scales around 1, everything else N(0, 0.2^2)."""
  model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=CLASSES,
                            img_size=size, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH,
                            num_heads=HEADS, global_pool=global_pool)
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      base = 1.0 if 'norm' in name and name.endswith('.weight') else 0.0
      p.copy_(base + 0.2 * torch.randn(p.shape, generator=generator))
  return model.eval()


def timm_forward(model, x):
  """timm's logits for NHWC images `x` that are already normalised."""
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


@pytest.fixture(scope='module')
def timm_cases(tmp_path_factory):
  """{global_pool: (timm model, its state dict read back from a safetensors file)}."""
  cases = {}
  for pool in ('token', 'avg'):
    model = timm_vit(pool)
    path = str(tmp_path_factory.mktemp('timm') / f'{pool}.safetensors')
    safetensors_torch.save_file(model.state_dict(), path)
    cases[pool] = model, safetensors_numpy.load_file(path)
  return cases


@pytest.fixture
def token_case(timm_cases):
  return timm_cases['token']


def from_timm(state_dict, model, size=SIZE, channels=3, skip_head=False):
  return vit.params_from_timm(state_dict, model, abstract(model, size, channels),
                              skip_head=skip_head, source='vit.safetensors')


@pytest.mark.parametrize('global_pool, pool_type', [('token', 'tok'), ('avg', 'gap')])
def test_logits_match_timm_and_conversion_round_trips(timm_cases, global_pool, pool_type):
  """Class token (`global_pool='token'`) and `global_pool='avg'` (fc_norm after pooling)."""
  timm_model, state_dict = timm_cases[global_pool]
  model = tiny(pool_type=pool_type)
  params = from_timm(state_dict, model)
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, abstract(model))
  x01 = images01()
  ours = logits(model, params, 2 * x01 - 1)  # The pipeline's [-1, 1]; timm's mean = std = 0.5.
  assert ours.dtype == jnp.float32 and ours.shape == (2, CLASSES)
  assert_close(np.asarray(ours), timm_forward(timm_model, (x01 - 0.5) / 0.5))
  back = vit.params_to_timm(params, model)
  assert sorted(back) == sorted(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  assert_trees_equal(from_timm(back, model), params)


@pytest.mark.parametrize('size', [48, 24])
def test_position_embeddings_are_resized(token_case, size):
  """A 4x4 grid resized to 6x6 and 3x3 equals timm's own bilinear resize (torch's
  `F.interpolate(align_corners=False, antialias=False)`, what timm's `.npz` loader does; we use
  `jax.image.resize`, which samples the same way), class token's row kept; the model then gives
  the logits of a timm model built for that resolution with those embeddings."""
  _, state_dict = token_case
  model = tiny()
  params = from_timm(state_dict, model, size=size)
  posemb, grid = params['Transformer']['posembed_input']['pos_embedding'], size // PATCH
  assert posemb.shape == (1, 1 + grid * grid, WIDTH)
  np.testing.assert_array_equal(posemb[:, 0], state_dict['pos_embed'][:, 0])
  expected = timm.layers.resample_abs_pos_embed(
      torch.from_numpy(state_dict['pos_embed']), new_size=(grid, grid), num_prefix_tokens=1,
      interpolation='bilinear', antialias=False).numpy()
  np.testing.assert_allclose(posemb, expected, rtol=1e-6, atol=1e-6)
  timm_model = timm_vit(size=size)
  timm_model.load_state_dict({k: torch.from_numpy(v) for k, v in
                              (state_dict | dict(pos_embed=expected)).items()})
  x = 2 * images01(size) - 1
  assert_close(np.asarray(logits(model, params, x)), timm_forward(timm_model, x))


def test_three_channel_weights_in_a_grey_model(token_case):
  timm_model, state_dict = token_case
  model = tiny()
  params = from_timm(state_dict, model, channels=1)
  assert params['embedding']['kernel'].shape == (PATCH, PATCH, 1, WIDTH)
  grey = 2 * images01(channels=1) - 1
  assert_close(np.asarray(logits(model, params, grey)),
               timm_forward(timm_model, np.repeat(grey, 3, axis=-1)))


def test_skip_head_gives_a_zero_head_and_the_same_body(token_case):
  _, state_dict = token_case
  full = from_timm(state_dict, tiny())
  new = from_timm(state_dict, tiny(num_classes=5), skip_head=True)
  assert new['head']['kernel'].shape == (WIDTH, 5) and new['head']['bias'].shape == (5,)
  assert not np.any(new['head']['kernel']) and not np.any(new['head']['bias'])
  headless = {k: v for k, v in state_dict.items() if not k.startswith('head.')}
  assert_trees_equal(from_timm(headless, tiny(num_classes=5), skip_head=True), new)
  full.pop('head')
  new.pop('head')
  assert_trees_equal(new, full)
  model = tiny()
  frozen_model, frozen_params = model.frozen(full)
  assert frozen_model is model and frozen_params is full


def test_bfloat16_compute_keeps_float32_parameters_and_logits(token_case):
  _, state_dict = token_case
  model, low = tiny(), tiny(dtype=jnp.bfloat16)
  params = from_timm(state_dict, model)
  assert {x.dtype for x in jax.tree.leaves(abstract(low))} == {jnp.dtype(jnp.float32)}
  x = 2 * images01() - 1
  expected, got = np.asarray(logits(model, params, x)), logits(low, params, x)
  assert got.dtype == jnp.float32
  assert np.linalg.norm(got - expected) < 0.05 * np.linalg.norm(expected)


@pytest.mark.parametrize('variant, name', [('S/16', 'vit_small_patch16_224'),
                                           ('B/32', 'vit_base_patch32_224'),
                                           ('Ti/16', 'vit_tiny_patch16_224')])
def test_variants_have_timms_parameter_counts(variant, name):
  assert vit.timm_arguments(name) == dict(variant=variant, pool_type='tok',
                                         normalization='minus_one_to_one')
  ours = sum(np.prod(x.shape) for x in jax.tree.leaves(abstract(vit.ViT(variant=variant), 224)))
  with torch.device('meta'):  # Shapes only: nothing allocated or initialised.
    theirs = sum(p.numel() for p in timm.create_model(name).parameters())
  assert ours == theirs


def test_timm_names_and_normalisations():
  assert vit.timm_arguments('vit_small_patch32_384.augreg_in21k_ft_in1k') == dict(
      variant='S/32', pool_type='tok', normalization='minus_one_to_one')
  assert vit.timm_arguments('vit_large_patch16_224')['variant'] == 'L/16'
  for other in ('resnet50', 'vit_base_patch16_clip_224.openai', 'vit_base_patch16_gap_224',
                'vit_base_patch16_224_miil.in21k', 'vit_huge_patch14_224', 'mobilenetv3_small_100'):
    assert vit.timm_arguments(other) is None, other
  stats = {'minus_one_to_one': ((0.5,) * 3, (0.5,) * 3),
           'imagenet': normalization.NORMALIZATIONS['imagenet']}
  names = [n for n in timm.list_models(pretrained=True)
           if vit._TIMM_NAME.fullmatch(n)]  # pylint: disable=protected-access
  names += sorted({n.split('.')[0] for n in names})  # A bare name: timm's default tag.
  assert len(names) > 50
  for name in names:
    cfg = timm.models.get_pretrained_cfg(name)
    if name.endswith('.bamboo'):  # OpenAI CLIP's mean and std.
      with pytest.raises(errors.BadInput, match='CLIP'):
        vit.timm_arguments(name)
    else:
      np.testing.assert_allclose(stats[vit.timm_arguments(name)['normalization']],
                                 (cfg.mean, cfg.std), err_msg=name)
  assert vit.timm_arguments('vit_base_patch16_224.dino')['normalization'] == 'imagenet'
  # Its only tag is DINO's.
  assert vit.timm_arguments('vit_small_patch8_224')['normalization'] == 'imagenet'


def resnet_state_dict():
  with torch.device('meta'):
    return {k: np.zeros(v.shape, np.float32)
            for k, v in timm.create_model('resnet18').state_dict().items()}


@pytest.mark.parametrize('state, model_kwargs, load_kwargs, message', [
    ('resnet', {}, {}, r'patch_embed\.proj\.weight: missing from file, model expects '
                       r'\(32, 3, 8, 8\) \(and \d+ more mismatching keys\)'),
    (None, dict(patch_size=4), {}, r'patch_embed\.proj\.weight: patch size 8, model expects 4\.'),
    (None, dict(width=48, num_heads=3), {},
     r'patch_embed\.proj\.weight: file has \(32, 3, 8, 8\), model expects \(48, 3, 8, 8\)'),
    (None, dict(mlp_dim=64), {},
     r'blocks\.0\.mlp\.fc1\.weight: file has \(128, 32\), model expects \(64, 32\)'),
    (None, {}, dict(channels=2), r'file has \(32, 3, 8, 8\), model expects \(32, 2, 8, 8\)'),
    (None, dict(depth=3), {}, r'blocks\.2\.norm1\.weight: missing from file'),
    (None, dict(depth=1), {}, r'blocks\.1\.attn\.proj\.bias: in file with shape \(32,\), not in'),
    (None, dict(pool_type='gap'), {}, r'fc_norm\.weight: missing from file, model expects \(32,\)'),
    (None, dict(num_classes=7), {}, r'head\.weight: file has \(10, 32\), model expects \(7, 32\)'),
    ('extra', {}, {}, r'^vit\.safetensors does not fit ViT\(patch_size=8, width=32, depth=2, '
                      r'mlp_dim=128, num_heads=2, pool_type=.tok., num_classes=10\): '
                      r'extra: in file with shape \(3,\), not in model$'),
])
def test_mismatches_are_one_line_bad_input(token_case, state, model_kwargs, load_kwargs, message):
  state_dict = token_case[1]
  state_dict = dict(resnet=resnet_state_dict(), extra=state_dict | dict(extra=np.zeros(3))).get(
      state, state_dict)
  with pytest.raises(errors.BadInput, match=message) as e:
    from_timm(state_dict, tiny(**model_kwargs), **load_kwargs)
  assert '\n' not in str(e.value) and str(e.value).startswith('vit.safetensors does not fit ViT(')


def test_a_variant_and_sizes_must_agree():
  assert vit.ViT(variant='S/16', width=384, num_heads=6).dims() == (16, 384, 12, 1536, 6)
  with pytest.raises(errors.BadInput, match="ViT variant 'S/16' has width=384, not 128."):
    vit.ViT(variant='S/16', width=128).dims()
  assert vit.ViT(width=64).dims() == (16, 64, 12, 256, 3)  # Ti/16's other sizes.


def test_the_architecture_a_vit_file_says(token_case, tmp_path):
  """A timm state dict (heads of 64 dimensions: timm's plain ViTs) and a big_vision `.npz`
  (class-token pooling) say their sizes, and the side of their position embeddings."""
  timm_layout, big_vision = vit.FAMILY.layout('timm'), vit.FAMILY.layout('big_vision')
  with torch.device('meta'):
    small = {k: v.shape for k, v in timm.create_model('vit_small_patch16_384').state_dict().items()}
  assert timm_layout.arguments(small) == dict(patch_size=16, width=384, depth=12, mlp_dim=1536,
                                              num_heads=6, pool_type='tok')
  assert timm_layout.side(small) == 384
  shapes = {k: v.shape for k, v in token_case[1].items()}  # Width 32: no variant's.
  with pytest.raises(errors.BadInput, match='width 32 does not say its number of heads'):
    timm_layout.arguments(shapes)
  arrays = random_big_vision_arrays(np.random.default_rng(0))
  npz = str(tmp_path / 'vit.npz')
  np.savez(npz, **arrays)
  spec = loading.spec_of(npz, 'teachers[0].checkpoint')
  assert dict(spec.arguments) == dict(patch_size=PATCH, width=WIDTH, depth=DEPTH, mlp_dim=MLP,
                                      num_heads=HEADS, pool_type='tok')
  assert big_vision.side(loading.read_shapes(npz)) == SIZE


def test_bad_model_configurations():
  with pytest.raises(errors.BadInput, match='patch size 8 does not divide the image size 36x36'):
    abstract(tiny(), size=36)
  with pytest.raises(errors.BadInput, match="variant 'M/16'"):
    abstract(vit.ViT(variant='M/16'))
  with pytest.raises(errors.BadInput, match="pool_type='map'"):
    abstract(tiny(pool_type='map'))


# ----- big_vision / AugReg .npz files, and an independent NumPy (float64) ViT -------------------

def random_big_vision_arrays(rng, depth=DEPTH, width=WIDTH, heads=HEADS, mlp=MLP, patch=PATCH,
                             grid=SIZE // PATCH, classes=CLASSES, channels=3):
  """Random non-zero weights keyed by the AugReg (`vit_jax`) `.npz` layout, built from the layout
  alone (not from `big_distill`)."""
  shapes = {'embedding/kernel': (patch, patch, channels, width), 'embedding/bias': (width,),
            'cls': (1, 1, width), POSEMB: (1, 1 + grid * grid, width),
            'Transformer/encoder_norm/scale': (width,), 'Transformer/encoder_norm/bias': (width,),
            'head/kernel': (width, classes), 'head/bias': (classes,)}
  for i in range(depth):
    b = f'Transformer/encoderblock_{i}/'
    for norm in ('LayerNorm_0', 'LayerNorm_2'):
      shapes |= {b + f'{norm}/scale': (width,), b + f'{norm}/bias': (width,)}
    for name in ('query', 'key', 'value'):
      shapes[b + f'MultiHeadDotProductAttention_1/{name}/kernel'] = (width, heads, width // heads)
      shapes[b + f'MultiHeadDotProductAttention_1/{name}/bias'] = (heads, width // heads)
    shapes[b + 'MultiHeadDotProductAttention_1/out/kernel'] = (heads, width // heads, width)
    shapes[b + 'MultiHeadDotProductAttention_1/out/bias'] = (width,)
    shapes |= {b + 'MlpBlock_3/Dense_0/kernel': (width, mlp), b + 'MlpBlock_3/Dense_0/bias': (mlp,),
               b + 'MlpBlock_3/Dense_1/kernel': (mlp, width),
               b + 'MlpBlock_3/Dense_1/bias': (width,)}
  return {k: ((k.endswith('/scale') + 0.2 * rng.normal(size=s))).astype(np.float32)
          for k, s in shapes.items()}


def np_layer_norm(x, w, prefix):
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  return x * w[prefix + 'scale'] + w[prefix + 'bias']


def np_vit_forward(w, images, patch=PATCH):
  """The ViT paper's model with the class token, in float64."""
  w = {k: v.astype(np.float64) for k, v in w.items()}
  n, h, wd, c = images.shape
  x = images.astype(np.float64).reshape(n, h // patch, patch, wd // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, -1, patch * patch * c)  # Patches, row-major.
  x = x @ w['embedding/kernel'].reshape(patch * patch * c, -1) + w['embedding/bias']
  x = np.concatenate([np.repeat(w['cls'], n, axis=0), x], axis=1) + w[POSEMB]
  i = 0
  while f'Transformer/encoderblock_{i}/LayerNorm_0/scale' in w:
    b = f'Transformer/encoderblock_{i}/'
    a = b + 'MultiHeadDotProductAttention_1/'
    y = np_layer_norm(x, w, b + 'LayerNorm_0/')
    q, k, v = (np.einsum('ntd,dhk->nthk', y, w[a + f'{p}/kernel']) + w[a + f'{p}/bias']
               for p in ('query', 'key', 'value'))
    att = np.einsum('nqhk,nthk->nhqt', q, k) / np.sqrt(q.shape[-1])
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    y = np.einsum('nhqt,nthk->nqhk', att, v)
    x = x + np.einsum('nqhk,hkd->nqd', y, w[a + 'out/kernel']) + w[a + 'out/bias']
    y = np_layer_norm(x, w, b + 'LayerNorm_2/')
    y = y @ w[b + 'MlpBlock_3/Dense_0/kernel'] + w[b + 'MlpBlock_3/Dense_0/bias']
    y = 0.5 * y * (1 + scipy_special.erf(y / np.sqrt(2)))  # Exact GELU.
    x = x + y @ w[b + 'MlpBlock_3/Dense_1/kernel'] + w[b + 'MlpBlock_3/Dense_1/bias']
    i += 1
  x = np_layer_norm(x, w, 'Transformer/encoder_norm/')[:, 0]
  return x @ w['head/kernel'] + w['head/bias']


def test_big_vision_npz_matches_numpy_reference_and_timm_reads_the_export(tmp_path):
  arrays = random_big_vision_arrays(np.random.default_rng(1))
  path = tmp_path / 'vit.npz'
  np.savez(path, **arrays)
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  assert vit.is_big_vision(arrays)
  assert not vit.is_big_vision(['resnet/root_block/standardized_conv2d/kernel'])
  model = tiny()
  load = functools.partial(vit.params_from_big_vision, model=model, abstract_params=abstract(model),
                           skip_head=False, source=str(path))
  params = load(arrays)
  x = 2 * images01(seed=2) - 1
  ours = np.asarray(logits(model, params, x))
  assert_close(ours, np_vit_forward(arrays, x))
  exported = vit.params_to_big_vision(params)
  assert sorted(exported) == sorted(arrays)
  for key, value in arrays.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  assert_trees_equal(load(exported), params)
  # A top-level `pos_embedding` (newer big_vision): with the class token's row, or without it.
  posemb = arrays.pop(POSEMB)
  assert_trees_equal(load(arrays | dict(pos_embedding=posemb)), params)
  no_cls = load(arrays | dict(pos_embedding=posemb[:, 1:]))['Transformer']['posembed_input']
  np.testing.assert_array_equal(no_cls['pos_embedding'][:, 0], 0)
  np.testing.assert_array_equal(no_cls['pos_embedding'][:, 1:], posemb[:, 1:])
  # timm's own `.npz` loader reads what we write, and computes the same logits.
  np.savez(tmp_path / 'export.npz', **exported)
  timm_model = timm_vit(seed=5)
  timm_model.load_pretrained(str(tmp_path / 'export.npz'))
  assert_close(ours, timm_forward(timm_model, x))


def test_big_vision_grey_resize_and_errors():
  arrays = random_big_vision_arrays(np.random.default_rng(3))
  model = tiny()
  params = vit.params_from_big_vision(arrays, model, abstract(model, 48, channels=1),
                                      skip_head=False, source='vit.npz')
  np.testing.assert_allclose(params['embedding']['kernel'],
                             arrays['embedding/kernel'].sum(2, keepdims=True), rtol=1e-6)
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 37, WIDTH)
  for kwargs, message in [
      (dict(patch_size=16), r'embedding/kernel: patch size 8, model expects 16\.'),
      (dict(width=48, num_heads=3),
       r'embedding/kernel: file has \(8, 8, 3, 32\), model expects \(8, 8, 3, 48\)')]:
    bad = tiny(**kwargs)
    with pytest.raises(errors.BadInput, match=f'^vit.npz does not fit ViT.*: {message}'):
      vit.params_from_big_vision(arrays, bad, abstract(bad), skip_head=False, source='vit.npz')
