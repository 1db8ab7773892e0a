"""Users' own images as datasets: `imagefolder:/path`, prepared once into a real TFDS dataset.

Layouts (hidden names and the files operating systems leave in folders are ignored everywhere:
`images.ignored`, e.g. `.DS_Store`, `Thumbs.db`, `__MACOSX/`):
- labelled (the main dataset, eval sets): `/path/SPLIT/CLASS/IMAGE`; each subfolder of `/path` is
  a split named after it (letters, digits, `_`; not `all`), each of its subfolders a class
  holding that class's images (nested folders inside a class folder belong to it). The classes
  are the train split's class folders, sorted (every split's, when there is no `train/`); a split
  with a class folder that `train/` lacks is refused, as the model would never learn that class.
  Given a model's classes (an eval set, `evaluate`), a folder may hold some of them: its class
  folders are matched to the model's classes by name, and one that is not among them is refused.
- unlabelled (extra data, `labels=False`): every image under `/path`, in nested folders or not,
  as one split `train` without labels.

Every other file must be an image that PIL reads (`images`: any format, mode and bit depth,
alpha composited on white, EXIF orientation applied). Every file is decoded before anything is
written, and every unreadable or empty one is named in one message (`images.report_bad`), as is
every empty class folder; with `skip_bad` (`config.input.skip_bad_images`) they are left out
instead and logged. A dataset has one channel count, grey (1) or RGB (3): the one asked for (an
eval set takes its run's), else that of most of its images; the others are converted. The copy
stores what the model sees: files that decode to that as they are keep their bytes (a photo's
JPEG), the others are stored as lossless PNGs of their converted pixels (`images.stored`);
`Image(shape=(None, None, C))`, with each file's relative path as `file_name`.

Why prepare rather than read the files: `tfds.folder_dataset.ImageFolder` reads the folder
directly but refuses every split but a whole one (no `train[:10%]`, no `tfds.even_splits`), so it
cannot shard the data over processes. A prepared TFDS dataset keeps every guarantee of
`input_pipeline`: exact resume, `even_splits` shards, encoded images through cache and shuffle
(`SkipDecoding`), `info.splits[...]` of sub-splits. TFDS orders examples by a hash of their key
(the relative path), so any slice mixes the classes.

`describe` does every check and writes nothing; `prepare` then writes the copy, into
`DATA_DIR/image_folder/<folder name>_<fingerprint>/1.0.0` (DATA_DIR: `config.input.data_dir`, else
TFDS's default), the fingerprint a hash of the classes, the channel count and each file's
relative path, size and modification time: a changed folder is prepared again (into a new
directory; delete old ones by hand), an unchanged one is only listed. A process decodes a
folder's images once however often it describes it. The processes of a host that start
together each check a new folder and lock the folder itself to prepare it (nothing is written
for the lock): the first writes the copy, the others then read it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re

from absl import logging
from etils import epy
with epy.lazy_imports():  # TensorFlow loads where data is read, not with the module.
  import tensorflow as tf
  import tensorflow_datasets as tfds

from big_distill import errors
from big_distill.data import images, locks

PREFIX = 'imagefolder:'
NAME = 'image_folder'
VERSION = '1.0.0'
UNLABELLED_SPLIT = 'train'
SKIP_OPTION = 'config.input.skip_bad_images=True'
_FORMAT = 2  # Part of the fingerprint: a new format prepares every folder again.
_CHANNELS = (3, 1)  # RGB first: where as many images are grey as RGB, the dataset is RGB.
_CHUNK = 256  # Images converted at a time while preparing.


@dataclasses.dataclass(frozen=True)
class Folder:
  """A listed image folder, its layout checked (no image opened): per split, its files' relative
  paths and class names ('' without labels), and (relative path, size, mtime) of every file.
  `classes` are a model's where `matched` (see `describe`), else the folder's own; `empty`: the
  empty class folders left out."""
  root: str
  labels: bool
  classes: tuple[str, ...]
  matched: bool
  splits: dict[str, list[tuple[str, str]]]
  stats: tuple[tuple[str, int, int], ...]
  empty: tuple[str, ...] = ()

  @property
  def name(self) -> str:
    return f'{PREFIX}{self.root}'

  @property
  def key(self) -> tuple:
    """What identifies the folder's content and labelling."""
    return (self.root, self.labels, self.classes, self.stats)

  def config_name(self, channels: int) -> str:
    """`<folder name>_<fingerprint>`: the directory of the prepared copy with `channels`."""
    key = json.dumps([_FORMAT, self.labels, self.classes, channels, self.stats])
    slug = re.sub(r'[^a-z0-9]+', '_', os.path.basename(self.root).lower()).strip('_')
    return (f'{slug[:40] or "images"}{"" if self.labels else "_unlabelled"}_'
            f'{hashlib.sha256(key.encode()).hexdigest()[:16]}')


@dataclasses.dataclass(frozen=True)
class Described:
  """A folder as a dataset, every check passed and nothing written (`describe`): its classes,
  channels and split sizes; `builder`: its prepared copy, None until `prepare` writes it."""
  folder: Folder
  classes: tuple[str, ...]
  channels: int
  split_sizes: dict[str, int]
  path: str  # The prepared copy's directory.
  builder: tfds.core.DatasetBuilder | None
  skipped: tuple[tuple[str, str], ...]  # The unreadable files left out: (relative path, why).
  most: int  # The channel count of most images.
  # What `prepare` writes, where `builder` is None: per split, (relative path, label or -1);
  # the files stored as they are (`images.stored`), the others converted.
  examples: dict[str, list[tuple[str, int]]] | None = None
  kept: frozenset[str] = frozenset()


# Each process describes a folder once per request, and decodes its images once (`_check`).
_described: dict[tuple, Described] = {}
_checked: dict[tuple, tuple[dict[str, tuple[int, bool]], list[tuple[str, str]]]] = {}


def is_folder(name: str) -> bool:
  return name.startswith(PREFIX)


def name_list(names: tuple[str, ...] | list[str], shown: int = 12) -> str:
  """Names for a message: all of them, or the first `shown` and how many there are."""
  if len(names) <= shown:
    return ', '.join(names)
  return f'{", ".join(names[:shown])}, ... ({len(names)} in all)'


def describe(name: str, data_dir: str | None, *, labels: bool = True,
             classes: tuple[str, ...] | None = None, channels: int | None = None,
             skip_bad: bool = False, skip_option: str = SKIP_OPTION) -> Described:
  """The folder `imagefolder:/path` as a dataset, checked (see the module docstring); writes
  nothing. `classes`: a model's class names, which the folder's are matched to by name (its
  labels are then the model's); `channels`: the channel count its images are converted to (else
  most images'); `skip_bad`: leave out unreadable files and empty class folders (else refused,
  naming `skip_option` as the way to leave them out)."""
  if channels not in (None, *_CHANNELS):
    raise errors.BadInput(f'{name}: images are grey (1 channel) or RGB (3), not {channels} '
                          'channels.')
  folder = scan(name[len(PREFIX):], labels=labels, classes=classes, skip_bad=skip_bad,
                skip_option=skip_option)
  data_dir = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)
  request = (folder.key, data_dir, channels, skip_bad, skip_option)
  if request not in _described:
    if folder.empty:
      logging.warning('Left out the empty class folders %s of %s.', ', '.join(folder.empty),
                      folder.name)
    if folder.matched:
      present = {c for files in folder.splits.values() for _, c in files}
      if present != set(folder.classes):
        logging.warning("%s holds %d of the model's %d classes (not: %s); its labels are the "
                        "model's, matched by name.", folder.name, len(present),
                        len(folder.classes), name_list(sorted(set(folder.classes) - present)))
    _described[request] = _describe(folder, data_dir, channels, skip_bad, skip_option)
  return _described[request]


def _describe(folder: Folder, data_dir: str, channels: int | None, skip_bad: bool,
              skip_option: str) -> Described:
  """`describe` of a scanned folder: from its prepared copy where one exists, else checked."""
  copies = {c: prepared_path(folder, c, data_dir) for c in _CHANNELS}
  found = [c for c, path in copies.items()
           if tf.io.gfile.exists(os.path.join(path, 'dataset_info.json'))]
  if found:  # Any copy knows the channel count of most images.
    most = tfds.builder_from_directory(copies[found[0]]).info.metadata['channels_of_most_images']
    if (channels or most) in found:
      builder = tfds.builder_from_directory(copies[channels or most])
      skipped = tuple(tuple(bad) for bad in builder.info.metadata['skipped'])
      images.report_bad([(os.path.join(folder.root, f), why) for f, why in skipped],
                        f'of {folder.name}', skip=skip_bad, skip_option=skip_option)
      return Described(
          folder, tuple(builder.info.features['label'].names) if folder.labels else (),
          channels or most, {s: i.num_examples for s, i in builder.info.splits.items()},
          copies[channels or most], builder, skipped, most)

  files = (folder.root, folder.stats)  # However it is labelled.
  if files not in _checked:
    _checked[files] = _check(folder)
  good, bad = _checked[files]
  images.report_bad([(os.path.join(folder.root, f), why) for f, why in bad],
                    f'of {folder.name}', skip=skip_bad, skip_option=skip_option)
  counts = collections.Counter(c for c, _ in good.values())
  most = max(_CHANNELS, key=lambda c: counts[c])
  splits = {s: [(f, c) for f, c in files if f in good] for s, files in folder.splits.items()}
  for split, files in splits.items():
    if not files:
      raise errors.BadInput(f'{folder.name}: the split folder {split}/ holds no readable images.')
  classes = folder.classes
  if folder.labels and not folder.matched and bad:  # A class may have lost every image.
    classes = _own_classes({s: {c for _, c in files} for s, files in splits.items()})
    if classes != folder.classes:
      logging.warning('Left out the classes %s of %s: none of their images is readable.',
                      ', '.join(sorted(set(folder.classes) - set(classes))), folder.name)
      _check_known(folder.root, {s: {c for _, c in files} for s, files in splits.items()},
                   classes, matched=False)
  label = {c: i for i, c in enumerate(classes)}
  examples = {s: [(f, label[c] if folder.labels else -1) for f, c in files]
              for s, files in splits.items()}
  channels = channels or most
  kept = frozenset(f for f, (c, as_is) in good.items() if as_is and c in (1, channels))
  return Described(folder, classes, channels, {s: len(e) for s, e in examples.items()},
                   copies[channels], None, tuple(bad), most, examples, kept)


def _check(folder: Folder) -> tuple[dict[str, tuple[int, bool]], list[tuple[str, str]]]:
  """Decodes every file of the folder (on all cores): the good ones' (channels, kept as is) by
  relative path, and the bad ones' (relative path, why)."""

  def inspect(path: str) -> tuple[int, bool]:
    decoded = images.decode_file(path)
    return decoded.channels, decoded.as_is

  good, bad = images.read_all([os.path.join(folder.root, f) for f, _, _ in folder.stats],
                              inspect)
  start = len(folder.root) + 1
  return {p[start:]: v for p, v in good.items()}, [(p[start:], why) for p, why in bad]


def num_examples(described: Described, split: str) -> int:
  """Examples in a split of the folder (TFDS's sub-split syntax, e.g. `train[:90%]`), by the
  arithmetic of TFDS's own `SplitDict`."""
  infos = [tfds.core.SplitInfo(
      name=s, shard_lengths=[n], num_bytes=0, filename_template=tfds.core.ShardedFileTemplate(
          data_dir=tfds.core.Path(described.path), dataset_name=NAME, split=s,
          filetype_suffix='tfrecord'))
           for s, n in described.split_sizes.items()]
  try:
    return tfds.core.SplitDict(infos)[split].num_examples
  except (KeyError, ValueError) as e:
    sizes = ', '.join(f'{s} ({n} examples)' for s, n in described.split_sizes.items())
    raise errors.BadInput(f'Split {split!r} of {described.folder.name}: '
                          f'{str(e).strip(chr(39)).splitlines()[0]} Its splits: {sizes}.'
                          ) from None


def prepare(described: Described) -> tfds.core.DatasetBuilder:
  """The prepared TFDS dataset of a described folder; writes it if it does not exist yet."""
  if described.builder:
    return described.builder
  with locks.exclusive(described.folder.root):
    if not tf.io.gfile.exists(os.path.join(described.path, 'dataset_info.json')):
      _write(described)
  return tfds.builder_from_directory(described.path)


def get_builder(name: str, data_dir: str | None, *, labels: bool = True,
                **options) -> tfds.core.DatasetBuilder:
  """The prepared TFDS dataset of `imagefolder:/path`: `prepare(describe(...))`, with
  `describe`'s options."""
  return prepare(describe(name, data_dir, labels=labels, **options))


def prepared_path(folder: Folder, channels: int, data_dir: str) -> str:
  return os.path.join(data_dir, NAME, folder.config_name(channels), VERSION)


def scan(path: str, *, labels: bool, classes: tuple[str, ...] | None = None,
         skip_bad: bool = False, skip_option: str = SKIP_OPTION) -> Folder:
  """The folder's layout, checked (no image is opened); `labels`: split and class folders;
  `classes` and `skip_bad` as for `describe`."""
  root = os.path.abspath(os.path.expanduser(path))
  if not path or not os.path.isdir(root):
    raise errors.BadInput(f'{PREFIX}{path}: no such folder.')
  if not labels:
    files = _files(root)
    if not files:
      raise errors.BadInput(f'{PREFIX}{root} holds no images.')
    return _folder(root, False, (), False, {UNLABELLED_SPLIT: [(f, '') for f in files]})
  found = {}  # split -> class -> files.
  for split in _subfolders(root, '', 'split'):
    if not re.fullmatch(r'\w+', split) or split == 'all':
      raise errors.BadInput(f'{PREFIX}{root}: {split!r} cannot name a split; rename the folder '
                            "with letters, digits and '_' only (and not 'all').")
    found[split] = {c: _files(os.path.join(root, split, c))
                    for c in _subfolders(root, split, 'class')}
    if not any(found[split].values()):
      raise errors.BadInput(f'{PREFIX}{root}: the split folder {split}/ holds no images.')
  empty = tuple(f'{s}/{c}/' for s, by_class in found.items() for c, files in by_class.items()
                if not files)
  if empty and not skip_bad:
    many = len(empty) > 1
    raise errors.BadInput(
        f'{PREFIX}{root}: the class folder{"s" if many else ""} {", ".join(empty)} '
        f'hold{"" if many else "s"} no images; add images, remove {"them" if many else "it"}, '
        f'or set {skip_option} to leave such folders out.')
  found = {s: {c: files for c, files in by_class.items() if files}
           for s, by_class in found.items()}
  names = {s: set(by_class) for s, by_class in found.items()}
  given = classes is not None
  classes = tuple(classes) if given else _own_classes(names)
  _check_known(root, names, classes, matched=given)
  return _folder(root, True, classes, given, {
      split: [(f'{split}/{c}/{f}', c) for c, files in by_class.items() for f in files]
      for split, by_class in found.items()}, empty)


def _own_classes(names: dict[str, set[str]]) -> tuple[str, ...]:
  """A folder's own classes, from its splits' class folder names: train/'s, else every split's."""
  return tuple(sorted(names['train'] if 'train' in names else set().union(*names.values())))


def _check_known(root: str, names: dict[str, set[str]], classes: tuple[str, ...], *,
                 matched: bool) -> None:
  """Refuses class folders whose names are not in `classes`: a model's where `matched`, else
  train/'s."""
  unknown = sorted({f'{split}/{c}/' for split, found in names.items() for c in found
                    if c not in classes})
  if unknown and matched:
    raise errors.BadInput(
        f'{PREFIX}{root}: the class folder{"s" if len(unknown) > 1 else ""} '
        f"{name_list(unknown)} {'are' if len(unknown) > 1 else 'is'} not among the model's "
        f'classes ({name_list(classes)}); a folder evaluated with a model may hold some of its '
        'classes, matched by name, but no others.')
  if unknown:
    raise errors.BadInput(f'{PREFIX}{root}: {unknown[0][:-1]} is a class that train/ does not '
                          f'have; the classes are the folders of train/ ({name_list(classes)}).')


def _folder(root: str, labels: bool, classes: tuple[str, ...], matched: bool,
            splits: dict[str, list[tuple[str, str]]], empty: tuple[str, ...] = ()) -> Folder:
  """A `Folder`, with the stats of its files (relative path, size, mtime)."""
  stats = []
  for files in splits.values():
    for f, _ in files:
      st = os.stat(os.path.join(root, f))
      stats.append((f, st.st_size, st.st_mtime_ns))
  return Folder(root, labels, classes, matched, splits, tuple(sorted(stats)), empty)


def _subfolders(root: str, rel: str, kind: str) -> list[str]:
  """The subfolders of `root/rel`, which must hold nothing else (ignored entries aside)."""
  path = os.path.join(root, rel)
  names = sorted(n for n in os.listdir(path) if not images.ignored(n))
  layout = f'the layout is {root}/SPLIT/CLASS/IMAGE, e.g. {root}/train/cat/1.png'
  for name in names:
    if not os.path.isdir(os.path.join(path, name)):
      raise errors.BadInput(f'{PREFIX}{root}: {os.path.join(rel, name)} is a file where a {kind} '
                            f'folder should be; {layout}.')
  if not names:
    where = f'{PREFIX}{root}: {rel}/' if rel else f'{PREFIX}{root}'
    raise errors.BadInput(f'{where} has no {kind} folders; {layout}.')
  return names


def _files(path: str) -> list[str]:
  """Every file under `path` (ignored ones and those in ignored folders left out), relative."""
  out = []
  for top, dirs, files in os.walk(path, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not images.ignored(d))
    rel = os.path.relpath(top, path)
    out += [f if rel == '.' else f'{rel}/{f}' for f in sorted(files) if not images.ignored(f)]
  return out


def _write(described: Described) -> None:
  """Writes the TFDS dataset of a described folder into `described.path`."""
  folder, channels = described.folder, described.channels
  features = {'image': tfds.features.Image(shape=(None, None, channels)),
              'file_name': tfds.features.Text()}
  if folder.labels:
    features['label'] = tfds.features.ClassLabel(names=described.classes)
  metadata = tfds.core.MetadataDict(channels_of_most_images=described.most,
                                    skipped=[list(bad) for bad in described.skipped])
  config_dir = os.path.dirname(described.path)

  with tfds.core.registered.skip_registration():

    class ImageFolderDataset(tfds.core.GeneratorBasedBuilder):
      """The images of one folder."""
      name = NAME
      VERSION = tfds.core.Version(VERSION)
      BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=os.path.basename(config_dir))]

      def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=f'The images of {folder.name}.',
            features=tfds.features.FeaturesDict(features), metadata=metadata)

      def _split_generators(self, dl_manager):
        return {split: self._generate_examples(files)
                for split, files in described.examples.items()}

      def _generate_examples(self, files):
        for start in range(0, len(files), _CHUNK):  # Converted on all cores, a chunk at a time.
          chunk = [(os.path.join(folder.root, f), f, label)
                   for f, label in files[start:start + _CHUNK]]
          converted, bad = images.read_all(
              [path for path, f, _ in chunk if f not in described.kept],
              lambda path: images.stored(path, channels))
          if bad:
            raise errors.BadInput(f'{bad[0][0]} changed while {folder.name} was being prepared '
                                  f'({bad[0][1]}); run again.')
          for path, f, label in chunk:  # TFDS reads a path's bytes as they are.
            example = {'image': converted.get(path, path), 'file_name': f}
            yield f, ({**example, 'label': label} if folder.labels else example)

  ImageFolderDataset(data_dir=os.path.dirname(os.path.dirname(config_dir)),
                     config=os.path.basename(config_dir)).download_and_prepare(
                         download_config=tfds.download.DownloadConfig(try_download_gcs=False))
