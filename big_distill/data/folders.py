"""Users' own images as datasets: `imagefolder:/path`, prepared once into a real TFDS dataset.

Layouts (names starting with '.' are ignored everywhere, e.g. `.DS_Store`):
- labelled (the main dataset, eval sets): `/path/SPLIT/CLASS/IMAGE`; each subfolder of `/path` is
  a split named after it (letters, digits, `_`; not `all`), each of its subfolders a class
  holding that class's images (nested folders inside a class folder belong to it). The classes
  are the train split's class folders, sorted (every split's, when there is no `train/`); a split
  with a class folder that `train/` lacks is refused, as the model would never learn that class.
- unlabelled (extra data, `labels=False`): every image under `/path`, in nested folders or not,
  as one split `train` without labels.

Every file must be a PNG or JPEG image that TensorFlow decodes, and all of a dataset's images
need the same channel count, grey (1) or RGB (3); the dataset's count is that of most of its
images. A file of another kind (a README, a truncated image) or with another channel count
(RGBA, grey + alpha: converting would re-encode the image and pick a background for the user)
is refused with one line naming it, rather than skipped silently, so that a dataset holds every
image the folder shows. The images are stored encoded as they are, `Image(shape=(None, None, C))`,
with their relative path as `file_name`.

Why prepare rather than read the files: `tfds.folder_dataset.ImageFolder` reads the folder
directly but refuses every split but a whole one (no `train[:10%]`, no `tfds.even_splits`), so it
cannot shard the data over processes. A prepared TFDS dataset keeps every guarantee of
`input_pipeline`: exact resume, `even_splits` shards, encoded images through cache and shuffle
(`SkipDecoding`), `info.splits[...]` of sub-splits. TFDS orders examples by a hash of their key
(the relative path), so any slice mixes the classes.

The prepared copy lives in `DATA_DIR/image_folder/<folder name>_<fingerprint>/1.0.0` (DATA_DIR:
`config.input.data_dir`, else TFDS's default), the fingerprint a hash of the layout and of each
file's relative path, size and modification time: a changed folder is prepared again (into a new
directory; delete old ones by hand), an unchanged one is only listed. Layout and images are
checked before anything is written. The processes of a host that start together lock the folder
itself (nothing is written for the lock): the first checks and prepares, the others then read.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
from typing import Iterator

import tensorflow as tf
import tensorflow_datasets as tfds

from big_distill import errors

PREFIX = 'imagefolder:'
NAME = 'image_folder'
VERSION = '1.0.0'
UNLABELLED_SPLIT = 'train'
_FORMAT = 1  # Part of the fingerprint: a new format prepares every folder again.
_MAGIC = (b'\x89PNG\r\n\x1a\n', b'\xff\xd8\xff')  # PNG, JPEG.
_CHANNEL_NAMES = {1: 'grey', 3: 'RGB'}


@dataclasses.dataclass(frozen=True)
class Folder:
  """A scanned image folder: per split, its images' relative paths and labels (-1: none)."""
  root: str
  labels: bool
  classes: tuple[str, ...]
  splits: dict[str, list[tuple[str, int]]]
  fingerprint: str

  @property
  def config_name(self) -> str:
    """`<folder name>_<fingerprint>`: the directory of the prepared copy."""
    slug = re.sub(r'[^a-z0-9]+', '_', os.path.basename(self.root).lower()).strip('_')
    return f'{slug[:40] or "images"}{"" if self.labels else "_unlabelled"}_{self.fingerprint}'


def is_folder(name: str) -> bool:
  return name.startswith(PREFIX)


def get_builder(name: str, data_dir: str | None, *, labels: bool) -> tfds.core.DatasetBuilder:
  """The prepared TFDS dataset of `imagefolder:/path`; checks and prepares it if the folder is new
  or changed (see the module docstring)."""
  folder = scan(name[len(PREFIX):], labels=labels)
  data_dir = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)
  path = prepared_path(folder, data_dir)
  with _folder_lock(folder.root):
    if not tf.io.gfile.exists(os.path.join(path, 'dataset_info.json')):
      _prepare(folder, check_images(folder), data_dir)
  return tfds.builder_from_directory(path)


def prepared_path(folder: Folder, data_dir: str) -> str:
  return os.path.join(data_dir, NAME, folder.config_name, VERSION)


def scan(path: str, *, labels: bool) -> Folder:
  """The folder's layout, checked (no image is opened); `labels`: split and class folders."""
  root = os.path.abspath(os.path.expanduser(path))
  if not path or not os.path.isdir(root):
    raise errors.BadInput(f'{PREFIX}{path}: no such folder.')
  if not labels:
    files = _files(root)
    if not files:
      raise errors.BadInput(f'{PREFIX}{root} holds no images.')
    return _folder(root, False, (), {UNLABELLED_SPLIT: [(f, -1) for f in files]})
  found = {}  # split -> class -> files.
  for split in _subfolders(root, '', 'split'):
    if not re.fullmatch(r'\w+', split) or split == 'all':
      raise errors.BadInput(f'{PREFIX}{root}: {split!r} cannot name a split; rename the folder '
                            "with letters, digits and '_' only (and not 'all').")
    found[split] = {c: _files(os.path.join(root, split, c))
                    for c in _subfolders(root, split, 'class')}
    if not any(found[split].values()):
      raise errors.BadInput(f'{PREFIX}{root}: the split folder {split}/ holds no images.')
  classes = tuple(found['train'] if 'train' in found else sorted(set().union(*found.values())))
  for split, by_class in found.items():
    unknown = sorted(set(by_class) - set(classes))
    if unknown:
      raise errors.BadInput(f'{PREFIX}{root}: {split}/{unknown[0]} is a class that train/ does '
                            f'not have; the classes are the folders of train/ '
                            f'({", ".join(classes)}).')
  label = {c: i for i, c in enumerate(classes)}
  return _folder(root, True, classes, {
      split: [(f'{split}/{c}/{f}', label[c]) for c, files in by_class.items() for f in files]
      for split, by_class in found.items()})


def _folder(root: str, labels: bool, classes: tuple[str, ...],
            splits: dict[str, list[tuple[str, int]]]) -> Folder:
  """A `Folder`, with the fingerprint of its layout and files (relative path, size, mtime)."""
  stats = []
  for files in splits.values():
    for f, _ in files:
      st = os.stat(os.path.join(root, f))
      stats.append((f, st.st_size, st.st_mtime_ns))
  key = json.dumps([_FORMAT, labels, classes, sorted(stats)])
  return Folder(root, labels, classes, splits, hashlib.sha256(key.encode()).hexdigest()[:16])


def _subfolders(root: str, rel: str, kind: str) -> list[str]:
  """The subfolders of `root/rel`, which must hold nothing else (hidden entries aside)."""
  path = os.path.join(root, rel)
  names = sorted(n for n in os.listdir(path) if not n.startswith('.'))
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
  """Every file under `path` (hidden ones and those in hidden folders left out), relative."""
  out = []
  for top, dirs, files in os.walk(path, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    rel = os.path.relpath(top, path)
    out += [f if rel == '.' else f'{rel}/{f}' for f in sorted(files) if not f.startswith('.')]
  return out


def check_images(folder: Folder) -> int:
  """Decodes every image (as the input pipeline will); returns their channel count or refuses
  the first file that is not a PNG or JPEG image, has other than 1 or 3 channels, or has a count
  other than most images'."""
  paths = [os.path.join(folder.root, f) for files in folder.splits.values() for f, _ in files]
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    found = list(pool.map(_channels, paths))
  for path, channels in zip(paths, found):
    if isinstance(channels, str):
      raise errors.BadInput(f'{path} is not a readable PNG or JPEG image ({channels}); remove it '
                            'from the folder (only hidden files are ignored).')
    if channels not in _CHANNEL_NAMES:
      raise errors.BadInput(f'{path} has {channels} channels; use grey (1) or RGB (3) images: '
                            'convert it, e.g. PIL.Image.open(f).convert("RGB").save(f).')
  counts = collections.Counter(found)
  channels = 3 if counts[3] >= counts[1] else 1
  for path, c in zip(paths, found):
    if c != channels:
      raise errors.BadInput(
          f'{path} is {_CHANNEL_NAMES[c]} but {counts[channels]} images of the dataset are '
          f'{_CHANNEL_NAMES[channels]}; all need the same channel count: convert it.')
  return channels


def _channels(path: str) -> int | str:
  """The channel count of the image file `path`, or why it cannot be read as an image."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    return e.strerror or type(e).__name__
  if not data.startswith(_MAGIC):
    return 'neither PNG nor JPEG data'
  try:
    return int(tf.io.decode_image(data, expand_animations=False).shape[-1])
  except tf.errors.OpError as e:
    return re.sub(r'\{\{.*?\}\}', '', e.message).split(' [Op:')[0].strip()


def _prepare(folder: Folder, channels: int, data_dir: str) -> None:
  """Writes the TFDS dataset of a checked folder into `data_dir` (see `prepared_path`)."""
  features = {'image': tfds.features.Image(shape=(None, None, channels)),
              'file_name': tfds.features.Text()}
  if folder.labels:
    features['label'] = tfds.features.ClassLabel(names=folder.classes)

  with tfds.core.registered.skip_registration():

    class ImageFolderDataset(tfds.core.GeneratorBasedBuilder):
      """The images of one folder."""
      name = NAME
      VERSION = tfds.core.Version(VERSION)
      BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=folder.config_name)]

      def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=f'The images of {PREFIX}{folder.root}.',
            features=tfds.features.FeaturesDict(features))

      def _split_generators(self, dl_manager):
        return {split: self._generate_examples(files) for split, files in folder.splits.items()}

      def _generate_examples(self, files):
        for f, label in files:
          example = {'image': os.path.join(folder.root, f), 'file_name': f}
          yield f, ({**example, 'label': label} if folder.labels else example)

  ImageFolderDataset(data_dir=data_dir, config=folder.config_name).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))


@contextlib.contextmanager
def _folder_lock(path: str) -> Iterator[None]:
  """Holds an exclusive lock on the folder `path` itself, which creates no file."""
  fd = os.open(path, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)  # Released when the descriptor is closed.
    yield
  finally:
    os.close(fd)
