"""Frozen teachers: loading (BiT `.npz` or an orbax checkpoint of a supervised run), ensembles
(averaged probabilities) and per-teacher input resolutions."""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from big_distill import checkpoint
from big_distill.models import from_config


@dataclasses.dataclass(frozen=True)
class Teachers:
  """One or several frozen models whose averaged probabilities are the distillation target."""
  models: tuple[nn.Module, ...]
  resolutions: tuple[int | None, ...]

  def log_probs(self, params: tuple[Any, ...], images: jax.Array,
                temperature: float) -> jax.Array:
    """log(mean_k softmax(logits_k / T)); each teacher sees `images` resized to its resolution."""
    logps = []
    for model, resolution, p in zip(self.models, self.resolutions, params):
      x = images
      if resolution and resolution != images.shape[1]:
        x = jax.image.resize(x, (x.shape[0], resolution, resolution, x.shape[3]), 'bilinear')
      logps.append(jax.nn.log_softmax(model.apply({'params': p}, x) / temperature))
    return jax.nn.logsumexp(jnp.stack(logps), axis=0) - jnp.log(len(logps))


def load_teachers(specs: list[ml_collections.ConfigDict], num_classes: int, channels: int,
                  default_resolution: int) -> tuple[Teachers, tuple[Any, ...]]:
  """Builds each teacher from its config dict and loads its parameters (host arrays)."""
  if not specs:
    raise ValueError("config.mode='distill' needs at least one entry in config.teachers.")
  models, resolutions, params = [], [], []
  for i, spec in enumerate(specs):
    path, resolution = spec.get('checkpoint'), spec.get('resolution')
    model = from_config(spec, num_classes)
    res = resolution or default_resolution
    abstract = jax.eval_shape(
        lambda m=model, r=res: m.init(jax.random.PRNGKey(0),
                                      jnp.zeros((1, r, r, channels)))['params'])
    params.append(_load(path, model, abstract, f'config.teachers[{i}]'))
    models.append(model)
    resolutions.append(resolution)
  return Teachers(tuple(models), tuple(resolutions)), tuple(params)


def _load(path: str | None, model: nn.Module, abstract: Any, name: str) -> Any:
  if not path:
    raise ValueError(f'{name}.checkpoint is not set: give a BiT .npz file or a checkpoint dir.')
  if not os.path.exists(path):
    raise ValueError(f'{name}.checkpoint {path!r} does not exist.')
  return checkpoint.load_params(path, model, abstract)
