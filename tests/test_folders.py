"""Image folders as datasets (`imagefolder:/path`): preparation, the pipeline, end to end."""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from big_distill import configlib, errors
from big_distill import workdir as workdir_lib
from big_distill.data import folders, input_pipeline
from tests.helpers import (FUNMATCH_CONFIG, TEACHER_CONFIG, TINY_STUDENT, TINY_TEACHER,
                           command, error_lines, main_command, metric, params, read_metrics, run,
                           run_main, saved_steps, snapshot)

# Five classes: the distillation eval's top-5 agreement needs at least five.
CLASSES = ('blue', 'cyan', 'green', 'orange', 'red')
PER_CLASS = {'train': 20, 'test': 6}
TRAIN, TEST = 5 * PER_CLASS['train'], 5 * PER_CLASS['test']


def _pattern(label: int, i: int, side: int, channels: int = 3) -> np.ndarray:
  """Noise with a class's colour channel (brightness, grey) and stripe direction: easy to learn."""
  rng = np.random.default_rng(label * 1000 + i)
  stripes = np.arange(side) // 3 % 2 * 60
  stripes = stripes[:, None] if label % 2 else stripes[None, :]
  image = rng.uniform(0, 40, (side, side, channels))
  image[..., label % 3 % channels] += 150
  return np.clip(image + stripes[..., None], 0, 255).astype(np.uint8)


def _save(path, array: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)


def write_folder(root, classes=CLASSES, per_class=None) -> str:
  """`root/SPLIT/CLASS/*`: PNGs at 28 px and JPEGs at 32 px alternating, hidden files between."""
  for split, n in (per_class or PER_CLASS).items():
    for label, name in enumerate(classes):
      for i in range(n):
        ext, side = ('png', 28) if i % 2 else ('jpg', 32)
        _save(os.path.join(root, split, name, f'{i:03d}.{ext}'), _pattern(label, i, side))
      (root / split / name / '.DS_Store').write_bytes(b'\0\1 not an image')
  (root / '.hidden').mkdir()
  return str(root)


def write_extra(root) -> str:
  """Unlabelled grey images, at the top and in nested folders."""
  for i in range(18):
    sub = ('', 'a', 'a/b')[i % 3]
    _save(os.path.join(root, sub, f'{i}.png'), _pattern(i % 3, 100 + i, 28, channels=1))
  return str(root)


@pytest.fixture(scope='module')
def image_dirs(tmp_path_factory):
  """(labelled folder, unlabelled folder, data dir, its builder)."""
  d = tmp_path_factory.mktemp('folders')
  images, extra = write_folder(d / 'my images'), write_extra(d / 'extra')
  data_dir = str(d / 'tfds')
  return images, extra, data_dir, input_pipeline.get_builder(f'imagefolder:{images}', data_dir)


def _examples(builder, split: str) -> list[dict]:
  return list(tfds.as_numpy(builder.as_dataset(
      split=split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()})))


def test_classes_counts_labels_and_files_as_they_are(image_dirs):
  images, _, data_dir, builder = image_dirs
  folder = folders.scan(images, labels=True)
  assert builder.info.full_name == f'image_folder/my_images_{folder.fingerprint}/1.0.0'
  assert builder.data_dir == folders.prepared_path(folder, data_dir)
  assert input_pipeline.class_names(builder) == CLASSES and input_pipeline.num_classes(builder) == 5
  assert input_pipeline.channels(builder) == 3
  assert builder.info.features['image'].shape == (None, None, 3)
  assert input_pipeline.num_examples(builder, 'train') == TRAIN
  assert input_pipeline.num_examples(builder, 'test') == TEST
  assert input_pipeline.num_examples(builder, 'train[:25%]') == TRAIN // 4
  for split in ('train', 'test'):
    examples = _examples(builder, split)
    names = sorted(e['file_name'].decode() for e in examples)
    assert names == sorted(f'{split}/{c}/{i:03d}.{"png" if i % 2 else "jpg"}'
                           for c in CLASSES for i in range(PER_CLASS[split]))
    for e in examples:
      name = e['file_name'].decode()
      assert CLASSES[e['label']] == name.split('/')[1]
      with open(os.path.join(images, name), 'rb') as f:
        assert e['image'] == f.read()  # Stored encoded, byte for byte.
  labels = [e['label'] for e in _examples(builder, 'train[:20]')]
  assert len(set(labels)) == 5  # Examples are in a hashed order: a slice mixes the classes.


def test_prepared_once_and_again_when_the_folder_changes(image_dirs, tmp_path):
  """Two processes that start together on a new folder both get it; unchanged, nothing is
  written; a changed file or a new one: a new prepared copy."""
  images = str(tmp_path / 'images')
  shutil.copytree(image_dirs[0], images)  # copy2: same sizes and modification times.
  data_dir = str(tmp_path / 'tfds')
  code = ('import sys; from big_distill.data import input_pipeline as ip; '
          'print(ip.num_examples(ip.get_builder("imagefolder:" + sys.argv[1], sys.argv[2]), '
          '"train"))')
  procs = [subprocess.Popen([sys.executable, '-c', code, images, data_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and out.splitlines()[-1] == str(TRAIN), err[-2000:]
  name = f'imagefolder:{images}'
  before = snapshot(data_dir)
  unchanged = input_pipeline.get_builder(name, data_dir)
  assert snapshot(data_dir) == before
  # The same files (relative paths, sizes, times) have the same fingerprint in any folder.
  assert unchanged.info.full_name.split('_')[-1] == image_dirs[3].info.full_name.split('_')[-1]
  os.utime(os.path.join(images, 'test', 'red', '000.jpg'), ns=(0, 0))
  changed = input_pipeline.get_builder(name, data_dir)
  _save(os.path.join(images, 'test', 'red', 'new.png'), _pattern(2, 0, 28))
  added = input_pipeline.get_builder(name, data_dir)
  assert input_pipeline.num_examples(added, 'test') == TEST + 1
  assert len({b.info.full_name for b in (unchanged, changed, added)}) == 3
  assert len(os.listdir(os.path.join(data_dir, 'image_folder'))) == 4  # 3 copies and .config.


def test_unlabelled_folder_is_one_split_of_every_image(image_dirs):
  _, extra, data_dir, _ = image_dirs
  builder = input_pipeline.get_builder(f'imagefolder:{extra}', data_dir, labels=False)
  assert list(builder.info.splits) == ['train'] and 'label' not in builder.info.features
  assert input_pipeline.channels(builder) == 1
  names = sorted(e['file_name'].decode() for e in _examples(builder, 'train'))
  assert names == sorted(f'{("", "a/", "a/b/")[i % 3]}{i}.png' for i in range(18))
  # The labelled folder without labels: all its splits' images as one split.
  merged = input_pipeline.get_builder(f'imagefolder:{image_dirs[0]}', data_dir, labels=False)
  assert input_pipeline.num_examples(merged, 'train') == TRAIN + TEST


def _input_config(**overrides) -> ml_collections.ConfigDict:
  cfg = configlib.base_config().input
  cfg.update(dict(train_split='train', batch_size=20, shuffle_buffer=TRAIN, augment='none',
                  flip=False, **overrides))
  return cfg


def test_two_data_shards_see_the_examples_of_one(image_dirs):
  """One epoch (5 steps) of 1 or 2 shards: every example once, with its label and image."""
  builder = image_dirs[3]
  seen = []
  for shards in (1, 2):
    stream = input_pipeline.train_batches(_input_config(data_shards=shards), builder, seed=3,
                                          teacher_view='index')
    batches = [next(stream) for _ in range(5)]
    index = np.concatenate([b['index'] for b in batches])
    np.testing.assert_array_equal(np.sort(index), np.arange(TRAIN))
    seen.append({int(i): (int(label), image.tobytes()) for b in batches
                 for i, label, image in zip(b['index'], b['label'], b['image'])})
  assert seen[0] == seen[1]
  labels = [e['label'] for e in _examples(builder, 'train')]
  assert [seen[0][i][0] for i in range(TRAIN)] == labels


def _tiny(data_dir: str, *more: str) -> tuple[str, ...]:
  return (f'--config.input.data_dir={data_dir}', '--config.input.train_split=train',
          '--config.input.eval_split=test', *more)


@pytest.fixture(scope='module')
def teacher(image_dirs, tmp_path_factory):
  images, _, data_dir, _ = image_dirs
  workdir = str(tmp_path_factory.mktemp('folder_teacher'))
  run_main(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER,
           *_tiny(data_dir, f'--config.input.dataset=imagefolder:{images}'))
  return workdir


@pytest.fixture(scope='module')
def students(image_dirs, teacher, tmp_path_factory):
  """Function matching with the extra folder, and the fixed teacher with its logits cache."""
  images, extra, data_dir, _ = image_dirs
  base = (*TINY_STUDENT, *_tiny(data_dir, f'--config.input.dataset=imagefolder:{images}'))
  runs = {
      'extra': ('funmatch', f'--config.input.extra_data.dataset=imagefolder:{extra}',
                f'--config.input.extra_data.data_dir={data_dir}',
                '--config.input.extra_data.fraction=0.25'),
      'fixed': ('fixed',)}
  workdirs = {k: str(tmp_path_factory.mktemp(f'folder_{k}')) for k in runs}

  def train(key: str):
    variant, *more = runs[key]
    run_main(f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher},variant={variant}',
             workdirs[key], *base, *more)

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    list(pool.map(train, runs))
  return workdirs, base + runs['extra'][1:]


def test_teacher_learns_the_folder(teacher):
  assert workdir_lib.read_data(teacher)['class_names'] == list(CLASSES)
  assert metric(read_metrics(teacher), 'eval/accuracy')[10] > 0.6  # Chance: 1/3.


def test_distillation_with_an_extra_folder_and_with_cached_logits(students, teacher):
  workdirs, _ = students
  teacher_accuracy = metric(read_metrics(teacher), 'eval/accuracy')[10]
  for workdir in workdirs.values():
    evals = [r for r in read_metrics(workdir) if 'eval/agreement_top1' in r][-1]
    assert evals['eval/teacher_accuracy'] == pytest.approx(teacher_accuracy, abs=1e-6)
    assert 0 <= evals['eval/agreement_top1'] <= 1 and saved_steps(workdir)[-1] == 10
  logits = np.load(workdir_lib.teacher_logits(workdirs['fixed'], workdir_lib.TEACHER_LOGITS))
  assert logits.shape == (TRAIN, 1, 5)


def test_evaluate_on_the_folder_gives_the_runs_final_eval(students):
  workdir = students[0]['extra']
  final = [r for r in read_metrics(workdir) if 'eval/agreement_top1' in r][-1]
  got = json.loads(run(command('big_distill.evaluate', f'--workdir={workdir}', '--step=latest',
                               '--teachers')).stdout.splitlines()[-1])
  assert got['examples'] == TEST
  # The run's eval sums in float32: 18/30 is 0.6000000238 there.
  assert got['accuracy'] == pytest.approx(final['eval/student_accuracy'], abs=1e-7)
  assert got['agreement'] == pytest.approx(final['eval/agreement_top1'], abs=1e-7)
  assert got['kl'] == pytest.approx(final['eval/kl'], rel=1e-5)


def test_resumed_run_is_bit_identical(students, teacher, tmp_path):
  """The function-matching run with extra data, its last checkpoint dropped, run again."""
  workdirs, overrides = students
  workdir = str(tmp_path / 'resumed')
  shutil.copytree(workdirs['extra'], workdir)
  shutil.rmtree(os.path.join(workdir_lib.checkpoints(workdir), '10'))
  proc = run_main(f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher},variant=funmatch',
                  workdir, *overrides)
  assert 'Resuming from the checkpoint of step 5' in proc.stderr
  for a, b in zip(params(workdir), params(workdirs['extra']), strict=True):
    assert a.dtype == b.dtype and np.array_equal(a, b)


def _bad_folders(d) -> dict[str, tuple[str, str]]:
  """case -> (folder, what the error line says)."""
  flat = d / 'flat'
  flat.mkdir()
  _save(str(flat / 'a.png'), _pattern(0, 0, 28))
  no_classes = d / 'no_classes'
  _save(str(no_classes / 'train' / 'a.png'), _pattern(0, 0, 28))
  empty = write_folder(d / 'empty', per_class={'train': 2})
  for c in CLASSES:
    (d / 'empty' / 'test' / c).mkdir(parents=True)
  unknown = write_folder(d / 'unknown', per_class={'train': 2, 'test': 1})
  _save(os.path.join(unknown, 'test', 'zebra', 'z.png'), _pattern(0, 0, 28))
  rgba = write_folder(d / 'rgba', per_class={'train': 2})
  Image.new('RGBA', (28, 28)).save(os.path.join(rgba, 'train', 'red', 'rgba.png'))
  grey = write_folder(d / 'grey', per_class={'train': 2})
  _save(os.path.join(grey, 'train', 'blue', 'grey.png'), _pattern(0, 0, 28, channels=1))
  text = write_folder(d / 'text', per_class={'train': 2})
  (d / 'text' / 'train' / 'green' / 'notes.txt').write_text('not an image')
  truncated = write_folder(d / 'truncated', per_class={'train': 2})
  png = os.path.join(truncated, 'train', 'green', '001.png')
  with open(png, 'r+b') as f:
    f.truncate(60)
  return {
      'missing folder': (f'{d}/nope', f'imagefolder:{d}/nope: no such folder.'),
      'no split folders': (str(flat), f'imagefolder:{flat}: a.png is a file where a split '
                                       'folder should be; the layout is'),
      'no class folders': (str(no_classes), 'train/a.png is a file where a class folder'),
      'empty split': (empty, f'imagefolder:{empty}: the split folder test/ holds no images.'),
      'unknown class': (unknown, 'test/zebra is a class that train/ does not have; the classes '
                                 'are the folders of train/ (blue, cyan, green, orange, red).'),
      'rgba': (rgba, f'{rgba}/train/red/rgba.png has 4 channels; use grey (1) or RGB (3)'),
      'grey among RGB': (grey, f'{grey}/train/blue/grey.png is grey but 10 images of the '
                               'dataset are RGB; all need the same channel count'),
      'not an image': (text, f'{text}/train/green/notes.txt is not a readable PNG or JPEG '
                             'image (neither PNG nor JPEG data); remove it'),
      'truncated': (truncated, f'{png} is not a readable PNG or JPEG image ('),
  }


def test_bad_folders_are_refused_before_anything_is_written(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  for case, (folder, expected) in _bad_folders(tmp_path).items():
    with pytest.raises(errors.BadInput) as e:
      input_pipeline.get_builder(f'imagefolder:{folder}', data_dir)
    assert expected in str(e.value), case
  assert not os.path.exists(data_dir)


# The cases through the real command (each costs a process start).
THROUGH_MAIN = ('missing folder', 'no class folders', 'unknown class', 'grey among RGB',
                'truncated')


def test_bad_folders_through_main_one_line_and_nothing_written(image_dirs, teacher, tmp_path):
  """Exit 2 with one error line naming the folder or file; the workdir does not appear, the data
  dirs and folders are unchanged."""
  bad = _bad_folders(tmp_path)
  workdir, data_dir = str(tmp_path / 'fresh'), str(tmp_path / 'tfds')
  cases = [(case, main_command(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER,
                               *_tiny(data_dir, f'--config.input.dataset=imagefolder:{folder}')),
            expected) for case, (folder, expected) in bad.items() if case in THROUGH_MAIN]
  # Unlabelled extra data with only hidden files, the main folder prepared in the module's data dir.
  images, _, prepared_dir, _ = image_dirs
  extra = tmp_path / 'extra'
  (extra / '.cache').mkdir(parents=True)
  cases.append(('extra data', main_command(
      f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher}', workdir, *TINY_STUDENT,
      *_tiny(prepared_dir, f'--config.input.dataset=imagefolder:{images}'),
      f'--config.input.extra_data.dataset=imagefolder:{extra}',
      f'--config.input.extra_data.data_dir={prepared_dir}'),
      f'imagefolder:{extra} holds no images.'))
  before = {p: snapshot(p) for p in (str(tmp_path), prepared_dir, teacher)}

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    procs = list(pool.map(lambda c: run(c[1], check=False), cases))
  failures = []
  for (case, _, expected), proc in zip(cases, procs):
    lines = error_lines(proc.stderr)
    if (proc.returncode != errors.BAD_INPUT or len(lines) != 1 or
        not lines[0].startswith('big_distill: error: ') or expected not in lines[0]):
      failures.append(f'{case}: exit {proc.returncode}, errors {lines or proc.stderr[-1500:]}')
  assert not failures, '\n'.join(failures)
  assert {p: snapshot(p) for p in before} == before and not os.path.exists(workdir)
