"""The vmapped Adam/Shampoo sweep trains each setting exactly as the training loop's step would."""

import functools
import gzip
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_distill import steps
from big_distill import teachers as teachers_lib
from big_distill.models import from_config
from big_distill.optim import make_optimizer, make_schedule
from conftest import ROOT, get_config

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import shampoo_vs_adam_sweep as sweep_lib  # pylint: disable=g-import-not-at-top

FMNIST_IDX = '/usr/share/datasets/fashion-mnist'


def _config(**overrides):
  config = get_config('fashion_mnist_funmatch.py', 'teacher=unused')
  config.input.resolution = 28
  config.input.batch_size = 8
  config.teachers[0].update(depth=14, width=0.25)
  config.student.update(depth=14, width=0.125)
  config.update(overrides)
  return config


@pytest.mark.parametrize('warmup,total', [(0, 50), (10, 50), (49, 50)])
def test_warmup_cosine_matches_make_schedule_and_stops_at_the_end(warmup, total):
  config = _config(lr=0.03)
  config.schedule = dict(name='cosine', warmup_steps=warmup)
  reference = make_schedule(config, total)
  for step in range(0, total + 20, 3):
    got = sweep_lib.warmup_cosine(jnp.int32(step), jnp.float32(0.03), jnp.float32(warmup),
                                  jnp.float32(total))
    want = reference(step) if step < total else 0.0
    assert float(got) == pytest.approx(float(want), rel=1e-5, abs=1e-9), step


def test_augment_takes_a_padded_crop_and_may_flip_it():
  config = _config()
  images = jax.random.randint(jax.random.PRNGKey(0), (64, 28, 28, 1), 0, 256).astype(jnp.uint8)
  out = np.asarray(sweep_lib.augment(images, jax.random.PRNGKey(1), config.input))
  assert out.shape == (64, 28, 28, 1)
  padded = np.pad(np.asarray(images, np.float32) / 127.5 - 1, ((0, 0), (2, 2), (2, 2), (0, 0)),
                  constant_values=-1)
  seen = set()
  for k in range(64):
    matches = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
               if np.allclose(out[k], (lambda c: c[:, ::-1] if flip else c)(
                   padded[k, dy:dy + 28, dx:dx + 28]), atol=1e-6)]
    assert matches, k
    seen.update(matches)
  assert len({m[:2] for m in seen}) > 10 and {m[2] for m in seen} == {False, True}
  config.input.resolution = 56
  assert sweep_lib.augment(images, jax.random.PRNGKey(1), config.input).shape == (64, 56, 56, 1)


def test_load_idx_reads_fashion_mnist_and_rejects_other_files(tmp_path):
  images, labels = sweep_lib.load_idx(FMNIST_IDX, 'test')
  assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [1000] * 10
  with pytest.raises(ValueError, match='must hold the Fashion-MNIST idx files'):
    sweep_lib.load_idx(str(tmp_path), 'train')
  for name in ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'):
    with gzip.open(tmp_path / name, 'wb') as f:
      f.write(b'\x00\x00\x08\x01' + bytes(100))
  with pytest.raises(ValueError, match='is not an idx images file'):
    sweep_lib.load_idx(str(tmp_path), 'test')


def test_sweep_steps_equal_the_training_steps_of_each_setting():
  """Three Shampoo settings (own lr, warm-up and length; two share a seed, so its teacher pass) in
  one vmapped epoch against the training loop's step with `make_optimizer`'s schedule, one setting
  at a time; a setting whose schedule has ended no longer changes. SGD grafting: Adam's
  per-element normalisation turns rounding-level gradient entries (BiT's standardised kernels have
  some) into full-size steps, so two correct programs that round differently do not agree entry
  by entry. Even so, a leaf whose gradient nearly cancels (a GroupNorm bias) or that Shampoo's
  inverse roots amplify can differ by several percent of its change, so the whole change is held
  to 1% and each leaf's to 25% (a wrong batch, teacher target or schedule is off by far more)."""
  config = _config()
  optimizer = dict(name='shampoo', block_size=16, preconditioning_compute_steps=2,
                   start_preconditioning_step=1, graft_type='sgd', beta2=0.99)
  rng = np.random.default_rng(0)
  data = jax.device_put({'train_images': rng.integers(0, 256, (48, 28, 28, 1), np.uint8),
                         'train_labels': rng.integers(0, 10, 48).astype(np.int32)})
  teachers = teachers_lib.build(config.teachers, 10)
  teacher_params = teachers_lib.init_params(teachers, (28, 28, 1), jax.random.PRNGKey(9))
  teacher_params = jax.tree_util.tree_map(  # A non-zero head: the student has something to learn.
      lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape), teacher_params)
  hps = [dict(lr=0.01, warmup=2, total=6, seed=0), dict(lr=0.1, warmup=1, total=4, seed=3),
         dict(lr=0.03, warmup=0, total=5, seed=0)]  # Shares seed 0's batches and teacher pass.
  sweep = sweep_lib.Sweep(config, optimizer, data, teachers, teacher_params, hps)
  assert sweep.steps_per_epoch == 6
  states, _ = sweep.epoch(sweep.init(), jnp.int32(0), data, teacher_params)
  assert int(states.step) == 6
  keys, perms = sweep._order(jnp.int32(0), 48)
  student = from_config(config.student, 10, config.dtype)
  for k, hp in enumerate(hps):
    cfg = config.copy_and_resolve_references()
    cfg.optimizer, cfg.lr = optimizer, hp['lr']
    cfg.schedule = dict(name='cosine', warmup_steps=hp['warmup'])
    tx, schedule = make_optimizer(cfg, hp['total'])
    state = steps.init_state(student, tx, jax.random.PRNGKey(hp['seed']), (28, 28, 1))
    step = jax.jit(functools.partial(
        steps.distill_step, student=student, teachers=teachers, tx=tx, schedule=schedule,
        variant='funmatch', temperature=config.temperature, mixup_alpha=config.mixup_alpha))
    start = state.params
    for i in range(hp['total']):
      batch = {'image': sweep._images(keys, perms, jnp.int32(i), data)[sweep.of_seed[k]]}
      state, _ = step(state, teacher_params, batch, jax.random.PRNGKey(hp['seed']))
    got = jax.tree_util.tree_map(lambda x: x[k], states.params)
    assert optax.tree.norm(optax.tree.sub(got, state.params)) < 1e-2 * optax.tree.norm(
        optax.tree.sub(state.params, start)), k
    for (path, g), w, s0 in zip(jax.tree_util.tree_leaves_with_path(got),
                                jax.tree_util.tree_leaves(state.params),
                                jax.tree_util.tree_leaves(start)):
      moved = np.linalg.norm(w - s0)
      assert moved > 0 and np.linalg.norm(g - w) < 0.25 * moved + 1e-6 * np.sqrt(w.size), (k, path)
