"""Preemption: a SIGTERM makes the loop save the step it has finished and exit 75
(`errors.Preempted`), so that the same command resumes. One process: its own SIGTERM handler;
several: JAX's preemption sync point (through orbax), so that every process saves at the same
step."""

import signal

from absl import logging
import jax
import orbax.checkpoint as ocp


class Preemption:
  """Notices SIGTERM from its creation on; `close` restores the previous handler."""

  def __init__(self):
    self._requested = False
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint after this step, then exiting.')
    self._requested = True

  @property
  def requested(self) -> bool:
    """Whether this process has had a SIGTERM (one process only)."""
    return self._requested

  def reached(self, manager: ocp.CheckpointManager, step: int) -> bool:
    """Whether to save at `step` and stop: this process had a SIGTERM, or (several processes)
    JAX's preemption sync point is `step`."""
    return self._requested or manager.reached_preemption(step)

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def __enter__(self) -> 'Preemption':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
