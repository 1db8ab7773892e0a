"""Pure train and eval steps; `build.py` compiles them with `jax.jit` and mesh shardings.

One step for both modes: supervised training learns the labels; distillation learns the frozen
teachers' probabilities, KL(teacher || student) at a temperature, on the views of the batch that
the variant (`variants.py`) gives each model. Teacher parameters are an argument, never
differentiated or optimised (an empty tuple in supervised mode).
"""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from big_distill import losses, optim, variants
from big_distill import teachers as teachers_lib

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """What is optimised and checkpointed: the student only. `model_state` holds the student's
  variables other than its parameters (BatchNorm's `batch_stats`; empty for BiT and ViT)."""
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any = flax.struct.field(default_factory=dict)

  @property
  def variables(self) -> dict[str, Any]:
    """The student's variables, as `model.apply` takes them."""
    return {'params': self.params, **self.model_state}


def new_state(variables: dict[str, Any], tx: optax.GradientTransformation) -> TrainState:
  """Step 0 with a model's `variables` and a fresh optimizer state for its parameters."""
  params, model_state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    model_state=model_state)


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
               image_shape: tuple[int, ...]) -> TrainState:
  """A fresh state with randomly initialised variables."""
  return new_state(model.init(rng, jnp.zeros((1, *image_shape), jnp.float32)), tx)


def apply_model(model: nn.Module, params: Any, model_state: dict[str, Any], images: jax.Array,
                train: bool) -> tuple[jax.Array, dict[str, Any]]:
  """(logits, new model state): in training, BatchNorm uses and updates batch statistics."""
  variables = {'params': params, **model_state}
  if train and model_state:
    return model.apply(variables, images, train=True, mutable=list(model_state))
  return model.apply(variables, images, train=train), model_state


def mixup_ratio(rng: jax.Array, alpha: float) -> jax.Array:
  """A step's mixing ratio ~ Beta(alpha, alpha), one per batch."""
  return jax.random.beta(rng, alpha, alpha)


def mixup(images: jax.Array, ratio: jax.Array) -> jax.Array:
  """Each image mixed with its neighbour in the batch (the row before it) at `ratio`: a scalar,
  or one per row (a replayed batch's stored ratio), the same arithmetic either way."""
  ratio = jnp.reshape(ratio, jnp.shape(ratio) + (1,) * (images.ndim - jnp.ndim(ratio)))
  return ratio * images + (1.0 - ratio) * jnp.roll(images, 1, axis=0)


def stored_targets(batch: Batch, temperature: float) -> Callable[[jax.Array], jax.Array] | None:
  """The per-example loss against the teachers' targets that come with `batch` (`targets`): the
  fixed teachers' precomputed logits, or a reinforcement's stored log-probabilities (all classes,
  or the top k and the rest); None if the teachers must run."""
  if 'teacher_logits' in batch:
    logp = teachers_lib.combine(batch['teacher_logits'], temperature)
    return lambda logits: losses.kl_divergence(logp, logits, temperature)
  if 'teacher_logp' in batch:
    return lambda logits: losses.kl_divergence(batch['teacher_logp'], logits, temperature)
  if 'teacher_top_logp' in batch:
    return lambda logits: losses.truncated_kl(
        batch['teacher_top_logp'], batch['teacher_top_class'], batch['teacher_rest_logp'],
        logits, temperature)
  return None


def _update(state: TrainState,
            loss_fn: Callable[[Any], tuple[jax.Array, dict[str, Any]]],
            tx: optax.GradientTransformation,
            schedule: optax.Schedule,
            norm: optim.Norm) -> tuple[TrainState, Metrics]:
  (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'grad_norm': norm(grads), 'param_norm': norm(params),
             'learning_rate': schedule(state.step)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                    model_state=model_state), metrics


def views(batch: Batch, rng: jax.Array, variant: variants.Variant | None,
          mixup_alpha: float) -> tuple[jax.Array | None, jax.Array]:
  """(teacher images, student images) of a batch: mixed up if the variant says so (at the batch's
  stored `mixup_ratio` where it has one, else at a ratio drawn from `rng`); the teacher's are None
  where its targets come with the batch (`stored_targets`) or there is no teacher (`variant`
  None: supervised)."""
  images = batch['image']
  if variant is not None and variant.mixup:
    ratio = batch['mixup_ratio'] if 'mixup_ratio' in batch else mixup_ratio(rng, mixup_alpha)
    images = mixup(images, ratio)
  if variant is None or stored_targets(batch, 1.0) is not None:
    return None, images
  return batch.get('teacher_image', images), images


def train_step(state: TrainState, teacher_params: tuple[Any, ...], batch: Batch, rng: jax.Array,
               *, student: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
               norm: optim.Norm, teachers: teachers_lib.Teachers | None = None,
               variant: variants.Variant | None = None, temperature: float = 1.0,
               mixup_alpha: float = 1.0) -> tuple[TrainState, Metrics]:
  """One step: views (mixup) -> target -> student -> loss -> update.

  The target is the labels (cross-entropy) when `variant` is None, else the frozen teachers'
  probabilities at `temperature` (KL(teacher || student)): those that come with the batch
  (`stored_targets`: precomputed or replayed), or the teachers' forward pass on the teacher's
  view. `rng` is the run's key; the step's randomness is `fold_in(rng, state.step)`. `norm`
  computes the logged gradient and parameter norms.
  """
  teacher_images, images = views(batch, jax.random.fold_in(rng, state.step), variant, mixup_alpha)
  if variant is None:
    def per_example(logits):
      return losses.softmax_xent(logits, batch['label'])
  elif teacher_images is None:
    per_example = stored_targets(batch, temperature)
  else:
    teacher_logp = jax.lax.stop_gradient(
        teachers.log_probs(teacher_params, teacher_images, temperature))

    def per_example(logits):
      return losses.kl_divergence(teacher_logp, logits, temperature)

  def loss_fn(params):
    logits, model_state = apply_model(student, params, state.model_state, images, train=True)
    return jnp.mean(per_example(logits)), model_state

  return _update(state, loss_fn, tx, schedule, norm)


def eval_step(variables: dict[str, Any], teacher_params: tuple[Any, ...], batch: Batch, *,
              student: nn.Module, teachers: teachers_lib.Teachers | None = None) -> Metrics:
  """Sums over the real (`mask`) examples of a batch for the student's `variables`
  (`TrainState.variables`). Without teachers: correct predictions and loss; with them, or with
  their stored log-probabilities at temperature 1 in the batch (`teacher_logp`, a replayed run's):
  both accuracies, top-1/top-5 agreement and the KL at temperature 1."""
  logits = student.apply(variables, batch['image'])
  mask = batch['mask'].astype(jnp.float32)

  def total(per_example):
    return jnp.sum(mask * per_example)

  if teachers is None and 'teacher_logp' not in batch:
    return {'accuracy': total(jnp.argmax(logits, -1) == batch['label']),
            'loss': total(losses.softmax_xent(logits, batch['label'])),
            'count': jnp.sum(mask)}
  teacher_logp = (batch['teacher_logp'] if teachers is None else
                  teachers.log_probs(teacher_params, batch['image'], 1.0))
  return {
      'student_accuracy': total(jnp.argmax(logits, -1) == batch['label']),
      'teacher_accuracy': total(jnp.argmax(teacher_logp, -1) == batch['label']),
      'agreement_top1': total(losses.agreement(teacher_logp, logits, 1)),
      'agreement_top5': total(losses.agreement(teacher_logp, logits, min(5, logits.shape[-1]))),
      'kl': total(losses.kl_divergence(teacher_logp, logits)),
      'count': jnp.sum(mask),
  }
