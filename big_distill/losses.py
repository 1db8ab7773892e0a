"""Distillation distances and fidelity metrics (teacher/student agreement)."""

import jax
import jax.numpy as jnp


def softmax_xent(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Per-example cross-entropy against integer labels."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def kl_divergence(teacher_logp: jnp.ndarray, student_logits: jnp.ndarray,
                  temperature: float = 1.0) -> jnp.ndarray:
  """Per-example KL(teacher || student), scaled by T^2 (Hinton et al.) to keep gradients O(1).

  `teacher_logp` are teacher log-probabilities already at `temperature` (an ensemble's are the
  log of its averaged probabilities); the student's logits are divided by `temperature` here.
  """
  student_logp = jax.nn.log_softmax(student_logits / temperature)
  kl = jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1)
  return temperature**2 * kl


def truncated_kl(top_logp: jnp.ndarray, top_class: jnp.ndarray, rest_logp: jnp.ndarray,
                 student_logits: jnp.ndarray, temperature: float = 1.0) -> jnp.ndarray:
  """Per-example KL(teacher || student) over the teacher's k stored classes and the rest of the
  classes as one outcome (a reinforcement's `--top_k`), scaled by T^2: the KL of both
  distributions coarsened to those k + 1 outcomes, a lower bound of the full KL.

  `top_logp` [b, k]: the teacher's log-probabilities (at `temperature`) of its classes
  `top_class` [b, k]; `rest_logp` [b]: the log of its remaining mass (-inf: none).
  """
  student_logp = jax.nn.log_softmax(student_logits / temperature)
  top = jnp.take_along_axis(student_logp, top_class, axis=-1)
  stored = jnp.any(jax.nn.one_hot(top_class, student_logp.shape[-1], dtype=bool), axis=-2)
  rest = jax.nn.logsumexp(jnp.where(stored, -jnp.inf, student_logp), axis=-1)
  kl = jnp.sum(jnp.exp(top_logp) * (top_logp - top), axis=-1)
  has_rest = jnp.isfinite(rest_logp)
  kl += jnp.where(has_rest, jnp.exp(rest_logp) * (jnp.where(has_rest, rest_logp, 0.0) - rest), 0)
  return temperature**2 * kl


def agreement(teacher_scores: jnp.ndarray, student_logits: jnp.ndarray, k: int = 1) -> jnp.ndarray:
  """Per example, 1.0 if the teacher's top-1 class is among the student's top-k classes."""
  teacher_top1 = jnp.argmax(teacher_scores, axis=-1)
  _, student_topk = jax.lax.top_k(student_logits, k)
  return jnp.any(student_topk == teacher_top1[:, None], axis=-1).astype(jnp.float32)
