r"""Classifies image files with a trained classifier, preprocessed exactly as its eval does.

  python -m big_distill.predict --workdir=RUN photo.jpg more_photos/   [--top_k=5] [--json]
  python -m big_distill.predict --exported=/tmp/student.tflite photo.png

The model comes from a run (`--step=best|latest|N`), a weights file or an export (`inference`);
the command says which on stderr. Arguments are image files or folders, searched recursively;
every file found must be an image (any format PIL reads), as in an image folder dataset, except
hidden files and those operating systems leave in folders (`images.ignored`). Each image is
decoded as an image folder's copy stores it (`images.load`: upright, alpha on white, converted to
the model's grey or RGB), then resized and centre-cropped as the run's eval split is
(`input_pipeline.eval_image`), and classified. Prints a table of the top-k classes with their
names and probabilities per file, or with `--json` one JSON line per file on stdout. Every file
that is not a readable image is named in one error (bad input), or left out with
`--skip_bad_images`; all are checked before anything is printed.
"""

import json
import os
import sys

from absl import flags
import numpy as np

from big_distill import cli, errors, inference

FLAGS = flags.FLAGS


def define_flags() -> None:
  inference.define_flags()
  flags.DEFINE_integer('top_k', 5, 'Classes shown per image.')
  flags.DEFINE_bool('json', False, 'One JSON line per image instead of a table.')
  flags.DEFINE_integer('batch_size', 64, 'Images per forward pass.')
  flags.DEFINE_bool('skip_bad_images', False, 'Leave out files that are not readable images '
                    '(counted on stderr) instead of refusing them.')


def image_files(paths: list[str]) -> list[str]:
  """The files named, and every file under the folders named (sorted, recursive), but those
  `images.ignored` leaves out."""
  from big_distill.data import images  # pylint: disable=g-import-not-at-top  # Loads TensorFlow.
  if not paths:
    raise errors.BadInput('Name image files or folders after the flags, e.g. '
                          'python -m big_distill.predict --workdir=RUN photo.jpg.')
  files = []
  for path in paths:
    if os.path.isdir(path):
      found = []
      for top, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not images.ignored(d))
        found += [os.path.join(top, f) for f in sorted(names) if not images.ignored(f)]
      if not found:
        raise errors.BadInput(f'{path} holds no files to classify.')
      files += found
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise errors.BadInput(f'{path} does not exist.')
  return files


def load_image(path: str, classifier: inference.Classifier) -> np.ndarray:
  """`path` decoded and preprocessed for `classifier`: float32 [R, R, C] in [-1, 1]; raises
  `images.Unreadable`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from big_distill.data import images, input_pipeline  # pylint: disable=g-import-not-at-top
  pixels = images.load(path, classifier.channels)
  return input_pipeline.eval_image(tf.constant(pixels), classifier.resolution,
                                   classifier.central_crop).numpy()


def top_k(logits: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
  """Per row, the k most probable classes and their probabilities."""
  probs = inference.softmax(logits)
  order = np.argsort(-probs, -1, kind='stable')[:, :k]
  return [[(int(c), float(p[c])) for c in row] for row, p in zip(order, probs)]


def main(argv):
  from big_distill.data import images  # pylint: disable=g-import-not-at-top
  if FLAGS.top_k < 1 or FLAGS.batch_size < 1:
    raise errors.BadInput('--top_k and --batch_size must be positive.')
  files = image_files(argv[1:])
  classifier = inference.from_flags()
  if classifier.channels not in (1, 3):
    raise errors.BadInput(f'{classifier.description} takes {classifier.channels}-channel images; '
                          'image files are grey (1 channel) or RGB (3).')
  loaded, bad = images.read_all(files, lambda f: load_image(f, classifier))
  images.report_bad(bad, 'to classify', skip=FLAGS.skip_bad_images,
                    skip_option='--skip_bad_images')
  files = [f for f in files if f in loaded]
  if not files:
    raise errors.BadInput('None of the files named is a readable image.')
  run = f', in {FLAGS.workdir}' if FLAGS.workdir else ''  # Files name themselves.
  print(f'Classifying {len(files)} image{"s" if len(files) > 1 else ""} with '
        f'{classifier.description}{run}.', file=sys.stderr, flush=True)
  k = min(FLAGS.top_k, classifier.num_classes)
  results = []
  for start in range(0, len(files), FLAGS.batch_size):
    batch = [loaded[f] for f in files[start:start + FLAGS.batch_size]]
    results += top_k(classifier.logits(np.stack(batch)), k)
  names = classifier.class_names
  for path, top in zip(files, results):
    if FLAGS.json:
      print(json.dumps({'file': path, 'top': [
          {'class': c, 'name': names[c], 'probability': p} for c, p in top]}))
    else:
      print(f'{path}: ' + ', '.join(f'{names[c]} {p:.1%}' for c, p in top))


if __name__ == '__main__':
  define_flags()
  cli.run(main, positional=True, announce=lambda: (
      f'big_distill.predict: loading the model of {inference.source()}.'))
