"""Kernels chosen per backend (`models.kernels`): the implementations of each switch agree on the
CPU (forward and gradients, float32 and bfloat16), a bfloat16 model reads no float32 in its
matmuls and convolutions, 'auto' resolves per backend, and `config.kernels` reaches every model
of a run."""

import json

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest

from big_distill import build, errors, models, parallel, workdir
from big_distill.models import kernels as kernels_lib, mobilenet_v3
from tests.helpers import get_config

CPU = kernels_lib.Kernels('taps', 'heads_first', 'student')
ACCELERATOR = kernels_lib.Kernels('grouped', 'fused', 'default')
# Two rows of implementations that run here, side by side: both depthwise convolutions, and two
# attentions that round bfloat16 apart ('heads_first', 'fused''s function, is tested with the
# attentions).
ROWS = {'cpu': kernels_lib.Kernels('taps', 'einsum'), 'accelerator': ACCELERATOR}
DTYPES = ('float32', 'bfloat16')


def matmuls(fn, *args) -> list[jex.core.JaxprEqn]:
  """The matmuls and convolutions of `fn(*args)`, nested computations included."""
  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
        yield eqn
    for sub in jex.core.subjaxprs(jaxpr):
      yield from walk(sub)
  return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


def float32_matmuls(fn, *args) -> list[str]:
  """The matmuls and convolutions of `fn(*args)` that read a float32 operand."""
  return [str(e) for e in matmuls(fn, *args) if any(v.aval.dtype == jnp.float32 for v in e.invars)]


def outputs_and_gradients(fn, args, cotangent):
  """fn(*args) and the gradients of <fn(*args), cotangent> with respect to every argument."""
  out, vjp = jax.vjp(fn, *args)
  return (out, *vjp(cotangent.astype(out.dtype)))


def assert_agree(a, b, float32: bool):
  """Equal to float32 rounding (tight) or to bfloat16's (loose), relative to the largest value."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  scale = np.abs(b).max()
  assert scale > 0.1
  np.testing.assert_allclose(a, b, rtol=0, atol=(1e-5 if float32 else 3e-2) * scale)


def normal(rng, shape, dtype, std=1.0):
  return jnp.asarray(rng.normal(0.0, std, shape), jnp.float32).astype(dtype)


@pytest.mark.parametrize('k, stride, size', [(3, 1, 8), (3, 2, 7), (5, 1, 7), (5, 2, 8)])
def test_depthwise_implementations_agree(k, stride, size):
  rng, pad = np.random.default_rng(k * stride * size), (stride - 1 + k - 1) // 2
  x, kernel = normal(rng, (2, size, size, 5), jnp.float32), normal(rng, (k, k, 1, 5), jnp.float32)
  cotangent = normal(rng, (2, (size - 1) // stride + 1, (size - 1) // stride + 1, 5), jnp.float32)

  @jax.jit
  def both(x, kernel):
    return {(name, dtype): outputs_and_gradients(
        lambda x, w: fn(x, w, stride, pad), (x.astype(dtype), kernel.astype(dtype)), cotangent)
            for name, fn in kernels_lib.DEPTHWISE.items() for dtype in DTYPES}

  got = both(x, kernel)
  for dtype in DTYPES:
    taps, grouped = got['taps', dtype], got['grouped', dtype]
    assert all(t.dtype == dtype for t in taps + grouped)  # Output, d/dx, d/dkernel.
    for a, b, reference in zip(taps, grouped, got['taps', 'float32']):
      assert_agree(a, b, dtype == 'float32')
      assert_agree(a, reference, dtype == 'float32')
  low = (x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
  assert not float32_matmuls(lambda x, w: kernels_lib.depthwise_grouped(x, w, stride, pad), *low)


def test_attention_implementations_agree():
  rng = np.random.default_rng(0)
  q, k, v = (normal(rng, (2, 5, 3, 8), jnp.float32, 2.0) for _ in range(3))  # 3 heads of 8.
  cotangent = normal(rng, (2, 5, 3, 8), jnp.float32)

  on_cpu = kernels_lib.Kernels.available('attention', 'cpu')  # cuDNN's needs a GPU.

  @jax.jit
  def both(q, k, v):
    return {(name, dtype): outputs_and_gradients(
        fn, tuple(t.astype(dtype) for t in (q, k, v)), cotangent)
            for name, fn in kernels_lib.ATTENTION.items() for dtype in DTYPES
            if name in on_cpu}

  got = both(q, k, v)
  assert len(on_cpu) == 3
  for name in on_cpu:
    for dtype in DTYPES:
      assert all(t.dtype == dtype for t in got[name, dtype])  # Output, d/dq, d/dk, d/dv.
      for a, reference in zip(got[name, dtype], got['einsum', 'float32']):
        assert_agree(a, reference, dtype == 'float32')
  # 'heads_first' moves the heads before the tokens: its dots' batch axes lead in both operands.
  dots = matmuls(kernels_lib.heads_first_attention, q, k, v)
  assert [e.params['dimension_numbers'][1] for e in dots] == [((0, 1), (0, 1))] * 2
  low = tuple(t.astype(jnp.bfloat16) for t in (q, k, v))
  for name in on_cpu:  # Float32 softmax, bfloat16 matmuls.
    assert not float32_matmuls(kernels_lib.ATTENTION[name], *low)


def random_variables(shapes, rng):
  """Random variables of these shapes, the head's too, that keep activations of the order of 1
  (compiling a MobileNetV3's init would take longer than the test)."""
  def leaf(path, shape):
    name = path[-1].key
    if name in ('scale', 'var'):  # Norms' scales, BatchNorm's running variances.
      return rng.uniform(0.5, 1.5, shape.shape).astype(np.float32)
    std = 1 / np.sqrt(np.prod(shape.shape[:-1])) if name == 'kernel' else 0.1
    return rng.normal(0.0, std, shape.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.mark.parametrize('family', ['mobilenet_v3', 'vit'])
def test_models_compute_the_same_with_either_kernels(family):
  """The parameters are the same for both rows of kernels; the logits agree (float32 tightly,
  bfloat16 loosely), and in bfloat16 no matmul or convolution reads float32."""
  spec = models.spec(models.FAMILIES[family], **models.FAMILIES[family].tiny)
  images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  built = {(row, dtype): spec.create(10, dtype, kernels)
           for row, kernels in ROWS.items() for dtype in DTYPES}
  shapes = {key: jax.eval_shape(m.init, jax.random.PRNGKey(0), images) for key, m in built.items()}
  assert len({str(s) for s in shapes.values()}) == 1
  variables = random_variables(shapes['cpu', 'float32'], np.random.default_rng(2))
  logits = jax.jit(lambda v, x: {key: m.apply(v, x) for key, m in built.items()})(
      variables, images)
  assert_agree(logits['accelerator', 'float32'], logits['cpu', 'float32'], float32=True)
  for row in ROWS:
    assert_agree(logits[row, 'bfloat16'], logits['cpu', 'float32'], float32=False)
    assert not float32_matmuls(built[row, 'bfloat16'].apply, variables, images)
  if family == 'mobilenet_v3':  # The switch reached every depthwise layer.
    depthwise = sum(b.kind != 'cn' for stage in mobilenet_v3.block_specs(**spec.arguments)
                    for b in stage)
    grouped = [sum(e.params.get('feature_group_count', 1) > 1 for e in matmuls(
        built[row, 'float32'].apply, variables, images)) for row in ROWS]
    assert grouped == [0, depthwise]
  else:  # bfloat16 rounds the einsum's logits, not the fused attention's.
    assert not np.array_equal(logits['cpu', 'bfloat16'], logits['accelerator', 'bfloat16'])


def test_auto_is_the_backends_row_and_bad_names_are_one_line():
  assert kernels_lib.Kernels().resolved('cpu') == CPU
  assert kernels_lib.Kernels().resolved('gpu') == ACCELERATOR
  assert kernels_lib.Kernels().resolved('tpu') == ACCELERATOR
  assert kernels_lib.Kernels(depthwise='grouped').resolved('cpu') == kernels_lib.Kernels(
      'grouped', 'heads_first', 'student')
  assert kernels_lib.Kernels(attention='einsum').resolved('tpu') == kernels_lib.Kernels(
      'grouped', 'einsum', 'default')
  assert kernels_lib.Kernels().resolved() == CPU  # The tests run on the CPU.
  with pytest.raises(errors.BadInput, match=r"^config.kernels.depthwise='fast'; use one of auto, "
                     r"taps, grouped\.$"):
    kernels_lib.Kernels(depthwise='fast').resolved('gpu')
  with pytest.raises(errors.BadInput, match=r"^config.kernels.attention='flash'; use one of "
                     r"auto, einsum, fused, heads_first, cudnn\.$"):
    models.resolve('bit').create(10, kernels=kernels_lib.Kernels(attention='flash'))
  assert kernels_lib.Kernels(attention='cudnn').resolved('gpu').attention == 'cudnn'
  with pytest.raises(errors.BadInput, match=r"^config.kernels.attention='cudnn' runs on a gpu "
                     r"only; this backend is cpu\.$"):
    kernels_lib.Kernels(attention='cudnn').resolved()
  assert kernels_lib.Kernels.available('attention', 'cpu') == ['einsum', 'fused', 'heads_first']
  assert kernels_lib.Kernels.available('attention', 'gpu') == ['einsum', 'fused', 'heads_first',
                                                               'cudnn']


def test_the_train_steps_scheduler_is_the_student_familys_on_a_cpu():
  """'auto' gives a MobileNetV3 student's train step XLA:CPU's memory-optimised scheduler and a
  BiT or ViT student's the default; either can be asked for (the memory one on a CPU only)."""
  memory = {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}
  mesh = parallel.make_mesh(1, 1)

  def options(student, teacher_model='bit', remat=False, **kernels):
    config = get_config('distill.py', f'teacher=unused,teacher_model={teacher_model}')
    config.student.model, config.remat = student, remat
    config.kernels.update(kernels)
    return build.train_step_options(config, mesh, models.resolve(config.student))

  assert options('mobilenet_v3') == memory
  assert options('mobilenet_v3', teacher_model='vit') == memory  # The student's family decides.
  assert options('bit') is None and options('vit') is None
  assert options('mobilenet_v3', scheduler='default') is None
  assert options('bit', scheduler='memory') == memory
  assert options('mobilenet_v3', remat=True) == {
      **memory, 'xla_disable_hlo_passes': 'cse_barrier_expander'}
  with pytest.raises(errors.BadInput, match=r"^config.kernels.scheduler='memory' runs on a cpu "
                     r"only; this backend is gpu\.$"):
    kernels_lib.Kernels(scheduler='memory').resolved('gpu')
  assert kernels_lib.Kernels(scheduler='student').scheduler_options('gpu', 'memory') == {}
  with pytest.raises(errors.BadInput, match=r"^config.kernels.scheduler='fast'; use one of "
                     r"auto, student, default, memory\.$"):
    kernels_lib.Kernels(scheduler='fast').resolved('cpu')


def test_config_kernels_reach_the_student_and_teachers_not_the_architecture():
  config = get_config('distill.py', 'teacher=unused,teacher_model=vit,student=mobilenet_v3')
  config.kernels.update(depthwise='grouped', attention='fused', scheduler='default')
  run = build.create_run(config, data=build.Data(10, 1, 64), teacher_params='abstract')
  assert run.student.kernels == run.teachers.models[0].kernels == ACCELERATOR
  assert run.config.student.model == str(run.student_spec)  # No kernels in a spec.
  assert 'kernels' not in run.student_spec.architecture()
  assert models.resolve('mobilenet_v3').create(10).kernels == CPU  # 'auto' on the CPU.
  assert not hasattr(models.resolve('bit').create(10), 'kernels')  # BiT has no switch.
  with pytest.raises(errors.BadInput, match=r'^config.student: kernels: not an argument'):
    models.resolve(dict(model='mobilenet_v3', kernels='grouped'), 'config.student')


def test_a_run_from_before_the_kernels_key_continues_and_builds_with_auto(tmp_path):
  config = get_config('teacher.py', 'model=mobilenet_v3')
  stored = workdir.config_json(config)
  del stored['kernels']
  (tmp_path / workdir.CONFIG).write_text(json.dumps(stored))
  workdir.write_data(str(tmp_path), num_classes=10, channels=1, num_train=64)
  workdir.check(config, str(tmp_path))  # Not refused as another config.
  assert build.create_run_from_workdir(str(tmp_path)).student.kernels == CPU


@pytest.mark.parametrize('size, stride, padding', [
    (1, 1, (1, 1)), (2, 1, (1, 1)), (2, 2, (1, 1)), (3, 2, (1, 1)), (1, 2, (3, 3)), (4, 2, (3, 3)),
    (5, 1, (0, 0)), (5, 2, (0, 0)), (8, 1, (1, 1))])
def test_conv2d_matches_xla(size, stride, padding):
  """Every path (1x1 dot, im2col where the output is smaller than the kernel, XLA's
  convolution) equals XLA's convolution."""
  rng = np.random.default_rng(4)
  k = 2 * padding[0] + 1
  x = rng.normal(size=(2, size, size + 1, 5)).astype(np.float32)
  kernel = rng.normal(size=(k, k, 5, 6)).astype(np.float32)
  expected = jax.lax.conv_general_dilated(x, kernel, (stride, stride), (padding, padding),
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(kernels_lib.conv2d(x, kernel, stride, padding), expected,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('lhs, rhs, contract', [
    ((2, 3, 4, 5), (5, 6), 1),  # A 1x1 convolution's dot, `Dense` over tokens.
    ((2, 3, 8), (8, 2, 4), 1),  # Attention's query/key/value projection.
    ((2, 3, 2, 4), (2, 4, 8), 2),  # Its output projection.
    ((3, 5), (5, 2), 1)])  # Nothing to flatten.
def test_dot_general_is_lax_dot_general_with_one_contracted_axis_in_the_kernel_gradient(
    lhs, rhs, contract):
  """`kernels.dot_general` equals `lax.dot_general` in value and gradients, and the kernel's
  gradient contracts one axis (the flattened leading axes), not several."""
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=lhs).astype(np.float32), rng.normal(size=rhs).astype(np.float32)
  numbers = ((tuple(range(len(lhs) - contract, len(lhs))), tuple(range(contract))), ((), ()))
  ours = lambda x, w: kernels_lib.dot_general(x, w, numbers)
  plain = lambda x, w: jax.lax.dot_general(x, w, numbers)
  np.testing.assert_allclose(ours(x, w), plain(x, w), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(plain), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  def kernel_gradient_axes(f):  # Axes its kernel gradient's dot contracts.
    jaxpr = jax.make_jaxpr(jax.grad(loss(f), 1))(x, w).jaxpr
    dot, = [e for e in jaxpr.eqns if e.primitive.name == 'dot_general'
            and e.outvars[0].aval.size == w.size]
    return len(dot.params['dimension_numbers'][0][0])
  assert kernel_gradient_axes(ours) == 1
  assert kernel_gradient_axes(plain) == len(lhs) - contract  # Several without the flattening.
