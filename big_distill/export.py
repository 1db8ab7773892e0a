r"""Exports a run's student to the BiT `.npz` layout, for any code that reads BiT checkpoints.

  python -m big_distill.export --workdir=DIR --output=student.npz [--step=best|latest|N]

By default the checkpoint with the best eval accuracy (runs with `keep_best`), else the latest;
the command says which one it wrote.
"""

from absl import flags

from big_distill import build, checkpoint, cli, errors, workdir as workdir_lib
from big_distill.models import bit, loading

_WORKDIR = flags.DEFINE_string('workdir', None, 'The run whose student to export.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'The `.npz` file to write.', required=True)
_STEP = flags.DEFINE_string('step', 'best', 'Checkpoint: best, latest, or a step number.')


def main(argv):
  del argv
  output = workdir_lib.path(_OUTPUT.value)
  if output.is_dir():
    raise errors.BadInput(f'--output={_OUTPUT.value} is a directory; name the .npz file to write.')
  workdir_lib.check_writable(output.parent, '--output')
  run = build.create_run_from_workdir(_WORKDIR.value)
  variables, _, note = checkpoint.read_variables(_WORKDIR.value, _STEP.value)
  loading.check_fits(variables, run.abstract_state.variables, f'{_WORKDIR.value} ({note})')
  params = variables['params']
  output.parent.mkdir(parents=True, exist_ok=True)
  bit.save_bit_npz(params, _OUTPUT.value)
  print(f'Wrote the student of {note} to {_OUTPUT.value}.')


if __name__ == '__main__':
  cli.run(main)
