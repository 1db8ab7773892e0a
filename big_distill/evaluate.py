r"""Measures a trained classifier on any split of any dataset, as a run's eval sees it.

  python -m big_distill.evaluate --workdir=RUN [--step=best|latest|N] [--split=test] [--teachers]
  python -m big_distill.evaluate --workdir=RUN --dataset=imagefolder:/data/holdout --split=test
  python -m big_distill.evaluate --weights=R50x1.npz --model=bit:depth=50,width=1 \
      --dataset=imagenet2012 --split=validation --resolution=224 --central_crop=0.875
  python -m big_distill.evaluate --exported=/tmp/student_savedmodel --dataset=fashion_mnist

The model comes from a run, a weights file or an export (`inference`); the dataset and split
default to the run's eval split. Prints a table and then one JSON line: accuracy, top-5 accuracy,
expected calibration error (15 equal-width confidence bins) and, with `--teachers` (the run's
own), the teachers' accuracy, top-1 agreement and KL(teacher || student) at temperature 1 (the
definitions of the run's own eval, `steps.eval_step`). `--predictions=FILE` also writes each
example's prediction as a JSON line.

A dataset must have the model's classes, by name. An image folder may hold some of them: its
class folders are matched to the model's classes by name (logged), and its images converted to
the model's channels (`folders`); for a model that names no classes (a weights file) class
folders named 0, 1, ... are matched by number, others taken in sorted order. Everything is
checked before a folder's prepared copy is written.
"""

import json

from absl import flags, logging
import numpy as np

from big_distill import cli, errors, inference, workdir as workdir_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  inference.define_flags()
  flags.DEFINE_string('dataset', None, 'TFDS name or imagefolder:/path (default: the run\'s).')
  flags.DEFINE_string('split', None, 'Split, TFDS syntax (default: the run\'s eval split, else '
                      'test).')
  flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: the run\'s).')
  flags.DEFINE_bool('teachers', False, 'Also evaluate the run\'s teachers and the student\'s '
                    'agreement with them.')
  flags.DEFINE_integer('batch_size', 256, 'Images per forward pass.')
  flags.DEFINE_bool('skip_bad_images', None, 'Image folders: leave out unreadable files and empty '
                    'class folders (logged) instead of refusing them (default: the run\'s '
                    'config.input.skip_bad_images, else False).')
  flags.DEFINE_string('predictions', None, 'Write per-example predictions (JSON lines: index, '
                      'label, prediction, probability) here.')


ECE_BINS = 15


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
  """Sum over equal-width confidence bins of |accuracy - mean confidence| x the bin's share."""
  confidence, correct = probs.max(-1), probs.argmax(-1) == labels
  which = np.minimum((confidence * bins).astype(int), bins - 1)
  return float(sum(abs(correct[which == b].mean() - confidence[which == b].mean()) *
                   np.mean(which == b) for b in range(bins) if np.any(which == b)))


def metrics(logits: np.ndarray, labels: np.ndarray,
            teacher_logp: np.ndarray | None = None) -> dict[str, float]:
  """The evaluation of per-example `logits` against `labels` (and the teachers')."""
  from big_distill import losses  # pylint: disable=g-import-not-at-top  # Loads JAX.
  probs = inference.softmax(logits)
  top5 = np.argsort(-logits, -1)[:, :min(5, logits.shape[-1])]
  out = {'examples': int(len(labels)),
         'accuracy': float(np.mean(logits.argmax(-1) == labels)),
         'top5_accuracy': float(np.mean(np.any(top5 == labels[:, None], -1))),
         'ece': expected_calibration_error(probs, labels)}
  if teacher_logp is not None:
    out.update(teacher_accuracy=float(np.mean(teacher_logp.argmax(-1) == labels)),
               agreement=float(np.mean(losses.agreement(teacher_logp, logits, 1))),
               kl=float(np.mean(losses.kl_divergence(teacher_logp, logits))))
  return out


def collect(classifier: inference.Classifier, builder, split: str, batch_size: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
  """(index, label, logits, teacher log-probabilities or None) of every example of `split`."""
  from big_distill.data import input_pipeline  # pylint: disable=g-import-not-at-top  # Loads TF.
  batches = input_pipeline.eval_batches(builder, split, batch_size=batch_size,
                                        resolution=classifier.resolution,
                                        central_crop=classifier.central_crop)
  parts = []
  for batch in batches.as_numpy_iterator():
    real = batch['mask'] == 1
    images = batch['image']
    part = [batch['index'][real], batch['label'][real], classifier.logits(images)[real]]
    if classifier.teacher_logits:
      part.append(classifier.teacher_logits(images)[real])
    parts.append(part)
  columns = [np.concatenate(c) for c in zip(*parts)]
  return (*columns[:3], columns[3] if len(columns) > 3 else None)


def _dataset(classifier: inference.Classifier) -> tuple[str, str, str | None]:
  run = classifier.config.input if classifier.config else None
  dataset = FLAGS.dataset or (run and run.dataset)
  if not dataset:
    raise errors.BadInput('--dataset is needed for a model that is not a run\'s.')
  split = FLAGS.split or (run.eval_split if run and dataset == run.dataset else 'test')
  return dataset, split, FLAGS.data_dir or (run and run.data_dir)


def _source(classifier: inference.Classifier, dataset: str, data_dir: str | None):
  """The dataset (a `sources.Source`) checked against the model (see the module docstring);
  nothing written."""
  from big_distill.data import folders, sources  # pylint: disable=g-import-not-at-top
  names = classifier.class_names
  named = names != tuple(str(i) for i in range(classifier.num_classes))
  if folders.is_folder(dataset):
    run = classifier.config.input if classifier.config else {}
    skip = FLAGS.skip_bad_images
    skip = run.get('skip_bad_images', False) if skip is None else skip
    own = folders.scan(dataset[len(folders.PREFIX):], labels=True, skip_bad=skip).classes
    by_name = named or set(own) <= set(names)
    source = sources.describe(dataset, data_dir, classes=names if by_name else None,
                              channels=classifier.channels, skip_bad=skip,
                              skip_option='--skip_bad_images')
    if not by_name:
      logging.warning('%s names no classes: the class folders of %s, sorted, are its classes '
                      '0, 1, ... (%s).', classifier.description, dataset,
                      folders.name_list(source.class_names))
  else:
    source = sources.describe(dataset, data_dir)
    if named and source.class_names != names:
      raise errors.BadInput(
          f'{dataset} has the classes {folders.name_list(source.class_names)}; '
          f'{classifier.description} has {folders.name_list(names)}: evaluate it on a dataset of '
          'its classes (an image folder may hold some of them).')
  for what, want, have in (('classes', classifier.num_classes, len(source.class_names)),
                           ('channels', classifier.channels, source.channels)):
    if want != have:
      raise errors.BadInput(f'{classifier.description} takes {want} {what}; {dataset} has '
                            f'{have}.')
  return source


def main(argv):
  del argv
  if FLAGS.batch_size < 1:
    raise errors.BadInput(f'--batch_size={FLAGS.batch_size}; use a positive integer.')
  if FLAGS.predictions:
    output = workdir_lib.path(FLAGS.predictions)
    if output.is_dir():
      raise errors.BadInput(f'--predictions={FLAGS.predictions} is a directory; name a file.')
    workdir_lib.check_writable(output.parent, '--predictions')
  classifier = inference.from_flags(teachers=FLAGS.teachers)
  dataset, split, data_dir = _dataset(classifier)
  source = _source(classifier, dataset, data_dir)
  source.num_examples(split)
  builder = source.prepare()
  index, labels, logits, teacher_logp = collect(classifier, builder, split, FLAGS.batch_size)
  result = {'model': classifier.description, 'dataset': dataset, 'split': split,
            **metrics(logits, labels, teacher_logp)}
  if FLAGS.predictions:
    probs = inference.softmax(logits)
    lines = [json.dumps({'index': int(i), 'label': int(l), 'prediction': int(p.argmax()),
                         'probability': float(p.max())})
             for i, l, p in zip(index, labels, probs)]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text('\n'.join(lines) + '\n')
  width = max(map(len, result))
  for key, value in result.items():
    shown = f'{value:.2%}' if key.endswith(('accuracy', 'agreement')) else (
        f'{value:.4f}' if isinstance(value, float) else value)
    print(f'{key:<{width}}  {shown}')
  print(json.dumps(result))


if __name__ == '__main__':
  define_flags()
  cli.run(main, announce=lambda: (
      f'big_distill.evaluate: loading the model of {inference.source()}.'))
