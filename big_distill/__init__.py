"""big_distill: knowledge distillation of big vision models into small ones (JAX/Flax).

Importing the package imports nothing heavy. TensorFlow (the input pipeline, TFDS, TensorBoard and
export use it) is imported by the modules that use it, when they are imported; its C++ start-up
lines (oneDNN, CPU features: absl log lines that TF_CPP_MIN_LOG_LEVEL no longer silences) are kept
off stderr by a hook on its first import (`_QuietTensorFlow`), whichever module imports it first.
Written by hand: no library offers a quiet import of a C extension's start-up output.
"""

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys


@contextlib.contextmanager
def _stderr_to_devnull():
  """File descriptor 2 points at /dev/null (C++ code writes there, not to `sys.stderr`)."""
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
  """Finds `tensorflow` as Python would, and runs its module code with stderr silenced; a
  failing import still raises, after stderr is back. Leaves `sys.meta_path` once TensorFlow has
  been imported (a mere `importlib.util.find_spec` leaves it in place)."""

  def find_spec(self, name, path, target=None):
    if name != 'tensorflow':
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
      return spec
    exec_module, finder = spec.loader.exec_module, self

    def quietly(module):
      if finder in sys.meta_path:
        sys.meta_path.remove(finder)
      with _stderr_to_devnull():
        exec_module(module)

    spec.loader.exec_module = quietly
    return spec


os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if 'tensorflow' not in sys.modules:
  sys.meta_path.insert(0, _QuietTensorFlow())
