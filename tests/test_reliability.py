"""Reliability: exact resume after SIGKILL/SIGTERM/Ctrl-C, damaged checkpoints, bad input,
divergence."""

import concurrent.futures
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from big_distill import workdir as workdir_lib
from big_distill import errors
from big_distill.models import bit, vit
from tests.helpers import (FUNMATCH_CONFIG, ROOT, TEACHER_CONFIG, TINY_STUDENT, TINY_TEACHER,
                           command, error_lines, init_variables, main_command, params, run,
                           run_main, saved_steps, snapshot, start)

# 60 distillation steps with mixup, a checkpoint every 3: long enough to be killed in between.
LONG = ('--config.total_steps=60', '--config.checkpoint_every_steps=3',
        '--config.log_every_steps=3', '--config.eval_every_steps=60', *TINY_STUDENT)


def _assert_bit_identical(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, teacher_run):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  run_main(f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}', workdir, *LONG)
  return workdir


def with_ctrl_c(cmd: list[str]) -> list[str]:
  """`python -m MODULE ARGS` whose SIGINT raises `KeyboardInterrupt`, as in a shell's foreground
  job, whatever the test runner's (a background job ignores SIGINT)."""
  _, _, module, *args = cmd
  return [sys.executable, '-c', 'import runpy, signal, sys\n'
          'signal.signal(signal.SIGINT, signal.default_int_handler)\n'
          f'sys.modules.pop({module!r}, None)\n'
          f'sys.argv[0] = {module!r}\n'
          f'runpy.run_module({module!r}, run_name="__main__", alter_sys=True)\n', *args]


def test_killed_and_preempted_run_ends_bit_identical(tmp_path, teacher_run, uninterrupted):
  """SIGKILLs at random points, a Ctrl-C (SIGINT) and a SIGTERM, each followed by the same
  command again."""
  config = f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}'
  workdir = str(tmp_path / 'run')
  cmd = main_command(config, workdir, *LONG)
  rng = random.Random(1234)
  for sig in (signal.SIGKILL, signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGTERM):
    before = max(saved_steps(workdir), default=0)
    proc = start(with_ctrl_c(cmd) if sig == signal.SIGINT else cmd)
    deadline = time.time() + 300
    while max(saved_steps(workdir), default=0) <= before and proc.poll() is None:
      assert time.time() < deadline
      time.sleep(0.05)
    time.sleep(rng.uniform(0, 0.6))  # Anywhere: mid-step, mid-write, between checkpoints.
    assert proc.poll() is None, 'the run finished before it could be interrupted'
    proc.send_signal(sig)
    proc.wait(timeout=120)
    stderr = proc.stderr
    if sig in (signal.SIGTERM, signal.SIGINT):
      code, event = ((errors.PREEMPTED, 'Preempted') if sig == signal.SIGTERM else
                     (errors.INTERRUPTED, 'Interrupted'))
      assert proc.returncode == code, stderr[-3000:]
      stopped = int(stderr.split(f'{event} at step ')[1].split(';')[0])
      assert max(saved_steps(workdir)) == stopped  # It saved the step it had finished.
      assert 'Run the same command again to resume' in stderr
    else:
      assert proc.returncode == -signal.SIGKILL
  assert max(saved_steps(workdir)) < 60
  run(cmd)
  assert max(saved_steps(workdir)) == 60
  _assert_bit_identical(params(workdir), params(uninterrupted))


def test_damaged_checkpoints_are_set_aside_and_training_resumes(tmp_path, teacher_run,
                                                                uninterrupted):
  workdir = str(tmp_path / 'run')
  shutil.copytree(uninterrupted, workdir)
  assert saved_steps(workdir) == [54, 57, 60]
  kept_54 = params(workdir, 54)
  ckpts = str(workdir_lib.checkpoints(workdir))
  # 60: every data file truncated; 57: the params item's metadata garbled.
  for name in glob.glob(os.path.join(ckpts, '60', '*', '**', 'd', '*'), recursive=True):
    if os.path.isfile(name):
      with open(name, 'r+b') as f:
        f.truncate(7)
  with open(os.path.join(ckpts, '57', 'params', '_METADATA'), 'w') as f:
    f.write('{not json')
  # An interrupted write, as orbax leaves it: a temporary directory.
  os.makedirs(os.path.join(ckpts, '63.orbax-checkpoint-tmp-1234567'))
  proc = run_main(f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}', workdir, *LONG)
  for step in (60, 57):
    assert f'Checkpoint {ckpts}/{step} is unreadable' in proc.stderr
  assert '63.orbax-checkpoint-tmp-1234567: a checkpoint whose writing was interrupted' in proc.stderr
  assert 'Resuming from the checkpoint of step 54' in proc.stderr
  aside = sorted(os.listdir(os.path.join(workdir, workdir_lib.CORRUPT_CHECKPOINTS)))
  assert [n.split('-')[0] for n in aside] == ['57', '60']  # Moved, not deleted.
  _assert_bit_identical(params(workdir, 54), kept_54)  # The intact one is untouched.
  _assert_bit_identical(params(workdir), params(uninterrupted))  # Re-trained to the same end.


def test_non_finite_loss_stops_at_its_step_and_keeps_good_checkpoints(tmp_path):
  workdir = str(tmp_path / 'run')
  proc = run_main(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER,
                  '--config.lr=1e19', '--config.checkpoint_every_steps=1',
                  '--config.log_every_steps=5', check=False)
  assert proc.returncode == errors.DIVERGED, proc.stderr[-3000:]
  message = [l for l in proc.stderr.splitlines() if l.startswith('big_distill: error:')]
  assert len(message) == 1 and 'Non-finite param_norm at step 2' in message[0]
  assert 'the newest checkpoint is step 1' in message[0]
  assert 'Batch of step 2: image shape=(32, 28, 28, 1)' in proc.stderr
  assert saved_steps(workdir) == [1]
  assert all(np.isfinite(x).all() for x in params(workdir))


NO_GET_CONFIG = 'import ml_collections\n\ndef config():\n  return ml_collections.ConfigDict()\n'
# The distillation config with a teacher entry of another normalisation (a config file's choice).
CLIP_TEACHER = f'''
import importlib.util
spec = importlib.util.spec_from_file_location('funmatch', {FUNMATCH_CONFIG!r})
funmatch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(funmatch)


def get_config(arg=None):
  config = funmatch.get_config(arg)
  config.teachers[0].normalization = 'clip'
  return config
'''


# The distillation config with its student's arguments as keys of the entry (earlier configs').
KEYED_STUDENT = f'''
import ml_collections
from big_distill import configlib


def get_config(arg=None):
  config = configlib.load({FUNMATCH_CONFIG!r}, arg)
  config.student = ml_collections.ConfigDict(dict(model='mobilenet_v3', variant='small',
                                                  width=0.5, init=''))
  return config
'''


def _npz_teacher(path, width=0.25, num_classes=10, side=28):
  model = bit.ResNetV2(depth=14, width=width, num_classes=num_classes)
  params_ = init_variables(model, 0, (1, side, side, 1))['params']
  bit.save_bit_npz(jax.tree_util.tree_map(np.asarray, params_), str(path))
  return str(path)


@pytest.fixture(scope='module')
def bad_inputs(tmp_path_factory, teacher_run, uninterrupted):
  """(case, command, the paths it must leave as they were, expected message) of each bad input,
  through every command. `uninterrupted` is a finished run; `fresh` a workdir that must not
  appear."""
  d = tmp_path_factory.mktemp('inputs')
  (d / 'no_get_config.py').write_text(NO_GET_CONFIG)
  (d / 'syntax_error.py').write_text('def get_config(arg=None):\n  return dict(a=1\n')
  (d / 'keyed_student.py').write_text(KEYED_STUDENT)
  (d / 'clip_teacher.py').write_text(CLIP_TEACHER)
  # A state dict of another architecture, in timm's layout (a ViT's, for the BiT teacher).
  vit_model = vit.ViT(patch_size=7, width=16, depth=1, num_heads=2, num_classes=10)
  vit_params = init_variables(vit_model, 0, (1, 28, 28, 1))['params']
  (d / 'vit.safetensors').write_bytes(safetensors_numpy.save(
      vit.params_to_timm(jax.tree_util.tree_map(np.asarray, vit_params), vit_model)))
  (d / 'garbage.npz').write_bytes(b'PK\x03\x04 this is not a zip archive')
  wide, five = _npz_teacher(d / 'wide.npz', width=0.5), _npz_teacher(d / 'five.npz', num_classes=5)
  imagenet_teacher = _npz_teacher(d / 'r14_1000.npz', num_classes=1000)
  distill = f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}'
  run_dir, fresh, data_dir = uninterrupted, str(d / 'fresh'), str(d / 'tfds')

  def main(config, *overrides, workdir=run_dir, devices=1):
    return main_command(config, workdir, *LONG, *overrides), devices, [workdir, teacher_run]

  def main_new(config, *overrides):  # A run that would start in a new workdir.
    return main_command(config, fresh, *overrides), 1, [fresh, teacher_run]

  def tool(module, *args, touched=()):
    return command(module, *args), 1, [run_dir, *touched]

  imagenet = f'{ROOT}/configs/imagenet_funmatch.py:runlocal=True'
  cases = [
      ('unknown key', *main(distill, '--config.lrr=0.1'),
       "--config.lrr: config has no key 'lrr'; did you mean 'lr'?"),
      ('wrong type', *main(distill, '--config.lr=abc'),
       "--config.lr=abc: could not convert string to float: 'abc'"),
      ('missing file', *main(f'{d}/nope.py'), f'Config file {d}/nope.py does not exist.'),
      ('no get_config', *main(f'{d}/no_get_config.py'),
       f'{d}/no_get_config.py has no get_config(arg) function'),
      ('bad file argument', *main(f'{FUNMATCH_CONFIG}:epochs=x'),
       "Config argument epochs='x' is not a float."),
      ('config file syntax', *main(f'{d}/syntax_error.py'), f'{d}/syntax_error.py, line 2: '),
      ('batch vs devices', *main(distill, '--config.input.batch_size=30', devices=4),
       'input.batch_size=30 is not divisible by the 4 devices'),
      ('mesh vs devices', *main(distill, '--config.mesh.fsdp=3', devices=4),
       'config.mesh data=-1, fsdp=3 does not fit the 4 devices'),
      ('dataset', *main(distill, '--config.input.dataset=no_such_dataset'),
       "Unknown TFDS dataset 'no_such_dataset'"),
      ('split', *main(distill, '--config.input.eval_split=validation'),
       "Split 'validation' of fashion_mnist: Unknown split"),
      ('model', *main(distill, '--config.student.model=resnet'),
       "config.student: unknown model 'resnet'; known: bit, vit, mobilenet_v3"),
      ('dtype', *main(distill, '--config.teacher_dtype=half'),
       "config.teacher_dtype='half'; use one of float32, bfloat16, float16."),
      ('teacher missing', *main(distill, f'--config.teachers[0].checkpoint={d}/gone.npz'),
       f"config.teachers[0].checkpoint '{d}/gone.npz' does not exist"),
      ('teacher unreadable', *main(distill, f'--config.teachers[0].checkpoint={d}/garbage.npz'),
       f'Cannot read {d}/garbage.npz as a NumPy .npz archive (BadZipFile)'),
      ('teacher shapes', *main(distill, f'--config.teachers[0].checkpoint={wide}',
                               '--config.teachers[0].model=bit:depth=14,width=0.25'),
       f'BiT checkpoint {wide} does not match ResNetV2(depth=14, width=0.25'),
      ('teacher classes', *main(distill, f'--config.teachers[0].checkpoint={five}'),
       f'{five} predicts 5 classes, but the dataset has 10'),
      ('other config', *main(distill, '--config.lr=0.5'),
       'holds a run of another config (differs in: lr);'),
      # Refused before the fixed teacher's logits would be computed into the workdir.
      ('other config, fixed teacher', *main(f'{distill},variant=fixed'),
       'holds a run of another config (differs in: teacher_logits_cache, variant);'),
      ('augmentation', *main(distill, '--config.input.augment=inception'),
       "Unknown input.augment 'inception'; use one of crop_flip, inception_crop, none."),
      ('data shards', *main(distill, '--config.input.data_shards=3'),
       'input.batch_size=32 is not divisible by input.data_shards=3.'),
      ('eval interval', *main(distill, '--config.eval_every_steps=0'),
       'config.eval_every_steps=0; use a positive integer.'),
      ('temperature', *main(distill, '--config.temperature=-1'),
       'config.temperature=-1.0; use a positive temperature.'),
      ('unknown timm model', *main(distill, '--config.student.model=timm:convnext_tiny'),
       "config.student: unknown timm model 'convnext_tiny'"),
      ('keys that contradict the model',
       *main(f'{d}/keyed_student.py:runlocal=True,teacher={teacher_run}',
             '--config.student.model=timm:mobilenetv3_large_100'),
       "config.student: model='timm:mobilenetv3_large_100' is a mobilenet_v3 model with "
       "variant='large', width=1.0, normalization='imagenet'; the entry also sets "
       "variant='small', width=0.5, which contradict it."),
      ('teacher of another architecture',
       *main(distill, f'--config.teachers[0].checkpoint={d}/vit.safetensors',
             '--config.teachers[0].model=bit:depth=14,width=0.25'),
       f'{d}/vit.safetensors holds a vit model (timm layout), which a bit model cannot load'),
      ('a file that does not say its heads',
       *main(distill, f'--config.teachers[0].checkpoint={d}/vit.safetensors'),
       'The timm ViT file of width 16 does not say its number of heads'),
      ('unknown normalisation', *main(f'{d}/clip_teacher.py:runlocal=True,teacher={teacher_run}'),
       "the bit model's normalization='clip' is not a known input normalisation"),
      ('a second teacher', *main(distill, f'--config.teachers[1].checkpoint={five}'),
       '--config.teachers[1].checkpoint: config.teachers has 1 entry, so [1] does not exist. '
       'List the teachers in the config argument'),
      ('misspelt flag', *main(distill, f'--workdirr={fresh}'),
       'unknown flag --workdirr; did you mean --workdir?'),
      ('mistyped student.init', *main_new(distill, *TINY_STUDENT,
                                          f'--config.student.init={d}/nope.npz'),
       f"config.student.init '{d}/nope.npz' does not exist"),
      ('imagenet, teacher first', *main_new(imagenet, f'--config.input.data_dir={data_dir}'),
       "config.teachers[0].checkpoint 'R152x2_T_224.npz' does not exist"),
      ('imagenet not prepared', *main_new(f'{imagenet},teacher={imagenet_teacher}',
                                          f'--config.input.data_dir={data_dir}'),
       f"TFDS dataset 'imagenet2012' is not prepared in {data_dir} and needs a manual download"),
      ('export: no run', *tool('big_distill.export', f'--workdir={fresh}',
                               f'--output={d}/out/s.npz', touched=[fresh, f'{d}/out']),
       f'{fresh} holds no big_distill run (no config.json)'),
      ('export: no such step', *tool('big_distill.export', f'--workdir={run_dir}', '--step=999',
                                     f'--output={d}/out/s.npz', touched=[f'{d}/out']),
       f"No checkpoint of step 999 in '{run_dir}'; it has [54, 57, 60]"),
      ('export: missing flag', *tool('big_distill.export', f'--workdir={run_dir}'),
       'flag --output=None: Flag --output must have a value other than None.'),
      ('report: missing flag', *tool('big_distill.report', f'--workdirs={run_dir}'),
       'flag --output=None: Flag --output must have a value other than None.'),
      ('report: no run', *tool('big_distill.report', f'--workdirs={run_dir},{fresh}',
                               f'--output={d}/report', touched=[fresh, f'{d}/report']),
       f'{fresh} holds no big_distill run (no config.json)'),
      ('demo: bad flag', *tool('big_distill.demo', f'--workdir={fresh}', '--teacher_epochs=abc',
                               touched=[fresh]),
       "flag --teacher_epochs=abc: could not convert string to float: 'abc'"),
      ('demo: no epochs', *tool('big_distill.demo', f'--workdir={fresh}', '--student_epochs=0',
                                touched=[fresh]),
       'flag --student_epochs=0.0: use a positive number of epochs'),
      ('negative steps', *main_new(distill, '--config.total_steps=-5'),
       'config.total_steps=-5; use a positive integer.'),
      ('deploy: no rounds', *tool('big_distill.deploy', f'--workdir={run_dir}', '--rounds=0'),
       'flag --rounds=0: 0 is not a positive integer'),
      ('predict: no crop', *tool('big_distill.predict', f'--weights={five}', '--central_crop=0',
                                 str(d)),
       'flag --central_crop=0.0: use a fraction of the short side in (0, 1]'),
      ('reproduce: variant', *tool('big_distill.reproduce', f'--workdir={fresh}',
                                   '--variants=funmatch,mixup', touched=[fresh]),
       "--variants: 'mixup' is not a variant; use fixed, independent, consistent, funmatch."),
      ('benchmark: config key', *tool('benchmarks.step_throughput', f'--config={distill}',
                                      '--config.student.depht=3'),
       "--config.student.depht: config.student has no key 'depht'"),
  ]
  return cases


def test_bad_input_one_line_error_and_nothing_on_disk_changes(bad_inputs):
  """Every command: exit 2, one `big_distill: error:` line, and the workdir, the teacher run and
  every output path byte-for-byte as before (paths that did not exist still do not)."""
  paths = sorted({p for _, _, _, touched, _ in bad_inputs for p in touched})
  before = {p: snapshot(p) for p in paths}

  def attempt(case):  # Two at a time: most of a failing run is its single-threaded start-up.
    _, cmd, devices, _, _ = case
    return run(cmd, devices=devices, check=False)

  failures = []
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    procs = list(pool.map(attempt, bad_inputs))
  for (case, _, _, _, expected), proc in zip(bad_inputs, procs):
    errors_ = error_lines(proc.stderr)
    if (proc.returncode != errors.BAD_INPUT or len(errors_) != 1 or
        not errors_[0].startswith('big_distill: error: ') or expected not in errors_[0]):
      failures.append(f'{case}: exit {proc.returncode}, errors {errors_ or proc.stderr[-1500:]}')
  assert not failures, '\n'.join(failures)
  assert {p: snapshot(p) for p in paths} == before


def test_unwritable_workdir(tmp_path, teacher_run):
  """Bad input; with a fixed teacher, refused before its logits are computed into the workdir."""
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  for config, overrides in (
      (f'{TEACHER_CONFIG}:runlocal=True', TINY_TEACHER),
      (f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run},variant=fixed', TINY_STUDENT)):
    proc = run_main(config, str(blocker / 'run'), *overrides, check=False)
    assert proc.returncode == errors.BAD_INPUT, proc.stderr[-2000:]
    assert f'big_distill: error: Cannot write to --workdir={blocker}/run (' in proc.stderr
  assert blocker.read_text() == 'x'


def test_sigterm_during_start_up_is_a_preemption(tmp_path, monkeypatch):
  """Exit 75 (requeue) before the first step, with nothing written; the handler is restored."""
  from big_distill import train
  from big_distill.data import input_pipeline
  from tests.helpers import get_config

  get_builder = input_pipeline.get_builder

  def terminated_while_loading(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return get_builder(*args, **kwargs)

  monkeypatch.setattr(input_pipeline, 'get_builder', terminated_while_loading)
  config = get_config('teacher.py', 'runlocal=True')
  config.student.update(depth=14, width=0.25)
  config.input.resolution = 28
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(errors.Preempted, match='Preempted at step 0; the run is saved up to'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert signal.getsignal(signal.SIGTERM) is before
  assert not os.path.exists(tmp_path / 'run')


def test_ctrl_c_is_a_preemption_only_during_the_steps_and_a_second_one_stops_at_once():
  """Inside `interruptible` the first SIGINT is noticed, the second is `KeyboardInterrupt`;
  outside it, and where SIGINT is ignored (a background job), SIGINT keeps its handler."""
  from big_distill import preemption

  runner = signal.signal(signal.SIGINT, signal.default_int_handler)  # A foreground job's.
  try:
    with preemption.Preemption() as preempt:
      assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Start-up.
      with preempt.interruptible():
        os.kill(os.getpid(), signal.SIGINT)
        assert preempt.interrupted and not preempt.requested
        with pytest.raises(KeyboardInterrupt):
          os.kill(os.getpid(), signal.SIGINT)
      assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # A background job's.
    with preemption.Preemption() as preempt, preempt.interruptible():
      assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
      os.kill(os.getpid(), signal.SIGINT)
      assert not preempt.interrupted
  finally:
    signal.signal(signal.SIGINT, runner)


# A stage that takes a second to save when interrupted, then exits as `main` does (130).
SAVING_STAGE = """
import signal, sys, time
def save(*_):
  time.sleep(1)
  open(sys.argv[1], 'w').write('saved')
  sys.exit(130)
signal.signal(signal.SIGINT, save)
print('ready', flush=True)
time.sleep(120)
"""


def test_ctrl_c_one_line_and_a_stage_saves_before_its_parent_exits(tmp_path):
  """A command interrupted outside a training loop: one line, exit 130. The demo's and
  reproduce's stages get the terminal's Ctrl-C too: the parent waits while the stage saves, then
  exits with its code (subprocess.run would kill the stage after 0.25 s)."""
  script = 'from big_distill import cli\ncli.run(lambda argv: exec("raise KeyboardInterrupt"))\n'
  proc = run([sys.executable, '-c', script], check=False, timeout=300)
  assert proc.returncode == errors.INTERRUPTED == 130
  assert proc.stderr.strip() == 'big_distill: interrupted (Ctrl-C).'

  (tmp_path / 'saving_stage.py').write_text(SAVING_STAGE)
  saved = tmp_path / 'saved'
  parent = ('import signal\n'
            'signal.signal(signal.SIGINT, signal.default_int_handler)  # A foreground job\'s.\n'
            'from big_distill import cli, runs\n'
            f'cli.run(lambda argv: runs.run_command("stage", "saving_stage", {str(saved)!r}))\n')
  proc = subprocess.Popen([sys.executable, '-c', parent], cwd=ROOT, start_new_session=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, 'PYTHONPATH': f'{tmp_path}:{ROOT}'})
  assert proc.stdout.readline().startswith('[stage]')
  assert proc.stdout.readline() == 'ready\n'
  os.killpg(proc.pid, signal.SIGINT)  # As a terminal's Ctrl-C: to the whole foreground group.
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == errors.INTERRUPTED, stderr
  assert saved.read_text() == 'saved'


def test_a_workdir_is_one_runs_at_a_time(tmp_path):
  """The same command started again while the first runs: bad input before it writes anything;
  the first goes on undisturbed. The lock goes with its block (in a notebook, a second run in the
  same process) and with its process."""
  from big_distill.data import locks

  workdir = tmp_path / 'run'
  cmd = main_command(f'{TEACHER_CONFIG}:runlocal=True', str(workdir), *TINY_TEACHER,
                     '--config.total_steps=5000')
  first = start(cmd)
  deadline = time.time() + 300
  while not saved_steps(str(workdir)):
    assert first.poll() is None and time.time() < deadline, first.stderr
    time.sleep(0.05)
  logs = sorted(os.listdir(workdir))
  second = run(cmd, check=False)
  assert second.returncode == errors.BAD_INPUT, second.stderr[-2000:]
  assert error_lines(second.stderr) == [
      f'big_distill: error: --workdir={workdir} is in use by another big_distill process on this '
      'machine; wait for it to end, or stop it (Ctrl-C: a training run saves its step), then run '
      'this command again.']
  assert sorted(os.listdir(workdir)) == logs  # No second log, events file or cache.
  first.send_signal(signal.SIGTERM)
  assert first.wait(120) == errors.PREEMPTED, first.stderr[-2000:]

  with locks.only_user(str(workdir)):
    with pytest.raises(errors.BadInput, match='is in use by another big_distill process'):
      with locks.only_user(str(workdir)):
        pass
  with locks.only_user(str(workdir)):
    pass


def test_full_disk_while_saving_keeps_earlier_checkpoints(tmp_path):
  """Files may not grow beyond 64 KiB (RLIMIT_FSIZE): the checkpoint write fails like ENOSPC."""
  workdir = str(tmp_path / 'run')
  first = ('--config.total_steps=5', *TINY_TEACHER)
  run_main(f'{TEACHER_CONFIG}:runlocal=True', workdir, *first)
  kept, before = params(workdir, 5), snapshot(str(workdir_lib.checkpoints(workdir)))

  # A shell that ignores SIGXFSZ (writes then fail with EFBIG) and limits files to 64 KiB.
  cmd = main_command(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER,
                     '--config.total_steps=10', '--config.allow_config_change=True')
  proc = run(['bash', '-c', 'trap "" XFSZ; ulimit -f 64; exec "$@"', 'bash', *cmd], check=False)
  assert proc.returncode == errors.IO_ERROR, proc.stderr[-3000:]
  errors_ = [l for l in proc.stderr.splitlines() if l.startswith('big_distill: error:')]
  assert len(errors_) == 1 and 'Writing a checkpoint to' in errors_[0]
  assert 'earlier checkpoints are intact (newest: step 5)' in errors_[0]
  assert saved_steps(workdir) == [5]
  assert {k: v for k, v in snapshot(str(workdir_lib.checkpoints(workdir))).items()
          if k.startswith('5')} == {k: v for k, v in before.items() if k.startswith('5')}
  _assert_bit_identical(params(workdir, 5), kept)


def test_error_line_is_not_split_by_a_partial_line_of_another_thread():
  """Regression (CI): orbax's writer threads print tracebacks while a failed run exits; an
  unfinished line of theirs could prefix the `big_distill: error:` line."""
  script = ('import sys; from big_distill import cli; '
            'sys.stderr.write("Traceback piece without newline "); '
            'cli.say("big_distill: error: disk full")')
  proc = run([sys.executable, '-c', script], timeout=300)
  assert 'big_distill: error: disk full' in proc.stderr.splitlines()


def test_exit_codes_come_from_the_error_types():
  """Only big_distill's own checks are bad input: a ValueError from inside a library is a bug
  (its traceback, exit 1); any OSError is an I/O error."""
  assert errors.exit_code(errors.BadInput('x')) == errors.BAD_INPUT == 2
  assert errors.exit_code(ValueError('inside numpy')) == errors.BUG == 1
  assert errors.exit_code(FileNotFoundError('/no/such/file')) == errors.IO_ERROR == 74
  assert errors.exit_code(errors.WriteFailed('disk full')) == errors.IO_ERROR
  assert errors.exit_code(errors.Diverged('loss')) == errors.DIVERGED == 3
  assert errors.exit_code(errors.Preempted(7)) == errors.PREEMPTED == 75
  assert errors.exit_code(errors.Interrupted(7)) == errors.INTERRUPTED == 130
  assert str(errors.Interrupted(7)).startswith('Interrupted at step 7; the run is saved up to it.')
  assert errors.exit_code(KeyError('key')) == errors.BUG


def test_a_library_value_error_keeps_its_traceback(tmp_path):
  """Through a real command: a ValueError raised inside a library exits 1 with its traceback."""
  script = ('from big_distill import cli\n'
            'import numpy as np\n'
            'cli.run(lambda argv: np.zeros(3).reshape(2))\n')
  proc = run([sys.executable, '-c', script], check=False, timeout=300)
  assert proc.returncode == errors.BUG
  assert 'Traceback' in proc.stderr and 'cannot reshape array' in proc.stderr
  assert 'big_distill: error:' not in proc.stderr
