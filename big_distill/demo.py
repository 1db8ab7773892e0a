r"""The Fashion-MNIST demo: train the teacher, distil it into a smaller student, print a table.

  python -m big_distill.demo --workdir=/tmp/big_distill_demo

Runs the two documented commands (`configs/teacher.py`, then
`configs/distill.py` with the teacher's checkpoint) through `big_distill.main`,
reusing finished stages in the workdir, and reads the results back from their metrics.
"""

import os

from absl import flags

from big_distill import cli, workdir as workdir_lib
from big_distill.runs import CONFIGS, run_stage

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', '/tmp/big_distill_demo', 'Where both runs live.')
  flags.DEFINE_float('teacher_epochs', None, 'Override the teacher config.')
  flags.DEFINE_float('student_epochs', None, 'Override the student config.')
  for name in ('teacher_epochs', 'student_epochs'):  # Refused before the teacher's minutes.
    flags.register_validator(name, lambda v: v is None or v > 0, 'use a positive number of epochs')


def main(argv):
  del argv
  teacher_dir = os.path.join(FLAGS.workdir, 'teacher')
  student_dir = os.path.join(FLAGS.workdir, 'student')
  teacher_args = f':epochs={FLAGS.teacher_epochs}' if FLAGS.teacher_epochs else ''
  student_args = f'teacher={teacher_dir}' + (
      f',epochs={FLAGS.student_epochs}' if FLAGS.student_epochs else '')
  t_teacher = run_stage('1/2 teacher', f'{CONFIGS}/teacher.py{teacher_args}',
                        teacher_dir)
  t_student = run_stage('2/2 student', f'{CONFIGS}/distill.py:{student_args}',
                        student_dir)
  teacher, student = (workdir_lib.last_metrics(d) for d in (teacher_dir, student_dir))
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
  define_flags()
  cli.run(main, announce=lambda: f'big_distill.demo: a teacher and its student in {FLAGS.workdir}.')
