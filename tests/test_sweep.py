"""The vmapped Adam/Shampoo sweep trains each setting exactly as the training loop would."""

import dataclasses

import jax
import numpy as np

from benchmarks import shampoo_vs_adam_sweep as sweep_lib
from big_distill import build, parallel
from tests.helpers import get_config


def _config():
  config = get_config('distill.py', 'teacher=unused,teacher_model=bit')
  config.input.update(resolution=28, batch_size=8, train_split='train[:48]',
                      eval_split='test[:16]', eval_batch_size=16, shuffle_buffer=48)
  config.student.model = 'bit:depth=14,width=0.125'
  config.update(total_epochs=None, total_steps=6)
  config.schedule.warmup_steps = 2
  return config


def _distance(a, b) -> float:
  """`optax.tree.norm(optax.tree.sub(a, b))`, in NumPy."""
  return np.sqrt(sum(np.sum(np.square(x - y, dtype=np.float64))
                     for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))))


def _with_teacher(run: build.Run, teacher_params) -> build.Run:
  return dataclasses.replace(run, teacher_params=teacher_params)


def test_sweep_steps_equal_the_training_steps_of_each_setting(fmnist_builder,
                                                             optimized_compilation):
  """Three Shampoo settings (own lr, warm-up and length; two share a seed, so their batches and
  teacher pass) trained together for 6 steps, against each setting's own run (`build.create_run`
  of its config, the loop's train step on the loop's batches); a setting whose schedule has ended
  no longer changes. SGD grafting and a strong relative damping (`epsilon=1e-2`): Adam's
  per-element normalisation turns rounding-level gradient entries (BiT's standardised kernels have
  some) into full-size steps, and weakly damped inverse roots amplify rounding (with the default
  1e-6 the vmapped and the plain program end 16% of the change apart on real images), so two
  correct programs that round differently would not agree. The whole change is held to 1% (0.5%
  seen at lr 0.1) and each leaf's to 25% (a leaf whose gradient nearly cancels, a GroupNorm bias,
  differs most); a wrong batch, teacher target or schedule is off by far more. Both programs are
  compiled as users' are (`optimized_compilation`): unoptimised (the tests' default), the 1% is
  how they round (1.03% seen at lr 0.1)."""
  del fmnist_builder, optimized_compilation  # Prepared; set.
  config = _config()
  optimizer = dict(name='shampoo', block_size=16, preconditioning_compute_steps=2,
                   start_preconditioning_step=1, graft_type='sgd', beta2=0.99, epsilon=1e-2)
  run = build.create_run(config, teacher_params='random')
  rng = np.random.default_rng(0)  # NumPy's noise: nothing to compile.
  teacher_params = jax.device_put(jax.tree_util.tree_map(  # A non-zero head: the student has
      lambda x: (np.asarray(x) + 0.1 * rng.standard_normal(x.shape)).astype(x.dtype),  # something
      run.teacher_params), run.teacher_sharding)  # to learn.
  hps = [dict(lr=0.01, warmup=2, total=6, seed=0), dict(lr=0.1, warmup=1, total=4, seed=3),
         dict(lr=0.03, warmup=0, total=5, seed=0)]  # Shares seed 0's batches and teacher pass.
  sweep = sweep_lib.Sweep(_with_teacher(run, teacher_params), optimizer, hps)
  states = sweep.init()
  batches = sweep._batches()  # pylint: disable=protected-access
  for _ in range(6):
    states, _ = sweep.step(states, next(batches), teacher_params)
  assert int(states.step) == 6
  assert sweep.step._cache_size() == 1  # pylint: disable=protected-access  # Compiled once.
  swept = jax.device_get(states.params)  # Compared on the host: no op-by-op programs to compile.
  for k, hp in enumerate(hps):
    alone = build.create_run(sweep_lib.setting_config(config, optimizer, hp),
                             data=run.data, teacher_params='random')
    alone = _with_teacher(alone, jax.device_put(teacher_params, alone.teacher_sharding))
    state = alone.init_state(jax.random.PRNGKey(hp['seed']))
    start = jax.device_get(state.params)  # The step donates the state.
    batches = alone.train_batches()
    for _ in range(hp['total']):
      state, _ = alone.train_step(state, alone.teacher_params,
                                  parallel.to_global(next(batches), alone.mesh),
                                  jax.random.PRNGKey(hp['seed']))
    got = jax.tree_util.tree_map(lambda x, k=k: x[k], swept)
    params = jax.device_get(state.params)
    assert _distance(got, params) < 1e-2 * _distance(params, start), k
    # Leaves whose whole update rounds away in float32 (SGD grafting's momentum is a plain EMA,
    # so its first steps are small): the sweep must leave them as they are too.
    still = 0
    for (path, g), w, s0 in zip(jax.tree_util.tree_leaves_with_path(got),
                                jax.tree_util.tree_leaves(params),
                                jax.tree_util.tree_leaves(start)):
      moved = np.linalg.norm(w - s0)
      still += moved == 0
      assert np.linalg.norm(g - w) < 0.25 * moved + 1e-6 * np.sqrt(w.size), (k, path)
    assert still <= 2, (k, still)

  # Evaluation: every setting's accuracy as the training loop's eval computes it alone.
  accuracy, teacher_accuracy = sweep.evaluate(states.variables)
  variables = jax.device_get(states.variables)
  for k in range(len(hps)):
    evals = _with_teacher(run, teacher_params).evaluate(
        jax.tree_util.tree_map(lambda x, k=k: x[k], variables))
    # Equal up to an example whose top logits the vmapped student rounds into another order.
    assert abs(accuracy[k] - evals['eval/student_accuracy']) <= 1 / 16 + 1e-6
    assert teacher_accuracy == evals['eval/teacher_accuracy']


def test_a_setting_config_is_the_run_alone():
  config = _config()
  hp = dict(lr=0.03, warmup=7, total=90, seed=4)
  config.lock()  # As the benchmark's config flag gives it.
  got = sweep_lib.setting_config(config, {'name': 'adam'}, hp)
  assert (got.lr, got.seed, got.total_steps, got.total_epochs) == (0.03, 4, 90, None)
  assert got.schedule.warmup_steps == 7 and got.optimizer.name == 'adam'
  assert config.lr != 0.03 and config.schedule.warmup_steps == 2  # Not changed.
