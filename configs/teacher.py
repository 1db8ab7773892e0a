r"""Trains a model on labels: a teacher for your data, or a supervised baseline. By default the
demo's teacher, a BiT R14 x1/4 on Fashion-MNIST at 56 px (about 91% test accuracy in about 10
minutes on 2 CPU cores).

  python -m big_distill.main --config=configs/teacher.py --workdir=/tmp/fmnist_teacher
  python -m big_distill.main --workdir=/tmp/my_teacher \
      --config=configs/teacher.py:dataset=imagefolder:/data/pets,resolution=128,init=BiT-M-R50x1.npz

Arguments (after the file's `:`, comma-separated; `--config.KEY=VALUE` sets any other key):
  dataset: a TFDS name or `imagefolder:/path` (fashion_mnist).
  model: the architecture: `bit`, `vit` or `mobilenet_v3` for that family at the demo's size,
    `timm:<name>`, or `family:key=value` with one argument ('': that of `init`, else `bit`;
    `--config.student.model=bit:depth=50,width=1` for several arguments).
  init: weights to fine-tune from (a .npz, .safetensors or run; a head for another class count is
    replaced) ('': from scratch).
  resolution: the input side (56: BiT's stride-32 trunk needs more than Fashion-MNIST's 28 px).
  epochs: 6.  runlocal: a few steps on a slice of the data, to try it in a minute.
Adam at lr 3e-3, weight decay 1e-4, cosine decay after 200 warm-up steps (fewer on a small
dataset), train images cached in memory (encoded), eval and checkpoint every 500 steps.
"""

from big_distill import configlib


def get_config(arg=None):
  arg = configlib.parse_arg(arg, dataset='fashion_mnist', model='', init='', resolution=56,
                            epochs=6.0, runlocal=False)
  config = configlib.base_config()
  config.mode = 'supervised'
  model = arg.model or ('' if arg.init else 'bit')  # '': the architecture of `init`.
  config.student.update(model=configlib.model_arg(model, 'teacher', 'model'), init=arg.init)

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
