"""Model registry: models are picked by name in configs (`config.student.model`)."""

from typing import Any, Callable, Mapping

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


# Keys of model entries in configs (`config.student`, `config.teachers[i]`) that are not
# constructor arguments.
LOADING_KEYS = ('init', 'checkpoint', 'resolution')


def from_config(spec: Mapping[str, Any], num_classes: int) -> nn.Module:
  """The model of a config entry such as `dict(model='bit', depth=50, width=1, init=PATH)`."""
  return get_model(**{k: v for k, v in spec.items() if k not in LOADING_KEYS},
                   num_classes=num_classes)
