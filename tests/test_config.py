"""Config files, `:k=v` arguments and command-line overrides."""

import os
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from big_distill import configlib, errors, workdir
from tests.helpers import ROOT, TEACHER_CONFIG, TINY_TEACHER, get_config, run_main


def test_parse_arg_types_and_errors():
  arg = configlib.parse_arg('epochs=2.5,runlocal,name=x', epochs=1.0, runlocal=False,
                            name=None, steps=3)
  assert arg.epochs == 2.5 and arg.runlocal is True and arg.name == 'x' and arg.steps == 3
  assert configlib.parse_arg('steps=7', steps=3).steps == 7
  assert configlib.parse_arg(None, steps=3).steps == 3
  with pytest.raises(ValueError, match="Unknown config argument 'epoch'"):
    configlib.parse_arg('epoch=2', epochs=1.0)
  with pytest.raises(ValueError, match="runlocal='maybe' is not a bool"):
    configlib.parse_arg('runlocal=maybe', runlocal=False)


def test_overrides_reach_the_resolved_config(tmp_path):
  """`:k=v` and `--config.a.b=v` both land in DIR/config.json, which drives the run."""
  run = str(tmp_path / 'run')
  run_main(f'{TEACHER_CONFIG}:runlocal=True', run, *TINY_TEACHER, '--config.total_steps=3',
           '--config.lr=0.0123', '--config.input.batch_size=16',
           '--config.optimizer.name=sgd', '--config.log_every_steps=3')
  config = workdir.read_config(run)
  assert config['lr'] == 0.0123 and config['total_steps'] == 3
  assert config['input']['batch_size'] == 16 and config['optimizer']['name'] == 'sgd'
  assert config['input']['train_split'] == 'train[:1024]'  # From runlocal=True.
  assert [r['step'] for r in workdir.read_metrics(run) if 'train/loss' in r] == [3]


def test_bad_override_fails_with_one_line_and_writes_nothing(tmp_path):
  run = tmp_path / 'bad'
  proc = run_main(TEACHER_CONFIG, str(run), '--config.no_such_key=1', check=False)
  assert proc.returncode == errors.BAD_INPUT
  assert 'no_such_key' in proc.stderr
  assert not run.exists()
  proc = run_main(TEACHER_CONFIG, str(run), '--config.input.batch_size=100', devices=3,
                  check=False)
  assert proc.returncode == errors.BAD_INPUT
  assert ('big_distill: error: input.batch_size=100 is not divisible by the 3 devices; '
          'use a multiple of 3.') in proc.stderr
  assert not run.exists()


def test_a_workdir_continues_with_other_logging_but_not_other_training(tmp_path):
  config = configlib.base_config()
  workdir.write_config(config, str(tmp_path))
  logging_only = config.copy_and_resolve_references()
  logging_only.update(eval_every_steps=7, log_every_steps=3, checkpoint_every_steps=9,
                      keep_checkpoints=1)
  logging_only.input.prefetch = 4
  workdir.check(logging_only, str(tmp_path))
  other = config.copy_and_resolve_references()
  other.input.batch_size = 64
  with pytest.raises(ValueError, match=r'holds a run of another config \(differs in: '
                                       r'input.batch_size\)'):
    workdir.check(other, str(tmp_path))


@pytest.mark.parametrize('name', ['fashion_mnist_funmatch.py', 'imagenet_funmatch.py',
                                  'flowers_funmatch.py'])
def test_a_teachers_resolution_is_set_from_the_command_line(name, monkeypatch):
  assert get_config(name).teachers[0].resolution is None  # The student's.
  argv = ['prog', f'--config={os.path.join(ROOT, "configs", name)}',
          '--config.teachers[0].resolution=384']
  monkeypatch.setattr(sys, 'argv', argv)  # config_flags finds its overrides in sys.argv.
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values)
  flag_values(argv)
  assert flag_values.config.teachers[0].resolution == 384


@pytest.mark.parametrize('name', ['fashion_mnist_funmatch.py', 'imagenet_funmatch.py'])
def test_an_ensemble_of_teachers_from_the_config_argument(name, monkeypatch):
  """`teacher=A+B` lists two teachers, which the command line can then change one by one."""
  config = get_config(name, 'teacher=a.npz+b.npz')
  assert [t.checkpoint for t in config.teachers] == ['a.npz', 'b.npz']
  assert config.teachers[0].to_dict() == {**config.teachers[1].to_dict(), 'checkpoint': 'a.npz'}
  argv = ['prog', f'--config={os.path.join(ROOT, "configs", name)}:teacher=a.npz+b.npz',
          '--config.teachers[1].resolution=384', '--config.teachers[1].depth=50']
  monkeypatch.setattr(sys, 'argv', argv)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values)
  flag_values(argv)
  second = flag_values.config.teachers[1]
  assert (second.checkpoint, second.resolution, second.depth) == ('b.npz', 384, 50)
  assert flag_values.config.teachers[0].resolution is None


def test_the_demo_teacher_of_each_family_trains_and_teaches_as_one_entry():
  """`model=` of the teacher config and `teacher_model=` of the student config name the same
  model, and only the models of `configlib.DEMO_TEACHERS`."""
  for family, model in configlib.DEMO_TEACHERS.items():
    trained = get_config('fashion_mnist_teacher.py', f'model={family}').student.to_dict()
    teaching = get_config('fashion_mnist_funmatch.py', f'teacher_model={family},teacher=t')
    assert trained == {**model, 'init': ''}
    assert teaching.teachers[0].to_dict() == {**model, 'checkpoint': 't', 'resolution': None}
  for name, arg in (('fashion_mnist_teacher.py', 'model=resnet'),
                    ('fashion_mnist_funmatch.py', 'teacher_model=resnet')):
    with pytest.raises(errors.BadInput, match=f"{arg.split('=')[0]}='resnet'; use one of bit, vit"):
      get_config(name, arg)
