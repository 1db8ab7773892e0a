"""Preemption: a SIGTERM makes the loop save the step it has finished and exit 75
(`errors.Preempted`), so that the same command resumes; so does a Ctrl-C during the steps, with
exit 130 (`errors.Interrupted`). One process: its own signal handlers; several: JAX's preemption
sync point (through orbax), so that every process saves at the same step."""

import contextlib
import signal
import threading
from typing import Iterator

from absl import logging
import jax
import orbax.checkpoint as ocp


class Preemption:
  """Notices SIGTERM from its creation on, and Ctrl-C (SIGINT) inside `interruptible`; `close`
  restores the previous SIGTERM handler. Signal handlers belong to the main thread: elsewhere
  (several processes, or another thread) only JAX's sync point preempts."""

  def __init__(self):
    self._requested = self._interrupted = False
    self._previous = None
    self._handles = (jax.process_count() == 1 and
                     threading.current_thread() is threading.main_thread())
    if self._handles:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint after this step, then exiting.')
    self._requested = True

  def _interrupt(self, signum, frame) -> None:
    del signum, frame
    logging.warning('Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again '
                    'stops at once, without saving it).')
    self._interrupted = True
    signal.signal(signal.SIGINT, signal.default_int_handler)

  @contextlib.contextmanager
  def interruptible(self) -> Iterator[None]:
    """Inside the block (the training steps) a first Ctrl-C is a preemption (`interrupted`) and a
    second one Python's `KeyboardInterrupt`; outside it (start-up, compilation) a first one
    already is."""
    if not self._handles or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
      yield  # Several processes, or SIGINT ignored (a background job) or handled by others.
      return
    previous = signal.signal(signal.SIGINT, self._interrupt)
    try:
      yield
    finally:
      signal.signal(signal.SIGINT, previous)

  @property
  def requested(self) -> bool:
    """Whether this process has had a SIGTERM (one process only)."""
    return self._requested

  @property
  def interrupted(self) -> bool:
    """Whether this process has had a Ctrl-C inside `interruptible` (one process only)."""
    return self._interrupted

  def reached(self, manager: ocp.CheckpointManager, step: int) -> bool:
    """Whether to save at `step` and stop: this process had a SIGTERM or a Ctrl-C, or (several
    processes) JAX's preemption sync point is `step`."""
    return self._requested or self._interrupted or manager.reached_preemption(step)

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def __enter__(self) -> 'Preemption':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
