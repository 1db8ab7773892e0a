"""The model registry: each family's record (`FAMILIES`; what a record holds: `family.py`), and
the model a config entry names, resolved once into a `Spec`.

A config entry (`config.student`, `config.teachers[i]`) names its architecture in `model`:

  model='bit:depth=50,width=1'                      a family and its arguments
  model='timm:vit_small_patch16_224.augreg_in21k'   a timm name: its family, sizes and the input
                                                    normalisation of its weights
  model='mobilenet_v3', variant='small', width=0.5  a family, with its arguments as entry keys
  model=''                                          (teachers) what the checkpoint says

A timm name, or a family with arguments, names the architecture: keys of the entry that contradict
it are refused by name, never applied or ignored; keys for arguments it leaves open add them.
"""

import ast
import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from big_distill import errors
from big_distill.models import bit, family, kernels as kernels_lib, mobilenet_v3, normalization, vit

# Adding a family: its module (the Flax class and its `family.Family` record) and one entry here.
FAMILIES: dict[str, family.Family] = {
    f.name: f for f in (bit.FAMILY, vit.FAMILY, mobilenet_v3.FAMILY)}
TIMM_PREFIX = 'timm:'
# Keys of a config entry that are not the architecture's.
ENTRY_KEYS = ('model', 'init', 'checkpoint', 'resolution')
# Fields of a family's class that a spec does not set.
_NOT_ARGUMENTS = ('parent', 'name', 'num_classes', 'dtype', 'kernels', 'remat')
DTYPES = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class Spec:
  """A resolved model: its family's record and the arguments of its class; `str(spec)` is the
  spec as a config entry's `model` takes it (e.g. 'bit:depth=50,width=1')."""
  family: family.Family
  arguments: Mapping[str, Any]
  text: str

  def __str__(self) -> str:
    return self.text

  def create(self, num_classes: int, dtype: str = 'float32',
             kernels: kernels_lib.Kernels = kernels_lib.Kernels(),
             remat: bool = False) -> nn.Module:
    """The model for `num_classes` classes, computing in `dtype` (parameters and logits stay
    float32) with `kernels` resolved for this backend (families without a `kernels` field have
    no switch); `remat` rematerialises its blocks in the backward pass (`config.remat`, the
    student's; `family.rematerialized`): the same parameters, less memory."""
    if 'normalization' in self.arguments:
      normalization.check(self.arguments['normalization'],
                          f'the {self.family.name} model\'s normalization')
    fields = {f.name for f in dataclasses.fields(self.family.model)}
    switches = {'kernels': kernels.resolved()}  # Refused if bad, whatever the family.
    if 'kernels' not in fields:
      switches = {}
    if remat:
      if 'remat' not in fields:
        raise errors.BadInput(f'config.remat: a {self.family.name} model has no blocks to '
                              'rematerialise (its class has no remat field).')
      switches['remat'] = True
    return self.family.model(**self.arguments, **switches, num_classes=num_classes,
                             dtype=compute_dtype(dtype))

  def architecture(self) -> dict[str, Any]:
    """Every argument of the architecture, defaults included (`family.Family`)."""
    return self.family.model(**self.arguments).architecture()


def spec(family_: family.Family, **arguments: Any) -> Spec:
  """The spec of `family_` with `arguments`, e.g. `spec(FAMILIES['bit'], depth=50, width=1)`."""
  text = ','.join(f'{k}={v}' for k, v in arguments.items())
  return Spec(family_, dict(arguments), f'{family_.name}:{text}' if text else family_.name)


def resolve(entry: Mapping[str, Any] | str, where: str = 'model',
            default: Spec | None = None) -> Spec:
  """The model of a config entry, or of a spec string (see the module docstring). `where` names
  the entry in messages; `default` is the architecture an entry without `model` takes (a teacher's
  checkpoint's)."""
  entry = {'model': entry} if isinstance(entry, str) else dict(entry)
  text = entry.get('model') or ''
  keys = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
  if text:
    found, arguments = _parse(text, where)
  elif default is not None:
    found, arguments, text = default.family, dict(default.arguments), str(default)
  else:
    raise errors.BadInput(f'{where}.model is not set; name the architecture, e.g. '
                          f'bit:depth=50,width=1 or {TIMM_PREFIX}<timm name>.')
  allowed = {f.name for f in dataclasses.fields(found.model)} - set(_NOT_ARGUMENTS)
  unknown = sorted(set(keys) - allowed)
  if unknown:
    raise errors.BadInput(f'{where}: {", ".join(unknown)}: not an argument of a {found.name} '
                          f'model (its arguments: {", ".join(sorted(allowed))}).')
  if not keys:
    return Spec(found, arguments, text)
  _check_agreement(found, arguments, keys, where, text)
  return spec(found, **{**arguments, **keys})


def _parse(text: str, where: str) -> tuple[family.Family, dict[str, Any]]:
  """(family, arguments) of a spec string."""
  if text.startswith(TIMM_PREFIX):
    name = text[len(TIMM_PREFIX):]
    for f in FAMILIES.values():
      arguments = f.timm_arguments(name)
      if arguments is not None:
        return f, arguments
    known = '; '.join(f'{f.timm_names} ({f.name})' for f in FAMILIES.values())
    raise errors.BadInput(f'{where}: unknown timm model {name!r}; big_distill builds {known}.')
  name, _, args = text.partition(':')
  if name not in FAMILIES:
    raise errors.BadInput(f'{where}: unknown model {name!r}; known: {", ".join(FAMILIES)} or '
                          f'{TIMM_PREFIX}<timm name>.')
  arguments = {}
  for item in filter(None, args.split(',')):
    key, sep, value = item.partition('=')
    if not sep:
      raise errors.BadInput(f'{where}: model={text!r}: {item!r} is not key=value.')
    try:  # Numbers, True, ... as Python literals; anything else as a string.
      arguments[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      arguments[key.strip()] = value
  return FAMILIES[name], arguments


def _check_agreement(found: family.Family, arguments: dict[str, Any], keys: dict[str, Any],
                     where: str, text: str) -> None:
  """Refuses the entry's `keys` that contradict `text`'s `arguments`: given there with another
  value, or making another model of them (a ViT's sizes against its variant's)."""
  disagree = []
  for key, value in keys.items():
    try:
      agrees = arguments.get(key, value) == value and bool(
          found.model(**{**arguments, key: value}).architecture())
    except errors.BadInput:
      agrees = False
    if not agrees:
      disagree.append(f'{key}={value!r}')
  if disagree:
    named = ', '.join(f'{k}={v!r}' for k, v in found.model(**arguments).architecture().items())
    raise errors.BadInput(
        f'{where}: model={text!r} is a {found.name} model with {named}; the entry also sets '
        f'{", ".join(disagree)}, which {"contradicts" if len(disagree) == 1 else "contradict"} '
        'it. Name the whole architecture in model alone (a timm name, or e.g. '
        f'{found.name}:key=value,...), without those keys.')


def compute_dtype(name: str, key: str = 'config.dtype') -> jnp.dtype:
  """The compute dtype named by a config value (`key` names it in the error)."""
  if name not in DTYPES:
    raise errors.BadInput(f'{key}={name!r}; use one of {", ".join(DTYPES)}.')
  return jnp.dtype(name)
