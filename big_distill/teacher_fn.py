"""Any model as the teacher of a reinforcement (`reinforce --teacher_fn=module:function`): the
function runs in a process of its own, which imports neither JAX nor TensorFlow, so PyTorch,
ONNX Runtime or a service's client never share a process with TensorFlow (importing PyTorch after
TensorFlow can crash).

`function(images)` takes float32 NumPy images [batch, height, width, channels] in [0, 1] (RGB,
or grey with one channel), already at the teacher's resolution, and returns its logits, a float
NumPy array [batch, classes]; it applies its own model's input normalisation.

The two processes exchange arrays in NumPy's `.npy` format, each after its length, over the
child's stdin and stdout: written by hand, as the standard library's `multiprocessing` would
import the parent's main module (and so TensorFlow) in the child.
"""

import importlib
import io
import os
import struct
import subprocess
import sys
from typing import Any

import numpy as np

from big_distill import errors

_READY = b'ready\n'
_LENGTH = struct.Struct('<Q')


def _send(stream: Any, array: np.ndarray) -> None:
  data = io.BytesIO()
  np.save(data, array, allow_pickle=False)
  stream.write(_LENGTH.pack(len(data.getbuffer())) + data.getvalue())
  stream.flush()


def _receive(stream: Any) -> np.ndarray | None:
  """The next array on `stream`; None at its end."""
  head = stream.read(_LENGTH.size)
  if len(head) < _LENGTH.size:
    return None
  (length,) = _LENGTH.unpack(head)
  data = stream.read(length)
  if len(data) < length:
    return None
  return np.load(io.BytesIO(data), allow_pickle=False)


class TeacherFunction:
  """`module:function` running in its own process: `logits(images)`; `close()` ends it."""

  def __init__(self, name: str, num_classes: int):
    self.name, self.num_classes = name, num_classes
    module, sep, function = name.partition(':')
    if not (sep and module and function):
      raise errors.BadInput(f'--teacher_fn={name}: name it as module:function.')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, (os.getcwd(), os.environ.get('PYTHONPATH')))))
    self._process = subprocess.Popen(
        [sys.executable, '-m', 'big_distill.teacher_fn', name], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    if self._process.stdout.readline() != _READY:
      raise self._failed('cannot be imported')

  def logits(self, images: np.ndarray) -> np.ndarray:
    """The function's logits of float32 `images` in [0, 1], checked: [batch, classes] floats."""
    try:
      _send(self._process.stdin, np.ascontiguousarray(images, np.float32))
      logits = _receive(self._process.stdout)
    except (BrokenPipeError, ValueError, OSError):
      logits = None
    if logits is None:
      raise self._failed('failed')
    if logits.shape != (len(images), self.num_classes) or logits.dtype.kind != 'f':
      self.close()
      raise errors.BadInput(
          f'--teacher_fn={self.name} returned {logits.dtype} {list(logits.shape)} for '
          f'images {list(images.shape)}; it must return float logits [{len(images)}, '
          f'{self.num_classes}] (batch, classes).')
    return logits.astype(np.float32)

  def _failed(self, what: str) -> errors.BadInput:
    self.close()
    lines = self._process.stderr.read().decode(errors='replace').strip().splitlines()
    return errors.BadInput(f'--teacher_fn={self.name} {what}: {lines[-1] if lines else "no output"}')

  def close(self) -> None:
    if self._process.poll() is None:
      self._process.stdin.close()
      self._process.wait(timeout=60)


def _serve(name: str) -> None:
  """The child: imports `module:function`, says it is ready, then answers every array it reads
  with the function's result, until its stdin closes."""
  module, _, function = name.partition(':')
  try:
    fn = getattr(importlib.import_module(module), function)
  except (ImportError, AttributeError) as e:
    sys.exit(f'{type(e).__name__}: {e}')
  stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
  stdout.write(_READY)
  stdout.flush()
  while (images := _receive(stdin)) is not None:
    _send(stdout, np.asarray(fn(images)))


if __name__ == '__main__':
  _serve(sys.argv[1])
