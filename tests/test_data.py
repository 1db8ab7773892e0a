"""The TFDS input pipeline on the real (offline-prepared) Fashion-MNIST."""

import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from big_distill import configlib
from big_distill.data import input_pipeline, offline


def _input_config(**overrides) -> ml_collections.ConfigDict:
  cfg = configlib.base_config().input
  cfg.update(dict(train_split='train[:256]', eval_split='test[:100]', batch_size=32,
                  eval_batch_size=48, shuffle_buffer=256, cache=True, **overrides))
  return cfg


@pytest.mark.skipif(not offline.local_files_available('fashion_mnist'),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_offline_preparation_is_the_standard_tfds_dataset_prepared_once(tmp_path):
  """Two processes that start together on an empty data dir both get the dataset (without a lock
  the second to finish fails renaming its copy onto the first's)."""
  code = ('import sys; from big_distill.data import input_pipeline as ip; '
          'print(ip.num_examples(ip.get_builder("fashion_mnist", sys.argv[1]), "test"))')
  procs = [subprocess.Popen([sys.executable, '-c', code, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and out.splitlines()[-1] == '10000', err[-2000:]
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
  with pytest.raises(ValueError, match="Unknown input.augment 'bad'"):
    input_pipeline.augment(image, tf.constant([0, 0], tf.int64), _input_config(augment='bad'))


def test_eval_batches_cover_the_split_once_with_padding(fmnist_builder):
  cfg = _input_config()
  batches = list(input_pipeline.eval_batches(cfg, fmnist_builder).as_numpy_iterator())
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
  with pytest.raises(ValueError, match="Unknown split 'validation' of fashion_mnist"):
    input_pipeline.num_examples(fmnist_builder, 'validation')
