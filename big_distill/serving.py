r"""A run's student for deployment: TF SavedModel and TFLite files, their metadata, and loading
them back for inference.

  module = serving.StudentModule(run, variables)   # the tf.Module of the student's forward pass
  serving.save(run, variables, 'student_savedmodel', 'savedmodel', checkpoint=...)
  serving.save(run, variables, 'student.tflite', 'tflite', int8=True, checkpoint=...)
  exported = serving.load('student.tflite')        # either format
  logits = exported.logits_from_pixels(images)     # uint8 [n, R, R, C] -> float32 [n, classes]

Why jax2tf: it serialises the student's own JAX computation (StableHLO inside TF's
`XlaCallModule`), so the exported model computes what the run evaluated, with no second
implementation of the architecture to keep in step; TF Serving, TF's C API and the TFLite
converter all read the result. A SavedModel's batch dimension is symbolic (`polymorphic_shapes`):
one model for every batch size. Its forward pass is `jax.vmap`ped over single images, so that
the shapes inside the model are static: with a symbolic batch, jnp's strided slices (BiT's
strided 1x1 convolutions) lower to dynamic gathers. A TFLite model has a fixed batch size
instead (1 by default, as on a phone): the converter turns a symbolic batch into shape
arithmetic around every layer, which TFLite runs far slower than the same model at a fixed
batch, where convolutions stay the runtime's own optimised kernels (`Exported` feeds it larger
inputs in chunks of that size).

A SavedModel has three signatures, each with outputs `logits` and `probabilities` (float32
[batch, classes]), all computing exactly what the run's eval computes:

- `serving_default(images)`: encoded images (tf.string [batch], PNG or JPEG), decoded to the run's
  channels and preprocessed per image by `input_pipeline.eval_image`, the eval pipeline's own TF
  code (short side resized to resolution / central_crop, centre crop, scaled to [-1, 1]).
- `pixels(images)`: uint8 [batch, height, width, channels] of any size, the same preprocessing.
- `pixels_at_resolution(images)`: uint8 [batch, R, R, channels] already at the run's resolution;
  only scaled to [-1, 1].

A TFLite file is the `pixels_at_resolution` signature at a fixed batch size, converted with
TFLite's builtin ops, in float32, or with `int8=True` with dynamic-range quantisation (int8
weights, float activations).
Metadata (`METADATA` inside a SavedModel directory, `<file>.json` beside a TFLite file) names the
classes, the input, the preprocessing, the signatures and the checkpoint exported.
"""

import dataclasses
import json
import os
import tempfile
from typing import Any, Callable

from ai_edge_litert import interpreter as litert
from etils import epath
from google.protobuf import message
import jax
from jax.experimental import jax2tf
import ml_collections
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from big_distill import build, errors, workdir as workdir_lib
from big_distill.data import images, input_pipeline

METADATA = 'big_distill.json'  # Inside a SavedModel directory.
FORMATS = ('savedmodel', 'tflite')
OUTPUTS = {'logits': 'float32 [batch, classes]: the student\'s logits',
           'probabilities': 'float32 [batch, classes]: their softmax'}
# The platforms a SavedModel runs on; a TFLite file is converted from a CPU lowering.
SAVEDMODEL_PLATFORMS = ('cpu', 'cuda', 'tpu')


def metadata_path(path: str | os.PathLike, fmt: str) -> epath.Path:
  """Where the metadata of an exported model at `path` is: inside a SavedModel, beside a file."""
  p = epath.Path(path)
  return p / METADATA if fmt == 'savedmodel' else p.parent / f'{p.name}.json'


def signatures(resolution: int, channels: int, batch: str = 'batch') -> dict[str, str]:
  """The exported signatures and their input, in words (`batch`: a TFLite model's batch size)."""
  return {
      'serving_default': 'images: tf.string [batch], PNG or JPEG files, decoded to '
                         f'{channels} channel(s) and preprocessed as in eval',
      'pixels': f'images: uint8 [batch, height, width, {channels}], any size, preprocessed as '
                'in eval',
      'pixels_at_resolution': f'images: uint8 [{batch}, {resolution}, {resolution}, '
                              f'{channels}], only scaled to [-1, 1]',
  }


def preprocessing(cfg: ml_collections.ConfigDict) -> str:
  """The eval preprocessing of `config.input` (`input_pipeline.eval_image`), in words."""
  side = cfg.resolution / cfg.central_crop
  return (f'uint8 pixels; the short side resized to {side:g} px (bilinear, antialiased), the '
          f'centre {cfg.resolution}x{cfg.resolution} cropped, scaled to [-1, 1] as x / 127.5 - 1 '
          '(the model normalises inside)')


def to_pixels(images: np.ndarray) -> np.ndarray:
  """float32 in [-1, 1] -> uint8, rounded: the inverse of `input_pipeline.to_float`."""
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


class StudentModule(tf.Module):
  """A run's student with its variables (tf.Variables), as the three signatures above
  (`signature_functions`); with a `batch` size (for TFLite), `pixels_at_resolution` alone, taking
  exactly that many images."""

  def __init__(self, run: build.Run, variables: dict[str, Any],
               platforms: tuple[str, ...] = SAVEDMODEL_PLATFORMS, batch: int | None = None):
    super().__init__()
    cfg = run.config.input
    side, channels = cfg.resolution, run.data.channels
    self._variables = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), variables)

    def forward(v: dict[str, Any], images: jax.Array) -> jax.Array:
      if batch:
        return run.student.apply(v, images, train=False)
      one = lambda image: run.student.apply(v, image[None], train=False)[0]
      return jax.vmap(one)(images)

    self._forward = jax2tf.convert(
        forward, polymorphic_shapes=None if batch else [None, '(b, ...)'], with_gradient=False,
        native_serialization_platforms=platforms)
    image_spec = tf.TensorSpec([side, side, channels], tf.float32)

    def outputs(images: tf.Tensor) -> dict[str, tf.Tensor]:
      logits = self._forward(self._variables, images)
      return {'logits': logits, 'probabilities': tf.nn.softmax(logits)}

    def preprocess(image: tf.Tensor) -> tf.Tensor:
      return input_pipeline.eval_image(image, cfg.resolution, cfg.central_crop)

    def decode(encoded: tf.Tensor) -> tf.Tensor:
      return preprocess(images.decode(encoded, channels))

    self.signature_functions = {'pixels_at_resolution': tf.function(
        lambda images: outputs(input_pipeline.to_float(images)),
        input_signature=[tf.TensorSpec([batch, side, side, channels], tf.uint8,
                                       name='images')],
        autograph=False)}
    if not batch:
      self.signature_functions['serving_default'] = tf.function(
          lambda images: outputs(tf.map_fn(decode, images, fn_output_signature=image_spec)),
          input_signature=[tf.TensorSpec([None], tf.string, name='images')], autograph=False)
      self.signature_functions['pixels'] = tf.function(
          lambda images: outputs(tf.map_fn(preprocess, images, fn_output_signature=image_spec)),
          input_signature=[tf.TensorSpec([None, None, None, channels], tf.uint8,
                                         name='images')],
          autograph=False)

  def save(self, path: str | os.PathLike) -> None:
    tf.saved_model.save(self, os.fspath(path), signatures=self.signature_functions)


def metadata(run: build.Run, fmt: str, *, int8: bool, checkpoint: dict[str, Any],
             batch: int | None = None) -> dict[str, Any]:
  """What a deployment needs to know besides the model; `checkpoint`: its workdir, step, note;
  `batch`: a TFLite model's batch size."""
  cfg = run.config.input
  names = list(run.data.class_names) or [str(i) for i in range(run.data.num_classes)]
  sigs = signatures(cfg.resolution, run.data.channels, str(batch or 'batch'))
  return {
      'format': fmt,
      'quantization': 'dynamic_range_int8' if int8 else 'none',
      **({'batch_size': batch} if batch else {}),
      'model': {k: v for k, v in run.config.student.items() if k != 'init'},
      'num_classes': run.data.num_classes,
      'class_names': names,
      'resolution': cfg.resolution,
      'central_crop': cfg.central_crop,
      'channels': run.data.channels,
      'preprocessing': preprocessing(cfg),
      'signatures': sigs if fmt == 'savedmodel' else {
          'pixels_at_resolution': sigs['pixels_at_resolution']},
      'outputs': OUTPUTS,
      'checkpoint': checkpoint,
  }


def tflite_bytes(saved_model: str | os.PathLike, int8: bool) -> bytes:
  """The `pixels_at_resolution` signature of a SavedModel as a TFLite flatbuffer."""
  converter = tf.lite.TFLiteConverter.from_saved_model(
      os.fspath(saved_model), signature_keys=['pixels_at_resolution'])
  if int8:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return converter.convert()


def save(run: build.Run, variables: dict[str, Any], path: str | os.PathLike, fmt: str, *,
         checkpoint: dict[str, Any], int8: bool = False, batch: int = 1) -> epath.Path:
  """Writes the student as `fmt` (a SavedModel directory or a TFLite file of `batch` images a
  call) at `path` and its metadata (`metadata_path`); returns the metadata's path. The caller
  checks `path` first."""
  if fmt not in FORMATS or (int8 and fmt != 'tflite') or batch < 1:
    raise ValueError(f'format {fmt!r}, int8={int8}, batch={batch}: use one of {FORMATS}, int8 '
                     'for tflite only, a batch of at least 1.')
  info = metadata(run, fmt, int8=int8, checkpoint=checkpoint,
                  batch=batch if fmt == 'tflite' else None)
  out = workdir_lib.path(path)
  if fmt == 'savedmodel':
    StudentModule(run, variables).save(out)
  else:
    with tempfile.TemporaryDirectory() as tmp:
      StudentModule(run, variables, platforms=('cpu',), batch=batch).save(tmp)
      flatbuffer = tflite_bytes(tmp, int8)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(flatbuffer)
  meta = metadata_path(out, fmt)
  meta.write_text(json.dumps(info, indent=2))
  return meta


@dataclasses.dataclass(frozen=True)
class Exported:
  """An exported student loaded for inference (`load`): `metadata` is its JSON metadata."""
  path: str
  format: str  # One of `FORMATS`.
  metadata: dict[str, Any]
  _pixels: Callable[[np.ndarray], np.ndarray]
  _encoded: Callable[[list[bytes]], np.ndarray] | None  # SavedModels only.

  @property
  def input_shape(self) -> tuple[int, int, int]:
    side = self.metadata['resolution']
    return (side, side, self.metadata['channels'])

  def logits_from_pixels(self, images: np.ndarray) -> np.ndarray:
    """float32 [n, classes] logits of uint8 [n, R, R, C] images already at the resolution
    (`pixels_at_resolution` makes them from any image), any n."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != self.input_shape:
      raise errors.BadInput(f'{self.path} takes uint8 images of shape [batch, '
                            f'{", ".join(map(str, self.input_shape))}], not {images.dtype} '
                            f'{list(images.shape)}; serving.pixels_at_resolution resizes them.')
    return self._pixels(images)

  def logits_from_encoded(self, images: list[bytes]) -> np.ndarray:
    """float32 [b, classes] logits of encoded images (PNG or JPEG file contents) of any size,
    preprocessed as the run's eval preprocesses; SavedModels only."""
    if self._encoded is None:
      raise errors.BadInput(f'{self.path} is a {self.format} model, which takes pixels at its '
                            'resolution: decode the images and use logits_from_pixels '
                            '(serving.pixels_at_resolution resizes them).')
    return self._encoded(list(images))


def load(path: str | os.PathLike, num_threads: int | None = None) -> Exported:
  """An exported student (a SavedModel directory or a TFLite file) with its metadata.
  `num_threads`: the TFLite interpreter's (LiteRT's `ai_edge_litert`, the successor of
  `tf.lite.Interpreter`, the same outputs bit for bit; None: its default).

  A damaged model or metadata file, a model without big_distill's metadata and metadata that
  does not describe the model beside it are bad input naming the file and what is wrong.
  """
  p = workdir_lib.path(path)
  fmt = 'savedmodel' if p.is_dir() else 'tflite'
  meta = metadata_path(p, fmt)
  if not p.exists() or not meta.exists():
    raise errors.BadInput(f'{path} is not a model written by big_distill.export (no {meta}).')
  info = _read_metadata(meta, fmt)
  if fmt == 'savedmodel':
    signatures_ = _load_savedmodel(path, p).signatures
    missing = [n for n in ('pixels_at_resolution', 'serving_default') if n not in signatures_]
    if missing:
      raise errors.BadInput(f'{path} has no {" or ".join(missing)} signature, so it was not '
                            f'written by big_distill.export and {meta} describes another model.')
    at_resolution, encoded = (signatures_[name] for name in ('pixels_at_resolution',
                                                            'serving_default'))
    images = at_resolution.structured_input_signature[1].get('images')
    logits = at_resolution.structured_outputs.get('logits')
    _check_matches(path, meta, info, None if images is None else images.dtype.as_numpy_dtype,
                   None if images is None else images.shape,
                   None if logits is None else logits.shape)
    return Exported(
        os.fspath(path), fmt, info,
        lambda x: at_resolution(images=tf.constant(x))['logits'].numpy(),
        lambda x: encoded(images=tf.constant(x, tf.string))['logits'].numpy())
  try:
    interpreter = litert.Interpreter(model_path=os.fspath(p), num_threads=num_threads)
  except ValueError:
    raise errors.BadInput(f'{path} is damaged or not a TFLite model (it is not a valid TFLite '
                          'flatbuffer); export it again.') from None
  if 'pixels_at_resolution' not in interpreter.get_signature_list():
    raise errors.BadInput(f'{path} has no pixels_at_resolution signature, so it was not written '
                          f'by big_distill.export and {meta} describes another model.')
  runner = interpreter.get_signature_runner('pixels_at_resolution')
  images = runner.get_input_details().get('images', {})
  _check_matches(path, meta, info, images.get('dtype'), images.get('shape_signature'),
                 runner.get_output_details().get('logits', {}).get('shape_signature'))
  batch = info.get('batch_size')  # None: a file of an earlier version, any batch size.

  def in_chunks(images: np.ndarray) -> np.ndarray:
    """The fixed-batch model's logits of any number of images: the last chunk zero-padded."""
    if batch is None:
      return runner(images=images)['logits']
    chunks = []
    for start in range(0, len(images), batch):
      chunk = images[start:start + batch]
      padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]),
                                               chunk.dtype)])
      chunks.append(runner(images=padded)['logits'][:len(chunk)])
    return np.concatenate(chunks)

  return Exported(os.fspath(path), fmt, info, in_chunks, None)


# The metadata keys that loading and preprocessing read, with their types.
_REQUIRED = {'resolution': int, 'channels': int, 'central_crop': (int, float), 'class_names': list}


def _read_metadata(meta: epath.Path, fmt: str) -> dict[str, Any]:
  """The metadata at `meta` of a `fmt` model; bad input unless export could have written it."""
  try:
    info = json.loads(meta.read_text())
  except ValueError as e:  # Not JSON, or not text at all.
    raise errors.BadInput(f'{meta} is damaged: it is not JSON ({e}); export the model '
                          'again.') from None
  wrong = [key for key, kind in _REQUIRED.items()
           if not isinstance(info.get(key) if isinstance(info, dict) else None, kind)]
  if isinstance(info, dict) and info.get('format') != fmt:
    wrong.insert(0, 'format')
  if wrong:
    raise errors.BadInput(f'{meta} is not the metadata big_distill.export writes for a {fmt} '
                          f'model (missing or wrong: {", ".join(wrong)}).')
  return info


def _load_savedmodel(path: str | os.PathLike, p: epath.Path) -> Any:
  """`tf.saved_model.load` of the directory `p`, after checking its graph and variables."""
  graph = p / 'saved_model.pb'
  if not graph.exists():
    raise errors.BadInput(f'{path} is not a SavedModel (no saved_model.pb in it).')
  try:
    saved_model_pb2.SavedModel().ParseFromString(graph.read_bytes())
  except message.DecodeError:
    raise errors.BadInput(f'{graph} is damaged: it does not parse as a SavedModel; export the '
                          'model again.') from None
  try:  # Every variable read once: a truncated or garbled file fails here (checksums).
    reader = tf.train.load_checkpoint(os.fspath(p / 'variables' / 'variables'))
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except (tf.errors.OpError, IndexError, ValueError, OSError):
    raise errors.BadInput(f'The variables of {path} ({p / "variables"}) are missing or damaged; '
                          'export the model again.') from None
  try:
    return tf.saved_model.load(os.fspath(p))
  except (tf.errors.OpError, LookupError, ValueError, OSError, TypeError):
    raise errors.BadInput(f'{path} cannot be loaded by TensorFlow {tf.__version__}: it is '
                          'damaged or was not written by big_distill.export.') from None


def _check_matches(path: str | os.PathLike, meta: epath.Path, info: dict[str, Any], dtype: Any,
                   shape: Any, logits_shape: Any) -> None:
  """Bad input unless the model takes the images (uint8 [batch, R, R, C]) and gives the class
  count that its metadata describes: not a model and metadata of one export. Shapes: None or -1
  for any size."""
  text = lambda s: '[' + ', '.join('batch' if d is None or d < 0 else str(d) for d in s) + ']'
  side, channels = info['resolution'], info['channels']
  images = text([info.get('batch_size'), side, side, channels])
  classes = len(info['class_names'])
  if (dtype != np.uint8 or shape is None or text(shape) != images or logits_shape is None or
      list(logits_shape)[1:] != [classes]):
    takes = ('no images' if shape is None or dtype is None else
             f'{np.dtype(dtype).name} images {text(shape)}')
    gives = 'no logits' if logits_shape is None else f'logits {text(logits_shape)}'
    raise errors.BadInput(
        f'{path} does not match its metadata {meta}: the model takes {takes} and gives {gives}, '
        f'the metadata describes uint8 images {images} and {classes} classes; export the model '
        'again.')


def pixels_at_resolution(image: np.ndarray, metadata: dict[str, Any]) -> np.ndarray:
  """uint8 [R, R, C] of a uint8 [height, width, C] image: the eval resize and centre crop of the
  exported model's metadata (in TF, as `input_pipeline.eval_image`), rounded to uint8."""
  image = np.asarray(image)
  channels = metadata['channels']
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != channels:
    raise errors.BadInput(f'Expected a uint8 [height, width, {channels}] image, not '
                          f'{image.dtype} {list(image.shape)}.')
  return to_pixels(input_pipeline.eval_image(tf.constant(image), metadata['resolution'],
                                             metadata['central_crop']).numpy())
