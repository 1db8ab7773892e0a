"""The benchmarks run and their summaries agree with their own measurements (tiny settings)."""

import json
import sys

import jax
import numpy as np
import pytest

from benchmarks import comparison
from big_distill import checkpoint, errors
from tests.helpers import FUNMATCH_CONFIG, TINY_STUDENT, command, read_metrics, run

TINY = (*TINY_STUDENT, '--config.input.batch_size=16', '--config.input.shuffle_buffer=1000')


def _run(benchmark: str, *args: str) -> list[dict]:
  proc = run(command(f'benchmarks.{benchmark}', *args), timeout=900)
  return [json.loads(line) for line in proc.stdout.splitlines()]  # Nothing but JSON lines.


def test_step_throughput_reports_every_part_and_consistent_ratios(tmp_path):
  lines = _run('step_throughput', '--steps=2', '--rounds=1', '--standin=64',
               f'--profile_dir={tmp_path}', '--peak_tflops=0.5', *TINY)
  matmul, = [l for l in lines if l['measure'] == 'matmul']
  summary, = [l for l in lines if l['measure'] == 'summary']
  img_s = {l['name']: l['img_per_sec'] for l in lines if l['measure'] == 'component'}
  assert sorted(img_s) == ['distill_step', 'distill_step_cached_logits', 'distill_step_replayed',
                           'input_pipeline',
                           'student_step', 'teacher_forward', 'teacher_forward_and_student_step',
                           'teacher_forward_then_student_step']
  assert all(v > 0 for v in img_s.values())
  seconds = {k: 1 / v for k, v in img_s.items()}
  assert summary['step_efficiency'] == pytest.approx(  # One round: its ratio.
      seconds['distill_step'] / (seconds['teacher_forward'] + seconds['student_step']), rel=1e-3)
  assert summary['step_efficiency_range'] == [summary['step_efficiency']] * 2
  assert summary['one_program_efficiency'] == pytest.approx(seconds[
      'teacher_forward_and_student_step'] / (seconds['teacher_forward'] + seconds['student_step']),
      rel=1e-3)
  assert summary['step_efficiency_in_turn'] == pytest.approx(
      seconds['distill_step'] / seconds['teacher_forward_then_student_step'], rel=1e-3)
  profiled = {l['name']: l for l in lines if l['measure'] == 'profile'}
  assert sorted(profiled) == ['distill_step', 'student_step', 'teacher_forward']
  for part in profiled.values():  # The ops' summed time covers at least the busy part of the span.
    assert 0 <= part['idle_ms'] < part['span_ms'] <= (part['op_ms'] + part['idle_ms']) * 1.0001
  profile_summary, = [l for l in lines if l['measure'] == 'profile_summary']
  assert profile_summary['op_ms_efficiency'] == pytest.approx(profiled['distill_step']['op_ms'] / (
      profiled['teacher_forward']['op_ms'] + profiled['student_step']['op_ms']), rel=1e-4)
  assert summary['cached_logits_over_student_step'] == pytest.approx(
      seconds['distill_step_cached_logits'] / seconds['student_step'], rel=1e-3)
  assert summary['input_over_step'] == pytest.approx(
      img_s['input_pipeline'] / img_s['distill_step'], rel=1e-3)
  assert summary['replayed_over_distill_step'] == pytest.approx(
      img_s['distill_step_replayed'] / img_s['distill_step'], rel=1e-3)
  assert summary['input_over_replayed_step'] == pytest.approx(
      img_s['input_pipeline'] / img_s['distill_step_replayed'], rel=1e-3)
  # Top 10 of 10 classes in float16 (2 + 2 bytes each), the rest, the index, a 16th of the ratio.
  assert summary['reinforcement_bytes_per_view'] == 10 * 4 + 2 + 4 + 4 / 16
  steps = {l['name']: l for l in lines if l.get('gflop_per_image')}
  # The distillation step computes a teacher forward pass and a student train step, as does the
  # program holding both parts independently.
  for name in ('distill_step', 'teacher_forward_and_student_step'):
    assert steps[name]['gflop_per_image'] == pytest.approx(
        steps['teacher_forward']['gflop_per_image'] + steps['student_step']['gflop_per_image'],
        rel=0.1)
  # A replayed step runs no teacher: a student step's work.
  assert steps['distill_step_replayed']['gflop_per_image'] == pytest.approx(
      steps['student_step']['gflop_per_image'], rel=0.1)
  assert summary['distill_fraction_of_matmul'] == pytest.approx(
      summary['distill_gflop_per_sec'] / matmul['gflop_per_sec'], rel=1e-3)
  assert summary['distill_fraction_of_peak'] == pytest.approx(
      summary['distill_gflop_per_sec'] / 500, rel=1e-3)
  assert summary['distill_compile_s'] > 0 and summary['peak_rss_mb'] > 100
  assert summary['image_shape'] == [28, 28, 1] and summary['batch_size'] == 16
  input_line, = [l for l in lines if l.get('name') == 'input_pipeline']
  assert input_line['standin'] and input_line['dataset'] == 'fashion_mnist'


def test_step_throughput_refuses_other_kernels_it_cannot_build_before_measuring():
  for arg, message in (('--kernels=depthwise', 'use switch=name entries'),
                       ('--kernels=depthwise=bogus', "config.kernels.depthwise='bogus'")):
    proc = run(command('benchmarks.step_throughput', arg, *TINY), check=False)
    assert proc.returncode == errors.BAD_INPUT and proc.stdout == ''
    assert proc.stderr.strip().splitlines()[-1].startswith('big_distill: error: ')
    assert message in proc.stderr


def test_step_throughput_reports_an_implementation_that_fails_and_times_the_next():
  """A kernel that fails on the device (here one made to fail) is a line with its error; the
  implementations after it are still timed."""
  code = '''if True:
    import sys
    from benchmarks import step_throughput
    original = step_throughput.alternative
    def alternative(config, data, switch, name):
      if name == 'memory':
        raise RuntimeError('RESOURCE_EXHAUSTED: out of memory\\nwhile running')
      original(config, data, switch, name)
    step_throughput.alternative = alternative
    sys.argv = ['step_throughput', *sys.argv[1:]]
    step_throughput.cli.run(step_throughput.main, config='configs/distill.py:teacher_model=bit')'''
  lines = [json.loads(l) for l in run([sys.executable, '-c', code, '--input=false', '--rounds=1',
                                       '--steps=1', '--components=teacher_forward',
                                       '--matmul_size=64', '--channels=1', '--num_classes=10',
                                       '--kernels=scheduler=memory,scheduler=default',
                                       *TINY]).stdout.splitlines()]
  failed, timed = [l for l in lines if 'kernels' in l]
  assert failed == {'measure': 'component', 'name': 'distill_step',
                    'kernels': {'scheduler': 'memory'},
                    'error': 'RuntimeError: RESOURCE_EXHAUSTED: out of memory'}
  assert timed['kernels'] == {'scheduler': 'default'} and timed['img_per_sec'] > 0


def test_scaling_summary_is_relative_to_one_device():
  lines = _run('scaling', '--devices=1,2', '--steps=2', '--per_device_batch=8',
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


def test_memory_parts_fit_and_remat():
  """XLA's memory analysis of the distillation step for a deep-enough tiny student (R26 x1/8):
  the total is its parts', remat keeps fewer temporaries, the largest batch the fit predicts for
  a device size compiles within 5% of the predicted total, and the batches that bracket the
  size are the compiled ones nearest to it."""
  gib, capacity = '0.01', 0.01 * 2**30
  lines = _run('scaling', '--measure=memory', '--memory_batches=16,32', f'--device_gib={gib}',
               '--memory_checks=1', '--config.student.model=bit:depth=26,width=0.125',
               '--config.input.resolution=28')
  rows = [l for l in lines if l['measure'] == 'memory']
  fits = {l['remat']: l for l in lines if l['measure'] == 'memory_fit'}
  for r in rows:
    assert r['total_bytes'] == (r['argument_bytes'] + r['output_bytes'] - r['alias_bytes'] +
                                r['temp_bytes'] + r['generated_code_bytes'])
    assert r['alias_bytes'] > 0  # The donated state.
  temp = {(r['remat'], r['per_device_batch']): r['temp_bytes'] for r in rows}
  for batch in (16, 32):
    assert temp[True, batch] < temp[False, batch]
  for remat, fit in fits.items():
    compiled = [r for r in rows if r['remat'] == remat]
    check, = [r for r in compiled if 'device_gib' in r]
    assert fit['predicted_largest_batch'] == {gib: check['per_device_batch']}
    assert check['total_bytes'] == pytest.approx(check['predicted_total_bytes'], rel=0.05)
    assert fit['largest_batch'] == {gib: max(
        r['per_device_batch'] for r in compiled if r['total_bytes'] <= capacity)}
    assert fit['smallest_batch_over'] == {gib: min(
        (r['per_device_batch'] for r in compiled if r['total_bytes'] > capacity), default=None)}
  assert fits[True]['largest_batch'][gib] > fits[False]['largest_batch'][gib]


def test_shampoo_vs_adam_runs_each_setting_through_the_training_loop(teacher_run):
  lines = _run('shampoo_vs_adam', '--epochs=0.5', '--shampoo_fractions=0.5',
               '--adam_lrs=0.01', '--shampoo_lrs=0.01', '--seeds=1',
               f'--config={FUNMATCH_CONFIG}:teacher={teacher_run},runlocal=True', *TINY_STUDENT)
  adam, shampoo, summary = lines
  assert (adam['optimizer'], adam['steps'], shampoo['optimizer'], shampoo['steps']) == (
      'adam', 16, 'shampoo', 8)  # 1,024 examples in batches of 32.
  for r in (adam, shampoo):
    assert r['seed'] == 1 and 0 < r['final_accuracy'] < 1
    assert r['train_seconds'] == pytest.approx(r['steps'] * r['sec_per_step'])
  assert summary == comparison.summarize(
      [{**adam, 'fraction': 1.0}, {**shampoo, 'fraction': 0.5}], 1)


def test_comparison_summary_against_a_hand_computation():
  def run(optimizer, fraction, lr, seed, accuracy, sec_per_step):
    steps = int(100 * fraction)
    return {'optimizer': optimizer, 'fraction': fraction, 'lr': lr, 'seed': seed,
            'epochs': 8 * fraction, 'steps': steps, 'final_accuracy': accuracy,
            'sec_per_step': sec_per_step, 'train_seconds': steps * sec_per_step}

  runs = [run('adam', 1.0, 0.01, 0, 0.90, 1.0), run('adam', 1.0, 0.01, 1, 0.92, 1.2),
          run('adam', 1.0, 0.1, 0, 0.89, 1.0), run('adam', 1.0, 0.1, 1, 0.90, 1.0),
          run('adam', 0.5, 0.01, 0, 0.99, 1.0), run('adam', 0.5, 0.01, 1, 0.99, 1.0),
          run('shampoo', 0.5, 0.03, 0, 0.915, 2.0), run('shampoo', 0.5, 0.03, 1, 0.925, 2.0),
          run('shampoo', 0.25, 0.03, 0, 0.80, 2.0), run('shampoo', 0.25, 0.03, 1, 0.82, 2.0),
          run('shampoo', 0.25, 0.1, 0, 0.85, 2.0), run('shampoo', 0.25, 0.1, 1, 0.87, 2.0),
          run('adam', 1.0, 0.003, 0, 0.88, 1.0), run('adam', 1.0, 0.003, 1, 0.88, 1.0)]
  summary = comparison.summarize(runs, 2)
  # The target is Adam's best full-length setting (lr 0.01: mean 0.91), not its half length.
  assert summary['target_accuracy'] == pytest.approx(0.91)
  assert summary['target_accuracy_std'] == pytest.approx(np.sqrt(2) * 0.01)
  assert (summary['adam_steps'], summary['adam_best_lr']) == (100, 0.01)
  # Adam's 0.01 lies between 0.003 and 0.1; the half-length Adam grid (0.01 alone) is no target.
  assert summary['adam_best_lr_bracketed']
  assert summary['adam_train_seconds'] == pytest.approx(110.0)
  half, quarter = summary['shampoo']['0.5'], summary['shampoo']['0.25']
  assert half['margin'] == pytest.approx(0.01) and half['reaches_target']
  assert half['margin_stderr'] == pytest.approx(np.sqrt(0.00005 / 2 + 0.0002 / 2))  # var/seeds
  assert (quarter['best_lr'], quarter['reaches_target']) == (0.1, False)
  # Neither Shampoo grid has a learning rate above its best (0.03 alone; 0.1 the top of 0.03, 0.1).
  assert not half['best_lr_bracketed'] and not quarter['best_lr_bracketed']
  assert quarter['margin'] == pytest.approx(-0.05)
  assert summary['shampoo_wall_fraction_of_adam'] == pytest.approx(100.0 / 110.0)
  assert summary['shampoo_step_overhead'] == pytest.approx(2.0)


def test_shampoo_vs_adam_sweep_reports_every_setting_at_the_end_of_its_schedule(teacher_run):
  lines = _run('shampoo_vs_adam_sweep', '--epochs=2', '--train_examples=128',
               '--adam_fractions=1,0.5', '--shampoo_fractions=0.5', '--adam_lrs=0.01',
               '--shampoo_lrs=0.01', '--seeds=0,1', '--timing_steps=2',
               f'--config={FUNMATCH_CONFIG}:teacher={teacher_run},runlocal=True', *TINY_STUDENT)
  runs = [l for l in lines if 'final_accuracy' in l]
  sweeps = {l['optimizer']: l for l in lines if l.get('measure') == 'sweep'}
  # 128 images in batches of 32: 4 steps per epoch; Adam 8 and 4 steps, Shampoo 4.
  assert sorted((r['optimizer'], r['steps'], r['seed']) for r in runs) == sorted(
      [('adam', s, seed) for s in (8, 4) for seed in (0, 1)] +
      [('shampoo', 4, seed) for seed in (0, 1)])
  assert sweeps['adam']['settings'] == 4 and sweeps['shampoo']['settings'] == 2
  assert len({r['teacher_accuracy'] for r in runs}) == 1 and 0 < runs[0]['teacher_accuracy'] < 1
  for r in runs:
    assert 0 < r['final_accuracy'] < 1 and r['sec_per_step'] > 0
    assert r['train_seconds'] == pytest.approx(r['steps'] * r['sec_per_step'])
  assert lines[-1] == comparison.summarize(runs, 2)


def test_students_reports_each_runs_student(distill_run):
  line, = _run('students', f'--workdirs={distill_run}', '--rounds=2', '--batch=4')
  final = [r for r in read_metrics(distill_run) if 'eval/student_accuracy' in r][-1]
  assert (line['model'], line['steps']) == ('bit:depth=14,width=0.125', 10)
  assert line['student_accuracy'] == final['eval/student_accuracy']
  assert line['agreement_top1'] == final['eval/agreement_top1']
  # R14 x1/8 for 1-channel images and 10 classes, counted from BiT's definition.
  assert line['params_m'] == pytest.approx(sum(np.size(x) for x in jax.tree_util.tree_leaves(
      checkpoint.read_variables(distill_run)[0]['params'])) / 1e6)
  assert line['gflop_per_image'] > 0 and line['latency_ms_batch1'] > 0
  assert line['latency_ms_per_image_batch4'] > 0 and line['train_img_per_sec'] > 0


def test_versus_pytorch_times_the_same_models_on_the_same_weights():
  pytest.importorskip('timm')
  lines = _run('versus_pytorch', '--teacher=vit_tiny_patch16_224', '--student=vit_tiny_patch16_224',
               '--resolution=32', '--batch_size=2', '--num_classes=10', '--rounds=2', '--steps=1',
               '--matmul=128')
  setting, = [l for l in lines if l['measure'] == 'setting']
  summary, = [l for l in lines if l['measure'] == 'summary']
  ours, theirs = setting['big_distill'][''], setting['pytorch']  # One setup: XLA's defaults.
  assert ours['teacher_params'] == theirs['teacher_params'] == 5_489_482  # timm's count at 32 px, 10 classes.
  assert ours['student_params'] == theirs['student_params']
  # The same timm weights, read by big_distill from the file the PyTorch worker wrote.
  assert summary['teacher_logp_max_difference'] < 1e-4
  assert summary['student_logp_max_difference'] < 1e-4
  assert summary['setup'] == ''
  components = {(l['framework'], l['name']): l['img_per_sec'] for l in lines
                if l['measure'] == 'component'}
  assert sorted(components) == sorted((f, p) for f in ('big_distill', 'pytorch')
                                      for p in ('teacher_forward', 'student_step', 'distill_step'))
  for part in ('teacher_forward', 'student_step', 'distill_step', 'matmul'):
    low, high = summary[f'{part}_over_pytorch_range']
    assert 0 < low <= summary[f'{part}_over_pytorch'] <= high
  matmul = {l['framework']: l for l in lines if l['measure'] == 'matmul'}
  assert sorted(matmul) == ['big_distill', 'pytorch']
  assert all(l['size'] == 128 and l['gflop_per_sec'] > 0 for l in matmul.values())


def test_a_distill_step_builds_and_runs_without_tensorflow():
  """Accelerator images bring JAX but not TensorFlow or TFDS: the accelerator check's cases
  (`step_throughput --input=false`) import, build and time a distillation step without them."""
  code = '''if True:
    import runpy, sys
    for name in ('tensorflow', 'tensorflow_datasets'):
      sys.modules[name] = None  # Importing it fails, as where it is not installed.
    sys.argv = ['step_throughput', '--input=false', '--components=distill_step', '--rounds=1',
                '--steps=1', '--matmul_size=64', '--channels=1', '--num_classes=3',
                '--config=configs/distill.py:teacher=unused,teacher_model=bit,resolution=16',
                '--config.input.batch_size=2']
    runpy.run_module('benchmarks.step_throughput', run_name='__main__')'''
  lines = [json.loads(l) for l in run([sys.executable, '-c', code], fresh=True).stdout.splitlines()]
  step, = [l for l in lines if l.get('name') == 'distill_step']
  assert step['img_per_sec'] > 0 and step['batch_size'] == 2 and step['image_shape'] == [16, 16, 1]


def test_accelerator_check_writes_every_case_in_tiny_mode(tmp_path):
  out = tmp_path / 'accelerator.json'
  _run('accelerator', f'--out={out}', '--tiny', '--rounds=1', '--steps=1')
  report = json.loads(out.read_text())
  assert report['tiny'] and report['backend'] == 'cpu' and report['peak_tflops'] is None
  for case in report['cases'].values():
    for part in ('teacher_forward', 'student_step', 'distill_step'):
      assert case[f'{part}_img_per_sec'] > 0 and case[f'{part}_compile_s'] > 0
    assert case['distill_memory_mb'] > 0 and case['image_shape'] == [32, 32, 3]
    low, high = case['step_efficiency_range']
    assert low <= case['step_efficiency'] <= high
  # runlocal's models: BiT's tiny teacher (the paper's R152x2 named), the families' demo students.
  assert report['cases']['paper']['teachers'][0].startswith('bit:depth=14,width=0.25')
  # Each switch's implementations side by side; the cases hold 'auto''s, the CPU's.
  assert report['kernels']['depthwise']['auto'] == 'taps'
  assert report['kernels']['attention']['auto'] == 'heads_first'
  assert set(report['kernels']['depthwise']) == {'auto', 'case', 'taps', 'grouped'}
  assert set(report['kernels']['attention']) == {'auto', 'case', 'einsum', 'fused', 'heads_first'}
  assert report['kernels']['depthwise']['taps'] == report['cases']['mobilenet_v3'][
      'distill_step_img_per_sec']
  assert report['input']['img_per_sec'] > 0 and report['input']['cores'] >= 1
  paper = report['cases']['paper']  # Also replayed: its ratio to the live step, one round.
  assert paper['replayed_over_distill_step'] == pytest.approx(
      paper['distill_step_replayed_img_per_sec'] / paper['distill_step_img_per_sec'], rel=1e-3)
  assert 'distill_step_replayed_img_per_sec' not in report['cases']['vit_b16']
  # Written after each case: complete once the last one is in, each case with its own time.
  assert report['complete'] and list(report['cases']) == ['paper', 'vit_b16', 'mobilenet_v3']
  assert 0 < sum(c['seconds'] for c in report['cases'].values()) <= report['seconds']


def test_accelerator_check_records_a_failed_case_and_runs_the_next(tmp_path):
  """A case whose process fails (here each one made to fail, naming its case) gets the error, and
  the next case still runs; the file is complete once every case has had its turn."""
  out = tmp_path / 'accelerator.json'
  code = '''if True:
    import sys
    from benchmarks import accelerator
    def step_throughput(arguments, *flags_, parts):
      raise RuntimeError(f'step_throughput {arguments!r} failed (1):\\nRESOURCE_EXHAUSTED')
    accelerator.step_throughput = step_throughput
    sys.argv = ['accelerator', *sys.argv[1:]]
    accelerator.cli.run(accelerator.main)'''
  run([sys.executable, '-c', code, f'--out={out}', '--tiny', '--cases=vit_b16,mobilenet_v3'])
  report = json.loads(out.read_text())
  assert report['complete'] and list(report['cases']) == ['vit_b16', 'mobilenet_v3']
  for case, model in zip(report['cases'].values(), ('vit_base_patch16_224', 'mobilenetv3_large')):
    assert case['error'].startswith('step_throughput ') and model in case['error'], case
    assert case['error'].endswith('failed (1):\nRESOURCE_EXHAUSTED') and case['seconds'] >= 0
  assert report['kernels'] == {} and 'input' not in report


def test_accelerator_check_refuses_an_unknown_case_before_running_any(tmp_path):
  out = tmp_path / 'accelerator.json'
  proc = run(command('benchmarks.accelerator', f'--out={out}', '--tiny', '--cases=paper,vit'),
             check=False)
  assert proc.returncode == errors.BAD_INPUT and proc.stdout == '' and not out.exists()
  assert proc.stderr.strip().splitlines()[-1] == (
      'big_distill: error: --cases=paper,vit: name one or more of paper, vit_b16, mobilenet_v3.')


def test_compile_time_compiles_once_and_loads_from_the_cache_the_second_time():
  lines = _run('compile_time', '--families=bit', '--tiny', '--batch_size=2')
  pair, summary = lines
  assert pair['teacher'] == pair['student'] == 'bit:depth=14,width=0.25'
  # The second process loads every program the first one compiled, the step in less time than
  # compiling it (both lower it first).
  assert pair['programs'] > 0 and pair['compiled_again'] == 0
  assert 0 < pair['cached_compile_s'] < pair['compile_s']
  assert summary == {'measure': 'summary', **{f'max_{k}': pair[k] for k in (
      'compile_s', 'cached_compile_s', 'ready_s', 'cached_ready_s')}}
  assert 0 < pair['cached_ready_s'] < pair['ready_s']
