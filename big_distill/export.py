r"""Exports a run's student: as a weights file for other code, or as a model to deploy.

  python -m big_distill.export --workdir=DIR --output=PATH [--format=npz|savedmodel|tflite]
      [--int8] [--batch_size=N] [--step=best|latest|N]

- `npz` (default): the weights in the family's `.npz` layout, BiT's for `bit` students and
  big_vision's for `vit` ones, for any code that reads those checkpoints.
- `savedmodel`: a TF SavedModel directory (any family) with the eval preprocessing inside; its
  signatures take encoded images or uint8 pixels (`serving`).
- `tflite`: a TFLite file taking `--batch_size` (default 1) uint8 images at the run's resolution
  a call, float32, or with `--int8` dynamic-range quantised. Beside it, `PATH.json`: the metadata
  a SavedModel holds inside.

By default the checkpoint with the best eval accuracy (runs with `keep_best`), else the latest;
the command says which one it wrote. Docs: docs/deployment.md.
"""

from absl import flags
import numpy as np

from big_distill import build, checkpoint, cli, errors, models, serving, workdir as workdir_lib
from big_distill.models import bit, loading, vit

FORMATS = ('npz', *serving.FORMATS)
NPZ_WRITERS = {  # Family -> writes its `.npz` layout of the parameters to a path.
    'bit': bit.save_bit_npz,
    'vit': lambda params, path: _savez(vit.params_to_big_vision(params), path),
}

_WORKDIR = flags.DEFINE_string('workdir', None, 'The run whose student to export.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'The file (npz, tflite) or directory (savedmodel) '
                              'to write.', required=True)
_FORMAT = flags.DEFINE_string('format', 'npz', f'One of {", ".join(FORMATS)}.')
_INT8 = flags.DEFINE_bool('int8', False, 'tflite: dynamic-range int8 quantisation.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'tflite: images per call (default 1).')
_STEP = flags.DEFINE_string('step', 'best', 'Checkpoint: best, latest, or a step number.')


def _savez(arrays: dict[str, np.ndarray], path: str) -> None:
  with workdir_lib.path(path).open('wb') as f:
    np.savez(f, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})


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


def family(run: build.Run) -> str:
  """The student's model family (`bit`, `vit`, `mobilenet_v3`)."""
  return models.resolve(**{k: v for k, v in run.config.student.items()
                           if k not in models.LOADING_KEYS})[0]


def main(argv):
  del argv
  fmt, output = _FORMAT.value, _OUTPUT.value
  check_flags(fmt, output, _INT8.value, _BATCH.value)
  run = build.create_run_from_workdir(_WORKDIR.value)
  if fmt == 'npz' and family(run) not in NPZ_WRITERS:
    raise errors.BadInput(f'--format=npz: a {family(run)} student has no .npz layout; use '
                          f'--format=savedmodel or --format=tflite.')
  variables, step, note = checkpoint.read_variables(_WORKDIR.value, _STEP.value)
  loading.check_fits(variables, run.abstract_state.variables, f'{_WORKDIR.value} ({note})')
  if fmt == 'npz':
    workdir_lib.path(output).parent.mkdir(parents=True, exist_ok=True)
    NPZ_WRITERS[family(run)](variables['params'], output)
    print(f'Wrote the student of {note} to {output}.')
    return
  meta = serving.save(run, variables, output, fmt, int8=_INT8.value, batch=_BATCH.value or 1,
                      checkpoint=dict(workdir=str(workdir_lib.path(_WORKDIR.value)), step=step,
                                      which=note))
  kind = 'an int8 TFLite model' if _INT8.value else {'savedmodel': 'a SavedModel',
                                                     'tflite': 'a TFLite model'}[fmt]
  print(f'Wrote the student of {note} to {output} ({kind}; metadata: {meta}).')


if __name__ == '__main__':
  cli.run(main)
