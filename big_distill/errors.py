"""The project's exceptions and the exit code of each: one table for every command.

| exit | meaning |
|---|---|
| 0 | done |
| 1 | a bug: any other exception, with its traceback |
| 2 | bad input (`BadInput`): one line `big_distill: error: ...` saying what to change; nothing on
      disk was created or changed |
| 3 | diverged (`Diverged`): a non-finite loss, gradient or parameter norm |
| 74 | an I/O error (`WriteFailed`, or any `OSError`), e.g. a full disk |
| 75 | preempted (`Preempted`): saved up to the current step; run the same command again |
| 130 | interrupted by Ctrl-C: a training run saves up to the current step as when preempted
        (`Interrupted`); any other command stops at once |

`BadInput` is a `ValueError` and `WriteFailed` an `OSError`, so code that calls the library and
catches those keeps working; only big_distill's own checks raise them, so a `ValueError` raised
inside a library stays a bug (exit 1).
"""

OK = 0
BUG = 1
BAD_INPUT = 2
DIVERGED = 3
IO_ERROR = 74  # EX_IOERR.
PREEMPTED = 75  # EX_TEMPFAIL: run it again.
INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C.


class Error(Exception):
  """An expected failure of a command: the exit code of its class, one line of text."""
  exit_code = BUG


class BadInput(Error, ValueError):
  """A config value, flag, file or directory that cannot be used; says what to change."""
  exit_code = BAD_INPUT


class Diverged(Error, FloatingPointError):
  """Training produced a non-finite loss, gradient norm or parameter norm."""
  exit_code = DIVERGED


class WriteFailed(Error, OSError):
  """A file could not be written (disk full, lost permissions); earlier files are intact."""
  exit_code = IO_ERROR


class Preempted(Error):
  """Raised once the run is saved up to the step at which a preemption was noticed."""
  exit_code = PREEMPTED
  event = 'Preempted'

  def __init__(self, step: int):
    super().__init__(f'{self.event} at step {step}; the run is saved up to it. Run the same '
                     'command again to resume.')
    self.step = step


class Interrupted(Preempted):
  """Raised once the run is saved up to the step at which a Ctrl-C came."""
  exit_code = INTERRUPTED
  event = 'Interrupted'


class StageFailed(Error):
  """A command that a command ran (a demo stage) failed; it has already said why."""

  def __init__(self, exit_code: int):
    super().__init__('')
    self.exit_code = exit_code


def exit_code(error: BaseException) -> int:
  """The exit code of `error`: its class's for the project's errors, `IO_ERROR` for any other
  `OSError`, `BUG` for everything else."""
  if isinstance(error, Error):
    return error.exit_code
  if isinstance(error, OSError):
    return IO_ERROR
  return BUG
