r"""Trains the demo teacher on Fashion-MNIST on labels: BiT R14 x1/4 (or a small ViT, `model=vit`).

  python -m big_distill.main --config=configs/fashion_mnist_teacher.py \
      --workdir=/tmp/fmnist_teacher

Arguments (`--config=configs/fashion_mnist_teacher.py:epochs=4,runlocal=True`):
  epochs: training length.  model: bit or vit (`configlib.DEMO_TEACHERS`).
  runlocal: a few steps on a slice of the data, for a quick try.
Expected: about 91% test accuracy in about 8 minutes on 2 CPU cores.
"""

import ml_collections

from big_distill import configlib, errors


def get_config(arg=None):
  arg = configlib.parse_arg(arg, epochs=6.0, model='bit', runlocal=False)
  if arg.model not in configlib.DEMO_TEACHERS:
    raise errors.BadInput(f'model={arg.model!r}; use one of {", ".join(configlib.DEMO_TEACHERS)}.')
  config = configlib.base_config()
  config.mode = 'supervised'
  config.input.resolution = 56  # Upsampled: BiT's stride-32 trunk needs more than 28 pixels.
  config.student = ml_collections.ConfigDict({**configlib.DEMO_TEACHERS[arg.model], 'init': ''})
  configlib.demo_recipe(config, arg.epochs, arg.runlocal)
  return config
