"""Model registry: models are picked by name in configs (`config.student.model`)."""

from typing import Any, Callable

import flax.linen as nn

from big_distill.models import bit

MODELS: dict[str, Callable[..., nn.Module]] = {
    'bit': bit.ResNetV2,
}


def get_model(model: str, **kwargs: Any) -> nn.Module:
  """Builds the registered model named `model` with its keyword arguments."""
  if model not in MODELS:
    raise ValueError(f'Unknown model {model!r}; known models: {", ".join(sorted(MODELS))}.')
  return MODELS[model](**kwargs)
