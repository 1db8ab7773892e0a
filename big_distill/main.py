r"""Entry point: `python -m big_distill.main --config=configs/NAME.py[:args] --workdir=DIR`.

Any config value can be overridden, e.g. `--config.lr=0.01 --config.teachers[0].checkpoint=P`.
"""

import logging as std_logging
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from big_distill import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (big_distill configs/).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, config.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of orbax and TFDS (every checkpoint write logs ~30 lines)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in ('/orbax/', '/tensorflow_datasets/', '/jax/_src/'))


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.info('JAX process %d of %d, %d local / %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except ValueError as e:
    print(f'big_distill: error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
