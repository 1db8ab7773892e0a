"""big_distill: knowledge distillation of big vision models into small ones (JAX/Flax)."""

import importlib
import os


def _import_tensorflow_quietly() -> None:
  """Imports TensorFlow (only the input pipeline and TensorBoard use it) with its C++ start-up
  chatter (oneDNN, CPU features: absl log lines that TF_CPP_MIN_LOG_LEVEL no longer silences)
  kept off stderr. A failing import still raises, after stderr is back."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    importlib.import_module('tensorflow')
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


_import_tensorflow_quietly()
