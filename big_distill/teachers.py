"""Frozen teachers: ensembles (averaged probabilities), per-teacher input resolutions, loading
(`models.loading`), and precomputed logits for the fixed teacher (computed once, stored with a
fingerprint of the teachers and data they came from)."""

import dataclasses
import hashlib
import json
from typing import Any, Callable, Iterable

from absl import logging
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from big_distill import checkpoint, errors, models, runs, workdir
from big_distill.models import kernels as kernels_lib, loading


@dataclasses.dataclass(frozen=True)
class Teachers:
  """One or several frozen models whose averaged probabilities are the distillation target.

  Their weights travel separately, as a tuple of one variables dict per teacher
  (`{'params': ...}`, plus `batch_stats` for BatchNorm models), here called `params`.
  """
  models: tuple[nn.Module, ...]
  resolutions: tuple[int | None, ...]
  specs: tuple[models.Spec, ...] = ()  # What each model is (`resolve`).

  def logits(self, params: tuple[Any, ...], images: jax.Array) -> jax.Array:
    """[batch, teacher, class] logits; each teacher sees `images` resized to its resolution."""
    out = []
    for model, resolution, variables in zip(self.models, self.resolutions, params):
      x = images
      if resolution and resolution != images.shape[1]:
        x = jax.image.resize(x, (x.shape[0], resolution, resolution, x.shape[3]), 'bilinear')
      out.append(model.apply(variables, x))
    return jnp.stack(out, axis=1)

  def log_probs(self, params: tuple[Any, ...], images: jax.Array,
                temperature: float) -> jax.Array:
    """log(mean_k softmax(logits_k / T)) of the teachers on `images`."""
    return combine(self.logits(params, images), temperature)


def combine(logits: jax.Array, temperature: float) -> jax.Array:
  """[batch, teacher, class] logits -> log of the teachers' mean softmax at temperature T."""
  logps = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature)
  return jax.nn.logsumexp(logps, axis=1) - jnp.log(logits.shape[1])


def resolve(entries: list[ml_collections.ConfigDict]) -> tuple[models.Spec, ...]:
  """The architecture of each `config.teachers` entry: its `model`, else what its checkpoint says
  (`loading.spec_of`)."""
  return tuple(models.resolve(
      entry, f'config.teachers[{i}]', default=None if entry.get('model') else loading.spec_of(
          entry.get('checkpoint'), f'config.teachers[{i}].checkpoint'))
               for i, entry in enumerate(entries))


def build(specs: tuple[models.Spec, ...], entries: list[ml_collections.ConfigDict],
          num_classes: int, dtype: str = 'float32',
          kernels: kernels_lib.Kernels = kernels_lib.Kernels()) -> Teachers:
  """The (unloaded) teachers of `specs` (`resolve`) at the resolutions of their config
  `entries`, computing in `dtype` with `kernels`."""
  return Teachers(tuple(spec.create(num_classes, dtype, kernels) for spec in specs),
                  tuple(entry.get('resolution') for entry in entries), specs)


def init_params(teachers: Teachers, image_shape: tuple[int, int, int], rng: jax.Array,
                compiler_options: dict[str, Any] | None = None) -> tuple[Any, ...]:
  """Randomly initialised variables of each teacher at its own resolution (benchmarks use them;
  their shapes are those a teacher checkpoint must have), each compiled with `compiler_options`
  (`build.init_options`)."""
  out = []
  for model, resolution in zip(teachers.models, teachers.resolutions):
    side = resolution or image_shape[0]
    # Compiled: op by op, a ResNet's init takes tens of seconds on a CPU.
    init = jax.jit(model.init, compiler_options=compiler_options)
    out.append(init(rng, jnp.zeros((1, side, side, image_shape[2]))))
  return tuple(out)


def freeze(teachers: Teachers, params: tuple[Any, ...]) -> tuple[Teachers, tuple[Any, ...]]:
  """The teachers for fixed variables: what a model can precompute for fixed weights
  (`frozen`, e.g. `ResNetV2.frozen` standardises its kernels once), not in every step."""
  models, frozen = [], []
  for model, variables in zip(teachers.models, params):
    if hasattr(model, 'frozen'):
      model, weights = model.frozen(variables['params'])
      variables = {**variables, 'params': weights}
    models.append(model)
    frozen.append(variables)
  return dataclasses.replace(teachers, models=tuple(models)), tuple(frozen)


def load_params(entries: list[ml_collections.ConfigDict], teachers: Teachers,
                abstract: tuple[Any, ...]) -> tuple[Any, ...]:
  """Each teacher's variables (host arrays) from its `checkpoint`, checked against `abstract`; a
  warning for a run that has not finished (stopped, or still training), whose latest checkpoint
  teaches."""
  for i, entry in enumerate(entries):  # ConfigDicts, or dicts of a stored config.
    path = entry.get('checkpoint')
    run = loading.run_directory(path) if epath.Path(path).is_dir() else None
    if run is not None and not runs.finished(str(run)):
      logging.warning('config.teachers[%d]: %s has not finished its run; its latest checkpoint, '
                      'step %d, teaches.', i, run, max(checkpoint.saved_steps(str(run))))
  return tuple(loading.load_variables(entry.get('checkpoint'), spec.family, model, shapes)
               for entry, spec, model, shapes in zip(entries, teachers.specs, teachers.models,
                                                     abstract))


def fingerprint(specs: list[ml_collections.ConfigDict], params: tuple[Any, ...],
                **data: Any) -> dict[str, Any]:
  """What precomputed logits depend on: each teacher's model, a hash of its weights, the data."""
  teachers = []
  for spec, p in zip(specs, params):
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(p):
      if not getattr(leaf, 'is_fully_addressable', True):  # Split over processes (fsdp).
        leaf = multihost_utils.process_allgather(leaf, tiled=True)
      digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    teachers.append({**{k: v for k, v in spec.items() if k != 'checkpoint'},
                     'params_sha256': digest.hexdigest()})
  return {'teachers': teachers, **data}


def read_cached(path: epath.Path, meta: dict[str, Any]) -> np.ndarray | None:
  """The [example, teacher, class] logits stored at `path` if they were made for `meta`; None if
  there are none; bad input if `path` holds logits of other teachers or data. Reads only: local
  files are memory-mapped, remote ones (gs://) read whole."""
  if not path.exists():
    return None
  meta = json.loads(json.dumps(meta))
  try:
    stored = json.loads(_sibling(path, '.json').read_text())
  except (OSError, ValueError):
    stored = {}
  stale = sorted(k for k in set(meta) | set(stored) if meta.get(k) != stored.get(k))
  if stale:
    raise errors.BadInput(f'config.teacher_logits_cache {path!r} holds logits of other teachers '
                          f'or data (differs in: {", ".join(stale)}); delete it or set '
                          'config.teacher_logits_cache to a new path.')
  logging.info('Reusing the teacher logits in %s.', path)
  if workdir.is_remote(path):
    with path.open('rb') as f:
      return np.load(f)
  return np.load(path, mmap_mode='r')


def write_cached(path: epath.Path, meta: dict[str, Any], logits: np.ndarray) -> None:
  """Stores `logits` as `path` and `meta` as `path.json` (process 0; each written to a temporary
  name and renamed, so a reader never sees half a file)."""
  if jax.process_index() > 0:
    return
  meta_path = _sibling(path, '.json')
  path.parent.mkdir(parents=True, exist_ok=True)
  with _sibling(path, '.tmp').open('wb') as f:
    np.save(f, logits)
  workdir.write_json(meta_path, meta)
  _sibling(path, '.tmp').replace(path)


def _sibling(path: epath.Path, suffix: str) -> epath.Path:
  """`path` with `suffix` appended to its name."""
  return path.parent / f'{path.name}{suffix}'


def compute_logits(logits_fn: Callable[[dict[str, jax.Array]], jax.Array],
                   batches: Iterable[dict[str, jax.Array]], num: int,
                   progress: Callable[[], None] = lambda: None) -> np.ndarray:
  """Runs `logits_fn` over global batches with `index` and `mask`; returns [num, ...] logits.
  `progress` is called after each batch."""
  table = None
  for batch in batches:
    progress()
    out, index, mask = (multihost_utils.process_allgather(x, tiled=True)
                        for x in (logits_fn(batch), batch['index'], batch['mask']))
    if table is None:
      table = np.zeros((num, *out.shape[1:]), np.float32)
    table[index[mask > 0]] = out[mask > 0]
  return table
