r"""The paper's comparison at small scale: four teaching setups x schedule lengths on Fashion-MNIST.

  python -m big_distill.reproduce --workdir=/tmp/fmnist_repro [--teacher=DIR] [--epochs=1,3,9]

Trains the demo teacher (`configs/fashion_mnist_teacher.py`) unless `--teacher` names a finished
run, distils it with `configs/fashion_mnist_funmatch.py` once per variant and schedule (the fixed
teacher's logits are computed once and shared), then writes `results.md` and PNG plots of every
run in the workdir (also those of earlier invocations, e.g. other `--epochs`) with
`big_distill.report`. Finished runs are reused, so the command can be re-run or extended.
"""

import os

from absl import flags

from big_distill import cli, errors, variants, workdir as workdir_lib
from big_distill.runs import CONFIGS, run_command, run_stage

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/fmnist_repro', 'Where every run lives.')
_TEACHER = flags.DEFINE_string('teacher', None, 'A finished teacher run (default: train one).')
_EPOCHS = flags.DEFINE_list('epochs', ['1', '3', '9'], 'Schedule lengths in epochs.')
_VARIANTS = flags.DEFINE_list('variants', list(variants.NAMES), 'Teaching setups to compare.')
_AUGMENT = flags.DEFINE_string('augment', 'inception_crop', 'The students\' augmentation.')


def main(argv):
  del argv
  for name in _VARIANTS.value:
    if name not in variants.VARIANTS:
      raise errors.BadInput(f'--variants: {name!r} is not a variant; use '
                            f'{", ".join(variants.NAMES)}.')
  for epochs in _EPOCHS.value:
    try:
      float(epochs)
    except ValueError:
      raise errors.BadInput(f'--epochs: {epochs!r} is not a number of epochs.') from None
  root = os.path.abspath(_WORKDIR.value)
  teacher = _TEACHER.value or os.path.join(root, 'teacher')
  stages = [(epochs, name) for epochs in _EPOCHS.value for name in _VARIANTS.value]
  if not _TEACHER.value:
    run_stage(f'0/{len(stages)} teacher', f'{CONFIGS}/fashion_mnist_teacher.py', teacher)
  for i, (epochs, name) in enumerate(stages, 1):
    overrides = [f'--config.input.augment={_AUGMENT.value}']
    if variants.get(name).cacheable:
      overrides.append(f'--config.teacher_logits_cache={root}/{workdir_lib.TEACHER_LOGITS}')
    run_stage(f'{i}/{len(stages)} {name}, {epochs} epochs',
              f'{CONFIGS}/fashion_mnist_funmatch.py:epochs={epochs},teacher={teacher},'
              f'variant={name}', os.path.join(root, f'{name}_{epochs}ep'), *overrides)
  runs = sorted(os.path.join(root, d) for d in os.listdir(root)
                if os.path.exists(os.path.join(root, d, workdir_lib.METRICS)) and
                os.path.join(root, d) != teacher)
  run_command('report', 'big_distill.report', f'--workdirs={",".join(runs)}', f'--output={root}')


if __name__ == '__main__':
  cli.run(main)
