"""BiT `.npz` checkpoints in runs: ensembles of teachers at their own resolution, student
initialisation, fine-tuning with a new head, and exporting a trained student."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from big_distill import workdir as workdir_lib
from big_distill.models import bit
from tests.helpers import TEACHER_CONFIG, eval_images, init_variables, read_metrics, run_main


def _random_bit_npz(path, depth, width, num_classes, channels, seed):
  """A BiT `.npz` with random weights everywhere (the head too, so predictions differ)."""
  model = bit.ResNetV2(depth=depth, width=width, num_classes=num_classes)
  params = init_variables(model, seed, (1, 32, 32, channels))['params']
  params = jax.tree_util.tree_map(np.asarray, params)
  params['head']['kernel'] = np.random.default_rng(seed).normal(
      size=params['head']['kernel'].shape).astype(np.float32)
  bit.save_bit_npz(params, str(path))
  return params


ENSEMBLE_CONFIG = '''
import ml_collections
from big_distill import configlib

def get_config(arg=None):
  config = configlib.base_config()
  config.mode = 'distill'
  config.input.resolution = 28
  config.student = dict(model='bit', depth=14, width=0.125)
  config.teachers = [ml_collections.ConfigDict(dict(
      model='bit', depth=14, width=0.25, checkpoint=p, resolution=40)) for p in {paths!r}]
  configlib.shrink_for_local_run(config)
  config.total_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 4
  return config
'''


def test_distill_from_an_ensemble_of_npz_teachers_at_their_own_resolution(tmp_path):
  paths = [str(tmp_path / f't{i}.npz') for i in range(2)]
  teacher_params = [_random_bit_npz(p, 14, 0.25, 10, 1, seed=i) for i, p in enumerate(paths)]
  config = tmp_path / 'ensemble.py'
  config.write_text(ENSEMBLE_CONFIG.format(paths=paths))
  workdir = str(tmp_path / 'run')
  run_main(str(config), workdir)
  records = read_metrics(workdir)
  evals = [r for r in records if 'eval/teacher_accuracy' in r][-1]
  # The ensemble's accuracy, computed here independently: mean of softmaxes at 40 px.
  from big_distill.data import input_pipeline
  from big_distill import configlib
  cfg = configlib.base_config().input
  cfg.update(dict(eval_split='test[:256]', eval_batch_size=128, resolution=28))
  images, labels = eval_images(cfg, input_pipeline.get_builder('fashion_mnist'))
  resized = jax.image.resize(images, (256, 40, 40, 1), 'bilinear')
  model = bit.ResNetV2(depth=14, width=0.25, num_classes=10)
  probs = sum(jax.nn.softmax(model.apply({'params': p}, resized)) for p in teacher_params) / 2
  expected = float(np.mean(np.argmax(probs, -1) == labels))
  assert evals['eval/teacher_accuracy'] == pytest.approx(expected, abs=1 / 256 + 1e-6)


def test_student_init_from_npz_and_new_head(tmp_path):
  """`config.student.init`: all weights from the file; a 1000-class head is replaced by zeros."""
  path = tmp_path / 'pretrained.npz'
  pretrained = _random_bit_npz(path, 14, 0.125, 1000, 1, seed=3)
  workdir = str(tmp_path / 'finetune')
  run_main(f'{TEACHER_CONFIG}:runlocal=True,init={path}', workdir,
           '--config.input.resolution=28', '--config.total_steps=1', '--config.lr=0.0',
           '--config.schedule.warmup_steps=0')
  params = ocp.StandardCheckpointer().restore(os.path.join(workdir_lib.checkpoints(workdir), '1', 'params'))
  np.testing.assert_array_equal(params['conv_root']['kernel'], pretrained['conv_root']['kernel'])
  np.testing.assert_array_equal(params['block4']['unit01']['conv3']['kernel'],
                                pretrained['block4']['unit01']['conv3']['kernel'])
  assert params['head']['kernel'].shape == (256, 10)
  assert not np.any(params['head']['kernel'])
  # A resumed run starts from its checkpoint: the init file is no longer needed.
  path.unlink()
  run_main(f'{TEACHER_CONFIG}:runlocal=True,init={path}', workdir,
           '--config.input.resolution=28', '--config.total_steps=2', '--config.lr=0.0',
           '--config.schedule.warmup_steps=0', '--config.allow_config_change=True')
  resumed = ocp.StandardCheckpointer().restore(os.path.join(workdir_lib.checkpoints(workdir), '2',
                                                            'params'))
  np.testing.assert_array_equal(resumed['conv_root']['kernel'], pretrained['conv_root']['kernel'])


def test_export_student_to_bit_npz(tmp_path, distill_run):
  out = tmp_path / 'student.npz'
  proc = subprocess.run([sys.executable, '-m', 'big_distill.export', f'--workdir={distill_run}',
                         f'--output={out}'], check=True, capture_output=True, text=True)
  # The distill run kept its best checkpoint (its only eval is its last step): export says so.
  assert proc.stdout.startswith('Wrote the student of the best checkpoint, step 10 (')
  params = ocp.StandardCheckpointer().restore(
      os.path.join(workdir_lib.checkpoints(distill_run), '10', 'params'))
  with np.load(out) as f:
    assert f['resnet/head/conv2d/kernel'].shape == (1, 1, 256, 10)
  loaded = bit.load_bit_npz(str(out), bit.ResNetV2(depth=14, width=0.125, num_classes=10))
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded,
                         jax.tree_util.tree_map(np.asarray, params))


def test_a_teacher_run_that_has_not_finished_teaches_with_a_warning(tmp_path, teacher_run,
                                                                      caplog):
  """A teacher run stopped before its last step (or still training) teaches from its latest
  checkpoint, and the log says so; a finished one does not warn."""
  from big_distill import build, checkpoint
  from tests.helpers import get_config

  stopped = tmp_path / 'stopped'
  shutil.copytree(teacher_run, stopped)
  steps = checkpoint.saved_steps(str(stopped))
  shutil.rmtree(workdir_lib.checkpoints(str(stopped)) / str(steps[-1]))
  for teacher, warned in ((teacher_run, False), (stopped, True)):
    caplog.clear()
    config = get_config('distill.py', f'runlocal=True,teacher={teacher}')
    build.create_run(config, data=build.Data(10, 1, 64), teacher_params='load')
    warnings = [r.getMessage() for r in caplog.records if 'has not finished' in r.getMessage()]
    assert warnings == ([f'config.teachers[0]: {stopped} has not finished its run; its latest '
                         f'checkpoint, step {steps[-2]}, teaches.'] if warned else [])
