"""How the families' layers are computed: `dot_general` and `conv2d`, the dots and convolutions
they share, written so that XLA:CPU's gradients stay plain dots (docs/performance.md, "Standard
models against PyTorch"); and the kernels chosen per backend: how MobileNetV3's depthwise
convolutions and ViT's attention are computed, and how XLA:CPU orders a train step's ops
(`config.kernels`). The implementations of a switch compute the same function of the same
parameters, in different time per backend and with different rounding. 'auto' takes the
backend's row of `AUTO`, the one place the choice is made:

- depthwise 'taps' (CPU): a sum over the k * k taps of strided slices times the tap's weights,
  accumulated in float32. XLA:CPU fuses the sum into one loop, 5 to 10x faster than its grouped
  convolution, which takes a slow path.
- depthwise 'grouped' (GPU, TPU): `lax.conv_general_dilated(feature_group_count=channels)` in the
  compute dtype: cuDNN's and the TPU's depthwise kernels, with no float32 copy of bfloat16
  activations.
- attention 'einsum': flax's `dot_product_attention` math (queries scaled, two einsums), what ViTs
  computed before the switch.
- attention 'fused' (GPU, TPU): `jax.nn.dot_product_attention`, its implementation left to JAX:
  cuDNN's fused attention where JAX picks it on a GPU, XLA elsewhere (JAX 0.10 picks XLA always).
- attention 'heads_first' (CPU): 'fused''s function with the heads moved before the tokens and
  the softmax divided after the values' dot: on XLA:CPU, the fastest of the three for ViT-S/16's
  forward pass (docs/performance.md, `benchmarks.versus_pytorch`).
- attention 'cudnn' (GPU only, never 'auto' until measured there): `jax.nn.dot_product_attention`
  asking for cuDNN's fused kernel, in bfloat16 or float16 (JAX's choice in float32).

Every attention takes the softmax's exponentials in float32 and multiplies the values by them in
the compute dtype.

- scheduler 'default': XLA's own op order. 'memory' (CPU only): XLA:CPU's memory-optimised
  scheduler (`CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED`), an option of the train step's compilation
  (`build.train_step_options`). 'student' (a CPU's 'auto') is the student family's
  `Family.cpu_scheduler` on a CPU, 'default' elsewhere: 'memory' for MobileNetV3, whose steps it
  speeds, 'default' for BiT, whose demo pair it slows, and ViT (docs/performance.md).
"""

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from big_distill import errors

# (x [batch, H, W, C], kernel [k, k, 1, C], stride, padding on each side) -> [batch, H', W', C].
Depthwise = Callable[[jax.Array, jax.Array, int, int], jax.Array]
# (query, key, value [batch, length, heads, head_dim]) -> [batch, length, heads, head_dim].
Attention = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

# jax.default_backend() -> the implementation of each switch; backends not listed (plugins) take
# the 'gpu' row, plain XLA ops.
AUTO = {
    'cpu': dict(depthwise='taps', attention='heads_first', scheduler='student'),
    'gpu': dict(depthwise='grouped', attention='fused', scheduler='default'),
    'tpu': dict(depthwise='grouped', attention='fused', scheduler='default'),
}
# The XLA options of each scheduler.
SCHEDULERS = {'default': {},
              'memory': {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}}


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                preferred_element_type=None) -> jax.Array:
  """`lax.dot_general` for layers (flax's `Dense(dot_general=)`): where the lhs's last axes are
  contracted and there are no batch axes, its leading axes are flattened into one first. Over
  several leading axes, the kernel's gradient contracts them all, and XLA:CPU then transposes
  the incoming gradient first, fused with the norm's backward pass before it, slowly; over one,
  it is a plain dot."""
  (lhs_contract, rhs_contract), batch = dimension_numbers
  lead = lhs.ndim - len(lhs_contract)
  if lead <= 1 or batch != ((), ()) or tuple(lhs_contract) != tuple(range(lead, lhs.ndim)):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
  flat = lhs.reshape(-1, *lhs.shape[lead:])
  out = lax.dot_general(flat, rhs, ((tuple(range(1, flat.ndim)), rhs_contract), ((), ())),
                        precision, preferred_element_type)
  return out.reshape(*lhs.shape[:lead], *out.shape[1:])


def conv2d(x: jax.Array, kernel: jax.Array, stride: int,
           padding: tuple[int, int]) -> jax.Array:
  """NHWC x HWIO convolution with zero `padding` (before, after) on both spatial axes.

  A 1x1 convolution is a dot over channels. Where the output is smaller than the kernel (late
  stages at low resolution) it is one dot over the kernel taps that see the input (im2col; the
  other taps only see padding): the same result, where XLA:CPU's convolution takes a slow path
  (docs/performance.md).
  """
  k = kernel.shape[0]
  if k == 1 and padding == (0, 0):
    return _dot(x[:, ::stride, ::stride], kernel[0, 0])
  out = [(n + sum(padding) - k) // stride + 1 for n in x.shape[1:3]]
  if min(out) >= k:
    return lax.conv_general_dilated(x, kernel, (stride, stride), (padding, padding),
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  taps = [[d for d in range(k) if any(0 <= i * stride + d - padding[0] < n for i in range(o))]
          for n, o in zip(x.shape[1:3], out)]
  x = jnp.pad(x, ((0, 0), padding, padding, (0, 0)))
  cols = [x[:, dy:dy + stride * (out[0] - 1) + 1:stride, dx:dx + stride * (out[1] - 1) + 1:stride]
          for dy in taps[0] for dx in taps[1]]
  w = jnp.concatenate([kernel[dy, dx] for dy in taps[0] for dx in taps[1]], axis=0)
  return _dot(jnp.concatenate(cols, axis=-1), w)


def _dot(x: jax.Array, w: jax.Array) -> jax.Array:
  """[b, h, w, C] x [C, D] over the last axis. A single position ([1, 1, 1, C]: batch-1
  inference where a late stage is down to 1x1) is computed as a 1x1 convolution: TFLite's
  converter rejects that product (an invalid batch matmul) but converts the convolution;
  otherwise a `dot_general` over the flattened positions."""
  if x.size == x.shape[-1]:
    return lax.conv_general_dilated(x, w[None, None], (1, 1), 'VALID',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return dot_general(x, w, (((3,), (0,)), ((), ())))


def _taps(padded: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """sum over taps (dy, dx) of padded[:, dy::stride, dx::stride] * kernel[dy, dx, 0], float32."""
  k, acc = kernel.shape[0], jnp.promote_types(padded.dtype, jnp.float32)
  padded, kernel = padded.astype(acc), kernel.astype(acc)
  h, w = ((n - k) // stride + 1 for n in padded.shape[1:3])
  return sum(padded[:, dy:dy + stride * (h - 1) + 1:stride, dx:dx + stride * (w - 1) + 1:stride]
             * kernel[dy, dx, 0] for dy in range(k) for dx in range(k))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_taps(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return _taps(jnp.pad(x, pad), kernel, stride).astype(x.dtype)


def _taps_forward(x, kernel, stride, padding):
  return depthwise_taps(x, kernel, stride, padding), (x, kernel)


def _taps_backward(stride, padding, residuals, grad):
  """The gradients as taps too, where autodiff's would pad the output gradient once per tap and
  sum k * k full-size arrays (a MobileNetV3-Large train step then compiles in 25 s of CPU time,
  against 15). The input's gradient is the output gradient spread to the stride and padded by
  k - 1, correlated with the flipped kernel; the kernel's, per tap, the sum of the gradient times
  that tap's slice of the input."""
  x, kernel = residuals
  k, (h, w) = kernel.shape[0], grad.shape[1:3]
  size = [n + 2 * padding for n in x.shape[1:3]]  # The padded input's.
  rest = [(n - k) % stride for n in size]  # Rows and columns no tap reaches.
  spread = lax.pad(grad, jnp.zeros((), grad.dtype), (
      (0, 0, 0), (k - 1, k - 1 + rest[0], stride - 1), (k - 1, k - 1 + rest[1], stride - 1),
      (0, 0, 0)))
  dx = _taps(spread, kernel[::-1, ::-1], 1)
  dx = dx[:, padding:padding + x.shape[1], padding:padding + x.shape[2]].astype(x.dtype)
  acc = jnp.promote_types(x.dtype, jnp.float32)
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))).astype(acc)
  g = grad.astype(acc)
  dkernel = jnp.stack([
      jnp.sum(padded[:, dy:dy + stride * (h - 1) + 1:stride, dx_:dx_ + stride * (w - 1) + 1:stride]
              * g, axis=(0, 1, 2)) for dy in range(k) for dx_ in range(k)])
  return dx, dkernel.reshape(kernel.shape).astype(kernel.dtype)


depthwise_taps.defvjp(_taps_forward, _taps_backward)


def depthwise_grouped(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1])


def einsum_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  weights = nn.dot_product_attention_weights(query, key, force_fp32_for_softmax=True)
  # Back in the compute dtype: flax's own keeps them float32, multiplying bfloat16 values in f32.
  return jnp.einsum('...hqk,...khd->...qhd', weights.astype(value.dtype), value)


def fused_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  return jax.nn.dot_product_attention(query, key, value)


def heads_first_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """`jax.nn.dot_product_attention`'s function with the heads moved before the tokens, so that both
  batched dots have their batch axes leading (XLA:CPU otherwise lays each dot's operands out in
  loops of its own), and the softmax's division left until after the values' dot, where it
  divides head_dim numbers per query instead of one per key."""
  q, k, v = (jnp.swapaxes(t, -3, -2) for t in (query, key, value))  # [batch, heads, length, dim]
  logits = jnp.einsum('...qd,...kd->...qk', q, k, preferred_element_type=jnp.float32)
  logits = logits * q.shape[-1] ** -0.5
  unnormalised = jnp.exp(logits - lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  unnormalised = unnormalised.astype(value.dtype)  # Summed as rounded, so the weights sum to 1.
  out = jnp.einsum('...qk,...kd->...qd', unnormalised, v, preferred_element_type=jnp.float32)
  out = out / unnormalised.sum(axis=-1, keepdims=True, dtype=jnp.float32)
  return jnp.swapaxes(out, -3, -2).astype(value.dtype)


def cudnn_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  half = query.dtype in (jnp.bfloat16, jnp.float16)  # What cuDNN's kernel takes.
  return jax.nn.dot_product_attention(query, key, value, implementation='cudnn' if half else None)


DEPTHWISE: dict[str, Depthwise] = {'taps': depthwise_taps, 'grouped': depthwise_grouped}
ATTENTION: dict[str, Attention] = {'einsum': einsum_attention, 'fused': fused_attention,
                                   'heads_first': heads_first_attention,
                                   'cudnn': cudnn_attention}
ONLY_ON = {'cudnn': 'gpu', 'memory': 'cpu'}  # Implementations that run on one backend alone.
SWITCHES = {'depthwise': DEPTHWISE, 'attention': ATTENTION,
            'scheduler': {'student': None, **SCHEDULERS}}


@dataclasses.dataclass(frozen=True)
class Kernels:
  """The implementation of each switch, by name; 'auto' is the backend's (`AUTO`)."""
  depthwise: str = 'auto'
  attention: str = 'auto'
  scheduler: str = 'auto'

  def resolved(self, backend: str | None = None) -> 'Kernels':
    """Each 'auto' replaced by `backend`'s choice (default: `jax.default_backend()`); an unknown
    name is bad input."""
    backend = backend or jax.default_backend()
    row = AUTO.get(backend, AUTO['gpu'])
    chosen = {}
    for switch, implementations in SWITCHES.items():
      name = getattr(self, switch)
      if name != 'auto' and name not in implementations:
        raise errors.BadInput(f'config.kernels.{switch}={name!r}; use one of auto, '
                              f'{", ".join(implementations)}.')
      if ONLY_ON.get(name, backend) != backend:
        raise errors.BadInput(f'config.kernels.{switch}={name!r} runs on a {ONLY_ON[name]} only; '
                              f'this backend is {backend}.')
      chosen[switch] = row[switch] if name == 'auto' else name
    return Kernels(**chosen)

  @staticmethod
  def available(switch: str, backend: str) -> list[str]:
    """The implementations of `switch` that run on `backend`."""
    return [n for n in SWITCHES[switch] if ONLY_ON.get(n, backend) == backend]

  def depthwise_conv(self) -> Depthwise:
    """The depthwise convolution, for this backend."""
    return DEPTHWISE[self.resolved().depthwise]

  def attention_fn(self) -> Attention:
    """The attention, for this backend (flax's `MultiHeadDotProductAttention(attention_fn=)`)."""
    return ATTENTION[self.resolved().attention]

  def scheduler_options(self, backend: str, student_scheduler: str) -> dict[str, str]:
    """The XLA options of a train step on `backend` whose student's family prefers
    `student_scheduler` on a CPU (what 'student' stands for there; elsewhere 'default')."""
    name = self.resolved(backend).scheduler
    if name == 'student':
      name = student_scheduler if backend == 'cpu' else 'default'
    return SCHEDULERS[name]
