"""Where a distillation step's teacher targets come from, decided once per run (`source`):

| source | config | the step gets | the teachers' weights |
|---|---|---|---|
| `live` | by default | the teachers' forward pass on the variant's teacher view | loaded |
| `cached` | `teacher_logits_cache` (the `fixed` variant) | each example's precomputed logits, looked up on the host by its index | loaded, to compute them once |
| `stored` | `reinforcement.path` | each view's stored log-probabilities and mixup ratio (`reinforcement`); with `reinforcement.live_fraction`, that share of the steps live on fresh views | not loaded (loaded for the live share) |

A replaying run's teachers are the reinforcement's: `config.teachers`, if it names any, must be
the ones it was made with; left empty, they are filled in from it (so that the run's `config.json`
names them, for `evaluate --teachers`).

`build` asks `source` and `teacher_view` what to build; the training loop takes its batches and
eval sets from `Targets` (`open`, then `ready`) and does no variant work of its own.
"""

import dataclasses
import functools
from typing import Any, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np

from big_distill import console, errors, parallel, reinforcement, variants
from big_distill import teachers as teachers_lib, workdir as workdir_lib

LIVE, CACHED, STORED = 'live', 'cached', 'stored'
PIPELINE_STEPS = 20_000  # A replay's input pipeline serves at least this many steps.
Batch = dict[str, np.ndarray]


def source(config: ml_collections.ConfigDict) -> str | None:
  """Where the run's targets come from (None: a supervised run, which learns the labels)."""
  if config.mode != 'distill':
    return None
  if config.reinforcement.path:
    return STORED
  return CACHED if config.teacher_logits_cache else LIVE


def needs_teachers(config: ml_collections.ConfigDict) -> bool:
  """Whether the run builds (and loads) its teachers."""
  kind = source(config)
  return kind in (LIVE, CACHED) or (kind == STORED and config.reinforcement.live_fraction > 0)


def with_stored_teachers(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with a replayed reinforcement's teachers where it names none (reads only)."""
  if source(config) != STORED:
    return config
  fraction = config.reinforcement.live_fraction
  if not 0 <= fraction < 1:
    raise errors.BadInput(f'config.reinforcement.live_fraction={fraction}; use a share of the '
                          'steps from 0 (all replayed) to below 1.')
  stored = reinforcement.open_store(config.reinforcement.path).meta['fingerprint']['teachers']
  if isinstance(stored, dict):  # Made by `--teacher_fn`: no teacher of the config's.
    if config.teachers or fraction:
      raise errors.BadInput(
          f'config.reinforcement.path={config.reinforcement.path} was made by '
          f'--teacher_fn={stored["function"]}: replay it with no config.teachers (e.g. '
          '`teacher=` in the config\'s arguments) and no live_fraction.')
    return config
  if config.teachers:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.teachers = [ml_collections.ConfigDict(entry) for entry in stored]
  return config


def teacher_view(config: ml_collections.ConfigDict, variant: variants.Variant | None) -> str:
  """What the input pipeline adds to the student's view for the teachers (`variants.VIEWS`)."""
  kind = source(config)
  if kind == LIVE:
    return variant.teacher_view
  return variants.INDEX if kind in (CACHED, STORED) else variants.SAME


def fingerprint(config: ml_collections.ConfigDict, data: Any) -> dict[str, Any]:
  """What a reinforcement's targets depend on: the teachers (model, checkpoint, resolution), the
  data, the views (augmentation, batch and data order, variant, mixup) and the temperature."""
  cfg = config.input
  return {
      'teachers': [{k: entry.get(k) for k in ('model', 'checkpoint', 'resolution')}
                   for entry in config.teachers],
      'data': dict(dataset=data.full_name, train_split=cfg.train_split, examples=data.num_train,
                   classes=data.num_classes, channels=data.channels),
      'views': dict(resolution=cfg.resolution, augment=cfg.augment,
                    crop_padding=cfg.crop_padding, flip=cfg.flip, batch_size=cfg.batch_size,
                    data_shards=cfg.data_shards or jax.process_count(),
                    shuffle_buffer=cfg.shuffle_buffer, seed=config.seed,
                    extra_data=cfg.extra_data.to_dict(), variant=config.variant,
                    mixup_alpha=config.mixup_alpha),
      'temperature': config.temperature,
  }


def process_rows(batch_size: int) -> slice:
  """The rows of every global batch that this process's data shards fill."""
  rows = batch_size // jax.process_count()
  return slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)


@dataclasses.dataclass(frozen=True)
class Targets:
  """The targets of a run (`open`): `train_batches` and `eval_sets` are what its loop reads."""
  run: Any  # The `build.Run`.
  kind: str | None
  path: Any = None  # The fixed teachers' cache (`cached`).
  logits: np.ndarray | None = None  # The fixed teachers' logits (`cached`), once computed.
  store: reinforcement.Store | None = None  # `stored`.

  def ready(self) -> 'Targets':
    """These targets with what is computed once done: a missing logits cache is computed and
    written (after every check has passed: the caller's workdir exists)."""
    if self.kind != CACHED or self.logits is not None:
      return self
    logging.info('Precomputing teacher logits into %s.', self.path)
    logits = _compute_logits(self.run)
    teachers_lib.write_cached(self.path, _logits_fingerprint(self.run), logits)
    return dataclasses.replace(self, logits=logits)

  def train_batches(self, start_step: int = 0) -> Iterator[Batch]:
    """This process's training batches from `start_step` on, with what the step needs."""
    if self.kind == STORED:
      fraction = self.run.config.reinforcement.live_fraction
      replayed = _replayed(self.run, self.store, start_step - live_steps(start_step, fraction))
      if not fraction:
        return replayed
      return _with_live(replayed, self.run.train_batches(
          self.store.layout.steps + live_steps(start_step, fraction),
          teacher_view=self.run.variant.teacher_view), start_step, fraction)
    stream = self.run.train_batches(start_step)
    if self.kind == CACHED:  # The fixed teachers' logits, looked up by the examples' index.
      stream = ({**b, 'teacher_logits': np.asarray(self.logits[b.pop('index')])} for b in stream)
    return stream

  def eval_sets(self) -> dict[str, Any]:
    """The run's eval sets (`build.Run.eval_sets`); a replayed run's with the teachers' stored
    log-probabilities (`teacher_logp`) of each example."""
    sets = self.run.eval_sets()
    if self.kind != STORED:
      return sets
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    out = {}
    for name, ds in sets.items():
      table = tf.constant(self.store.read_eval(name))
      out[name] = ds.map(lambda b, t=table: {**b, 'teacher_logp': tf.gather(t, b['index'])})
    return out


def open_targets(run: Any, workdir: str) -> Targets:
  """The run's targets, read and checked, nothing written: the fixed teachers' cached logits if
  the cache holds them (bad input if it holds other teachers' or data's), a reinforcement
  checked against the run (bad input if made for another)."""
  kind = source(run.config)
  if kind == CACHED:
    path = workdir_lib.teacher_logits(workdir, run.config.teacher_logits_cache)
    return Targets(run, kind, path, teachers_lib.read_cached(path, _logits_fingerprint(run)))
  if kind == STORED:
    store = reinforcement.open_store(run.config.reinforcement.path)
    wanted = fingerprint(run.config, run.data)
    stored_teachers = store.meta['fingerprint']['teachers']
    if isinstance(stored_teachers, dict):  # `--teacher_fn` (`with_stored_teachers`).
      wanted['teachers'] = stored_teachers
    for entry, stored in zip(wanted['teachers'], stored_teachers):
      entry['model'] = entry['model'] or stored.get('model')  # '': what its checkpoint says.
    reinforcement.check_replayable(store, wanted)
    names = set(run.eval_names) - set(store.layout.eval_sets)
    if names:
      raise errors.BadInput(f'config.reinforcement.path={store.path} has no teacher targets of '
                            f'the eval sets {", ".join(sorted(names))}; make it with them.')
    return Targets(run, kind, store=store)
  return Targets(run, kind)


def _logits_fingerprint(run: Any) -> dict[str, Any]:
  """What the fixed teachers' precomputed logits depend on (`teachers.fingerprint`)."""
  cfg = run.config.input
  return teachers_lib.fingerprint(
      run.config.teachers, run.teacher_params, dataset=run.data.full_name,
      split=cfg.train_split, num_examples=run.data.num_train, resolution=cfg.resolution,
      central_crop=cfg.central_crop)


def _compute_logits(run: Any) -> np.ndarray:
  """The teachers' [example, teacher, class] logits on the un-augmented train split."""
  batch_sharding = parallel.batch_sharded(run.mesh)
  logits_fn = jax.jit(lambda p, batch: run.teachers.logits(p, batch['image']),
                      in_shardings=(run.teacher_sharding, batch_sharding),
                      out_shardings=batch_sharding)
  split = run.eval_batches(run.config.input.train_split, cache=False)
  with console.Bar('teacher logits', total=int(split.cardinality()), unit='batch') as bar:
    batches = (parallel.to_global(b, run.mesh) for b in split.as_numpy_iterator())
    return teachers_lib.compute_logits(functools.partial(logits_fn, run.teacher_params),
                                       batches, run.data.num_train, bar.update)


def replay_order(steps: int, block: int, cycle: int, seed: int) -> list[int]:
  """The stored steps that replayed steps `cycle * steps` ... `(cycle + 1) * steps - 1` read: in
  the stored order for the first cycle (the live run's, exactly), then the stored blocks of
  `block` steps (an epoch) in a fresh order per cycle, each block's steps in their order (so
  that the input pipeline rebuilds a block's views from its first step on)."""
  starts = list(range(0, steps, block))
  if cycle:
    starts = [starts[i] for i in np.random.default_rng([seed, cycle]).permutation(len(starts))]
  return [s for start in starts for s in range(start, min(start + block, steps))]


def _replayed(run: Any, store: reinforcement.Store, start_step: int) -> Iterator[Batch]:
  """Replayed training batches from `start_step` on (see `replay_order`): the input pipeline
  rebuilds each stored step's views, which come with their stored mixup ratio and targets. One
  pipeline serves `PIPELINE_STEPS` steps or more (whole cycles; a new one costs seconds)."""
  layout = store.layout
  rows = process_rows(layout.batch_size)
  block = max(1, round(run.data.num_train / layout.batch_size))
  cycles = -(-PIPELINE_STEPS // layout.steps)
  step = start_step
  while True:
    first_cycle, position = divmod(step, layout.steps)
    order = [s for cycle in range(first_cycle, first_cycle + cycles)
             for s in replay_order(layout.steps, block, cycle, run.config.seed)][position:]
    blocks = _consecutive(order)
    pipeline = run.train_batches(with_index=True, blocks=blocks)
    for first, count in blocks:
      for chunk in range(first, first + count, layout.steps_per_chunk):
        size = min(layout.steps_per_chunk, first + count - chunk)
        stored = store.read_steps(chunk, size, rows)
        for i in range(size):
          yield _with_stored(next(pipeline), {k: v[i] for k, v in stored.items()}, chunk + i)
    step += len(order)


def _consecutive(order: list[int]) -> list[tuple[int, int]]:
  """`order` as (first, count) runs of consecutive steps."""
  blocks = []
  for s in order:
    if blocks and blocks[-1][0] + blocks[-1][1] == s:
      blocks[-1] = (blocks[-1][0], blocks[-1][1] + 1)
    else:
      blocks.append((s, 1))
  return blocks


def live_steps(steps: int, fraction: float) -> int:
  """How many of a replaying run's first `steps` steps are live (`fraction` of them, evenly
  spaced: step s is live when floor((s + 1) * fraction) > floor(s * fraction))."""
  return int(np.floor(steps * fraction + 1e-9))


def _with_live(replayed: Iterator[Batch], live: Iterator[Batch], start_step: int,
               fraction: float) -> Iterator[Batch]:
  """The replayed batches with a `fraction` of the steps (`live_steps`) taken from `live`: the
  live run's views after the stored ones (its epochs K + 1, ...), fresh to the student, whose
  targets the step computes with the teachers."""
  step = start_step
  while True:
    is_live = live_steps(step + 1, fraction) > live_steps(step, fraction)
    yield next(live) if is_live else next(replayed)
    step += 1


def _with_stored(batch: Batch, stored: dict[str, np.ndarray], step: int) -> Batch:
  """A rebuilt batch with its stored step's ratio and targets (float32); bad input if the views
  are not the stored ones (the data's order changed since)."""
  if not np.array_equal(batch.pop('index'), stored.pop('index')):
    raise errors.BadInput(f'The input pipeline rebuilds other examples than the reinforcement '
                          f'stored for its step {step}: the dataset or its order changed since; '
                          'make the reinforcement again.')
  ratio = stored.pop('ratio')
  out = {**batch, 'mixup_ratio': np.full(len(batch['image']), ratio, np.float32)}
  for name, value in stored.items():
    out[f'teacher_{name}'] = value.astype(np.int32 if name == 'top_class' else np.float32)
  return out
