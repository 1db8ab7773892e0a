"""The optimizer built from config (clipping -> Adam | SGD | Shampoo -> weight decay -> lr),
and the global norm that clipping and the logged norms take."""

from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax

from big_distill import errors
from big_distill.optim import shampoo


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """`config.schedule.name`: 'cosine' (`optax.warmup_cosine_decay_schedule`, the paper's
  big_vision schedule: linear warm-up from 0, then cosine decay to 0), 'linear' (to 0) or
  'constant', after linear warm-up. A warm-up as long as the whole run (a small dataset) becomes a
  tenth of it, with a warning."""
  kw = dict(config.schedule)
  name, warmup = kw.pop('name'), kw.pop('warmup_steps', 0)
  if kw:
    raise errors.BadInput(f'Unknown config.schedule keys: {", ".join(kw)}.')
  if warmup >= total_steps:
    logging.warning('config.schedule.warmup_steps=%d is not below the run\'s %d steps; warming '
                    'up for %d steps, a tenth of them.', warmup, total_steps, total_steps // 10)
    warmup = total_steps // 10
  if name == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, total_steps)
  decays = {'linear': lambda: optax.linear_schedule(config.lr, 0.0, total_steps - warmup),
            'constant': lambda: optax.constant_schedule(config.lr)}
  if name not in decays:
    raise errors.BadInput(f"Unknown config.schedule.name {name!r}; use one of cosine, "
                          f"{', '.join(decays)}.")
  if not warmup:
    return decays[name]()
  return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warmup), decays[name]()],
                              [warmup])


Norm = Callable[[Any], jax.Array]


def concatenated_norm(tree: Any) -> jax.Array:
  """The L2 norm of all of `tree`'s leaves together, as one reduction over their concatenation:
  `optax.tree.norm`'s value (one reduction per leaf, then their sum) up to the order of the sum,
  in a program that XLA:CPU compiles in far less time (docs/performance.md, "Compile time"). For
  arrays on one device or replicated: split ones would be gathered (`global_norm`)."""
  leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree_util.tree_leaves(tree)]
  return jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate(leaves))))


def global_norm(split: bool) -> Norm:
  """The norm of a tree of parameters or gradients: `concatenated_norm`, or per leaf
  (`optax.tree.norm`) where they are `split` over devices."""
  return optax.tree.norm if split else concatenated_norm


def clip_by_global_norm(max_norm: float, norm: Norm) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm` (the same state and arithmetic) with the norm `norm`."""
  def update(updates, state, params=None):
    del params
    g_norm = norm(updates)
    trigger = g_norm < max_norm
    return jax.tree_util.tree_map(
        lambda t: jax.lax.select(trigger, t, (t / g_norm.astype(t.dtype)) * max_norm),
        updates), state
  return optax.GradientTransformation(optax.init_empty_state, update)


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


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   norm: Norm = concatenated_norm
                   ) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
  """Returns the optax transformation and its learning-rate schedule; gradients are clipped by
  their `norm` (`global_norm`)."""
  schedule = make_schedule(config, total_steps)
  parts = []
  if config.grad_clip_norm:
    parts.append(clip_by_global_norm(config.grad_clip_norm, norm))
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
