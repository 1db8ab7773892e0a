"""Model registry: families picked by name in configs (`config.student.model`,
`config.teachers[i].model`), each module owning its architecture and its foreign weight layouts.

  dict(model='bit', depth=50, width=1)                  # BiT ResNet-v2
  dict(model='vit', variant='S/16')                     # Vision Transformer
  dict(model='mobilenet_v3', variant='small', width=0.75)
  dict(model='timm:vit_small_patch16_224.augreg_in21k') # a timm name: its family, sizes and input
                                                        # normalisation; other keys override them
"""

import ast
from types import ModuleType
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from big_distill import errors
from big_distill.models import bit, mobilenet_v3, normalization, vit

FAMILIES: dict[str, ModuleType] = {'bit': bit, 'vit': vit, 'mobilenet_v3': mobilenet_v3}
MODELS: dict[str, Callable[..., nn.Module]] = {
    'bit': bit.ResNetV2, 'vit': vit.ViT, 'mobilenet_v3': mobilenet_v3.MobileNetV3}
TIMM_PREFIX = 'timm:'

# Keys of model entries in configs (`config.student`, `config.teachers[i]`) that are not
# constructor arguments.
LOADING_KEYS = ('init', 'checkpoint', 'resolution')

DTYPES = ('float32', 'bfloat16', 'float16')


def resolve(model: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
  """(family, constructor arguments) of a config entry's `model` and its other keys; a timm name
  gives its family's sizes and the normalisation of its pretrained weights."""
  if model.startswith(TIMM_PREFIX):
    name = model[len(TIMM_PREFIX):]
    for family, module in FAMILIES.items():
      found = module.timm_kwargs(name)
      if found is not None:
        norm = (module.timm_normalization(name) if hasattr(module, 'timm_normalization')
                else MODELS[family].normalization)
        return family, {**found, 'normalization': norm, **kwargs}
    raise errors.BadInput(f'Unknown timm model {name!r}; big_distill converts timm\'s '
                          'resnetv2_*_bit, vit_{tiny,small,base,large}_patch* and '
                          'mobilenetv3_{small,large}_* models.')
  if model not in MODELS:
    raise errors.BadInput(f'Unknown model {model!r}; known models: {", ".join(sorted(MODELS))} '
                          f'or {TIMM_PREFIX}<timm name>.')
  return model, kwargs


def parse_spec(text: str, flag: str = '--model') -> dict[str, Any]:
  """A model named on the command line as a config entry: `bit:depth=50,width=1` ->
  dict(model='bit', depth=50, width=1) (values are Python literals where they parse as one, e.g.
  numbers and True, else strings); `timm:<name>` -> dict(model='timm:<name>')."""
  if text.startswith(TIMM_PREFIX):
    return dict(model=text)
  name, _, args = text.partition(':')
  spec = dict(model=name)
  for item in filter(None, args.split(',')):
    key, sep, value = item.partition('=')
    if not sep:
      raise errors.BadInput(f'{flag}={text}: {item!r} is not key=value.')
    try:
      spec[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      spec[key.strip()] = value
  return spec


def get_model(model: str, **kwargs: Any) -> nn.Module:
  """Builds the model named `model` (a registry name or `timm:<name>`) with its arguments."""
  family, kwargs = resolve(model, **kwargs)
  normalization.check(kwargs.get('normalization', MODELS[family].normalization),
                      f'the {family} model\'s normalization')
  try:
    return MODELS[family](**kwargs)
  except TypeError as e:  # An argument the family does not have.
    raise errors.BadInput(f'Bad arguments for a {family} model: {e}') from None


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
