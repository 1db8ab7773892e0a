r"""Throughput of the distillation step and of its parts, in one process. JSON lines on stdout.

  python -m benchmarks.step_throughput [--config=configs/distill.py:teacher_model=bit]

  # The paper's reference case: student R26 x0.5, teacher R50 x0.5, 32x32x3, global batch 64.
  python -m benchmarks.step_throughput --channels=3 --num_classes=10 --input=false \
      --config.student.depth=26 --config.student.width=0.5 --config.teachers[0].depth=50 \
      --config.teachers[0].width=0.5 --config.input.resolution=32 --config.input.batch_size=64

  # A 128 px config's input pipeline on a synthetic JPEG stand-in of its dataset.
  python -m benchmarks.step_throughput --config=configs/food_funmatch.py --standin=2048

Models, resolution, batch, dtypes (`--config.dtype`, `--config.teacher_dtype`) and the optimizer
come from the config and its `--config.*` overrides, built as training builds them
(`build.create_run`); the steps run on random images (`--channels`, `--num_classes` default to the
config's dataset) with random teacher weights, frozen as in training. Each step is compiled once
(`compile_s`), then every component is timed `--steps` calls at a time, `--rounds` times in turn
(the median is reported), so that the ratios compare parts measured under the same load. Lines:

- `matmul`: FLOP/s of a large float32 matmul in this process: the machine's practical limit.
- `component` (one per part): `teacher_forward`, `student_step` (supervised train step),
  `distill_step` (views, mixup, teachers, student, KL, update), `distill_step_cached_logits`
  (fixed teacher with precomputed logits: no teacher pass), `distill_step_replayed` (a
  reinforcement's step: views rebuilt, stored mixup ratio and all classes' log-probabilities, no
  teacher pass), `teacher_forward_then_student_step`
  (the two programs called in turn, as a loop without the fused step would),
  `teacher_forward_and_student_step` (both parts, independent of each other, compiled as one
  program: what one program costs over two with no distillation in it), `input_pipeline`
  (the config's TFDS pipeline to global device batches), with `img_per_sec` and, for compiled
  steps, XLA's FLOPs per image and the achieved FLOP/s.
- `summary`: `step_efficiency` (distill step time / (teacher forward + student step time); <= 1
  means nothing is wasted; the median over rounds of each round's ratio, so that the three parts
  of a ratio are timed under the same load, and `step_efficiency_range`, its lowest and
  highest), `step_efficiency_in_turn` (the same against the parts called in turn, so that
  neither side keeps its weights in cache from one call to the next; and its range),
  `one_program_efficiency` (`teacher_forward_and_student_step` against the parts, the same way),
  `cached_logits_over_student_step`, `replayed_over_distill_step` (replayed step images/s / live
  distill step images/s: the median of the rounds' ratios, and its range), `input_over_step` and
  `input_over_replayed_step` (pipeline images/s / that step's images/s: a replay rebuilds its
  views with the same pipeline), `reinforcement_bytes_per_view` (`--top_k` classes in float16 and
  the rest, with the example's index and the step's ratio, of the config's classes and batch),
  `distill_fraction_of_matmul` (achieved / matmul FLOP/s; with `--peak_tflops`,
  `distill_fraction_of_peak`: achieved / the chip's peak), `distill_compile_s`, `ready_s` (from
  the process's first import to every part compiled and warmed up: what a run waits before its
  first step), `distill_memory_mb` (what the compiled step holds on its device: arguments,
  outputs and temporaries, from XLA's memory analysis), `peak_rss_mb` and, on a GPU or TPU,
  `device_peak_mb` (the device's peak bytes in use). `--components` times only some parts; the
  summary then gives the ratios whose parts were timed.
- With `--kernels=switch=name,...`: one more `component` line `distill_step` per entry, with
  `kernels` ({switch: name}): that implementation's distillation step, built and timed after
  the summary (its rounds are not interleaved with the parts'), or its `error` where it failed
  to compile or run.
- With `--profile_dir`: `profile` (one per part: ms per call inside XLA ops, `op_times`) and
  `profile_summary` (the distill step's span and op time over the sums of its parts').
"""

import time

START = time.perf_counter()  # Before JAX is imported: `ready_s` counts from here.

import contextlib  # pylint: disable=g-import-not-at-top,g-bad-import-order
import copy
import dataclasses
import functools
import glob
import gzip
import json
import os
import resource
import statistics
import sys
import tempfile
from typing import Any, Callable

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from big_distill import build, cli, errors, parallel, reinforcement, steps
from big_distill.models import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHANNELS = flags.DEFINE_integer('channels', None, 'Image channels (default: the dataset\'s).')
_CLASSES = flags.DEFINE_integer('num_classes', None, 'Classes (default: the dataset\'s).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Calls per timing.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timings per component, taken in turn; the median.')
_INPUT = flags.DEFINE_bool('input', True, 'Also time the config\'s input pipeline.')
_STANDIN = flags.DEFINE_integer(
    'standin', 0, 'If > 0: time the input pipeline on a synthetic stand-in of the config\'s '
    'dataset with this many train images (JPEG where the real dataset is), in a temporary dir.')
_STANDIN_SIZE = flags.DEFINE_list('standin_size', ['384', '512'],
                                  'Height, width of the stand-in\'s images.')
_MATMUL = flags.DEFINE_integer('matmul_size', 2048, 'Side of the reference float32 matmul.')
_TOP_K = flags.DEFINE_integer('top_k', 10, 'Classes kept per view for reinforcement_bytes_per_view '
                              '(0: all, in float32).')
_PEAK = flags.DEFINE_float(
    'peak_tflops', 0.0, 'The chip\'s peak TFLOP/s in the step\'s dtype (e.g. 989 for an H100 or '
    'H200 in bfloat16): if > 0, the summary gives the distillation step\'s fraction of it.')
PARTS = ('teacher_forward', 'student_step', 'distill_step', 'distill_step_cached_logits',
         'distill_step_replayed', 'teacher_forward_and_student_step')
_PARTS = flags.DEFINE_list('components', list(PARTS), 'The parts to compile and time; the summary '
                           'gives the ratios whose parts are among them.')
_ALTERNATIVES = flags.DEFINE_list(
    'kernels', [], 'Other kernel implementations (`config.kernels`), each `switch=name`: after '
    'the parts, each one\'s distillation step alone, built, compiled and timed afresh.')
_PROFILE = flags.DEFINE_string(
    'profile_dir', None, 'Trace one more round of the distillation step, teacher forward and '
    'student step with jax.profiler there (a directory each), and print their times in XLA ops.')


def emit(record: dict[str, Any]) -> None:
  """Prints `record` as one JSON line, floats (also in lists) to 6 significant digits (ratios
  of small figures stay exact to 1e-5 relative; decimal places would not)."""
  def rounded(v):
    if isinstance(v, list):
      return [rounded(x) for x in v]
    return float(f'{v:.6g}') if isinstance(v, float) else v
  print(json.dumps({k: rounded(v) for k, v in record.items()}), flush=True)


class Timer:
  """Calls `fn` (which returns what to block on) `steps` times per timing, in rounds."""

  def __init__(self):
    self.times: dict[str, list[float]] = {}

  def time(self, name: str, fn: Callable[[], Any], steps: int) -> None:
    start = time.perf_counter()
    for _ in range(steps):
      out = fn()
    jax.block_until_ready(out)
    self.times.setdefault(name, []).append((time.perf_counter() - start) / steps)

  def seconds(self, name: str) -> float:
    return statistics.median(self.times[name])


def op_times(trace_dir: str) -> dict[str, float]:
  """Ms per traced call inside XLA ops, from the newest trace `jax.profiler` wrote in `trace_dir`.

  `span_ms`: first op's start to last op's end; `op_ms`: the ops' durations summed (more than
  the span where ops run concurrently); `idle_ms`: the part of the span where no op runs. Read
  from the Chrome trace file (events with `hlo_op` and `run_id` arguments): neither jax nor the
  profiler plugin exposes these sums as an API.
  """
  path = max(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True),
             key=os.path.getmtime)  # The newest: a directory may hold earlier runs' traces.
  with gzip.open(path) as f:
    events = json.load(f)['traceEvents']
  runs: dict[str, list[tuple[float, float]]] = {}
  for e in events:
    if e.get('ph') == 'X' and 'hlo_op' in e.get('args', {}):
      runs.setdefault(e['args']['run_id'], []).append((e['ts'], e['ts'] + e['dur']))
  if not runs:
    raise ValueError(f'{path}: no XLA op in the trace')
  records = []
  for ops in (sorted(r) for r in runs.values()):
    busy, end = 0.0, ops[0][0]  # The union of the ops' intervals.
    for start, stop in ops:
      busy += max(0.0, stop - max(start, end))
      end = max(end, stop)
    span = end - ops[0][0]
    records.append((span, sum(b - a for a, b in ops), span - busy))
  return {key: float(np.mean(values)) / 1e3
          for key, values in zip(('span_ms', 'op_ms', 'idle_ms'), zip(*records))}


def compile_step(jitted: Callable, *args) -> tuple[Callable, float, float]:
  """(compiled fn, compile seconds, FLOPs per call) of the jitted `jitted` for `args`."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, seconds, float(cost.get('flops', 0.0))


def memory_mb(compiled: Any) -> float:
  """MiB a compiled program holds on its device while it runs, from XLA's memory analysis:
  arguments, outputs (less those aliasing donated arguments) and temporaries."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes +
          m.temp_size_in_bytes) / 2**20


def matmul_flops_per_second(n: int, timer: Timer) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  # Both operands are arguments: a captured array would be a constant of the program, seconds to
  # lower.
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, a))
  for _ in range(_ROUNDS.value):
    timer.time('matmul', lambda: matmul(a, a), 5)
  return 2 * n**3 / timer.seconds('matmul')


def input_images_per_second(run: build.Run) -> float:
  """Global images/s of the run's training pipeline, as the loop consumes it."""
  batches = run.train_batches()
  for _ in range(3):  # Fills the shuffle buffer (and the cache, if any, keeps filling).
    jax.block_until_ready(parallel.to_global(next(batches), run.mesh))
  n = max(20, _STEPS.value * _ROUNDS.value)
  start = time.perf_counter()
  for _ in range(n):
    batch = parallel.to_global(next(batches), run.mesh)
  jax.block_until_ready(batch)
  return n * run.config.input.batch_size / (time.perf_counter() - start)


def make_standin(config: ml_collections.ConfigDict, directory: str) -> None:
  """Points `config.input` at a synthetic stand-in of its dataset written into `directory`."""
  from big_distill.data import synthetic  # pylint: disable=g-import-not-at-top  # TFDS: only here.
  train = config.input.train_split.split('[')[0]
  evaluation = config.input.eval_split.split('[')[0]
  with contextlib.redirect_stdout(sys.stderr):  # TFDS prints progress; stdout is JSON lines.
    synthetic.make_standin(config.input.dataset, directory,
                           num_examples={train: _STANDIN.value, evaluation: 8},
                           image_size=tuple(int(s) for s in _STANDIN_SIZE.value))
  config.input.data_dir = directory
  config.input.train_split, config.input.eval_split = train, evaluation


def main(argv, config):
  del argv
  alternatives = [a.split('=', 1) for a in _ALTERNATIVES.value]
  if any(len(a) != 2 or a[0] not in config.kernels for a in alternatives):
    raise errors.BadInput(f'--kernels={",".join(_ALTERNATIVES.value)}: use switch=name entries, '
                          f'a switch one of {", ".join(config.kernels)}.')
  for switch, name in alternatives:  # An unknown name, or one for another backend: refused now.
    kernels.Kernels(**{**config.kernels, switch: name}).resolved()
  with tempfile.TemporaryDirectory() as directory:
    if _STANDIN.value:
      make_standin(config, directory)
    config = variant_of(config, total_steps=config.schedule.warmup_steps + 1000)
    data = benchmark(config)
  for switch, name in alternatives:  # The parts' states and programs are gone by now.
    try:
      alternative(config, data, switch, name)
    except Exception as e:  # pylint: disable=broad-except  # One failing here is a finding.
      first = (str(e).strip().splitlines() or [''])[0]
      emit({'measure': 'component', 'name': 'distill_step', 'kernels': {switch: name},
            'error': f'{type(e).__name__}: {first}'})


def alternative(config: ml_collections.ConfigDict, data: build.Data, switch: str,
                name: str) -> None:
  """A `component` line for the distillation step with `config.kernels.<switch>=<name>`: built,
  compiled and timed on its own, after the parts (so that the summary's device memory is
  theirs). One that fails to compile or run (a kernel this device lacks, its memory) gets a line
  with its `error` instead, and the next one is timed."""
  config = copy.deepcopy(config)
  config.kernels[switch] = name
  data = build.Data(data.num_classes, data.channels, config.input.batch_size, data.class_names)
  run = build.create_run(config, data=data, teacher_params='random')
  bs, rng = config.input.batch_size, jax.random.PRNGKey(0)
  batch = random_batch(run, np.random.default_rng(0))
  state = run.init_state(rng)
  step, compile_s, flops = compile_step(run.train_step, state, run.teacher_params, batch, rng)
  state, _ = step(state, run.teacher_params, batch, rng)  # Warm-up.
  timer = Timer()

  def call():
    nonlocal state
    state, metrics = step(state, run.teacher_params, batch, rng)
    return metrics

  for _ in range(_ROUNDS.value):
    timer.time('distill_step', call, _STEPS.value)
  img_s = bs / timer.seconds('distill_step')
  emit({'measure': 'component', 'name': 'distill_step', 'kernels': {switch: name},
        'img_per_sec': img_s, 'step_ms': 1e3 * timer.seconds('distill_step'),
        'compile_s': compile_s, 'gflop_per_image': flops / bs / 1e9,
        'gflop_per_sec': flops / bs / 1e9 * img_s, 'student': str(run.student_spec),
        'teachers': [str(spec) for spec in run.teachers.specs], 'batch_size': bs})


def random_batch(run: build.Run, noise: np.random.Generator) -> dict[str, jax.Array]:
  """A global batch of the run's shape: uniform images in [-1, 1] and random labels."""
  bs = run.config.input.batch_size
  return jax.device_put({
      'image': noise.uniform(-1, 1, (bs, *run.image_shape)).astype(np.float32),
      'label': noise.integers(0, run.data.num_classes, bs).astype(np.int32)},
      parallel.batch_sharded(run.mesh))


def variant_of(config: ml_collections.ConfigDict, **changes: Any) -> ml_collections.ConfigDict:
  out = copy.deepcopy(config)
  out.update(changes)
  return out


def benchmark(config: ml_collections.ConfigDict) -> build.Data:
  """Times the parts (the module docstring); returns the shape of the data they ran on."""
  data = None  # The config's dataset, prepared if missing: the input pipeline reads it.
  if _CHANNELS.value and _CLASSES.value:
    data = build.Data(_CLASSES.value, _CHANNELS.value, config.input.batch_size)
  elif not (_INPUT.value or _STANDIN.value):
    data = build.dataset_shape(config)
  # The distillation run, the student's supervised run, and the fixed teacher's with cached
  # logits (its teachers never run: shapes only).
  unknown = sorted(set(_PARTS.value) - set(PARTS))
  if unknown:
    raise errors.BadInput(f'--components: unknown {", ".join(unknown)}; use {", ".join(PARTS)}.')
  wanted = [name for name in PARTS if name in _PARTS.value]
  run = build.create_run(config, data=data, teacher_params='random')
  supervised = build.create_run(variant_of(config, mode='supervised'), data=run.data)
  cached = replayed = None  # Built only if timed: each compiles its own step.
  if 'distill_step_cached_logits' in wanted:
    cached = build.create_run(variant_of(config, variant='fixed', teacher_logits_cache='unused'),
                              data=run.data, teacher_params='abstract')
  if 'distill_step_replayed' in wanted:
    replayed = build.create_run(variant_of(config, reinforcement=dict(path='unused',
                                                                       live_fraction=0.0)),
                                data=run.data)
  bs, image_shape, num_classes = config.input.batch_size, run.image_shape, run.data.num_classes
  rng = jax.random.PRNGKey(0)
  batch_sharding = parallel.batch_sharded(run.mesh)
  noise = np.random.default_rng(0)
  batch = random_batch(run, noise)
  cached_batch = jax.device_put({
      'image': batch['image'],
      'teacher_logits': noise.normal(size=(bs, len(run.teachers.models), num_classes)).astype(
          np.float32)}, batch_sharding)
  replayed_batch = jax.device_put({
      'image': batch['image'], 'mixup_ratio': np.full(bs, 0.7, np.float32),
      'teacher_logp': jax.nn.log_softmax(noise.normal(size=(bs, num_classes)).astype(
          np.float32))}, batch_sharding)
  state_runs = {'student_step': supervised, 'distill_step': run,
                'distill_step_cached_logits': cached, 'distill_step_replayed': replayed,
                'teacher_forward_and_student_step': supervised}
  states = {name: r.init_state(rng) for name, r in state_runs.items() if name in wanted}
  teacher_forward = jax.jit(functools.partial(run.teachers.log_probs,
                                              temperature=config.temperature))

  @functools.partial(jax.jit, donate_argnums=0)
  def teacher_forward_and_student_step(state, teacher_params, batch, rng):
    state, metrics = steps.train_step(state, (), batch, rng, **supervised.step_kwargs)
    return state, (metrics, teacher_forward(teacher_params, batch['image']))

  components = {  # name: (jitted function, its arguments after the state).
      'teacher_forward': (teacher_forward, (run.teacher_params, batch['image'])),
      'student_step': (supervised.train_step, ((), batch, rng)),
      'distill_step': (run.train_step, (run.teacher_params, batch, rng)),
      'distill_step_cached_logits': (cached and cached.train_step,
                                     (run.teacher_params, cached_batch, rng)),
      'distill_step_replayed': (replayed and replayed.train_step, ((), replayed_batch, rng)),
      'teacher_forward_and_student_step': (teacher_forward_and_student_step,
                                           (run.teacher_params, batch, rng)),
  }
  components = {name: components[name] for name in wanted}
  in_turn = {'teacher_forward', 'student_step'} <= set(wanted)
  compiled, records = {}, {}
  for name, (fn, args) in components.items():
    stateful = name in states
    full_args = (states[name], *args) if stateful else args
    compiled[name], compile_s, flops = compile_step(fn, *full_args)
    records[name] = dict(compile_s=compile_s, gflop_per_image=flops / bs / 1e9)
    if stateful:
      states[name], _ = compiled[name](states[name], *args)  # Warm-up.

  def call(name):
    if name == 'teacher_forward_then_student_step':  # Two programs in turn, as a loop runs them.
      call('teacher_forward')
      return call('student_step')
    fn, args = compiled[name], components[name][1]
    if name not in states:
      return fn(*args)
    states[name], metrics = fn(states[name], *args)
    return metrics

  ready_s = time.perf_counter() - START  # Imports, models built and initialised, all compiled.
  timer = Timer()
  matmul = matmul_flops_per_second(_MATMUL.value, timer)
  emit({'measure': 'matmul', 'size': _MATMUL.value, 'gflop_per_sec': matmul / 1e9})
  for _ in range(_ROUNDS.value):
    for name in (*components, *['teacher_forward_then_student_step'] * in_turn):
      timer.time(name, functools.partial(call, name), _STEPS.value)
  if _PROFILE.value and {'distill_step', 'teacher_forward', 'student_step'} <= set(wanted):
    profiled = {}
    for name in ('distill_step', 'teacher_forward', 'student_step'):  # One trace each.
      with jax.profiler.trace(os.path.join(_PROFILE.value, name)):
        timer.time(f'profiled_{name}', functools.partial(call, name), _STEPS.value)
      profiled[name] = op_times(os.path.join(_PROFILE.value, name))
    for name, record in profiled.items():
      emit({'measure': 'profile', 'name': name, **record})
    emit({'measure': 'profile_summary', **{
        f'{key}_efficiency': profiled['distill_step'][key] / (
            profiled['teacher_forward'][key] + profiled['student_step'][key])
        for key in ('span_ms', 'op_ms')}})

  setting = dict(student=str(run.student_spec),
                 teachers=[str(spec) for spec in run.teachers.specs],
                 image_shape=list(image_shape), batch_size=bs, variant=config.variant,
                 dtype=config.dtype, teacher_dtype=config.teacher_dtype,
                 devices=jax.device_count(), backend=jax.default_backend())
  img_s = {}
  for name, record in records.items():
    seconds = timer.seconds(name)
    img_s[name] = bs / seconds
    emit({'measure': 'component', 'name': name, 'img_per_sec': img_s[name],
          'step_ms': 1e3 * seconds, **record,
          'gflop_per_sec': record['gflop_per_image'] * img_s[name], **setting})

  if in_turn:
    in_turn_s = timer.seconds('teacher_forward_then_student_step')
    emit({'measure': 'component', 'name': 'teacher_forward_then_student_step',
          'img_per_sec': bs / in_turn_s, 'step_ms': 1e3 * in_turn_s, **setting})

  def per_round(name, *over):  # Each round's time of `name` over the sum of that round's `over`.
    return [t[0] / sum(t[1:]) for t in zip(*(timer.times[k] for k in (name, *over)))]

  summary = {'measure': 'summary'}

  def ratios(key, name, *over):  # The median of the rounds' ratios, and their range.
    if {name, *over} <= set(timer.times):
      values = per_round(name, *over)
      summary.update({key: statistics.median(values), f'{key}_range': [min(values), max(values)]})

  ratios('step_efficiency', 'distill_step', 'teacher_forward', 'student_step')
  ratios('step_efficiency_in_turn', 'distill_step', 'teacher_forward_then_student_step')
  ratios('one_program_efficiency', 'teacher_forward_and_student_step', 'teacher_forward',
         'student_step')
  if {'student_step', 'distill_step_cached_logits'} <= set(img_s):
    summary['cached_logits_over_student_step'] = (img_s['student_step'] /
                                                  img_s['distill_step_cached_logits'])
  ratios('replayed_over_distill_step', 'distill_step', 'distill_step_replayed')
  summary['reinforcement_bytes_per_view'] = reinforcement.Layout(
      steps=1, batch_size=bs, num_classes=num_classes, top_k=_TOP_K.value or None,
      dtype='float16' if _TOP_K.value else 'float32', steps_per_chunk=1,
      eval_sets={}).bytes_per_view()
  summary['matmul_gflop_per_sec'] = matmul / 1e9
  summary['ready_s'] = ready_s
  if 'distill_step' in img_s:
    summary.update(
        distill_img_per_sec=img_s['distill_step'],
        distill_gflop_per_sec=records['distill_step']['gflop_per_image'] * img_s['distill_step'],
        distill_compile_s=records['distill_step']['compile_s'],
        distill_memory_mb=memory_mb(compiled['distill_step']))
    summary['distill_fraction_of_matmul'] = summary['distill_gflop_per_sec'] / (matmul / 1e9)
    if _PEAK.value > 0:
      summary['distill_fraction_of_peak'] = summary['distill_gflop_per_sec'] / (
          _PEAK.value * 1e3)
  if _INPUT.value or _STANDIN.value:
    with_data = run if run.data.builder else dataclasses.replace(run,
                                                                 data=build.create_data(config))
    img_s['input_pipeline'] = input_images_per_second(with_data)
    emit({'measure': 'component', 'name': 'input_pipeline', 'img_per_sec':
          img_s['input_pipeline'], 'dataset': config.input.dataset,
          'standin': bool(_STANDIN.value), 'cache': config.input.cache, **setting})
    for key, name in (('input_over_step', 'distill_step'),
                      ('input_over_replayed_step', 'distill_step_replayed')):
      if name in img_s:
        summary[key] = img_s['input_pipeline'] / img_s[name]
  summary['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  stats = jax.local_devices()[0].memory_stats()  # None on a CPU.
  if stats and 'peak_bytes_in_use' in stats:
    summary['device_peak_mb'] = stats['peak_bytes_in_use'] / 2**20
  emit({**summary, **setting})
  return run.data


if __name__ == '__main__':
  cli.run(main, config=os.path.join(ROOT, 'configs', 'distill.py:teacher_model=bit'))
