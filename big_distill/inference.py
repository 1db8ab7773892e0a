"""A trained classifier from any source, as one function of eval-preprocessed images.

Sources (exactly one, from the command-line flags below, shared by `evaluate` and `predict`):
a run's workdir (its student at `--step`; its teachers too where asked), a weights file
(BiT/big_vision `.npz`, timm `.safetensors`/`.pth`, the architecture its own unless `--model` names
one), or a model written by `export` (a SavedModel directory or a `.tflite` file, with its
metadata). Every
source sees images as the run's eval does (`input_pipeline.eval_image` at its resolution and
central crop); an exported model gets them as the uint8 pixels a deployed app would pass.
"""

import dataclasses
from typing import Any, Callable

from absl import flags
import numpy as np
import scipy.special

from big_distill import errors

Logits = Callable[[np.ndarray], np.ndarray]
FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags that name a model, for `evaluate` and `predict` (`from_flags`)."""
  flags.DEFINE_string('workdir', None, 'A run: its student (and teachers, --teachers).')
  flags.DEFINE_string('step', 'best', 'The run\'s checkpoint: best, latest, or a step.')
  flags.DEFINE_string('weights', None, 'A weights file (.npz, .safetensors, .pth).')
  flags.DEFINE_string('model', None, 'Architecture of --weights: family[:k=v,...] or '
                      'timm:<timm name> (default: what the file says).')
  flags.DEFINE_string('exported', None, 'A SavedModel directory or .tflite file written by '
                      'big_distill.export.')
  flags.DEFINE_integer('channels', 3, '--weights: image channels of the model.', lower_bound=1)
  flags.DEFINE_integer('resolution', None, '--weights: input side (default: a ViT file\'s own '
                       'grid, else 224).', lower_bound=1)
  flags.DEFINE_float('central_crop', 1.0, '--weights: eval crop fraction, in (0, 1].')
  flags.register_validator('central_crop', lambda v: 0 < v <= 1,
                           'use a fraction of the short side in (0, 1]')


def source() -> str:
  """The model the flags name, in words, before it is loaded (for `cli.run`'s `announce`)."""
  return next((f'--{name}={FLAGS[name].value}' for name in ('workdir', 'weights', 'exported')
               if FLAGS[name].value), 'no model')


@dataclasses.dataclass(frozen=True)
class Classifier:
  """`logits(images)`: float32 [batch, R, R, channels] in [-1, 1] (`input_pipeline.eval_image`
  at `resolution` and `central_crop`) -> [batch, classes]. `teacher_logits`, where asked for and
  the run has teachers: the same for the teachers' combined prediction (log-probabilities at
  temperature 1)."""
  description: str
  logits: Logits
  class_names: tuple[str, ...]
  resolution: int
  central_crop: float
  channels: int
  config: Any = None  # A run's config (a ConfigDict).
  teacher_logits: Logits | None = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def softmax(logits: np.ndarray) -> np.ndarray:
  """Probabilities of per-row `logits` (SciPy's softmax)."""
  return scipy.special.softmax(logits, axis=-1)


def from_flags(*, teachers: bool = False) -> Classifier:
  """The classifier the flags name (exactly one source); `teachers` loads a run's teachers."""
  given = [name for name in ('workdir', 'weights', 'exported') if FLAGS[name].value]
  if len(given) != 1:
    raise errors.BadInput('Name one model: --workdir=RUN, --weights=FILE --model=ARCH, or '
                          f'--exported=PATH (given: {", ".join(given) or "none"}).')
  if teachers and not FLAGS.workdir:
    raise errors.BadInput('--teachers needs --workdir (a run names its teachers).')
  if FLAGS.workdir:
    return from_workdir(FLAGS.workdir, FLAGS.step, teachers=teachers)
  if FLAGS.weights:
    return from_weights(FLAGS.weights, FLAGS.model, channels=FLAGS.channels,
                        resolution=FLAGS.resolution, central_crop=FLAGS.central_crop)
  return from_export(FLAGS.exported)


def _names(names: tuple[str, ...] | list[str], count: int) -> tuple[str, ...]:
  return tuple(names) if len(names) == count else tuple(str(i) for i in range(count))


def from_workdir(workdir: str, step: str = 'best', *, teachers: bool = False) -> Classifier:
  """A run's student at `step` (best, latest or a number), and its teachers if asked for."""
  import jax  # pylint: disable=g-import-not-at-top  # The heavy modules, when a model loads.
  from big_distill import build, checkpoint  # pylint: disable=g-import-not-at-top
  from big_distill import teachers as teachers_lib  # pylint: disable=g-import-not-at-top
  from big_distill.models import loading  # pylint: disable=g-import-not-at-top
  run = build.create_run_from_workdir(workdir, teacher_params='load' if teachers else 'abstract')
  if teachers and not run.distill:
    raise errors.BadInput(f'--teachers: {workdir} is a supervised run, without teachers.')
  if teachers and not run.teachers:
    raise errors.BadInput(f'--teachers: {workdir} replayed a reinforcement made by a '
                          '--teacher_fn, not by teachers big_distill can load.')
  variables, _, note = checkpoint.read_variables(workdir, step)
  loading.check_fits(variables, run.abstract_state.variables, f'{workdir} ({note})')
  student = jax.jit(lambda x: run.student.apply(variables, x))
  teacher_logits = None
  if teachers:
    params = run.teacher_params
    teacher_logits = jax.jit(lambda x: teachers_lib.combine(run.teachers.logits(params, x), 1.0))
  cfg = run.config.input
  return Classifier(
      f'the student of {note}', lambda x: np.asarray(student(x)),
      _names(run.data.class_names, run.data.num_classes),
      cfg.resolution, cfg.central_crop, run.data.channels, run.config,
      teacher_logits and (lambda x: np.asarray(teacher_logits(x))))


def from_weights(path: str, model: str | None, *, channels: int = 3,
                 resolution: int | None = None, central_crop: float = 1.0) -> Classifier:
  """A weights file and its architecture (`models.resolve`; None: what the file says), at
  `resolution` (None: the file's own, else 224)."""
  import jax  # pylint: disable=g-import-not-at-top
  from big_distill import models  # pylint: disable=g-import-not-at-top
  from big_distill.models import loading  # pylint: disable=g-import-not-at-top
  spec, net, variables, side = loading.model_from_file(
      path, models.resolve(model, '--model') if model else None, channels=channels,
      resolution=resolution)
  apply = jax.jit(lambda x: net.apply(variables, x))
  return Classifier(f'the {spec} model of {path}', lambda x: np.asarray(apply(x)),
                    _names((), net.num_classes), side, central_crop, channels)


def from_export(path: str) -> Classifier:
  """A model written by `big_distill.export --format=savedmodel|tflite`."""
  from big_distill import serving  # pylint: disable=g-import-not-at-top  # TF's converter stack.
  exported = serving.load(path)
  meta = exported.metadata

  return Classifier(f'the exported model {path}',
                    lambda images: exported.logits_from_pixels(serving.to_pixels(images)),
                    _names(meta['class_names'], len(meta['class_names'])),
                    meta['resolution'], meta['central_crop'], meta['channels'])
