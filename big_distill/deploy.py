r"""A run's student exported for deployment, measured: size, CPU latency and eval accuracy of the
SavedModel, float32 TFLite and int8 TFLite exports next to the JAX model. JSON lines on stdout.

  python -m big_distill.deploy --workdir=RUN [--output_dir=DIR] [--max_examples=N] [--rounds=N]

The student (`--step`, default the best checkpoint) is exported with `serving.save`, as
`big_distill.export` does, into `--output_dir` (default: a temporary directory, removed after).
Lines:

- `format` (one per model: `jax`, `savedmodel`, `tflite_float32`, `tflite_int8`): `bytes` (the
  SavedModel directory's files, the `.tflite` file, `file` in the directory; for `jax` the float32
  variables), `export_s`,
  latency per image in ms at batch 1 and `--batch` on uint8 images at the resolution (median of
  `--rounds` timings after a warm-up call; the exports through `serving.load`, the JAX model
  jitted), and on the first `--max_examples` of the eval split (all: 0) `accuracy` and
  `agreement_with_jax` (same top-1 class). The JAX model reads `run.eval_batches()`; the
  SavedModel reads the split's encoded images (its `serving_default` path: decoding and eval
  preprocessing inside); TFLite reads them decoded and brought to the resolution by
  `serving.pixels_at_resolution`.
- `summary`: per export, its size and latencies over the JAX model's (or float TFLite's size)
  and its accuracy minus the JAX model's.
"""

import dataclasses
import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable

from absl import flags
import numpy as np

from big_distill import cli, errors, workdir as workdir_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The run whose student to export.', required=True)
  flags.DEFINE_string('output_dir', None, 'A new or empty directory for the exports (default: a '
                      'temporary one).')
  flags.DEFINE_string('step', 'best', 'Checkpoint: best, latest, or a step number.')
  flags.DEFINE_integer('max_examples', 0, 'Eval examples for accuracy (0: all).', lower_bound=0)
  flags.DEFINE_integer('batch', 32, 'The larger batch of the latency measurement.',
                       lower_bound=1)
  flags.DEFINE_integer('rounds', 20, 'Timings per batch size; the median.', lower_bound=1)
  flags.DEFINE_integer('tflite_threads', os.cpu_count(), 'TFLite interpreter threads.',
                       lower_bound=1)

EXPORTS = {'savedmodel': ('savedmodel', False), 'tflite_float32': ('tflite', False),
           'tflite_int8': ('tflite', True)}
FILES = {'savedmodel': 'student', 'tflite_float32': 'student.tflite',
         'tflite_int8': 'student_int8.tflite'}


def latency(forward: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> float:
  """Median seconds per image of `forward(images)` (its result read back to NumPy, so that a
  JAX computation has finished), after a warm-up call."""
  np.asarray(forward(images))
  times = []
  for _ in range(FLAGS.rounds):
    start = time.perf_counter()
    np.asarray(forward(images))
    times.append((time.perf_counter() - start) / len(images))
  return statistics.median(times)


def size(path: str) -> int:
  """Bytes of a file, or of every file under a directory."""
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def in_batches(fn: Callable, items, batch: int) -> np.ndarray:
  return np.concatenate([fn(items[i:i + batch]) for i in range(0, len(items), batch)])


def jax_eval(run: Any, forward, limit: int) -> tuple[np.ndarray, np.ndarray]:
  """(logits, labels) of the JAX model on the first `limit` eval examples (0: all)."""
  logits, labels = [], []
  for batch in run.eval_batches().as_numpy_iterator():
    real = batch['mask'].astype(bool)
    logits.append(np.asarray(forward(batch['image']))[real])
    labels.append(batch['label'][real])
    if limit and sum(map(len, labels)) >= limit:
      break
  limit = limit or None
  return np.concatenate(logits)[:limit], np.concatenate(labels)[:limit]


def encoded_examples(run: Any, count: int) -> tuple[list[bytes], np.ndarray]:
  """The eval split's first `count` images as stored (PNG, JPEG) and their labels, in the order
  of `run.eval_batches()` (one process)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = run.data.builder.as_dataset(split=run.config.input.eval_split, shuffle_files=False,
                                   decoders={'image': tfds.decode.SkipDecoding()})
  examples = list(ds.take(count).as_numpy_iterator())
  return [e['image'] for e in examples], np.array([e['label'] for e in examples])


def main(argv):
  del argv
  from big_distill import build, checkpoint  # pylint: disable=g-import-not-at-top  # JAX, TF.
  from big_distill.models import loading  # pylint: disable=g-import-not-at-top
  workdir_lib.read_config(FLAGS.workdir)
  out = FLAGS.output_dir
  if out and os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise errors.BadInput(f'--output_dir={out} exists; name a new or empty directory.')
  if out:
    workdir_lib.check_writable(out, '--output_dir')
  run = build.create_run_from_workdir(FLAGS.workdir)
  variables, step, note = checkpoint.read_variables(FLAGS.workdir, FLAGS.step)
  loading.check_fits(variables, run.abstract_state.variables, f'{FLAGS.workdir} ({note})')
  run = dataclasses.replace(run, data=build.create_data(run.config))
  with tempfile.TemporaryDirectory() as tmp:
    directory = out or tmp
    os.makedirs(directory, exist_ok=True)
    lines = measure(run, variables, directory,
                    dict(workdir=str(workdir_lib.path(FLAGS.workdir)), step=step, which=note))
  for line in lines:
    print(json.dumps(line), flush=True)


def measure(run: Any, variables: dict, directory: str, source: dict) -> list[dict]:
  """The JSON lines: one per format (the JAX model and each export) and their summary."""
  import jax  # pylint: disable=g-import-not-at-top
  from big_distill import serving  # pylint: disable=g-import-not-at-top
  from big_distill.data import images as image_files  # pylint: disable=g-import-not-at-top
  forward = jax.jit(lambda images: run.student.apply(variables, images, train=False))
  images = np.random.default_rng(0).integers(0, 256, (FLAGS.batch, *run.image_shape), np.uint8)
  jax_forward = lambda x: forward(x.astype(np.float32) / 127.5 - 1.0)
  jax_logits, labels = jax_eval(run, forward, FLAGS.max_examples)
  encoded, encoded_labels = encoded_examples(run, len(labels))
  if not np.array_equal(labels, encoded_labels):
    raise RuntimeError('The eval split read as stored is not in the order of its eval batches.')
  channels = run.data.channels
  lines = [{
      'measure': 'format', 'format': 'jax', 'examples': len(labels),
      'bytes': sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(variables)),
      'export_s': 0.0, 'latency_ms_batch1': 1e3 * latency(jax_forward, images[:1]),
      f'latency_ms_per_image_batch{FLAGS.batch}': 1e3 * latency(jax_forward, images),
      'accuracy': float(np.mean(jax_logits.argmax(-1) == labels)), 'agreement_with_jax': 1.0}]
  for name, (fmt, int8) in EXPORTS.items():
    path = os.path.join(directory, FILES[name])
    start = time.perf_counter()
    serving.save(run, variables, path, fmt, int8=int8, checkpoint=source)
    export_s = time.perf_counter() - start
    model = serving.load(path, num_threads=FLAGS.tflite_threads)
    if fmt == 'savedmodel':
      logits = in_batches(model.logits_from_encoded, encoded, FLAGS.batch)
    else:
      pixels = np.stack([serving.pixels_at_resolution(
          image_files.decode(e, channels).numpy(),
          model.metadata) for e in encoded])
      logits = in_batches(model.logits_from_pixels, pixels, FLAGS.batch)
    lines.append({
        'measure': 'format', 'format': name, 'examples': len(labels), 'bytes': size(path),
        'export_s': export_s, 'file': FILES[name],
        'latency_ms_batch1': 1e3 * latency(model.logits_from_pixels, images[:1]),
        f'latency_ms_per_image_batch{FLAGS.batch}': 1e3 * latency(model.logits_from_pixels,
                                                                   images),
        'accuracy': float(np.mean(logits.argmax(-1) == labels)),
        'agreement_with_jax': float(np.mean(logits.argmax(-1) == jax_logits.argmax(-1)))})
  by_format = {l['format']: l for l in lines}
  big = f'latency_ms_per_image_batch{FLAGS.batch}'
  summary = {'measure': 'summary', 'workdir': source['workdir'], 'step': source['step'],
             'examples': len(labels), 'jax_accuracy': by_format['jax']['accuracy'],
             'tflite_threads': FLAGS.tflite_threads}
  for name in EXPORTS:
    line = by_format[name]
    summary[name] = {
        'size_over_tflite_float32': line['bytes'] / by_format['tflite_float32']['bytes'],
        'latency_batch1_over_jax': line['latency_ms_batch1'] / by_format['jax'][
            'latency_ms_batch1'],
        f'latency_batch{FLAGS.batch}_over_jax': line[big] / by_format['jax'][big],
        'accuracy_minus_jax': line['accuracy'] - by_format['jax']['accuracy']}
  return [*lines, summary]


if __name__ == '__main__':
  define_flags()
  cli.run(main, announce=lambda: f'big_distill.deploy: each export format of {FLAGS.workdir}.')
