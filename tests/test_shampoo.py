"""Tests for big_distill.optim.shampoo."""

import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from big_distill.optim import shampoo as sh
from tests.helpers import ROOT


# ---------------------------------------------------------------- reference --

def _np_inv_root(stat, p, eps):
    w, q = np.linalg.eigh(stat)
    w_max = max(w.max(), 0.0)
    if w_max == 0:
        return np.eye(len(stat))
    w = np.maximum(w, 0.0) + eps * w_max
    return (q * w ** (-1.0 / p)) @ q.T


def _np_shampoo(grads, *, beta2, epsilon, b1, nesterov, graft_type, start, every, graft_eps=1e-8):
    """Dense float64 Shampoo on a list of {name: array} gradients; returns updates.

    Tensors of rank >= 2 (after dropping size-1 dims) use the (prod(leading), last)
    matrix view, everything else the grafted direction.
    """
    state = {}
    out = []
    for t, tree in enumerate(grads, start=1):
        c = t - 1
        upd = {}
        for name, g in tree.items():
            g = np.asarray(g, np.float64)
            s = state.setdefault(name, {"nu": np.zeros_like(g), "mu": np.zeros_like(g)})
            s["nu"] = beta2 * s["nu"] + (1 - beta2) * g * g
            if graft_type == "adam":
                graft = g / (np.sqrt(s["nu"] / (1 - beta2 ** t)) + graft_eps)
            elif graft_type == "rmsprop":
                graft = g / (np.sqrt(s["nu"]) + graft_eps)
            else:
                graft = g
            dims = [d for d in g.shape if d != 1]
            d = graft
            if len(dims) >= 2:
                m = g.reshape(-1, dims[-1])
                if "L" not in s:
                    s.update(L=np.zeros((m.shape[0],) * 2), R=np.zeros((m.shape[1],) * 2),
                             Lr=np.eye(m.shape[0]), Rr=np.eye(m.shape[1]))
                s["L"] = beta2 * s["L"] + (1 - beta2) * m @ m.T
                s["R"] = beta2 * s["R"] + (1 - beta2) * m.T @ m
                if c >= start and (c - start) % every == 0:
                    s["Lr"] = _np_inv_root(s["L"], 4, epsilon)
                    s["Rr"] = _np_inv_root(s["R"], 4, epsilon)
                pm = (s["Lr"] @ m @ s["Rr"]).reshape(g.shape)
                if graft_type != "none":
                    pm *= np.linalg.norm(graft) / np.linalg.norm(pm)
                if c >= start:
                    d = pm
            if b1 > 0:
                s["mu"] = b1 * s["mu"] + (1 - b1) * d
                # Bias correction with the (bias-corrected) Adam graft only.
                debias = (lambda k: 1 - b1 ** k) if graft_type == "adam" else (lambda k: 1.0)
                if nesterov:
                    d = b1 * s["mu"] / debias(t + 1) + (1 - b1) * d / debias(t)
                else:
                    d = s["mu"] / debias(t)
            upd[name] = d
        out.append(upd)
    return out


def _run(tx, grads, params=None):
    params = grads[0] if params is None else params
    state = tx.init(params)
    update = jax.jit(tx.update)
    outs = []
    for g in grads:
        u, state = update(g, state)
        outs.append(u)
    return outs, state


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _grads(shapes, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [{k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
            for _ in range(steps)]


# -------------------------------------------------------------------- tests --

@pytest.mark.parametrize("kw", [
    dict(graft_type="none", b1=0.0, nesterov=False, start=0, every=1),
    dict(graft_type="none", b1=0.9, nesterov=False, start=2, every=3),
    dict(graft_type="adam", b1=0.9, nesterov=True, start=1, every=2),
    dict(graft_type="rmsprop", b1=0.5, nesterov=False, start=0, every=1),
    dict(graft_type="sgd", b1=0.0, nesterov=False, start=3, every=1),
    dict(graft_type="sgd", b1=0.9, nesterov=True, start=2, every=2),
])
def test_matches_dense_numpy(kw):
    shapes = {"w": (6, 5), "conv": (2, 3, 1, 4), "b": (5,), "col": (7, 1)}
    grads = _grads(shapes, steps=6)
    common = dict(beta2=0.95, epsilon=1e-4, b1=kw["b1"], nesterov=kw["nesterov"],
                  graft_type=kw["graft_type"])
    tx = sh.scale_by_shampoo(block_size=128, preconditioning_compute_steps=kw["every"],
                             start_preconditioning_step=kw["start"], **common)
    got, _ = _run(tx, grads)
    want = _np_shampoo(grads, start=kw["start"], every=kw["every"], **common)
    for g_step, w_step in zip(got, want):
        for name in shapes:
            assert g_step[name].shape == shapes[name]
            assert _rel(g_step[name], w_step[name]) < 1e-5, name


@pytest.mark.parametrize("graft_type", sh.GRAFT_TYPES)
def test_first_steps_have_the_size_of_the_reference(graft_type):
    """A constant rank-1 gradient keeps every direction parallel, so the update's norm has a
    closed form: the graft's norm (for 'none' the raw preconditioned norm) averaged by the
    momentum EMA, bias corrected over the Adam graft only, as in distributed Shampoo
    (google-research/precondition, `moving_average_for_momentum=True`) for the others."""
    beta2, b1, eps, steps = 0.999, 0.9, 1e-4, 4
    rng = np.random.default_rng(7)
    u, v, b = rng.normal(size=6), rng.normal(size=4), rng.normal(size=4)
    g = {"w": 3.0 * np.outer(u, v) / np.linalg.norm(u) / np.linalg.norm(v), "b": b}
    tx = sh.scale_by_shampoo(beta2=beta2, b1=b1, epsilon=eps, graft_type=graft_type,
                             start_preconditioning_step=0, preconditioning_compute_steps=1)
    got, _ = _run(tx, [{k: jnp.asarray(x, jnp.float32) for k, x in g.items()}] * steps)

    def direction_norm(name, t):  # Of step t's grafted direction.
        x = g[name]
        if graft_type == "adam":
            return np.linalg.norm(x / (np.abs(x) + 1e-8))
        if graft_type == "rmsprop":
            return np.linalg.norm(x / (np.sqrt(1 - beta2 ** t) * np.abs(x) + 1e-8))
        if graft_type == "none" and name == "w":  # (c s^2 (1 + eps))^(-1/2) s, c = 1 - beta2^t.
            return 1 / np.sqrt((1 - beta2 ** t) * (1 + eps))
        return np.linalg.norm(x)

    for name in g:
        mu = 0.0
        for t, update in enumerate(got, start=1):
            mu = b1 * mu + (1 - b1) * direction_norm(name, t)
            want = mu / (1 - b1 ** t) if graft_type == "adam" else mu
            assert float(np.linalg.norm(update[name])) == pytest.approx(want, rel=1e-4), (name, t)
    if graft_type == "rmsprop":  # The first step: (1 - b1) / sqrt(1 - beta2) per entry, ~3.2.
        assert np.linalg.norm(got[0]["b"]) == pytest.approx(
            (1 - b1) / np.sqrt(1 - beta2) * 2.0, rel=1e-4)


def test_blocking_equals_separate_blocks():
    grads = _grads({"w": (10, 7)}, steps=5, seed=1)
    kw = dict(beta2=0.9, epsilon=1e-4, graft_type="none", b1=0.9,
              preconditioning_compute_steps=2, start_preconditioning_step=1)
    blocked, state = _run(sh.scale_by_shampoo(block_size=4, **kw), grads)
    assert state.stats["w"].left.shape == (6, 4, 4)  # 3 x 2 blocks
    assert state.stats["w"].right.shape == (6, 4, 4)
    rows, cols = [(0, 4), (4, 8), (8, 10)], [(0, 4), (4, 7)]
    split = lambda w: {f"{r}{c}": w[r0:r1, c0:c1] for r, (r0, r1) in enumerate(rows)
                       for c, (c0, c1) in enumerate(cols)}
    separate, _ = _run(sh.scale_by_shampoo(block_size=128, **kw), [split(g["w"]) for g in grads])
    for b, s in zip(blocked, separate):
        for key, block in split(b["w"]).items():
            assert _rel(block, s[key]) < 1e-5, key


def test_faster_than_adam_on_ill_conditioned_least_squares():
    d, k, n, steps = 32, 8, 64, 1000
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(n, d)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = (u * np.logspace(0, -2.05, d)) @ v.T  # rotated, cond(X^T X) = 10^4.1
    assert np.linalg.cond(x.T @ x) >= 1e4
    x = jnp.asarray(x, jnp.float32)
    y = x @ jnp.asarray(rng.normal(size=(d, k)), jnp.float32)
    loss = lambda w: 0.5 * jnp.sum((x @ w - y) ** 2)
    w0 = jnp.zeros((d, k))
    target = 1e-5 * float(loss(w0))
    lrs = jnp.asarray([0.03, 0.1, 0.3, 1.0, 3.0])

    def steps_to_target(make):
        def losses(lr):
            tx = make(lr)

            def step(carry, _):
                w, s = carry
                l, g = jax.value_and_grad(loss)(w)
                upd, s = tx.update(g, s, w)
                return (optax.apply_updates(w, upd), s), l

            return jax.lax.scan(step, (w0, tx.init(w0)), None, length=steps)[1]

        curves = np.asarray(jax.jit(jax.vmap(losses))(lrs))
        hits = [np.flatnonzero(c <= target) for c in curves]
        return [int(h[0]) if h.size else steps + 1 for h in hits]

    adam = steps_to_target(lambda lr: optax.adam(lr))
    shamp = steps_to_target(lambda lr: sh.shampoo(lr))
    assert 0 < int(np.argmin(adam)) < len(lrs) - 1  # Adam's best lr is inside the grid
    assert min(shamp) <= steps and 2 * min(shamp) <= min(adam), (shamp, adam)


def _tree(seed=2):
    rng = np.random.default_rng(seed)
    shapes = {"conv": {"kernel": (3, 3, 4, 8), "bias": (8,)}, "dense": {"kernel": (40, 6)}}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


def test_jit_sharding_and_orbax_roundtrip(tmp_path):
    params = _tree()
    tx = sh.shampoo(1e-2, block_size=16, preconditioning_compute_steps=3,
                    start_preconditioning_step=4)
    state = tx.init(params)
    inner = state[0]
    assert inner.count.dtype == jnp.int32
    assert inner.stats["conv"]["kernel"].left.shape == (3, 16, 16)  # (3*3*4, 8) in 16-row blocks
    assert inner.stats["conv"]["kernel"].right.shape == (3, 8, 8)
    assert inner.stats["dense"]["kernel"].right.shape == (3, 6, 6)
    assert inner.stats["conv"]["bias"] == optax.MaskedNode()

    mesh = jax.make_mesh((1,), ("data",))
    shardings = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), state)
    update = jax.jit(tx.update, out_shardings=(None, shardings))
    state = jax.device_put(state, shardings)
    for g in _grads({"a": ()}, 8):
        grads = jax.tree.map(lambda p: p * g["a"], params)
        upd, state = update(grads, state)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(upd))
    assert int(state[0].count) == 8

    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "state", state)
    ckpt.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = ckpt.restore(tmp_path / "state", abstract)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    u1, _ = update(params, state)
    u2, _ = update(params, restored)
    jax.tree.map(np.testing.assert_array_equal, u1, u2)


def test_bfloat16_statistics():
    params = _tree()
    grads = [_tree(seed) for seed in range(10, 16)]
    kw = dict(block_size=16, preconditioning_compute_steps=2, start_preconditioning_step=1)
    u16, s16 = _run(sh.scale_by_shampoo(statistics_dtype="bfloat16", **kw), grads, params)
    # bfloat16 statistics raise the relative damping to bfloat16's machine epsilon.
    bf16_eps = float(jnp.finfo(jnp.bfloat16).eps)
    u32, s32 = _run(sh.scale_by_shampoo(epsilon=bf16_eps, **kw), grads, params)
    for x in jax.tree.leaves((s16.stats, s16.roots)):
        assert x.dtype == jnp.bfloat16
    for x in jax.tree.leaves((s32.stats, s32.roots)):
        assert x.dtype == jnp.float32
    for step16, step32 in zip(u16, u32):
        for a, b in zip(jax.tree.leaves(step16), jax.tree.leaves(step32)):
            assert a.dtype == jnp.float32 and np.isfinite(np.asarray(a)).all()
            assert _rel(a, b) < 2e-2


def test_adam_graft_before_preconditioning_is_adam_without_momentum():
    grads = _grads({"w": (5, 4), "b": (4,)}, steps=4, seed=3)
    lr = optax.linear_schedule(1e-2, 1e-3, 4)
    got, _ = _run(sh.shampoo(lr, start_preconditioning_step=100, b1=0.0), grads)
    want, _ = _run(optax.adam(lr, b1=0.0), grads)
    for g, w in zip(got, want):
        for name in g:
            np.testing.assert_allclose(g[name], w[name], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("p", [2, 4])
def test_inverse_root_matches_eigh(p):
    rng = np.random.default_rng(4)
    g = rng.normal(size=(3, 64, 20)) * np.logspace(0, -2, 20)  # rank 20, ill-conditioned
    stats = np.concatenate([g @ np.swapaxes(g, 1, 2), np.zeros((1, 64, 64))])
    got = np.asarray(sh._inverse_pth_root(jnp.asarray(stats, jnp.float32), p, 1e-4))
    for s_, r in zip(stats, got):
        assert _rel(r, _np_inv_root(s_, p, 1e-4)) < 1e-4


def test_roots_are_computed_in_one_batched_iteration_per_matrix_side():
    params = {"a": jnp.ones((12, 6)), "b": jnp.ones((3, 3, 2, 6)), "c": jnp.ones((6, 20)),
              "d": jnp.ones((5,))}
    tx = sh.scale_by_shampoo(block_size=8)
    state = tx.init(params)
    # Six factor arrays (a, b, c left and right) but two sides, 8 and 6: two Newton loops.
    assert len(re.findall(r"\bwhile\[", str(jax.make_jaxpr(tx.update)(params, state)))) == 2
    rng = np.random.default_rng(6)
    stats = []
    for n, k in ((2, 8), (2, 6), (3, 8), (3, 6), (1, 5)):
        g = rng.normal(size=(n, k, 3 * k))
        stats.append(jnp.asarray(g @ np.swapaxes(g, 1, 2), jnp.float32))
    got = sh._inverse_roots(stats, 4, 1e-4, jnp.bfloat16)
    for s_, r in zip(stats, got):
        assert r.shape == s_.shape and r.dtype == jnp.bfloat16
        want = np.stack([_np_inv_root(m, 4, 1e-4) for m in np.asarray(s_, np.float64)])
        assert _rel(np.asarray(r, np.float32), want) < 1e-2  # bfloat16 rounding


def test_inverse_root_is_scale_covariant_for_tiny_and_huge_statistics():
    """Regression: statistics of gradients ~1e-12 underflowed the Newton iteration (inf roots)."""
    rng = np.random.default_rng(5)
    g = rng.normal(size=(2, 16, 8))
    stats = g @ np.swapaxes(g, 1, 2)
    base = np.asarray(sh._inverse_pth_root(jnp.asarray(stats, jnp.float32), 4, 1e-4))
    for c in (1e-30, 1e-24, 1e-12, 1e12, 1e24):
        got = np.asarray(sh._inverse_pth_root(jnp.asarray(c * stats, jnp.float32), 4, 1e-4))
        assert _rel(got, c ** -0.25 * base) < 1e-4, c


@pytest.mark.parametrize("scale", [1e-15, 1e-12, 1e-9, 1e-3, 1e3])
def test_updates_stay_finite_and_graft_sized_for_any_gradient_scale(scale):
    grads = [{k: scale * v for k, v in g.items()} for g in _grads({"w": (12, 6)}, 6)]
    kw = dict(start_preconditioning_step=1, preconditioning_compute_steps=2, b1=0.0)
    got, _ = _run(sh.scale_by_shampoo(**kw), grads)
    reference, _ = _run(sh.scale_by_shampoo(**kw), _grads({"w": (12, 6)}, 6))
    for g, r in zip(got, reference):
        for name in g:
            assert np.isfinite(g[name]).all()
            # The Adam graft fixes the norm; only graft_eps (1e-8) breaks scale invariance, and
            # float32 Newton iterations agree to about 1e-3.
            if scale >= 1e-3:
                assert _rel(g[name], r[name]) < 5e-3


_TRAIN_STEP_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec
    from big_distill.models.bit import ResNetV2
    from big_distill.optim import shampoo as sh

    model = ResNetV2(depth=14, width=0.125, num_classes=10)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 1)), jnp.float32)
    y = jnp.array([1, 2])
    from tests.helpers import init_variables
    params = init_variables(model, 0, x.shape)["params"]
    tx = sh.shampoo(1e-3, start_preconditioning_step=2, preconditioning_compute_steps=2)

    def step(state, x, y):
        params, opt_state = state
        loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, x), y).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    replicated = NamedSharding(jax.make_mesh((1,), ("data",)), PartitionSpec())
    step = jax.jit(step, donate_argnums=0, in_shardings=replicated, out_shardings=replicated)
    state = jax.device_put((params, tx.init(params)), replicated)
    losses = []
    for _ in range(6):  # roots are recomputed at steps 2 and 4
        state, loss = step(state, x, y)
        losses.append(float(jax.device_get(loss)))
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    roots = [r for r in jax.tree.leaves(state[1][0].roots) if r.shape[-1] > 1]
    assert any(not np.allclose(r, np.eye(r.shape[-1])) for r in roots)
    print("OK")
""")


def test_no_deadlock_in_jitted_conv_train_step():
    """Regression: batched LAPACK eigh inside the train step deadlocked XLA:CPU's thread pool."""
    try:
        res = subprocess.run([sys.executable, "-c", _TRAIN_STEP_SCRIPT], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("Shampoo train step hung (deadlock) for more than 120 s")
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        sh.scale_by_shampoo(graft_type="adagrad")
    with pytest.raises(ValueError):
        sh.scale_by_shampoo(preconditioning_compute_steps=0)
    with pytest.raises(ValueError):
        sh.scale_by_shampoo(beta2=1.0)
    with pytest.raises(ValueError):
        sh.scale_by_shampoo(exponent_override=2.5)
