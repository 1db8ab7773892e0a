"""Image folders as datasets (`imagefolder:/path`): preparation, the pipeline, end to end."""

import concurrent.futures
import json
import logging
import os
import shutil
import sys

import matplotlib
import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from big_distill import build, configlib, errors
from big_distill import workdir as workdir_lib
from big_distill.data import folders, images, input_pipeline
from tests.helpers import (FUNMATCH_CONFIG, TEACHER_CONFIG, TINY_STUDENT, TINY_TEACHER,
                           command, error_lines, finish, main_command, metric, params,
                           read_metrics, run, run_main, saved_steps, snapshot, start,
                           write_mixed_folder)

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
  assert builder.info.full_name == f'image_folder/{folder.config_name(3)}/1.0.0'
  assert folder.config_name(3).startswith('my_images_')
  assert builder.data_dir == folders.prepared_path(folder, 3, data_dir)
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
  procs = [start([sys.executable, '-c', code, images, data_dir]) for _ in range(2)]
  finish(procs, timeout=300)
  assert [p.stdout.splitlines()[-1] for p in procs] == [str(TRAIN)] * 2
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


PHOTO = os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg')


def test_every_kind_of_file_is_stored_as_the_model_sees_it(tmp_path):
  """What the copy stores decodes, as the pipeline decodes it, to `images.load` of the file
  exactly (which tests/test_images.py holds against PIL and NumPy): JPEG/PNG files that need
  nothing byte for byte, the others as PNG; OS files ignored; the training path reads the copy."""
  root = str(tmp_path / 'mixed')
  kinds = write_mixed_folder(root)
  builder = folders.get_builder(f'imagefolder:{root}', str(tmp_path / 'tfds'))
  assert input_pipeline.channels(builder) == 3 and input_pipeline.class_names(builder) == ('a', 'b')
  stored = {e['file_name'].decode(): e for split in ('train', 'test')
            for e in _examples(builder, split)}
  assert sorted(stored) == sorted(kinds)
  decode_tf = builder.info.features['image'].decode_example  # The pipeline's decoding today.
  for rel, kind in kinds.items():
    path, e = os.path.join(root, rel), stored[rel]
    with open(path, 'rb') as f:
      assert (e['image'] == f.read()) == (kind == 'as is'), rel
    assert e['label'] == 'ab'.index(rel.split('/')[1])
    expected = images.load(path, 3)
    np.testing.assert_array_equal(images.decode(e['image'], 3).numpy(), expected, err_msg=rel)
    if kind == 'converted':  # Lossless PNG: TFDS's own decoding gives the same pixels.
      np.testing.assert_array_equal(decode_tf(e['image']).numpy(), expected, err_msg=rel)
  upright = images.load(os.path.join(root, 'train/a/phone.jpg'), 3)
  assert upright.shape == (56, 64, 3)  # Stored 64 wide, 56 high; shown turned.
  batch = next(input_pipeline.train_batches(_input_config(resolution=28), builder, seed=0))
  assert batch['image'].shape == (20, 28, 28, 3)


def test_the_channel_count_of_most_images_or_the_one_asked_for(tmp_path):
  """Grey X-rays with one colour photo among them: a grey dataset, the photo in PIL's luma; an eval
  set of an RGB run: the same folder in RGB, grey replicated; each its own copy."""
  root = tmp_path / 'xrays'
  for i in range(3):
    _save(str(root / 'train' / 'lung' / f'{i}.png'), _pattern(0, i, 28, channels=1))
  Image.open(PHOTO).crop((200, 80, 260, 140)).save(root / 'train' / 'lung' / 'photo.jpg')
  data_dir = str(tmp_path / 'tfds')
  grey = folders.describe(f'imagefolder:{root}', data_dir)
  rgb = folders.describe(f'imagefolder:{root}', data_dir, channels=3)
  assert (grey.channels, rgb.channels, grey.most, rgb.most) == (1, 3, 1, 1)
  assert grey.path != rgb.path and grey.builder is None and not os.path.exists(data_dir)
  for described, channels in ((grey, 1), (rgb, 3)):
    builder = folders.prepare(described)
    assert input_pipeline.channels(builder) == channels
    for e in _examples(builder, 'train'):
      path = str(root / e['file_name'].decode())
      np.testing.assert_array_equal(images.decode(e['image'], channels).numpy(),
                                    images.load(path, channels))
  luma = np.asarray(Image.open(root / 'train' / 'lung' / 'photo.jpg').convert('L'))
  assert np.abs(images.load(str(root / 'train' / 'lung' / 'photo.jpg'), 1)[..., 0].astype(int)
                - luma).max() <= 1


@pytest.fixture
def fresh_process(monkeypatch):
  """`folders` as a new process finds it: nothing described or decoded yet."""
  monkeypatch.setattr(folders, '_described', {})
  monkeypatch.setattr(folders, '_checked', {})


def _with_bad_files(root) -> list[str]:
  """A folder of 2 classes with 5 bad files among its images (an empty class folder aside);
  the bad files' paths, sorted."""
  write_folder(root, classes=('cat', 'dog'), per_class={'train': 4, 'test': 2})
  bad = {'train/cat/empty.jpg': b'', 'train/cat/notes.txt': b'see the README',
         'train/dog/cut.jpg': open(root / 'train' / 'dog' / '000.jpg', 'rb').read()[:300],
         'test/dog/zero.png': b'', 'test/cat/page.html': b'<html></html>'}
  for rel, data in bad.items():
    (root / rel).write_bytes(data)
  return sorted(str(root / rel) for rel in bad)


def test_bad_files_all_at_once_or_left_out(tmp_path, caplog, fresh_process):
  root = tmp_path / 'pets'
  bad = _with_bad_files(root)
  name, data_dir = f'imagefolder:{root}', str(tmp_path / 'tfds')
  with pytest.raises(errors.BadInput) as e:
    folders.describe(name, data_dir)
  message = str(e.value)
  assert message.startswith(f'5 files of {name} are not readable images: {bad[0]} (')
  assert f'; {bad[2]} (' in message and bad[3] not in message and bad[4] not in message
  listing = message.split('all listed in ')[1].split('.txt')[0] + '.txt'
  with open(listing) as f:
    assert sorted(line.split('\t')[0] for line in f) == bad
  os.remove(listing)
  assert message.endswith(f'or set {folders.SKIP_OPTION} to leave such files out.')
  assert not os.path.exists(data_dir)

  with caplog.at_level(logging.WARNING):
    builder = folders.get_builder(name, data_dir, skip_bad=True)
  assert f'Left out 5 files of {name}, not readable images: {bad[0]}' in caplog.text
  assert input_pipeline.num_examples(builder, 'train') == 8
  assert input_pipeline.num_examples(builder, 'test') == 4
  assert sorted(str(root / f) for f, _ in builder.info.metadata['skipped']) == bad
  folders._described.clear()  # pylint: disable=protected-access  # A new process: the copy is
  folders._checked.clear()  # pylint: disable=protected-access  # read, not the folder.
  with pytest.raises(errors.BadInput, match='^5 files of .* are not readable images'):
    folders.describe(name, data_dir)  # Its copy left files out: refused all the same.
  assert folders.describe(name, data_dir, skip_bad=True).builder is not None


def test_empty_class_folders_are_named_or_left_out(tmp_path, caplog):
  root = tmp_path / 'pets'
  write_folder(root, classes=('cat', 'dog'), per_class={'train': 2, 'test': 1})
  for rel in ('train/eel', 'test/eel', 'test/owl'):
    (root / rel).mkdir()
  (root / 'train' / 'eel' / 'Thumbs.db').write_bytes(b'cache')  # Ignored: still empty.
  name, data_dir = f'imagefolder:{root}', str(tmp_path / 'tfds')
  with pytest.raises(errors.BadInput) as e:
    folders.describe(name, data_dir)
  assert str(e.value) == (f'{name}: the class folders test/eel/, test/owl/, train/eel/ hold no '
                          'images; add images, remove them, or set '
                          f'{folders.SKIP_OPTION} to leave such folders out.')
  with caplog.at_level(logging.WARNING):
    described = folders.describe(name, data_dir, skip_bad=True)
  assert described.classes == ('cat', 'dog') and 'test/eel/, test/owl/, train/eel/' in caplog.text
  assert not os.path.exists(data_dir)


RUN_CLASSES = ('owl', 'cat', 'eel', 'dog')  # A run's classes, in its own (not sorted) order.


def test_a_folder_with_some_of_a_models_classes_is_mapped_by_name(tmp_path, caplog):
  root = tmp_path / 'holdout'
  write_folder(root, classes=('cat', 'dog'), per_class={'test': 3})
  name, data_dir = f'imagefolder:{root}', str(tmp_path / 'tfds')
  with caplog.at_level(logging.WARNING):
    builder = folders.get_builder(name, data_dir, classes=RUN_CLASSES)
  assert f"{name} holds 2 of the model's 4 classes (not: eel, owl)" in caplog.text
  assert input_pipeline.class_names(builder) == RUN_CLASSES
  labels = {e['file_name'].decode(): e['label'] for e in _examples(builder, 'test')}
  assert len(labels) == 6
  assert all(RUN_CLASSES[label] == f.split('/')[1] for f, label in labels.items())

  other = tmp_path / 'other'
  write_folder(other, classes=('cat', 'dog', 'zebra'), per_class={'test': 1})
  before = snapshot(data_dir)
  with pytest.raises(errors.BadInput) as e:
    folders.describe(f'imagefolder:{other}', data_dir, classes=RUN_CLASSES)
  assert str(e.value).startswith(f"imagefolder:{other}: the class folder test/zebra/ is not "
                                 "among the model's classes (owl, cat, eel, dog)")
  assert snapshot(data_dir) == before


def _folder_config(dataset: str, data_dir: str, **input_overrides) -> ml_collections.ConfigDict:
  config = configlib.base_config()
  config.input.update(dict(dataset=dataset, data_dir=data_dir, **input_overrides))
  return config


def test_describe_data_checks_everything_and_writes_nothing(image_dirs, tmp_path):
  """The run's data shape from the scan alone; every refusal before any copy is written, eval
  sets included; `create_data` then writes the copies, whose sizes TFDS agrees with."""
  images_dir = write_folder(tmp_path / 'pets')
  holdout = write_folder(tmp_path / 'holdout', classes=CLASSES[1:3], per_class={'test': 2})
  zoo = write_folder(tmp_path / 'zoo', classes=('blue', 'zebra'), per_class={'test': 1})
  with_val = write_folder(tmp_path / 'with_val', per_class={'train': 1, 'val': 1})
  train_only = write_folder(tmp_path / 'train_only', per_class={'train': 1})
  one_class = write_folder(tmp_path / 'one_class', classes=('cat',))
  data_dir = str(tmp_path / 'tfds')
  name = f'imagefolder:{images_dir}'
  config = _folder_config(name, data_dir, train_split='train[:90%]')
  config.evals = f'holdout=test@imagefolder:{holdout}, part=train[90%:]'
  data = build.describe_data(config)
  assert (data.num_classes, data.channels, data.class_names) == (5, 3, CLASSES)
  assert data.num_train == 90 and data.builder is None
  assert data.evals['holdout'] == (None, 'test') and data.evals['part'] == (None, 'train[90%:]')
  shape = build.dataset_shape(config)
  assert (shape.num_classes, shape.channels, shape.num_train) == (5, 3, 128)
  # `runlocal`'s first 1,024 examples of a split of 100: all of them.
  small = build.describe_data(_folder_config(name, data_dir, train_split='train[:1024]'))
  assert small.splits == ('train', 'test') and small.num_train == 100

  refused = {
      'train[50:1024]': (dict(train_split='train[50:1024]'), '',
                         f"Split 'train[50:1024]' of {name}: Requested slice [50:1024] "
                         'incompatible with 100 examples. Its splits: test (30 examples), train '
                         '(100 examples).'),
      'no validation': (dict(eval_split='validation'), '',
                        f"Split 'validation' of {name}: Unknown split 'validation'."),
      'eval set of other classes': ({}, f'zoo=test@imagefolder:{zoo}',
                                    f'config.evals: zoo: imagefolder:{zoo}: the class folder '
                                    "test/zebra/ is not among the model's classes"),
      'eval set split': ({}, f'holdout=val@imagefolder:{holdout}',
                         f"Split 'val' of imagefolder:{holdout}: Unknown split"),
  }
  whole = {  # The whole message.
      'train/ and val/': (dict(dataset=f'imagefolder:{with_val}'), '',
                          f"Split 'test' of imagefolder:{with_val}: Unknown split 'test'. Should "
                          "be one of ['train', 'val']. Its splits: train (5 examples), val (5 "
                          'examples). Evaluate on val/ with --config.input.eval_split=val.'),
      'train/ alone': (dict(dataset=f'imagefolder:{train_only}'), '',
                       f"Split 'test' of imagefolder:{train_only}: Unknown split 'test'. Should "
                       "be one of ['train']. Its splits: train (5 examples). Hold some of the "
                       'training images out to evaluate on: --config.input.train_split=train[:90%] '
                       '--config.input.eval_split=train[90%:].'),
      'one class': (dict(dataset=f'imagefolder:{one_class}'), '',
                    f'imagefolder:{one_class} has one class folder (cat/); a classifier learns to '
                    'tell two or more classes apart.'),
  }
  for case, (overrides, evals, expected) in {**refused, **whole}.items():
    bad = _folder_config(overrides.pop('dataset', name), data_dir, **overrides)
    bad.evals = evals
    with pytest.raises(errors.BadInput) as e:
      build.create_data(bad)
    assert (str(e.value) == expected if case in whole else
            str(e.value).startswith(expected)), (case, str(e.value))
  assert not os.path.exists(data_dir)

  data = build.create_data(config)
  assert data.builder.info.splits['train[:90%]'].num_examples == data.num_train
  held, split = data.evals['holdout']
  assert input_pipeline.class_names(held) == CLASSES and split == 'test'
  assert {e['label'] for e in _examples(held, 'test')} == {1, 2}  # cyan, green: the run's.
  assert len(os.listdir(os.path.join(data_dir, 'image_folder'))) == 3  # 2 copies and .config.


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


def test_evaluate_on_the_folder_gives_the_runs_final_eval(image_dirs, students):
  """From the run's own prepared copy: nothing new is written."""
  workdir = students[0]['extra']
  final = [r for r in read_metrics(workdir) if 'eval/agreement_top1' in r][-1]
  before = snapshot(image_dirs[2])
  got = json.loads(run(command('big_distill.evaluate', f'--workdir={workdir}', '--step=latest',
                               '--teachers')).stdout.splitlines()[-1])
  assert snapshot(image_dirs[2]) == before
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
  empty_class = write_folder(d / 'empty_class', per_class={'train': 2})
  os.makedirs(os.path.join(empty_class, 'train', 'zebra'))
  text = write_folder(d / 'text', per_class={'train': 2})
  (d / 'text' / 'train' / 'green' / 'notes.txt').write_text('not an image')
  truncated = write_folder(d / 'truncated', per_class={'train': 2})
  png = os.path.join(truncated, 'train', 'green', '001.png')
  with open(png, 'r+b') as f:
    f.truncate(60)
  several = d / 'several'
  several_bad = _with_bad_files(several)
  return {
      'missing folder': (f'{d}/nope', f'imagefolder:{d}/nope: no such folder.'),
      'no split folders': (str(flat), f'imagefolder:{flat}: a.png is a file where a split '
                                       'folder should be; the layout is'),
      'no class folders': (str(no_classes), 'train/a.png is a file where a class folder'),
      'empty split': (empty, f'imagefolder:{empty}: the split folder test/ holds no images.'),
      'unknown class': (unknown, 'test/zebra is a class that train/ does not have; the classes '
                                 'are the folders of train/ (blue, cyan, green, orange, red).'),
      'empty class folder': (empty_class, f'imagefolder:{empty_class}: the class folder '
                                          'train/zebra/ holds no images; add images, remove it, '
                                          'or set config.input.skip_bad_images=True'),
      'not an image': (text, f'1 file of imagefolder:{text} is not a readable image: '
                             f'{text}/train/green/notes.txt (not an image file that PIL reads). '
                             'Remove or replace it, or set config.input.skip_bad_images=True'),
      'truncated': (truncated, f'is not a readable image: {png} ('),
      'several bad files': (str(several), f'5 files of imagefolder:{several} are not readable '
                                          f'images: {several_bad[0]} ('),
  }


def test_bad_folders_are_refused_before_anything_is_written(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  for case, (folder, expected) in _bad_folders(tmp_path).items():
    with pytest.raises(errors.BadInput) as e:
      input_pipeline.get_builder(f'imagefolder:{folder}', data_dir)
    assert expected in str(e.value), case
  assert not os.path.exists(data_dir)


def test_bad_folders_through_main_one_line_and_nothing_written(image_dirs, teacher, tmp_path):
  """Exit 2 with one error line naming the folder or file; the workdir does not appear, the data
  dirs and folders are unchanged. Each case costs a process start: the file checks are the
  same code as above, so only some go through `main`, with the checks only `main` makes."""
  bad = _bad_folders(tmp_path)
  workdir, data_dir = str(tmp_path / 'fresh'), str(tmp_path / 'tfds')

  def teacher_run(folder, *more):
    return main_command(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER,
                        *_tiny(data_dir, f'--config.input.dataset=imagefolder:{folder}'), *more)

  cases = [(case, teacher_run(bad[case][0]), bad[case][1])
           for case in ('missing folder', 'unknown class', 'empty class folder',
                        'several bad files')]
  fresh = write_folder(tmp_path / 'fresh_images', per_class={'train': 2, 'test': 1})
  zoo = write_folder(tmp_path / 'zoo', classes=('blue', 'zebra'), per_class={'test': 1})
  cases.append(('eval split', teacher_run(fresh, '--config.input.eval_split=validation'),
                f"Split 'validation' of imagefolder:{fresh}: Unknown split 'validation'."))
  cases.append(('eval set classes',
                teacher_run(fresh, f'--config.evals=zoo=test@imagefolder:{zoo}'),
                f'config.evals: zoo: imagefolder:{zoo}: the class folder test/zebra/ is not '
                "among the model's classes (blue, cyan, green, orange, red)"))
  # Unlabelled extra data with only hidden files, the main folder prepared in the module's data dir.
  images_dir, _, prepared_dir, _ = image_dirs
  extra = tmp_path / 'extra'
  (extra / '.cache').mkdir(parents=True)
  cases.append(('extra data', main_command(
      f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher}', workdir, *TINY_STUDENT,
      *_tiny(prepared_dir, f'--config.input.dataset=imagefolder:{images_dir}'),
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
    if 'all listed in ' in proc.stderr:  # The list of bad files, in the temporary directory.
      os.remove(proc.stderr.split('all listed in ')[1].split('.txt')[0] + '.txt')
  assert not failures, '\n'.join(failures)
  assert {p: snapshot(p) for p in before} == before and not os.path.exists(workdir)
