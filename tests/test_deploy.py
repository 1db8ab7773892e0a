"""`benchmarks.deploy` on the tiny run: its lines agree with the files it wrote and with the JAX
model's accuracy on the same examples."""

import json
import os

import pytest

from tests.helpers import command, run


def test_deploy_benchmark_sizes_latencies_and_accuracy(teacher_run, tmp_path):
  out = tmp_path / 'exports'
  proc = run(command('benchmarks.deploy', f'--workdir={teacher_run}', f'--output_dir={out}',
                     '--max_examples=40', '--rounds=2', '--batch=8'))
  lines = [json.loads(line) for line in proc.stdout.splitlines()]  # Nothing but JSON lines.
  formats = {l['format']: l for l in lines if l['measure'] == 'format'}
  summary, = [l for l in lines if l['measure'] == 'summary']
  assert list(formats) == ['jax', 'savedmodel', 'tflite_float32', 'tflite_int8']
  jax_line = formats.pop('jax')
  assert summary['step'] == 10 and summary['examples'] == jax_line['examples'] == 40
  assert summary['jax_accuracy'] == jax_line['accuracy']
  assert jax_line['bytes'] > 4 * 100_000  # Float32 variables of the R14 x1/4 student.
  for name, line in formats.items():
    path = out / line['file']
    files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs] or [path]
    assert line['bytes'] == sum(os.path.getsize(f) for f in files), name
    assert line['examples'] == 40 and line['export_s'] > 0
    assert line['latency_ms_batch1'] > 0 and line['latency_ms_per_image_batch8'] > 0
    ratios = summary[name]
    assert ratios['latency_batch1_over_jax'] == pytest.approx(
        line['latency_ms_batch1'] / jax_line['latency_ms_batch1'])
    assert ratios['size_over_tflite_float32'] == pytest.approx(
        line['bytes'] / formats['tflite_float32']['bytes'])
    assert ratios['accuracy_minus_jax'] == pytest.approx(line['accuracy'] - jax_line['accuracy'])
  for name in ('savedmodel', 'tflite_float32'):  # Float formats: the same predictions.
    assert formats[name]['accuracy'] == jax_line['accuracy'], name
    assert formats[name]['agreement_with_jax'] == 1.0, name
  assert formats['tflite_int8']['agreement_with_jax'] >= 0.8
  assert formats['tflite_int8']['bytes'] < 0.4 * formats['tflite_float32']['bytes']
  assert (out / 'student' / 'big_distill.json').exists()
  assert (out / 'student_int8.tflite.json').exists()
