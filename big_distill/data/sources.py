"""A run's datasets by name, checked and described before anything is written: TFDS datasets and
image folders (`folders`) behind one interface, for `build`'s `describe_data` and `create_data`.

This is the one place that tells an image folder from a TFDS name for a run; `input_pipeline`
reads the builders it gives.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable

import ml_collections
from etils import epy
with epy.lazy_imports():  # TensorFlow loads where data is read, not with the module.
  import tensorflow_datasets as tfds

from big_distill import errors
from big_distill.data import folders, input_pipeline


@dataclasses.dataclass(frozen=True)
class Source:
  """One dataset, checked: its class names and channels, its splits' sizes (`num_examples`,
  TFDS's sub-split syntax), its builder (None for an image folder not prepared yet) and, for an
  image folder, its description, to prepare it."""
  class_names: tuple[str, ...]
  channels: int
  num_examples: Callable[[str], int]
  builder: tfds.core.DatasetBuilder | None
  folder: folders.Described | None = None

  @property
  def full_name(self) -> str:
    """TFDS's `name/config/version` of the dataset (an image folder's prepared copy's)."""
    if self.folder:
      return f'{folders.NAME}/{self.folder.folder.config_name(self.channels)}/{folders.VERSION}'
    return self.builder.info.full_name

  def prepare(self) -> tfds.core.DatasetBuilder:
    """The builder, the image folder's copy written first if needed."""
    return folders.prepare(self.folder) if self.folder else self.builder


def describe(name: str, data_dir: str | None, *, labels: bool = True, read_tfds: bool = True,
             **folder_options) -> Source:
  """The dataset `name`, checked without writing anything: an image folder (`folders.describe`
  with `folder_options`) or a TFDS dataset, which with `read_tfds` is prepared (downloaded) on
  first use, as only then are its split sizes known, and otherwise only looked up (its
  metadata: classes and channels)."""
  if folders.is_folder(name):
    described = folders.describe(name, data_dir, labels=labels, **folder_options)
    return Source(described.classes, described.channels,
                  functools.partial(folders.num_examples, described), described.builder,
                  described)
  if read_tfds:
    builder = input_pipeline.get_builder(name, data_dir)
  else:
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise errors.BadInput(f'Unknown TFDS dataset {name!r}: {str(e).splitlines()[0]}') from None
  return Source(input_pipeline.class_names(builder) if labels else (),
                input_pipeline.channels(builder),
                functools.partial(input_pipeline.num_examples, builder), builder)


def readable(name: str, data_dir: str | None) -> bool:
  """Whether describing the dataset `name` writes nothing: an image folder (checked, prepared
  only later) or a TFDS dataset already prepared in `data_dir`."""
  if folders.is_folder(name):
    return True
  try:
    return tfds.builder(name, data_dir=data_dir).is_prepared()
  except tfds.core.registered.DatasetNotFoundError:
    return True  # `describe` says it is unknown, writing nothing.


@dataclasses.dataclass(frozen=True)
class RunSources:
  """A run's datasets (`describe_run`): the main one, its train and eval splits
  (`input_pipeline.fit_split`) and the train split's size, the extra data (None without), and the
  eval sets: name -> (dataset, split)."""
  main: Source
  train_split: str
  eval_split: str
  num_train: int
  extra: Source | None
  evals: dict[str, tuple[Source, str]]


def eval_split_hint(folder: folders.Described, train_split: str) -> str:
  """What to set where `config.input.eval_split` names none of an image folder's splits."""
  others = [s for s in folder.split_sizes if s != re.match(r'\w*', train_split)[0]]
  if len(others) == 1:
    return f'Evaluate on {others[0]}/ with --config.input.eval_split={others[0]}.'
  if others:
    return 'Name the split to evaluate on with --config.input.eval_split=NAME.'
  return ('Hold some of the training images out to evaluate on: '
          '--config.input.train_split=train[:90%] --config.input.eval_split=train[90%:].')


def describe_run(config: ml_collections.ConfigDict,
                 evals: dict[str, tuple[str, str]]) -> RunSources:
  """The datasets of a run's config, checked, nothing written: every configured split exists,
  image folders are sound (with `config.input.skip_bad_images`, their unreadable files and empty
  class folders left out), every eval set (`evals`: `build.parse_evals` of `config.evals`) has
  the run's channels and class names; an image folder may hold some of the classes, its labels
  then mapped to the run's by name (logged), and is converted to the run's channels."""
  cfg = config.input
  skip = cfg.get('skip_bad_images', False)  # Runs stored before the key existed lack it.
  main = describe(cfg.dataset, cfg.data_dir, skip_bad=skip)
  if main.folder and len(main.class_names) < 2:
    raise errors.BadInput(f'{cfg.dataset} has one class folder ({main.class_names[0]}/); a '
                          'classifier learns to tell two or more classes apart.')
  train_split = input_pipeline.fit_split(cfg.train_split, main.num_examples)
  try:
    eval_split = input_pipeline.fit_split(cfg.eval_split, main.num_examples)
  except errors.BadInput as e:
    if not main.folder:
      raise
    raise errors.BadInput(f'{e} {eval_split_hint(main.folder, train_split)}') from None
  extra = None
  if cfg.extra_data.dataset:
    extra = describe(cfg.extra_data.dataset, cfg.extra_data.data_dir, labels=False,
                     skip_bad=skip)
    extra.num_examples(cfg.extra_data.split)
  sets = {}
  for name, (split, dataset) in evals.items():
    other = main
    if folders.is_folder(dataset):
      try:
        other = describe(dataset, cfg.data_dir, classes=main.class_names, channels=main.channels,
                         skip_bad=skip)
      except errors.BadInput as e:
        raise errors.BadInput(f'config.evals: {name}: {e}') from None
    elif dataset:
      other = describe(dataset, cfg.data_dir)
      for what, get in (('classes', lambda s: s.class_names), ('channels', lambda s: s.channels)):
        if get(other) != get(main):
          raise errors.BadInput(
              f'config.evals: {name} ({dataset}) has the {what} {get(other)}, {cfg.dataset} '
              f'{get(main)}; an eval set needs the same (an image folder may hold some of the '
              'classes).')
    other.num_examples(split)
    sets[name] = (other, split)
  return RunSources(main, train_split, eval_split, main.num_examples(train_split), extra, sets)
