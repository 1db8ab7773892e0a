"""What a person sees while a command runs.

On a terminal or in a notebook (Jupyter, Colab): a progress bar per stage (tqdm: steps, rate,
ETA, and the latest loss and eval as postfix), warnings and errors on stderr, and the full absl log in `WORKDIR/log.txt` once the
command knows its workdir (`log_to`); records logged before that are kept and written first.
Without a terminal (CI, a cluster's log) the absl log goes to stderr as always, no bars are drawn,
and the log file is written too. Only process 0 draws bars.
"""

import logging as std_logging
import os
import sys
from typing import Any

from absl import logging
import tqdm
import tqdm.auto

from big_distill import workdir

_QUIET = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/')
# An orbax warning that says nothing wrong: a save without eval metrics while the best checkpoint
# is tracked (only eval steps have metrics).
_NOISE = ('did not provide metrics',)
_MAX_BUFFERED = 10_000


class _QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of orbax, TFDS and JAX (every checkpoint write logs ~30 lines), and
  orbax's `_NOISE` warning."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if any(noise in str(record.msg) for noise in _NOISE):
      return False
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in _QUIET)


class _Buffer(std_logging.Handler):
  """Keeps records until a log file exists (at most `_MAX_BUFFERED`, the newest)."""

  def __init__(self):
    super().__init__(std_logging.INFO)
    self.records: list[std_logging.LogRecord] = []

  def emit(self, record: std_logging.LogRecord) -> None:
    self.records = self.records[-_MAX_BUFFERED + 1:] + [record]


_state: dict[str, Any] = {}


def in_notebook() -> bool:
  """Whether this runs in a notebook's kernel (Jupyter's or Colab's IPython shell)."""
  ipython = sys.modules.get('IPython')
  shell = ipython.get_ipython() if ipython else None
  return type(shell).__name__ in ('ZMQInteractiveShell', 'Shell')


def interactive() -> bool:
  """Whether this process draws progress bars: process 0, on a terminal or in a notebook."""
  import jax  # pylint: disable=g-import-not-at-top  # Commands start without it (`cli`).
  return (sys.stderr.isatty() or in_notebook()) and jax.process_index() == 0


def start() -> None:
  """Sets up logging for a command (called by `cli.run` once flags are parsed)."""
  quiet = _QuietLibraries()
  absl_handler = logging.get_absl_handler()
  absl_handler.addFilter(quiet)
  if sys.stderr.isatty():
    absl_handler.setLevel(std_logging.WARNING)
  buffer = _Buffer()
  buffer.addFilter(quiet)
  buffer.setFormatter(logging.PythonFormatter())
  std_logging.root.addHandler(buffer)
  _state['handler'] = buffer


def log_to(path: str | os.PathLike) -> None:
  """Writes the log to `path` (local files only; a remote workdir keeps the stderr log alone),
  starting with what was logged so far."""
  buffer = _state.get('handler')
  if not isinstance(buffer, _Buffer) or workdir.is_remote(path):
    return
  handler = std_logging.FileHandler(path, encoding='utf-8')
  handler.setLevel(std_logging.INFO)
  handler.setFormatter(buffer.formatter)
  for f in buffer.filters:
    handler.addFilter(f)
  for record in buffer.records:
    handler.handle(record)
  std_logging.root.removeHandler(buffer)
  std_logging.root.addHandler(handler)
  _state['handler'] = handler


class Bar:
  """A progress bar on a terminal; without one, nothing (the log says the same)."""

  def __init__(self, stage: str, total: int | None, initial: int = 0, unit: str = 'step',
               leave: bool = True):
    bar = tqdm.auto.tqdm if in_notebook() else tqdm.tqdm  # Widgets where the notebook has them.
    self._bar = bar(total=total, initial=initial, desc=stage, unit=unit, leave=leave,
                    dynamic_ncols=True, file=sys.stderr) if interactive() else None
    self._postfix: dict[str, Any] = {}

  def update(self, n: int = 1, **postfix: Any) -> None:
    """Advances by `n` and shows `postfix` (merged with what was shown before) next to it."""
    if self._bar is not None:
      if postfix:
        self._postfix.update(postfix)
        self._bar.set_postfix(self._postfix, refresh=False)
      self._bar.update(n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()

  def __enter__(self) -> 'Bar':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
