r"""Adam vs Shampoo as in `shampoo_vs_adam.py`, with each optimizer's whole grid (learning rates x
schedule lengths x seeds) trained at once in one compiled program on an accelerator. JSON lines.

  python benchmarks/shampoo_vs_adam_sweep.py \
      --config=configs/fashion_mnist_funmatch.py:teacher=/tmp/big_distill_demo/teacher \
      --epochs=16 --shampoo_fractions=0.25,0.5 --seeds=0,1,2

Small students leave a GPU idle one run at a time; here the settings of one optimizer are a
`jax.vmap`ped axis of the distillation step (`steps.distill_step`, the training loop's own), on one
device, so a grid costs a fraction of its runs one by one (on an H100: 6.5 minutes for 36 runs that
take about 12 one at a time). The images live on the device (Fashion-MNIST's idx files,
`--data`; no TensorFlow needed) and are augmented there as the input pipeline does (`crop_flip`,
resize, flip), mixed up by the step, each seed with its own data order, augmentation, mixup and
initialisation. Settings of one seed see the same images, so the teachers run once per seed and
the step gets their logits (as it gets a fixed teacher's cached ones). A setting's learning rate
follows `make_schedule`'s linear warm-up and cosine decay over its own length (warm-up scaled by
its fraction) and is zero after it, so shorter settings stop changing while the longest runs on;
each is evaluated when its schedule ends.
Training time is steps x seconds per step of one run alone (timed after compilation over
`--timing_steps` steps at the config's batch size). Summary as in `shampoo_vs_adam.py`
(`comparison.summarize`); Adam's shorter `--adam_fractions` are context, not the target.
"""

import functools
import gzip
import json
import math
import os
import sys
import time
from typing import Any, Iterator

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from ml_collections import config_flags

from big_distill import configlib, steps
from big_distill import teachers as teachers_lib
from big_distill.models import from_config
from big_distill.optim import make_optimizer
import comparison

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/fashion_mnist_funmatch.py:teacher=/tmp/big_distill_demo/teacher',
    'The distillation config every setting starts from.')
_DATA = flags.DEFINE_string('data', '/usr/share/datasets/fashion-mnist',
                            'Directory of the Fashion-MNIST idx files (*-idx?-ubyte.gz).')
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


def load_idx(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Images [N, 28, 28, 1] uint8 and labels [N] int32 of Fashion-MNIST's `train` or `test`."""
  prefix = {'train': 'train', 'test': 't10k'}[split]
  arrays = []
  for kind, magic, header in (('images', 2051, 16), ('labels', 2049, 8)):
    path = os.path.join(directory, f'{prefix}-{kind}-idx{3 if kind == "images" else 1}-ubyte.gz')
    if not os.path.exists(path):
      raise ValueError(f'{path} does not exist; --data must hold the Fashion-MNIST idx files.')
    with gzip.open(path) as f:
      raw = f.read()
    if int.from_bytes(raw[:4], 'big') != magic:
      raise ValueError(f'{path} is not an idx {kind} file.')
    arrays.append(np.frombuffer(raw, np.uint8, offset=header))
  images, labels = arrays
  return images.reshape(len(labels), 28, 28, 1), labels.astype(np.int32)


def _to_float(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 127.5 - 1.0


def _resize(images: jax.Array, side: int) -> jax.Array:
  return jax.image.resize(images, (images.shape[0], side, side, images.shape[3]), 'bilinear')


def augment(images: jax.Array, key: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
  """`input_pipeline.augment` ('crop_flip') of a uint8 batch on the device: padded random crop,
  resize to `cfg.resolution`, random horizontal flip; float32 in [-1, 1]."""
  n, h, w, c = images.shape
  p = cfg.crop_padding
  x = jnp.pad(_to_float(images), ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-1.0)
  crop_key, flip_key = jax.random.split(key)
  corners = jax.random.randint(crop_key, (n, 2), 0, 2 * p + 1)
  x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(x, corners)
  x = _resize(x, cfg.resolution)
  if cfg.flip:
    x = jnp.where(jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1)), x[:, :, ::-1], x)
  return x


def warmup_cosine(step: jax.Array, lr: jax.Array, warmup: jax.Array,
                  total: jax.Array) -> jax.Array:
  """`make_schedule`'s 'cosine' with traced arguments (one per setting); 0 from `total` on."""
  step = step.astype(jnp.float32)
  decay = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
  value = jnp.where(step < warmup, lr * step / jnp.maximum(warmup, 1.0),
                    0.5 * lr * (1.0 + jnp.cos(jnp.pi * decay)))
  return jnp.where(step < total, value, 0.0)


def _tx(base: optax.GradientTransformation, hp: dict[str, jax.Array]
        ) -> optax.GradientTransformation:
  """`base` (its learning rate 1, constant) times the setting's schedule."""
  return optax.chain(base, optax.scale_by_schedule(functools.partial(warmup_cosine, **hp)))


def _state_axes(abstract: Any) -> Any:
  """vmap axes of a training state: counters (integer scalars) are shared by all settings, so
  that step-dependent branches (Shampoo's root refresh) stay branches; the rest is per setting."""
  return jax.tree_util.tree_map(
      lambda x: None if jnp.issubdtype(x.dtype, jnp.integer) and not x.shape else 0, abstract)


class Sweep:
  """One optimizer's settings (learning rate, length in steps, warm-up, seed), trained together."""

  def __init__(self, config: ml_collections.ConfigDict, optimizer: dict, data: dict[str, Any],
               teachers: teachers_lib.Teachers, teacher_params: Any, hps: list[dict]):
    base_config = config.copy_and_resolve_references()
    base_config.optimizer, base_config.lr = optimizer, 1.0
    base_config.schedule = dict(name='constant', warmup_steps=0)
    self.base, _ = make_optimizer(base_config, 1)
    self.config, self.optimizer, self.data, self.hps = config, optimizer, data, hps
    self.teachers, self.teacher_params = teachers, teacher_params
    self.student = from_config(config.student, 10, config.dtype)
    self.step_fn = functools.partial(
        steps.distill_step, student=self.student, teachers=teachers, variant=config.variant,
        temperature=config.temperature, mixup_alpha=config.mixup_alpha)
    self.eval_fn = functools.partial(steps.distill_eval_step, student=self.student,
                                     teachers=teachers)
    self.batch = config.input.batch_size
    self.steps_per_epoch = len(data['train_labels']) // self.batch
    self.hp = {k: jnp.array([float(h[k]) for h in hps]) for k in ('lr', 'warmup', 'total')}
    seeds = sorted({h['seed'] for h in hps})
    self.seed_rngs = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    self.of_seed = jnp.array([seeds.index(h['seed']) for h in hps])  # setting -> its seed's row
    self.rngs = self.seed_rngs[self.of_seed]
    abstract = jax.eval_shape(self._init, self.rngs[0], {k: v[0] for k, v in self.hp.items()})
    self.axes = _state_axes(abstract)
    self.init = jax.jit(self._init_all)  # Compiled: op by op, init took half a minute on a CPU.
    self.epoch = jax.jit(self._epoch, donate_argnums=0)
    self.evaluate = jax.jit(self._evaluate)

  def _init(self, rng: jax.Array, hp: dict[str, jax.Array]) -> steps.TrainState:
    shape = (self.config.input.resolution,) * 2 + (self.data['train_images'].shape[-1],)
    return steps.init_state(self.student, _tx(self.base, hp), rng, shape)

  def _init_all(self) -> steps.TrainState:
    """Every setting's initial state."""
    states = jax.vmap(self._init)(self.rngs, self.hp)
    return jax.tree_util.tree_map(lambda a, x: x if a == 0 else x[0], self.axes, states,
                                  is_leaf=lambda a: a is None)

  def _order(self, epoch: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Every seed's key and permutation of the `n` training images for `epoch`."""
    keys = jax.vmap(lambda r: jax.random.fold_in(r, epoch))(self.seed_rngs)
    return keys, jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, 1), n))(keys)

  def _images(self, keys: jax.Array, perms: jax.Array, i: jax.Array,
              data: dict[str, jax.Array]) -> jax.Array:
    """Every seed's augmented batch [seed, batch, side, side, channels] of step `i` of an epoch."""
    idx = jax.lax.dynamic_slice_in_dim(perms, i * self.batch, self.batch, axis=1)
    aug_keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, 2), i))(keys)
    return jax.vmap(lambda ix, k: augment(data['train_images'][ix], k, self.config.input))(
        idx, aug_keys)

  def _epoch(self, states: steps.TrainState, epoch: jax.Array, data: dict[str, jax.Array],
             teacher_params: Any) -> tuple[steps.TrainState, jax.Array]:
    """`steps_per_epoch` steps of every setting. Settings of one seed see the same (mixed)
    images, so the teachers run once per seed and the step gets their logits."""
    keys, perms = self._order(epoch, len(data['train_labels']))

    def teacher_logits(rng, images, step):  # As `steps.distill_step` derives its views.
      views, _ = steps.distill_inputs({'image': images}, jax.random.fold_in(rng, step),
                                      self.config.variant, self.config.mixup_alpha)
      return self.teachers.logits(teacher_params, views)

    def one(state, hp, rng, batch):
      return self.step_fn(state, teacher_params, batch, rng,
                          tx=_tx(self.base, hp), schedule=lambda s: warmup_cosine(s, **hp))

    def body(states, i):
      images = self._images(keys, perms, i, data)
      logits = jax.vmap(teacher_logits, in_axes=(0, 0, None))(self.seed_rngs, images, states.step)
      batch = {'image': images[self.of_seed], 'teacher_logits': logits[self.of_seed]}
      states, metrics = jax.vmap(one, in_axes=(self.axes, 0, 0, 0), out_axes=(self.axes, 0))(
          states, self.hp, self.rngs, batch)
      return states, metrics['loss']

    states, loss = jax.lax.scan(body, states, jnp.arange(self.steps_per_epoch))
    return states, loss.mean(0)

  def _evaluate(self, params: Any, data: dict[str, jax.Array],
                teacher_params: Any) -> tuple[jax.Array, jax.Array]:
    """Test accuracy of every setting's student, and of the teacher."""
    images, labels = data['test_images'], data['test_labels']
    batch = 1000

    def chunk(i):
      x = _resize(_to_float(jax.lax.dynamic_slice_in_dim(images, i * batch, batch)),
                  self.config.input.resolution)
      b = {'image': x, 'label': jax.lax.dynamic_slice_in_dim(labels, i * batch, batch),
           'mask': jnp.ones((batch,), jnp.int32)}
      return jax.vmap(lambda p: self.eval_fn(p, teacher_params, b))(params)

    sums = jax.lax.map(chunk, jnp.arange(len(labels) // batch))
    count = sums['count'].sum(0)
    return sums['student_accuracy'].sum(0) / count, sums['teacher_accuracy'].sum(0)[0] / count[0]

  def run(self) -> Iterator[tuple[int, float, float]]:
    """Trains every setting to the end of its schedule; yields (setting, student and teacher test
    accuracy) as each one ends."""
    states = self.init()
    totals = [h['total'] for h in self.hps]
    start = time.perf_counter()
    for epoch in range(math.ceil(max(totals) / self.steps_per_epoch)):
      states, loss = self.epoch(states, jnp.int32(epoch), self.data, self.teacher_params)
      done = (epoch + 1) * self.steps_per_epoch
      ending = [k for k, t in enumerate(totals) if done - self.steps_per_epoch < t <= done]
      print(f'epoch {epoch + 1}: {time.perf_counter() - start:.0f} s, mean loss '
            f'{float(np.mean(loss)):.4f}', file=sys.stderr, flush=True)
      if ending:
        student, teacher = self.evaluate(states.params, self.data, self.teacher_params)
        yield from ((k, float(student[k]), float(teacher)) for k in ending)

  def seconds_per_step(self, num_steps: int) -> float:
    """One setting alone (the first): seconds per step after compilation."""
    alone = Sweep(self.config, self.optimizer, self.data, self.teachers, self.teacher_params,
                  [dict(self.hps[0], total=10**9)])
    alone.steps_per_epoch = num_steps
    args = (self.data, self.teacher_params)
    states = jax.block_until_ready(alone.epoch(alone.init(), jnp.int32(0), *args)[0])
    start = time.perf_counter()
    jax.block_until_ready(alone.epoch(states, jnp.int32(1), *args))
    return (time.perf_counter() - start) / num_steps


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value.copy_and_resolve_references()
  if config.variant not in ('consistent', 'funmatch') or config.input.augment != 'crop_flip':
    raise app.UsageError('The sweep runs the consistent and funmatch variants with '
                         "input.augment='crop_flip'.")
  train_images, train_labels = load_idx(_DATA.value, 'train')
  test_images, test_labels = load_idx(_DATA.value, 'test')
  if _TRAIN_EXAMPLES.value:
    train_images, train_labels = (train_images[:_TRAIN_EXAMPLES.value],
                                  train_labels[:_TRAIN_EXAMPLES.value])
  data = jax.device_put({'train_images': train_images, 'train_labels': train_labels,
                         'test_images': test_images, 'test_labels': test_labels})
  shape = (config.input.resolution, config.input.resolution, 1)
  teachers, teacher_params = teachers_lib.load_teachers(config.teachers, 10, shape,
                                                        config.teacher_dtype)
  teacher_params = jax.device_put(teacher_params)

  seeds = [int(s) for s in _SEEDS.value]
  grids = {'shampoo': (json.loads(_SHAMPOO.value), _FRACTIONS.value, _SHAMPOO_LRS.value),
           'adam': ({'name': 'adam'}, _ADAM_FRACTIONS.value, _ADAM_LRS.value)}
  results = []
  for name, (optimizer, fractions, lrs) in grids.items():
    hps = []
    for fraction in map(float, fractions):
      epochs = _EPOCHS.value * fraction
      run_config = config.copy_and_resolve_references()
      run_config.total_steps, run_config.total_epochs = None, epochs
      total = configlib.total_steps(run_config, len(train_labels))
      warmup = int(config.schedule.warmup_steps * fraction)
      hps += [dict(fraction=fraction, epochs=epochs, lr=float(lr), seed=seed, total=total,
                   warmup=warmup) for lr in lrs for seed in seeds]
    sweep = Sweep(config, optimizer, data, teachers, teacher_params, hps)
    sec_per_step = sweep.seconds_per_step(_TIMING_STEPS.value)
    start = time.perf_counter()
    for k, accuracy, teacher_accuracy in sweep.run():
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
  app.run(main)
