"""Reliability: exact resume after SIGKILL/SIGTERM, damaged checkpoints, bad input, divergence."""

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

from big_distill import checkpoint
from big_distill.models import bit
from conftest import (FUNMATCH_CONFIG, ROOT, TEACHER_CONFIG, TINY_STUDENT, TINY_TEACHER,
                      read_metrics, run_main)

PREEMPTED, DIVERGED, IO_ERROR, BAD_INPUT = 75, 3, 74, 2
# 60 distillation steps with mixup, a checkpoint every 3: long enough to be killed in between.
LONG = ('--config.total_steps=60', '--config.checkpoint_every_steps=3',
        '--config.log_every_steps=3', '--config.eval_every_steps=60', *TINY_STUDENT)


def _command(config: str, workdir: str, *overrides: str) -> list[str]:
  return [sys.executable, '-m', 'big_distill.main', f'--config={config}', f'--workdir={workdir}',
          *overrides]


def _env() -> dict[str, str]:
  return dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
              JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')


def _steps(workdir: str) -> list[int]:
  root = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(root) if n.isdigit()) if os.path.isdir(root) else []


def _params(workdir: str, step: int | None = None):
  return jax.tree_util.tree_leaves(checkpoint.read_params(workdir, step)[0])


def _assert_bit_identical(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.dtype == y.dtype and np.array_equal(x, y)


def _snapshot(path: str) -> dict[str, tuple[int, int]]:
  """Every file under `path` with its size and modification time."""
  out = {}
  for name in glob.glob(os.path.join(path, '**'), recursive=True):
    st = os.stat(name)
    out[os.path.relpath(name, path)] = (st.st_size, st.st_mtime_ns)
  return out


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, teacher_run):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  run_main(f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}', workdir, *LONG)
  return workdir


def test_killed_and_preempted_run_ends_bit_identical(tmp_path, teacher_run, uninterrupted):
  """3 SIGKILLs at random points and a SIGTERM, each followed by the same command again."""
  config = f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}'
  workdir = str(tmp_path / 'run')
  cmd = _command(config, workdir, *LONG)
  rng = random.Random(1234)
  for sig in (signal.SIGKILL, signal.SIGKILL, signal.SIGKILL, signal.SIGTERM):
    before = max(_steps(workdir), default=0)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while max(_steps(workdir), default=0) <= before and proc.poll() is None:
      assert time.time() < deadline
      time.sleep(0.05)
    time.sleep(rng.uniform(0, 0.6))  # Anywhere: mid-step, mid-write, between checkpoints.
    assert proc.poll() is None, 'the run finished before it could be interrupted'
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
      assert proc.returncode == PREEMPTED, stderr[-3000:]
      stopped = int(stderr.split('Preempted at step ')[1].split(';')[0])
      assert max(_steps(workdir)) == stopped  # It saved the step it had finished.
      assert 'Run the same command again to resume' in stderr
    else:
      assert proc.returncode == -signal.SIGKILL
  assert max(_steps(workdir)) < 60
  subprocess.run(cmd, env=_env(), check=True, capture_output=True)
  assert max(_steps(workdir)) == 60
  _assert_bit_identical(_params(workdir), _params(uninterrupted))


def test_damaged_checkpoints_are_set_aside_and_training_resumes(tmp_path, teacher_run,
                                                                uninterrupted):
  workdir = str(tmp_path / 'run')
  shutil.copytree(uninterrupted, workdir)
  steps = _steps(workdir)
  assert steps == [54, 57, 60]
  kept_54 = _params(workdir, 54)
  ckpts = os.path.join(workdir, 'checkpoints')
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
  aside = sorted(os.listdir(os.path.join(workdir, 'corrupt_checkpoints')))
  assert [n.split('-')[0] for n in aside] == ['57', '60']  # Moved, not deleted.
  _assert_bit_identical(_params(workdir, 54), kept_54)  # The intact one is untouched.
  _assert_bit_identical(_params(workdir), _params(uninterrupted))  # Re-trained to the same end.


def test_non_finite_loss_stops_at_its_step_and_keeps_good_checkpoints(tmp_path):
  workdir = str(tmp_path / 'run')
  proc = run_main(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER,
                  '--config.lr=1e19', '--config.checkpoint_every_steps=1',
                  '--config.log_every_steps=5', check=False)
  assert proc.returncode == DIVERGED, proc.stderr[-3000:]
  message = [l for l in proc.stderr.splitlines() if l.startswith('big_distill: error:')]
  assert len(message) == 1 and 'Non-finite param_norm at step 2' in message[0]
  assert 'the newest checkpoint is step 1' in message[0]
  assert 'Batch of step 2: image shape=(32, 28, 28, 1)' in proc.stderr
  assert _steps(workdir) == [1]
  assert all(np.isfinite(x).all() for x in _params(workdir))


NO_GET_CONFIG = 'import ml_collections\n\ndef config():\n  return ml_collections.ConfigDict()\n'


def _npz_teacher(path, width=0.25, num_classes=10):
  model = bit.ResNetV2(depth=14, width=width, num_classes=num_classes)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1)))['params']
  bit.save_bit_npz(jax.tree_util.tree_map(np.asarray, params), str(path))
  return str(path)


@pytest.fixture(scope='module')
def bad_inputs(tmp_path_factory, teacher_run):
  """(case, config argument, overrides, devices, expected message) of each bad input."""
  d = tmp_path_factory.mktemp('inputs')
  (d / 'no_get_config.py').write_text(NO_GET_CONFIG)
  (d / 'garbage.npz').write_bytes(b'PK\x03\x04 this is not a zip archive')
  wide, five = _npz_teacher(d / 'wide.npz', width=0.5), _npz_teacher(d / 'five.npz', num_classes=5)
  distill = f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}'
  return [
      ('unknown key', distill, ['--config.lrr=0.1'], 1,
       "unknown config key 'lrr' in --config.lrr=0.1. Did you mean \"lr\" instead of \"lrr\"?"),
      ('wrong type', distill, ['--config.lr=abc'], 1,
       "--config.lr=abc: could not convert string to float: 'abc'"),
      ('missing file', f'{d}/nope.py', [], 1, f'config file {d}/nope.py does not exist'),
      ('no get_config', f'{d}/no_get_config.py', [], 1,
       f'{d}/no_get_config.py has no get_config(arg) function'),
      ('bad file argument', f'{FUNMATCH_CONFIG}:epochs=x', [], 1,
       "could not convert string to float: 'x'"),
      ('batch vs devices', distill, ['--config.input.batch_size=30'], 4,
       'input.batch_size=30 is not divisible by the 4 devices'),
      ('mesh vs devices', distill, ['--config.mesh.fsdp=3'], 4,
       'config.mesh data=-1, fsdp=3 does not fit the 4 devices'),
      ('dataset', distill, ['--config.input.dataset=no_such_dataset'], 1,
       "Unknown TFDS dataset 'no_such_dataset'"),
      ('split', distill, ['--config.input.eval_split=validation'], 1,
       "Unknown split 'validation' of fashion_mnist"),
      ('model', distill, ['--config.student.model=vit'], 1, "Unknown model 'vit'"),
      ('dtype', distill, ['--config.teacher_dtype=half'], 1,
       "config.teacher_dtype='half'; use one of float32, bfloat16, float16."),
      ('teacher missing', distill, [f'--config.teachers[0].checkpoint={d}/gone.npz'], 1,
       f"config.teachers[0].checkpoint '{d}/gone.npz' does not exist"),
      ('teacher unreadable', distill, [f'--config.teachers[0].checkpoint={d}/garbage.npz'], 1,
       f'Cannot read the checkpoint {d}/garbage.npz (BadZipFile'),
      ('teacher shapes', distill, [f'--config.teachers[0].checkpoint={wide}'], 1,
       f'BiT checkpoint {wide} does not match ResNetV2(depth=14, width=0.25'),
      ('teacher classes', distill, [f'--config.teachers[0].checkpoint={five}'], 1,
       f'{five} predicts 5 classes, but the dataset has 10'),
      ('other config', distill, ['--config.lr=0.5'], 1,
       'holds a run of another config (differs in: lr);'),
      # Refused before the fixed teacher's logits would be computed into the workdir.
      ('other config, fixed teacher', f'{distill},variant=fixed', [], 1,
       'holds a run of another config (differs in: teacher_logits_cache, variant);'),
      ('augmentation', distill, ['--config.input.augment=inception'], 1,
       "Unknown input.augment 'inception'; use one of crop_flip, inception_crop, none."),
      ('data shards', distill, ['--config.input.data_shards=3'], 1,
       'input.batch_size=32 is not divisible by input.data_shards=3.'),
      ('eval interval', distill, ['--config.eval_every_steps=0'], 1,
       'config.eval_every_steps=0; use a positive integer.'),
      ('temperature', distill, ['--config.temperature=-1'], 1,
       'config.temperature=-1.0; use a positive temperature.'),
  ]


def test_bad_input_one_line_error_and_workdir_unchanged(bad_inputs, uninterrupted):
  before = _snapshot(uninterrupted)

  def attempt(case):  # Two at a time: most of a failing run is its single-threaded start-up.
    _, config, overrides, devices, _ = case
    return run_main(config, uninterrupted, *LONG, *overrides, devices=devices, check=False)

  failures = []
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    procs = list(pool.map(attempt, bad_inputs))
  for (case, _, _, _, expected), proc in zip(bad_inputs, procs):
    errors = [l for l in proc.stderr.splitlines() if 'error:' in l.lower()]
    if (proc.returncode != BAD_INPUT or len(errors) != 1 or
        not errors[0].startswith('big_distill: error: ') or expected not in errors[0]):
      failures.append(f'{case}: exit {proc.returncode}, errors {errors or proc.stderr[-1500:]}')
  assert not failures, '\n'.join(failures)
  assert _snapshot(uninterrupted) == before


def test_unwritable_workdir(tmp_path, teacher_run):
  """Bad input; with a fixed teacher, refused before its logits are computed into the workdir."""
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  for config, overrides in (
      (f'{TEACHER_CONFIG}:runlocal=True', TINY_TEACHER),
      (f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run},variant=fixed', TINY_STUDENT)):
    proc = run_main(config, str(blocker / 'run'), *overrides, check=False)
    assert proc.returncode == BAD_INPUT, proc.stderr[-2000:]
    assert f'big_distill: error: Cannot write to --workdir={blocker}/run (' in proc.stderr
  assert blocker.read_text() == 'x'


def test_sigterm_during_start_up_is_a_preemption(tmp_path, monkeypatch):
  """Exit 75 (requeue) before the first step, with nothing written; the handler is restored."""
  from big_distill import train
  from big_distill.data import input_pipeline
  from conftest import get_config

  get_builder = input_pipeline.get_builder

  def terminated_while_loading(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return get_builder(*args, **kwargs)

  monkeypatch.setattr(input_pipeline, 'get_builder', terminated_while_loading)
  config = get_config('fashion_mnist_teacher.py', 'runlocal=True')
  config.student.update(depth=14, width=0.25)
  config.input.resolution = 28
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(checkpoint.Preempted, match='Preempted at step 0; the run is saved up to'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert signal.getsignal(signal.SIGTERM) is before
  assert not os.path.exists(tmp_path / 'run' / 'config.json')
  assert _steps(str(tmp_path / 'run')) == []


def test_full_disk_while_saving_keeps_earlier_checkpoints(tmp_path):
  """Files may not grow beyond 64 KiB (RLIMIT_FSIZE): the checkpoint write fails like ENOSPC."""
  workdir = str(tmp_path / 'run')
  first = ('--config.total_steps=5', *TINY_TEACHER)
  run_main(f'{TEACHER_CONFIG}:runlocal=True', workdir, *first)
  kept, before = _params(workdir, 5), _snapshot(os.path.join(workdir, 'checkpoints'))

  # A shell that ignores SIGXFSZ (writes then fail with EFBIG) and limits files to 64 KiB.
  cmd = _command(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER,
                 '--config.total_steps=10', '--config.allow_config_change=True')
  proc = subprocess.run(['bash', '-c', 'trap "" XFSZ; ulimit -f 64; exec "$@"', 'bash', *cmd],
                        env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == IO_ERROR, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('big_distill: error:')]
  assert len(errors) == 1 and 'Writing a checkpoint to' in errors[0]
  assert 'earlier checkpoints are intact (newest: step 5)' in errors[0]
  assert _steps(workdir) == [5]
  assert {k: v for k, v in _snapshot(os.path.join(workdir, 'checkpoints')).items()
          if k.startswith('5')} == {k: v for k, v in before.items() if k.startswith('5')}
  _assert_bit_identical(_params(workdir, 5), kept)


def test_error_line_is_not_split_by_a_partial_line_of_another_thread():
  """Regression (CI): orbax's writer threads print tracebacks while a failed run exits; an
  unfinished line of theirs could prefix the `big_distill: error:` line."""
  script = ('import sys; from big_distill import main; '
            'sys.stderr.write("Traceback piece without newline "); '
            'main.say("big_distill: error: disk full")')
  proc = subprocess.run([sys.executable, '-c', script], env=_env(), capture_output=True,
                        text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'big_distill: error: disk full' in proc.stderr.splitlines()


def test_only_big_distills_own_value_errors_are_bad_input():
  """A ValueError from inside a library is a bug (its traceback, exit 1), not bad input (exit 2).
  (In a subprocess, as main.py defines flags.)"""
  code = ('import numpy as np\n'
          'from big_distill import main, parallel\n'
          'def code(fn):\n'
          '  try:\n'
          '    fn()\n'
          '  except Exception as e:\n'
          '    return main.exit_code(e)\n'
          'def diverged():\n'
          '  raise FloatingPointError("loss")\n'
          'print(code(lambda: parallel.mesh_shape(3, 1, 4)), code(lambda: np.zeros(3).reshape(2)),\n'
          '      code(lambda: open("/no/such/file")), code(diverged), code(lambda: {}["key"]))')
  proc = subprocess.run([sys.executable, '-c', code], env=_env(), check=True, capture_output=True,
                        text=True, timeout=120)
  assert proc.stdout.split() == ['2', 'None', '74', '3', 'None']
