"""evaluate and predict: the run's own eval numbers, per-example agreement, eval sets, bad input."""

import json
import os

import numpy as np
from PIL import Image
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


FASHION_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                 'Sneaker', 'Bag', 'Ankle boot')


def _every_kind(folder, pixels: np.ndarray) -> dict[str, str]:
  """One grey image [H, W, 1] written as every kind of file users have, each showing the same
  pixels once decoded (upright, alpha on white, grey): file name -> kind."""
  grey = Image.fromarray(pixels[..., 0])
  exif = Image.Exif()
  exif[0x0112] = 8  # Stored turned clockwise; to be viewed turned back.
  kinds = {'image.png': ('png', grey, {}), 'image.tif': ('tiff', grey, {}),
           'image.bmp': ('bmp', grey, {}),
           'image.webp': ('lossless webp', grey, {'lossless': True}),
           'image.gif': ('gif', grey, {}), 'colour.png': ('RGB', grey.convert('RGB'), {}),
           'opaque.png': ('RGBA', grey.convert('RGBA'), {}),
           'deep.png': ('16-bit', Image.fromarray(pixels[..., 0].astype(np.uint16) * 257), {}),
           'turned.png': ('EXIF-rotated', grey.transpose(Image.Transpose.ROTATE_270),
                          {'exif': exif})}
  for name, (_, image, kwargs) in kinds.items():
    image.save(folder / name, **kwargs)
  return {name: kind for name, (kind, _, _) in kinds.items()}


def test_predict_reads_every_kind_of_file_and_says_which_model(tmp_path, teacher_run):
  """Each file of one image gives the same prediction as its PNG; the OS's own files are skipped,
  an empty file is left out with --skip_bad_images, and stderr names the checkpoint."""
  example = next(tfds.load('fashion_mnist', split='test[:1]').as_numpy_iterator())
  folder = tmp_path / 'kinds'
  folder.mkdir()
  kinds = _every_kind(folder, example['image'])
  (folder / 'Thumbs.db').write_bytes(b'thumbnail cache')
  (folder / 'desktop.ini').write_text('[.ShellClassInfo]')
  (folder / 'empty.jpg').write_bytes(b'')
  proc = run(command('big_distill.predict', f'--workdir={teacher_run}', '--json',
                     '--skip_bad_images', str(folder)))
  shown = {os.path.basename(s['file']): s['top'] for s in map(json.loads,
                                                              proc.stdout.splitlines())}
  assert sorted(shown) == sorted(kinds)
  for name, kind in kinds.items():
    assert [t['class'] for t in shown[name]] == [t['class'] for t in shown['image.png']], kind
    np.testing.assert_allclose([t['probability'] for t in shown[name]],
                               [t['probability'] for t in shown['image.png']], rtol=1e-5,
                               err_msg=kind)
  assert f'Left out 1 file to classify, not a readable image: {folder}/empty.jpg (empty file)' in (
      proc.stderr)
  assert (f'Classifying 9 images with the student of the latest checkpoint, step 10, in '
          f'{teacher_run}.\n' in proc.stderr)


def test_evaluate_maps_a_folder_of_some_classes_by_name(tmp_path, teacher_run):
  """A hold-out folder with two of the run's ten classes: its labels are the run's, by name."""
  examples = tfds.load('fashion_mnist', split='test[:200]').as_numpy_iterator()
  held = {1: [], 8: []}  # Trouser, Bag.
  for ex in examples:
    if int(ex['label']) in held and len(held[int(ex['label'])]) < 4:
      held[int(ex['label'])].append(ex['image'])
  for label, pixels in held.items():
    for i, image in enumerate(pixels):
      os.makedirs(tmp_path / 'holdout' / 'test' / FASHION_NAMES[label], exist_ok=True)
      Image.fromarray(image[..., 0]).save(tmp_path / 'holdout' / 'test' / FASHION_NAMES[label] /
                                          f'{i}.png')
  predictions = tmp_path / 'p.jsonl'
  proc = run(command('big_distill.evaluate', f'--workdir={teacher_run}',
                     f'--dataset=imagefolder:{tmp_path}/holdout', '--split=test',
                     f'--data_dir={tmp_path}/tfds', f'--predictions={predictions}'))
  assert (f"imagefolder:{tmp_path}/holdout holds 2 of the model's 10 classes (not: Ankle boot, "
          'Coat, Dress, Pullover, Sandal, Shirt, Sneaker, T-shirt/top); its labels are the '
          "model's, matched by name." in proc.stderr)
  got = json.loads(proc.stdout.splitlines()[-1])
  rows = [json.loads(l) for l in open(predictions)]
  assert sorted(r['label'] for r in rows) == [1] * 4 + [8] * 4 and got['examples'] == 8
  assert got['accuracy'] == np.mean([r['prediction'] == r['label'] for r in rows])


def _other_classes(tmp_path) -> str:
  for name in ('cat', 'dog'):
    os.makedirs(tmp_path / 'pets' / 'test' / name)
    Image.new('L', (28, 28)).save(tmp_path / 'pets' / 'test' / name / '1.png')
  return f'imagefolder:{tmp_path}/pets'


@pytest.mark.parametrize('case', [
    'no_model', 'two_models', 'teachers_of_supervised', 'weights_without_model', 'missing_run',
    'predictions_dir', 'bad_step', 'no_images', 'not_an_image', 'empty_file', 'truncated',
    'folder_of_other_classes', 'bad_evals', 'garbage_weights', 'foreign_weights'])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case, teacher_run, distill_run):
  text = tmp_path / 'notes.png'
  text.write_text('not an image')
  (tmp_path / 'empty.jpg').write_bytes(b'')
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)).save(
      tmp_path / 'whole.png')
  (tmp_path / 'cut.png').write_bytes((tmp_path / 'whole.png').read_bytes()[:300])
  predictions = tmp_path / 'out' / 'p.jsonl'
  (tmp_path / 'garbage.npz').write_bytes(b'PK\x03\x04 not a zip archive')
  (tmp_path / 'foreign.safetensors').write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{}      ')
  cmd, message = {
      'no_model': (('evaluate',), 'Name one model'),
      'two_models': (('evaluate', f'--workdir={teacher_run}', '--exported=/x'), 'given: workdir'),
      'teachers_of_supervised': (('evaluate', f'--workdir={teacher_run}', '--teachers'),
                                 'supervised run'),
      'weights_without_model': (('evaluate', f'--weights={tmp_path}/a.npz'),
                                f"The weights file '{tmp_path}/a.npz' does not exist."),
      'missing_run': (('evaluate', f'--workdir={tmp_path}/none',
                       f'--predictions={predictions}'), 'holds no big_distill run'),
      'predictions_dir': (('evaluate', f'--workdir={teacher_run}', f'--predictions={tmp_path}'),
                          'is a directory'),
      'bad_step': (('evaluate', f'--workdir={distill_run}', '--step=7'), '7'),
      'no_images': (('predict', f'--workdir={teacher_run}'), 'Name image files'),
      'not_an_image': (('predict', f'--workdir={teacher_run}', str(text)),
                       f'1 file to classify is not a readable image: {text} (not an image file'),
      'empty_file': (('predict', f'--workdir={teacher_run}', f'{tmp_path}/empty.jpg'),
                     f'{tmp_path}/empty.jpg (empty file). Remove or replace it, or set '
                     '--skip_bad_images'),
      'truncated': (('predict', f'--workdir={teacher_run}', f'{tmp_path}/cut.png',
                     f'{tmp_path}/whole.png'), f'{tmp_path}/cut.png ('),
      'folder_of_other_classes': (
          ('evaluate', f'--workdir={teacher_run}', f'--dataset={_other_classes(tmp_path)}',
           '--split=test', f'--data_dir={tmp_path}/tfds'),
          "the class folders test/cat/, test/dog/ are not among the model's classes "
          '(T-shirt/top, Trouser,'),
      'bad_evals': (('main', f'--config={TEACHER_CONFIG}:runlocal=True',
                     f'--workdir={tmp_path}/run', '--config.evals=holdout'), 'NAME=SPLIT'),
      'garbage_weights': (('predict', f'--weights={tmp_path}/garbage.npz', str(tmp_path)),
                          f'Cannot read {tmp_path}/garbage.npz as a NumPy .npz archive'),
      'foreign_weights': (('evaluate', f'--weights={tmp_path}/foreign.safetensors',
                           '--dataset=fashion_mnist'),
                          f'{tmp_path}/foreign.safetensors holds no weights layout big_distill '
                          'reads'),
  }[case]
  before = {p: snapshot(p) for p in (str(tmp_path), teacher_run, distill_run)}
  proc = run(command(f'big_distill.{cmd[0]}', *cmd[1:]), check=False)
  assert proc.returncode == errors.BAD_INPUT, proc.stderr[-2000:]
  line, = error_lines(proc.stderr)
  assert line.startswith('big_distill: error: ') and message in line, line
  assert 'Op:' not in line and '{{' not in line  # No TensorFlow text.
  assert {p: snapshot(p) for p in before} == before
