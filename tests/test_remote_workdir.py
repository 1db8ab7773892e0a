"""Workdirs on remote filesystems (`gs://bucket/run`): the trainer's own workdir files go through
`etils.epath`, which reads and writes Cloud Storage.

No bucket is reachable here, so etils' test helper `mock_epath` serves `gs://` from a local
directory, and the Storage API's answer to orbax's question about the bucket (a plain bucket, no
hierarchical namespace; that query needs `google-cloud-storage`) is stubbed. Orbax's array data
(tensorstore) and the TensorBoard events (tf.io.gfile) are written by those libraries, which take
`gs://` URIs themselves; this checks big_distill's part: config, metrics, teacher logits cache,
checkpoint directory, and never a local-path function on the URI.
"""

import json
import os
import types

from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing
import numpy as np
from orbax.checkpoint._src.path import gcs_utils
import pytest

from big_distill import checkpoint, configlib, metrics, teachers, workdir

WORKDIR = 'gs://bucket/run'
BACKEND_FUNCTIONS = ('copy', 'exists', 'glob', 'isdir', 'listdir', 'makedirs', 'mkdir', 'open',
                     'remove', 'rename', 'replace', 'rmtree', 'stat', 'walk')


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """`gs://X` is `tmp_path/gcs/X`, served through epath alone. The current directory is an
  empty one: code taking the URI for a local path would create `./gs:/bucket/...` in it."""
  root = tmp_path / 'gcs'

  def local(path):
    path = os.fspath(path)
    return os.path.join(root, path[len('gs://'):]) if path.startswith('gs://') else path

  def redirect(original, path, *args, **kwargs):
    return original(local(path), *map(local, args), **kwargs)

  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)  # gs:// -> the mocked backend.
  monkeypatch.setattr(gcs_utils, 'get_bucket',
                      lambda name: types.SimpleNamespace(hierarchical_namespace_enabled=False))
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  with epath_testing.mock_epath(**dict.fromkeys(BACKEND_FUNCTIONS, redirect)):
    yield root / 'bucket' / 'run'
  assert not os.listdir(cwd)


def test_workdir_files_go_through_epath(fake_gcs):
  config = configlib.base_config()
  workdir.check(config, WORKDIR)
  assert not os.path.exists(fake_gcs)  # Checks create nothing.
  workdir.create(WORKDIR)
  workdir.write_config(config, WORKDIR)
  config.lr = 0.5
  with pytest.raises(ValueError, match='holds a run of another config'):
    workdir.check(config, WORKDIR)

  writer = metrics.JsonlWriter(epath.Path(WORKDIR) / workdir.METRICS)
  writer.write_scalars(1, {'train/loss': 0.5})
  writer.close()

  assert workdir.read_metrics(WORKDIR) == [{'step': 1, 'train/loss': 0.5}]
  assert workdir.read_config(WORKDIR)['lr'] == 1e-3

  logits = np.arange(12, dtype=np.float32).reshape(3, 1, 4)
  cache = workdir.teacher_logits(WORKDIR, workdir.TEACHER_LOGITS)
  assert teachers.read_cached(cache, {'teacher': 1}) is None
  teachers.write_cached(cache, {'teacher': 1}, logits)
  np.testing.assert_array_equal(teachers.read_cached(cache, {'teacher': 1}), logits)
  with pytest.raises(ValueError, match='holds logits of other teachers'):
    teachers.read_cached(cache, {'teacher': 2})

  manager = checkpoint.create_manager(WORKDIR, keep=1, keep_best=True)
  assert os.fspath(manager.directory) == f'{WORKDIR}/checkpoints'
  manager.close()
  with pytest.raises(ValueError, match='No checkpoint found'):
    checkpoint.read_variables(WORKDIR)

  assert sorted(os.listdir(fake_gcs)) == sorted([
      workdir.CHECKPOINTS, workdir.CONFIG, workdir.METRICS, workdir.TEACHER_LOGITS,
      f'{workdir.TEACHER_LOGITS}.json'])
  with open(fake_gcs / workdir.METRICS) as f:
    assert json.loads(f.read()) == {'step': 1, 'train/loss': 0.5}
  with open(fake_gcs / workdir.CONFIG) as f:
    assert json.load(f)['lr'] == 1e-3


def test_a_remote_run_is_finished_once_its_last_step_is_saved(fake_gcs):
  """`runs.finished` (a teacher run's warning, the reproduction's reuse) reads through epath."""
  from big_distill import runs

  config = configlib.base_config()
  config.total_steps = 3
  workdir.create(WORKDIR)
  workdir.write_config(config, WORKDIR)
  workdir.write_data(WORKDIR, num_classes=10, channels=1, num_train=64)
  (epath.Path(WORKDIR) / workdir.CHECKPOINTS / '2').mkdir(parents=True)
  assert not runs.finished(WORKDIR)
  (epath.Path(WORKDIR) / workdir.CHECKPOINTS / '3').mkdir()
  assert runs.finished(WORKDIR)
  assert sorted(os.listdir(fake_gcs / workdir.CHECKPOINTS)) == ['2', '3']
