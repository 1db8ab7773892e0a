"""One process of a host at a time: the processes of a multi-process run that start together
prepare a dataset once (TFDS's own preparation fails in all but the first to finish), and a
workdir is one run's (the same command started twice)."""

import contextlib
import fcntl
import os
from typing import Iterator

import jax

from big_distill import errors, workdir


@contextlib.contextmanager
def exclusive(path: str, *, busy: str | None = None) -> Iterator[None]:
  """Holds an exclusive `flock` on `path` while the block runs (released when it ends or the
  process dies): on a directory itself (nothing is created), or on a file, created if missing.
  With `busy`, does not wait: `errors.BadInput(busy)` where another process holds it. No lock on
  a remote path (gs://...), where datasets are prepared before a run."""
  if workdir.is_remote(path):
    yield
    return
  if not os.path.isdir(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  fd = os.open(path, os.O_RDONLY if os.path.isdir(path) else os.O_RDONLY | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))  # Until `fd` is closed.
    except BlockingIOError:
      raise errors.BadInput(busy) from None
    yield
  finally:
    os.close(fd)


def only_user(directory: str) -> contextlib.AbstractContextManager[None]:
  """`exclusive` on a workdir, created if missing, for a single-process run or reinforcement: bad
  input where another process holds it, the same command started twice (the processes of a
  multi-process run share their workdir: they take no lock)."""
  if jax.process_count() > 1:
    return contextlib.nullcontext()
  if not workdir.is_remote(directory):
    os.makedirs(directory, exist_ok=True)
  return exclusive(directory, busy=(
      f'--workdir={directory} is in use by another big_distill process on this machine; wait for '
      'it to end, or stop it (Ctrl-C: a training run saves its step), then run this command '
      'again.'))
