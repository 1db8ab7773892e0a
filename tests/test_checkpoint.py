"""The training state's checkpoints: which ones stay (the last few and the best eval one) and
which one a reader gets."""

import jax
import numpy as np
import optax
import pytest

from big_distill import checkpoint, errors, steps, workdir


def _state(value: float) -> steps.TrainState:
  params = {'kernel': np.full((2, 3), value, np.float32), 'bias': np.zeros(3, np.float32)}
  return steps.new_state({'params': params}, optax.sgd(0.1))


def _save_run(run: str, keep_best: bool) -> None:
  """Six checkpoints; steps 2, 4 and 6 saved at evals with accuracies 0.9, 0.5 and 0.6."""
  accuracy = {2: 0.9, 4: 0.5, 6: 0.6}
  manager = checkpoint.create_manager(run, keep=2, keep_best=keep_best)
  for step in range(1, 7):
    metrics = {'eval/student_accuracy': accuracy[step]} if step in accuracy else None
    checkpoint.save(manager, step, _state(step), metrics if keep_best else None)
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
