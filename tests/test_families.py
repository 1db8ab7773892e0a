"""Every model family as student and as teacher, end to end through `python -m big_distill.main`:
a ViT and a MobileNetV3 (BatchNorm) student of a BiT teacher, a ViT teacher of a BiT student, and
a killed MobileNetV3 run that resumes bit-identically (its batch statistics included)."""

import signal
import time

import jax
import numpy as np

import ml_collections
import pytest

from big_distill import build, checkpoint, errors, workdir
from tests.helpers import (FUNMATCH_CONFIG, get_config, main_command, read_metrics, run, run_main,
                           saved_steps, shared_run, start)

AT_28 = ('--config.input.resolution=28',)  # The teacher run's own resolution.
VIT_STUDENT = ('--config.student.model=vit:patch_size=7,width=32,depth=2,num_heads=2,mlp_dim=64',)

VIT_TEACHER_CONFIG = '''
import ml_collections
from big_distill import configlib


def get_config(arg=None):
  """A tiny ViT: trained on labels (arg 'teacher'), or teaching a tiny BiT (arg: its run)."""
  config = configlib.base_config()
  vit = dict(model='vit', patch_size=7, width=32, depth=2, num_heads=2, mlp_dim=64,
             pool_type='tok')
  if arg == 'teacher':
    config.mode = 'supervised'
    config.student = ml_collections.ConfigDict({**vit, 'init': ''})
  else:
    configlib.distillation(config, 'funmatch')
    config.teachers = [ml_collections.ConfigDict({**vit, 'checkpoint': arg, 'resolution': 28})]
    config.student.model = 'bit:depth=14,width=0.125'
  configlib.shrink_for_local_run(config)
  config.input.resolution = 28
  return config
'''


def _final_eval(workdir_: str) -> dict[str, float]:
  return [r for r in read_metrics(workdir_) if 'eval/student_accuracy' in r][-1]


MOBILENET_CONFIG = 'runlocal=True,teacher={},student=mobilenet_v3'
# 24 steps, a checkpoint every 3: long enough to kill the run between two of them.
MOBILENET_RUN = (*AT_28, '--config.total_steps=24', '--config.checkpoint_every_steps=3',
                 '--config.eval_every_steps=24', '--config.log_every_steps=3')


@pytest.fixture(name='mobilenet_run')
def fixture_mobilenet_run(tmp_path_factory, teacher_run):
  """The demo's MobileNetV3 student of `teacher_run`, 24 steps: both tests' run."""
  return shared_run(tmp_path_factory, 'mobilenet_v3_student', lambda workdir_: run_main(
      f'{FUNMATCH_CONFIG}:{MOBILENET_CONFIG.format(teacher_run)}', workdir_, *MOBILENET_RUN))


def test_vit_and_mobilenet_students_of_a_bit_teacher(tmp_path, teacher_run, mobilenet_run):
  vit_run = str(tmp_path / 'vit')
  run_main(f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run},student=vit', vit_run, *AT_28,
           *VIT_STUDENT)
  for student, run_dir in (('vit', vit_run), ('mobilenet_v3', mobilenet_run)):
    assert workdir.read_config(run_dir)['student']['model'].startswith(f'{student}:')
    evals = _final_eval(run_dir)
    assert 0 <= evals['eval/student_accuracy'] <= 1 and evals['eval/kl'] >= 0
    variables = checkpoint.read_variables(run_dir, 'latest')[0]
    assert ('batch_stats' in variables) == (student == 'mobilenet_v3')


def test_a_vit_teacher_teaches_a_bit_student(tmp_path):
  config = tmp_path / 'vit_teacher.py'
  config.write_text(VIT_TEACHER_CONFIG)
  teacher, student = str(tmp_path / 'teacher'), str(tmp_path / 'student')
  run_main(f'{config}:teacher', teacher)
  run_main(f'{config}:{teacher}', student)
  teacher_accuracy = [r for r in read_metrics(teacher) if 'eval/accuracy' in r][-1]
  # The distillation's teacher accuracy is the ViT run's own, on the same eval split.
  assert abs(_final_eval(student)['eval/teacher_accuracy'] -
             teacher_accuracy['eval/accuracy']) < 1e-6


def test_a_killed_mobilenet_run_resumes_bit_identically(tmp_path, teacher_run, mobilenet_run):
  """Parameters and BatchNorm statistics end as those of an uninterrupted run."""
  config = f'{FUNMATCH_CONFIG}:{MOBILENET_CONFIG.format(teacher_run)}'
  long, whole, killed = MOBILENET_RUN, mobilenet_run, str(tmp_path / 'killed')
  proc = start(main_command(config, killed, *long))
  deadline = time.time() + 300
  while not saved_steps(killed) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, 'the run ended before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert max(saved_steps(killed)) < 24
  run(main_command(config, killed, *long))
  ours, theirs = (checkpoint.read_variables(w, 'latest')[0] for w in (killed, whole))
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
    assert a.dtype == b.dtype and np.array_equal(a, b)
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
  assert 'batch_stats' in ours


def _spec_run(student: str, teacher: str, **student_keys):
  """The run a distill config builds with these model entries (random teacher weights)."""
  config = get_config('distill.py', f'teacher=unused,teacher_model={teacher}')
  config.student = ml_collections.ConfigDict(dict(model=student, init='', **student_keys))
  config.input.resolution = 224
  return build.create_run(config, data=build.Data(10, 3, 64), teacher_params='random')


def _parameters(tree) -> int:
  return sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def test_a_spec_builds_exactly_what_it_names():
  """`--config.student.model=timm:mobilenetv3_large_100` on the demo config is timm's
  MobileNetV3-Large 1.0, and `teachers[0].model=timm:vit_small_patch16_224` a ViT-S/16 (as timm
  counts them, with 10 classes); keys of an entry that contradict its model are refused by name."""
  run = _spec_run('timm:mobilenetv3_large_100', 'timm:vit_small_patch16_224')
  assert (run.student.variant, run.student.width) == ('large', 1.0)
  assert _parameters(run.abstract_state.params) == 4_214_842
  assert run.teachers.models[0].dims() == (16, 384, 12, 1536, 6)
  assert run.teachers.models[0].pool_type == 'tok'
  assert _parameters(run.teacher_params[0]['params']) == 21_669_514
  with pytest.raises(errors.BadInput, match=(
      r"^config.student: model='timm:mobilenetv3_large_100' is a mobilenet_v3 model with "
      r"variant='large', width=1.0, normalization='imagenet'; the entry also sets "
      r"variant='small', width=0.5, which contradict it\.")):
    _spec_run('timm:mobilenetv3_large_100', 'bit', variant='small', width=0.5)
  config = get_config('distill.py', 'teacher=unused,teacher_model=timm:vit_small_patch16_224')
  config.teachers[0].update(patch_size=8, pool_type='gap', normalization='minus_one_to_one')
  with pytest.raises(errors.BadInput, match=r"^config.teachers\[0\]: .* the entry also sets "
                     r"patch_size=8, pool_type='gap', which contradict it\."):
    build.create_run(config, data=build.Data(10, 3, 64), teacher_params='random')
