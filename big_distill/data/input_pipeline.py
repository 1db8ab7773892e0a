"""TFDS input pipeline: per-process shards, deterministic augmentation, fixed-size batches.

Every random choice of the training stream is a pure function of (seed, process, example
position): the shuffle is seeded and each example's augmentation uses stateless ops seeded by
its position in the stream, so a run restarted at step `s` sees exactly the batches it would have
seen (`start_step` skips what was consumed). Images come out as float32 in [-1, 1] (BiT).
"""

from typing import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_distill.data import offline

Batch = dict[str, np.ndarray]


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder of `name`; prepares it (offline where possible) on first use."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f'Unknown TFDS dataset {name!r}: {str(e).splitlines()[0]}') from None
  if not builder.is_prepared():
    if offline.local_files_available(name):
      offline.prepare_fashion_mnist(data_dir)
      builder = tfds.builder(name, data_dir=data_dir)  # Reads the prepared dataset's info.
    else:
      builder.download_and_prepare()
  return builder


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Examples in a split (sub-split syntax such as `train[:10%]` allowed)."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise ValueError(f'Unknown split {split!r} of {builder.name}; '
                     f'available: {", ".join(builder.info.splits)}.') from e


def num_classes(builder: tfds.core.DatasetBuilder) -> int:
  return builder.info.features['label'].num_classes


def _to_float(image: tf.Tensor) -> tf.Tensor:
  return tf.cast(image, tf.float32) / 127.5 - 1.0


def _resize(image: tf.Tensor, resolution: int) -> tf.Tensor:
  if image.shape[0] == resolution and image.shape[1] == resolution:
    return image
  return tf.image.resize(image, (resolution, resolution), method='bilinear', antialias=True)


def augment(image: tf.Tensor, seed: tf.Tensor, cfg: ml_collections.ConfigDict) -> tf.Tensor:
  """Random crop (padded, or inception-style) and flip of one uint8 HWC image -> float32."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = _to_float(image)
  if cfg.augment == 'crop_flip':
    h, w, c = image.shape
    p = cfg.crop_padding
    image = tf.pad(image, [[p, p], [p, p], [0, 0]], constant_values=-1.0)
    image = tf.image.stateless_random_crop(image, (h, w, c), seed=crop_seed)
  elif cfg.augment == 'inception_crop':
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=crop_seed,
        area_range=(0.05, 1.0), aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0,
        use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, size)
  elif cfg.augment != 'none':
    raise ValueError(f"Unknown input.augment {cfg.augment!r}; use 'crop_flip', "
                     "'inception_crop' or 'none'.")
  image = _resize(image, cfg.resolution)
  if cfg.flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return image


def train_batches(cfg: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, *,
                  seed: int, start_step: int = 0) -> Iterator[Batch]:
  """Endless per-process training batches of `cfg.batch_size // process_count` examples."""
  local_batch = cfg.batch_size // jax.process_count()
  split = tfds.split_for_jax_process(cfg.train_split, drop_remainder=True)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  if cfg.cache:
    ds = ds.cache()
  ds = ds.repeat().shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  ds = ds.enumerate().skip(start_step * local_batch)
  base_seed = tf.constant([seed, jax.process_index()], tf.int64)

  def preprocess(index, example):
    example_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
    return {'image': augment(example['image'], example_seed, cfg),
            'label': tf.cast(example['label'], tf.int32)}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.as_numpy_iterator()


def eval_batches(cfg: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> tf.data.Dataset:
  """The eval split, un-augmented, padded to whole batches; `mask` marks real examples.

  Every process yields the same number of batches, as the eval step is a global computation.
  """
  local_batch = cfg.eval_batch_size // jax.process_count()
  total = num_examples(builder, cfg.eval_split)
  per_process = -(-total // jax.process_count())
  steps = -(-per_process // local_batch)
  split = tfds.split_for_jax_process(cfg.eval_split, drop_remainder=False)
  ds = builder.as_dataset(split=split, shuffle_files=False)

  def preprocess(example):
    return {'image': _resize(_to_float(example['image']), cfg.resolution),
            'label': tf.cast(example['label'], tf.int32), 'mask': tf.constant(1, tf.int32)}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  padding = ds.take(1).map(lambda ex: tf.nest.map_structure(tf.zeros_like, ex)).repeat()
  ds = ds.concatenate(padding).take(steps * local_batch).batch(local_batch)
  if cfg.cache:
    ds = ds.cache()
  return ds.prefetch(tf.data.AUTOTUNE)
