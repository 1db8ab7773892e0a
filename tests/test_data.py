"""The TFDS input pipeline on the real (offline-prepared) Fashion-MNIST."""

import sys

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from big_distill import configlib
from big_distill.data import input_pipeline, offline
from tests.helpers import finish, start


def _input_config(**overrides) -> ml_collections.ConfigDict:
  cfg = configlib.base_config().input
  cfg.update({**dict(train_split='train[:256]', eval_split='test[:100]', batch_size=32,
                     eval_batch_size=48, shuffle_buffer=256, cache=True), **overrides})
  return cfg


@pytest.mark.skipif(not offline.available('fashion_mnist'),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_offline_preparation_is_the_standard_tfds_dataset_prepared_once(tmp_path):
  """Two processes that start together on an empty data dir both get the dataset (without a lock
  the second to finish fails renaming its copy onto the first's)."""
  code = ('import sys; from big_distill.data import input_pipeline as ip; '
          'print(ip.num_examples(ip.get_builder("fashion_mnist", sys.argv[1]), "test"))')
  procs = [start([sys.executable, '-c', code, str(tmp_path)]) for _ in range(2)]
  finish(procs, timeout=300)
  assert [p.stdout.splitlines()[-1] for p in procs] == ['10000', '10000']
  builder = input_pipeline.get_builder('fashion_mnist', str(tmp_path))
  assert input_pipeline.num_examples(builder, 'train[:1024]') == 1024
  reference = tfds.builder('fashion_mnist', data_dir=str(tmp_path))  # TFDS's own builder.
  assert reference.is_prepared()
  assert reference.info.name == 'fashion_mnist' and str(reference.info.version) == '3.0.1'
  assert reference.info.features['image'].shape == (28, 28, 1)
  assert reference.info.features['label'].num_classes == 10
  assert reference.info.splits['train'].num_examples == 60_000
  assert reference.info.splits['test'].num_examples == 10_000
  assert builder.info.features.to_json() == reference.info.features.to_json()
  first = next(iter(reference.as_dataset(split='test', shuffle_files=False)))
  assert first['image'].shape == (28, 28, 1) and first['image'].dtype == tf.uint8
  # Counts of the labels in the test split: 1,000 per class, as published.
  labels = np.concatenate([b['label'] for b in tfds.as_numpy(
      reference.as_dataset(split='test', batch_size=5000))])
  np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)


def test_train_batches_are_augmented_and_deterministic(fmnist_builder):
  cfg = _input_config()
  batches = input_pipeline.train_batches(cfg, fmnist_builder, seed=1)
  first = [next(batches) for _ in range(3)]
  assert first[0]['image'].shape == (32, 28, 28, 1) and first[0]['image'].dtype == np.float32
  assert first[0]['label'].dtype == np.int32
  assert first[0]['image'].min() >= -1.0 and first[0]['image'].max() <= 1.0
  again = input_pipeline.train_batches(cfg, fmnist_builder, seed=1)
  np.testing.assert_array_equal(next(again)['image'], first[0]['image'])
  resumed = next(input_pipeline.train_batches(cfg, fmnist_builder, seed=1, start_step=2))
  np.testing.assert_array_equal(resumed['image'], first[2]['image'])
  other = next(input_pipeline.train_batches(cfg, fmnist_builder, seed=2))
  assert not np.array_equal(other['image'], first[0]['image'])


def test_augmentations_crop_and_flip():
  image = tf.reshape(tf.range(28 * 28, dtype=tf.int32) % 256, (28, 28, 1))
  image = tf.cast(image, tf.uint8)
  plain = _input_config(augment='none', flip=False)
  np.testing.assert_allclose(
      input_pipeline.augment(image, tf.constant([0, 0], tf.int64), plain),
      tf.cast(image, tf.float32) / 127.5 - 1, atol=1e-6)
  crops = [input_pipeline.augment(image, tf.constant([s, 0], tf.int64),
                                  _input_config(flip=False)).numpy() for s in range(8)]
  assert all(c.shape == (28, 28, 1) for c in crops)
  assert len({c.tobytes() for c in crops}) > 1  # Different offsets for different seeds.
  flips = [input_pipeline.augment(image, tf.constant([s, 0], tf.int64),
                                  _input_config(augment='none')).numpy() for s in range(8)]
  base = tf.cast(image, tf.float32).numpy() / 127.5 - 1
  assert all(np.allclose(f, base) or np.allclose(f, base[:, ::-1]) for f in flips)
  assert any(np.allclose(f, base[:, ::-1]) for f in flips)
  inception = input_pipeline.augment(image, tf.constant([3, 0], tf.int64),
                                     _input_config(augment='inception_crop', resolution=32))
  assert inception.shape == (32, 32, 1)
  with pytest.raises(ValueError, match="Unknown input.augment 'bad'; use one of crop_flip, "):
    input_pipeline.check_input(_input_config(augment='bad'))


def test_eval_batches_cover_the_split_once_with_padding(fmnist_builder):
  cfg = _input_config()
  batches = list(input_pipeline.eval_batches(
      fmnist_builder, cfg.eval_split, batch_size=cfg.eval_batch_size, resolution=cfg.resolution,
      central_crop=cfg.central_crop).as_numpy_iterator())
  assert [len(b['label']) for b in batches] == [48, 48, 48]
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == 100 and masks[:100].all() and not masks[100:].any()
  labels = np.concatenate([b['label'] for b in batches])[:100]
  reference = next(iter(tfds.as_numpy(
      fmnist_builder.as_dataset(split='test[:100]', batch_size=100))))
  np.testing.assert_array_equal(labels, reference['label'])


def test_unknown_dataset_and_split(fmnist_builder):
  with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_dataset'"):
    input_pipeline.get_builder('no_such_dataset')
  with pytest.raises(ValueError, match="Split 'validation' of fashion_mnist: Unknown split"):
    input_pipeline.num_examples(fmnist_builder, 'validation')


def _count_reads(builder: tfds.core.DatasetBuilder, monkeypatch) -> list[int]:
  """Makes `builder.as_dataset` count the records it hands out; returns the (one-item) count."""
  reads = [0]
  as_dataset = builder.as_dataset

  def bump(label):
    reads[0] += 1
    return label

  def counted(*args, **kwargs) -> tf.data.Dataset:
    return as_dataset(*args, **kwargs).map(lambda ex: {
        **ex, 'label': tf.ensure_shape(tf.py_function(bump, [ex['label']], tf.int64), [])})

  monkeypatch.setattr(builder, 'as_dataset', counted)
  return reads


def test_resumed_stream_equals_the_continued_one_epochs_in(fmnist_builder):
  """Two slices of 32 training and 20 extra examples, 9 + 3 rows each per step: steps 22 and 25
  start 6 and 7 epochs in, mid-epoch (and 3 epochs into the extra data)."""
  cfg = _input_config(train_split='train[:64]', batch_size=24, shuffle_buffer=64, data_shards=2)
  cfg.extra_data.update(dataset='fashion_mnist', split='test[:40]', fraction=0.25)

  def stream(start_step: int):
    return input_pipeline.train_batches(cfg, fmnist_builder, seed=4, start_step=start_step,
                                        teacher_view='index', extra_builder=fmnist_builder)

  continued = stream(0)
  batches = [next(continued) for _ in range(28)]
  for first in (22, 25):
    resumed = stream(first)
    for expected in batches[first:]:
      got = next(resumed)
      for key in ('image', 'label', 'index'):
        np.testing.assert_array_equal(got[key], expected[key])


def test_every_epoch_is_a_permutation_of_the_slice(fmnist_builder):
  """Slices of 32 fill 8 rows each: every 4 steps each slice has shown each example once."""
  cfg = _input_config(train_split='train[:64]', batch_size=16, shuffle_buffer=64, data_shards=2)
  stream = input_pipeline.train_batches(cfg, fmnist_builder, seed=0, teacher_view='index')
  index = np.stack([next(stream)['index'] for _ in range(16)])  # (step, row)
  epochs = index.reshape(4, 4, 2, 8).transpose(2, 0, 1, 3).reshape(2, 4, 32)  # (slice, epoch, i)
  for v, slice_epochs in enumerate(epochs):
    for order in slice_epochs:
      np.testing.assert_array_equal(np.sort(order), np.arange(32 * v, 32 * (v + 1)))
    assert len({order.tobytes() for order in slice_epochs}) == 4  # Reshuffled every epoch.


def test_resuming_late_reads_at_most_about_one_epoch(fmnist_builder, monkeypatch):
  """Resuming 1000 epochs (64,000 examples) into a 64-example split, mid-epoch, reads the part
  of the epoch before the step, the shuffle buffer and what the prefetch takes: not the 1000."""
  cfg = _input_config(train_split='train[:64]', batch_size=16, shuffle_buffer=16, cache=False)
  reads = _count_reads(fmnist_builder, monkeypatch)
  resumed = input_pipeline.train_batches(cfg, fmnist_builder, seed=0, start_step=4000 + 2,
                                         teacher_view='index')
  first = next(resumed)['index']
  assert reads[0] <= 2 * 64, reads[0]
  assert len(set(first)) == 16 and np.all((first >= 0) & (first < 64))


def test_cache_reads_the_source_once_for_all_epochs(fmnist_builder, monkeypatch):
  cfg = _input_config(train_split='train[:64]', batch_size=16, shuffle_buffer=64, cache=True)
  reads = _count_reads(fmnist_builder, monkeypatch)
  stream = input_pipeline.train_batches(cfg, fmnist_builder, seed=0, start_step=3)
  for _ in range(20):  # 5 epochs.
    next(stream)
  assert reads[0] == 64
