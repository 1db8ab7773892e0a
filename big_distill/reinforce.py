r"""Pays the teacher once: stores the teachers' targets of K views of every training example (a
reinforcement, `reinforcement`), which any number of student runs then replay
(`--config.reinforcement.path=DIR`) without running, or even loading, the teachers.

  python -m big_distill.reinforce --config=configs/distill.py:teacher=/tmp/fmnist_teacher \
      --workdir=/tmp/fmnist_reinforced --views=100 [--top_k=5 --dtype=float16]
  python -m big_distill.reinforce --config=... --workdir=DIR --views=30 --teacher_fn=mine:logits

The views are exactly those a live run of the config feeds its teachers (an ensemble, each at its
resolution) in its first K epochs: the same crops and flips, mixup partners and ratios. Stored per
view: the teachers' combined log-probabilities at the config's temperature (all classes in
float32 by default, or `--top_k` of them and the rest's mass, in `--dtype`), the example's index
and the step's mixup ratio, never its pixels; and the teachers' log-probabilities on every eval
set. The same command continues an interrupted one (each process resumes from its progress);
at the end it prints, as JSON, what it cost: teacher forwards, bytes per view, total size.

`--teacher_fn=module:function` takes the targets from a Python function instead of the config's
teachers (`teacher_fn`: float32 images in [0, 1] at the resolution of the config's first teacher
entry, else the student's, in, logits out), run in a process of its own: a PyTorch or timm model,
an ONNX or TFLite file, a service can teach.

Several processes (hosts) make one reinforcement together, as they run `big_distill.main` (the same
flags or environment, `main`): each computes and writes the rows of its data shards.
"""

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any

from absl import flags

from big_distill import cli, errors, main as main_lib, workdir

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The reinforcement\'s directory (local or gs://).',
                      required=True)
  flags.DEFINE_integer('views', None, 'K: views of every training example (the live run\'s '
                       'first K epochs).', required=True)
  flags.DEFINE_integer('top_k', None, 'Store the k largest log-probabilities and the rest\'s '
                       'mass (default: every class).')
  flags.DEFINE_enum('dtype', None, ['float32', 'float16', 'bfloat16'], 'Storage dtype of the '
                    'log-probabilities (default: float32, float16 with --top_k).')
  flags.DEFINE_string('teacher_fn', None, 'module:function giving the targets instead of the '
                      'config\'s teachers (see the module docstring).')
  flags.DEFINE_integer('steps_per_chunk', 16, 'Steps in a stored chunk (the resume granularity).',
                       lower_bound=1)
  main_lib.define_process_flags()


def check_flags(views: int | None, top_k: int | None, num_classes: int | None = None) -> None:
  if views is None or views < 1:
    raise errors.BadInput(f'--views={views}; store at least one view of every example.')
  if top_k is not None and (top_k < 1 or (num_classes and top_k >= num_classes)):
    raise errors.BadInput(f'--top_k={top_k}; use 1 to {num_classes - 1 if num_classes else "C-1"}'
                          f' (the dataset has {num_classes} classes), or leave it out for all.')


def reinforce(config: Any, workdir: str, views: int, *, top_k: int | None = None,
              dtype: str | None = None, teacher_fn: str | None = None,
              steps_per_chunk: int = 16) -> dict[str, Any]:
  """Makes (or continues) the reinforcement of `config` in `workdir` (see the module
  docstring); returns what it cost."""
  check_flags(views, top_k)
  # pylint: disable=g-import-not-at-top  # JAX and TensorFlow load when the command runs.
  import jax
  import numpy as np
  from big_distill import build, configlib, console, reinforcement
  from big_distill import targets as targets_lib, teacher_fn as teacher_fn_lib
  from big_distill import teachers as teachers_lib
  from big_distill.data import input_pipeline, locks
  from jax.experimental import multihost_utils
  # pylint: enable=g-import-not-at-top
  if config.mode != 'distill' or config.reinforcement.path or config.teacher_logits_cache:
    raise errors.BadInput('reinforce stores a distillation\'s teacher targets: give a config with '
                          "config.mode='distill', without config.reinforcement.path or "
                          'config.teacher_logits_cache.')
  run = build.create_run(config, teacher_params='none' if teacher_fn else 'load')
  config, data = run.config, run.data
  check_flags(views, top_k, data.num_classes)
  fingerprint = targets_lib.fingerprint(config, data)
  if teacher_fn:
    fingerprint['teachers'] = {'function': teacher_fn}
  eval_sets = run.eval_sets()
  splits = {build.EVAL: (data.builder, config.input.eval_split), **data.evals}
  layout = reinforcement.Layout(
      steps=configlib.total_steps(_epochs(config, views), data.num_train),
      batch_size=config.input.batch_size, num_classes=data.num_classes, top_k=top_k,
      dtype=dtype or ('float16' if top_k else 'float32'), steps_per_chunk=steps_per_chunk,
      eval_sets={name: input_pipeline.num_examples(builder, split)
                 for name, (builder, split) in splits.items()})
  function = teacher_fn_lib.TeacherFunction(teacher_fn, data.num_classes) if teacher_fn else None
  started = time.time()
  with contextlib.ExitStack() as held:  # This workdir's lock, until it is complete.
    try:
      if function:  # Refused before anything is written if it cannot answer.
        side = _teacher_side(config)
        function.logits(np.zeros((1, side, side, data.channels), np.float32))
      held.enter_context(locks.only_user(workdir))
      store = reinforcement.create(workdir, dict(
          format=reinforcement.FORMAT, fingerprint=fingerprint, views=views,
          layout=dataclasses.asdict(layout),
          teachers=None if teacher_fn else teachers_lib.fingerprint(
              config.teachers, run.teacher_params)['teachers']))
      rows = targets_lib.process_rows(layout.batch_size)
      store.create_arrays(rows.stop - rows.start)
      start = min(store.progress(p) for p in range(jax.process_count()))
      start -= start % steps_per_chunk  # A whole chunk: its steps are written together.
      targets_of, eval_logp_of = _targets_fns(run, function)
      batches = run.train_batches(start, with_index=True)
      buffer: dict[str, list[Any]] = {}
      with console.Bar('reinforce', total=layout.steps, initial=start) as bar:
        for step in range(start, layout.steps):
          host = next(batches)
          index = host.pop('index')
          logp, ratio = targets_of(host, step, config.temperature)
          stored = {**reinforcement.encode(logp, top_k), 'index': index}
          if jax.process_index() == 0:  # Every process's ratio is the same: one writes it.
            stored['ratio'] = ratio
          for name, value in stored.items():
            buffer.setdefault(name, []).append(value)
          if (step + 1) % steps_per_chunk == 0 or step + 1 == layout.steps:
            store.write_steps(step + 1 - len(buffer['index']), rows,
                              {k: np.stack(v) for k, v in buffer.items()})
            store.set_progress(jax.process_index(), step + 1)
            buffer = {}
          bar.update()
      tables = {name: teachers_lib.compute_logits(  # Every process's rows.
          lambda batch: eval_logp_of(batch['image']), ds.as_numpy_iterator(),
          layout.eval_sets[name]) for name, ds in eval_sets.items()}
    finally:
      if function:
        function.close()
    teacher_count = 1 if teacher_fn else len(run.teachers.models)
    views_stored = layout.steps * layout.batch_size
    summary = dict(
        views_per_example=views, steps=layout.steps, views=views_stored,
        teacher_forwards=teacher_count * (views_stored + sum(layout.eval_sets.values())),
        teacher_forwards_per_example=teacher_count * views_stored / data.num_train,
        bytes_per_view=layout.bytes_per_view(), seconds=round(time.time() - started, 1),
        top_k=top_k, dtype=layout.dtype)
    multihost_utils.sync_global_devices('reinforce: every process has written its rows')
    if jax.process_index() == 0:
      for name, table in tables.items():
        store.write_eval(name, table)
      summary['stored_bytes'] = _size(str(store.path))
      store.complete(summary)
    return summary


def _epochs(config: Any, views: int) -> Any:
  """`config` with `views` epochs as its length, for `configlib.total_steps`."""
  config = config.copy_and_resolve_references()
  config.update(total_steps=None, total_epochs=float(views))
  return config


def _targets_fns(run: Any, function: Any):
  """(`targets_of(host_batch, step, temperature)`: the teachers' combined log-probabilities at
  `temperature` [this process's rows, classes] and the step's mixup ratio, of a live step's
  batch; `eval_logp_of(host_images)`: their log-probabilities at temperature 1 of eval images),
  from the config's teachers or from `function` (`teacher_fn.TeacherFunction`)."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  import scipy.special
  from jax.experimental import multihost_utils
  from big_distill import parallel, steps
  # pylint: enable=g-import-not-at-top
  config, variant = run.config, run.variant
  rng = jax.random.PRNGKey(config.seed)
  side = _teacher_side(config)

  def teacher_images(batch, step):
    """The teachers' images of a live step and its mixup ratio, as `steps.train_step` makes
    them: the ratio from `fold_in(rng, step)`."""
    step_rng = jax.random.fold_in(rng, step)
    ratio = (steps.mixup_ratio(step_rng, config.mixup_alpha) if variant.mixup else
             jax.numpy.float32(1))
    images, _ = steps.views({**batch, 'mixup_ratio': jax.numpy.broadcast_to(
        ratio, batch['image'].shape[:1])}, step_rng, variant, config.mixup_alpha)
    return images, ratio

  def local(x):
    return np.asarray(multihost_utils.global_array_to_host_local_array(
        x, run.mesh, jax.sharding.PartitionSpec(parallel.AXES)))

  if function is None:
    @functools.partial(jax.jit, static_argnums=3)
    def forward(params, batch, step, temperature):
      images, ratio = teacher_images(batch, step)
      return run.teachers.log_probs(params, images, temperature), ratio

    eval_forward = jax.jit(lambda params, images: run.teachers.log_probs(params, images, 1.0))

    def targets_of(host, step, temperature):
      logp, ratio = forward(run.teacher_params, parallel.to_global(host, run.mesh), step,
                            temperature)
      return local(logp), np.float32(ratio)

    def eval_logp_of(images):
      return local(eval_forward(run.teacher_params, parallel.to_global(
          {'image': images}, run.mesh)['image']))
    return targets_of, eval_logp_of

  def resize(images):
    return jax.image.resize(images, (images.shape[0], side, side, images.shape[3]), 'bilinear')

  @jax.jit
  def resized(batch, step):
    images, ratio = teacher_images(batch, step)
    return resize(images), ratio

  eval_resized = jax.jit(resize)

  def logp(images, temperature):  # The function sees [0, 1], not the pipeline's [-1, 1].
    return scipy.special.log_softmax(function.logits((images + 1.0) / 2.0) / temperature, -1)

  def targets_of(host, step, temperature):
    images, ratio = resized(parallel.to_global(host, run.mesh), step)
    return logp(local(images), temperature), np.float32(ratio)

  def eval_logp_of(images):
    return logp(local(eval_resized(parallel.to_global({'image': images}, run.mesh)['image'])),
                1.0)
  return targets_of, eval_logp_of


def _teacher_side(config: Any) -> int:
  """The input side a teacher function gets: the first teacher entry's resolution, else the
  student's."""
  return ((config.teachers[0].get('resolution') if config.teachers else None) or
          config.input.resolution)


def _size(path: str) -> int | None:
  """Bytes of every file under the local directory `path` (None: a remote one)."""
  if workdir.is_remote(path):
    return None
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(argv, config):
  del argv
  main_lib.start_jax()
  print(json.dumps(reinforce(config, FLAGS.workdir, FLAGS.views, top_k=FLAGS.top_k,
                             dtype=FLAGS.dtype, teacher_fn=FLAGS.teacher_fn,
                             steps_per_chunk=FLAGS.steps_per_chunk)))


if __name__ == '__main__':
  define_flags()
  cli.run(main, config=True, announce=lambda: (
      f'big_distill.reinforce: {FLAGS.views} views of {FLAGS.config} into {FLAGS.workdir}.'))
