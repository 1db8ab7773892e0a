r"""Entry point: `python -m big_distill.main --config=configs/NAME.py[:args] --workdir=DIR`.

Any config value can be overridden, e.g. `--config.lr=0.01 --config.teachers[0].checkpoint=P`.

Several processes (hosts) join one run through `jax.distributed.initialize`, before anything
touches a device:
- explicitly: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on every process
  (or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID);
- detected by JAX: a SLURM job step with several tasks (`srun`, one task per GPU) and Cloud TPU
  VMs (a pod slice's workers find each other through the TPU metadata).
Anything else is a single-process run and initialises nothing.
"""

import logging as std_logging
import os
import sys

from absl import app, flags, logging
import jax
from jax._src import cloud_tpu_init
from ml_collections import config_flags

from big_distill import checkpoint, train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (big_distill configs/).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, config.')
flags.mark_flags_as_required(['config', 'workdir'])
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-process: HOST:PORT of process 0 (default: the '
    'environment variable JAX_COORDINATOR_ADDRESS); needs --num_processes and --process_id.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Multi-process: number of processes (default: $JAX_NUM_PROCESSES).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Multi-process: this process, 0 .. N-1 (default: $JAX_PROCESS_ID).')
_COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache_dir', os.environ.get('JAX_COMPILATION_CACHE_DIR',
                                            '~/.cache/big_distill/jax'),
    'JAX\'s persistent compilation cache (local or gs://), so that a restarted run skips '
    'compiling; empty: off.')


def distributed_args() -> tuple[str, int, int] | None:
  """(coordinator, processes, id) from the flags, else the environment; None if nothing is set."""
  args = [flag.value if flag.value is not None else os.environ.get(var) for flag, var in (
      (_COORDINATOR, 'JAX_COORDINATOR_ADDRESS'), (_NUM_PROCESSES, 'JAX_NUM_PROCESSES'),
      (_PROCESS_ID, 'JAX_PROCESS_ID'))]
  if args == [None] * 3:
    return None
  address, num, pid = args
  if None in args or not str(num).isdigit() or not str(pid).isdigit():
    raise ValueError('a multi-process run needs --coordinator_address=HOST:PORT, '
                     '--num_processes=N and --process_id=I (or JAX_COORDINATOR_ADDRESS, '
                     f'JAX_NUM_PROCESSES, JAX_PROCESS_ID); got {address}, {num}, {pid}.')
  return address, int(num), int(pid)


def cluster_detected() -> bool:
  """A SLURM step with several tasks, or a Cloud TPU VM (JAX's check of the PCI bus)."""
  slurm_step = 'SLURM_STEP_NODELIST' in os.environ and int(os.environ.get('SLURM_NTASKS', 1)) > 1
  return slurm_step or cloud_tpu_init.running_in_cloud_tpu_vm


def init_distributed() -> None:
  """Joins a multi-process run (see the module docstring); a single process does nothing."""
  args = distributed_args()
  if args is None and not cluster_detected():
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # Collectives across CPU hosts.
  jax.distributed.initialize(*(args or ()))  # No arguments: JAX reads the cluster's layout.


class _QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of orbax and TFDS (every checkpoint write logs ~30 lines)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in ('/orbax/', '/tensorflow_datasets/', '/jax/_src/'))


EXIT_CODES = {ValueError: 2, FloatingPointError: 3, OSError: 74}  # 75: preempted.


def exit_code(error: Exception) -> int | None:
  """The exit code of an expected failure, None for a bug. A ValueError is bad input only if
  big_distill raised it (its checks say what to fix); one from inside a library is a bug."""
  if isinstance(error, ValueError):
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
      tb = tb.tb_next
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    if tb is None or not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package):
      return None
  return next((code for kind, code in EXIT_CODES.items() if isinstance(error, kind)), None)


def say(line: str) -> None:
  """Writes `line` to stderr on a line of its own, in one system call: background threads
  (orbax's writers) may print tracebacks piece by piece while a failed run exits, and their
  unfinished line would otherwise prefix it."""
  os.write(sys.stderr.fileno(), f'\n{line}\n'.encode())


def _one_line(error: BaseException) -> str:
  return ' '.join(str(error).split())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config errors as one `big_distill: error:` line and exit 2."""
  config_arg = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')), None)
  config_path = config_arg.split(':', 1)[0] if config_arg else None
  try:
    if config_path and not os.path.exists(config_path):
      raise ValueError(f'config file {config_path} does not exist.')
    rest = flags.FLAGS(argv)
    _CONFIG.value  # Loads the config file now, if the flag has not yet.
    return rest
  except flags.UnrecognizedFlagError as e:
    name = e.flagname
    message = (f"unknown config key '{name[len('config.'):]}' in --{name}; the config file and "
               'configlib.base_config() list the keys.' if name.startswith('config.')
               else f'unknown flag --{name}; see --helpfull.')
  except (flags.Error, ValueError, OSError, AttributeError, TypeError) as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    message = ' '.join(lines[-1:] if len(lines) > 1 and 'Traceback' in str(e) else lines)
    if 'get_config' in message:
      message = f'{config_path} has no get_config(arg) function.'
    elif isinstance(e, AttributeError):  # An override of a key the config does not have.
      inner = e.args[0] if e.args else e  # ml_collections wraps a KeyError('key\nhint').
      key, *hint = str(inner.args[0] if isinstance(inner, KeyError) else inner).splitlines()
      key = key.strip('\'"')
      arg = next((a for a in argv if a.startswith('--config.') and
                  f'.{key}' in a.split('=', 1)[0]), f'--config...{key}')
      message = (f"unknown config key '{arg.split('=', 1)[0][len('--config.'):]}' in {arg}. "
                 f'{" ".join(hint) or "The config file and configlib.base_config() list the keys."}')
    elif 'Pass --helpshort' in message:
      message = message.split('Pass --helpshort')[0].strip()
  say(f'big_distill: error: {message}')
  sys.exit(2)


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    if _COMPILATION_CACHE.value:
      jax.config.update('jax_compilation_cache_dir',
                        os.path.expanduser(_COMPILATION_CACHE.value))
    init_distributed()
    logging.info('JAX process %d of %d, %d local / %d global devices.', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except checkpoint.Preempted as e:
    say(f'big_distill: {e}')
    sys.exit(checkpoint.PREEMPTED_EXIT_CODE)
  except tuple(EXIT_CODES) as e:
    code = exit_code(e)
    if code is None:
      raise  # Its traceback, exit 1.
    say(f'big_distill: error: {_one_line(e)}')
    sys.exit(code)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
