"""TFDS input pipeline: data shards, deterministic augmentation, teacher views, fixed-size batches.

The train split is cut into `data_shards` contiguous slices (default: one per process); each slice
is shuffled and augmented on its own and fills its own rows of every global batch, and a process
reads only its slices. Every random choice is a pure function of (seed, shard, stream position):
the shuffle is seeded and each example's augmentation uses stateless ops seeded by its position,
so a run restarted at step `s` sees exactly the batches it would have seen (`start_step` skips what
was consumed), on any process layout with the same `data_shards`. Images are float32 in [-1, 1].

What the teacher sees is the distillation variant's business (`variants.VIEWS`): the student's
image (no extra key), its own augmentation or the un-augmented image (`teacher_image`), or nothing
but the example's position in the split (`index`), to look up precomputed logits.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
from etils import epy
with epy.lazy_imports():  # TensorFlow loads where data is read, not with the module.
  import tensorflow as tf
  import tensorflow_datasets as tfds

from big_distill import errors, variants
from big_distill.data import folders, images, locks, offline

Batch = dict[str, np.ndarray]
AUGMENTATIONS = ('crop_flip', 'inception_crop', 'none')


def check_input(cfg: ml_collections.ConfigDict) -> None:
  """Checks of `config.input` that need no data: the augmentation, the batch's data slices."""
  if cfg.augment not in AUGMENTATIONS:
    raise errors.BadInput(f'Unknown input.augment {cfg.augment!r}; use one of '
                          f'{", ".join(AUGMENTATIONS)}.')
  slices, procs = cfg.data_shards or jax.process_count(), jax.process_count()
  if slices % procs:
    raise errors.BadInput(f'input.data_shards={slices} is not a multiple of the {procs} processes.')
  if cfg.batch_size % slices:
    raise errors.BadInput(f'input.batch_size={cfg.batch_size} is not divisible by '
                          f'input.data_shards={slices}.')


def get_builder(name: str, data_dir: str | None = None, *,
                labels: bool = True) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder of `name`; prepares it (offline where possible) on first use, once
  even when several processes of a host start together (TFDS's own preparation would fail in all
  but the first to finish). `imagefolder:/path` is a folder of images (`folders`): split and class
  folders, or with `labels=False` (extra data, whose labels are not used) unlabelled images."""
  if folders.is_folder(name):
    return folders.get_builder(name, data_dir, labels=labels)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise errors.BadInput(f'Unknown TFDS dataset {name!r}: {str(e).splitlines()[0]}') from None
  if builder.is_prepared():
    return builder
  manual_dir = os.path.join(builder.data_dir_root, 'downloads', 'manual')
  instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if instructions and not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
    raise errors.BadInput(
        f'TFDS dataset {name!r} is not prepared in {builder.data_dir_root} and needs a manual '
        f'download ({" ".join(instructions.split())}); put those files into {manual_dir}, or set '
        'config.input.data_dir to a TFDS data dir that holds the prepared dataset.')
  lock = os.path.join(builder.data_dir_root, f'.{name.replace("/", "_")}.prepare.lock')
  with locks.exclusive(lock):
    builder = tfds.builder(name, data_dir=data_dir)  # Another process may have prepared it.
    if not builder.is_prepared():
      if not offline.prepare(name, data_dir):
        builder.download_and_prepare()
      builder = tfds.builder(name, data_dir=data_dir)  # Reads the prepared dataset's info.
  return builder


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Examples in a split (sub-split syntax such as `train[:10%]` allowed)."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    sizes = ', '.join(f'{name} ({info.num_examples} examples)'
                      for name, info in builder.info.splits.items())
    raise errors.BadInput(f'Split {split!r} of {builder.name}: '
                          f'{str(e).strip(chr(39)).splitlines()[0]} Its splits: {sizes}.') from e


def fit_split(split: str, num_examples: Callable[[str], int]) -> str:
  """`split`, or where it is `NAME[:N]` (`runlocal`'s slice) and NAME has fewer than N examples,
  all of NAME, with a warning: the first N examples, as Python slices them. `num_examples` gives
  a split's size (bad input for a split that does not exist)."""
  match = re.fullmatch(r'(\w+)\[:(\d+)\]', split)
  if match:
    available = num_examples(match[1])
    if available < int(match[2]):
      logging.warning('%s asks for the first %s examples of %d; using all of them (%s).', split,
                      match[2], available, match[1])
      return match[1]
  num_examples(split)
  return split


def num_classes(builder: tfds.core.DatasetBuilder) -> int:
  return builder.info.features['label'].num_classes


def class_names(builder: tfds.core.DatasetBuilder) -> tuple[str, ...]:
  """The label's names; numbers where the dataset names its classes by number only."""
  return tuple(builder.info.features['label'].names)


def channels(builder: tfds.core.DatasetBuilder) -> int:
  return builder.info.features['image'].shape[-1]


def to_float(image: tf.Tensor) -> tf.Tensor:
  """uint8 pixels -> float32 in [-1, 1], as every image enters the models."""
  return tf.cast(image, tf.float32) / 127.5 - 1.0


def _resize(image: tf.Tensor, size: tf.Tensor | tuple[int, int]) -> tf.Tensor:
  return tf.image.resize(image, size, method='bilinear', antialias=True)


def _match_channels(image: tf.Tensor, num_channels: int) -> tf.Tensor:
  """Grey <-> RGB, for extra data whose images differ from the main dataset's."""
  if image.shape[-1] == num_channels:
    return image
  return tf.image.grayscale_to_rgb(image) if num_channels == 3 else tf.image.rgb_to_grayscale(image)


def eval_image(image: tf.Tensor, resolution: int, central_crop: float) -> tf.Tensor:
  """Un-augmented: short side resized to `resolution / central_crop`, centre crop, float32."""
  image = to_float(image)
  shape = tf.shape(image)
  scale = resolution / central_crop / tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
  size = tf.maximum(resolution, tf.cast(tf.round(tf.cast(shape[:2], tf.float32) * scale),
                                        tf.int32))
  if central_crop != 1.0 or tuple(image.shape[:2]) != (resolution, resolution):
    image = _resize(image, size)
  top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
  return tf.image.crop_to_bounding_box(image, top, left, resolution, resolution)


def augment(image: tf.Tensor, seed: tf.Tensor, cfg: ml_collections.ConfigDict) -> tf.Tensor:
  """Random crop (padded, or inception-style; `cfg.augment`, see `check_input`) and flip of one
  uint8 HWC image -> float32."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = to_float(image)
  if cfg.augment == 'crop_flip':
    shape = tf.shape(image)
    p = cfg.crop_padding
    image = tf.pad(image, [[p, p], [p, p], [0, 0]], constant_values=-1.0)
    image = tf.image.stateless_random_crop(image, shape, seed=crop_seed)
  elif cfg.augment == 'inception_crop':
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=crop_seed,
        area_range=(0.05, 1.0), aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0,
        use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, size)
  if tuple(image.shape[:2]) != (cfg.resolution, cfg.resolution):
    image = _resize(image, (cfg.resolution, cfg.resolution))
  if cfg.flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return image


def process_slices(builder: tfds.core.DatasetBuilder, split: str, slices: int, *,
                   drop_remainder: bool) -> list[tuple[int, object, int]]:
  """This process's share of `slices` contiguous slices of `split`: (slice, subsplit, offset);
  `slices` is a multiple of the process count (`check_input`).

  Slice `v` belongs to process `v * process_count // slices`; `offset` is the position of the
  slice's first example in `split`, so `offset + position` identifies an example on any layout.
  """
  procs = jax.process_count()
  subsplits = tfds.even_splits(split, n=slices, drop_remainder=drop_remainder)
  sizes = [builder.info.splits[s].num_examples for s in subsplits]
  offsets = np.cumsum([0] + sizes[:-1])
  return [(v, s, int(offsets[v])) for v, s in enumerate(subsplits)
          if v * procs // slices == jax.process_index()]


def _stream(builder: tfds.core.DatasetBuilder, subsplit, offset: int,
            cfg: ml_collections.ConfigDict, *, seed: int, skip: int,
            blocks: tuple[Any, Any] | None, views) -> tf.data.Dataset:
  """One slice's endless stream of `views(example, index, example_seed)`, `skip` examples in; or,
  with `blocks` (tensors of stream positions and of the examples each block takes from there),
  those parts of the same stream, one after the other, in one pipeline.

  Epoch `e` is the slice shuffled with a seed drawn from `(seed, e)`: a stream `skip` examples in
  starts at epoch `skip // size` and reads at most one epoch to skip the rest, however late the
  step. `example_seed` comes from the example's position in the endless stream, so the stream is
  a function of (seed, skip) alone. Images stay encoded (JPEG, PNG) through the cache (filled by
  the first epoch, read by the others) and the shuffle buffer and are decoded in the parallel map:
  the buffer holds at most `shuffle_buffer` files, and no more than the slice has.
  """
  size = builder.info.splits[subsplit].num_examples
  ds = builder.as_dataset(split=subsplit, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()}).enumerate(start=offset)
  if cfg.cache:
    ds = ds.cache()
  buffer = min(cfg.shuffle_buffer, size)

  def epoch(e: tf.Tensor) -> tf.data.Dataset:
    epoch_seed = tf.random.stateless_uniform([], [seed, e], minval=None, maxval=None,
                                             dtype=tf.int64)
    return ds.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)

  def from_position(start):
    """(position, (index, example)) from stream position `start` on (an int or a tensor)."""
    first_epoch = tf.math.floordiv(tf.cast(start, tf.int64), size)
    return (tf.data.Dataset.counter(first_epoch).flat_map(epoch)
            .enumerate(start=first_epoch * size).skip(tf.cast(start, tf.int64) % size))

  if blocks is None:
    encoded = from_position(skip)
  else:
    encoded = tf.data.Dataset.from_tensor_slices(blocks).flat_map(
        lambda start, length: from_position(start).take(length))
  base_seed = tf.constant([0, seed], tf.int64)
  num_channels = channels(builder)

  def preprocess(position, indexed):
    index, example = indexed
    example = {**example, 'image': images.decode(example['image'], num_channels)}
    return views(example, index, tf.random.experimental.stateless_fold_in(base_seed, position))

  return encoded.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _extra_rows_pattern(rows: int, extra: int) -> tf.data.Dataset:
  """Endless 0/1 source choices: `extra` of every `rows` from source 1, spread evenly."""
  pattern = [(i + 1) * extra // rows - i * extra // rows for i in range(rows)]
  return tf.data.Dataset.from_tensor_slices(tf.constant(pattern, tf.int64)).repeat()


def train_batches(cfg: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, *,
                  seed: int, start_step: int = 0, teacher_view: str = variants.SAME,
                  with_index: bool = False, blocks: Sequence[tuple[int, int]] | None = None,
                  extra_builder: tfds.core.DatasetBuilder | None = None) -> Iterator[Batch]:
  """Endless per-process training batches of `cfg.batch_size // process_count` examples from
  `start_step` on; with `blocks` ((first step, steps) pairs), the batches of those steps instead,
  block after block, in one pipeline (a replay's epochs in a new order), and no more.

  Keys: `image`, `label` (-1 for rows from `extra_builder`, a share `cfg.extra_data.fraction` of
  every slice's rows), and per `teacher_view` (`variants.VIEWS`): `teacher_image` (AUGMENTED: an
  independent augmentation, UNAUGMENTED: the eval preprocessing) or `index` (INDEX: position in
  the split); `with_index` adds `index` to any view. `cfg` has passed `check_input` (`build.validate`).
  """
  if teacher_view not in variants.VIEWS:
    raise ValueError(f'Unknown teacher view {teacher_view!r}; use one of {variants.VIEWS}.')
  slices = cfg.data_shards or jax.process_count()
  rows = cfg.batch_size // slices
  extra_rows = round(rows * cfg.extra_data.fraction) if extra_builder else 0
  num_channels = channels(builder)

  def views(example, index, example_seed):
    image = _match_channels(example['image'], num_channels)
    out = {'image': augment(image, example_seed, cfg),
           'label': tf.cast(example.get('label', -1), tf.int32)}
    if teacher_view == variants.AUGMENTED:
      out['teacher_image'] = augment(
          image, tf.random.experimental.stateless_fold_in(example_seed, 1), cfg)
    elif teacher_view == variants.UNAUGMENTED:
      out['teacher_image'] = eval_image(image, cfg.resolution, cfg.central_crop)
    if teacher_view == variants.INDEX or with_index:
      out['index'] = tf.cast(index, tf.int32)
    return out

  def extra_views(example, index, example_seed):
    return views({'image': example['image']}, index, example_seed)

  main_slices = process_slices(builder, cfg.train_split, slices, drop_remainder=True)
  extra_slices = (process_slices(extra_builder, cfg.extra_data.split, slices, drop_remainder=True)
                  if extra_rows else [None] * len(main_slices))
  per_slice = []
  def parts(per_step: int) -> tuple[Any, Any] | None:
    """The stream positions and lengths of `blocks`, for a source of `per_step` rows a step."""
    if blocks is None:
      return None
    return (tf.constant([first * per_step for first, _ in blocks], tf.int64),
            tf.constant([count * per_step for _, count in blocks], tf.int64))

  for (v, subsplit, offset), extra in zip(main_slices, extra_slices):
    shuffle_seed = seed * 65_537 + 2 * v
    ds = _stream(builder, subsplit, offset, cfg, seed=shuffle_seed,
                 skip=start_step * (rows - extra_rows), blocks=parts(rows - extra_rows),
                 views=views)
    if extra:
      extra_ds = _stream(extra_builder, extra[1], extra[2], cfg, seed=shuffle_seed + 1,
                         skip=start_step * extra_rows, blocks=parts(extra_rows),
                         views=extra_views)
      ds = tf.data.Dataset.choose_from_datasets([ds, extra_ds],
                                                _extra_rows_pattern(rows, extra_rows))
    per_slice.append(ds.batch(rows, drop_remainder=True))
  ds = per_slice[0] if len(per_slice) == 1 else tf.data.Dataset.zip(tuple(per_slice)).map(
      lambda *parts: {k: tf.concat([p[k] for p in parts], 0) for k in parts[0]})
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def eval_batches(builder: tfds.core.DatasetBuilder, split: str, *, batch_size: int,
                 resolution: int, central_crop: float, cache: bool = False) -> tf.data.Dataset:
  """A split un-augmented (`eval_image`), in global batches of `batch_size`, the last padded.

  `mask` marks real examples and `index` is each one's position in the split. Every process
  yields the same number of batches, as the eval step is a global computation.
  """
  procs = jax.process_count()
  local_batch = batch_size // procs
  per_process = -(-num_examples(builder, split) // procs)
  steps = -(-per_process // local_batch)
  (_, subsplit, offset), = process_slices(builder, split, procs, drop_remainder=False)
  ds = builder.as_dataset(split=subsplit, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()}).enumerate(start=offset)
  num_channels = channels(builder)

  def preprocess(index, example):
    image = images.decode(example['image'], num_channels)
    return {'image': eval_image(image, resolution, central_crop),
            'label': tf.cast(example['label'], tf.int32), 'mask': tf.constant(1, tf.int32),
            'index': tf.cast(index, tf.int32)}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  padding = ds.take(1).map(lambda ex: tf.nest.map_structure(tf.zeros_like, ex)).repeat()
  ds = ds.concatenate(padding).take(steps * local_batch).batch(local_batch)
  if cache:
    ds = ds.cache()
  return ds.prefetch(tf.data.AUTOTUNE)
