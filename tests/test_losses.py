"""Losses, metrics and mixup against independent NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_distill import losses, steps
from big_distill.teachers import Teachers


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize('temperature', [1.0, 2.0, 5.0])
def test_kl_matches_numpy(temperature):
  rng = np.random.default_rng(0)
  t_logits, s_logits = rng.normal(size=(2, 8, 10)) * 3
  p = np.exp(np_log_softmax(t_logits / temperature))
  q = np.exp(np_log_softmax(s_logits / temperature))
  expected = temperature**2 * np.sum(p * np.log(p / q), axis=-1)
  teacher_logp = jax.nn.log_softmax(jnp.asarray(t_logits / temperature, jnp.float32))
  got = losses.kl_divergence(teacher_logp, jnp.asarray(s_logits, jnp.float32), temperature)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
  same = losses.kl_divergence(teacher_logp, jnp.asarray(t_logits, jnp.float32), temperature)
  np.testing.assert_allclose(same, 0.0, atol=1e-5)


def test_softmax_xent_matches_numpy():
  rng = np.random.default_rng(1)
  logits, labels = rng.normal(size=(6, 5)), rng.integers(0, 5, size=6)
  expected = -np_log_softmax(logits)[np.arange(6), labels]
  np.testing.assert_allclose(losses.softmax_xent(jnp.asarray(logits), jnp.asarray(labels)),
                             expected, rtol=1e-5)


def test_agreement_top1_and_top5():
  teacher = jnp.array([[0., 5, 1, 0, 0, 0, 0], [9., 0, 0, 0, 0, 0, 0]])
  # Student ranks: row 0 puts class 1 second; row 1 puts class 0 last.
  student = jnp.array([[0., 6, 7, 0, 0, 0, 0], [-9., 1, 2, 3, 4, 5, 6]])
  np.testing.assert_array_equal(losses.agreement(teacher, student, 1), [0., 0.])
  np.testing.assert_array_equal(losses.agreement(teacher, student, 2), [1., 0.])
  np.testing.assert_array_equal(losses.agreement(teacher, student, 5), [1., 0.])


def _mix_ratio(mixed, images):
  """Solves mixed = r * x + (1 - r) * neighbour for r, per example."""
  x, neighbour = np.asarray(images), np.roll(np.asarray(images), 1, axis=0)
  return np.sum((mixed - neighbour) * (x - neighbour), axis=(1, 2, 3)) / np.sum(
      (x - neighbour)**2, axis=(1, 2, 3))


def test_mixup_is_one_convex_combination_per_batch():
  images = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 4, 1))
  mixed = np.asarray(steps.mixup(images, steps.mixup_ratio(jax.random.PRNGKey(3), 1.0)))
  r = _mix_ratio(mixed, images)
  assert 0.0 <= r[0] <= 1.0
  np.testing.assert_allclose(r, r[0], atol=1e-5)
  neighbour = np.roll(np.asarray(images), 1, axis=0)
  np.testing.assert_allclose(mixed, r[0] * np.asarray(images) + (1 - r[0]) * neighbour, atol=1e-5)
  ratios = {round(float(_mix_ratio(np.asarray(steps.mixup(
      images, steps.mixup_ratio(jax.random.PRNGKey(s), 1.0))), images)[0]), 4) for s in range(4)}
  assert len(ratios) == 4  # A fresh ratio for every batch key.


class _Linear:
  """A stand-in flax-like model: logits = images @ w."""

  def apply(self, variables, images):
    return images.reshape(images.shape[0], -1) @ variables['params']


def test_ensemble_averages_probabilities():
  rng = np.random.default_rng(2)
  w1, w2 = rng.normal(size=(2, 3, 4)).astype(np.float32)
  images = rng.normal(size=(5, 1, 1, 3)).astype(np.float32)
  ensemble = Teachers((_Linear(), _Linear()), (None, None))
  got = ensemble.log_probs(({'params': w1}, {'params': w2}), jnp.asarray(images), 2.0)
  flat = images.reshape(5, 3)
  probs = 0.5 * (np.exp(np_log_softmax(flat @ w1 / 2)) + np.exp(np_log_softmax(flat @ w2 / 2)))
  np.testing.assert_allclose(np.exp(got), probs, rtol=1e-5)
