r"""Distillation-step throughput on 1, 2, 4 simulated CPU devices, FLOPs and memory. JSON lines.

  python -m benchmarks.scaling [--config=configs/distill.py:teacher_model=bit] [--devices=1,2,4]
  python -m benchmarks.scaling --config=configs/imagenet_funmatch.py --measure=flops
  python -m benchmarks.scaling --config=configs/imagenet_funmatch.py --measure=memory \
      [--memory_batches=128,512] [--remat=false,true] [--device_gib=80,16]

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

`memory`: XLA's memory analysis (`compiled.memory_analysis()`) of the distillation step as
training compiles it (frozen random teachers, donated state, `build.train_step_options`), per device,
for each `--remat`: argument, output, temporary, aliased and generated-code bytes and their total
(arguments + outputs - aliased + temporaries + code) at each of `--memory_batches` images per
device (nothing is run, the dataset is not read); a fit a + b * batch through the two largest and
the batch it predicts for each `--device_gib` (no headroom), then the largest batch that fits as
compiled, found by up to `--memory_checks` more compilations (a line through the two compiled
batches around the device size). These are XLA:CPU's buffer assignments of the program, an
estimate of a GPU's or TPU's (other fusions, layouts and scheduling) until the accelerator script
measures a device.
"""

import copy
import functools
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from big_distill import build, cli, errors, parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MEASURE = flags.DEFINE_list('measure', ['scaling', 'flops'], 'scaling, flops and/or memory.')
_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4'], 'Simulated CPU device counts.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Fixed global batch (default: the config\'s).')
_PER_DEVICE = flags.DEFINE_integer('per_device_batch', 32, 'Fixed images per device.')
_RESOLUTION = flags.DEFINE_integer('resolution', None, 'Input side (default: the config\'s).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per measurement.')
_FLOPS_BATCH = flags.DEFINE_integer('flops_batch', 8, 'Batch of the FLOP-counted compilations.')
_WORKER = flags.DEFINE_bool('worker', False, 'Internal: time the step on this process\'s devices.')
_MEMORY_BATCHES = flags.DEFINE_list(
    'memory_batches', ['128', '512'], 'memory: per-device batches compiled; the two largest fit '
    'memory = a + b * batch.')
_REMAT = flags.DEFINE_list('remat', ['false', 'true'], 'memory: the config.remat values measured.')
_DEVICE_GIB = flags.DEFINE_list('device_gib', ['80', '16'],
                                'memory: device sizes (GiB) to find the largest batch for.')
_MEMORY_CHECKS = flags.DEFINE_integer(
    'memory_checks', 3, 'memory: compilations at most per device size to find its largest batch.')


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


PARTS = ('argument', 'output', 'temp', 'alias', 'generated_code')


def compiled_memory(run: build.Run, per_device_batch: int) -> dict[str, int]:
  """XLA's memory analysis (bytes per device) of the run's train step compiled for
  `per_device_batch` images per device; `total` is what the program holds at its peak:
  arguments + outputs - aliased (outputs written into donated arguments) + temporaries +
  generated code."""
  images = jax.ShapeDtypeStruct((per_device_batch * jax.device_count(), *run.image_shape),
                                jnp.float32, sharding=parallel.batch_sharded(run.mesh))
  stats = run.train_step.lower(run.abstract_state, run.teacher_params, {'image': images},
                               jax.random.PRNGKey(0)).compile().memory_analysis()
  parts = {p: int(getattr(stats, f'{p}_size_in_bytes')) for p in PARTS}
  return {**parts, 'total': parts['argument'] + parts['output'] - parts['alias'] + parts['temp']
          + parts['generated_code']}


def largest_batch(capacity: float, totals: dict[int, int],
                  compile_at: Callable[[int, int], None], checks: int) -> tuple[int, int | None]:
  """The largest per-device batch whose compiled total fits `capacity` bytes, searched by a line
  through the two compiled batches of `totals` (batch: total) around it (else the two nearest),
  whose batch is compiled (`compile_at(batch, predicted total)` adds it to `totals`), `checks`
  times at most: (the largest compiled batch that fits (0: none), the smallest that does not
  (None: none))."""
  for _ in range(checks):
    fits = [b for b, t in totals.items() if t <= capacity]
    over = [b for b, t in totals.items() if t > capacity]
    low, high = sorted((max(fits), min(over)) if fits and over else
                       sorted(totals, key=lambda b: abs(totals[b] - capacity))[:2])
    per_image = (totals[high] - totals[low]) / (high - low)
    batch = int(low + (capacity - totals[low]) // per_image) if per_image > 0 else 0
    if batch < 1 or batch in totals:
      break
    compile_at(batch, round(totals[low] + per_image * (batch - low)))
  return (max((b for b, t in totals.items() if t <= capacity), default=0),
          min((b for b, t in totals.items() if t > capacity), default=None))


def memory(config: ml_collections.ConfigDict, resolution: int) -> None:
  """Prints, for each `--remat` value, the distillation step's memory per device compiled at
  `--memory_batches`, then a line with the fit a + b * batch through the two largest, the batch
  it predicts for each `--device_gib`, and the largest batch that fits there as compiled
  (`largest_batch`, up to `--memory_checks` compilations each; `smallest_batch_over` the
  smallest compiled batch that does not)."""
  batches = sorted(set(map(int, _MEMORY_BATCHES.value)))
  if len(batches) < 2:
    raise errors.BadInput(f'--memory_batches={",".join(_MEMORY_BATCHES.value)}; give at least '
                          'two different batches.')
  if not set(_REMAT.value) <= {'false', 'true'}:
    raise errors.BadInput(f'--remat={",".join(_REMAT.value)}; use false and/or true.')
  config = copy.deepcopy(config)
  for remat in (v == 'true' for v in _REMAT.value):
    config.remat = remat
    run = create_run(config, resolution)
    setting = {'config': flags.FLAGS.config.partition(':')[0],
               'teacher': ','.join(map(str, run.teachers.specs)), 'student': str(run.student_spec),
               'resolution': resolution, 'dtype': config.dtype,
               'teacher_dtype': config.teacher_dtype, 'remat': remat}
    totals = {}

    def measure(batch: int, **extra: Any) -> None:
      start = time.perf_counter()
      parts = compiled_memory(run, batch)
      totals[batch] = parts['total']
      print(json.dumps({'measure': 'memory', **setting, 'per_device_batch': batch,
                        **{f'{p}_bytes': v for p, v in parts.items()},
                        'compile_s': round(time.perf_counter() - start, 1), **extra}), flush=True)

    for batch in batches:
      measure(batch)
    low, high = batches[-2:]
    per_image = (totals[high] - totals[low]) / (high - low)
    fixed = totals[high] - per_image * high
    gib = {g: float(g) * 2**30 for g in _DEVICE_GIB.value}
    predicted = {g: int((c - fixed) // per_image) for g, c in gib.items()}
    found = {g: largest_batch(c, totals, lambda b, t, g=g: measure(
        b, device_gib=g, predicted_total_bytes=t), _MEMORY_CHECKS.value) for g, c in gib.items()}
    print(json.dumps({'measure': 'memory_fit', **setting, 'fit_batches': [low, high],
                      'fixed_bytes': round(fixed), 'bytes_per_image': round(per_image),
                      'predicted_largest_batch': predicted,
                      'largest_batch': {g: f[0] for g, f in found.items()},
                      'smallest_batch_over': {g: f[1] for g, f in found.items()}}), flush=True)


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
  if 'memory' in _MEASURE.value:
    memory(config, resolution)


if __name__ == '__main__':
  cli.run(main, config=os.path.join(ROOT, 'configs', 'distill.py:teacher_model=bit'))
