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

import glob
import importlib.util
import json
import os

from absl import flags, logging

from big_distill import cli, errors

GOOGLE_PCI_VENDOR = '0x1ae0'
PCI_ACCELERATOR_CLASS = '0x12'  # "Processing accelerators" (a TPU chip; not Google's gVNIC NIC).
FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, config.',
                      required=True)
  flags.DEFINE_bool('dry_run', False, 'Print the resolved config and what the run would build '
                    '(models, data, steps, teachers\' sources), then exit, writing nothing.')
  define_process_flags()


def define_process_flags() -> None:
  """The flags of `start_jax`: joining a multi-process run, the compilation cache."""
  flags.DEFINE_string(
      'coordinator_address', None, 'Multi-process: HOST:PORT of process 0 (default: the '
      'environment variable JAX_COORDINATOR_ADDRESS); needs --num_processes and --process_id.')
  flags.DEFINE_integer('num_processes', None,
                       'Multi-process: number of processes (default: $JAX_NUM_PROCESSES).')
  flags.DEFINE_integer('process_id', None,
                       'Multi-process: this process, 0 .. N-1 (default: $JAX_PROCESS_ID).')
  flags.DEFINE_string(
      'compilation_cache_dir', os.environ.get('JAX_COMPILATION_CACHE_DIR',
                                              '~/.cache/big_distill/jax'),
      'JAX\'s persistent compilation cache (local or gs://), so that a restarted run skips '
      'compiling; empty: off.')


def distributed_args() -> tuple[str, int, int] | None:
  """(coordinator, processes, id) from the flags, else the environment; None if nothing is set."""
  args = [FLAGS[name].value if FLAGS[name].value is not None else os.environ.get(var)
          for name, var in (('coordinator_address', 'JAX_COORDINATOR_ADDRESS'),
                            ('num_processes', 'JAX_NUM_PROCESSES'),
                            ('process_id', 'JAX_PROCESS_ID'))]
  if args == [None] * 3:
    return None
  address, num, pid = args
  if None in args or not str(num).isdigit() or not str(pid).isdigit():
    raise errors.BadInput('a multi-process run needs --coordinator_address=HOST:PORT, '
                          '--num_processes=N and --process_id=I (or JAX_COORDINATOR_ADDRESS, '
                          f'JAX_NUM_PROCESSES, JAX_PROCESS_ID); got {address}, {num}, {pid}.')
  return address, int(num), int(pid)


def cluster_detected() -> bool:
  """A SLURM step with several tasks, or a Cloud TPU VM: libtpu installed and a Google
  accelerator on the PCI bus (what JAX checks too, in a private module)."""
  slurm_step = 'SLURM_STEP_NODELIST' in os.environ and int(os.environ.get('SLURM_NTASKS', 1)) > 1
  return slurm_step or (importlib.util.find_spec('libtpu') is not None and any(
      _read(os.path.join(device, 'vendor')) == GOOGLE_PCI_VENDOR and
      _read(os.path.join(device, 'class')).startswith(PCI_ACCELERATOR_CLASS)
      for device in glob.glob('/sys/bus/pci/devices/*')))


def _read(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return ''


def init_distributed() -> None:
  """Joins a multi-process run (see the module docstring); a single process does nothing."""
  args = distributed_args()
  if args is None and not cluster_detected():
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # Collectives across CPU hosts.
  jax.distributed.initialize(*(args or ()))  # No arguments: JAX reads the cluster's layout.


def start_jax() -> None:
  """Joins a multi-process run (`init_distributed`) and turns the compilation cache on: what a
  command that runs on every process (`main`, `reinforce`) does first."""
  init_distributed()
  import jax  # pylint: disable=g-import-not-at-top  # After `jax.distributed.initialize`.
  if FLAGS.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(FLAGS.compilation_cache_dir))
  logging.info('JAX process %d of %d, %d local / %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv, config):
  del argv
  start_jax()
  from big_distill import build, train  # pylint: disable=g-import-not-at-top
  if FLAGS.dry_run:
    print(json.dumps(build.dry_run(config, FLAGS.workdir), indent=2))
    return
  train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == '__main__':
  define_flags()
  cli.run(main, config=True, announce=lambda: (
      f'big_distill.main: {"a dry run of" if FLAGS.dry_run else "starting"} {FLAGS.config} in '
      f'{FLAGS.workdir}: loading JAX and TensorFlow, then the data and the models.'))
