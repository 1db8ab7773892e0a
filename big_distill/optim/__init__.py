"""The optimizer built from config: clipping -> Adam | SGD | Shampoo -> weight decay -> lr."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from big_distill import errors
from big_distill.optim import shampoo


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """`config.schedule.name`: 'cosine', 'linear' (to 0) or 'constant', after linear warm-up."""
  kw = dict(config.schedule)
  name, warmup = kw.pop('name'), kw.pop('warmup_steps', 0)
  if kw:
    raise errors.BadInput(f'Unknown config.schedule keys: {", ".join(kw)}.')
  if warmup >= total_steps:
    raise errors.BadInput(f'config.schedule.warmup_steps={warmup} must be below the '
                          f'{total_steps} training steps.')
  decay_steps = total_steps - warmup
  decays = {
      'cosine': lambda: optax.cosine_decay_schedule(config.lr, decay_steps),
      'linear': lambda: optax.linear_schedule(config.lr, 0.0, decay_steps),
      'constant': lambda: optax.constant_schedule(config.lr),
  }
  if name not in decays:
    raise errors.BadInput(f"Unknown config.schedule.name {name!r}; use one of {', '.join(decays)}.")
  warmup_fn = optax.linear_schedule(0.0, config.lr, warmup) if warmup else None
  if warmup_fn is None:
    return decays[name]()
  return optax.join_schedules([warmup_fn, decays[name]()], [warmup])


def decay_mask(params: Any) -> Any:
  """True for weights to decay: kernels, not biases or GroupNorm scales (all rank <= 1)."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def _direction(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
  kw = dict(opt)
  name = kw.pop('name')
  if name == 'adam':
    mu_dtype = kw.pop('mu_dtype', None)
    return optax.scale_by_adam(**kw, mu_dtype=jnp.dtype(mu_dtype) if mu_dtype else None)
  if name == 'sgd':
    momentum = kw.pop('momentum', 0.9)
    return optax.trace(decay=momentum, **kw)
  if name == 'shampoo':
    return shampoo.scale_by_shampoo(**kw)
  raise errors.BadInput(f"Unknown config.optimizer.name {name!r}; use 'adam', 'sgd' or 'shampoo'.")


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
  """Returns the optax transformation and its learning-rate schedule."""
  schedule = make_schedule(config, total_steps)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  try:
    parts.append(_direction(config.optimizer))
  except (TypeError, ValueError) as e:  # Unknown or invalid keyword arguments.
    if isinstance(e, errors.BadInput):
      raise
    raise errors.BadInput(f'Bad config.optimizer arguments: {e}') from None
  if config.wd:
    parts.append(optax.add_decayed_weights(config.wd, mask=decay_mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule
