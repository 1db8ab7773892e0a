r"""Distillation-step throughput on 1, 2, 4 simulated CPU devices, and FLOPs per image. JSON lines.

  python benchmarks/scaling.py [--config=configs/fashion_mnist_funmatch.py] [--devices=1,2,4]
  python benchmarks/scaling.py --config=configs/imagenet_funmatch.py --measure=flops

`scaling`: each device count runs in its own process (XLA_FLAGS=
--xla_force_host_platform_device_count=N), data parallel (batch split, parameters replicated),
timing `--steps` chained distillation steps (after one compiling call) on random images with
randomly initialised models of the config, twice: with the global batch fixed at `--batch_size`
and with `--per_device_batch` images per device. One line per measurement, then a summary with
each count's images/s relative to 1 device (`speedup`) and per device (`efficiency`). Simulated
devices share the host's cores: this shows what splitting the step costs, not a speed-up.

`flops`: XLA's cost analysis of the compiled teachers' forward pass and student train step
(`jax.jit(f).lower(...).compile().cost_analysis()`), per image, from a compilation for
`--flops_batch` images (nothing is run, no parameters are allocated).
"""

import functools
import json
import os
import subprocess
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from ml_collections import config_flags

from big_distill import parallel, steps
from big_distill import teachers as teachers_lib
from big_distill.models import from_config
from big_distill.optim import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(ROOT, 'configs', 'fashion_mnist_funmatch.py'),
    'A big_distill config: models, dataset (classes, channels), resolution, batch size.')
_MEASURE = flags.DEFINE_list('measure', ['scaling', 'flops'], 'scaling and/or flops.')
_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4'], 'Simulated CPU device counts.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Fixed global batch (default: the config\'s).')
_PER_DEVICE = flags.DEFINE_integer('per_device_batch', 32, 'Fixed images per device.')
_RESOLUTION = flags.DEFINE_integer('resolution', None, 'Input side (default: the config\'s).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per measurement.')
_FLOPS_BATCH = flags.DEFINE_integer('flops_batch', 8, 'Batch of the FLOP-counted compilations.')
_WORKER = flags.DEFINE_bool('worker', False, 'Internal: time the step on this process\'s devices.')


def build(config: ml_collections.ConfigDict, resolution: int):
  """(student, teachers, image shape, train-step keyword arguments) of `config`."""
  info = tfds.builder(config.input.dataset, data_dir=config.input.data_dir).info
  num_classes = info.features['label'].num_classes
  student = from_config(config.student, num_classes, config.dtype)
  teachers = teachers_lib.build(config.teachers, num_classes, config.teacher_dtype)
  tx, schedule = make_optimizer(config, config.schedule.warmup_steps + 1000)
  image_shape = (resolution, resolution, info.features['image'].shape[-1])
  return student, teachers, image_shape, dict(tx=tx, schedule=schedule)


def init_teachers(teachers: teachers_lib.Teachers, image_shape: tuple[int, ...]) -> tuple:
  """The teachers' randomly initialised parameters (speed does not depend on the weights)."""
  return teachers_lib.init_params(teachers, image_shape, jax.random.PRNGKey(0))


def time_steps(config: ml_collections.ConfigDict, resolution: int) -> None:
  """Prints one line per batch mode: distill-step images/s on this process's devices."""
  student, teachers, image_shape, kw = build(config, resolution)
  mesh = parallel.make_mesh()
  replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  rng = jax.random.PRNGKey(0)
  state = jax.jit(functools.partial(steps.init_state, student, kw['tx'], image_shape=image_shape),
                  out_shardings=replicated)(rng)
  teachers, teacher_params = teachers_lib.freeze(  # As in training: standardised once.
      teachers, jax.device_get(init_teachers(teachers, image_shape)))
  teacher_params = jax.device_put(teacher_params, replicated)
  step = jax.jit(
      functools.partial(steps.distill_step, student=student, teachers=teachers, **kw,
                        variant=config.variant, temperature=config.temperature,
                        mixup_alpha=config.mixup_alpha),
      donate_argnums=0, in_shardings=(replicated, replicated, batch_sharding, replicated),
      out_shardings=(replicated, replicated))
  n = jax.device_count()
  for mode, batch_size in (('fixed_global_batch', _BATCH.value or config.input.batch_size),
                           ('fixed_per_device_batch', _PER_DEVICE.value * n)):
    parallel.check_batch_size(batch_size)
    images = np.random.default_rng(0).uniform(-1, 1, (batch_size, *image_shape))
    batch = {'image': jax.device_put(images.astype(np.float32), batch_sharding)}
    state, metrics = step(state, teacher_params, batch, rng)  # Compiles.
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = step(state, teacher_params, batch, rng)
    jax.block_until_ready(metrics)
    img_s = _STEPS.value * batch_size / (time.perf_counter() - start)
    print(json.dumps({'measure': 'scaling', 'devices': n, 'mode': mode,
                      'global_batch': batch_size, 'per_device_batch': batch_size // n,
                      'img_per_sec': round(img_s, 1),
                      'img_per_sec_per_device': round(img_s / n, 1)}), flush=True)


def scaling() -> None:
  """Runs `time_steps` in one process per device count; prints its lines and a summary."""
  records = []
  for n in map(int, _DEVICES.value):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}',
               JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--worker', *sys.argv[1:]],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
      sys.exit(f'{n} devices failed:\n{proc.stderr[-3000:]}')
    for line in proc.stdout.splitlines():
      if line.startswith('{'):
        print(line, flush=True)
        records.append(json.loads(line))
  summary = {'measure': 'scaling_summary'}
  for mode in ('fixed_global_batch', 'fixed_per_device_batch'):
    rows = {r['devices']: r['img_per_sec'] for r in records if r['mode'] == mode}
    base = rows[min(rows)] / min(rows)  # Images/s of one device.
    summary[mode] = {n: {'speedup': round(v / base, 2), 'efficiency': round(v / base / n, 2)}
                     for n, v in rows.items()}
  print(json.dumps(summary))


def flops(config: ml_collections.ConfigDict, resolution: int) -> None:
  """Prints the GFLOPs per image of the teachers' forward pass and the student's train step."""
  student, teachers, image_shape, kw = build(config, resolution)
  b = _FLOPS_BATCH.value
  rng = jax.random.PRNGKey(0)
  images = jax.ShapeDtypeStruct((b, *image_shape), jnp.float32)
  state = jax.eval_shape(functools.partial(steps.init_state, student, kw['tx'],
                                           image_shape=image_shape), rng)
  teacher_params = jax.eval_shape(functools.partial(init_teachers, teachers, image_shape))
  batch = {'image': images, 'label': jax.ShapeDtypeStruct((b,), jnp.int32)}

  def gflops(fn, *args) -> float:
    return jax.jit(fn).lower(*args).compile().cost_analysis()['flops'] / b / 1e9

  start = time.perf_counter()
  teacher = gflops(functools.partial(teachers.log_probs, temperature=config.temperature),
                   teacher_params, images)
  student_step = gflops(functools.partial(steps.supervised_step, model=student, **kw), state,
                        batch, rng)
  print(json.dumps({
      'measure': 'flops', 'config': config_flags.get_config_filename(flags.FLAGS['config']),
      'resolution': resolution, 'flops_batch': b,
      'teacher_params_m': round(_count(teacher_params) / 1e6, 2),
      'student_params_m': round(_count(state.params) / 1e6, 2),
      'teacher_forward_gflops_per_image': round(teacher, 3),
      'student_step_gflops_per_image': round(student_step, 3),
      'distill_gflops_per_image': round(teacher + student_step, 3),
      'compile_s': round(time.perf_counter() - start, 1)}))


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def main(argv):
  del argv
  config = _CONFIG.value
  resolution = _RESOLUTION.value or config.input.resolution
  if _WORKER.value:
    time_steps(config, resolution)
    return
  if 'scaling' in _MEASURE.value:
    scaling()
  if 'flops' in _MEASURE.value:
    flops(config, resolution)


if __name__ == '__main__':
  app.run(main)
