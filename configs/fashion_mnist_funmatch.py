r"""Distils the demo teacher into a smaller student on Fashion-MNIST by function matching.

  python -m big_distill.main --config=configs/fashion_mnist_funmatch.py \
      --workdir=/tmp/fmnist_student \
      --config.teachers[0].checkpoint=/tmp/fmnist_teacher

The teacher (BiT R14, width 1/4, from `configs/fashion_mnist_teacher.py`) and the student (by
default BiT R14, width 1/8) see the same mixed-up batch; the loss is KL(teacher || student) at
`temperature`.
Arguments: `epochs`, `teacher` (the teacher run's workdir or checkpoints dir; several joined by
`+` are an ensemble), `teacher_model` (bit or vit: `configlib.DEMO_TEACHERS`, as the teacher
config's `model`), `variant` (fixed, independent, consistent or funmatch; `fixed` precomputes
the teacher's logits into the workdir's `teacher_logits.npy`), `student` (bit, vit or
mobilenet_v3: `STUDENTS`), `runlocal`.
Expected: about 89% student accuracy (teacher 91%) in about 5 minutes on 2 CPU cores.
"""

import ml_collections

from big_distill import configlib, errors


# The students of `student=`, each from scratch at 56 px.
STUDENTS = {
    'bit': dict(model='bit', depth=14, width=0.125),  # 0.13 M parameters.
    'vit': dict(model='vit', patch_size=8, width=64, depth=4, num_heads=4, mlp_dim=128,
                pool_type='gap'),  # 49 tokens; 0.14 M parameters.
    'mobilenet_v3': dict(model='mobilenet_v3', variant='small', width=0.5),
}


def get_config(arg=None):
  arg = configlib.parse_arg(arg, epochs=5.0, teacher='/tmp/fmnist_teacher', teacher_model='bit',
                            variant='funmatch', student='bit', runlocal=False)
  if arg.student not in STUDENTS:
    raise errors.BadInput(f'student={arg.student!r}; use one of {", ".join(STUDENTS)}.')
  if arg.teacher_model not in configlib.DEMO_TEACHERS:
    raise errors.BadInput(f'teacher_model={arg.teacher_model!r}; use one of '
                          f'{", ".join(configlib.DEMO_TEACHERS)}.')
  config = configlib.base_config()
  configlib.distillation(config, arg.variant)
  config.input.resolution = 56
  config.teachers = configlib.teacher_entries(arg.teacher,
                                              **configlib.DEMO_TEACHERS[arg.teacher_model])
  config.student = ml_collections.ConfigDict({**STUDENTS[arg.student], 'init': ''})
  config.temperature = 1.0
  config.mixup_alpha = 1.0
  configlib.demo_recipe(config, arg.epochs, arg.runlocal)
  return config
