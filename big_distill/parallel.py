"""Device mesh, shardings and the assembly of global batches from per-process data."""

import collections
from typing import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, with the axis `data`."""
  return Mesh(np.asarray(jax.devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`."""
  return NamedSharding(mesh, P('data'))


def check_batch_size(batch_size: int, name: str = 'input.batch_size') -> None:
  """Global batches must split evenly over devices and processes."""
  n = jax.device_count()
  if batch_size % n:
    raise ValueError(f'{name}={batch_size} is not divisible by the {n} devices; '
                     f'use a multiple of {n}.')


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """One global `jax.Array` per key, sharded over `data`, from this process's slice."""
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
