"""A reinforcement: the teachers' targets of K views of every training example, stored once
(`big_distill.reinforce`) and replayed by any number of student runs (`targets`).

A view is what the teachers see in a live run of the config: the input pipeline's augmentation of
an example (a function of the run's seed and the example's stream position) and, with function
matching, its mix with the batch's previous row at the step's ratio. A live run's first K epochs
are `steps` = K x examples / batch steps; the reinforcement stores, per step, each row's example
index (a check that the replay rebuilds the same view), the step's mixup ratio and the teachers'
combined log-probabilities at the config's temperature: all classes, or with `top_k` the k
largest and the log of the remaining mass (`losses.truncated_kl`), in `dtype`. The views' pixels
are never stored: the replay rebuilds them with the input pipeline. It also stores the teachers'
log-probabilities at temperature 1 on every eval set, for the replay's eval metrics.

Storage: zarr arrays through tensorstore (orbax's own storage layer, so no new dependency): local
or remote (`gs://`) paths alike, chunks written atomically, each process writing its own rows of
a step (the rows its data shards fill), in chunks of `steps_per_chunk` steps.

  DIR/reinforcement.json     the fingerprint (what it was made for) and the layout, written first
  DIR/steps/{index,ratio,logp | top_logp,top_class,rest_logp}/   zarr, [steps, batch, ...]
  DIR/eval/<set>/            zarr [examples, classes]: log-probabilities at temperature 1
  DIR/progress.<process>.json  steps each process has written (the command resumes from them)
  DIR/complete.json          written last: what it cost
"""

import dataclasses
import json
from typing import Any

import numpy as np

from big_distill import errors, workdir as workdir_lib

META = 'reinforcement.json'
COMPLETE = 'complete.json'
DTYPES = ('float32', 'float16', 'bfloat16')
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Layout:
  """The stored arrays' shapes: `steps` x `batch_size` rows, `num_classes` classes (`top_k` of
  them: None for all) in `dtype`, `steps_per_chunk` steps a chunk; `eval_sets`: name ->
  examples."""
  steps: int
  batch_size: int
  num_classes: int
  top_k: int | None
  dtype: str
  steps_per_chunk: int
  eval_sets: dict[str, int]

  def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of the per-step arrays."""
    steps, batch = (self.steps, self.batch_size)
    out = {'index': ((steps, batch), 'int32'), 'ratio': ((steps,), 'float32')}
    if self.top_k is None:
      out['logp'] = ((steps, batch, self.num_classes), self.dtype)
    else:
      out.update(top_logp=((steps, batch, self.top_k), self.dtype),
                 top_class=((steps, batch, self.top_k),
                            'int16' if self.num_classes < 2**15 else 'int32'),
                 rest_logp=((steps, batch), self.dtype))
    return out

  def bytes_per_view(self) -> float:
    """Stored bytes per view (one row of one step), before compression."""
    return sum(np.dtype(_numpy_dtype(dtype)).itemsize * np.prod(shape) / self.steps / self.batch_size
               for shape, dtype in self.arrays().values())


def _numpy_dtype(name: str) -> Any:
  if name == 'bfloat16':
    import ml_dtypes  # pylint: disable=g-import-not-at-top  # JAX's own bfloat16 for NumPy.
    return ml_dtypes.bfloat16
  return np.dtype(name)


def encode(logp: np.ndarray, top_k: int | None) -> dict[str, np.ndarray]:
  """Log-probabilities [rows, classes] as stored: all of them (`logp`), or the `top_k` largest
  (`top_logp`, `top_class`, classes sorted by probability) and the log of the rest's mass."""
  if top_k is None:
    return {'logp': logp}
  top_class = np.argsort(-logp, axis=-1, kind='stable')[:, :top_k]
  top_logp = np.take_along_axis(logp, top_class, axis=-1)
  rest = np.ones(logp.shape, bool)
  np.put_along_axis(rest, top_class, False, axis=-1)
  masked = np.where(rest, logp, -np.inf)
  peak = np.max(masked, axis=-1, keepdims=True)
  with np.errstate(invalid='ignore', divide='ignore'):
    rest_logp = (np.log(np.sum(np.exp(masked - np.where(np.isfinite(peak), peak, 0)), -1))
                 + np.where(np.isfinite(peak[:, 0]), peak[:, 0], 0))
  return {'top_logp': top_logp, 'top_class': top_class, 'rest_logp': rest_logp}


class Store:
  """A reinforcement directory (see the module docstring), created (`create`) or opened (`open`)."""

  def __init__(self, path: str, meta: dict[str, Any]):
    self.path = workdir_lib.path(path)
    self.meta = meta
    self.layout = Layout(**meta['layout'])
    self._arrays: dict[str, Any] = {}

  def _array(self, name: str, create: bool = False, shape=None, dtype=None, chunks=None):
    if name in self._arrays and not create:
      return self._arrays[name]
    import tensorstore as ts  # pylint: disable=g-import-not-at-top
    kvstore = (f'{self.path / name}/' if workdir_lib.is_remote(self.path) else
               f'file://{self.path / name}/')
    spec = {'driver': 'zarr', 'kvstore': kvstore}
    if create:
      spec['metadata'] = {'shape': list(shape), 'chunks': list(chunks), 'dtype': dtype,
                          'compressor': {'id': 'zstd', 'level': 3}}
    try:
      array = ts.open(spec, create=create, open=True).result()
    except ValueError as e:
      raise errors.BadInput(f'{self.path}: {name} cannot be read ({str(e).splitlines()[0]}); '
                            'make the reinforcement again.') from None
    self._arrays[name] = array
    return array

  def create_arrays(self, rows: int) -> None:
    """Creates every array (chunks of `steps_per_chunk` steps x `rows` rows: a process's)."""
    layout = self.layout
    for name, (shape, dtype) in layout.arrays().items():
      chunks = (layout.steps_per_chunk,) + ((rows,) if len(shape) > 1 else ()) + tuple(shape[2:])
      self._array(f'steps/{name}', True, shape, _zarr_dtype(dtype), chunks)
    for name, examples in layout.eval_sets.items():
      self._array(f'eval/{name}', True, (examples, layout.num_classes), '<f4',
                  (min(examples, 4096), layout.num_classes))

  def write_steps(self, first: int, rows: slice, values: dict[str, np.ndarray]) -> None:
    """Stores `values` (name -> [steps, rows, ...] array; `ratio` [steps]) from step `first`."""
    for name, value in values.items():
      array = self._array(f'steps/{name}')
      count = value.shape[0]
      target = array[first:first + count] if name == 'ratio' else array[first:first + count, rows]
      target.write(value.astype(_numpy_dtype(self.layout.arrays()[name][1]))).result()

  def read_steps(self, first: int, count: int, rows: slice) -> dict[str, np.ndarray]:
    """name -> [count, rows, ...] of the stored steps from `first` (`ratio`: [count])."""
    out = {}
    for name in self.layout.arrays():
      array = self._array(f'steps/{name}')
      part = array[first:first + count] if name == 'ratio' else array[first:first + count, rows]
      out[name] = part.read().result()
    return out

  def write_eval(self, name: str, logp: np.ndarray) -> None:
    self._array(f'eval/{name}')[:].write(logp.astype(np.float32)).result()

  def read_eval(self, name: str) -> np.ndarray:
    return self._array(f'eval/{name}')[:].read().result()

  def progress(self, process: int) -> int:
    """The steps process `process` has written (0 if none)."""
    p = self.path / f'progress.{process}.json'
    return json.loads(p.read_text())['steps'] if p.exists() else 0

  def set_progress(self, process: int, steps: int) -> None:
    workdir_lib.write_json(self.path / f'progress.{process}.json', {'steps': steps})

  def complete(self, summary: dict[str, Any]) -> None:
    workdir_lib.write_json(self.path / COMPLETE, summary)

  @property
  def summary(self) -> dict[str, Any] | None:
    """What it cost (`complete`); None while it is unfinished."""
    p = self.path / COMPLETE
    return json.loads(p.read_text()) if p.exists() else None


def _zarr_dtype(name: str) -> str:
  return name if name == 'bfloat16' else np.dtype(name).str


def create(path: str, meta: dict[str, Any]) -> Store:
  """A new reinforcement at `path` for `meta` (its fingerprint and `layout`), or the unfinished
  one already there for the same `meta` (to resume). One made for another fingerprint is bad
  input."""
  p = workdir_lib.path(path)
  if (p / META).exists():
    store = open_store(path)
    differs = _differences(store.meta, meta)
    if differs:
      raise errors.BadInput(f'--workdir={path} holds a reinforcement of another config (differs '
                            f'in: {", ".join(differs)}); use a new --workdir.')
    return store
  p.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_json(p / META, meta)
  return Store(path, meta)


def open_store(path: str) -> Store:
  """The reinforcement at `path`; bad input if there is none."""
  p = workdir_lib.path(path) / META
  if not p.exists():
    raise errors.BadInput(f'{path} holds no reinforcement (no {META}); make one with '
                          'python -m big_distill.reinforce.')
  try:
    meta = json.loads(p.read_text())
  except ValueError as e:
    raise errors.BadInput(f'{p} is not JSON ({e}); make the reinforcement again.') from None
  if meta.get('format') != FORMAT:
    raise errors.BadInput(f'{path} is a reinforcement of format {meta.get("format")}; this '
                          f'big_distill reads format {FORMAT}: make it again.')
  return Store(path, meta)


def _differences(stored: dict[str, Any], wanted: dict[str, Any], prefix: str = '') -> list[str]:
  """The dotted keys whose values differ between two fingerprints."""
  out = []
  for key in sorted(set(stored) | set(wanted)):
    a, b = stored.get(key), wanted.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f'{prefix}{key}.')
    elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
      out.append(f'{prefix}{key}')
  return out


def check_replayable(store: Store, wanted: dict[str, Any]) -> None:
  """Bad input unless `store` is complete and was made for the `wanted` fingerprint (a replaying
  run's: its teachers, data, augmentation, variant, temperature, batch and classes)."""
  if store.summary is None:
    raise errors.BadInput(f'{store.path} is an unfinished reinforcement; finish it by running '
                          'the command that made it again (python -m big_distill.reinforce '
                          f'... --workdir={store.path}).')
  differs = _differences({k: store.meta['fingerprint'].get(k) for k in wanted}, wanted)
  if differs:
    raise errors.BadInput(f'config.reinforcement.path={store.path} was made for another run '
                          f'(differs in: {", ".join(differs)}).')
