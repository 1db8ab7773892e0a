r"""Distillation-step throughput on 1, 2, 4 simulated CPU devices, and FLOPs per image. JSON lines.

  python -m benchmarks.scaling [--config=configs/distill.py:teacher_model=bit] [--devices=1,2,4]
  python -m benchmarks.scaling --config=configs/imagenet_funmatch.py --measure=flops

`scaling`: each device count runs in its own process (XLA_FLAGS=
--xla_force_host_platform_device_count=N), data parallel (batch split, parameters replicated),
timing `--steps` chained distillation steps (after one compiling call) on random images with
randomly initialised models of the config, built as training builds them (`build.create_run`),
twice: with the global batch fixed at `--batch_size`
and with `--per_device_batch` images per device. One line per measurement, then a summary with
each count's images/s relative to 1 device (`speedup`) and per device (`efficiency`). Simulated
devices share the host's cores: this shows what splitting the step costs, not a speed-up.

`flops`: XLA's cost analysis of the compiled teachers' forward pass and student train step
(`jax.jit(f).lower(...).compile().cost_analysis()`), per image, from a compilation for
`--flops_batch` images (nothing is run, no parameters are allocated, the dataset is not read).
"""

import copy
import functools
import json
import os
import subprocess
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from big_distill import build, cli, errors, parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MEASURE = flags.DEFINE_list('measure', ['scaling', 'flops'], 'scaling and/or flops.')
_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4'], 'Simulated CPU device counts.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Fixed global batch (default: the config\'s).')
_PER_DEVICE = flags.DEFINE_integer('per_device_batch', 32, 'Fixed images per device.')
_RESOLUTION = flags.DEFINE_integer('resolution', None, 'Input side (default: the config\'s).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per measurement.')
_FLOPS_BATCH = flags.DEFINE_integer('flops_batch', 8, 'Batch of the FLOP-counted compilations.')
_WORKER = flags.DEFINE_bool('worker', False, 'Internal: time the step on this process\'s devices.')


def create_run(config: ml_collections.ConfigDict, resolution: int, *, mode: str = 'distill',
               teacher_params: str = 'random') -> build.Run:
  """The config's run at `resolution` on random images (the dataset's classes and channels)."""
  config = copy.deepcopy(config)
  config.input.resolution = resolution
  config.update(mode=mode, total_steps=config.schedule.warmup_steps + 1000)
  return build.create_run(config, data=build.dataset_shape(config),
                          teacher_params=teacher_params)


def time_steps(config: ml_collections.ConfigDict, resolution: int) -> None:
  """Prints one line per batch mode: distill-step images/s on this process's devices."""
  run = create_run(config, resolution)
  rng = jax.random.PRNGKey(0)
  state = run.init_state(rng)
  batch_sharding = parallel.batch_sharded(run.mesh)
  n = jax.device_count()
  for mode, batch_size in (('fixed_global_batch', _BATCH.value or config.input.batch_size),
                           ('fixed_per_device_batch', _PER_DEVICE.value * n)):
    parallel.check_batch_size(batch_size)
    images = np.random.default_rng(0).uniform(-1, 1, (batch_size, *run.image_shape))
    batch = {'image': jax.device_put(images.astype(np.float32), batch_sharding)}
    state, metrics = run.train_step(state, run.teacher_params, batch, rng)  # Compiles.
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = run.train_step(state, run.teacher_params, batch, rng)
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
    env['PYTHONPATH'] = os.pathsep.join(filter(None, (ROOT, env.get('PYTHONPATH'))))
    proc = subprocess.run([sys.executable, '-m', 'benchmarks.scaling', '--worker', *sys.argv[1:]],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
      sys.stderr.write(f'{n} devices failed:\n{proc.stderr[-3000:]}')
      raise errors.StageFailed(proc.returncode)
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
  distill = create_run(config, resolution, teacher_params='abstract')
  student = create_run(config, resolution, mode='supervised')
  b = _FLOPS_BATCH.value
  rng = jax.random.PRNGKey(0)
  images = jax.ShapeDtypeStruct((b, *distill.image_shape), jnp.float32)
  batch = {'image': images, 'label': jax.ShapeDtypeStruct((b,), jnp.int32)}

  def gflops(jitted, *args) -> float:
    return jitted.lower(*args).compile().cost_analysis()['flops'] / b / 1e9

  start = time.perf_counter()
  teacher = gflops(jax.jit(functools.partial(distill.teachers.log_probs,
                                             temperature=config.temperature)),
                   distill.teacher_params, images)
  student_step = gflops(student.train_step, student.abstract_state, (), batch, rng)
  print(json.dumps({
      'measure': 'flops', 'config': flags.FLAGS.config.partition(':')[0],
      'resolution': resolution, 'flops_batch': b,
      'teacher_params_m': round(_count(distill.teacher_params) / 1e6, 2),
      'student_params_m': round(_count(student.abstract_state.params) / 1e6, 2),
      'teacher_forward_gflops_per_image': round(teacher, 3),
      'student_step_gflops_per_image': round(student_step, 3),
      'distill_gflops_per_image': round(teacher + student_step, 3),
      'compile_s': round(time.perf_counter() - start, 1)}))


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def main(argv, config):
  del argv
  resolution = _RESOLUTION.value or config.input.resolution
  if _WORKER.value:
    time_steps(config, resolution)
    return
  if 'scaling' in _MEASURE.value:
    scaling()
  if 'flops' in _MEASURE.value:
    flops(config, resolution)


if __name__ == '__main__':
  cli.run(main, config=os.path.join(ROOT, 'configs', 'distill.py:teacher_model=bit'))
