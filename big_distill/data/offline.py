"""Prepares TFDS datasets from files already on the machine, for hosts without internet
(`prepare`; `input_pipeline.get_builder` asks it before downloading).

`fashion_mnist` is prepared with TFDS's own builder from the idx files of Debian's package
`dataset-fashion-mnist`, so the result is the standard TFDS dataset (same name, version, features,
splits and counts) that `tfds.load('fashion_mnist')` reads afterwards.
"""

from __future__ import annotations

import os

from etils import epy
with epy.lazy_imports():  # TensorFlow loads where data is read, not with the module.
  import tensorflow_datasets as tfds
  from tensorflow_datasets.image_classification import mnist

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
_FILES = {
    'train_data': 'train-images-idx3-ubyte.gz',
    'train_labels': 'train-labels-idx1-ubyte.gz',
    'test_data': 't10k-images-idx3-ubyte.gz',
    'test_labels': 't10k-labels-idx1-ubyte.gz',
}


def available(name: str) -> bool:
  """Whether this machine has the local files to prepare the TFDS dataset `name`."""
  return name in _LOCAL and _LOCAL[name][0]()


def prepare(name: str, data_dir: str | None) -> bool:
  """Prepares the TFDS dataset `name` into `data_dir` from local files, if this machine has them;
  whether it did."""
  if not available(name):
    return False
  _LOCAL[name][1](data_dir)
  return True


def prepare_fashion_mnist(data_dir: str | None,
                          source_dir: str = DEBIAN_FASHION_MNIST) -> tfds.core.DatasetBuilder:
  """Writes the TFDS `fashion_mnist` dataset into `data_dir` from local idx `.gz` files."""
  with tfds.core.registered.skip_registration():

    class LocalFashionMNIST(mnist.FashionMNIST):
      name = 'fashion_mnist'

      def _split_generators(self, dl_manager):
        paths = dl_manager.extract(
            {k: os.path.join(source_dir, f) for k, f in _FILES.items()})
        return [
            tfds.core.SplitGenerator(
                name=split,
                gen_kwargs=dict(num_examples=n, data_path=paths[f'{prefix}_data'],
                                label_path=paths[f'{prefix}_labels']))
            for split, prefix, n in ((tfds.Split.TRAIN, 'train', 60_000),
                                     (tfds.Split.TEST, 'test', 10_000))
        ]

  builder = LocalFashionMNIST(data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def _fashion_mnist_files() -> bool:
  return all(os.path.exists(os.path.join(DEBIAN_FASHION_MNIST, f)) for f in _FILES.values())


# TFDS name -> (whether the local files are here, what prepares the dataset from them).
_LOCAL = {'fashion_mnist': (_fashion_mnist_files, prepare_fashion_mnist)}
