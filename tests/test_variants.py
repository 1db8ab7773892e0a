"""The four teaching setups: what each model sees, the fixed teacher's logits cache, extra data."""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from big_distill import workdir as workdir_lib
from big_distill import checkpoint, configlib, errors, models, steps, teachers as teachers_lib
from big_distill import variants
from big_distill.data import input_pipeline
from tests.helpers import FUNMATCH_CONFIG, TINY_STUDENT, read_metrics, run_main


def _input_config(**overrides) -> ml_collections.ConfigDict:
  cfg = configlib.base_config().input
  cfg.update({**dict(train_split='train[:256]', eval_split='test[:64]', batch_size=16,
                     eval_batch_size=64, shuffle_buffer=256, cache=True), **overrides})
  return cfg


def _plain_images(builder, split: str, cfg) -> dict[bytes, int]:
  """{bytes of an un-augmented (eval-preprocessed) image of `split`: its index}."""
  ds = input_pipeline.eval_batches(builder, split, batch_size=cfg.eval_batch_size,
                                   resolution=cfg.resolution, central_crop=cfg.central_crop)
  return {img.tobytes(): int(i) for b in ds.as_numpy_iterator()
          for img, i, m in zip(b['image'], b['index'], b['mask']) if m}


def _crop_flip_sources(plain: dict[bytes, int], padding: int) -> dict[bytes, int]:
  """{bytes of every padded crop and flip of a plain image: the image's index}."""
  sources = {}
  for data, index in plain.items():
    image = np.frombuffer(data, np.float32).reshape(28, 28, 1)
    padded = np.pad(image, [(padding, padding), (padding, padding), (0, 0)],
                    constant_values=-1.0)
    for dy in range(2 * padding + 1):
      for dx in range(2 * padding + 1):
        crop = padded[dy:dy + 28, dx:dx + 28]
        sources[np.ascontiguousarray(crop).tobytes()] = index
        sources[np.ascontiguousarray(crop[:, ::-1]).tobytes()] = index
  return sources


def test_teacher_views_of_the_pipeline(fmnist_builder):
  """consistent: one image; independent: two augmentations of the same image; fixed: the plain one."""
  cfg = _input_config(augment='crop_flip', crop_padding=1)
  plain = _plain_images(fmnist_builder, cfg.train_split, cfg)
  same = next(input_pipeline.train_batches(cfg, fmnist_builder, seed=3))
  assert set(same) == {'image', 'label'}

  indep = next(input_pipeline.train_batches(cfg, fmnist_builder, seed=3, teacher_view='augmented'))
  np.testing.assert_array_equal(indep['image'], same['image'])  # The student's view is unchanged.
  assert np.mean([not np.array_equal(t, s) for t, s in
                  zip(indep['teacher_image'], indep['image'])]) > 0.5
  sources = _crop_flip_sources(plain, 1)
  teacher_sources = [sources.get(t.tobytes()) for t in indep['teacher_image']]
  assert None not in teacher_sources  # Each an augmentation of a training image ...
  assert teacher_sources == [sources.get(s.tobytes()) for s in indep['image']]  # ... the same.

  fixed = next(input_pipeline.train_batches(cfg, fmnist_builder, seed=3,
                                            teacher_view='unaugmented'))
  np.testing.assert_array_equal(fixed['image'], same['image'])
  assert all(t.tobytes() in plain for t in fixed['teacher_image'])
  assert not all(s.tobytes() in plain for s in fixed['image'])  # The student's are augmented.

  indexed = next(input_pipeline.train_batches(cfg, fmnist_builder, seed=3, teacher_view='index'))
  reference = next(iter(tfds.as_numpy(fmnist_builder.as_dataset(
      split=cfg.train_split, batch_size=256, shuffle_files=False))))
  np.testing.assert_array_equal(reference['label'][indexed['index']], same['label'])


class _Probe(nn.Module):
  """A linear classifier on the flattened image: its logits depend on every input pixel."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _np_kl(teacher_logits, student_logits, temperature):
  def log_softmax(z):
    z = z / temperature
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  t, s = log_softmax(teacher_logits), log_softmax(student_logits)
  return np.mean(np.sum(np.exp(t) * (t - s), -1)) * temperature**2


@pytest.mark.parametrize('variant', ['fixed', 'independent', 'consistent', 'funmatch', 'cached'])
def test_distill_step_feeds_each_model_its_view(fmnist_builder, variant):
  """The step's loss equals a NumPy loss computed from the views the variant prescribes."""
  cfg = _input_config(augment='crop_flip', crop_padding=1)
  view = variants.INDEX if variant == 'cached' else variants.get(variant).teacher_view
  batch = next(input_pipeline.train_batches(cfg, fmnist_builder, seed=5, teacher_view=view))
  teacher, student = _Probe(), _Probe()
  x0 = jnp.zeros((1, 28, 28, 1))
  t_params = teacher.init(jax.random.PRNGKey(1), x0)['params']
  s_params = student.init(jax.random.PRNGKey(2), x0)['params']
  w_t, b_t = (np.asarray(t_params['Dense_0'][k]) for k in ('kernel', 'bias'))
  w_s, b_s = (np.asarray(s_params['Dense_0'][k]) for k in ('kernel', 'bias'))
  if variant == 'cached':  # Precomputed logits of the plain images stand in for the teacher.
    table = np.random.RandomState(0).normal(size=(256, 1, 10)).astype(np.float32) * 3
    batch['teacher_logits'] = table[batch.pop('index')]
  tx = optax.sgd(0.1)
  state = steps.new_state({'params': s_params}, tx)
  rng, temperature, alpha = jax.random.PRNGKey(7), 2.0, 0.4
  step = jax.jit(functools.partial(
      steps.train_step, student=student, tx=tx, schedule=optax.constant_schedule(0.1),
      norm=optax.tree.norm,
      teachers=teachers_lib.Teachers((teacher,), (None,)),
      variant=variants.get('fixed' if variant == 'cached' else variant), temperature=temperature,
      mixup_alpha=alpha))
  _, metrics = step(state, ({'params': t_params},), jax.tree_util.tree_map(jnp.asarray, batch),
                    rng)

  flat = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
  student_in = teacher_in = batch['image']
  if variant in ('fixed', 'independent'):
    teacher_in = batch['teacher_image']
    assert not np.array_equal(teacher_in, student_in)
  if variant == 'funmatch':
    ratio = float(jax.random.beta(jax.random.fold_in(rng, 0), alpha, alpha))
    student_in = teacher_in = ratio * batch['image'] + (1 - ratio) * np.roll(batch['image'], 1, 0)
  teacher_logits = (batch['teacher_logits'][:, 0] if variant == 'cached'
                    else flat(teacher_in) @ w_t + b_t)
  expected = _np_kl(teacher_logits, flat(student_in) @ w_s + b_s, temperature)
  np.testing.assert_allclose(float(metrics['loss']), expected, rtol=2e-5)
  # A wrong view would give another loss: the check is sharp.
  if variant != 'consistent' and variant != 'cached':
    wrong = _np_kl(flat(batch['image']) @ w_t + b_t, flat(batch['image']) @ w_s + b_s,
                   temperature)
    assert abs(wrong - expected) > 1e-3 * abs(expected)


def test_mixup_makes_convex_combinations_of_neighbours():
  images = jax.random.uniform(jax.random.PRNGKey(0), (8, 4, 4, 3), minval=-1, maxval=1)
  drawn = steps.mixup_ratio(jax.random.PRNGKey(3), 1.0)
  mixed = np.asarray(steps.mixup(images, drawn))
  x, neighbour = np.asarray(images), np.roll(np.asarray(images), 1, 0)
  ratio = np.sum((mixed - neighbour) * (x - neighbour)) / np.sum((x - neighbour)**2)
  assert 0 < ratio < 1 and ratio == pytest.approx(float(drawn), abs=1e-6)
  np.testing.assert_allclose(mixed, ratio * x + (1 - ratio) * neighbour, atol=1e-6)
  # One ratio per row (a replayed batch's stored ratio): the same arithmetic.
  per_row = np.asarray(steps.mixup(images, jax.numpy.full((8,), drawn)))
  np.testing.assert_array_equal(per_row, mixed)


def test_blocks_of_steps_are_the_stream_at_those_steps(fmnist_builder):
  """`blocks` (a replay's epochs in a new order): one pipeline gives the batches that a stream
  started at each block's first step gives, across epochs (16 steps an epoch here), with the
  extra data's rows too."""
  cfg = _input_config(train_split='train[:128]', batch_size=8, shuffle_buffer=128)
  cfg.extra_data.update(dataset='fashion_mnist', split='test[:64]', fraction=0.25)
  blocks = [(21, 2), (0, 3), (15, 2), (40, 1)]

  def stream(**kw):
    return input_pipeline.train_batches(cfg, fmnist_builder, seed=3, with_index=True,
                                        extra_builder=fmnist_builder, **kw)
  got = list(stream(blocks=blocks))  # Ends after the blocks.
  want = [next(b) for first, count in blocks for b in [stream(start_step=first)]
          for _ in range(count)]
  assert len(got) == len(want) == 8
  for ours, theirs in zip(got, want):
    assert ours.keys() == theirs.keys()
    for key in ours:
      np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_extra_data_rows_are_interleaved_unlabelled_extra_images(fmnist_builder):
  cfg = _input_config(augment='none', flip=False, batch_size=8)
  cfg.extra_data.update(dataset='fashion_mnist', split='test[:64]', fraction=0.25)
  train_plain = _plain_images(fmnist_builder, cfg.train_split, cfg)
  extra_plain = _plain_images(fmnist_builder, 'test[:64]', cfg)
  stream = input_pipeline.train_batches(cfg, fmnist_builder, seed=0, extra_builder=fmnist_builder)
  batches = [next(stream) for _ in range(3)]
  for batch in batches:
    is_extra = batch['label'] == -1
    np.testing.assert_array_equal(is_extra, [0, 0, 0, 1, 0, 0, 0, 1])  # 2 of 8, spread out.
    assert all(img.tobytes() in extra_plain for img in batch['image'][is_extra])
    assert all(img.tobytes() in train_plain for img in batch['image'][~is_extra])
  resumed = next(input_pipeline.train_batches(cfg, fmnist_builder, seed=0, start_step=2,
                                              extra_builder=fmnist_builder))
  np.testing.assert_array_equal(resumed['image'], batches[2]['image'])


def test_data_shards_fill_their_own_rows(fmnist_builder):
  """With 4 shards each quarter of a batch comes from its own quarter of the split."""
  cfg = _input_config(data_shards=4)
  stream = input_pipeline.train_batches(cfg, fmnist_builder, seed=0, teacher_view='index')
  for _ in range(2):
    index = next(stream)['index'].reshape(4, 4)
    for shard, rows in enumerate(index):
      assert np.all((rows >= 64 * shard) & (rows < 64 * (shard + 1)))
  resumed = next(input_pipeline.train_batches(cfg, fmnist_builder, seed=0, start_step=1,
                                              teacher_view='index'))
  np.testing.assert_array_equal(resumed['index'].reshape(4, 4), index)
  with pytest.raises(ValueError, match='not divisible by input.data_shards=3'):
    input_pipeline.check_input(_input_config(data_shards=3))  # As `build.validate` checks.


def test_fixed_teacher_logits_cache_is_right_reused_and_rejected_when_stale(
    tmp_path, teacher_run, fmnist_builder):
  first, second, stale = (str(tmp_path / n) for n in ('first', 'second', 'stale'))
  config = f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}'
  fixed = ('--config.variant=fixed', '--config.teacher_logits_cache=teacher_logits.npy',
           *TINY_STUDENT)
  run_main(config, first, *fixed)
  path = os.path.join(first, workdir_lib.TEACHER_LOGITS)
  table = np.load(path)
  assert table.shape == (1024, 1, 10)
  with open(path + '.json') as f:
    meta = json.load(f)
  assert meta['split'] == 'train[:1024]' and meta['num_examples'] == 1024
  # The cached rows are the teacher's logits on the plain images, computed independently here.
  cfg = _input_config(train_split='train[:1024]')
  plain = next(input_pipeline.eval_batches(
      fmnist_builder, 'train[:1024]', batch_size=cfg.eval_batch_size, resolution=cfg.resolution,
      central_crop=cfg.central_crop).as_numpy_iterator())
  teacher = models.resolve('bit:depth=14,width=0.25').create(10)
  expected = teacher.apply(checkpoint.read_variables(teacher_run, 'latest')[0],
                           plain['image'][:16])
  np.testing.assert_allclose(table[plain['index'][:16], 0], expected, rtol=1e-4, atol=1e-4)

  # A later run reuses the file (the absolute path of another workdir's cache).
  mtime = os.path.getmtime(path)
  proc = run_main(config, second, *fixed[:1], f'--config.teacher_logits_cache={path}',
                  *TINY_STUDENT)
  assert 'Reusing the teacher logits' in proc.stderr and os.path.getmtime(path) == mtime
  assert not os.path.exists(os.path.join(second, workdir_lib.TEACHER_LOGITS))
  assert read_metrics(second)[-1]['step'] == 10

  # Logits of other data (or another teacher) are refused; nothing is written.
  proc = run_main(config, stale, *fixed[:1], f'--config.teacher_logits_cache={path}',
                  '--config.input.train_split=train[:512]', *TINY_STUDENT, check=False)
  assert proc.returncode == errors.BAD_INPUT, proc.stderr[-2000:]
  assert 'holds logits of other teachers or data (differs in: num_examples, split)' in proc.stderr
  assert os.path.getmtime(path) == mtime


def test_fingerprint_changes_with_the_teacher_weights():
  spec = ml_collections.ConfigDict(dict(model='bit', depth=14, width=0.25, checkpoint='x'))
  params = {'w': np.ones((2, 2), np.float32)}
  base = teachers_lib.fingerprint([spec], (params,), dataset='d')
  assert teachers_lib.fingerprint([spec], ({'w': np.ones((2, 2), np.float32)},),
                                  dataset='d') == base
  changed = teachers_lib.fingerprint([spec], ({'w': np.full((2, 2), 1.5, np.float32)},),
                                     dataset='d')
  assert changed['teachers'][0]['params_sha256'] != base['teachers'][0]['params_sha256']
  assert 'checkpoint' not in base['teachers'][0]  # The same weights moved elsewhere still match.


def test_independent_distillation_with_extra_data_runs(tmp_path, teacher_run):
  workdir = str(tmp_path / 'run')
  run_main(f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}', workdir,
           '--config.variant=independent', '--config.input.extra_data.dataset=fashion_mnist',
           '--config.input.extra_data.split=test[256:]', *TINY_STUDENT)
  records = read_metrics(workdir)
  assert records[-1]['step'] == 10 and np.isfinite(records[-1]['eval/student_accuracy'])
  with open(os.path.join(workdir, workdir_lib.CONFIG)) as f:
    assert json.load(f)['variant'] == 'independent'
