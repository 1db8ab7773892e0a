"""Blocked Shampoo with layer-wise grafting, as an optax `GradientTransformation`.

Every parameter is viewed as a matrix (the "matrix view"):

* size-1 dimensions are dropped first;
* what remains of rank 0 or 1 (scalars, biases, norm scales, `(n, 1)` kernels)
  is *not* preconditioned: its update is the grafted optimizer's direction;
* rank 2 is used as is; rank >= 3 merges all leading dimensions into rows and
  keeps the last one as columns, so a conv kernel `HWIO` becomes
  `(H*W*I, O)` and an attention kernel `(D, heads, Dh)` becomes
  `(D*heads, Dh)`.

The matrix is cut into blocks of at most `block_size` rows and columns
(consecutive chunks; the last chunk of a dimension may be smaller). Each block
`G` keeps its own statistics

    L <- beta2 L + (1 - beta2) G G^T,    R <- beta2 R + (1 - beta2) G^T G

and is preconditioned as
`L^{-1/p} G R^{-1/p}`. For a tensor with `k` preconditioned dimensions the
root is `p = 2k`; every preconditioned matrix view has `k = 2`, hence
`p = 4` unless `exponent_override` is given. The blocks of one parameter
are zero-padded to a common shape and stacked, which is exact: a zero-padded
block yields the same update on its real entries as Shampoo run on the
unpadded block (every block uses both factors, even a trailing block of one
row or column).

Inverse roots are computed in float32 with matrix products only, no LAPACK: the
largest eigenvalue `lambda_max` of the symmetrised statistic comes from power
iteration (on a repeatedly squared copy, then a Rayleigh quotient), the
statistic is damped *relatively* to `S + epsilon * lambda_max * I`, and its
inverse `p`-th root comes from the coupled Newton iteration (Guo & Higham
2006, as in Anil et al.'s distributed Shampoo) on the damped statistic divided
by `lambda_max` (then multiplied by `lambda_max^{-1/p}`, so gradients of any
scale work alike), stopped at convergence or when the residual grows (then the
previous iterate is kept); an all-zero statistic gets the identity as its root.
The statistics of all parameters that share a matrix side are stacked and
iterated together, one loop per side rather than per factor (fewer, larger
batched ops: a faster compile, and fewer sequential loop trips on accelerators).
(`jnp.linalg.eigh` is avoided because on XLA:CPU its batched LAPACK kernel
schedules work on the intra-op thread pool and blocks a pool worker until it is
done; several of them running concurrently in a train step occupy every worker
and deadlock.) With `statistics_dtype` other than float32 the relative damping
is raised to at least that dtype's machine epsilon (bfloat16: 2^-7), because
smaller eigenvalues are rounding noise there. Roots are recomputed at 0-based
step counts `start_preconditioning_step + j * preconditioning_compute_steps`
(j >= 0); in between the last roots stored in the state are reused.

Grafting is per parameter: the Shampoo direction of the whole parameter is
rescaled to the Frobenius norm of the grafted optimizer's direction
(`'adam'`: bias-corrected RMS-normalised gradient, `'rmsprop'`: same
without bias correction, `'sgd'`: the gradient, `'none'`: no rescaling and
the gradient as the direction of unpreconditioned parameters). For the first
`start_preconditioning_step` steps every parameter uses the grafted direction.
Finally an exponential moving average of the update with rate `b1` (optionally
Nesterov as in `optax.adam`) is applied. It is bias corrected as Adam's first
moment over the `'adam'` graft, whose second moment is bias corrected too;
over `'rmsprop'`, `'sgd'` and `'none'`, whose grafts are not, it is a plain
EMA, as the reference distributed Shampoo's momentum with
`moving_average_for_momentum=True` (google-research/precondition), so the
first steps are not `1 / (1 - b1^t)` times larger than the reference's. The
momentum averages the normalised directions, so before preconditioning
`graft_type='adam'` with `b1=0` is exactly `optax.adam(b1=0)` and with
`b1 > 0` it is close to, not identical with, Adam.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

GRAFT_TYPES = ('adam', 'rmsprop', 'sgd', 'none')


class Factors(NamedTuple):
  """Left and right Kronecker factors of one parameter, blocks stacked on axis 0."""

  left: jax.Array  # (num_blocks, rows_per_block, rows_per_block)
  right: jax.Array  # (num_blocks, cols_per_block, cols_per_block)


class ShampooState(NamedTuple):
  """State of `scale_by_shampoo`; every leaf is an array.

  `stats` and `roots` hold a `Factors` per preconditioned
  parameter and `optax.MaskedNode()` otherwise; `graft_nu` (diagonal
  second moment, only for 'adam'/'rmsprop') and `mu` (momentum, only for
  `b1 > 0`) are float32 trees like the params or `MaskedNode`.
  """

  count: jax.Array  # int32 scalar, number of updates done
  stats: Any
  roots: Any
  graft_nu: Any
  mu: Any


class _Layout(NamedTuple):
  """Static blocking of one parameter's matrix view."""

  rows: int
  cols: int
  block_rows: int
  block_cols: int
  num_row_blocks: int
  num_col_blocks: int


def _layout(shape: tuple[int, ...], block_size: int) -> _Layout | None:
  """Returns the blocking of a parameter, or None if it is not preconditioned."""
  dims = [d for d in shape if d != 1]
  if len(dims) < 2:
    return None
  rows, cols = math.prod(dims[:-1]), dims[-1]
  block_rows, block_cols = min(rows, block_size), min(cols, block_size)
  return _Layout(rows, cols, block_rows, block_cols,
                 -(-rows // block_rows), -(-cols // block_cols))


def _to_blocks(x: jax.Array, lay: _Layout) -> jax.Array:
  """Parameter-shaped array -> (num_blocks, block_rows, block_cols), zero padded."""
  m = x.reshape(lay.rows, lay.cols)
  m = jnp.pad(m, ((0, lay.num_row_blocks * lay.block_rows - lay.rows),
                  (0, lay.num_col_blocks * lay.block_cols - lay.cols)))
  m = m.reshape(lay.num_row_blocks, lay.block_rows, lay.num_col_blocks, lay.block_cols)
  return m.transpose(0, 2, 1, 3).reshape(-1, lay.block_rows, lay.block_cols)


def _from_blocks(b: jax.Array, lay: _Layout, shape: tuple[int, ...]) -> jax.Array:
  """Inverse of `_to_blocks`."""
  m = b.reshape(lay.num_row_blocks, lay.num_col_blocks, lay.block_rows, lay.block_cols)
  m = m.transpose(0, 2, 1, 3).reshape(lay.num_row_blocks * lay.block_rows,
                                      lay.num_col_blocks * lay.block_cols)
  return m[:lay.rows, :lay.cols].reshape(shape)


_matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def _matrix_power(x: jax.Array, p: int) -> jax.Array:
  """`x^p` for a static integer `p >= 1` by repeated squaring."""
  out = None
  while p:
    if p & 1:
      out = x if out is None else _matmul(out, x)
    p >>= 1
    if p:
      x = _matmul(x, x)
  return out


def _max_eigenvalue(s: jax.Array, squarings: int = 5, iters: int = 20) -> jax.Array:
  """Largest eigenvalue of batched symmetric PSD `s` (0 for `s == 0`).

  Power iteration on `s^(2^squarings)` (trace-normalised) finds the top
  eigenvector; its Rayleigh quotient with `s` is the eigenvalue.
  """
  tiny = jnp.finfo(jnp.float32).tiny
  b = s
  for _ in range(squarings):
    b = b / jnp.maximum(jnp.trace(b, axis1=-2, axis2=-1), tiny)[..., None, None]
    b = _matmul(b, b)
  v0 = np.random.default_rng(0).normal(size=s.shape[-1]).astype(np.float32)

  def step(_, v):
    v = _matmul(b, v[..., None])[..., 0]
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), tiny)

  v = jax.lax.fori_loop(0, iters, step, step(0, jnp.broadcast_to(v0, s.shape[:-1])))
  return jnp.sum(v * _matmul(s, v[..., None])[..., 0], axis=-1)


def _newton_inverse_root(a: jax.Array, p: int, max_iters: int, tol: float) -> jax.Array:
  """`a^{-1/p}` of one symmetric positive definite matrix by the coupled Newton iteration.

  With `z = (p + 1) / (2 ||a||_F)`, `M_0 = z a`, `X_0 = z^{1/p} I` and
  `T_i = ((p + 1) I - M_i) / p`: `X_{i+1} = X_i T_i -> a^{-1/p}`,
  `M_{i+1} = T_i^p M_i -> I`. Stops when `max |M - I| <= tol`, after
  `max_iters` steps, or when the residual grows by more than 20% (float32
  noise or an indefinite `a`), returning the iterate before that step.
  """
  eye = jnp.eye(a.shape[-1], dtype=a.dtype)
  z = (1.0 + p) / (2.0 * jnp.linalg.norm(a))
  m = z * a
  x = z ** (1.0 / p) * eye

  def cond(c):
    i, _, _, _, err, ok = c
    return (i < max_iters) & (err > tol) & ok

  def body(c):
    i, m, x, _, err, _ = c
    t = ((p + 1.0) * eye - m) / p
    m_new = _matmul(_matrix_power(t, p), m)
    err_new = jnp.max(jnp.abs(m_new - eye))
    return i + 1, m_new, _matmul(x, t), x, err_new, err_new < 1.2 * err

  init = (jnp.zeros([], jnp.int32), m, x, x, jnp.max(jnp.abs(m - eye)), jnp.bool_(True))
  _, _, x, x_prev, _, ok = jax.lax.while_loop(cond, body, init)
  return jnp.where(ok, x, x_prev)


def _inverse_pth_root(stat: jax.Array, p: int, epsilon: float, max_iters: int = 100,
                      tol: float = 1e-6) -> jax.Array:
  """Batched `(S + epsilon * lambda_max * I)^{-1/p}` in float32; identity for S == 0."""
  s = stat.astype(jnp.float32)
  s = 0.5 * (s + jnp.swapaxes(s, -1, -2))
  eye = jnp.broadcast_to(jnp.eye(s.shape[-1], dtype=jnp.float32), s.shape)
  lam = _max_eigenvalue(s)
  nonzero = (lam > 0)[..., None, None]
  # (S + eps lam I)^{-1/p} = lam^{-1/p} (S / lam + eps I)^{-1/p}: the iteration sees eigenvalues
  # in [eps, 1] whatever the gradients' scale (tiny ones would underflow its norms).
  scale = jnp.where(nonzero, lam[..., None, None], 1.0)
  damped = jnp.where(nonzero, s / scale + epsilon * eye, eye)
  flat = damped.reshape(-1, *s.shape[-2:])
  root = jax.vmap(lambda a: _newton_inverse_root(a, p, max_iters, tol))(flat)
  return jnp.where(nonzero, root.reshape(s.shape) * scale ** (-1.0 / p), eye)


def _inverse_roots(stats: Any, p: int, epsilon: float, dtype: Any) -> Any:
  """`_inverse_pth_root` of every stacked statistic in the pytree `stats`, one batched
  call per matrix side (a model has a handful of sides but dozens of factors; on accelerators
  each call's iteration loop costs about the same whatever its batch)."""
  leaves, treedef = jax.tree.flatten(stats)
  by_side: dict[int, list[int]] = {}
  for i, s in enumerate(leaves):
    by_side.setdefault(s.shape[-1], []).append(i)
  roots: list[Any] = [None] * len(leaves)
  for idx in by_side.values():
    batch = _inverse_pth_root(jnp.concatenate([leaves[i] for i in idx]), p, epsilon)
    parts = jnp.split(batch, np.cumsum([leaves[i].shape[0] for i in idx])[:-1])
    for i, part in zip(idx, parts):
      roots[i] = part.astype(dtype)
  return treedef.unflatten(roots)


def scale_by_shampoo(
    block_size: int = 128,
    beta2: float = 0.999,
    epsilon: float = 1e-6,
    preconditioning_compute_steps: int = 10,
    start_preconditioning_step: int = 10,
    graft_type: str = 'adam',
    b1: float = 0.9,
    nesterov: bool = False,
    graft_eps: float = 1e-8,
    statistics_dtype: Any = jnp.float32,
    exponent_override: int | None = None,
) -> optax.GradientTransformation:
  """Shampoo preconditioning with grafting and momentum (see module docstring).

  Args:
    block_size: maximal block side; larger dimensions are split.
    beta2: EMA rate of the Kronecker statistics and of the graft's second moment.
    epsilon: relative damping, `epsilon * lambda_max` added to every eigenvalue
      (at least the machine epsilon of `statistics_dtype`).
    preconditioning_compute_steps: steps between recomputations of the inverse roots.
    start_preconditioning_step: number of initial steps that use the grafted update only.
    graft_type: 'adam', 'rmsprop', 'sgd' or 'none' (no norm grafting).
    b1: momentum EMA rate applied to the final direction (bias corrected with the 'adam'
      graft only); 0 disables momentum.
    nesterov: use Nesterov momentum.
    graft_eps: epsilon of the 'adam'/'rmsprop' graft denominator.
    statistics_dtype: dtype (or its name) of stored statistics and roots.
    exponent_override: use the inverse `p`-th root with this integer `p` instead of 4.

  Returns:
    A GradientTransformation whose output is to be scaled by `-learning_rate`.
  """
  if graft_type not in GRAFT_TYPES:
    raise ValueError(f'graft_type must be one of {GRAFT_TYPES}, got {graft_type!r}')
  if block_size < 1 or preconditioning_compute_steps < 1 or start_preconditioning_step < 0:
    raise ValueError('need block_size >= 1, preconditioning_compute_steps >= 1, '
                     'start_preconditioning_step >= 0')
  if not (0.0 < beta2 < 1.0 and 0.0 <= b1 < 1.0):
    raise ValueError('need 0 < beta2 < 1 and 0 <= b1 < 1')
  stat_dtype = jnp.dtype(statistics_dtype)
  damping = max(epsilon, float(jnp.finfo(stat_dtype).eps))
  if exponent_override is not None and (int(exponent_override) != exponent_override
                                        or exponent_override < 1):
    raise ValueError(f'exponent_override must be a positive integer, got {exponent_override}')
  p = 4 if exponent_override is None else int(exponent_override)
  use_nu = graft_type in ('adam', 'rmsprop')

  def init_fn(params: optax.Params) -> ShampooState:
    def stats_init(x):
      lay = _layout(x.shape, block_size)
      if lay is None:
        return optax.MaskedNode()
      n = lay.num_row_blocks * lay.num_col_blocks
      return Factors(jnp.zeros((n, lay.block_rows, lay.block_rows), stat_dtype),
                     jnp.zeros((n, lay.block_cols, lay.block_cols), stat_dtype))

    def roots_init(x):
      lay = _layout(x.shape, block_size)
      if lay is None:
        return optax.MaskedNode()
      n = lay.num_row_blocks * lay.num_col_blocks
      eye = lambda k: jnp.broadcast_to(jnp.eye(k, dtype=stat_dtype), (n, k, k))
      return Factors(eye(lay.block_rows), eye(lay.block_cols))

    zeros = lambda x: jnp.zeros(x.shape, jnp.float32)
    masked = lambda x: optax.MaskedNode()
    return ShampooState(
        count=jnp.zeros([], jnp.int32),
        stats=jax.tree.map(stats_init, params),
        roots=jax.tree.map(roots_init, params),
        graft_nu=jax.tree.map(zeros if use_nu else masked, params),
        mu=jax.tree.map(zeros if b1 > 0 else masked, params),
    )

  def update_fn(updates: optax.Updates, state: ShampooState,
                params: optax.Params | None = None) -> tuple[optax.Updates, ShampooState]:
    del params
    count = state.count
    t = optax.safe_int32_increment(count)
    tf = t.astype(jnp.float32)
    treedef = jax.tree.structure(updates)
    grads = [g.astype(jnp.float32) for g in treedef.flatten_up_to(updates)]
    layouts = [_layout(g.shape, block_size) for g in grads]
    blocks = [None if lay is None else _to_blocks(g, lay) for g, lay in zip(grads, layouts)]

    # Kronecker statistics.
    def new_factors(b, f):
      if b is None:
        return f
      ema = lambda old, new: (beta2 * old.astype(jnp.float32)
                              + (1.0 - beta2) * new).astype(stat_dtype)
      return Factors(ema(f.left, jnp.einsum('nij,nkj->nik', b, b)),
                     ema(f.right, jnp.einsum('nji,njk->nik', b, b)))

    stats = [new_factors(b, f) for b, f in zip(blocks, treedef.flatten_up_to(state.stats))]
    stats = treedef.unflatten(stats)

    # Inverse roots, refreshed every `preconditioning_compute_steps` from the start step.
    since_start = count - start_preconditioning_step
    refresh = (since_start >= 0) & (since_start % preconditioning_compute_steps == 0)
    roots = jax.lax.cond(refresh, lambda s: _inverse_roots(s, p, damping, stat_dtype),
                         lambda s: state.roots, stats)

    # Grafted direction.
    if use_nu:
      nu = [beta2 * v + (1.0 - beta2) * g * g
            for g, v in zip(grads, treedef.flatten_up_to(state.graft_nu))]
      scale = 1.0 / (1.0 - beta2 ** tf) if graft_type == 'adam' else 1.0
      graft = [g / (jnp.sqrt(v * scale) + graft_eps) for g, v in zip(grads, nu)]
      graft_nu = treedef.unflatten(nu)
    else:
      graft = grads
      graft_nu = state.graft_nu

    # Shampoo direction, grafted per parameter.
    preconditioning = count >= start_preconditioning_step
    directions = []
    for g, gr, b, lay, r in zip(grads, graft, blocks, layouts, treedef.flatten_up_to(roots)):
      if lay is None:
        directions.append(gr)
        continue
      pb = jnp.einsum('nij,njk,nkl->nil', r.left.astype(jnp.float32), b,
                      r.right.astype(jnp.float32))
      d = _from_blocks(pb, lay, g.shape)
      if graft_type != 'none':
        d_norm = jnp.linalg.norm(d)
        ratio = jnp.linalg.norm(gr) / jnp.where(d_norm > 0, d_norm, 1.0)
        d = d * ratio
      directions.append(jnp.where(preconditioning, d, gr))

    # Momentum.
    if b1 > 0:
      mu = [b1 * m + (1.0 - b1) * d
            for d, m in zip(directions, treedef.flatten_up_to(state.mu))]
      # Bias correction only over the bias-corrected 'adam' graft (see the module docstring).
      debias = (lambda k: 1.0 - b1 ** k) if graft_type == 'adam' else (lambda k: 1.0)
      if nesterov:
        out = [b1 * m / debias(tf + 1.0) + (1.0 - b1) * d / debias(tf)
               for d, m in zip(directions, mu)]
      else:
        out = [m / debias(tf) for m in mu]
      mu_tree = treedef.unflatten(mu)
    else:
      out, mu_tree = directions, state.mu

    orig = treedef.flatten_up_to(updates)
    out = treedef.unflatten([o.astype(u.dtype) for o, u in zip(out, orig)])
    return out, ShampooState(count=t, stats=stats, roots=roots, graft_nu=graft_nu, mu=mu_tree)

  return optax.GradientTransformation(init_fn, update_fn)


def shampoo(learning_rate: optax.ScalarOrSchedule, **kwargs: Any) -> optax.GradientTransformation:
  """Shampoo optimizer: `scale_by_shampoo` (`kwargs`) followed by `-learning_rate`."""
  return optax.chain(scale_by_shampoo(**kwargs), optax.scale_by_learning_rate(learning_rate))
