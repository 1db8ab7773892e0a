r"""Distils a teacher into a smaller student by function matching: any teacher, any student, any
dataset. By default the demo: the teacher of `configs/teacher.py` into a BiT R14 x1/8 on
Fashion-MNIST at 56 px (about 89% student accuracy, teacher 91%, in about 6 minutes on 2 CPU cores).

  python -m big_distill.main --config=configs/distill.py:teacher=/tmp/fmnist_teacher \
      --workdir=/tmp/fmnist_student

Teacher and student see the same augmented batch, mixed up (one ratio ~ Beta(1, 1) per batch); the
loss is KL(teacher || student) at temperature 1.

Arguments (after the file's `:`, comma-separated; `--config.KEY=VALUE` sets any other key):
  teacher: a run's workdir, or a weights file (.npz, .safetensors); several joined by `+` are an
    ensemble (then `--config.teachers[1].resolution=...` per entry); '' with
    `--config.reinforcement.path=DIR`: the reinforcement's teachers (/tmp/fmnist_teacher).
  teacher_model: its architecture, as `model` of `configs/teacher.py` takes it ('': what the
    checkpoint says: a run's config, a file's layout and shapes).
  student: `bit`, `vit` or `mobilenet_v3` for that family at the demo student's size, or an
    architecture (`timm:mobilenetv3_large_100`, `family:key=value`) (bit).
  dataset: a TFDS name or `imagefolder:/path`, with the teacher's classes (fashion_mnist).
  resolution: 56.  epochs: 5 (patience: more is better).
  variant: fixed | independent | consistent | funmatch (the paper's setups; `fixed` computes the
    teacher's logits once, into WORKDIR/teacher_logits.npy).
  runlocal: a few steps on a slice of the data, to try it in a minute.
The training recipe is `configs/teacher.py`'s.
"""

from big_distill import configlib


def get_config(arg=None):
  arg = configlib.parse_arg(arg, teacher='/tmp/fmnist_teacher', teacher_model='', student='bit',
                            dataset='fashion_mnist', resolution=56, epochs=5.0,
                            variant='funmatch', runlocal=False)
  config = configlib.base_config()
  configlib.distillation(config, arg.variant)
  config.teachers = configlib.teacher_entries(
      arg.teacher, configlib.model_arg(arg.teacher_model, 'teacher', 'teacher_model'))
  config.student.model = configlib.model_arg(arg.student, 'student', 'student')
  config.temperature = 1.0
  config.mixup_alpha = 1.0

  config.input.update(dataset=arg.dataset, resolution=arg.resolution, cache=True)
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
