r"""Classifies image files with a trained classifier, preprocessed exactly as its eval does.

  python -m big_distill.predict --workdir=RUN photo.jpg more_photos/   [--top_k=5] [--json]
  python -m big_distill.predict --exported=/tmp/student.tflite photo.png

The model comes from a run (`--step=best|latest|N`), a weights file or an export (`inference`).
Arguments are image files (PNG, JPEG, BMP, GIF) or folders, searched recursively for those; each
image is decoded, resized and centre-cropped as the run's eval split is (`input_pipeline.eval_image`)
and classified. Prints a table of the top-k classes with their names and probabilities per file,
or with `--json` one JSON line per file. An image whose channel count is not the model's (e.g. a
colour photo for a greyscale model) or a file that is not a readable image is bad input.
"""

import json
import os

from absl import flags
import numpy as np
import tensorflow as tf

from big_distill import cli, errors, inference
from big_distill.data import input_pipeline

_TOP_K = flags.DEFINE_integer('top_k', 5, 'Classes shown per image.')
_JSON = flags.DEFINE_bool('json', False, 'One JSON line per image instead of a table.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Images per forward pass.')

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')


def image_files(paths: list[str]) -> list[str]:
  """The files named, and the image files under the folders named (sorted, recursive)."""
  if not paths:
    raise errors.BadInput('Name image files or folders after the flags, e.g. '
                          'python -m big_distill.predict --workdir=RUN photo.jpg.')
  files = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names
                     if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith('.'))
      if not found:
        raise errors.BadInput(f'{path} holds no image files ({", ".join(IMAGE_SUFFIXES)}).')
      files += found
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise errors.BadInput(f'{path} does not exist.')
  return files


def load_image(path: str, classifier: inference.Classifier) -> np.ndarray:
  """`path` decoded and preprocessed for `classifier`: float32 [R, R, C] in [-1, 1]."""
  try:
    image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
    raise errors.BadInput(f'{path} is not a readable image ({e.message.splitlines()[0]}).'
                          ) from None
  if image.shape[-1] != classifier.channels:
    raise errors.BadInput(f'{path} has {image.shape[-1]} channels; {classifier.description} '
                          f'takes {classifier.channels}-channel images.')
  return input_pipeline.eval_image(image, classifier.input).numpy()


def top_k(logits: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
  """Per row, the k most probable classes and their probabilities."""
  probs = inference.softmax(logits)
  order = np.argsort(-probs, -1, kind='stable')[:, :k]
  return [[(int(c), float(p[c])) for c in row] for row, p in zip(order, probs)]


def main(argv):
  if _TOP_K.value < 1 or _BATCH_SIZE.value < 1:
    raise errors.BadInput('--top_k and --batch_size must be positive.')
  files = image_files(argv[1:])
  classifier = inference.from_flags()
  images = [load_image(f, classifier) for f in files]  # All checked before any output.
  k = min(_TOP_K.value, classifier.num_classes)
  results = []
  for start in range(0, len(images), _BATCH_SIZE.value):
    results += top_k(classifier.logits(np.stack(images[start:start + _BATCH_SIZE.value])), k)
  names = classifier.class_names
  for path, top in zip(files, results):
    if _JSON.value:
      print(json.dumps({'file': path, 'top': [
          {'class': c, 'name': names[c], 'probability': p} for c, p in top]}))
    else:
      print(f'{path}: ' + ', '.join(f'{names[c]} {p:.1%}' for c, p in top))


if __name__ == '__main__':
  cli.run(main, positional=True)
