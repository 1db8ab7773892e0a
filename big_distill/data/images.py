"""Image files as the model sees them: one decoding for image folders (`folders`), `predict` and
`evaluate`, for every format PIL reads (JPEG, PNG of any mode and depth, GIF, BMP, WEBP, TIFF, ...).

What a file becomes (`decode_file`), in this order:
- its first frame (GIF, WEBP, APNG, multi-page TIFF), turned upright by its EXIF orientation (phone
  photos; torchvision's and Keras' loaders ignore the tag, so their photos can lie on their side);
- grey (1 channel) if PIL holds it as grey (L, bilevel, 16-bit grey, grey + alpha), else RGB
  (3: RGB, palette, CMYK, YCbCr, ...), with PIL's conversions;
- alpha composited on white (`BACKGROUND`), as a browser or a document shows a cut-out or a
  screenshot; dropping alpha instead would show the colour stored under transparent pixels,
  which is arbitrary (often black, or leftovers of an edit). Palette and single-colour
  transparency count as alpha;
- 16-bit grey scaled to 8 bits (v / 257, rounded): PIL's own conversion clips at 255, which turns
  most of a 16-bit image white. 16-bit colour PNGs: PIL keeps each value's high byte (within one
  level of scaling). Float images have no standard range and are refused.
A dataset has one channel count (`to_channels`): grey images in an RGB dataset are replicated
into RGB, RGB images in a grey one take PIL's luma (ITU-R 601-2, as `tf.image.rgb_to_grayscale`).
Colour profiles (ICC) are not applied, as by TF, PIL, torchvision and Keras.

The stored form (`stored`): a JPEG or PNG that is already upright, 8-bit grey or RGB, without
transparency, and that TF decodes to PIL's pixels (`decode`, within one level) is kept byte for
byte, so the training path reads it as before; anything else is re-encoded as a lossless PNG of
the pixels above (for a photo several times the size of its JPEG). `decode` is TF's decoding of
a stored image with JPEGs decoded by libjpeg's accurate integer IDCT, which equals PIL's pixels;
TF's default (the fast IDCT, what `tfds.features.Image` decodes with) is up to ~20 levels off at
quality 95.

Names that are no images of the user's are skipped when listing folders (`ignored`): hidden ones
(`.DS_Store`, `._photo.jpg`, `.ipynb_checkpoints/`), the thumbnail caches and settings Windows
and macOS write into folders (`Thumbs.db`, `desktop.ini`, `Icon\\r`) and macOS's zip leftovers
(`__MACOSX/`). Every other file must be an image; an unreadable one is reported (`report_bad`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import tempfile
from typing import Callable, TypeVar

from absl import logging
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from etils import epy
with epy.lazy_imports():  # TensorFlow loads where data is read, not with the module.
  import tensorflow as tf

from big_distill import errors

T = TypeVar('T')

BACKGROUND = (255, 255, 255, 255)  # Opaque white, under every transparent pixel.
IGNORED = frozenset({'thumbs.db', 'ehthumbs.db', 'desktop.ini', 'icon\r', '__macosx'})
SHOWN = 3  # Bad files named in a message; the rest are listed in a file.
_GREY = frozenset({'1', 'L', 'LA', 'La'})  # 16-bit grey ('I;16', 'I') is scaled first.
_KEPT = ('JPEG', 'MPO', 'PNG')  # Formats stored as they are (MPO: a camera's JPEG + previews).


class Unreadable(Exception):
  """A file that is not an image PIL reads, or a damaged one; the message says why."""


@dataclasses.dataclass(frozen=True)
class Decoded:
  """A file's pixels, uint8 [H, W, 1 or 3] (see the module docstring), and whether its bytes are
  stored as they are (`stored`); then `pixels` are TF's decoding of them (`decode`)."""
  pixels: np.ndarray
  as_is: bool

  @property
  def channels(self) -> int:
    return self.pixels.shape[-1]


def ignored(name: str) -> bool:
  """Whether a file or folder name is left out of listings (see the module docstring)."""
  return name.startswith('.') or name.lower() in IGNORED


def decode_file(path: str) -> Decoded:
  """The file's pixels as the model sees them, at the file's own channel count; raises
  `Unreadable`."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise Unreadable(e.strerror or type(e).__name__) from None
  if not data:
    raise Unreadable('empty file')
  try:
    with Image.open(io.BytesIO(data)) as image:
      fmt, mode = image.format, image.mode
      transparent = image.has_transparency_data
      upright = image.getexif().get(0x0112, 1) in (0, 1)  # 0x0112: EXIF Orientation.
      pixels = _pixels(ImageOps.exif_transpose(image))  # Loads: a damaged file fails here.
  except UnidentifiedImageError:
    raise Unreadable('not an image file that PIL reads') from None
  except Unreadable:
    raise
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types on bad data.
    raise Unreadable(' '.join(str(e).split()) or type(e).__name__) from None
  if fmt in _KEPT and mode in ('L', 'RGB') and not transparent and upright:
    try:
      kept = decode(tf.constant(data), 0).numpy()
    except tf.errors.OpError:  # E.g. a PNG without its end chunk: PIL reads it, TF does not.
      kept = None
    if kept is not None and kept.shape == pixels.shape and np.abs(
        kept.astype(np.int16) - pixels).max(initial=0) <= 1:
      return Decoded(kept, True)
  return Decoded(pixels, False)


def _pixels(image: Image.Image) -> np.ndarray:
  """A loaded PIL image -> uint8 [H, W, 1 or 3] (see the module docstring)."""
  if image.mode == 'F':
    raise Unreadable('32-bit float pixels, which have no standard range to map to 8 bits')
  if image.mode == 'I' or image.mode.startswith('I;16'):  # 16-bit grey (PIL's 'I': 16-bit PNG).
    values = np.clip(np.asarray(image, np.float64), 0, 65535)
    return np.round(values / 257).astype(np.uint8)[..., None]
  grey = image.mode in _GREY
  if image.has_transparency_data:
    image = Image.alpha_composite(Image.new('RGBA', image.size, BACKGROUND),
                                  image.convert('RGBA'))
  image = image.convert('L' if grey else 'RGB')  # Grey from RGBA(grey) is exact: R = G = B.
  return np.asarray(image).reshape(image.height, image.width, 1 if grey else 3)


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
  """uint8 [H, W, 1 or 3] pixels at `channels`: grey replicated into RGB, RGB to PIL's luma."""
  if pixels.shape[-1] == channels:
    return pixels
  if channels == 3:
    return np.repeat(pixels, 3, axis=-1)
  return np.asarray(Image.fromarray(pixels).convert('L'))[..., None]


def load(path: str, channels: int) -> np.ndarray:
  """What the model sees of the file in a dataset of `channels`: uint8 [H, W, channels], equal
  to `decode(stored(path, channels), channels)`; raises `Unreadable`."""
  return to_channels(decode_file(path).pixels, channels)


def stored(path: str, channels: int, decoded: Decoded | None = None) -> bytes:
  """The encoded image a dataset of `channels` stores for the file: its own bytes where they
  decode to its pixels (grey ones too: TF's decoding replicates grey into RGB as `to_channels`
  does), else a PNG of them. `decoded`: `decode_file(path)`, if at hand."""
  decoded = decoded or decode_file(path)
  if decoded.as_is and decoded.channels in (1, channels):
    with open(path, 'rb') as f:
      return f.read()
  pixels = to_channels(decoded.pixels, channels)
  out = io.BytesIO()
  Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(out, 'PNG')
  return out.getvalue()


def decode(data: tf.Tensor, channels: int) -> tf.Tensor:
  """A stored image's bytes -> uint8 [H, W, channels] (0: the image's own), as PIL decodes them:
  JPEGs with the accurate IDCT (see the module docstring), others with `tf.io.decode_image`."""
  return tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=channels, dct_method='INTEGER_ACCURATE'),
      lambda: tf.io.decode_image(data, channels=channels, expand_animations=False))


def read_all(paths: list[str], read: Callable[[str], T]
             ) -> tuple[dict[str, T], list[tuple[str, str]]]:
  """`read(path)` of every path on all cores: the results by path, and every (path, why) that
  `read` refused with `Unreadable`, in the order of `paths`."""

  def attempt(path: str) -> T | Unreadable:
    try:
      return read(path)
    except Unreadable as e:
      return e

  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    results = list(pool.map(attempt, paths))
  good = {p: r for p, r in zip(paths, results) if not isinstance(r, Unreadable)}
  return good, [(p, str(r)) for p, r in zip(paths, results) if isinstance(r, Unreadable)]


def report_bad(bad: list[tuple[str, str]], where: str, *, skip: bool, skip_option: str) -> None:
  """Refuses the unreadable files `bad` ((path, why), all of them) in one message ('N files
  `where` are not readable images', e.g. where='of imagefolder:/data'), or with `skip` logs that
  they are left out. Either names the first `SHOWN` and, if there are more,
  writes the full list to a new file in the system's temporary directory (neither the user's
  folder nor a data dir or workdir, so a refused run leaves nothing there) and names it."""
  if not bad:
    return
  shown = '; '.join(f'{path} ({why})' for path, why in bad[:SHOWN])
  if len(bad) > SHOWN:
    fd, listing = tempfile.mkstemp(prefix='big_distill_bad_images_', suffix='.txt')
    with os.fdopen(fd, 'w') as f:
      f.writelines(f'{path}\t{why}\n' for path, why in bad)
    shown += f'; and {len(bad) - SHOWN} more, all listed in {listing}'
  many = len(bad) > 1
  files = f'{len(bad)} file{"s" if many else ""} {where}'
  images = 'readable images' if many else 'a readable image'
  if skip:
    logging.warning('Left out %s, not %s: %s.', files, images, shown)
    return
  raise errors.BadInput(f'{files} {"are" if many else "is"} not {images}: {shown}. Remove or '
                        f'replace {"them" if many else "it"}, or set {skip_option} to leave '
                        'such files out.')
