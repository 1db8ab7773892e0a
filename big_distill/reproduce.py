r"""The paper's comparison at small scale: four teaching setups x schedule lengths on Fashion-MNIST.

  python -m big_distill.reproduce --workdir=/tmp/fmnist_repro [--teacher=DIR] [--epochs=1,3,9]

Trains the demo teacher (`configs/fashion_mnist_teacher.py`) unless `--teacher` names a finished
run, distils it with `configs/fashion_mnist_funmatch.py` once per variant and schedule (the fixed
teacher's logits are computed once and shared), then writes `results.md` and PNG plots of every
run in the workdir (also those of earlier invocations, e.g. other `--epochs`) with
`big_distill.report`. Finished runs are reused, so the command can be re-run or extended.
"""

import os
import subprocess
import sys

from absl import app, flags

from big_distill.runs import CONFIGS, run_stage

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/fmnist_repro', 'Where every run lives.')
_TEACHER = flags.DEFINE_string('teacher', None, 'A finished teacher run (default: train one).')
_EPOCHS = flags.DEFINE_list('epochs', ['1', '3', '9'], 'Schedule lengths in epochs.')
_VARIANTS = flags.DEFINE_list('variants', ['fixed', 'independent', 'consistent', 'funmatch'],
                              'Teaching setups to compare.')
_AUGMENT = flags.DEFINE_string('augment', 'inception_crop', 'The students\' augmentation.')


def main(argv):
  del argv
  root = os.path.abspath(_WORKDIR.value)
  teacher = _TEACHER.value or os.path.join(root, 'teacher')
  if not _TEACHER.value:
    run_stage(f'{CONFIGS}/fashion_mnist_teacher.py', teacher)
  for epochs in _EPOCHS.value:
    for variant in _VARIANTS.value:
      workdir = os.path.join(root, f'{variant}_{epochs}ep')
      overrides = [f'--config.input.augment={_AUGMENT.value}']
      if variant == 'fixed':
        overrides.append(f'--config.teacher_logits_cache={root}/teacher_logits.npy')
      run_stage(f'{CONFIGS}/fashion_mnist_funmatch.py:epochs={epochs},teacher={teacher},'
                f'variant={variant}', workdir, *overrides)
  runs = sorted(os.path.join(root, d) for d in os.listdir(root)
                if os.path.exists(os.path.join(root, d, 'metrics.jsonl')) and
                os.path.join(root, d) != teacher)
  subprocess.run([sys.executable, '-m', 'big_distill.report', f'--workdirs={",".join(runs)}',
                  f'--output={root}'], check=True)


if __name__ == '__main__':
  app.run(main)
