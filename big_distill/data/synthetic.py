"""Tiny synthetic stand-ins of real TFDS image datasets, for tests and benchmarks without the data.

`make_standin('oxford_flowers102', data_dir)` writes random examples into `data_dir` with TFDS's
own builder class of that dataset (subclassed so that nothing is downloaded): the result has the
real name, version, config, features (class names included) and split names, so
`tfds.builder('oxford_flowers102', data_dir=data_dir)` and the input pipeline read it like the
real dataset. Only the pixels, labels and split sizes are made up.
"""

import zlib

import numpy as np
import tensorflow_datasets as tfds

# Split names of the real datasets (`sun397`: its default config `tfds`, a random 70/10/20%
# partition). Other datasets and configs need `num_examples` with their split names.
SPLITS = {
    'imagenet2012': ('train', 'validation', 'test'),
    'oxford_flowers102': ('train', 'validation', 'test'),
    'oxford_iiit_pet': ('train', 'test'),
    'food101': ('train', 'validation'),
    'sun397': ('train', 'validation', 'test'),
    'fashion_mnist': ('train', 'test'),
}


def make_standin(name: str, data_dir: str, num_examples: dict[str, int] | None = None,
                 image_size: tuple[int, int] = (32, 32), seed: int = 0,
                 ) -> tfds.core.DatasetBuilder:
  """Writes a random stand-in of the TFDS dataset `name` into `data_dir` (kept if already there).

  Args:
    name: a registered TFDS name, optionally with a config (`'sun397/standard-part1-120k'`);
      without one, the default config as `tfds.builder(name)` picks it.
    data_dir: TFDS data directory to write into.
    num_examples: examples per split; default 8 in each of the real dataset's splits (`SPLITS`).
    image_size: (height, width) of images whose feature has no fixed size; channels, and the
      size of fixed-shape images (e.g. 28x28x1 Fashion-MNIST), follow the real feature. Pixels
      are uniform noise, which JPEG compresses far worse than photos: files are larger and
      slower to decode than real ones of the same size.
    seed: the content is a function of `seed`, the split and the example index.

  Returns:
    The real dataset's builder reading the stand-in.
  """
  if num_examples is None:
    if name not in SPLITS:
      raise ValueError(f'No known splits for {name!r}; pass num_examples={{split: count}}.')
    num_examples = {split: 8 for split in SPLITS[name]}
  base, _, config = name.partition('/')
  real = tfds.builder_cls(base)

  with tfds.core.registered.skip_registration():

    class StandIn(real):
      name = real.name
      MANUAL_DOWNLOAD_INSTRUCTIONS = None

      def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {split: self._generate_examples(split=split, count=count)
                for split, count in num_examples.items()}

      def _generate_examples(self, split, count):
        rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
        for i in range(count):
          yield f'{split}_{i}', random_example(self.info.features, rng, image_size,
                                               f'{split}_{i}')

  kwargs = {'config': config} if config else {}
  StandIn(data_dir=data_dir, **kwargs).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return tfds.builder(name, data_dir=data_dir)


def random_example(feature: tfds.features.FeatureConnector, rng: np.random.Generator,
                   image_size: tuple[int, int], key: str):
  """A random value that `feature.encode_example` accepts (nested for FeaturesDict)."""
  if isinstance(feature, tfds.features.FeaturesDict):
    return {k: random_example(f, rng, image_size, key) for k, f in feature.items()}
  if isinstance(feature, tfds.features.Image):
    h, w, c = feature.shape
    shape = (h or image_size[0], w or image_size[1], c or 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)
  if isinstance(feature, tfds.features.ClassLabel):
    return int(rng.integers(feature.num_classes))
  if isinstance(feature, tfds.features.Text):
    return f'standin_{key}'
  if isinstance(feature, tfds.features.BBoxFeature):
    ymin, ymax = np.sort(rng.uniform(size=2))
    xmin, xmax = np.sort(rng.uniform(size=2))
    return tfds.features.BBox(ymin, xmin, ymax, xmax)
  if isinstance(feature, tfds.features.Tensor):
    shape = tuple(d or 1 for d in feature.shape)
    dtype = np.dtype(feature.np_dtype)
    if dtype.kind == 'f':
      return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in 'iu':
      return rng.integers(0, 100, shape).astype(dtype)
    if dtype.kind == 'b':
      return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in 'SUO':
      return np.full(shape, f'standin_{key}', dtype=object)
  raise ValueError(f'No random values for feature {type(feature).__name__}.')
