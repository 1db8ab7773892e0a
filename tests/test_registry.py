"""Adding a model family takes its own module (a Flax class and its `family.Family` record) and
one registry entry: a toy family (a one-hidden-layer perceptron with a weight layout of its own)
then trains, teaches, distils, exports and converts through the same code as BiT, ViT and
MobileNetV3."""

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_distill import checkpoint, convert, export, models, train, workdir
from big_distill.models import family, loading, normalization
from tests.helpers import get_config


class Toy(nn.Module):
  """A perceptron: flattened image -> `hidden` ReLU units -> classes."""
  hidden: int = 16
  num_classes: int = 10
  dtype: Any = jnp.float32
  normalization: str = 'minus_one_to_one'

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = normalization.normalize(images, self.normalization).reshape(images.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name='hidden')(x))
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                    name='head')(x).astype(jnp.float32)

  def architecture(self) -> dict[str, Any]:
    return dict(hidden=self.hidden, normalization=self.normalization)

  def frozen(self, params):
    return self, params


_LEAVES = {'kernel': 'w', 'bias': 'b'}


def _read(arrays, model, abstract, *, skip_head, source):
  params = {layer: {leaf: arrays[f'toy/{layer}/{short}'] for leaf, short in _LEAVES.items()}
            for layer in ('hidden', 'head') if not (skip_head and layer == 'head')}
  if skip_head:
    params = family.with_zero_head(params, abstract['params']['head']['kernel'].shape)
  loading.check_fits({'params': params}, abstract, source)
  return {'params': params}


def _write(variables, model):
  del model
  return {f'toy/{layer}/{_LEAVES[leaf]}': np.asarray(value)
          for layer, leaves in variables['params'].items() for leaf, value in leaves.items()}


TOY = family.Family(
    name='toy', model=Toy, timm_arguments=lambda name: None, timm_names='none',
    layouts=(family.Layout(
        'toy', family.NPZ, matches=lambda shapes: 'toy/head/w' in shapes,
        head_classes=lambda shapes: shapes['toy/head/w'][-1],
        arguments=lambda shapes: dict(hidden=shapes['toy/hidden/w'][-1]), read=_read,
        write=_write),),
    demo_teacher=dict(hidden=32), demo_student=dict(hidden=8), tiny=dict(hidden=4))


@pytest.fixture
def toy_family(monkeypatch):
  monkeypatch.setitem(models.FAMILIES, 'toy', TOY)  # The one registry line.


def _short(config):
  config.input.resolution = 28
  config.total_steps = 4
  config.checkpoint_every_steps = config.eval_every_steps = config.log_every_steps = 4
  return config


def test_a_new_family_goes_through_every_command(toy_family, tmp_path):
  teacher, student = str(tmp_path / 'teacher'), str(tmp_path / 'student')
  train.train_and_evaluate(_short(get_config('teacher.py', 'runlocal=True,model=toy')), teacher)
  assert workdir.read_config(teacher)['student']['model'] == 'toy:hidden=32'  # Its demo size.

  # It teaches a student of its own family; the teacher's architecture is the run's.
  result = train.train_and_evaluate(_short(get_config(
      'distill.py', f'runlocal=True,teacher={teacher},student=toy')), student)
  assert workdir.read_config(student)['teachers'][0]['model'] == 'toy:hidden=32'
  assert 0 <= result['eval/agreement_top1'] <= 1 and result['eval/kl'] >= 0
  variables = checkpoint.read_variables(student, 'latest')[0]
  assert variables['params']['hidden']['kernel'].shape == (28 * 28, 8)

  # Export in its own layout; the file says its architecture and holds the checkpoint's weights.
  out = str(tmp_path / 'student.npz')
  assert export.export(student, out, step='latest').startswith('Wrote the student of the '
                                                               'latest checkpoint, step 4')
  spec, model, loaded, _ = loading.model_from_file(out, None, channels=1, resolution=28)
  assert (str(spec), model.num_classes) == ('toy:hidden=8', 10)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, variables)

  # Convert a run into it, and the file back into itself.
  teacher_npz, again = str(tmp_path / 'teacher.npz'), str(tmp_path / 'again.npz')
  assert convert.convert(teacher, teacher_npz).endswith(
      f'4 arrays of toy:hidden=32 to {teacher_npz} (toy layout).')
  convert.convert(teacher_npz, again, channels=1, resolution=28)
  with np.load(teacher_npz) as a, np.load(again) as b:
    assert sorted(a.files) == sorted(b.files) == [
        'toy/head/b', 'toy/head/w', 'toy/hidden/b', 'toy/hidden/w']
    for key in a.files:
      np.testing.assert_array_equal(a[key], b[key])
  assert not os.path.exists(tmp_path / 'teacher' / 'teacher_logits.npy')
