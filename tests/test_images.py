"""Image decoding (`images`): every format users' folders hold, against PIL's own conversion of
each file and, where PIL's is not the answer, an independent NumPy computation."""

import logging
import os
import tempfile

import matplotlib
import numpy as np
from PIL import Image, ImageOps
import pytest
import tensorflow as tf

from big_distill import errors
from big_distill.data import images

SAMPLES = os.path.join(matplotlib.get_data_path(), 'sample_data')
PHOTO = os.path.join(SAMPLES, 'grace_hopper.jpg')  # A real photograph, RGB JPEG, 512 x 600.
CUTOUT = os.path.join(SAMPLES, 'Minduka_Present_Blue_Pack.png')  # A real RGBA cut-out, 128 px.
WHITE = 255.0


def photo(side: int = 96) -> Image.Image:
  """A crop of the photograph: a face, so that colour, edges and flat areas are all in it."""
  return Image.open(PHOTO).convert('RGB').crop((200, 80, 200 + side, 80 + side + 16))


def on_white(rgba: np.ndarray) -> np.ndarray:
  """NumPy: colour x alpha + white x (1 - alpha), per channel."""
  colour, alpha = rgba[..., :-1].astype(float), rgba[..., -1:].astype(float) / 255
  return colour * alpha + WHITE * (1 - alpha)


def _exif(orientation: int) -> Image.Exif:
  exif = Image.Exif()
  exif[0x0112] = orientation
  return exif


# NumPy's reading of each EXIF orientation (the tag's definition), for an [H, W, C] array.
ORIENTATIONS = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


def _cases(d) -> dict[str, tuple[str, np.ndarray, bool]]:
  """name -> (file, the pixels expected at the file's own channel count, whether it is stored as
  it is). Expected pixels: PIL's conversion of the file, or NumPy where PIL's is not the answer."""
  rgb = photo()
  a = np.asarray(rgb)
  grey = rgb.convert('L')
  g = np.asarray(grey)[..., None]
  cutout = np.asarray(Image.open(CUTOUT).convert('RGBA'))
  out = {}

  def save(name, image, ext, expected, as_is=False, **kwargs):
    path = str(d / f'{name}.{ext}')
    image.save(path, **kwargs)
    out[name] = (path, expected, as_is)

  out['jpeg photo'] = (PHOTO, np.asarray(Image.open(PHOTO).convert('RGB')), True)
  save('jpeg q95', rgb, 'jpg', None, True, quality=95)
  save('jpeg progressive', rgb, 'jpg', None, True, progressive=True)
  save('jpeg grey', grey, 'jpg', None, True)
  save('jpeg cmyk', rgb.convert('CMYK'), 'jpg', None)  # PIL's CMYK -> RGB below.
  save('png rgb', rgb, 'png', a, True)
  save('png grey', grey, 'png', g, True)
  save('png rgba cut-out', Image.fromarray(cutout), 'png', on_white(cutout))
  la = np.stack([g[..., 0], np.asarray(rgb)[..., 0]], -1)  # Grey, alpha from the red channel.
  save('png grey+alpha', Image.fromarray(la, 'LA'), 'png', on_white(la))
  palette = rgb.quantize(64)
  save('png palette', palette, 'png', np.asarray(palette.convert('RGB')))
  colours = np.asarray(palette.convert('RGB')).astype(float)
  save('png palette+transparency', palette, 'png',  # Palette entry 0 is transparent.
       np.where(np.asarray(palette)[..., None] == 0, WHITE, colours), transparency=0)
  wide = np.clip(np.asarray(grey, np.int64) * 257 + np.arange(g.shape[1]) % 257 - 128, 0, 65535
                 ).astype(np.uint16)  # All 16 bits used: PIL's own conversion would clip.
  save('png 16-bit grey', Image.fromarray(wide), 'png', np.round(wide / 257)[..., None])
  wide_rgb = np.clip(a.astype(np.int64) * 257 + np.arange(a.shape[1])[:, None] % 257 - 128, 0,
                     65535).astype(np.uint16)
  path = str(d / 'png 16-bit rgb.png')  # PIL writes no 16-bit colour; TF does.
  tf.io.write_file(path, tf.io.encode_png(wide_rgb))
  out['png 16-bit rgb'] = (path, np.round(wide_rgb / 257), True)
  bilevel = grey.convert('1')
  save('png bilevel', bilevel, 'png', np.asarray(bilevel.convert('L'))[..., None])
  save('gif first frame', rgb, 'gif', None, save_all=True,
       append_images=[rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
  save('bmp', rgb, 'bmp', a)
  save('webp lossless', rgb, 'webp', a, lossless=True)
  save('webp rgba', Image.fromarray(cutout), 'webp', on_white(cutout), lossless=True)
  save('tiff', rgb, 'tif', a)
  save('tiff 16-bit grey', Image.fromarray(wide), 'tif', np.round(wide / 257)[..., None])
  for o, turn in ORIENTATIONS.items():
    save(f'png exif {o}', rgb, 'png', turn(a), exif=_exif(o))
  save('jpeg exif 6', rgb, 'jpg', None, exif=_exif(6), quality=95)
  save('webp exif 8', rgb, 'webp', ORIENTATIONS[8](a), exif=_exif(8), lossless=True)
  with open(d / 'png without end.png', 'wb') as f:  # PIL reads it; TF does not: converted.
    f.write(open(d / 'png rgb.png', 'rb').read()[:-4])
  out['png without end'] = (str(d / 'png without end.png'), a, False)
  return out


def _pil_reference(path: str) -> np.ndarray:
  """PIL's own conversion of a file without alpha: first frame, upright, RGB or grey."""
  image = ImageOps.exif_transpose(Image.open(path))
  image = image.convert('L' if image.mode == 'L' else 'RGB')
  return np.asarray(image).reshape(image.height, image.width, -1)


@pytest.fixture(scope='module')
def cases(tmp_path_factory):
  return _cases(tmp_path_factory.mktemp('formats'))


def test_every_format_decodes_to_what_pil_shows(cases):
  """Within one level of PIL's conversion (or NumPy's), at the file's own channel count; stored
  byte for byte only where TF decodes those bytes to the same pixels."""
  assert len(cases) == 30 and Image.open(cases['gif first frame'][0]).n_frames == 2
  failures = []
  for name, (path, expected, as_is) in cases.items():
    if expected is None:
      expected = _pil_reference(path)
    decoded = images.decode_file(path)
    got = decoded.pixels
    if (got.dtype != np.uint8 or got.shape != expected.shape or
        np.abs(got.astype(float) - expected).max() > 1 or decoded.as_is != as_is):
      failures.append(f'{name}: {got.shape} {expected.shape} as_is={decoded.as_is}')
  assert not failures, failures


def test_each_channel_count_and_its_stored_form(cases):
  """Grey replicated into RGB, RGB to PIL's luma; the stored bytes decode (as the training
  pipeline will, `images.decode`) to exactly what `load` gives, and are the file itself where it
  needs no conversion."""
  for name, (path, _, as_is) in cases.items():
    own = images.decode_file(path).pixels
    for channels in (1, 3):
      got = images.load(path, channels)
      if own.shape[-1] == channels:
        np.testing.assert_array_equal(got, own, err_msg=name)
      elif channels == 3:
        np.testing.assert_array_equal(got, np.repeat(own, 3, -1), err_msg=name)
      else:
        luma = own.astype(float) @ [0.299, 0.587, 0.114]  # ITU-R 601-2, as PIL's 'L'.
        assert np.abs(got[..., 0] - luma).max() <= 1, name
      data = images.stored(path, channels)
      np.testing.assert_array_equal(images.decode(tf.constant(data), channels).numpy(), got,
                                    err_msg=name)
      with open(path, 'rb') as f:
        kept = data == f.read()
      assert kept == (as_is and own.shape[-1] in (1, channels)), (name, channels)


def test_accurate_jpeg_decoding_is_pils_and_tfs_default_is_not(cases):
  path = cases['jpeg q95'][0]
  data = tf.io.read_file(path)
  reference = np.asarray(Image.open(path)).astype(int)
  assert np.array_equal(images.decode(data, 3).numpy(), reference)
  assert np.abs(tf.io.decode_image(data).numpy() - reference).max() > 1


def _bad_files(d) -> dict[str, tuple[str, str]]:
  """name -> (file, what the reason says)."""
  photo().save(d / 'whole.jpg')
  photo().save(d / 'whole.png')
  data = {'empty.jpg': b'', 'notes.txt': b'not an image',
          'cut.jpg': open(d / 'whole.jpg', 'rb').read()[:2000],
          'cut.png': open(d / 'whole.png', 'rb').read()[:3000]}
  for name, content in data.items():
    (d / name).write_bytes(content)
  Image.fromarray(np.zeros((4, 4), np.float32)).save(d / 'float.tif')
  return {'empty': (str(d / 'empty.jpg'), 'empty file'),
          'text': (str(d / 'notes.txt'), 'not an image file that PIL reads'),
          'truncated jpeg': (str(d / 'cut.jpg'), 'image file is truncated'),
          'truncated png': (str(d / 'cut.png'), 'truncated'),
          'float': (str(d / 'float.tif'), '32-bit float pixels'),
          'missing': (str(d / 'gone.png'), 'No such file')}


def test_unreadable_files_say_why(tmp_path):
  for name, (path, why) in _bad_files(tmp_path).items():
    with pytest.raises(images.Unreadable) as e:
      images.load(path, 3)
    assert why in str(e.value), name


def test_bad_files_are_reported_all_at_once(tmp_path, caplog):
  bad = [(path, why) for path, why in _bad_files(tmp_path).values()]
  paths = [p for p, _ in bad]
  found, refused = images.read_all(paths + [str(tmp_path / 'whole.png')],
                                   lambda p: images.load(p, 3))
  assert list(found) == [str(tmp_path / 'whole.png')] and [p for p, _ in refused] == paths
  with pytest.raises(errors.BadInput) as e:
    images.report_bad(refused, 'of the test', skip=False, skip_option='--skip')
  message = str(e.value)
  assert message.startswith('6 files of the test are not readable images: ')
  assert all(p in message for p in paths[:images.SHOWN])
  assert not any(p in message for p in paths[images.SHOWN:])
  assert message.endswith('Remove or replace them, or set --skip to leave such files out.')
  listing = message.split('all listed in ')[1].split('.')[0] + '.txt'
  try:
    with open(listing) as f:
      assert [line.split('\t')[0] for line in f.read().splitlines()] == paths
    assert os.path.dirname(listing) == tempfile.gettempdir()
  finally:
    os.remove(listing)

  with pytest.raises(errors.BadInput) as e:  # Few enough to name: no list file.
    images.report_bad(refused[:1], 'of the test', skip=False, skip_option='--skip')
  assert str(e.value).startswith(f'1 file of the test is not a readable image: {paths[0]} (')
  assert 'listed' not in str(e.value)
  with caplog.at_level(logging.WARNING):
    images.report_bad(refused[:2], 'of the test', skip=True, skip_option='--skip')
  assert f'Left out 2 files of the test, not readable images: {paths[0]}' in caplog.text


def test_ignored_names():
  for name in ('.DS_Store', '._photo.jpg', 'Thumbs.db', 'desktop.ini', 'Icon\r', '__MACOSX'):
    assert images.ignored(name), name
  for name in ('photo.jpg', 'thumbs.png', 'desktop.ini.jpg', 'README'):
    assert not images.ignored(name), name
