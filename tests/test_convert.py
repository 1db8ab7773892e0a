"""`python -m big_distill.convert`: timm <-> BiT / big_vision `.npz`, and a run's student out;
every converted file loads back exactly."""

from flax import traverse_util
import numpy as np
import pytest

from big_distill import checkpoint, errors
from big_distill.models import bit
from tests.helpers import command, error_lines, run, snapshot

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
safetensors_numpy = pytest.importorskip('safetensors.numpy')
safetensors_torch = pytest.importorskip('safetensors.torch')


def _convert(*args: str, check: bool = True):
  return run(command('big_distill.convert', *args), check=check)


def _random(model):
  torch.manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.1)
  return {k: v.numpy() for k, v in model.state_dict().items()}


def test_timm_bit_to_bit_npz_and_back(tmp_path):
  timm_model = timm.models.resnetv2._create_resnetv2_bit(  # pylint: disable=protected-access
      'resnetv2_50x1_bit', layers=[1, 1, 1, 1], width_factor=0.5, num_classes=10)
  state = _random(timm_model)
  source, npz, back = (str(tmp_path / n) for n in ('t.safetensors', 'b.npz', 'back.safetensors'))
  safetensors_torch.save_file(timm_model.state_dict(), source)
  proc = _convert(f'--input={source}', f'--output={npz}')  # The architecture the file says.
  assert (f'Wrote {len(state)} arrays of bit:depth=14,width=0.5 to {npz} (bit layout).'
          in proc.stdout)
  params = bit.load_bit_npz(npz, bit.ResNetV2(depth=14, width=0.5, num_classes=10))
  for key, value in bit.params_to_timm(params).items():
    np.testing.assert_array_equal(value, state[key], err_msg=key)
  _convert(f'--input={npz}', f'--output={back}')
  restored = safetensors_numpy.load_file(back)
  assert restored.keys() == state.keys()
  for key, value in state.items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)


def test_timm_vit_to_big_vision_npz_and_back(tmp_path):
  timm_model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=10,
                                 img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
  state = _random(timm_model)
  source, npz, back = (str(tmp_path / n) for n in ('t.safetensors', 'v.npz', 'back.safetensors'))
  safetensors_torch.save_file(timm_model.state_dict(), source)
  spec = '--model=vit:patch_size=8,width=32,depth=2,num_heads=2'
  _convert(f'--input={source}', spec, f'--output={npz}')  # The 4x4 grid: 32 px, read from the file.
  with np.load(npz) as f:
    assert f['Transformer/posembed_input/pos_embedding'].shape == (1, 17, 32)
  proc = _convert(f'--input={npz}', f'--output={back}')  # Sizes and heads from the file.
  assert 'vit:patch_size=8,width=32,depth=2,mlp_dim=128,num_heads=2,pool_type=tok' in proc.stdout
  restored = safetensors_numpy.load_file(back)
  assert restored.keys() == state.keys()
  for key, value in state.items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)


def test_a_runs_student_goes_to_timm(tmp_path, distill_run):
  out = str(tmp_path / 'student.safetensors')
  proc = _convert(f'--input={distill_run}', f'--output={out}')
  assert proc.stdout.startswith('Wrote the student of the best checkpoint, step 10 (')
  student = bit.ResNetV2(depth=14, width=0.125, num_classes=10)
  expected = traverse_util.flatten_dict(checkpoint.read_variables(distill_run)[0]['params'])
  got = traverse_util.flatten_dict(bit.params_from_timm(
      safetensors_numpy.load_file(out), student, traverse_util.unflatten_dict(expected),
      skip_head=False, source=out))
  assert got.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_array_equal(got[path], value, err_msg=str(path))


def test_timm_mobilenet_v3_through_convert_unchanged(tmp_path):
  """A MobileNetV3 goes out in timm's layout as it came in (BatchNorm statistics included), its
  variant and width read from the file."""
  timm_model = timm.create_model('mobilenetv3_large_075', pretrained=False, num_classes=7)
  state = _random(timm_model)
  source, out = str(tmp_path / 'm.safetensors'), str(tmp_path / 'out.safetensors')
  safetensors_torch.save_file(timm_model.state_dict(), source)
  proc = _convert(f'--input={source}', f'--output={out}', '--resolution=64')
  assert 'mobilenet_v3:variant=large,width=0.75' in proc.stdout
  restored = safetensors_numpy.load_file(out)
  kept = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}
  assert restored.keys() == kept.keys()
  for key, value in kept.items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)


def test_bad_conversions_are_one_line_and_write_nothing(tmp_path):
  timm_model = timm.create_model('mobilenetv3_small_050', pretrained=False, num_classes=10)
  source = str(tmp_path / 'm.safetensors')
  safetensors_torch.save_file(timm_model.state_dict(), source)
  vit_p8 = str(tmp_path / 'vit_p8.safetensors')
  safetensors_torch.save_file(timm.create_model(
      'vit_tiny_patch16_224', pretrained=False, num_classes=10, img_size=32, patch_size=8,
      embed_dim=32, depth=2, num_heads=2).state_dict(), vit_p8)
  other, cut = str(tmp_path / 'other.safetensors'), str(tmp_path / 'cut.safetensors')
  safetensors_numpy.save_file({'encoder.weight': np.zeros((2, 2), np.float32)}, other)
  with open(source, 'rb') as f, open(cut, 'wb') as g:  # An interrupted download.
    g.write(f.read()[:5000])
  before = snapshot(str(tmp_path))
  cases = [
      ([f'--input={source}', '--model=timm:mobilenetv3_small_050', f'--output={tmp_path}/m.npz'],
       f'--output={tmp_path}/m.npz: mobilenet_v3 weights can be written as .safetensors (timm).'),
      ([f'--input={other}', f'--output={tmp_path}/x.npz'],
       f'{other} holds no weights layout big_distill reads'),
      ([f'--input={source}', '--model=timm:convnext_tiny', f'--output={tmp_path}/x.npz'],
       "--model: unknown timm model 'convnext_tiny'"),
      ([f'--input={source}', '--model=timm:vit_tiny_patch16_224', f'--output={tmp_path}/x.npz'],
       f'{source} holds a mobilenet_v3 model (timm layout), which a vit model cannot load'),
      ([f'--input={cut}', f'--output={tmp_path}/x.npz'],
       f'Cannot read {cut} as a safetensors file'),
      ([f'--input={tmp_path}/gone.safetensors', '--model=bit', f'--output={tmp_path}/x.npz'],
       f'--input={tmp_path}/gone.safetensors does not exist'),
      ([f'--input={vit_p8}', '--model=vit:patch_size=16,width=32,depth=2,num_heads=2',
        f'--output={tmp_path}/x.npz'], 'patch_embed.proj.weight: patch size 8, model expects 16'),
  ]
  for args, message in cases:
    proc = _convert(*args, check=False)
    lines = error_lines(proc.stderr)
    assert proc.returncode == errors.BAD_INPUT and len(lines) == 1, (args, proc.stderr[-2000:])
    assert message in lines[0], lines[0]
  assert snapshot(str(tmp_path)) == before
