"""`big_distill.report`: results.md and plots from workdirs written by the test."""

import json
import os
import subprocess
import sys

import matplotlib.image
import pytest

from big_distill import workdir as workdir_lib
from big_distill import report
from big_distill.data import synthetic

FLOWERS_TRAIN = 1020  # Examples in oxford_flowers102's train split.


def _workdir(path, *, variant='funmatch', mode='distill', epochs=None, steps=None,
             batch_size=512, dataset='oxford_flowers102', data_dir=None, accuracy=0.5,
             agreement=None, teacher=None, num_train=FLOWERS_TRAIN, log_epoch=True,
             train_split='train', seed=0, optimizer='adam', train_agreement=None,
             teachers=()):
  """A workdir as the trainer leaves it: config.json and metrics.jsonl (train records with an
  `epoch` field if `log_epoch`, four evals ending at `accuracy` / `agreement` and, on the
  training examples, `train_agreement`); `teachers`: the checkpoints its teachers load."""
  os.makedirs(path)
  config = dict(mode=mode, variant=variant, total_epochs=epochs, total_steps=steps, seed=seed,
                optimizer=dict(name=optimizer),
                input=dict(dataset=dataset, data_dir=data_dir, train_split=train_split,
                           batch_size=batch_size),
                teachers=[dict(model='bit', checkpoint=str(t)) for t in teachers])
  with open(os.path.join(path, workdir_lib.CONFIG), 'w') as f:
    json.dump(config, f)
  last = steps or int(epochs * num_train / batch_size)
  with open(os.path.join(path, workdir_lib.METRICS), 'w') as f:
    for i in range(1, 5):
      step = last * i // 4
      train = {'step': step, 'train/loss': 1.0 / i}
      if log_epoch:
        train['epoch'] = step * batch_size / num_train
      f.write(json.dumps(train) + '\n')
      key = 'eval/accuracy' if mode == 'supervised' else 'eval/student_accuracy'
      evals = {'step': step, key: accuracy - 0.1 * (4 - i)}
      if agreement is not None:
        evals.update({'eval/agreement_top1': agreement - 0.1 * (4 - i),
                      'eval/kl': 0.1 * (5 - i), 'eval/teacher_accuracy': teacher})
      if train_agreement is not None:
        evals.update({'train_eval/agreement_top1': train_agreement - 0.01 * (4 - i),
                      'train_eval/kl': 0.01 * (5 - i)})
      f.write(json.dumps(evals) + '\n')
  return str(path)


def _table(markdown: str, section: str) -> dict[str, dict[str, str]]:
  """The variant x length table under `## section`: {variant: {length: cell}}."""
  lines = markdown.split(f'## {section}\n', 1)[1].strip().splitlines()
  header = [c.strip() for c in lines[0].strip('|').split('|')]
  rows = {}
  for line in lines[2:]:
    if not line.startswith('|'):
      break
    cells = [c.strip() for c in line.strip('|').split('|')]
    rows[cells[0]] = dict(zip(header[1:], cells[1:]))
  return rows


def _assert_png(path):
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 0


def test_variants_by_schedule_length(tmp_path):
  d = lambda name, **kw: _workdir(tmp_path / name, teacher=0.9782, **kw)
  runs = report.load_runs([
      d('fm100', epochs=100, accuracy=0.80, agreement=0.85),
      d('fm1000', epochs=1000, accuracy=0.90, agreement=0.93),
      d('cons100', variant='consistent', epochs=100, accuracy=0.78, agreement=0.82),
      d('fix100a', variant='fixed', epochs=100, accuracy=0.70, agreement=0.75),
      d('fix100b', variant='fixed', epochs=100, accuracy=0.72, agreement=0.77),
  ])
  assert runs[1].steps_per_epoch == pytest.approx(FLOWERS_TRAIN / 512)
  assert runs[1].epochs == 1000 and runs[1].last_step == 1992
  epochs, accuracy = runs[1].curve('eval/student_accuracy', in_epochs=True)
  assert list(epochs) == pytest.approx([250, 500, 750, 1000], abs=1)
  assert list(accuracy) == pytest.approx([0.6, 0.7, 0.8, 0.9])

  paths = report.write_report(runs, str(tmp_path / 'out'))
  assert sorted(os.path.basename(p) for p in paths) == [
      'accuracy_oxford_flowers102.png', 'agreement_oxford_flowers102.png', 'results.md',
      'teacher_fit_oxford_flowers102.png']
  with open(tmp_path / 'out' / 'results.md') as f:
    markdown = f.read()
  assert _table(markdown, 'oxford_flowers102') == {
      'consistent': {'100 epochs': '78.00% (82.00%)', '1000 epochs': '—'},
      'fixed': {'100 epochs': '71.00 ± 1.00% (76.00%) [2]', '1000 epochs': '—'},
      'funmatch': {'100 epochs': '80.00% (85.00%)', '1000 epochs': '90.00% (93.00%)'},
  }
  assert 'Teacher accuracy: 97.82%.' in markdown
  assert markdown.index('| fixed |') < markdown.index('| consistent |') < markdown.index(
      '| funmatch |')  # The paper's order.
  assert ('| fm1000 | funmatch | 1000 epochs | 0 | 1992 | 90.00% | 93.00% | — | 97.82% |'
          in markdown)
  assert 'Supervised baseline' not in markdown
  for path in paths[1:]:
    _assert_png(path)


def test_command_line_on_a_supervised_run_and_a_run_without_epochs(tmp_path):
  """Epochs from the TFDS metadata of the run's split when no `epoch` is logged; steps when
  neither is known. Each dataset gets its own section and plots."""
  data_dir = str(tmp_path / 'data')
  synthetic.make_standin('fashion_mnist', data_dir, {'train': 64, 'test': 8})
  supervised = _workdir(tmp_path / 'teacher', mode='supervised', steps=20, batch_size=16,
                        dataset='fashion_mnist', data_dir=data_dir, accuracy=0.91,
                        num_train=64, log_epoch=False)
  unknown = [_workdir(tmp_path / f'other{i}', steps=30 * i, batch_size=16,
                      dataset='no_such_dataset', accuracy=0.4, agreement=0.6,
                      teacher=0.5 + i / 100, log_epoch=False) for i in (1, 2)]
  out = tmp_path / 'out'
  proc = subprocess.run(
      [sys.executable, '-m', 'big_distill.report', f'--workdirs={supervised},{",".join(unknown)}',
       f'--output={out}', '--labels=teacher,a,b'], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert sorted(os.listdir(out)) == ['accuracy_fashion_mnist.png',
                                     'accuracy_no_such_dataset.png',
                                     'agreement_no_such_dataset.png', 'results.md',
                                     'teacher_fit_no_such_dataset.png']
  markdown = (out / 'results.md').read_text()
  assert _table(markdown, 'fashion_mnist') == {'supervised': {'5 epochs': '91.00%'}}
  assert _table(markdown, 'no_such_dataset') == {
      'funmatch': {'30 steps': '40.00% (60.00%)', '60 steps': '40.00% (60.00%)'}}
  assert 'Teacher accuracy: 51.00% (a); 52.00% (b).' in markdown
  assert '| teacher | supervised | 5 epochs | 0 | 20 | 91.00% | — | — | — |' in markdown
  for name in os.listdir(out):
    if name.endswith('.png'):
      _assert_png(out / name)


def test_labels_must_match_workdirs(tmp_path):
  with pytest.raises(ValueError, match='2 labels for 1 workdirs'):
    report.load_runs([_workdir(tmp_path / 'a', epochs=1)], ['x', 'y'])


def test_curve_of_a_resumed_run_takes_each_steps_last_record():
  """A run killed after logging step 20 and resumed from step 10 logs step 20 again."""
  records = [{'step': s, 'eval/student_accuracy': a}
             for s, a in ((10, 0.5), (20, 0.6), (20, 0.61), (30, 0.7))]
  run = report.Run('w', 'w', {}, records, steps_per_epoch=10.0)
  steps, values = run.curve('eval/student_accuracy', in_epochs=False)
  assert steps.tolist() == [10, 20, 30] and values.tolist() == [0.5, 0.61, 0.7]
  assert run.curve('eval/student_accuracy', in_epochs=True)[0].tolist() == [1, 2, 3]


def test_small_data_study_seeds_baseline_and_fit_to_the_teacher(tmp_path):
  """A study on `train[:1000]`: its own section beside the full split's, seeds as mean ± half the
  range, Shampoo as its own setup, the supervised baseline with what the students recover, and
  the fit to the teacher on the training examples next to the eval split's."""
  n, teacher = 1000, 0.90

  def d(name, **kw):
    kw.setdefault('train_split', f'train[:{n}]')
    kw.setdefault('num_train', n)
    return _workdir(tmp_path / name, dataset='fashion_mnist', batch_size=128, **kw)

  distill = dict(teacher=teacher, agreement=0.85)
  runs = report.load_runs([
      d('fm30_s0', epochs=30, accuracy=0.80, train_agreement=0.95, **distill),
      d('fm30_s1', epochs=30, accuracy=0.82, seed=1, train_agreement=0.96, **distill),
      d('fm300_s0', epochs=300, accuracy=0.86, train_agreement=0.99, **distill),
      d('fm300_shampoo', epochs=300, accuracy=0.87, optimizer='shampoo', **distill),
      d('fix300', variant='fixed', epochs=300, accuracy=0.70, train_agreement=1.0, **distill),
      d('sup30', mode='supervised', epochs=30, accuracy=0.78),
      d('sup300', mode='supervised', epochs=300, accuracy=0.75),
      d('full', epochs=3, accuracy=0.88, train_split='train', num_train=60000, **distill),
  ])
  assert runs[2].epochs == 300 and runs[2].steps_per_epoch == pytest.approx(n / 128)
  paths = report.write_report(runs, str(tmp_path / 'out'))
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ['accuracy_fashion_mnist.png', 'accuracy_fashion_mnist_train_1000.png',
                   'agreement_fashion_mnist.png', 'agreement_fashion_mnist_train_1000.png',
                   'results.md', 'teacher_fit_fashion_mnist.png',
                   'teacher_fit_fashion_mnist_train_1000.png']
  markdown = (tmp_path / 'out' / 'results.md').read_text()
  section = 'fashion_mnist, train[:1000]'
  assert _table(markdown, section) == {
      'fixed': {'30 epochs': '—', '300 epochs': '70.00% (85.00%)'},
      'funmatch': {'30 epochs': '81.00 ± 1.00% (85.00%) [2]', '300 epochs': '86.00% (85.00%)'},
      'funmatch (shampoo)': {'30 epochs': '—', '300 epochs': '87.00% (85.00%)'},
      'supervised': {'30 epochs': '78.00%', '300 epochs': '75.00%'},
  }
  assert _table(markdown, 'fashion_mnist') == {'funmatch': {'3 epochs': '88.00% (85.00%)'}}
  body = markdown.split(f'## {section}\n', 1)[1].split('## fashion_mnist\n')[0]
  assert ('Supervised baseline (from scratch on the same training examples, its best '
          'schedule): 78.00% (30 epochs).') in body
  # (student - 0.78) / (0.90 - 0.78): funmatch 30 epochs (0.03 / 0.12), 300 epochs (0.08 / 0.12).
  recovered = body.split('(teacher - baseline)', 1)[1]
  assert '| funmatch | 25% | 67% |' in recovered and '| fixed | — | -67% |' in recovered
  assert '| funmatch (shampoo) | — | 75% |' in recovered
  assert '| fm30_s1 | funmatch | 30 epochs | 1 | 234 | 82.00% | 85.00% | 96.00% | 90.00% |' in body
  # The fit to the teacher: eval split and training examples side by side where logged.
  widths = {name: matplotlib.image.imread(tmp_path / 'out' / name).shape[1] for name in names
            if name.startswith('teacher_fit')}
  assert widths['teacher_fit_fashion_mnist_train_1000.png'] == 1100  # Two columns at 100 dpi.
  assert widths['teacher_fit_fashion_mnist.png'] == 600  # The eval split only.
  for name in names[:-1]:
    if name.endswith('.png'):
      _assert_png(tmp_path / 'out' / name)


def test_a_supervised_run_that_a_student_learns_from_is_its_teacher(tmp_path, monkeypatch):
  """The README's walk-through reports its teacher run and its student: the teacher is no
  baseline, so no share of its lead can be recovered, and says so; lengths of runs that stop at
  a number of steps are rounded. Teachers named by their checkpoints directory, a relative path
  or a trailing slash are the same run."""
  monkeypatch.chdir(tmp_path)
  d = lambda name, **kw: _workdir(tmp_path / name, dataset='imagefolder:/data/pets', batch_size=16,
                                  num_train=93, **kw)  # 93 / 16 steps per epoch.
  teacher = d('my_teacher', mode='supervised', steps=20, accuracy=0.9)
  other_teacher = d('other_teacher', mode='supervised', steps=20, accuracy=0.85)
  student = d('my_student', steps=20, accuracy=0.8, agreement=0.85, teacher=0.9,
              teachers=['my_teacher/'])
  ensemble = d('ensemble_student', steps=40, accuracy=0.82, agreement=0.8, teacher=0.9,
               teachers=[f'{other_teacher}/checkpoints', teacher])
  runs = report.load_runs([teacher, student])
  assert [(r.variant, r.length) for r in runs] == [('teacher', '3.44 epochs'),
                                                   ('funmatch', '3.44 epochs')]
  paths = report.write_report(runs, str(tmp_path / 'out'))
  markdown = (tmp_path / 'out' / 'results.md').read_text()
  for path in paths[1:]:
    _assert_png(path)
  assert _table(markdown, 'imagefolder:/data/pets') == {
      'funmatch': {'3.44 epochs': '80.00% (85.00%)'}, 'teacher': {'3.44 epochs': '90.00%'}}
  assert 'Supervised baseline' not in markdown and '3.44086' not in markdown
  assert ("No share of the teacher's lead recovered: that needs a supervised baseline, a run of "
          "the student's model trained on labels from scratch on the same training examples, and "
          'none of these runs is one') in markdown
  assert '| my_teacher | teacher | 3.44 epochs | 0 | 20 | 90.00% |' in markdown
  assert [r.variant for r in report.load_runs([other_teacher, teacher, ensemble])] == [
      'teacher', 'teacher', 'funmatch']
  assert report.load_runs([other_teacher, student])[0].variant == 'supervised'  # Not its teacher.


def test_the_share_recovered_with_a_teacher_run_and_a_baseline(tmp_path):
  d = lambda name, **kw: _workdir(tmp_path / name, dataset='fashion_mnist', batch_size=128,
                                  num_train=1000, train_split='train[:1000]', **kw)
  teacher = d('teacher', mode='supervised', epochs=30, accuracy=0.90)
  runs = report.load_runs([
      teacher, d('baseline', mode='supervised', epochs=30, accuracy=0.78),
      d('student', epochs=30, accuracy=0.87, agreement=0.9, teacher=0.90, teachers=[teacher])])
  markdown = report.results_markdown(runs)
  assert list(_table(markdown, 'fashion_mnist, train[:1000]')) == [
      'funmatch', 'teacher', 'supervised']
  assert ('Supervised baseline (from scratch on the same training examples, its best schedule): '
          '78.00% (30 epochs).') in markdown
  assert '| funmatch | 75% |' in markdown.split('(teacher - baseline)', 1)[1]  # 0.09 / 0.12.
  behind = report.load_runs([
      d('weak_teacher', mode='supervised', epochs=30, accuracy=0.7),
      d('good_baseline', mode='supervised', epochs=30, accuracy=0.8),
      d('taught', epochs=30, accuracy=0.75, agreement=0.9, teacher=0.7,
        teachers=[tmp_path / 'weak_teacher'])])
  assert ("No share of the teacher's lead recovered: the teacher is not ahead of the supervised "
          'baseline (80.00%).') in report.results_markdown(behind)
