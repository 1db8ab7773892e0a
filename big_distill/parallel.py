"""Device mesh, shardings and the assembly of global batches from per-process data.

The mesh has two axes: `data` and `fsdp`. The batch is split over both; parameters and optimizer
state are replicated, or split over `fsdp` (each array along one dimension, see `fsdp_spec`),
and XLA gathers them where a step needs them whole. The step functions are the same either way.
"""

import collections
import math
from typing import Any, Iterator

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from big_distill import errors

AXES = ('data', 'fsdp')


def mesh_shape(data: int, fsdp: int, devices: int) -> tuple[int, int]:
  """The (data, fsdp) sizes for `devices` devices; one of them may be -1, the rest."""
  sizes = (data, fsdp)
  known = math.prod(s for s in sizes if s != -1)
  rest = devices // known if known > 0 and devices % known == 0 else 0
  shape = tuple(rest if s == -1 else s for s in sizes)
  if sizes.count(-1) > 1 or min(shape) < 1 or math.prod(shape) != devices:
    raise errors.BadInput(
        f'config.mesh data={data}, fsdp={fsdp} does not fit the {devices} devices; use sizes '
        f'whose product is {devices} (one of them may be -1: the rest).')
  return shape


def make_mesh(data: int = -1, fsdp: int = 1) -> Mesh:
  """A (data, fsdp) mesh over every device of every process, in `jax.devices()` order, so that
  each process's devices hold consecutive rows of the batch: a global batch is then the same on
  any process layout with the same `input.data_shards` (mixup pairs neighbouring rows).
  `jax.make_mesh` is not used: it orders devices by the chips' physical topology, which can
  interleave the processes' devices along the batch."""
  shape = mesh_shape(data, fsdp, jax.device_count())
  return Mesh(np.asarray(jax.devices()).reshape(shape), AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over all devices: `data` x `fsdp`."""
  return NamedSharding(mesh, P(AXES))


def fsdp_spec(shape: tuple[int, ...], size: int) -> P:
  """Splits the largest dimension divisible by `size` (the last of equals) over `fsdp`;
  replicates arrays with no such dimension, and everything when `size` is 1."""
  dims = [i for i, n in enumerate(shape) if n % size == 0] if size > 1 else []
  if not dims:
    return P()
  axis = max(dims, key=lambda i: (shape[i], i))
  return P(*[None] * axis, 'fsdp')


def param_shardings(tree: Any, mesh: Mesh, fsdp: bool) -> Any:
  """A `NamedSharding` per array of `tree` (arrays or `ShapeDtypeStruct`s): split over `fsdp`
  by `fsdp_spec` if `fsdp`, else replicated."""
  size = mesh.shape['fsdp'] if fsdp else 1
  return jax.tree_util.tree_map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, size)), tree)


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """`ShapeDtypeStruct`s of `abstract` carrying the matching sharding of `shardings`."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def check_batch_size(batch_size: int, name: str = 'input.batch_size') -> None:
  """Global batches must split evenly over devices and processes."""
  n = jax.device_count()
  if batch_size < 1:
    raise errors.BadInput(f'{name}={batch_size}; use a positive number of images'
                          f'{f", a multiple of the {n} devices" if n > 1 else ""}.')
  if batch_size % n:
    raise errors.BadInput(f'{name}={batch_size} is not divisible by the {n} devices; '
                          f'use a multiple of {n}.')


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """One global `jax.Array` per key, split over all devices, from this process's slice."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def prefetch_to_mesh(batches: Iterator[dict[str, np.ndarray]], mesh: Mesh,
                     size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Keeps `size` global batches in flight on the devices ahead of the consumer."""
  queue = collections.deque()
  for local in batches:
    queue.append(to_global(local, mesh))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
