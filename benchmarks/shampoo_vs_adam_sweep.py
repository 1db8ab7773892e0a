r"""Adam vs Shampoo as in `shampoo_vs_adam.py`, with each optimizer's whole grid (learning rates x
schedule lengths x seeds) trained at once in one compiled program on an accelerator. JSON lines.

  python -m benchmarks.shampoo_vs_adam_sweep \
      --config=configs/distill.py:teacher=/tmp/big_distill_demo/teacher \
      --epochs=16 --shampoo_fractions=0.25,0.5 --seeds=0,1,2

Small students leave a GPU idle one run at a time; here the settings of one optimizer are a
`jax.vmap`ped axis of the training loop's own step (`steps.train_step` with the student, teachers
and keyword arguments that `build.create_run` makes of the config), on one device, so a grid costs
a fraction of its runs one by one. Each seed's batches come from the training loop's own input
pipeline (`Run.train_batches`: the batches a run of that seed sees), so the settings of one seed
see the same images, and the teachers run once per seed: the step gets their logits, as it gets a
fixed teacher's cached ones. A setting's learning rate is `make_schedule`'s warm-up and decay over
its own length (warm-up scaled by its fraction) and zero after it, so shorter settings stop
changing while the longest runs on; each is evaluated on the eval split when its schedule ends.
Training time is steps x seconds per step of one setting alone (timed after compilation over
`--timing_steps` steps on one batch). Summary as in `shampoo_vs_adam.py` (`comparison.summarize`);
Adam's shorter `--adam_fractions` are context, not the target.
"""

import copy
import functools
import json
import sys
import time
from typing import Any, Iterator

from absl import flags, logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from benchmarks import comparison
from big_distill import build, cli, configlib, errors, parallel, steps, variants
from big_distill.optim import make_optimizer, make_schedule

_TRAIN_EXAMPLES = flags.DEFINE_integer('train_examples', None,
                                       'Use the first this many training images (default: all).')
_EPOCHS = flags.DEFINE_float('epochs', 8.0, 'Adam\'s schedule length in epochs.')
_ADAM_FRACTIONS = flags.DEFINE_list('adam_fractions', ['1'],
                                    'Adam schedule lengths, as fractions of --epochs.')
_FRACTIONS = flags.DEFINE_list('shampoo_fractions', ['0.25', '0.5'],
                               'Shampoo schedule lengths, as fractions of Adam\'s.')
_ADAM_LRS = flags.DEFINE_list('adam_lrs', ['0.003', '0.01', '0.03'], 'Adam grid.')
_SHAMPOO_LRS = flags.DEFINE_list('shampoo_lrs', ['0.01', '0.03', '0.1'], 'Shampoo grid.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1'], 'config.seed of the runs of every setting.')
_SHAMPOO = flags.DEFINE_string(
    'shampoo', json.dumps(dict(name='shampoo', block_size=128, preconditioning_compute_steps=10,
                               start_preconditioning_step=10, graft_type='adam', beta2=0.99)),
    'config.optimizer of the Shampoo runs, as JSON.')
_TIMING_STEPS = flags.DEFINE_integer('timing_steps', 200, 'Steps of the one-run timing.')


def setting_config(config: ml_collections.ConfigDict, optimizer: dict,
                   hp: dict[str, Any]) -> ml_collections.ConfigDict:
  """The config of one setting run alone: its optimizer, seed, learning rate, warm-up, length."""
  out = copy.deepcopy(config)
  out.optimizer = optimizer
  out.update(seed=hp['seed'], lr=hp['lr'], total_steps=hp['total'], total_epochs=None)
  out.schedule.warmup_steps = hp['warmup']
  return out


def _state_axes(abstract: Any) -> Any:
  """vmap axes of a training state: counters (integer scalars) are shared by all settings, so
  that step-dependent branches (Shampoo's root refresh) stay branches; the rest is per setting."""
  return jax.tree_util.tree_map(
      lambda x: None if jnp.issubdtype(x.dtype, jnp.integer) and not x.shape else 0, abstract)


class Sweep:
  """One optimizer's settings (learning rate, length in steps, warm-up, seed) of `run`'s config,
  trained together."""

  def __init__(self, run: build.Run, optimizer: dict, hps: list[dict]):
    if not run.distill or run.teacher_view != variants.SAME:
      same = [v.name for v in variants.VARIANTS.values() if v.teacher_view == variants.SAME]
      raise errors.BadInput('The sweep runs the variants whose teacher sees the student\'s '
                            f'image: {", ".join(same)}.')
    self.run, self.optimizer, self.hps = run, optimizer, hps
    # Every setting: the optimizer with learning rate 1, times its own schedule.
    unit = setting_config(run.config, optimizer, dict(hps[0], lr=1.0, warmup=0, total=1))
    unit.schedule.name = 'constant'
    self.base, _ = make_optimizer(unit, 1)
    self.schedules = [make_schedule(setting_config(run.config, optimizer, hp), hp['total'])
                      for hp in hps]
    self.totals = jnp.array([hp['total'] for hp in hps])
    self.seeds = sorted({hp['seed'] for hp in hps})
    self.seed_rngs = jnp.stack([jax.random.PRNGKey(s) for s in self.seeds])
    self.of_seed = jnp.array([self.seeds.index(hp['seed']) for hp in hps])  # Setting -> seed row.
    self.rngs = self.seed_rngs[self.of_seed]
    self.settings = jnp.arange(len(hps))
    self.axes = _state_axes(jax.eval_shape(self._init, self.rngs[0], self.settings[0]))
    # Compiled: op by op, init took half a minute on a CPU; with the run's `init_options`.
    # Replicated over the run's mesh, as the step returns the states: states of another sharding
    # would compile the step again.
    self.init = jax.jit(self._init_all, out_shardings=parallel.replicated(run.mesh),
                        compiler_options=build.init_options(run.mesh))
    self.step = jax.jit(self._step, donate_argnums=0)
    self.eval_sums = jax.jit(self._eval_sums)

  def _schedule(self, k: jax.Array, step: jax.Array) -> jax.Array:
    """Setting `k`'s learning rate at `step`: its `make_schedule`, then 0 from its end on."""
    value = jax.lax.switch(k, self.schedules, step)
    return jnp.where(step < self.totals[k], value, 0.0)

  def _tx(self, k: jax.Array) -> optax.GradientTransformation:
    return optax.chain(self.base, optax.scale_by_schedule(functools.partial(self._schedule, k)))

  def _init(self, rng: jax.Array, k: jax.Array) -> steps.TrainState:
    return steps.init_state(self.run.student, self._tx(k), rng, self.run.image_shape)

  def _init_all(self) -> steps.TrainState:
    """Every setting's initial state."""
    states = jax.vmap(self._init)(self.rngs, self.settings)
    return jax.tree_util.tree_map(lambda a, x: x if a == 0 else x[0], self.axes, states,
                                  is_leaf=lambda a: a is None)

  def _step(self, states: steps.TrainState, images: jax.Array,
            teacher_params: Any) -> tuple[steps.TrainState, jax.Array]:
    """One step of every setting; `images` is [seed, batch, ...], each seed's batch."""
    kw = self.run.step_kwargs

    def teacher_logits(rng, seed_images):  # The teachers' view, as the step derives it.
      views, _ = steps.views({'image': seed_images}, jax.random.fold_in(rng, states.step),
                             kw['variant'], kw['mixup_alpha'])
      return self.run.teachers.logits(teacher_params, views)

    logits = jax.vmap(teacher_logits)(self.seed_rngs, images)
    batch = {'image': images[self.of_seed], 'teacher_logits': logits[self.of_seed]}

    def one(state, k, rng, setting_batch):
      step_kw = dict(kw, tx=self._tx(k), schedule=functools.partial(self._schedule, k))
      return steps.train_step(state, teacher_params, setting_batch, rng, **step_kw)

    states, metrics = jax.vmap(one, in_axes=(self.axes, 0, 0, 0), out_axes=(self.axes, 0))(
        states, self.settings, self.rngs, batch)
    return states, metrics['loss']

  def _eval_sums(self, variables: Any, batch: dict[str, jax.Array],
                 teacher_params: Any) -> dict[str, jax.Array]:
    return jax.vmap(lambda v: steps.eval_step(v, teacher_params, batch,
                                              student=self.run.student,
                                              teachers=self.run.teachers))(variables)

  def evaluate(self, variables: Any) -> tuple[np.ndarray, float]:
    """Every setting's student test accuracy (`variables`: the settings' stacked), and the
    teacher's."""
    totals = None
    for batch in self.run.eval_batches().as_numpy_iterator():
      sums = self.eval_sums(variables, batch, self.run.teacher_params)
      totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return (totals['student_accuracy'] / totals['count'],
            float(totals['teacher_accuracy'][0] / totals['count'][0]))

  def _batches(self) -> Iterator[jax.Array]:
    """[seed, batch, ...] images: each seed's training batches, as its run alone reads them."""
    streams = [self.run.train_batches(seed=s) for s in self.seeds]
    while True:
      yield jax.device_put(np.stack([next(s)['image'] for s in streams]))

  def train(self) -> Iterator[tuple[int, float, float]]:
    """Trains every setting to the end of its schedule; yields (setting, student and teacher test
    accuracy) as each one ends."""
    states = self.init()
    totals = [hp['total'] for hp in self.hps]
    batches = self._batches()
    start = time.perf_counter()
    for step in range(1, max(totals) + 1):
      states, loss = self.step(states, next(batches), self.run.teacher_params)
      if step % 100 == 0:
        print(f'step {step}: {time.perf_counter() - start:.0f} s, mean loss '
              f'{float(np.mean(loss)):.4f}', file=sys.stderr, flush=True)
      ending = [k for k, t in enumerate(totals) if t == step]
      if ending:
        student, teacher = self.evaluate(states.variables)
        yield from ((k, float(student[k]), teacher) for k in ending)

  def seconds_per_step(self, num_steps: int) -> float:
    """The first setting alone: seconds per step after compilation, on one batch."""
    alone = Sweep(self.run, self.optimizer, [dict(self.hps[0], total=10**9)])
    images = next(alone._batches())  # pylint: disable=protected-access
    states, _ = alone.step(alone.init(), images, self.run.teacher_params)
    jax.block_until_ready(states)
    start = time.perf_counter()
    for _ in range(num_steps):
      states, loss = alone.step(states, images, self.run.teacher_params)
    jax.block_until_ready(loss)
    return (time.perf_counter() - start) / num_steps


def grid(config: ml_collections.ConfigDict, num_train: int, fractions: list[str],
         lrs: list[str], seeds: list[int]) -> list[dict]:
  """The settings: each schedule length (a fraction of `--epochs`) x learning rate x seed."""
  hps = []
  for fraction in map(float, fractions):
    epochs = _EPOCHS.value * fraction
    length = copy.deepcopy(config)
    length.update(total_steps=None, total_epochs=epochs)
    total = configlib.total_steps(length, num_train)
    warmup = int(config.schedule.warmup_steps * fraction)
    hps += [dict(fraction=fraction, epochs=epochs, lr=float(lr), seed=seed, total=total,
                 warmup=warmup) for lr in lrs for seed in seeds]
  return hps


def main(argv, config):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = config.copy_and_resolve_references()
  if _TRAIN_EXAMPLES.value:
    config.input.train_split = f'{config.input.train_split.split("[")[0]}[:{_TRAIN_EXAMPLES.value}]'
  run = build.create_run(config)
  seeds = [int(s) for s in _SEEDS.value]
  grids = {'shampoo': (json.loads(_SHAMPOO.value), _FRACTIONS.value, _SHAMPOO_LRS.value),
           'adam': ({'name': 'adam'}, _ADAM_FRACTIONS.value, _ADAM_LRS.value)}
  results = []
  for name, (optimizer, fractions, lrs) in grids.items():
    hps = grid(config, run.data.num_train, fractions, lrs, seeds)
    sweep = Sweep(run, optimizer, hps)
    sec_per_step = sweep.seconds_per_step(_TIMING_STEPS.value)
    start = time.perf_counter()
    for k, accuracy, teacher_accuracy in sweep.train():
      hp = hps[k]
      result = {'optimizer': name, 'lr': hp['lr'], 'seed': hp['seed'], 'epochs': hp['epochs'],
                'fraction': hp['fraction'], 'steps': hp['total'], 'final_accuracy': accuracy,
                'teacher_accuracy': teacher_accuracy, 'sec_per_step': sec_per_step,
                'train_seconds': hp['total'] * sec_per_step}
      print(json.dumps(result), flush=True)
      results.append(result)
    print(json.dumps({'measure': 'sweep', 'optimizer': name, 'settings': len(hps),
                      'seconds': time.perf_counter() - start,
                      'device': jax.devices()[0].device_kind}), flush=True)
  print(json.dumps(comparison.summarize(results, len(seeds))))


if __name__ == '__main__':
  cli.run(main, config='configs/distill.py:teacher=/tmp/big_distill_demo/teacher')
