"""Synthetic stand-ins of real TFDS datasets, read back by the real builders."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from big_distill.data import input_pipeline, synthetic

# name: (classes, splits, extra features beyond image and label)
REAL = {
    'imagenet2012': (1000, {'train', 'validation', 'test'}, {'file_name'}),
    'oxford_flowers102': (102, {'train', 'validation', 'test'}, {'file_name'}),
    'oxford_iiit_pet': (37, {'train', 'test'},
                        {'species', 'file_name', 'segmentation_mask', 'head_bbox'}),
    'food101': (101, {'train', 'validation'}, set()),
    'sun397': (397, {'train', 'validation', 'test'}, {'file_name'}),
    'fashion_mnist': (10, {'train', 'test'}, set()),
}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  tfds.disable_progress_bar()
  path = str(tmp_path_factory.mktemp('standins'))
  for name in REAL:
    synthetic.make_standin(name, path, image_size=(20, 24))
  return path


@pytest.mark.parametrize('name', REAL)
def test_real_builder_reads_the_standin(data_dir, tmp_path, name):
  classes, splits, extra = REAL[name]
  builder = input_pipeline.get_builder(name, data_dir)  # The trainer's way in: no download.
  assert builder.is_prepared()
  # Same name, config and version as the real builder's default.
  assert builder.info.full_name == tfds.builder(name, data_dir=str(tmp_path)).info.full_name
  assert builder.info.features['label'].num_classes == classes
  assert set(builder.info.features) == {'image', 'label'} | extra
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
      s: 8 for s in splits}
  for split in splits:
    examples = list(builder.as_dataset(split=split).as_numpy_iterator())
    assert len(examples) == 8
    for ex in examples:
      shape = (28, 28, 1) if name == 'fashion_mnist' else (20, 24, 3)
      assert ex['image'].shape == shape and ex['image'].dtype == np.uint8
      assert 0 <= ex['label'] < classes
    assert np.std([ex['image'] for ex in examples]) > 50  # Uniform noise: std 73.9.


def test_sun397_is_the_default_tfds_config(data_dir):
  builder = tfds.builder('sun397', data_dir=data_dir)
  assert builder.info.full_name == 'sun397/tfds/4.0.0'


def test_images_are_encoded_as_the_feature_says(data_dir):
  magic = {'jpeg': b'\xff\xd8\xff', 'png': b'\x89PNG'}
  for name, key, fmt in (('imagenet2012', 'image', 'jpeg'), ('oxford_iiit_pet', 'image', 'jpeg'),
                         ('oxford_iiit_pet', 'segmentation_mask', 'png'),
                         ('oxford_flowers102', 'image', 'png')):
    builder = tfds.builder(name, data_dir=data_dir)
    ds = builder.as_dataset(split='train', decoders={key: tfds.decode.SkipDecoding()})
    encoded = next(iter(ds.as_numpy_iterator()))[key]
    assert encoded.startswith(magic[fmt]), (name, key)


def test_pet_extra_features_are_valid(data_dir):
  builder = tfds.builder('oxford_iiit_pet', data_dir=data_dir)
  for ex in builder.as_dataset(split='test').as_numpy_iterator():
    ymin, xmin, ymax, xmax = ex['head_bbox']
    assert 0 <= ymin <= ymax <= 1 and 0 <= xmin <= xmax <= 1
    assert ex['segmentation_mask'].shape == (20, 24, 1)
    assert ex['species'] in (0, 1) and ex['file_name'].startswith(b'standin_test_')


def test_content_is_a_function_of_the_seed(tmp_path):
  def pixels(path, seed):
    builder = synthetic.make_standin('food101', str(path), {'train': 3}, image_size=(8, 8),
                                     seed=seed)
    return sorted((ex['image'].tobytes(), int(ex['label']))
                  for ex in builder.as_dataset(split='train').as_numpy_iterator())

  assert pixels(tmp_path / 'a', 0) == pixels(tmp_path / 'b', 0)
  assert pixels(tmp_path / 'a', 0) != pixels(tmp_path / 'c', 1)


def test_other_datasets_need_their_split_names(tmp_path):
  with pytest.raises(ValueError, match='pass num_examples'):
    synthetic.make_standin('cifar100', str(tmp_path))
  builder = synthetic.make_standin('cifar100', str(tmp_path), {'train': 4, 'test': 2})
  assert builder.info.features['label'].num_classes == 100
  assert builder.info.features['coarse_label'].num_classes == 20
  assert builder.info.splits['test'].num_examples == 2
  builder = synthetic.make_standin('sun397/standard-part1-120k', str(tmp_path), {'train': 2})
  assert builder.info.full_name == 'sun397/standard-part1-120k/4.0.0'
