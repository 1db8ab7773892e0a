"""`big_distill.reproduce`: the study's runs, its bad input, and a stopped study resumed."""

import os
import shutil

import pytest

from big_distill import configlib, errors, runs, workdir as workdir_lib
from tests.helpers import command, error_lines, read_metrics, run, saved_steps, snapshot


def test_plan_of_a_small_data_study(tmp_path):
  """`train[:N]` for every student run, a seed per run in its directory, the supervised baseline
  with the student's size, a fixed teacher's logits cached per N, Shampoo, and about 20 evals per
  run with a warm-up of at most a tenth of it."""
  root, teacher = str(tmp_path), str(tmp_path / 'teacher')
  stages = runs.plan(root, teacher, epochs=['30', '3000'], variant_names=['fixed', 'funmatch'],
                          seeds=['0', '1'], train_examples=1000, baseline=True)
  names = [os.path.basename(s.workdir) for s in stages]
  assert names == [f'{v}_{e}ep_n1000_s{s}' for s in (0, 1) for e in (30, 3000)
                   for v in ('supervised', 'fixed', 'funmatch')]
  by_name = dict(zip(names, stages))
  fixed = by_name['fixed_3000ep_n1000_s1']
  assert fixed.config.endswith(f'distill.py:epochs=3000.0,teacher={teacher},variant=fixed')
  # 3000 epochs of 1000 examples in batches of 128: 23437 steps, an eval every 1172.
  evals = ('--config.evals=train_eval=train[:1000]',) if 'evals' in configlib.base_config() else ()
  assert fixed.overrides == (
      '--config.eval_every_steps=1172', '--config.seed=1', '--config.input.augment=inception_crop',
      '--config.input.train_split=train[:1000]', *evals,
      f'--config.teacher_logits_cache={root}/teacher_logits_n1000.npy')
  short = by_name['funmatch_30ep_n1000_s0'].overrides  # 234 steps.
  assert '--config.eval_every_steps=100' in short
  assert '--config.schedule.warmup_steps=23' in short
  supervised = by_name['supervised_30ep_n1000_s0']
  assert supervised.config.endswith('teacher.py:epochs=30.0')
  assert {'--config.student.model=bit:depth=14,width=0.125',
          '--config.input.train_split=train[:1000]'} <= set(supervised.overrides)
  shampoo = runs.plan(root, teacher, epochs=['1'], variant_names=['funmatch'], seeds=['0'],
                           optimizer='shampoo', overrides=['input.batch_size=256'])
  assert os.path.basename(shampoo[0].workdir) == 'funmatch_1ep_shampoo_s0'
  assert shampoo[0].overrides[-2:] == ('--config.optimizer.name=shampoo',
                                       '--config.input.batch_size=256')
  assert '--config.eval_every_steps=100' in shampoo[0].overrides  # 234 steps of 256.
  for kw, message in (
      (dict(train_examples=60001), '--train_examples=60001; use 1 to 60000'),
      (dict(train_examples=0), '--train_examples=0; use 1 to 60000'),
      (dict(seeds=['0', '-1']), "--seeds: '0,-1'; use non-negative integers."),
      (dict(epochs=['0']), "--epochs: '0' is not a positive number of epochs."),
      (dict(overrides=['input.batch_sise=3']),
       "--override: --config.input.batch_sise: config.input has no key 'batch_sise'; did you mean "
       "'batch_size'\\?"),
  ):
    with pytest.raises(errors.BadInput, match=message.replace('[', r'\[')):
      runs.plan(root, teacher, **{**dict(epochs=['1'], variant_names=['fixed'],
                                              seeds=['0']), **kw})
  assert os.listdir(root) == []


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
  workdir = str(tmp_path / 'study')
  proc = run(command('big_distill.reproduce', f'--workdir={workdir}', '--train_examples=70000'),
             check=False)
  assert proc.returncode == errors.BAD_INPUT
  assert error_lines(proc.stderr) == [
      'big_distill: error: --train_examples=70000; use 1 to 60000, the examples of '
      "fashion_mnist's train split."]
  assert not os.path.exists(workdir)


def test_a_stopped_study_resumes_and_reports_what_has_finished(tmp_path, teacher_run):
  """Tiny runs on 64 images; the baseline's last checkpoint is then lost, as if the command had
  been stopped: run again, the finished distillation is not started again, the baseline resumes
  from its newest checkpoint, and the report covers both."""
  root = str(tmp_path / 'study')
  cmd = command('big_distill.reproduce', f'--workdir={root}', f'--teacher={teacher_run}',
                '--train_examples=64', '--epochs=2', '--variants=fixed', '--baseline',
                '--override=input.resolution=28', '--override=input.eval_split=test[:128]',
                '--override=input.batch_size=32', '--override=checkpoint_every_steps=2')
  run(cmd)
  supervised, fixed = (os.path.join(root, f'{v}_2ep_n64_s0') for v in ('supervised', 'fixed'))
  assert runs.finished(supervised) and runs.finished(fixed)
  assert saved_steps(supervised) == [2, 4]  # 2 epochs of 64 examples in batches of 32.
  assert os.path.exists(os.path.join(root, 'teacher_logits_n64.npy'))
  keys = set().union(*read_metrics(fixed))
  assert ('train_eval/agreement_top1' in keys) == ('evals' in configlib.base_config())
  shutil.rmtree(os.path.join(workdir_lib.checkpoints(supervised), '4'))
  assert not runs.finished(supervised)
  before = snapshot(fixed)
  proc = run(cmd)
  assert f'[2/2 fixed, 2 epochs, seed 0] finished: {fixed}' in proc.stdout
  assert 'Resuming from the checkpoint of step 2' in proc.stderr
  assert runs.finished(supervised) and snapshot(fixed) == before
  results = (tmp_path / 'study' / 'results.md').read_text()
  assert '## fashion_mnist, train[:64]' in results
  assert '| supervised_2ep_n64_s0 | supervised | 2 epochs | 0 | 4 |' in results
  assert '| fixed_2ep_n64_s0 | fixed | 2 epochs | 0 | 4 |' in results
  assert os.path.exists(os.path.join(root, 'accuracy_fashion_mnist_train_64.png'))


def test_students_of_every_length_replay_one_reinforcement_and_the_report_says_its_cost(
    tmp_path, teacher_run):
  """`--views=1`: one reinforcement per variant and seed, made before its first student and
  replayed by the students of both lengths; the plan keeps the fixed teacher on its logits cache
  and the baseline on labels; the report gives the reinforcement's cost and its two runs."""
  root = str(tmp_path / 'study')
  stages = runs.plan(root, teacher_run, epochs=['1', '2'], variant_names=['fixed', 'funmatch'],
                     seeds=['0'], train_examples=64, baseline=True, views=1)
  store = os.path.join(root, 'reinforcement_funmatch_k1_n64_s0')
  assert [(os.path.basename(s.workdir), s.module) for s in stages] == [
      ('supervised_1ep_n64_s0', runs.MAIN), ('fixed_1ep_n64_s0', runs.MAIN),
      (os.path.basename(store), runs.REINFORCE), ('funmatch_1ep_n64_k1_s0', runs.MAIN),
      ('supervised_2ep_n64_s0', runs.MAIN), ('fixed_2ep_n64_s0', runs.MAIN),
      ('funmatch_2ep_n64_k1_s0', runs.MAIN)]
  assert stages[2].config.endswith(f'distill.py:teacher={teacher_run},variant=funmatch')
  assert '--views=1' in stages[2].overrides
  assert '--config.input.train_split=train[:64]' in stages[2].overrides
  for stage in stages:
    replays = f'--config.reinforcement.path={store}' in stage.overrides
    assert replays == stage.workdir.endswith('_k1_s0'), stage

  cmd = command('big_distill.reproduce', f'--workdir={root}', f'--teacher={teacher_run}',
                '--train_examples=64', '--epochs=1,2', '--variants=funmatch', '--views=1',
                '--override=input.resolution=28', '--override=input.eval_split=test[:128]',
                '--override=input.batch_size=32')
  proc = run(cmd)
  assert '[1/3 reinforce funmatch, K=1, seed 0]' in proc.stdout
  for length in (1, 2):
    workdir = os.path.join(root, f'funmatch_{length}ep_n64_k1_s0')
    assert runs.finished(workdir)
    assert workdir_lib.read_config(workdir)['reinforcement']['path'] == store
  results = (tmp_path / 'study' / 'results.md').read_text()
  assert '| funmatch, K=1 |' in results
  # K = 1: 64 views, and the eval sets' 128 + 64 images (`train_eval`): 256 teacher forwards.
  assert f'| {store} | 1 | 256 | 1.0 |' in results
  assert '| 2 runs | 3 |' in results  # Replayed by the runs of 1 and 2 epochs.
  row, = [l for l in results.splitlines() if l.startswith('| funmatch_2ep_n64_k1_s0 |')]
  assert row.split(' | ')[-2] == '1'  # Teacher forwards per image: its reinforcement's K.
  assert os.path.exists(os.path.join(root, 'teacher_cost_fashion_mnist_train_64.png'))
