r"""The Fashion-MNIST demo: train the teacher, distil it into a smaller student, print a table.

  python -m big_distill.demo --workdir=/tmp/big_distill_demo

Runs the two documented commands (`configs/fashion_mnist_teacher.py`, then
`configs/fashion_mnist_funmatch.py` with the teacher's checkpoint) through `big_distill.main`,
reusing finished stages in the workdir, and reads the results back from `metrics.jsonl`.
"""

import json
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/big_distill_demo', 'Where both runs live.')
_TEACHER_EPOCHS = flags.DEFINE_float('teacher_epochs', None, 'Override the teacher config.')
_STUDENT_EPOCHS = flags.DEFINE_float('student_epochs', None, 'Override the student config.')

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def last_metrics(workdir: str) -> dict[str, float]:
  """The newest value of every key in `workdir/metrics.jsonl`."""
  latest = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      latest.update(json.loads(line))
  return latest


def run_stage(config: str, workdir: str) -> float:
  """Runs one training command, echoing it; returns its wall time in seconds."""
  cmd = [sys.executable, '-m', 'big_distill.main', f'--config={config}', f'--workdir={workdir}']
  print('+', shlex.join(cmd), flush=True)
  start = time.time()
  subprocess.run(cmd, check=True)
  return time.time() - start


def main(argv):
  del argv
  teacher_dir = os.path.join(_WORKDIR.value, 'teacher')
  student_dir = os.path.join(_WORKDIR.value, 'student')
  teacher_args = f':epochs={_TEACHER_EPOCHS.value}' if _TEACHER_EPOCHS.value else ''
  student_args = f'teacher={teacher_dir}' + (
      f',epochs={_STUDENT_EPOCHS.value}' if _STUDENT_EPOCHS.value else '')
  t_teacher = run_stage(f'{CONFIGS}/fashion_mnist_teacher.py{teacher_args}', teacher_dir)
  t_student = run_stage(f'{CONFIGS}/fashion_mnist_funmatch.py:{student_args}', student_dir)
  teacher, student = last_metrics(teacher_dir), last_metrics(student_dir)
  rows = [
      ('teacher test accuracy', f'{teacher["eval/accuracy"]:.2%}'),
      ('student test accuracy', f'{student["eval/student_accuracy"]:.2%}'),
      ('top-1 agreement', f'{student["eval/agreement_top1"]:.2%}'),
      ('teacher wall time', f'{t_teacher / 60:.1f} min'),
      ('student wall time', f'{t_student / 60:.1f} min'),
  ]
  print('\n| big_distill demo (Fashion-MNIST) | |\n|---|---|')
  for name, value in rows:
    print(f'| {name} | {value} |')


if __name__ == '__main__':
  app.run(main)
