r"""Exports a run's student to the BiT `.npz` layout, for any code that reads BiT checkpoints.

  python -m big_distill.export --workdir=DIR --output=student.npz [--step=N]
"""

import sys

from absl import app, flags

from big_distill import checkpoint
from big_distill.models import bit

_WORKDIR = flags.DEFINE_string('workdir', None, 'The run whose student to export.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'The `.npz` file to write.', required=True)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')


def main(argv):
  del argv
  try:
    params, step = checkpoint.read_params(_WORKDIR.value, _STEP.value)
  except ValueError as e:
    sys.exit(f'big_distill: error: {e}')
  bit.save_bit_npz(params, _OUTPUT.value)
  print(f'Wrote the student of step {step} to {_OUTPUT.value}.')


if __name__ == '__main__':
  app.run(main)
