"""Pure train and eval steps. `train.py` compiles them with `jax.jit` and mesh shardings.

Distillation: the frozen teacher(s) and the student each get a view of the batch, the loss is
KL(teacher || student) at a temperature. Teacher parameters are an argument, never differentiated
or optimised. The variants of the paper differ only in what the teacher sees (`TEACHER_VIEWS`,
produced by the input pipeline) and in mixup:

- `fixed`: the un-augmented image (or its precomputed logits), the student an augmentation;
- `independent`: its own random augmentation of the same image;
- `consistent`: the student's augmented image;
- `funmatch`: `consistent`, after mixup of the batch (function matching).
"""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from big_distill import losses
from big_distill import teachers as teachers_lib

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
TEACHER_VIEWS = {'fixed': 'unaugmented', 'independent': 'augmented', 'consistent': 'same',
                 'funmatch': 'same'}
VARIANTS = tuple(TEACHER_VIEWS)


@flax.struct.dataclass
class TrainState:
  """What is optimised and checkpointed: the student only."""
  step: jax.Array
  params: Any
  opt_state: Any


def new_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  """Step 0 with `params` and a fresh optimizer state."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
               image_shape: tuple[int, ...]) -> TrainState:
  """A fresh state with randomly initialised parameters."""
  return new_state(model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))['params'], tx)


def mixup(rng: jax.Array, images: jax.Array, alpha: float) -> jax.Array:
  """Mixes each image with its neighbour in the batch, one ratio ~ Beta(alpha, alpha) per batch."""
  ratio = jax.random.beta(rng, alpha, alpha)
  return ratio * images + (1.0 - ratio) * jnp.roll(images, 1, axis=0)


def _update(state: TrainState, loss_fn: Callable[[Any], jax.Array],
            tx: optax.GradientTransformation, schedule: optax.Schedule) -> tuple[TrainState, Metrics]:
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
             'param_norm': optax.tree.norm(params), 'learning_rate': schedule(state.step)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def supervised_step(state: TrainState, batch: Batch, rng: jax.Array, *, model: nn.Module,
                    tx: optax.GradientTransformation,
                    schedule: optax.Schedule) -> tuple[TrainState, Metrics]:
  """One step of cross-entropy training on labels (`rng` is unused: no stochastic layers)."""
  del rng

  def loss_fn(params):
    logits = model.apply({'params': params}, batch['image'])
    return jnp.mean(losses.softmax_xent(logits, batch['label']))

  return _update(state, loss_fn, tx, schedule)


def distill_inputs(batch: Batch, rng: jax.Array, variant: str,
                   mixup_alpha: float) -> tuple[jax.Array | None, jax.Array]:
  """(teacher images, student images) of a `variant`; teacher images are None with cached logits."""
  images = batch['image']
  if variant == 'funmatch':
    images = mixup(rng, images, mixup_alpha)
  if 'teacher_logits' in batch:
    return None, images
  return batch.get('teacher_image', images), images


def distill_step(state: TrainState, teacher_params: tuple[Any, ...], batch: Batch,
                 rng: jax.Array, *, student: nn.Module, teachers: teachers_lib.Teachers,
                 tx: optax.GradientTransformation, schedule: optax.Schedule,
                 variant: str, temperature: float,
                 mixup_alpha: float) -> tuple[TrainState, Metrics]:
  """One distillation step: views (mixup) -> frozen teachers -> student -> KL -> update.

  `rng` is the run's key; the step's randomness is `fold_in(rng, state.step)`. A batch with
  `teacher_logits` (the fixed teacher's, precomputed) skips the teachers' forward pass.
  """
  teacher_images, images = distill_inputs(batch, jax.random.fold_in(rng, state.step), variant,
                                          mixup_alpha)
  if teacher_images is None:
    teacher_logp = teachers_lib.combine(batch['teacher_logits'], temperature)
  else:
    teacher_logp = teachers.log_probs(teacher_params, teacher_images, temperature)
  teacher_logp = jax.lax.stop_gradient(teacher_logp)

  def loss_fn(params):
    logits = student.apply({'params': params}, images)
    return jnp.mean(losses.kl_divergence(teacher_logp, logits, temperature))

  return _update(state, loss_fn, tx, schedule)


def supervised_eval_step(params: Any, batch: Batch, *, model: nn.Module) -> Metrics:
  """Sums over the real (`mask`) examples of the batch: correct predictions and loss."""
  logits = model.apply({'params': params}, batch['image'])
  mask = batch['mask'].astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  return {'accuracy': jnp.sum(mask * correct),
          'loss': jnp.sum(mask * losses.softmax_xent(logits, batch['label'])),
          'count': jnp.sum(mask)}


def distill_eval_step(params: Any, teacher_params: tuple[Any, ...], batch: Batch, *,
                      student: nn.Module, teachers: teachers_lib.Teachers) -> Metrics:
  """Sums over real examples: both accuracies, top-1/top-5 agreement, KL at temperature 1."""
  logits = student.apply({'params': params}, batch['image'])
  teacher_logp = teachers.log_probs(teacher_params, batch['image'], 1.0)
  mask = batch['mask'].astype(jnp.float32)

  def total(per_example):
    return jnp.sum(mask * per_example)

  return {
      'student_accuracy': total(jnp.argmax(logits, -1) == batch['label']),
      'teacher_accuracy': total(jnp.argmax(teacher_logp, -1) == batch['label']),
      'agreement_top1': total(losses.agreement(teacher_logp, logits, 1)),
      'agreement_top5': total(losses.agreement(teacher_logp, logits, 5)),
      'kl': total(losses.kl_divergence(teacher_logp, logits)),
      'count': jnp.sum(mask),
  }
