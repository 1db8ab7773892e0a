"""Config files, `:k=v` arguments, command-line overrides and dry runs."""

import json
import os

import jax
import numpy as np
import pytest

from big_distill import build, cli, configlib, errors, models, workdir
from tests.helpers import TEACHER_CONFIG, TINY_TEACHER, get_config, run_main


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
  # A model spec keeps its commas; a misspelt argument after a plain value is still refused.
  arg = configlib.parse_arg('teacher_model=bit:depth=50,width=1,student=timm:mobilenetv3_large_100,'
                            'runlocal', teacher_model='', student='', runlocal=False)
  assert (arg.teacher_model, arg.student, arg.runlocal) == (
      'bit:depth=50,width=1', 'timm:mobilenetv3_large_100', True)
  with pytest.raises(ValueError, match="Unknown config argument 'widht'"):
    configlib.parse_arg('student=timm:mobilenetv3_large_100,widht=1', student='')


def test_cpu_xla_flags_join_the_users_and_never_replace_them(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  cli.set_cpu_xla_flags()
  assert os.environ['XLA_FLAGS'].split() == ['--xla_force_host_platform_device_count=2',
                                             *cli.CPU_XLA_FLAGS]
  cli.set_cpu_xla_flags()  # Once only.
  assert len(os.environ['XLA_FLAGS'].split()) == 1 + len(cli.CPU_XLA_FLAGS)
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_use_fusion_emitters=true')  # The user's choice.
  cli.set_cpu_xla_flags()
  assert os.environ['XLA_FLAGS'] == '--xla_cpu_use_fusion_emitters=true'
  monkeypatch.delenv('XLA_FLAGS')
  monkeypatch.setattr(cli.importlib.metadata, 'version', lambda name: '0.11.0')
  cli.set_cpu_xla_flags()  # A jaxlib they were not measured on: none.
  assert 'XLA_FLAGS' not in os.environ


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
  proc = run_main(TEACHER_CONFIG, str(run), '--config.input.batch_size=-3', devices=3,
                  check=False)
  assert proc.returncode == errors.BAD_INPUT
  assert ('big_distill: error: input.batch_size=-3; use a positive number of images, a multiple '
          'of the 3 devices.') in proc.stderr
  assert not run.exists()
  proc = run_main(TEACHER_CONFIG, str(run), '--config.kernels.depthwise=fast', check=False)
  assert proc.returncode == errors.BAD_INPUT
  assert ("big_distill: error: config.kernels.depthwise='fast'; use one of auto, taps, "
          'grouped.') in proc.stderr
  assert not run.exists()


def test_a_workdir_continues_with_other_logging_but_not_other_training(tmp_path):
  config = configlib.base_config()
  workdir.write_config(config, str(tmp_path))
  logging_only = config.copy_and_resolve_references()
  logging_only.update(eval_every_steps=7, log_every_steps=3, checkpoint_every_steps=9,
                      keep_checkpoints=1)
  logging_only.input.prefetch = 4
  logging_only.kernels.depthwise = 'grouped'  # How it computes, not what.
  logging_only.remat = True
  workdir.check(logging_only, str(tmp_path))
  other = config.copy_and_resolve_references()
  other.input.batch_size = 64
  with pytest.raises(ValueError, match=r'holds a run of another config \(differs in: '
                                       r'input.batch_size\)'):
    workdir.check(other, str(tmp_path))


# (key, a value it refuses and the start of the error, the nearest value it takes).
OUT_OF_RANGE = [
    ('total_steps', -5, 'config.total_steps=-5; use a positive integer.', 1),
    ('total_epochs', 0.0, 'config.total_epochs=0.0; use a positive number of epochs.', 0.01),
    ('lr', -1.0, 'config.lr=-1.0; use a learning rate >= 0.', 0.0),
    ('wd', -0.1, 'config.wd=-0.1; use a weight decay >= 0.', 0.0),
    ('grad_clip_norm', 0.0, 'config.grad_clip_norm=0.0; use a positive norm', 0.1),
    ('schedule.warmup_steps', -3, 'config.schedule.warmup_steps=-3; use a number of steps', 0),
    ('log_every_steps', 0, 'config.log_every_steps=0; use a positive integer.', 1),
    ('eval_every_steps', -1, 'config.eval_every_steps=-1; use a positive integer.', 1),
    ('checkpoint_every_steps', 0, 'config.checkpoint_every_steps=0; use a positive', 1),
    ('keep_checkpoints', 0, 'config.keep_checkpoints=0; use a positive integer.', 1),
    ('profile.first_step', -1, 'config.profile.first_step=-1; use a step >= 0.', 0),
    ('profile.num_steps', -1, 'config.profile.num_steps=-1; use a number of steps >= 0', 0),
    ('input.resolution', 0, 'config.input.resolution=0; use a positive side in pixels.', 1),
    ('input.crop_padding', -2, 'config.input.crop_padding=-2; use a number of pixels >= 0.', 0),
    ('input.central_crop', 1.5, 'config.input.central_crop=1.5; use a fraction of the short '
     'side in (0, 1].', 1.0),
    ('input.shuffle_buffer', 0, 'config.input.shuffle_buffer=0; use a positive integer.', 1),
    ('input.prefetch', -1, 'config.input.prefetch=-1; use a number of batches >= 0.', 0),
    ('input.data_shards', -1, 'config.input.data_shards=-1; use a number of data slices, or 0 '
     'for one per process.', 0),
    ('input.eval_batch_size', 0, 'input.eval_batch_size=0; use a positive number of images.', 1),
    ('teachers[0].resolution', 0, 'config.teachers[0].resolution=0; use a positive side', 1),
]


def test_a_numeric_key_outside_its_range_is_one_line_before_anything_is_built():
  """`build.validate` refuses each numeric key's first value outside its range (the run used to
  train 1 step on negative epochs, or end in a traceback on a zero batch, negative steps or a zero
  resolution) and takes the value next to it; every key of `build.LIMITS` is covered."""
  base = get_config('distill.py', 'teacher=unused')
  build.validate(base)
  for key, bad, message, good in OUT_OF_RANGE:
    config = configlib.override(base, [f'--config.{key}={bad}'])
    with pytest.raises(errors.BadInput) as refused:
      build.validate(config)
    assert str(refused.value).startswith(message), (key, str(refused.value))
    build.validate(configlib.override(base, [f'--config.{key}={good}']))
  assert {key for key, *_ in build.LIMITS} <= {key for key, *_ in OUT_OF_RANGE}


@pytest.mark.parametrize('name', ['distill.py', 'imagenet_funmatch.py', 'flowers_funmatch.py'])
def test_a_teachers_resolution_is_set_from_the_command_line(name):
  assert get_config(name).teachers[0].resolution is None  # The student's.
  config = configlib.override(get_config(name), ['--config.teachers[0].resolution=384'])
  assert config.teachers[0].resolution == 384


@pytest.mark.parametrize('name', ['distill.py', 'imagenet_funmatch.py'])
def test_an_ensemble_of_teachers_from_the_config_argument(name):
  """`teacher=A+B` lists two teachers, which the command line can then change one by one."""
  config = get_config(name, 'teacher=a.npz+b.npz')
  assert [t.checkpoint for t in config.teachers] == ['a.npz', 'b.npz']
  assert config.teachers[0].to_dict() == {**config.teachers[1].to_dict(), 'checkpoint': 'a.npz'}
  config = configlib.override(config, ['--config.teachers[1].resolution=384',
                                       '--config.teachers[1].model=bit:depth=50,width=1'])
  second = config.teachers[1]
  assert (second.checkpoint, second.resolution, second.model) == (
      'b.npz', 384, 'bit:depth=50,width=1')
  assert config.teachers[0].resolution is None


def test_a_family_name_is_its_demo_size_in_both_roles():
  """`model=` of the teacher config and `teacher_model=` of the distill config name the same
  model: the family record's demo teacher; `student=` its demo student."""
  for name, found in models.FAMILIES.items():
    trained = get_config('teacher.py', f'model={name}').student.model
    teaching = get_config('distill.py', f'teacher_model={name},teacher=t').teachers[0]
    assert trained == teaching.model == str(models.spec(found, **found.demo_teacher))
    assert teaching.to_dict() == dict(model=trained, checkpoint='t', resolution=None)
    assert models.resolve(get_config('distill.py', f'student={name}').student).arguments == (
        found.demo_student)
  assert get_config('teacher.py', 'init=x.npz').student.to_dict() == dict(model='', init='x.npz')
  for name, arg in (('teacher.py', 'model=resnet'), ('distill.py', 'teacher_model=resnet')):
    with pytest.raises(errors.BadInput, match=f"{arg.split('=')[0]}: unknown model 'resnet'; "
                                              'known: bit, vit, mobilenet_v3'):
      get_config(name, arg)


def test_a_config_file_that_does_not_run_is_one_line(tmp_path):
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config(arg=None):\n  return (\n')
  with pytest.raises(errors.BadInput, match=rf'^{broken}, line 2: .*\.$'):
    configlib.load(str(broken))
  failing = tmp_path / 'failing.py'
  failing.write_text('import ml_collections\n\n\ndef get_config(arg=None):\n  return 1 / 0\n')
  with pytest.raises(errors.BadInput, match=rf'^{failing}, line 5: ZeroDivisionError: '):
    configlib.load(str(failing))
  with pytest.raises(errors.BadInput, match=rf'^Config file {tmp_path}/gone.py does not exist.$'):
    configlib.load(str(tmp_path / 'gone.py'))


def test_a_dry_run_says_what_the_run_would_build_and_writes_nothing(tmp_path, teacher_run):
  """`--dry_run`: the resolved config (the teacher's architecture read from its run), the models'
  parameter counts (against Flax's own count here), the data and the steps, as JSON; exit 0, and
  neither the workdir nor an image folder's prepared copy exists afterwards."""
  from big_distill import models  # pylint: disable=g-import-not-at-top
  from tests.helpers import FUNMATCH_CONFIG, write_mixed_folder  # pylint: disable=g-import-not-at-top
  workdir_ = tmp_path / 'run'
  proc = run_main(f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}', str(workdir_),
                  '--config.input.resolution=28', '--dry_run')
  plan = json.loads(proc.stdout)
  assert not workdir_.exists()
  student = models.resolve('bit:depth=14,width=0.125').create(10)
  count = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(jax.eval_shape(
      student.init, jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1)))['params']))
  assert plan['student'] == dict(model='bit:depth=14,width=0.125', parameters=count, init=None)
  [teacher] = plan['teachers']
  assert teacher['model'] == 'bit:depth=14,width=0.25' and teacher['checkpoint'] == teacher_run
  assert plan['config']['teachers'][0]['model'] == 'bit:depth=14,width=0.25'
  assert plan['data']['train_examples'] == 1024 and plan['data']['classes'] == 10
  assert (plan['steps'], plan['epochs'], plan['resumes_from_step']) == (10, 10 * 32 / 1024, None)
  folder = str(tmp_path / 'images')
  write_mixed_folder(folder)
  data_dir = tmp_path / 'tfds'
  proc = run_main(f'{TEACHER_CONFIG}:runlocal=True,dataset=imagefolder:{folder}', str(workdir_),
                  f'--config.input.data_dir={data_dir}', '--dry_run')
  plan = json.loads(proc.stdout)
  assert plan['data']['class_names'] == ['a', 'b'] and plan['data']['train_examples'] == 16
  assert plan['config']['input']['train_split'] == 'train'  # runlocal's [:1024] of 16 images.
  assert not workdir_.exists() and not data_dir.exists()


def test_a_dry_run_checks_the_teachers_files_and_leaves_steps_it_cannot_know_unknown(tmp_path):
  """A teacher file that is not there is bad input, as in a run, also where the config names the
  teacher's model (the paper's configs); a TFDS dataset not prepared (its size unknown) leaves the
  steps of a schedule in epochs unknown, not those of one batch."""
  from big_distill import build  # pylint: disable=g-import-not-at-top
  config = get_config('imagenet_funmatch.py', f'teacher={tmp_path}/gone.npz')
  with pytest.raises(errors.BadInput, match=r'config.teachers\[0\].checkpoint .*gone.npz'):
    build.dry_run(config, str(tmp_path / 'run'))
  config = get_config('teacher.py')
  config.input.update(dataset='mnist', data_dir=str(tmp_path / 'tfds'))
  plan = build.dry_run(config, str(tmp_path / 'run'))
  assert (plan['data']['classes'], plan['data']['train_examples']) == (10, None)
  assert (plan['steps'], plan['epochs']) == (None, None)
  config.total_steps = 7
  assert build.dry_run(config, str(tmp_path / 'run'))['steps'] == 7
  assert not (tmp_path / 'run').exists() and not (tmp_path / 'tfds').exists()
