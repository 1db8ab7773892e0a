r"""Converts weights between the layouts people use: timm state dicts, BiT and big_vision `.npz`
files, and big_distill runs.

  python -m big_distill.convert --input=resnetv2_50x1_bit.safetensors --model=timm:resnetv2_50x1_bit \
      --output=R50x1.npz                              # timm -> BiT .npz
  python -m big_distill.convert --input=/tmp/my_student --output=student.safetensors  # -> timm

`--input` is a weights file (`.npz`, `.safetensors`, `.pth`) with `--model` naming its
architecture (a registry name with arguments, `bit:depth=50,width=1`, or `timm:<name>`), or a
run's workdir (its student; `--step=best|latest|N`). The output's suffix picks the layout: `.npz`
is BiT's layout for `bit` models and big_vision's for `vit`, `.safetensors` is timm's. The file
is read exactly as a teacher or `student.init` would read it (`models.loading`) and written so
that reading it back gives the same arrays.
"""

import os
from typing import Any

from absl import flags
import numpy as np

from big_distill import build, checkpoint, cli, errors, models, workdir as workdir_lib
from big_distill.models import bit, loading, vit

_INPUT = flags.DEFINE_string('input', None, 'A weights file or a run\'s workdir.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'The file to write: .npz or .safetensors.',
                              required=True)
_MODEL = flags.DEFINE_string('model', None, 'The input file\'s architecture: NAME[:k=v,...] or '
                             'timm:<timm name> (not for a run, which knows its student).')
_STEP = flags.DEFINE_string('step', 'best', 'A run\'s checkpoint: best, latest, or a step.')
_CHANNELS = flags.DEFINE_integer('channels', 3, 'Image channels the weights are for.')
_RESOLUTION = flags.DEFINE_integer('resolution', None, 'Input side (default: a ViT file\'s own '
                                   'position-embedding grid, else 224).')

WRITERS = {  # (family, suffix) -> the layout's arrays from our parameters.
    ('bit', '.npz'): lambda params, model: bit.params_to_bit_npz_dict(params),
    ('bit', '.safetensors'): lambda params, model: bit.params_to_timm(params),
    ('vit', '.npz'): lambda params, model: vit.params_to_big_vision(params),
    ('vit', '.safetensors'): vit.params_to_timm,
}


def from_run(path: str) -> tuple[Any, str, dict[str, Any]]:
  """(model, family, variables) of a run's student at `--step`."""
  run = build.create_run_from_workdir(path)
  variables, _, note = checkpoint.read_variables(path, _STEP.value)
  loading.check_fits(variables, run.abstract_state.variables, f'{path} ({note})')
  family, _ = models.resolve(**{k: v for k, v in run.config.student.items()
                                if k not in models.LOADING_KEYS})
  print(f'Converting the student of {note}.')
  return run.student, family, variables


def main(argv):
  del argv
  suffix = os.path.splitext(_OUTPUT.value)[1]
  output = workdir_lib.path(_OUTPUT.value)
  workdir_lib.check_writable(output.parent, '--output')
  is_run = workdir_lib.path(_INPUT.value).is_dir()
  if not is_run and not _MODEL.value:
    raise errors.BadInput('--model is needed for a weights file (e.g. --model=timm:<name>).')
  if not workdir_lib.path(_INPUT.value).exists():
    raise errors.BadInput(f'--input={_INPUT.value} does not exist.')
  if is_run:
    model, family, variables = from_run(_INPUT.value)
  else:
    model, family, variables, _ = loading.model_from_file(
        _INPUT.value, models.parse_spec(_MODEL.value, '--model'), channels=_CHANNELS.value,
        resolution=_RESOLUTION.value)
  writer = WRITERS.get((family, suffix))
  if writer is None:
    formats = ', '.join(s for f, s in WRITERS if f == family) or 'none'
    raise errors.BadInput(f'--output={_OUTPUT.value}: {family} weights can be written as '
                          f'{formats}.')
  arrays = {k: np.ascontiguousarray(v, np.float32)
            for k, v in writer(variables['params'], model).items()}
  output.parent.mkdir(parents=True, exist_ok=True)
  if suffix == '.npz':
    with output.open('wb') as f:
      np.savez(f, **arrays)
  else:
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    output.write_bytes(safetensors_numpy.save(arrays))
  print(f'Wrote {len(arrays)} arrays of a {family} model to {_OUTPUT.value}.')


if __name__ == '__main__':
  cli.run(main)
