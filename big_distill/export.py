r"""Exports a run's student: as a weights file for other code, or as a model to deploy.

  python -m big_distill.export --workdir=DIR --output=PATH [--format=npz|savedmodel|tflite]
      [--int8] [--batch_size=N] [--step=best|latest|N]

- `npz` (default): the weights in the family's `.npz` layout (its record's), BiT's for `bit`
  students and big_vision's for `vit` ones, for any code that reads those checkpoints
  (`big_distill.convert` writes the other layouts, e.g. timm's `.safetensors`).
- `savedmodel`: a TF SavedModel directory (any family) with the eval preprocessing inside; its
  signatures take encoded images or uint8 pixels (`serving`).
- `tflite`: a TFLite file taking `--batch_size` (default 1) uint8 images at the run's resolution
  a call, float32, or with `--int8` dynamic-range quantised. Beside it, `PATH.json`: the metadata
  a SavedModel holds inside.

By default the checkpoint with the best eval accuracy (runs with `keep_best`), else the latest;
the command says which one it wrote. Docs: docs/deployment.md.
"""

from absl import flags

from big_distill import cli, errors, workdir as workdir_lib

FORMATS = ('npz', 'savedmodel', 'tflite')  # `serving.FORMATS` after the first.

def check_flags(fmt: str, output: str, int8: bool, batch_size: int | None) -> None:
  """Bad flags and outputs, before anything is read or written."""
  if fmt not in FORMATS:
    raise errors.BadInput(f'--format={fmt}; use one of {", ".join(FORMATS)}.')
  if int8 and fmt != 'tflite':
    raise errors.BadInput(f'--int8 quantises a TFLite export; add --format=tflite (not {fmt}).')
  if batch_size is not None and fmt != 'tflite':
    raise errors.BadInput(f'--batch_size fixes a TFLite export\'s images per call; add '
                          f'--format=tflite (not {fmt}).')
  if batch_size is not None and batch_size < 1:
    raise errors.BadInput(f'--batch_size={batch_size}: a TFLite export takes at least 1 image '
                          'per call.')
  path = workdir_lib.path(output)
  if fmt == 'savedmodel':
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
      raise errors.BadInput(f'--output={output} exists; a SavedModel is written into a new or '
                            'empty directory.')
  elif path.is_dir():
    raise errors.BadInput(f'--output={output} is a directory; name the .{fmt} file to write.')
  workdir_lib.check_writable(path.parent, '--output')


def export(workdir: str, output: str, fmt: str = 'npz', *, int8: bool = False,
           batch_size: int | None = None, step: str = 'best') -> str:
  """Writes the student of the run in `workdir` at `step` to `output` as `fmt`; returns what it
  wrote, in words."""
  check_flags(fmt, output, int8, batch_size)
  from big_distill import build, checkpoint, serving  # pylint: disable=g-import-not-at-top
  from big_distill.models import loading  # pylint: disable=g-import-not-at-top
  run = build.create_run_from_workdir(workdir)
  layout = run.student_spec.family.writer('.npz')
  if fmt == 'npz' and layout is None:
    raise errors.BadInput(f'--format=npz: a {run.student_spec.family.name} student has no .npz '
                          'layout; use --format=savedmodel or --format=tflite, or '
                          'big_distill.convert for its other layouts.')
  variables, step, note = checkpoint.read_variables(workdir, step)
  loading.check_fits(variables, run.abstract_state.variables, f'{workdir} ({note})')
  if fmt == 'npz':
    loading.write_arrays(output, layout.write(variables, run.student))
    return f'Wrote the student of {note} to {output} ({layout.name} layout).'
  meta = serving.save(run, variables, output, fmt, int8=int8, batch=batch_size or 1,
                      checkpoint=dict(workdir=str(workdir_lib.path(workdir)), step=step,
                                      which=note))
  kind = 'an int8 TFLite model' if int8 else {'savedmodel': 'a SavedModel',
                                              'tflite': 'a TFLite model'}[fmt]
  return f'Wrote the student of {note} to {output} ({kind}; metadata: {meta}).'


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The run whose student to export.', required=True)
  flags.DEFINE_string('output', None, 'The file (npz, tflite) or directory (savedmodel) to write.',
                      required=True)
  flags.DEFINE_string('format', 'npz', f'One of {", ".join(FORMATS)}.')
  flags.DEFINE_bool('int8', False, 'tflite: dynamic-range int8 quantisation.')
  flags.DEFINE_integer('batch_size', None, 'tflite: images per call (default 1).')
  flags.DEFINE_string('step', 'best', 'Checkpoint: best, latest, or a step number.')


def main(argv):
  del argv
  f = flags.FLAGS
  print(export(f.workdir, f.output, f.format, int8=f.int8, batch_size=f.batch_size, step=f.step))


if __name__ == '__main__':
  define_flags()
  cli.run(main, announce=lambda: f'big_distill.export: the student of {flags.FLAGS.workdir} as '
          f'{flags.FLAGS.format}.')
