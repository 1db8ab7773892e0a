"""Reinforcements (`big_distill.reinforce`): the teachers' targets of the live run's views, stored
once and replayed; the truncated KL of `--top_k`; resume after a kill; any teacher function."""

import json
import os
import shutil
import signal
import socket
import time

import jax
import numpy as np
import pytest

from big_distill import checkpoint, errors, losses, reinforcement, targets
from big_distill import workdir as workdir_lib
from big_distill.data import locks
from tests.helpers import (FUNMATCH_CONFIG, Started, command, error_lines, finish, main_command,
                           read_metrics, run, run_main, snapshot, start)

# 128 training images in batches of 32 at 28 px: 4 steps an epoch.
SMALL = ('--config.input.train_split=train[:128]', '--config.input.eval_split=test[:64]',
         '--config.input.batch_size=32', '--config.input.eval_batch_size=64',
         '--config.input.resolution=28', '--config.student.model=bit:depth=14,width=0.125',
         '--config.schedule.warmup_steps=1', '--config.log_every_steps=4',
         '--config.eval_every_steps=8', '--config.checkpoint_every_steps=8')


def _kl(p_logp, q_logp):
  return np.sum(np.exp(p_logp) * (p_logp - q_logp), -1)


def test_top_k_and_the_rest_give_the_coarsened_kl():
  """`encode` keeps the k most probable classes and the rest's mass; `losses.truncated_kl` is the
  KL of both distributions over those k + 1 outcomes (computed here from the full ones), at most
  the full KL, and the full KL where k covers every class the teacher gives mass to."""
  rng = np.random.default_rng(0)
  teacher = jax.nn.log_softmax(rng.normal(0, 3, (6, 10)) / 2.0).astype(np.float32)
  student_logits = rng.normal(0, 2, (6, 10)).astype(np.float32)
  stored = reinforcement.encode(np.asarray(teacher), 3)
  assert stored['top_class'].shape == (6, 3)
  np.testing.assert_array_equal(stored['top_class'], np.argsort(-teacher, -1)[:, :3])
  np.testing.assert_allclose(np.exp(stored['rest_logp']),
                             1 - np.exp(stored['top_logp']).sum(-1), rtol=1e-5)
  got = losses.truncated_kl(stored['top_logp'], stored['top_class'], stored['rest_logp'],
                            student_logits, 2.0)
  student = np.asarray(jax.nn.log_softmax(student_logits / 2.0))
  coarse = []
  for t, s, top in zip(teacher, student, stored['top_class']):
    rest = np.setdiff1d(np.arange(10), top)
    p = np.append(np.exp(t[top]), np.exp(t[rest]).sum())
    q = np.append(np.exp(s[top]), np.exp(s[rest]).sum())
    coarse.append(4.0 * np.sum(p * np.log(p / q)))  # T^2 = 4.
  np.testing.assert_allclose(got, coarse, rtol=1e-4)
  assert np.all(np.asarray(got) <= 4.0 * _kl(teacher, student) + 1e-5)
  one_hot = np.log(np.eye(10)[[2, 5]] + 1e-30).astype(np.float32)  # All mass in one class.
  stored = reinforcement.encode(one_hot, 1)
  np.testing.assert_allclose(
      losses.truncated_kl(stored['top_logp'], stored['top_class'], stored['rest_logp'],
                          student_logits[:2]),
      losses.kl_divergence(one_hot, student_logits[:2]), rtol=1e-4, atol=1e-6)


def test_replay_order_is_the_live_order_then_fresh_orders_of_epochs():
  first = targets.replay_order(10, 4, 0, seed=0)
  assert first == list(range(10))  # The live run's own order: exact.
  later = [targets.replay_order(10, 4, c, seed=0) for c in (1, 2, 3)]
  for order in later:
    assert sorted(order) == list(range(10))  # Every stored step once a cycle ...
    starts = [s for i, s in enumerate(order) if i == 0 or order[i - 1] != s - 1]
    assert set(starts) <= {0, 4, 8}  # ... blocks (epochs) kept whole, in a new order.
  assert len({tuple(o) for o in later}) > 1
  assert targets.replay_order(10, 4, 2, seed=0) == later[1]  # A function of (seed, cycle).


def _reinforce(config: str, workdir: str, *extra: str, check: bool = True):
  return run(command('big_distill.reinforce', f'--config={config}', f'--workdir={workdir}',
                     *SMALL, *extra), check=check, timeout=900)


def _arrays(path: str) -> dict[str, np.ndarray]:
  store = reinforcement.open_store(path)
  out = store.read_steps(0, store.layout.steps, slice(None))
  return {**out, **{f'eval/{n}': store.read_eval(n) for n in store.layout.eval_sets}}


def test_a_replay_trains_as_the_live_run_and_a_killed_reinforce_resumes(tmp_path, teacher_run):
  """K = 2 views (8 steps); the run that replays them takes the live funmatch run's steps: the
  same parameters to float32 rounding (with SGD: Adam's per-parameter normalisation turns the
  rounding of gradients near zero into whole steps of the learning rate); a reinforce killed after its first chunk and run again
  stores exactly what an uninterrupted one does."""
  config = f'{FUNMATCH_CONFIG}:teacher={teacher_run}'
  whole, resumed = str(tmp_path / 'whole'), str(tmp_path / 'resumed')
  summary = json.loads(_reinforce(config, whole, '--views=2',
                                  '--steps_per_chunk=4').stdout.splitlines()[-1])
  assert (summary['steps'], summary['views'], summary['teacher_forwards_per_example']) == (
      8, 256, 2.0)
  assert summary['bytes_per_view'] == 4 * 10 + 4 + 4 / 32  # float32 logp, index, ratio.

  proc = start(command('big_distill.reinforce', f'--config={config}', f'--workdir={resumed}',
                       *SMALL, '--views=2', '--steps_per_chunk=4'))
  progress = os.path.join(resumed, 'progress.0.json')
  deadline = time.time() + 300
  while not os.path.exists(progress) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert reinforcement.open_store(resumed).summary is None  # Unfinished ...
  _reinforce(config, resumed, '--views=2', '--steps_per_chunk=4')  # ... and finished.
  a, b = _arrays(whole), _arrays(resumed)
  assert a.keys() == b.keys() and {'logp', 'index', 'ratio', 'eval/eval'} <= a.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert len(set(a['index'].ravel())) == 128 and np.all(a['ratio'] > 0)

  live, replayed = str(tmp_path / 'live'), str(tmp_path / 'replayed')
  sgd = ('--config.total_steps=8', '--config.optimizer.name=sgd')
  run_main(config, live, *SMALL, *sgd)
  run_main(config, replayed, *SMALL, *sgd, f'--config.reinforcement.path={whole}')
  ours, theirs = (jax.tree_util.tree_leaves(checkpoint.read_variables(w, 'latest')[0])
                  for w in (replayed, live))
  for x, y in zip(ours, theirs):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  finals = [[r for r in read_metrics(w) if 'eval/kl' in r][-1] for w in (replayed, live)]
  for key in ('eval/teacher_accuracy', 'eval/agreement_top1', 'eval/kl'):
    assert finals[0][key] == pytest.approx(finals[1][key], rel=1e-4, abs=1e-6), key


TIMM_TEACHER = """
import numpy as np
import timm
import torch
from safetensors.torch import load_file

_model = timm.create_model('mobilenetv3_small_050', num_classes=10).eval()
_model.load_state_dict(load_file({path!r}))
_MEAN, _STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def logits(images):
  images = (np.repeat(images, 3, axis=-1) - _MEAN) / _STD  # Grey: the stem sees it thrice.
  with torch.no_grad():
    return _model(torch.from_numpy(images.transpose(0, 3, 1, 2)).float()).numpy()
"""


def test_a_timm_teacher_in_pytorch_teaches_as_its_converted_weights(tmp_path):
  """`--teacher_fn`: a timm MobileNetV3 running in PyTorch (its own process; the function of
  docs/reinforce.md's `mine.py`) gives the targets that the same weights give as the config's
  teacher (`timm:` entry, JAX), to 1e-4."""
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = timm.create_model('mobilenetv3_small_050', num_classes=10)
  with torch.no_grad():
    for name, value in model.state_dict().items():
      if value.dtype.is_floating_point:
        value.copy_(torch.randn_like(value) * 0.2 + (1.0 if name.endswith('running_var') else 0))
  weights = str(tmp_path / 'teacher.safetensors')
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
  (tmp_path / 'timm_teacher.py').write_text(TIMM_TEACHER.format(path=weights))
  config = (f'{FUNMATCH_CONFIG}:teacher={weights},teacher_model=timm:mobilenetv3_small_050')
  jax_dir, torch_dir = str(tmp_path / 'jax'), str(tmp_path / 'torch')
  _reinforce(config, jax_dir, '--views=1')
  proc = run(command('big_distill.reinforce', f'--config={config}', f'--workdir={torch_dir}',
                     *SMALL, '--views=1', '--teacher_fn=timm_teacher:logits'), timeout=900,
             check=False, PYTHONPATH=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  ours, theirs = _arrays(jax_dir), _arrays(torch_dir)
  assert np.std(ours['logp']) > 0.1  # Not trivial targets.
  for key in ('logp', 'eval/eval'):
    np.testing.assert_allclose(theirs[key], ours[key], atol=1e-4, err_msg=key)
  np.testing.assert_array_equal(theirs['index'], ours['index'])


BAD_FUNCTION = """
import numpy as np


def wrong_shape(images):
  return np.zeros((len(images), 3), np.float32)
"""


@pytest.fixture(scope='module')
def top_k_store(tmp_path_factory, teacher_run) -> str:
  """K = 1 (4 steps) of the tiny teacher: the top 3 of 10 classes and the rest, in float16."""
  path = str(tmp_path_factory.mktemp('reinforcements') / 'top3')
  _reinforce(f'{FUNMATCH_CONFIG}:teacher={teacher_run}', path, '--views=1', '--top_k=3')
  return path


def test_a_replay_past_its_views_with_live_steps_resumes_exactly_and_knows_its_teachers(
    tmp_path, top_k_store, teacher_run):
  """12 steps on 4 stored ones (three cycles), a quarter of them live (the teachers loaded):
  resumed from its step-4 checkpoint it ends bit-identical. Given no teacher (`teacher=`), the run
  takes the reinforcement's, so `evaluate --teachers` loads them, and their accuracy is the one
  the replay measured from the stored eval targets; the dry run says where its targets are."""
  config = f'{FUNMATCH_CONFIG}:teacher='
  flags = (*SMALL, f'--config.reinforcement.path={top_k_store}', '--config.total_steps=12',
           '--config.reinforcement.live_fraction=0.25', '--config.checkpoint_every_steps=4',
           '--config.eval_every_steps=4')
  dry = run(main_command(config, str(tmp_path / 'dry'), *flags, '--dry_run')).stdout
  dry = json.loads(dry[dry.index('{'):])
  assert dry['targets'] == {'source': 'stored', 'path': top_k_store}
  assert [t['checkpoint'] for t in dry['teachers']] == [teacher_run]
  assert not os.path.exists(tmp_path / 'dry')

  whole, resumed = str(tmp_path / 'whole'), str(tmp_path / 'resumed')
  run_main(config, whole, *flags)
  shutil.copytree(whole, resumed)
  for step in (8, 12):
    shutil.rmtree(os.path.join(str(workdir_lib.checkpoints(resumed)), str(step)))
  assert checkpoint.saved_steps(resumed) == [4]
  run_main(config, resumed, *flags)
  for x, y in zip(*(jax.tree_util.tree_leaves(checkpoint.read_variables(w, 'latest')[0])
                    for w in (whole, resumed))):
    np.testing.assert_array_equal(x, y)

  got = json.loads(run(command('big_distill.evaluate', f'--workdir={whole}', '--teachers',
                               '--step=latest')).stdout.splitlines()[-1])
  last = [r for r in read_metrics(whole) if 'eval/teacher_accuracy' in r][-1]
  assert got['teacher_accuracy'] == last['eval/teacher_accuracy']
  assert got['agreement'] == pytest.approx(last['eval/agreement_top1'], abs=1e-9)


def test_bad_reinforcements_and_replays_are_one_line_and_write_nothing(tmp_path, teacher_run,
                                                                        top_k_store):
  """Exit 2, one line, nothing written: K < 1, top_k of every class, a teacher function that
  cannot be imported or returns the wrong shape, a workdir another reinforce holds; replaying an unfinished reinforcement, one of
  another temperature, data, augmentation or teacher, or with a live fraction of 1."""
  config = f'{FUNMATCH_CONFIG}:teacher={teacher_run}'
  (tmp_path / 'bad_teacher.py').write_text(BAD_FUNCTION)
  done = top_k_store
  unfinished = str(tmp_path / 'unfinished')
  shutil.copytree(done, unfinished)
  os.remove(os.path.join(unfinished, reinforcement.COMPLETE))
  other_teacher = str(tmp_path / 'other_teacher')  # The same weights elsewhere: other teachers.
  shutil.copytree(teacher_run, other_teacher)
  new, busy = str(tmp_path / 'new'), str(tmp_path / 'busy')
  reinforce = lambda *flags: command('big_distill.reinforce', f'--config={config}',
                                     f'--workdir={new}', *SMALL, *flags)
  replay = lambda path, *flags: main_command(config, new, *SMALL,
                                             f'--config.reinforcement.path={path}', *flags)
  cases = [
      (reinforce('--views=0'), '--views=0; store at least one view of every example.'),
      (reinforce('--views=1', '--top_k=10'), '--top_k=10; use 1 to 9 (the dataset has 10'),
      (reinforce('--views=1', '--teacher_fn=no_such_module:f'),
       '--teacher_fn=no_such_module:f cannot be imported: ModuleNotFoundError'),
      (reinforce('--views=1', '--teacher_fn=bad_teacher:wrong_shape'),
       '--teacher_fn=bad_teacher:wrong_shape returned float32 [1, 3] for images [1, 28, 28, 1]; '
       'it must return float logits [1, 10]'),
      (replay(unfinished), f'{unfinished} is an unfinished reinforcement; finish it'),
      (replay(done, '--config.temperature=2'), 'was made for another run (differs in: '
                                               'temperature)'),
      (replay(done, '--config.input.train_split=train[:96]'), 'differs in: data.examples, '
                                                              'data.train_split'),
      (replay(done, '--config.input.augment=none'), 'differs in: views.augment'),
      (main_command(f'{FUNMATCH_CONFIG}:teacher={other_teacher}', new, *SMALL,
                    f'--config.reinforcement.path={done}'), 'differs in: teachers'),
      (replay(done, '--config.reinforcement.live_fraction=1'),
       'config.reinforcement.live_fraction=1.0; use a share of the steps from 0'),
      (command('big_distill.reinforce', f'--config={config}', f'--workdir={busy}', *SMALL,
               '--views=1'),  # The same reinforce started twice.
       f'--workdir={busy} is in use by another big_distill process on this machine'),
  ]
  with locks.only_user(busy):
    before = snapshot(str(tmp_path))
    for cmd, message in cases:
      proc = run(cmd, check=False, PYTHONPATH=str(tmp_path), PYTHONDONTWRITEBYTECODE='1')
      lines = error_lines(proc.stderr)
      assert proc.returncode == errors.BAD_INPUT and len(lines) == 1, (cmd, proc.stderr[-2000:])
      assert message in lines[0], lines[0]
    assert snapshot(str(tmp_path)) == before


def test_live_steps_are_evenly_spaced_fresh_views():
  """`reinforcement.live_fraction`: step s is live when floor((s + 1) f) > floor(s f); the live
  steps take the live stream's batches in order, the others the replayed stream's, from any
  start step (a resumed run's)."""
  fraction = 0.25
  live = [s for s in range(12) if targets.live_steps(s + 1, fraction) > targets.live_steps(
      s, fraction)]
  assert live == [3, 7, 11]
  for first in (0, 5):
    stream = targets._with_live(  # pylint: disable=protected-access
        (('replayed', r) for r in range(first - targets.live_steps(first, fraction), 99)),
        (('live', k) for k in range(targets.live_steps(first, fraction), 99)), first, fraction)
    got = [next(stream) for _ in range(first, 12)]
    whole = [('live', live.index(s)) if s in live else ('replayed', s - sum(x < s for x in live))
             for s in range(12)]
    assert got == whole[first:]


def _processes(cmd: list[str]) -> list[Started]:
  """`cmd` as 2 processes of one CPU device each, joined on localhost."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{s.getsockname()[1]}'
  return [start([*cmd, f'--coordinator_address={address}', '--num_processes=2',
                 f'--process_id={i}']) for i in (0, 1)]


def test_two_processes_store_and_replay_as_one(tmp_path, teacher_run):
  """Two processes, each writing the rows of its data shard, store what one process with the
  same two data shards stores; two processes replaying it train as one does."""
  config = f'{FUNMATCH_CONFIG}:teacher={teacher_run}'
  shards = '--config.input.data_shards=2'
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  reinforce = lambda workdir, *flags: command(
      'big_distill.reinforce', f'--config={config}', f'--workdir={workdir}', *SMALL,
      '--views=1', '--steps_per_chunk=2', *flags)
  finish([*_processes(reinforce(two)), start(reinforce(one, shards), devices=2)])
  a, b = _arrays(one), _arrays(two)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6, err_msg=key)

  flags = (*SMALL, '--config.optimizer.name=sgd', '--config.total_steps=4',
           f'--config.reinforcement.path={one}')
  replays = {n: str(tmp_path / f'replay_{n}') for n in ('one', 'two')}
  finish([*_processes(main_command(config, replays['two'], *flags)),
          start(main_command(config, replays['one'], *flags, shards), devices=2)])
  jax.tree_util.tree_map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
      *(checkpoint.read_variables(w, 4)[0] for w in replays.values()))
