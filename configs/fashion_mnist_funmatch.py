r"""Distils the demo teacher into a smaller BiT student on Fashion-MNIST by function matching.

  python -m big_distill.main --config=configs/fashion_mnist_funmatch.py \
      --workdir=/tmp/fmnist_student \
      --config.teachers[0].checkpoint=/tmp/fmnist_teacher

The teacher (R14, width 1/4, from `configs/fashion_mnist_teacher.py`) and the student (R14,
width 1/8) see the same mixed-up batch; the loss is KL(teacher || student) at `temperature`.
Arguments: `epochs`, `teacher` (the teacher run's workdir or checkpoints dir; several joined by
`+` are an ensemble), `variant` (fixed, independent, consistent or funmatch; `fixed` precomputes
the teacher's logits into the workdir's `teacher_logits.npy`), `runlocal`.
Expected: about 89% student accuracy (teacher 91%) in about 5 minutes on 2 CPU cores.
"""

from big_distill import configlib


def get_config(arg=None):
  arg = configlib.parse_arg(arg, epochs=5.0, teacher='/tmp/fmnist_teacher',
                            variant='funmatch', runlocal=False)
  config = configlib.base_config()
  configlib.distillation(config, arg.variant)
  config.input.resolution = 56
  config.teachers = configlib.teacher_entries(arg.teacher, depth=14, width=0.25)
  config.student.depth = 14
  config.student.width = 0.125
  config.temperature = 1.0
  config.mixup_alpha = 1.0
  config.input.cache = True
  config.total_epochs = arg.epochs
  config.optimizer = dict(name='adam')
  config.lr = 3e-3
  config.wd = 1e-4
  config.schedule = dict(name='cosine', warmup_steps=200)
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  if arg.runlocal:
    configlib.shrink_for_local_run(config)
  return config
