"""The optimizer factory: schedules, decoupled weight decay mask, clipping, choice by name."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_distill import configlib
from big_distill import optim
from big_distill.optim import decay_mask, make_optimizer, make_schedule


def _config(**kw):
  c = configlib.base_config()
  c.update(kw)
  return c


def test_warmup_then_cosine_and_linear():
  c = _config(lr=0.1, schedule=dict(name='cosine', warmup_steps=10))
  s = make_schedule(c, 110)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)],
                             [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-6)
  s = make_schedule(_config(lr=0.1, schedule=dict(name='linear', warmup_steps=0)), 100)
  np.testing.assert_allclose([s(0), s(50), s(100)], [0.1, 0.05, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match="Unknown config.schedule.name 'step'"):
    make_schedule(_config(schedule=dict(name='step', warmup_steps=0)), 10)
  # A warm-up as long as the run (a small dataset): a tenth of it.
  s = make_schedule(_config(lr=0.1, schedule=dict(name='cosine', warmup_steps=200)), 40)
  np.testing.assert_allclose([s(0), s(2), s(4), s(22), s(40)], [0.0, 0.05, 0.1, 0.05, 0.0],
                             atol=1e-6)


def test_the_cosine_schedule_is_big_visions():
  """big_vision's `create_learning_rate_schedule(decay_type='cosine')`: lr * min(1, t / w) *
  0.5 * (1 + cos(pi * p)), p = clip((t - w) / (T - w), 0, 1), computed here step by step."""
  lr, warmup, total = 0.03, 50, 400
  s = make_schedule(_config(lr=lr, schedule=dict(name='cosine', warmup_steps=warmup)), total)
  t = np.arange(total + 1)
  progress = np.clip((t - warmup) / (total - warmup), 0, 1)
  expected = lr * np.minimum(1, t / warmup) * 0.5 * (1 + np.cos(np.pi * progress))
  np.testing.assert_allclose([s(i) for i in t], expected, rtol=1e-5, atol=1e-8)
  no_warmup = make_schedule(_config(lr=lr, schedule=dict(name='cosine', warmup_steps=0)), total)
  np.testing.assert_allclose([no_warmup(i) for i in t[::40]],
                             lr * 0.5 * (1 + np.cos(np.pi * t[::40] / total)), rtol=1e-5)


def test_adam_with_decoupled_weight_decay_matches_hand_computation():
  params = {'conv': {'kernel': jnp.full((1, 1, 2, 2), 2.0)}, 'gn': {'scale': jnp.ones(2),
                                                                     'bias': jnp.ones(2)}}
  grads = jax.tree_util.tree_map(lambda p: 0.5 * jnp.ones_like(p), params)
  tx, _ = make_optimizer(_config(lr=0.1, wd=0.01, schedule=dict(name='constant',
                                                                   warmup_steps=0)), 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  # First Adam step: direction +1 (bias-corrected m / sqrt(v)); decay only on the kernel.
  np.testing.assert_allclose(updates['conv']['kernel'], -0.1 * (1.0 + 0.01 * 2.0), rtol=1e-5)
  np.testing.assert_allclose(updates['gn']['scale'], -0.1, rtol=1e-5)
  np.testing.assert_allclose(updates['gn']['bias'], -0.1, rtol=1e-5)
  assert decay_mask(params) == {'conv': {'kernel': True}, 'gn': {'scale': False, 'bias': False}}


def test_gradient_clipping_and_sgd():
  params = {'w': jnp.zeros((2, 2))}
  grads = {'w': jnp.full((2, 2), 10.0)}  # Global norm 20.
  c = _config(lr=1.0, grad_clip_norm=2.0, optimizer=dict(name='sgd', momentum=0.0),
              schedule=dict(name='constant', warmup_steps=0))
  tx, _ = make_optimizer(c, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(2.0, rel=1e-5)


def _tree(seed: int, scale: float = 1.0) -> dict:
  """Leaves of the shapes a model has: a kernel, a vector, a scalar; one in bfloat16."""
  rng = np.random.default_rng(seed)
  return {'conv': {'kernel': jnp.asarray(scale * rng.normal(size=(3, 3, 4, 8)), jnp.float32),
                   'bias': jnp.asarray(scale * rng.normal(size=8), jnp.bfloat16)},
          'head': {'kernel': jnp.asarray(scale * rng.normal(size=(8, 10)), jnp.float32),
                   'scale': jnp.asarray(scale * 2.0, jnp.float32)}}


def test_the_concatenated_norm_is_optax_tree_norm():
  tree = _tree(0)
  expected = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                         for x in jax.tree_util.tree_leaves(tree)))
  assert float(jax.jit(optim.concatenated_norm)(tree)) == pytest.approx(expected, rel=1e-6)
  # optax squares the bfloat16 leaf in bfloat16; the concatenation is float32 throughout.
  assert float(optax.tree.norm(tree)) == pytest.approx(expected, rel=1e-5)
  assert optim.global_norm(split=True) is optax.tree.norm
  assert optim.global_norm(split=False) is optim.concatenated_norm


@pytest.mark.parametrize('scale', [0.01, 10.0])  # Below the clipping norm, and above it.
def test_clipping_by_the_concatenated_norm_is_optaxs(scale):
  grads, ours, theirs = _tree(1, scale), optim.clip_by_global_norm(
      1.0, optim.concatenated_norm), optax.clip_by_global_norm(1.0)
  state = ours.init(grads)
  assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(theirs.init(grads))
  got, _ = jax.jit(ours.update)(grads, state)
  expected, _ = jax.jit(theirs.update)(grads, theirs.init(grads))
  for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
    assert g.dtype == e.dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(e, np.float32), rtol=1e-5)
  assert float(optax.tree.norm(got)) == pytest.approx(min(1.0, float(optax.tree.norm(grads))),
                                                      rel=1e-2)  # bfloat16's rounding.


def test_optimizers_by_name():
  params = {'w': jnp.ones((4, 3)), 'b': jnp.ones(3)}
  for opt in (dict(name='adam', mu_dtype='bfloat16'), dict(name='sgd', momentum=0.9),
              dict(name='shampoo', block_size=2, start_preconditioning_step=1)):
    tx, _ = make_optimizer(_config(optimizer=opt), 10)
    state = tx.init(params)
    for _ in range(3):
      updates, state = tx.update(params, state, params)
    assert all(np.isfinite(u).all() for u in jax.tree_util.tree_leaves(updates))
  adam_state = make_optimizer(_config(optimizer=dict(name='adam', mu_dtype='bfloat16')),
                              10)[0].init(params)
  assert adam_state[0].mu['w'].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="Unknown config.optimizer.name 'lamb'"):
    make_optimizer(_config(optimizer=dict(name='lamb')), 10)
  with pytest.raises(ValueError, match='Bad config.optimizer arguments'):
    make_optimizer(_config(optimizer=dict(name='adam', beta=0.5)), 10)
