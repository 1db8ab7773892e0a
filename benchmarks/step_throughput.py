r"""Throughput of the parts of a distillation step, measured in one process. One JSON line.

  python benchmarks/step_throughput.py --config=configs/fashion_mnist_funmatch.py

Reports images/s of: the teachers' forward pass, the student's supervised train step, the
distillation step (mixup + teachers + student + KL + update) and the input pipeline. Teachers are
randomly initialised (speed does not depend on the weights), so no checkpoint is needed.
"""

import functools
import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from big_distill import parallel, steps
from big_distill.data import input_pipeline
from big_distill.models import from_config
from big_distill.optim import make_optimizer
from big_distill.teachers import Teachers

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A big_distill config file.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed calls per measurement (after a warm-up).')


def images_per_second(fn, batch_size: int, n: int) -> float:
  """Calls `fn` once to compile, then times `n` calls (blocking on the result)."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(n):
    out = fn()
  jax.block_until_ready(out)
  return n * batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  config = _CONFIG.value
  mesh = parallel.make_mesh()
  builder = input_pipeline.get_builder(config.input.dataset, config.input.data_dir)
  num_classes = input_pipeline.num_classes(builder)
  batches = input_pipeline.train_batches(config.input, builder, seed=0)
  batch = parallel.to_global(next(batches), mesh)
  bs = config.input.batch_size
  rng = jax.random.PRNGKey(0)
  tx, schedule = make_optimizer(config, 1000)
  student = from_config(config.student, num_classes)
  state = steps.init_state(student, tx, rng, batch['image'].shape[1:])
  models = tuple(from_config(t, num_classes) for t in config.teachers)
  teachers = Teachers(models, tuple(t.get('resolution') for t in config.teachers))
  teacher_params = tuple(
      m.init(rng, jnp.zeros((1, r or config.input.resolution, r or config.input.resolution,
                             batch['image'].shape[-1])))['params']
      for m, r in zip(models, teachers.resolutions))

  teacher_fwd = jax.jit(functools.partial(teachers.log_probs, temperature=config.temperature))
  student_step = jax.jit(functools.partial(steps.supervised_step, model=student, tx=tx,
                                           schedule=schedule))
  distill_step = jax.jit(functools.partial(
      steps.distill_step, student=student, teachers=teachers, tx=tx, schedule=schedule,
      variant=config.variant, temperature=config.temperature, mixup_alpha=config.mixup_alpha))
  n = _STEPS.value
  result = {
      'config': config_flags.get_config_filename(flags.FLAGS['config']),
      'devices': jax.device_count(), 'batch_size': bs,
      'teacher_forward_img_s': images_per_second(
          lambda: teacher_fwd(teacher_params, batch['image']), bs, n),
      'student_step_img_s': images_per_second(
          lambda: student_step(state, batch, rng)[1], bs, n),
      'distill_step_img_s': images_per_second(
          lambda: distill_step(state, teacher_params, batch, rng)[1], bs, n),
      'input_img_s': images_per_second(lambda: next(batches)['label'], bs // jax.process_count(),
                                       max(n, 50)),
  }
  # Distill step time over (teacher forward + student step) time: <= 1 means nothing is wasted.
  result['step_efficiency'] = (1 / result['distill_step_img_s']) / (
      1 / result['teacher_forward_img_s'] + 1 / result['student_step_img_s'])
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
