"""The benchmarks run and their summaries agree with their own measurements (tiny settings)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import FUNMATCH_CONFIG, ROOT, TINY_STUDENT

TINY = (*TINY_STUDENT, '--config.input.batch_size=16', '--config.input.shuffle_buffer=1000')


def _run(script: str, *args: str, devices: int = 1) -> list[dict]:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', script), *args],
                        env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines()]  # Nothing but JSON lines.


def test_step_throughput_reports_every_part_and_consistent_ratios():
  lines = _run('step_throughput.py', '--steps=2', '--rounds=1', '--standin=64', *TINY)
  matmul, = [l for l in lines if l['measure'] == 'matmul']
  summary, = [l for l in lines if l['measure'] == 'summary']
  img_s = {l['name']: l['img_per_sec'] for l in lines if l['measure'] == 'component'}
  assert sorted(img_s) == ['distill_step', 'distill_step_cached_logits', 'input_pipeline',
                           'student_step', 'teacher_forward']
  assert all(v > 0 for v in img_s.values())
  seconds = {k: 1 / v for k, v in img_s.items()}
  assert summary['step_efficiency'] == pytest.approx(
      seconds['distill_step'] / (seconds['teacher_forward'] + seconds['student_step']), rel=1e-3)
  assert summary['cached_logits_over_student_step'] == pytest.approx(
      seconds['distill_step_cached_logits'] / seconds['student_step'], rel=1e-3)
  assert summary['input_over_step'] == pytest.approx(
      img_s['input_pipeline'] / img_s['distill_step'], rel=1e-3)
  steps = {l['name']: l for l in lines if l.get('gflop_per_image')}
  # The distillation step computes a teacher forward pass and a student train step.
  assert steps['distill_step']['gflop_per_image'] == pytest.approx(
      steps['teacher_forward']['gflop_per_image'] + steps['student_step']['gflop_per_image'],
      rel=0.1)
  assert summary['distill_fraction_of_matmul'] == pytest.approx(
      summary['distill_gflop_per_sec'] / matmul['gflop_per_sec'], rel=1e-3)
  assert summary['distill_compile_s'] > 0 and summary['peak_rss_mb'] > 100
  assert summary['image_shape'] == [28, 28, 1] and summary['batch_size'] == 16
  input_line, = [l for l in lines if l.get('name') == 'input_pipeline']
  assert input_line['standin'] and input_line['dataset'] == 'fashion_mnist'


def test_scaling_summary_is_relative_to_one_device():
  lines = _run('scaling.py', '--devices=1,2', '--steps=2', '--per_device_batch=8',
               '--batch_size=16', '--measure=scaling', *TINY)
  rows = [l for l in lines if l['measure'] == 'scaling']
  summary, = [l for l in lines if l['measure'] == 'scaling_summary']
  assert {(r['devices'], r['mode'], r['global_batch']) for r in rows} == {
      (1, 'fixed_global_batch', 16), (2, 'fixed_global_batch', 16),
      (1, 'fixed_per_device_batch', 8), (2, 'fixed_per_device_batch', 16)}
  for mode in ('fixed_global_batch', 'fixed_per_device_batch'):
    img_s = {r['devices']: r['img_per_sec'] for r in rows if r['mode'] == mode}
    assert summary[mode]['2']['speedup'] == pytest.approx(img_s[2] / img_s[1], abs=0.01)
    assert summary[mode]['2']['efficiency'] == pytest.approx(img_s[2] / img_s[1] / 2, abs=0.01)


def test_shampoo_vs_adam_summary_follows_its_runs(teacher_run):
  lines = _run('shampoo_vs_adam.py', '--epochs=0.5', '--shampoo_fractions=0.5',
               '--adam_lrs=0.001,0.01', '--shampoo_lrs=0.01', '--seeds=0,1',
               f'--config={FUNMATCH_CONFIG}:teacher={teacher_run},runlocal=True', *TINY_STUDENT)
  *runs, summary = lines
  adam = [r for r in runs if r['optimizer'] == 'adam']
  shampoo = [r for r in runs if r['optimizer'] == 'shampoo']
  assert sorted((r['lr'], r['seed']) for r in adam) == [(0.001, 0), (0.001, 1), (0.01, 0),
                                                        (0.01, 1)]
  assert sorted(r['seed'] for r in shampoo) == [0, 1]
  assert {r['steps'] for r in adam} == {16} and {r['steps'] for r in shampoo} == {8}  # 1,024/32.
  mean = lambda rs: float(np.mean([r['final_accuracy'] for r in rs]))
  std = lambda rs: float(np.std([r['final_accuracy'] for r in rs], ddof=1))
  by_lr = {lr: [r for r in adam if r['lr'] == lr] for lr in (0.001, 0.01)}
  best_lr = max(by_lr, key=lambda lr: mean(by_lr[lr]))
  best = by_lr[best_lr]
  assert summary['seeds'] == 2
  assert summary['target_accuracy'] == pytest.approx(mean(best))
  assert summary['target_accuracy_std'] == pytest.approx(std(best))
  assert (summary['adam_steps'], summary['adam_best_lr']) == (16, best_lr)
  margin = mean(shampoo) - mean(best)
  assert summary['shampoo']['0.5'] == {
      'epochs': 0.25, 'steps': 8, 'best_lr': 0.01, 'accuracy': pytest.approx(mean(shampoo)),
      'accuracy_std': pytest.approx(std(shampoo)), 'margin': pytest.approx(margin),
      'margin_stderr': pytest.approx(np.sqrt(std(shampoo)**2 / 2 + std(best)**2 / 2)),
      'train_seconds': pytest.approx(np.mean([r['train_seconds'] for r in shampoo])),
      'reaches_target': margin >= 0}
  for r in runs:
    assert r['train_seconds'] == pytest.approx(r['steps'] * r['sec_per_step'])
  assert summary['shampoo_step_overhead'] == pytest.approx(
      float(np.median([r['sec_per_step'] for r in shampoo])) /
      float(np.median([r['sec_per_step'] for r in adam])))
  assert summary['shampoo_wall_fraction_of_adam'] == (
      pytest.approx(np.mean([r['train_seconds'] for r in shampoo]) /
                    np.mean([r['train_seconds'] for r in best])) if margin >= 0 else None)
