"""Weights people have, through `models.loading.load_variables`: timm's BiT state dicts against
timm's own forward pass, BiT `.npz` files as timm itself reads them, and the loader's refusals."""

import jax
import numpy as np
import pytest

from big_distill import errors
from big_distill.models import bit, loading
from tests.helpers import init_variables

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
safetensors_torch = pytest.importorskip('safetensors.torch')

DEPTH, WIDTH, CLASSES, SIDE = 14, 0.5, 10, 32  # timm's GroupNorm needs channels divisible by 32.


@pytest.fixture(scope='module')
def timm_bit():
  """A timm BiT R14 x1/2 with random weights everywhere (GroupNorm and head included)."""
  torch.manual_seed(0)
  model = _timm_r14()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name or 'head' in name:
        p.copy_(torch.randn_like(p) * (0.2 if name.endswith('bias') else 1.0) + (
            1.0 if name.endswith('weight') and 'norm' in name else 0.0))
  return model


def _timm_r14():
  """timm's BiT builder (what `resnetv2_50x1_bit` calls) with one unit per stage."""
  return timm.models.resnetv2._create_resnetv2_bit(  # pylint: disable=protected-access
      'resnetv2_50x1_bit', layers=[1, 1, 1, 1], width_factor=WIDTH, num_classes=CLASSES).eval()


def _abstract(model, channels=3):
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, SIDE, SIDE, channels)))


def _images(channels=3, n=4):
  return np.random.default_rng(1).uniform(-1, 1, (n, SIDE, SIDE, channels)).astype(np.float32)


def _timm_logits(model, images):
  with torch.no_grad():
    return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def test_a_timm_bit_state_dict_gives_timms_logits(tmp_path, timm_bit):
  path = str(tmp_path / 'bit.safetensors')
  safetensors_torch.save_file(timm_bit.state_dict(), path)
  ours = bit.ResNetV2(depth=DEPTH, width=WIDTH, num_classes=CLASSES)
  variables = loading.load_variables(path, bit.FAMILY, ours, _abstract(ours))
  images = _images()  # timm's BiT normalises with mean = std = 0.5: the pipeline's [-1, 1].
  np.testing.assert_allclose(ours.apply(variables, images), _timm_logits(timm_bit, images),
                             rtol=1e-4, atol=1e-4 * np.abs(_timm_logits(timm_bit, images)).max())
  assert bit.params_to_timm(variables['params']).keys() == timm_bit.state_dict().keys()
  for key, value in bit.params_to_timm(variables['params']).items():
    np.testing.assert_array_equal(value, timm_bit.state_dict()[key].numpy(), err_msg=key)


def test_a_bit_npz_we_write_is_what_timm_reads(tmp_path, timm_bit):
  """The other way: our `.npz` export, loaded by timm's own BiT reader, computes our logits."""
  ours = bit.ResNetV2(depth=DEPTH, width=WIDTH, num_classes=CLASSES)
  params = bit.params_from_timm(
      {k: v.numpy() for k, v in timm_bit.state_dict().items()}, ours, _abstract(ours)['params'],
      skip_head=False, source='timm')
  path = str(tmp_path / 'ours.npz')
  bit.save_bit_npz(params, path)
  reader = _timm_r14()
  timm.models.resnetv2._load_weights(reader, path)  # pylint: disable=protected-access
  images = _images()
  expected = _timm_logits(reader, images)
  np.testing.assert_allclose(ours.apply({'params': params}, images), expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


def test_three_channel_weights_into_a_grey_model(tmp_path, timm_bit):
  path = str(tmp_path / 'bit.safetensors')
  safetensors_torch.save_file(timm_bit.state_dict(), path)
  grey = bit.ResNetV2(depth=DEPTH, width=WIDTH, num_classes=CLASSES)
  variables = loading.load_variables(path, bit.FAMILY, grey, _abstract(grey, channels=1))
  images = _images(channels=1)
  expected = _timm_logits(timm_bit, np.repeat(images, 3, axis=-1))
  np.testing.assert_allclose(grey.apply(variables, images), expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


def test_heads_of_another_class_count(tmp_path, timm_bit):
  path = str(tmp_path / 'bit.safetensors')
  safetensors_torch.save_file(timm_bit.state_dict(), path)
  five = bit.ResNetV2(depth=DEPTH, width=WIDTH, num_classes=5)
  with pytest.raises(errors.BadInput, match=rf'{path} predicts 10 classes, but the dataset has 5'):
    loading.load_variables(path, bit.FAMILY, five, _abstract(five))  # A teacher: refused.
  variables = loading.load_variables(path, bit.FAMILY, five, _abstract(five), allow_new_head=True)
  assert variables['params']['head']['kernel'].shape == (1024, 5)
  assert not np.any(variables['params']['head']['kernel'])  # Fine-tuning starts from zero.
  np.testing.assert_array_equal(variables['params']['conv_root']['kernel'],
                                timm_bit.state_dict()['stem.conv.weight'].numpy().transpose(
                                    2, 3, 1, 0))


def test_files_that_do_not_fit_are_refused_in_one_line(tmp_path, timm_bit):
  path = str(tmp_path / 'bit.safetensors')
  safetensors_torch.save_file(timm_bit.state_dict(), path)
  wider = bit.ResNetV2(depth=DEPTH, width=1, num_classes=CLASSES)
  with pytest.raises(errors.BadInput, match=r'does not match ResNetV2\(depth=14, width=1, '
                     r'num_classes=10\): stem.conv.weight: file has \(32, 3, 7, 7\), model '
                     r'expects \(64, 3, 7, 7\) \(and \d+ more mismatching keys\)$'):
    loading.load_variables(path, bit.FAMILY, wider, _abstract(wider))
  deeper = bit.ResNetV2(depth=26, width=WIDTH, num_classes=CLASSES)
  with pytest.raises(errors.BadInput, match=r'stages.0.blocks.1.norm1.weight: missing from file'):
    loading.load_variables(path, bit.FAMILY, deeper, _abstract(deeper))
  (tmp_path / 'weights.ckpt').write_bytes(b'x')
  with pytest.raises(errors.BadInput, match=r"unknown weights format '.ckpt'"):
    loading.load_variables(str(tmp_path / 'weights.ckpt'), bit.FAMILY, wider, _abstract(wider))
  (tmp_path / 'broken.safetensors').write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a": 1}')
  with pytest.raises(errors.BadInput, match=r'Cannot read .*broken.safetensors as a safetensors '
                     r'file \(\w+\): the file is truncated, damaged or of another kind.$'):
    loading.load_variables(str(tmp_path / 'broken.safetensors'), bit.FAMILY, wider,
                           _abstract(wider))


def test_a_torch_file_is_read_without_unpickling_objects(tmp_path, timm_bit):
  """`.pth` goes through `torch.load(weights_only=True)`: tensors load, other objects do not."""
  path = str(tmp_path / 'bit.pth')
  torch.save(timm_bit.state_dict(), path)
  ours = bit.ResNetV2(depth=DEPTH, width=WIDTH, num_classes=CLASSES)
  variables = loading.load_variables(path, bit.FAMILY, ours, _abstract(ours))
  assert variables['params']['head']['bias'].shape == (CLASSES,)
  evil = str(tmp_path / 'evil.pth')
  torch.save({'weight': torch.zeros(1), 'payload': _Payload()}, evil)
  with pytest.raises(errors.BadInput) as refused:
    loading.load_variables(evil, bit.FAMILY, ours, _abstract(ours))
  assert not _Payload.unpickled
  assert str(refused.value).startswith(f'Cannot read {evil} as a PyTorch state dict of tensors')
  assert 'weights_only' not in str(refused.value)  # Never a hint to run pickled code.


class _Payload:
  unpickled = False

  def __reduce__(self):
    return (_mark_unpickled, ())


def _mark_unpickled():
  _Payload.unpickled = True
  return _Payload()


def test_timm_names_map_to_bit_models():
  assert bit.timm_arguments('resnetv2_152x2_bit') == dict(depth=152, width=2,
                                                          normalization='minus_one_to_one')
  assert bit.timm_arguments('resnetv2_50x1_bit.goog_distilled_in1k')['depth'] == 50
  assert bit.timm_arguments('resnetv2_50') is None
  assert bit.timm_arguments('vit_base_patch16_224') is None


def test_the_architecture_a_bit_file_says(tmp_path, timm_bit):
  """A teacher or `init` without `model` is what its file says: BiT `.npz` and timm layouts."""
  timm_path = str(tmp_path / 'bit.safetensors')
  safetensors_torch.save_file(timm_bit.state_dict(), timm_path)
  assert str(loading.spec_of(timm_path, 'init')) == f'bit:depth={DEPTH},width={WIDTH}'
  model = bit.ResNetV2(depth=26, width=0.125, num_classes=3)
  npz = str(tmp_path / 'r26.npz')
  bit.save_bit_npz(jax.tree_util.tree_map(np.asarray, _abstract_params(model)), npz)
  assert loading.read_shapes(npz)['resnet/head/conv2d/kernel'] == (1, 1, 256, 3)
  assert str(loading.spec_of(npz, 'init')) == 'bit:depth=26,width=0.125'
  assert loading.spec_of(npz, 'init').create(3).depth == 26
  (tmp_path / 'cut.npz').write_bytes(open(npz, 'rb').read()[:3000])  # An interrupted download.
  with pytest.raises(errors.BadInput, match=r'Cannot read .*cut.npz as a NumPy .npz archive'):
    loading.spec_of(str(tmp_path / 'cut.npz'), 'init')


def _abstract_params(model):
  return init_variables(model, 0, (1, SIDE, SIDE, 3))['params']
