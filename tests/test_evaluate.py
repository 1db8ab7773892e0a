"""evaluate and predict: the run's own eval numbers, per-example agreement, eval sets, bad input."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from big_distill import errors
from tests.helpers import (TEACHER_CONFIG, TINY_TEACHER, command, error_lines, read_metrics, run,
                           run_main, snapshot)

SPLIT = 'test[:256]'  # The runlocal configs' eval split.


def _last(workdir: str, key: str) -> float:
  return [r for r in read_metrics(workdir) if key in r][-1][key]


def _evaluate(*args: str) -> dict:
  return json.loads(run(command('big_distill.evaluate', *args)).stdout.splitlines()[-1])


@pytest.fixture(scope='module')
def test_images(tmp_path_factory) -> tuple[str, list[int]]:
  """The first 12 images of the test split as PNG files, in split order, and their labels."""
  folder = tmp_path_factory.mktemp('images')
  examples = list(tfds.load('fashion_mnist', split='test[:12]').as_numpy_iterator())
  for i, ex in enumerate(examples):
    tf.io.write_file(str(folder / f'{i:02d}.png'), tf.io.encode_png(ex['image']))
  return str(folder), [int(ex['label']) for ex in examples]


def test_evaluate_gives_the_runs_own_eval_and_predict_agrees_per_example(
    tmp_path, distill_run, test_images):
  predictions = str(tmp_path / 'predictions.jsonl')
  got = _evaluate(f'--workdir={distill_run}', '--teachers', f'--predictions={predictions}')
  assert got['split'] == SPLIT and got['examples'] == 256
  assert got['model'].startswith('the student of the best checkpoint, step 10 (')
  for ours, runs in (('accuracy', 'student_accuracy'), ('teacher_accuracy', 'teacher_accuracy'),
                     ('agreement', 'agreement_top1')):
    assert got[ours] == _last(distill_run, f'eval/{runs}'), ours
  assert got['kl'] == pytest.approx(_last(distill_run, 'eval/kl'), rel=1e-5)

  rows = [json.loads(l) for l in open(predictions)]
  assert [r['index'] for r in rows] == list(range(256))
  correct = np.array([r['prediction'] == r['label'] for r in rows])
  confidence = np.array([r['probability'] for r in rows])
  assert correct.mean() == got['accuracy']
  ece = 0.0  # Recomputed from the per-example rows, 15 bins of confidence.
  for b in range(15):
    in_bin = (confidence >= b / 15) & ((confidence < (b + 1) / 15) | (b == 14))
    if in_bin.any():
      ece += abs(correct[in_bin].mean() - confidence[in_bin].mean()) * in_bin.mean()
  assert got['ece'] == pytest.approx(ece, abs=1e-6)
  assert got['top5_accuracy'] >= got['accuracy']

  folder, labels = test_images
  lines = run(command('big_distill.predict', f'--workdir={distill_run}', '--json', '--top_k=3',
                      folder)).stdout.splitlines()
  shown = [json.loads(l) for l in lines]
  assert [os.path.basename(s['file']) for s in shown] == sorted(os.listdir(folder))
  for s, row, label in zip(shown, rows, labels):
    assert row['label'] == label
    top = s['top'][0]
    assert top['class'] == row['prediction']
    assert top['probability'] == pytest.approx(row['probability'], rel=1e-5)
    assert top['name'] == ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                           'Shirt', 'Sneaker', 'Bag', 'Ankle boot'][top['class']]
    assert [t['probability'] for t in s['top']] == sorted(
        (t['probability'] for t in s['top']), reverse=True)


def test_a_weights_file_and_a_tflite_export_evaluate_as_their_run(tmp_path, teacher_run):
  npz, tflite = str(tmp_path / 'teacher.npz'), str(tmp_path / 'teacher.tflite')
  run(command('big_distill.export', f'--workdir={teacher_run}', f'--output={npz}'))
  run(command('big_distill.export', f'--workdir={teacher_run}', f'--output={tflite}',
              '--format=tflite'))
  from_run = _evaluate(f'--workdir={teacher_run}', f'--split={SPLIT}')
  from_file = _evaluate(f'--weights={npz}', '--model=bit:depth=14,width=0.25', '--channels=1',
                        '--resolution=28', '--dataset=fashion_mnist', f'--split={SPLIT}')
  exported = _evaluate(f'--exported={tflite}', '--dataset=fashion_mnist', f'--split={SPLIT}')
  assert from_file['accuracy'] == from_run['accuracy'] == _last(teacher_run, 'eval/accuracy')
  assert exported['accuracy'] == from_run['accuracy']
  for other in (from_file, exported):
    assert other['ece'] == pytest.approx(from_run['ece'], abs=1e-4)


def test_eval_sets_are_logged_under_their_names(tmp_path):
  workdir = str(tmp_path / 'run')
  run_main(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER,
           f'--config.evals=again={SPLIT}, train_part=train[:64]')
  final = [r for r in read_metrics(workdir) if 'eval/accuracy' in r][-1]
  assert final['again/accuracy'] == final['eval/accuracy']
  assert final['again/loss'] == final['eval/loss']
  assert 0 <= final['train_part/accuracy'] <= 1 and final['train_part/loss'] > 0


def _color_image(path: str) -> str:
  tf.io.write_file(path, tf.io.encode_png(np.zeros((28, 28, 3), np.uint8)))
  return path


@pytest.mark.parametrize('case', [
    'no_model', 'two_models', 'teachers_of_supervised', 'weights_without_model', 'missing_run',
    'predictions_dir', 'bad_step', 'no_images', 'not_an_image', 'colour_for_grey', 'bad_evals'])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case, teacher_run, distill_run):
  text = tmp_path / 'notes.png'
  text.write_text('not an image')
  predictions = tmp_path / 'out' / 'p.jsonl'
  cmd, message = {
      'no_model': (('evaluate',), 'Name one model'),
      'two_models': (('evaluate', f'--workdir={teacher_run}', '--exported=/x'), 'given: workdir'),
      'teachers_of_supervised': (('evaluate', f'--workdir={teacher_run}', '--teachers'),
                                 'supervised run'),
      'weights_without_model': (('evaluate', f'--weights={tmp_path}/a.npz'), '--model'),
      'missing_run': (('evaluate', f'--workdir={tmp_path}/none',
                       f'--predictions={predictions}'), 'holds no big_distill run'),
      'predictions_dir': (('evaluate', f'--workdir={teacher_run}', f'--predictions={tmp_path}'),
                          'is a directory'),
      'bad_step': (('evaluate', f'--workdir={distill_run}', '--step=7'), '7'),
      'no_images': (('predict', f'--workdir={teacher_run}'), 'Name image files'),
      'not_an_image': (('predict', f'--workdir={teacher_run}', str(text)), 'not a readable image'),
      'colour_for_grey': (('predict', f'--workdir={teacher_run}',
                           _color_image(str(tmp_path / 'c.png'))), 'has 3 channels'),
      'bad_evals': (('main', f'--config={TEACHER_CONFIG}:runlocal=True',
                     f'--workdir={tmp_path}/run', '--config.evals=holdout'), 'NAME=SPLIT'),
  }[case]
  before = {p: snapshot(p) for p in (str(tmp_path), teacher_run, distill_run)}
  proc = run(command(f'big_distill.{cmd[0]}', *cmd[1:]), check=False)
  assert proc.returncode == errors.BAD_INPUT, proc.stderr[-2000:]
  line, = error_lines(proc.stderr)
  assert line.startswith('big_distill: error: ') and message in line, line
  assert {p: snapshot(p) for p in before} == before
