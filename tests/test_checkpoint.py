"""The training state's checkpoints: which ones stay (the last few and the best eval one), which
one a reader gets, and that reading writes nothing, logs no orbax warning and names a damaged
checkpoint in one line."""

import concurrent.futures
import glob
import logging
import os
import re
import shutil
import sys
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

from big_distill import checkpoint, errors, steps, workdir
from tests.helpers import command, run, snapshot

ABSL_INFO = re.compile(r'^I\d{4} \d\d:\d\d:\d\d')  # An absl INFO line's prefix.


def _state(value: float, layers: int = 0) -> steps.TrainState:
  params = {'kernel': np.full((2, 3), value, np.float32), 'bias': np.zeros(3, np.float32),
            **{f'layer{i}': np.full(4, i, np.float32) for i in range(layers)}}
  return steps.new_state({'params': params}, optax.sgd(0.1))


def _save_run(run: str, keep_best: bool, layers: int = 0) -> None:
  """Six checkpoints; steps 2, 4 and 6 saved at evals with accuracies 0.9, 0.5 and 0.6;
  `layers` more parameter arrays."""
  accuracy = {2: 0.9, 4: 0.5, 6: 0.6}
  manager = checkpoint.create_manager(run, keep=2, keep_best=keep_best)
  for step in range(1, 7):
    metrics = {'eval/student_accuracy': accuracy[step]} if step in accuracy else None
    checkpoint.save(manager, step, _state(step, layers), metrics if keep_best else None)
    checkpoint.wait(manager)
  manager.close()


def test_the_last_checkpoints_and_the_best_one_stay(tmp_path):
  best, last = str(tmp_path / 'best'), str(tmp_path / 'last')
  _save_run(best, keep_best=True)
  _save_run(last, keep_best=False)
  assert checkpoint.saved_steps(best) == [2, 5, 6]  # Step 2 had the best eval accuracy.
  assert checkpoint.saved_steps(last) == [5, 6]

  variables, step, note = checkpoint.read_variables(best)  # Default: the best.
  assert (step, note) == (2, 'the best checkpoint, step 2 (90.00% eval accuracy)')
  np.testing.assert_array_equal(variables['params']['kernel'], np.full((2, 3), 2.0))
  _, step, note = checkpoint.read_variables(best, 'latest')
  assert (step, note) == (6, 'the latest checkpoint, step 6 (60.00% eval accuracy)')
  _, step, note = checkpoint.read_variables(last)  # No eval metrics: the latest.
  assert (step, note) == (6, 'the latest checkpoint, step 6')
  assert checkpoint.read_variables(best, 5)[1:] == (5, 'the requested checkpoint, step 5')
  with pytest.raises(errors.BadInput, match=r"No checkpoint of step 3 in .*; it has \[2, 5, 6\]"):
    checkpoint.read_variables(best, 3)


def test_reading_a_missing_run_creates_nothing(tmp_path):
  missing = tmp_path / 'nothing_here'
  with pytest.raises(errors.BadInput, match='No checkpoint found'):
    checkpoint.read_variables(str(missing))
  assert not missing.exists()
  assert checkpoint.saved_steps(str(missing)) == []
  assert not workdir.checkpoints(str(missing)).exists()


def test_restore_after_the_best_brings_back_the_latest(tmp_path):
  run = str(tmp_path / 'run')
  _save_run(run, keep_best=True)
  manager = checkpoint.create_manager(run, keep=2, keep_best=True)
  abstract = jax.eval_shape(lambda: _state(0.0))
  restored = checkpoint.restore_latest(manager, abstract, run)
  assert int(restored.step) == 6
  np.testing.assert_array_equal(restored.params['kernel'], np.full((2, 3), 6.0))
  assert manager.best_step() == 2  # Known after a restart: the metrics are on disk.
  manager.close()


def test_reading_writes_nothing_and_orbax_says_nothing(tmp_path, caplog):
  run = str(tmp_path / 'run')
  _save_run(run, keep_best=True)
  before = snapshot(run)
  caplog.clear()
  ocp.CheckpointManagerOptions(read_only=True)  # The option read_variables used warns, ...
  assert any('read_only=True' in r.getMessage() for r in caplog.records)  # ... seen here.
  caplog.clear()
  for step in ('best', 'latest', 5):
    checkpoint.read_variables(run, step)
  assert snapshot(run) == before
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def _damage(path: str, how: str) -> None:
  if how == 'delete':
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return
  with open(path, 'r+b') as f:
    data = f.read()
    f.seek(0)
    f.truncate()
    f.write(data[:len(data) // 2] if how == 'truncate' else bytes(b ^ 0x5A for b in data))


@pytest.mark.parametrize('what, how, reason', [
    ('params/d/*', 'truncate', r'OUT_OF_RANGE: {step_dir}/params/d/\w+: Requested byte range'),
    ('params/d/*', 'garble', r'DATA_LOSS: {step_dir}/params/d/\w+: Error decoding b-tree node'),
    ('params/d/*', 'delete', r'NOT_FOUND: {step_dir}/params/d/\w+'),
    ('params/manifest.ocdbt', 'truncate', r'DATA_LOSS: {step_dir}/params/manifest.ocdbt: Error'),
    ('params/_METADATA', 'truncate', r'a metadata file is not JSON: '),
    ('params/_METADATA', 'delete', r'{step_dir} holds no params'),
    ('params', 'delete', r'{step_dir} holds no params'),
    ('metrics/metrics', 'garble', r'a metadata file is not JSON: Expecting value'),
])
def test_a_damaged_checkpoint_is_named_in_one_line(tmp_path, capfd, monkeypatch, what, how,
                                                   reason):
  """Each damage to the best checkpoint (step 2): bad input naming the run and the step, for
  the best one and for step 2 asked for by number, and nothing else printed (of 100 arrays read
  at once, those still in flight when one failed); the others stay readable."""
  run = str(tmp_path / 'run')
  _save_run(run, keep_best=True, layers=98)
  step_dir = os.path.join(workdir.checkpoints(run), '2')
  for path in glob.glob(os.path.join(step_dir, what)):
    _damage(path, how)
  capfd.readouterr()
  unraisable = []  # Errors raised in threads that nothing catches (pytest would only warn).
  monkeypatch.setattr(sys, 'unraisablehook', unraisable.append)
  expected = (re.escape(f'The checkpoint of step 2 in {run} is damaged or incomplete (') +
              reason.format(step_dir=re.escape(step_dir)) + r'.*\); ' +
              re.escape('its other checkpoints: step 5, 6 (evaluate, predict and export take '
                        '--step).'))
  for step in ('best', 2):
    with pytest.raises(errors.BadInput) as e:
      checkpoint.read_variables(run, step)
    assert re.fullmatch(expected, str(e.value)), str(e.value)
    assert '\n' not in str(e.value) and 'tensorstore_spec' not in str(e.value)
  variables, step, _ = checkpoint.read_variables(run, 'latest')
  assert step == 6 and variables['params']['kernel'][0, 0] == 6.0
  time.sleep(0.5)  # Reads still in flight when the first one failed have finished.
  out, err = capfd.readouterr()
  assert 'Traceback' not in out + err and 'Event loop is closed' not in out + err, err[-2000:]
  assert not unraisable, [str(u.exc_value) for u in unraisable]


def test_commands_on_a_damaged_run_say_one_line(teacher_run, tmp_path):
  """evaluate, predict and export on a run whose latest checkpoint is truncated: exit 2, the
  error line alone besides absl's INFO log (no orbax warning, no traceback), nothing written."""
  run_dir = str(tmp_path / 'run')
  shutil.copytree(teacher_run, run_dir)
  step_dir = os.path.join(workdir.checkpoints(run_dir), '10')
  for path in glob.glob(os.path.join(step_dir, 'params', '**', 'd', '*'), recursive=True):
    _damage(path, 'truncate')
  image = tmp_path / 'image.png'
  image.write_bytes(tf.io.encode_png(np.zeros((28, 28, 1), np.uint8)).numpy())
  commands = [command('big_distill.evaluate', f'--workdir={run_dir}'),
              command('big_distill.predict', f'--workdir={run_dir}', str(image)),
              command('big_distill.export', f'--workdir={run_dir}',
                      f'--output={tmp_path / "out" / "student.npz"}')]
  before = snapshot(str(tmp_path))
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    procs = list(pool.map(lambda cmd: run(cmd, check=False), commands))
  expected = re.compile(
      re.escape(f'big_distill: error: The checkpoint of step 10 in {run_dir} is damaged or '
                f'incomplete (OUT_OF_RANGE: {step_dir}/params/d/') +
      r'\w+: Requested byte range .*\); ' +
      re.escape('its other checkpoints: step 5 (evaluate, predict and export take --step).'))
  for cmd, proc in zip(commands, procs):
    assert proc.returncode == errors.BAD_INPUT, (cmd, proc.stderr[-3000:])
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not ABSL_INFO.match(l)]
    assert len(lines) == 1 and expected.fullmatch(lines[0]), (cmd, lines)
    assert proc.stdout == ''
  assert snapshot(str(tmp_path)) == before
