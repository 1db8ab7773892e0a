"""End to end through `python -m big_distill.main`: both modes, checkpoints, resume, 1 vs 4 devices."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from big_distill import workdir as workdir_lib
from big_distill import models
from tests.helpers import (FUNMATCH_CONFIG, SGD_6, TEACHER_CONFIG, TINY_STUDENT, TINY_TEACHER,
                           metric, read_metrics, run_main)

TRAIN_KEYS = {'train/loss', 'train/learning_rate', 'train/img_per_sec', 'train/grad_norm',
              'train/param_norm'}
DISTILL_EVAL_KEYS = {'eval/student_accuracy', 'eval/teacher_accuracy', 'eval/agreement_top1',
                     'eval/agreement_top5', 'eval/kl'}


def _restore_params(workdir: str, step: int):
  path = os.path.join(workdir_lib.checkpoints(workdir), str(step), 'params')
  return ocp.StandardCheckpointer().restore(path)


def test_supervised_run_writes_metrics_config_and_checkpoints(teacher_run):
  records = read_metrics(teacher_run)
  keys = set().union(*records)
  assert TRAIN_KEYS <= keys and {'eval/accuracy', 'eval/loss'} <= keys
  assert sorted(metric(records, 'train/loss')) == [5, 10]
  assert 0.0 < metric(records, 'eval/accuracy')[10] <= 1.0
  assert any('steps_per_sec' in r for r in records)  # clu's progress report.
  config = workdir_lib.read_config(teacher_run)
  assert config['mode'] == 'supervised' and config['student']['model'] == 'bit:depth=14,width=0.25'
  assert config['total_steps'] == 10
  assert '10' in os.listdir(str(workdir_lib.checkpoints(teacher_run)))
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(teacher_run))
  params = _restore_params(teacher_run, 10)
  assert params['head']['kernel'].shape == (512, 10)  # R14 x 1/4: 4 * 8 * 16 channels.


def test_distill_run_trains_only_the_student(distill_run, teacher_run):
  records = read_metrics(distill_run)
  assert TRAIN_KEYS | DISTILL_EVAL_KEYS <= set().union(*records)
  evals = [r for r in records if 'eval/kl' in r][-1]
  assert 0.0 <= evals['eval/agreement_top1'] <= evals['eval/agreement_top5'] <= 1.0
  assert evals['eval/kl'] >= 0.0
  # The teacher's accuracy is that of the supervised run's final checkpoint on the same data.
  teacher_eval = metric(read_metrics(teacher_run), 'eval/accuracy')[10]
  assert abs(evals['eval/teacher_accuracy'] - teacher_eval) < 1e-6
  # Checkpoints hold the student (R14 x 1/8) alone: same tree as a fresh student.
  params = _restore_params(distill_run, 10)
  student = models.resolve('bit:depth=14,width=0.125').create(10)
  expected = jax.eval_shape(student.init, jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1)))
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      expected['params'])
  assert jax.tree_util.tree_map(np.shape, params) == jax.tree_util.tree_map(
      lambda x: x.shape, expected['params'])
  opt_state = ocp.StandardCheckpointer().restore(
      os.path.join(workdir_lib.checkpoints(distill_run), '10', 'opt_state'))
  n_student = sum(x.size for x in jax.tree_util.tree_leaves(params))
  n_opt = sum(np.size(x) for x in jax.tree_util.tree_leaves(opt_state))
  assert n_opt < 2 * n_student + 10  # Adam's two moments of the student, nothing of the teacher.


def test_resume_continues_from_the_latest_checkpoint(tmp_path, teacher_run):
  """Drop the final checkpoint, rerun the same command: it resumes at step 5 and ends equal."""
  workdir = str(tmp_path / 'resume')
  shutil.copytree(teacher_run, workdir)
  shutil.rmtree(os.path.join(workdir_lib.checkpoints(workdir), '10'))
  proc = run_main(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER)
  assert 'Resuming from the checkpoint of step 5' in proc.stderr
  resumed, original = _restore_params(workdir, 10), _restore_params(teacher_run, 10)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         resumed, original)
  np.testing.assert_allclose(metric(read_metrics(workdir), 'train/loss')[10],
                             metric(read_metrics(teacher_run), 'train/loss')[10], rtol=1e-5)


def test_four_devices_match_one_device(tmp_path, teacher_run, sgd_distill_run_4_devices):
  """Both modes with the batch sharded over 4 CPU devices give the losses of 1 device.

  SGD, because Adam turns the rounding differences of another summation order into
  O(learning-rate) steps on weights whose gradients are ~0, which hides real differences. The
  distillation on 4 devices is the session's (`conftest.sgd_distill_run_4_devices`: this
  command, checkpointing every step).
  """
  for name, config, overrides in (
      ('supervised', f'{TEACHER_CONFIG}:runlocal=True', TINY_TEACHER),
      ('distill', f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}', TINY_STUDENT)):
    losses = []
    for devices in (1, 4):
      workdir = str(tmp_path / f'{name}{devices}')
      if (name, devices) == ('distill', 4):
        workdir = sgd_distill_run_4_devices
      else:
        run_main(config, workdir, *overrides, *SGD_6, devices=devices)
      losses.append(metric(read_metrics(workdir), 'train/loss'))
    assert sorted(losses[0]) == sorted(losses[1]) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([losses[1][s] for s in range(1, 7)],
                               [losses[0][s] for s in range(1, 7)], rtol=2e-4, err_msg=name)


def test_compile_time_is_logged_and_the_compilation_cache_is_reused(tmp_path):
  """The first step's compile time lands in metrics.jsonl; a second run of the same program
  (a new workdir, the same --compilation_cache_dir) loads the compiled step from the cache."""
  cache, runs = str(tmp_path / 'xla_cache'), []
  for name in ('first', 'second'):
    workdir = str(tmp_path / name)
    runs.append(run_main(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER,
                         '--config.total_steps=3', f'--compilation_cache_dir={cache}',
                         JAX_LOG_COMPILES='1'))
    compile_seconds = metric(read_metrics(workdir), 'train/compile_seconds')
    assert list(compile_seconds) == [1] and compile_seconds[1] > 0
  assert any(f.endswith('-cache') for f in os.listdir(cache))
  assert 'Persistent compilation cache hit' not in runs[0].stderr
  assert "Persistent compilation cache hit for 'jit_train_step'" in runs[1].stderr


def test_profile_steps_write_a_trace(tmp_path):
  workdir = str(tmp_path / 'profiled')
  run_main(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER, '--config.total_steps=6',
           '--config.profile.first_step=2', '--config.profile.num_steps=2')
  traces = [f for _, _, files in os.walk(os.path.join(workdir, 'plugins', 'profile'))
            for f in files if f.endswith('.xplane.pb')]
  assert len(traces) == 1
