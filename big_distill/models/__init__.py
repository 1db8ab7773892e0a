"""Model registry: models are picked by name in configs (`config.student.model`)."""

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from big_distill import errors
from big_distill.models import bit

MODELS: dict[str, Callable[..., nn.Module]] = {
    'bit': bit.ResNetV2,
}


def get_model(model: str, **kwargs: Any) -> nn.Module:
  """Builds the registered model named `model` with its keyword arguments."""
  if model not in MODELS:
    raise errors.BadInput(f'Unknown model {model!r}; known models: {", ".join(sorted(MODELS))}.')
  return MODELS[model](**kwargs)


# Keys of model entries in configs (`config.student`, `config.teachers[i]`) that are not
# constructor arguments.
LOADING_KEYS = ('init', 'checkpoint', 'resolution')


DTYPES = ('float32', 'bfloat16', 'float16')


def compute_dtype(name: str, key: str = 'config.dtype') -> jnp.dtype:
  """The compute dtype named by a config value (`key` names it in the error)."""
  if name not in DTYPES:
    raise errors.BadInput(f'{key}={name!r}; use one of {", ".join(DTYPES)}.')
  return jnp.dtype(name)


def from_config(spec: Mapping[str, Any], num_classes: int,
                dtype: str = 'float32') -> nn.Module:
  """The model of a config entry such as `dict(model='bit', depth=50, width=1, init=PATH)`,
  computing in `dtype` (parameters and logits stay float32)."""
  return get_model(**{k: v for k, v in spec.items() if k not in LOADING_KEYS},
                   num_classes=num_classes, dtype=compute_dtype(dtype))
