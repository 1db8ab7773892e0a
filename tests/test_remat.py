"""`config.remat`: a student whose blocks are rematerialised has the plain student's parameters
and takes the plain training step's update."""

import jax
import ml_collections
import numpy as np
import pytest

from big_distill import build, configlib, steps


@pytest.mark.parametrize('model, blocks', [
    ('bit:depth=14,width=0.25', 4),  # Bottleneck units.
    ('vit:patch_size=8,width=32,depth=2,num_heads=2,mlp_dim=64', 2),  # Encoder blocks.
    ('mobilenet_v3:variant=small,width=0.25', 12)])  # timm's blocks.
def test_a_rematerialised_student_takes_the_plain_step(model, blocks):
  """Each block rematerialised; one SGD step at learning rate 1 (the update is minus the
  gradient), float32: the same parameter tree (names, shapes, initial values), the same gradients
  and batch statistics."""
  rng = jax.random.PRNGKey(0)
  images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
  batch = {'image': images, 'label': np.arange(8, dtype=np.int32)}
  before, after = [], []
  for remat in (False, True):
    config = configlib.base_config()
    config.update(mode='supervised', remat=remat, total_steps=10, lr=1.0)
    config.optimizer = ml_collections.ConfigDict({'name': 'sgd'})
    config.student.model = model
    config.input.update(resolution=32, batch_size=8)
    run = build.create_run(config, data=build.Data(10, 3, 8), teacher_params='none')
    assert run.student.remat == remat and str(run.student_spec) == model
    state = run.init_state(rng)
    forward = jax.make_jaxpr(lambda v: steps.apply_model(
        run.student, v['params'], state.model_state, images, train=True))(state.variables)
    assert sum(e.primitive.name == 'remat2' for e in forward.eqns) == (blocks if remat else 0)
    before.append(jax.device_get(state.variables))
    after.append(jax.device_get(run.train_step(state, (), batch, rng)[0].variables))
  plain, remat = before
  assert jax.tree.structure(plain) == jax.tree.structure(remat)
  jax.tree.map(np.testing.assert_array_equal, plain, remat)
  for updated in after:  # Parameters minus the gradient; new batch statistics.
    assert jax.tree.structure(updated) == jax.tree.structure(plain)
  jax.tree.map(lambda p, r: np.testing.assert_allclose(r, p, rtol=1e-5, atol=1e-6), *after)
  gradients = [jax.tree.map(np.subtract, b['params'], a['params']) for b, a in zip(before, after)]
  assert max(np.abs(g).max() for g in jax.tree.leaves(gradients[0])) > 1e-3
  jax.tree.map(lambda p, r: np.testing.assert_allclose(r, p, rtol=1e-5, atol=1e-6), *gradients)
