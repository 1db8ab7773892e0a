"""MobileNetV3: forward passes (eval and train) against timm's, timm weight conversion."""

import copy
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from big_distill import errors
from big_distill.models import loading, mobilenet_v3

timm = pytest.importorskip('timm')
torch = pytest.importorskip('torch')
safetensors_numpy = pytest.importorskip('safetensors.numpy')
safetensors_torch = pytest.importorskip('safetensors.torch')

CLASSES, SIZE = 10, 40  # 40 -> 20 -> 10 -> 5 -> 3 -> 2: odd sizes for the strided convs too.
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def random_timm_model(name: str, seed: int):
  """A timm model with random non-trivial weights: BN affines and all biases perturbed, then BN
  statistics measured on random images (so activations stay well scaled) and perturbed."""
  torch.manual_seed(seed)
  model = timm.create_model(name, pretrained=False, num_classes=CLASSES)
  norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for key, p in model.named_parameters():
      if key.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
    for bn in norms:
      bn.weight.mul_(1 + 0.2 * torch.randn_like(bn.weight))
      bn.momentum = None  # Cumulative average: the statistics of the calibration batch.
    model.train()(torch.randn(8, 3, SIZE, SIZE))
    for bn in norms:
      bn.momentum = 0.1
      bn.running_mean.add_(0.1 * bn.running_var.sqrt() * torch.randn_like(bn.running_mean))
      bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.8, 1.25))
  return model.eval()


@pytest.fixture(scope='module', params=['mobilenetv3_small_050', 'mobilenetv3_large_075'])
def timm_case(request, tmp_path_factory):
  """(name, timm model, state dict read back from a safetensors file)."""
  model = random_timm_model(request.param, seed=len(request.param))
  path = tmp_path_factory.mktemp('timm') / f'{request.param}.safetensors'
  safetensors_torch.save_file(model.state_dict(), str(path))
  return request.param, model, safetensors_numpy.load_file(str(path))


@pytest.fixture(scope='module')
def small_case(tmp_path_factory):
  model = random_timm_model('mobilenetv3_small_050', seed=1)
  path = tmp_path_factory.mktemp('timm') / 'small.safetensors'
  safetensors_torch.save_file(model.state_dict(), str(path))
  return model, safetensors_numpy.load_file(str(path))


def load(state_dict, channels=3, skip_head=False, **kwargs):
  """(model, variables) for `state_dict`, at SIZE x SIZE with `channels` channels."""
  model = mobilenet_v3.MobileNetV3(num_classes=CLASSES, **kwargs)
  images = jax.ShapeDtypeStruct((1, SIZE, SIZE, channels), jnp.float32)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  return model, mobilenet_v3.variables_from_timm(state_dict, model, abstract,
                                                 skip_head=skip_head, source='test.safetensors')


def images01(batch=4, channels=3, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (batch, SIZE, SIZE, channels))


def timm_forward(model, x):
  """timm's logits for NHWC images `x` that are already normalised."""
  with torch.no_grad():
    return model(torch.from_numpy(x.transpose(0, 3, 1, 2)).float()).numpy()


def assert_close(ours, theirs, rtol=1e-4):
  assert np.abs(theirs).std() > 0.1  # Non-trivial logits.
  np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max())


def test_eval_logits_match_timm(timm_case):
  name, timm_model, state_dict = timm_case
  model, variables = load(state_dict, **mobilenet_v3.timm_arguments(name))
  x = images01()
  logits = jax.jit(model.apply)(variables, (2 * x - 1).astype(np.float32))
  assert logits.dtype == jnp.float32 and logits.shape == (4, CLASSES)
  assert_close(np.asarray(logits), timm_forward(timm_model, (x - MEAN) / STD))


def test_train_mode_matches_timm_train_step(small_case):
  """Batch statistics in the forward pass and the running averages' update, as torch's, except
  that flax averages the biased batch variance into the running variance (torch the unbiased)."""
  timm_model, state_dict = small_case
  timm_model = copy.deepcopy(timm_model).train()  # Its running statistics will change.
  model, variables = load(state_dict, variant='small', width=0.5)
  counts = {}  # BN layer -> values per channel in the batch (the hook returns None).
  for name, m in timm_model.named_modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.register_forward_pre_hook(
          lambda _, inputs, name=name: counts.update({name: inputs[0][:, 0].numel()}))
  x = images01(seed=1)
  apply = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))
  logits, updates = apply(variables, (2 * x - 1).astype(np.float32))
  expected = timm_forward(timm_model, (x - MEAN) / STD)
  assert_close(np.asarray(logits), expected, rtol=1e-3)
  new = {mobilenet_v3.timm_key(path): np.asarray(v)
         for path, v in traverse_util.flatten_dict(updates['batch_stats']).items()}
  assert len(new) == 2 * len(counts)
  for layer, n in counts.items():
    old_mean, old_var = state_dict[f'{layer}.running_mean'], state_dict[f'{layer}.running_var']
    torch_mean = timm_model.get_submodule(layer).running_mean.numpy()
    torch_var = timm_model.get_submodule(layer).running_var.numpy()
    assert np.abs(torch_mean - old_mean).max() > 1e-3  # The update is visible.
    np.testing.assert_allclose(new[f'{layer}.running_mean'], torch_mean, rtol=1e-4, atol=1e-5)
    biased_var_update = (torch_var - 0.9 * old_var) * (n - 1) / n
    np.testing.assert_allclose(new[f'{layer}.running_var'], 0.9 * old_var + biased_var_update,
                               rtol=1e-4, atol=1e-5)


def test_grey_model_sums_the_rgb_stem(small_case):
  """A 1-channel model from 3-channel weights is timm's model on the grey image repeated over the
  channels (normalised, as ours is, with the mean ImageNet mean and std)."""
  timm_model, state_dict = small_case
  model, variables = load(state_dict, channels=1, variant='small', width=0.5)
  assert variables['params']['conv_stem']['kernel'].shape == (3, 3, 1, 16)
  grey = images01(channels=1, seed=2)
  logits = jax.jit(model.apply)(variables, (2 * grey - 1).astype(np.float32))
  expected = timm_forward(timm_model, np.repeat((grey - MEAN.mean()) / STD.mean(), 3, axis=-1))
  assert_close(np.asarray(logits), expected)


def test_bfloat16_compute_gives_float32_logits_close_to_float32(small_case):
  _, state_dict = small_case
  model, variables = load(state_dict, variant='small', width=0.5, dtype=jnp.bfloat16)
  x = (2 * images01(seed=3) - 1).astype(np.float32)
  logits = jax.jit(model.apply)(variables, x)
  reference = jax.jit(model.clone(dtype=jnp.float32).apply)(variables, x)
  assert logits.dtype == jnp.float32
  assert jax.tree.map(lambda v: v.dtype, variables) == jax.tree.map(lambda _: np.float32, variables)
  # Loose: this random network amplifies rounding (its float32 logits differ from float64 by
  # 100x float32's epsilon), so bfloat16's 4e-3 becomes a few percent of the logits.
  error = np.linalg.norm(logits - reference) / np.linalg.norm(reference)
  assert 1e-4 < error < 0.2  # Computed in bfloat16 indeed, and close.


def test_timm_names_and_parameter_counts():
  covered = {}
  for name in timm.list_models('mobilenetv3_*'):
    kwargs = mobilenet_v3.timm_arguments(name)
    if kwargs is not None:
      covered[name] = kwargs
  imagenet = dict(normalization='imagenet')
  assert covered == {
      'mobilenetv3_large_075': dict(variant='large', width=0.75, **imagenet),
      'mobilenetv3_large_100': dict(variant='large', width=1.0, **imagenet),
      'mobilenetv3_small_050': dict(variant='small', width=0.5, **imagenet),
      'mobilenetv3_small_075': dict(variant='small', width=0.75, **imagenet),
      'mobilenetv3_small_100': dict(variant='small', width=1.0, **imagenet)}
  assert mobilenet_v3.timm_arguments('mobilenetv3_large_100.ra_in1k') == covered[
      'mobilenetv3_large_100']
  for name in ('mobilenetv3_large_150d', 'mobilenetv3_rw', 'tf_mobilenetv3_large_100',
               'mobilenetv3_large_050', 'resnet50'):
    assert mobilenet_v3.timm_arguments(name) is None
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  for name, kwargs in covered.items():
    model = mobilenet_v3.MobileNetV3(num_classes=1000, **kwargs)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)['params']
    ours = sum(np.prod(v.shape) for v in jax.tree.leaves(params))
    theirs = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
    assert ours == theirs, name


def test_skip_head_gives_a_zero_head_for_the_model_classes(small_case):
  _, state_dict = small_case
  model = mobilenet_v3.MobileNetV3(variant='small', width=0.5, num_classes=3)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32))
  variables = mobilenet_v3.variables_from_timm(state_dict, model, abstract, skip_head=True,
                                               source='f')
  assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, abstract)
  assert not variables['params']['head']['kernel'].any()
  with pytest.raises(errors.BadInput, match=re.escape(
      'classifier.weight: file has (10, 1024), model expects (3, 1024)')):
    mobilenet_v3.variables_from_timm(state_dict, model, abstract, skip_head=False, source='f')


def test_our_timm_layout_is_what_timm_loads(small_case, tmp_path):
  """The writer: our variables (BatchNorm statistics included) as a state dict that timm loads
  strictly and computes our logits with; the file says its variant and width."""
  timm_model, state_dict = small_case
  model, variables = load(state_dict, variant='small', width=0.5)
  variables = jax.tree.map(lambda v: v * 1.5, variables)  # Not the file's values any more.
  written = mobilenet_v3.variables_to_timm(variables)
  reader = copy.deepcopy(timm_model)
  reader.load_state_dict({k: torch.from_numpy(v) for k, v in written.items()}, strict=True)
  x = images01(seed=3)
  assert_close(np.asarray(model.apply(variables, (2 * x - 1).astype(np.float32))),
               timm_forward(reader.eval(), (x - MEAN) / STD))
  path = str(tmp_path / 'ours.safetensors')
  safetensors_numpy.save_file(written, path)
  assert str(loading.spec_of(path, 'init')) == 'mobilenet_v3:variant=small,width=0.5'
  large = {k: v.numpy() for k, v in timm.create_model('mobilenetv3_large_100').state_dict().items()}
  assert mobilenet_v3.FAMILY.layout('timm').arguments(
      {k: v.shape for k, v in large.items()}) == dict(variant='large', width=1.0)


def assert_bad_input(state_dict, match: str, **kwargs) -> None:
  """Loading `state_dict` into the model of `kwargs` is bad input: one line matching `match`."""
  with pytest.raises(errors.BadInput, match=match) as info:
    load(state_dict, **kwargs)
  assert '\n' not in str(info.value)


def test_bad_inputs_name_the_first_mismatching_key(small_case):
  _, state_dict = small_case
  small = dict(variant='small', width=0.5)
  resnet = {k: v.numpy() for k, v in timm.create_model('resnet10t').state_dict().items()}
  assert_bad_input(resnet, '^' + re.escape(
      'test.safetensors does not fit MobileNetV3(variant=small, width=0.5): '
      'conv_stem.weight: missing from file, model expects (16, 3, 3, 3) (and ')
                   + r'\d+ more mismatching keys\)$', **small)
  assert_bad_input(state_dict, '^' + re.escape(
      'test.safetensors does not fit MobileNetV3(variant=small, width=0.75): '
      'blocks.0.0.conv_pw.weight: file has (8, 16, 1, 1), model expects (16, 16, 1, 1) (and '),
                   variant='small', width=0.75)
  assert_bad_input(state_dict, re.escape(
      ': conv_stem.weight: file has (16, 3, 3, 3), model expects (16, 4, 3, 3)') + '$',
                   channels=4, normalization='minus_one_to_one', **small)
  assert_bad_input(dict(state_dict, extra=np.zeros(2)),
                   re.escape(': extra: in file with shape (2,), not in model') + '$', **small)
  assert_bad_input(state_dict, "variant='medium'; use one of large, small", variant='medium')
