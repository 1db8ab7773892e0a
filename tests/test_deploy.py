"""`big_distill.deploy` on the tiny run, from a non-editable install of the package run in another
directory (as a user who installed big_distill runs it): its lines agree with the files it wrote
and with the JAX model's accuracy on the same examples."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT, env


def _install(target: str, tmp_path) -> None:
  """`pip install --no-deps --target` of a copy of the checkout's package (building in the
  checkout would leave build files there)."""
  source = tmp_path / 'source'
  for name in ('big_distill', 'configs'):
    shutil.copytree(os.path.join(ROOT, name), source / name,
                    ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('setup.py', 'README.md'):
    shutil.copy(os.path.join(ROOT, name), source)
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
                  '--no-build-isolation', '--no-compile', '--target', target, str(source)],
                 check=True, capture_output=True, timeout=300)


def test_deploy_benchmark_from_an_installed_package(teacher_run, tmp_path):
  installed, elsewhere = str(tmp_path / 'site'), tmp_path / 'elsewhere'
  _install(installed, tmp_path)
  elsewhere.mkdir()
  assert not os.path.exists(os.path.join(installed, 'benchmarks'))
  environment = env(PYTHONPATH=installed)
  spec = subprocess.run(
      [sys.executable, '-c', 'import importlib.util; '
       'print(importlib.util.find_spec("big_distill").origin)'],
      env=environment, cwd=elsewhere, capture_output=True, text=True, check=True)
  assert spec.stdout.strip() == os.path.join(installed, 'big_distill', '__init__.py')
  out = tmp_path / 'exports'
  proc = subprocess.run(
      [sys.executable, '-m', 'big_distill.deploy', f'--workdir={teacher_run}',
       f'--output_dir={out}', '--max_examples=40', '--rounds=2', '--batch=8'],
      env=environment, cwd=elsewhere, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
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
  assert os.listdir(elsewhere) == []  # Nothing written where it ran.
