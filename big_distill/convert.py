r"""Converts weights between the layouts people use: timm state dicts, BiT and big_vision `.npz`
files, and big_distill runs.

  python -m big_distill.convert --input=resnetv2_50x1_bit.safetensors --output=R50x1.npz
  python -m big_distill.convert --input=/tmp/my_student --output=student.safetensors  # -> timm

`--input` is a weights file (`.npz`, `.safetensors`, `.pth`), whose architecture is what its
layout and shapes say unless `--model` names it (a family with arguments, `bit:depth=50,width=1`,
or `timm:<name>`, which also sets the input normalisation), or a run's workdir (its student;
`--step=best|latest|N`). The output's suffix picks the layout among the family's (its record's
`layouts`): `.npz` is BiT's layout for `bit` models and big_vision's for `vit`, `.safetensors` is
timm's for every family. The file is read exactly as a teacher or `student.init` would read it
(`models.loading`) and written so that reading it back gives the same arrays.
"""

import os
from typing import Any

from absl import flags

from big_distill import cli, errors, workdir as workdir_lib


def from_run(path: str, step: str) -> tuple[Any, Any, dict[str, Any], str]:
  """(spec, model, variables, which checkpoint) of a run's student at `step`."""
  from big_distill import build, checkpoint  # pylint: disable=g-import-not-at-top
  from big_distill.models import loading  # pylint: disable=g-import-not-at-top
  run = build.create_run_from_workdir(path)
  variables, _, note = checkpoint.read_variables(path, step)
  loading.check_fits(variables, run.abstract_state.variables, f'{path} ({note})')
  return run.student_spec, run.student, variables, note


def convert(source: str, output: str, *, model: str | None = None, step: str = 'best',
            channels: int = 3, resolution: int | None = None) -> str:
  """Writes the weights of `source` (a file, or a run's student at `step`) to `output` in the
  layout of its suffix; returns what it did, in words. `model`: the file's architecture where it
  is not what the file says."""
  from big_distill import models  # pylint: disable=g-import-not-at-top  # Heavy: JAX, Flax.
  from big_distill.models import loading  # pylint: disable=g-import-not-at-top
  suffix = os.path.splitext(output)[1]
  workdir_lib.check_writable(workdir_lib.path(output).parent, '--output')
  if not workdir_lib.path(source).exists():
    raise errors.BadInput(f'--input={source} does not exist.')
  note = ''
  if workdir_lib.path(source).is_dir():
    spec, net, variables, note = from_run(source, step)
    note = f'the student of {note}: '
  else:
    spec, net, variables, _ = loading.model_from_file(
        source, models.resolve(model, '--model') if model else None, channels=channels,
        resolution=resolution)
  layout = spec.family.writer(suffix)
  if layout is None:
    formats = ', '.join(f'{l.suffix} ({l.name})' for l in spec.family.layouts)
    raise errors.BadInput(f'--output={output}: {spec.family.name} weights can be written as '
                          f'{formats}.')
  arrays = layout.write(variables, net)
  loading.write_arrays(output, arrays)
  return f'Wrote {note}{len(arrays)} arrays of {spec} to {output} ({layout.name} layout).'


def define_flags() -> None:
  flags.DEFINE_string('input', None, 'A weights file or a run\'s workdir.', required=True)
  flags.DEFINE_string('output', None, 'The file to write: .npz or .safetensors.', required=True)
  flags.DEFINE_string('model', None, 'The input file\'s architecture: family[:k=v,...] or '
                      'timm:<timm name> (default: what the file says; not for a run, which knows '
                      'its student).')
  flags.DEFINE_string('step', 'best', 'A run\'s checkpoint: best, latest, or a step.')
  flags.DEFINE_integer('channels', 3, 'Image channels the weights are for.', lower_bound=1)
  flags.DEFINE_integer('resolution', None, 'Input side (default: a ViT file\'s own '
                       'position-embedding grid, else 224).', lower_bound=1)


def main(argv):
  del argv
  f = flags.FLAGS
  print(convert(f.input, f.output, model=f.model, step=f.step, channels=f.channels,
                resolution=f.resolution))


if __name__ == '__main__':
  define_flags()
  cli.run(main, announce=lambda: f'big_distill.convert: reading {flags.FLAGS.input}.')
