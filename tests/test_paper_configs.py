"""The paper's configs: values checked against the paper, arguments, and a `runlocal=True` run of
each on a synthetic stand-in of its dataset with a tiny BiT teacher (and one with a ViT teacher in
timm's layout)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors import numpy as safetensors_numpy
import tensorflow_datasets as tfds

from big_distill import checkpoint, models
from big_distill import workdir as workdir_lib
from big_distill.data import input_pipeline, synthetic
from big_distill.optim import make_optimizer
from big_distill.models import bit, vit
from tests.helpers import ROOT, eval_images, get_config, init_variables, read_metrics, run_main

# Beyer et al. 2022, Table 4 (best per length) and Table 5 (splits): config -> dataset, classes,
# train split, eval split, {schedule: (epochs, lr, weight decay, temperature)}.
SMALL = {
    'flowers_funmatch.py': ('oxford_flowers102', 102, 'train', 'test', {
        'fast': (10_000, 0.003, 3e-4, 10), 'medium': (100_000, 0.001, 1e-4, 1),
        'long': (1_000_000, 0.0003, 1e-5, 1)}),
    'pets_funmatch.py': ('oxford_iiit_pet', 37, 'train[:90%]', 'test', {
        'fast': (1000, 0.01, 1e-3, 5), 'medium': (3000, 0.003, 3e-4, 10),
        'long': (30_000, 0.003, 1e-5, 2)}),
    'food_funmatch.py': ('food101', 101, 'train[:90%]', 'validation', {
        'fast': (100, 0.01, 1e-3, 10), 'medium': (1000, 0.001, 3e-4, 10),
        'long': (3000, 0.01, 1e-4, 5)}),
    'sun_funmatch.py': ('sun397', 397, 'train', 'test', {
        'fast': (100, 0.01, 1e-3, 10), 'medium': (1000, 0.003, 1e-4, 10),
        'long': (3000, 0.01, 3e-5, 10)}),
}
CLASSES = {'imagenet_funmatch.py': ('imagenet2012', 1000, 'validation'),
           **{name: (v[0], v[1], v[3]) for name, v in SMALL.items()}}


def _decay_per_step(config) -> float:
  """How much one step shrinks a kernel weight of 1 (zero gradient, constant schedule)."""
  config = config.copy_and_resolve_references()
  config.schedule = dict(name='constant', warmup_steps=0)
  tx, _ = make_optimizer(config, 10)
  params = {'kernel': jnp.ones((3, 3, 4, 4)), 'bias': jnp.ones(4)}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert not np.any(updates['bias'])
  return -float(np.mean(updates['kernel']))


def _check_recipe(config, teacher: str):
  """What all the paper's runs share: models, function matching, Adam, clipping, mixup."""
  assert config.mode == 'distill' and config.variant == 'funmatch'
  assert config.student.to_dict() == dict(model='bit:depth=50,width=1', init='')
  [t] = config.teachers
  assert t.to_dict() == dict(model='bit:depth=152,width=2', checkpoint=teacher, resolution=None)
  assert config.input.augment == 'inception_crop' and config.input.flip
  assert config.mixup_alpha == 1.0  # big_vision's mixup p=1.0: ratios ~ U(0, 1).
  assert config.optimizer.to_dict() == {'name': 'adam', 'mu_dtype': 'bfloat16'}
  assert config.grad_clip_norm == 1.0 and config.schedule.name == 'cosine'
  assert config.total_steps is None
  # Both batches split over the launchers' device counts (2 x 8 GPUs, TPU slices up to 64 chips).
  assert config.input.batch_size % 64 == 0 and config.input.eval_batch_size % 64 == 0


@pytest.mark.parametrize('name,schedule', [(n, s) for n in SMALL for s in SMALL[n][4]])
def test_small_dataset_configs_match_the_paper(name, schedule):
  dataset, _, train_split, eval_split, schedules = SMALL[name]
  epochs, lr, wd, temperature = schedules[schedule]
  config = get_config(name, f'schedule={schedule},teacher=t.npz')
  _check_recipe(config, 't.npz')
  assert (config.input.dataset, config.input.train_split, config.input.eval_split) == (
      dataset, train_split, eval_split)
  assert (config.total_epochs, config.lr, config.temperature) == (epochs, lr, temperature)
  # big_vision applies the paper's wd after the learning rate: each step decays by wd (times the
  # schedule's multiplier, here 1), not by lr x wd.
  assert _decay_per_step(config) == pytest.approx(wd, rel=1e-5)
  assert config.input.batch_size == 512 and config.input.resolution == 128
  assert config.input.central_crop == pytest.approx(128 / 160)  # resize_small(160), crop 128.
  assert config.schedule.warmup_steps == 1500


def test_imagenet_config_matches_the_paper():
  config = get_config('imagenet_funmatch.py')
  _check_recipe(config, 'R152x2_T_224.npz')
  assert (config.input.dataset, config.input.train_split, config.input.eval_split) == (
      'imagenet2012', 'train[:98%]', 'validation')
  assert config.input.batch_size == 4096 and config.input.resolution == 224
  assert config.input.central_crop == 0.875  # resize_small(256), crop 224.
  assert (config.lr, config.temperature) == (0.03, 1.0)
  assert _decay_per_step(config) == pytest.approx(3e-4, rel=1e-5)
  assert config.schedule.warmup_steps == 5000 and config.total_epochs == 1200
  assert get_config('imagenet_funmatch.py', 'epochs=9600').total_epochs == 9600


def test_arguments_and_runlocal():
  config = get_config('pets_funmatch.py', 'schedule=long,variant=consistent,teacher=/x.npz')
  assert (config.variant, config.teachers[0].checkpoint, config.total_epochs) == (
      'consistent', '/x.npz', 30_000)
  assert config.teacher_logits_cache == ''
  fixed = get_config('imagenet_funmatch.py', 'variant=fixed')
  assert (fixed.variant, fixed.teacher_logits_cache) == ('fixed', 'teacher_logits.npy')
  with pytest.raises(ValueError, match="schedule='slow'"):
    get_config('food_funmatch.py', 'schedule=slow')
  local = get_config('sun_funmatch.py', 'runlocal=True,schedule=medium')
  assert (local.student.model, local.input.resolution) == ('bit:depth=14,width=0.125', 32)
  assert local.teachers[0].model == 'bit:depth=14,width=0.25,normalization=minus_one_to_one'
  assert (local.total_steps, local.total_epochs, local.input.batch_size) == (10, None, 32)
  assert (local.input.dataset, local.lr, local.temperature) == ('sun397', 0.003, 10)


@pytest.fixture(scope='module')
def standins(tmp_path_factory):
  """Every config's dataset, with just enough examples for runlocal's slices, and a random
  tiny (R14 x1/4) teacher per class count."""
  tfds.disable_progress_bar()
  root = tmp_path_factory.mktemp('paper')
  teachers = {}
  for dataset, classes, eval_split in CLASSES.values():
    synthetic.make_standin(
        dataset, str(root / 'data'),
        {s: 1024 if s == 'train' else 256 if s == eval_split else 4
         for s in synthetic.SPLITS[dataset]}, image_size=(36, 44))
    model = bit.ResNetV2(depth=14, width=0.25, num_classes=classes)
    params = init_variables(model, classes, (1, 32, 32, 3))['params']
    params['head']['kernel'] = np.random.default_rng(classes).normal(
        size=params['head']['kernel'].shape).astype(np.float32)  # Non-uniform predictions.
    teachers[classes] = str(root / f'teacher{classes}.npz')
    bit.save_bit_npz(params, teachers[classes])
    # The same weights in timm's layout (the paper's teacher is timm's
    # `resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k_384`).
    safetensors_numpy.save_file(bit.params_to_timm(params),
                                str(root / f'teacher{classes}.safetensors'))
  return str(root / 'data'), teachers


def test_a_timm_format_teacher_teaches_as_its_npz_does(tmp_path, standins):
  """`configs/imagenet_funmatch.py:teacher=...safetensors`: the same weights from timm's layout
  give the run of the BiT `.npz` teacher, bit for bit."""
  data_dir, teachers = standins
  config = os.path.join(ROOT, 'configs', 'imagenet_funmatch.py')
  runs = {}
  for suffix in ('.npz', '.safetensors'):
    runs[suffix] = str(tmp_path / suffix[1:])
    teacher = teachers[1000][:-len('.npz')] + suffix
    run_main(f'{config}:runlocal=True,teacher={teacher}', runs[suffix],
             f'--config.input.data_dir={data_dir}', '--config.total_steps=3',
             '--config.eval_every_steps=3', '--config.log_every_steps=3')
  def computed(records):  # Leaves out timings.
    return [{k: v for k, v in r.items() if not any(t in k for t in ('per_sec', 'uptime',
                                                                       'seconds'))}
            for r in records]

  npz, timm_layout = (computed(read_metrics(runs[s])) for s in ('.npz', '.safetensors'))
  assert npz == timm_layout and any('eval/teacher_accuracy' in r for r in npz)


VIT_B16 = 'timm:vit_base_patch16_224.augreg2_in21k_ft_in1k'


def test_teacher_model_and_student_pick_other_architectures():
  """`teacher_model=` and `student=`: a timm name or a family with an argument, for every teacher
  of an ensemble; `teacher_model=` empty takes the checkpoint's; `runlocal=True` swaps in each
  family's small model and keeps a teacher's input normalisation."""
  config = get_config('imagenet_funmatch.py', f'teacher=a.safetensors+b.safetensors,'
                      f'teacher_model={VIT_B16},student=timm:mobilenetv3_large_100')
  assert [(t.model, t.checkpoint) for t in config.teachers] == [
      (VIT_B16, 'a.safetensors'), (VIT_B16, 'b.safetensors')]
  teacher = models.resolve(config.teachers[0]).create(1000)
  assert (teacher.dims(), teacher.pool_type, teacher.normalization) == (
      (16, 768, 12, 3072, 12), 'tok', 'minus_one_to_one')  # ViT-B/16, AugReg's inputs in [-1, 1].
  student = models.resolve(config.student).create(1000)
  params = jax.eval_shape(student.init, jax.random.PRNGKey(0), np.zeros((1, 224, 224, 3)))
  assert (student.variant, student.width, student.normalization) == ('large', 1.0, 'imagenet')
  assert sum(np.prod(x.shape) for x in jax.tree.leaves(params['params'])) == 5_483_032  # timm's.
  pets = get_config('pets_funmatch.py', 'teacher=t.npz,teacher_model=vit:variant=S/32')
  assert pets.teachers[0].model == 'vit:variant=S/32'
  assert get_config('pets_funmatch.py', 'teacher_model=').teachers[0].model == ''
  local = get_config('imagenet_funmatch.py', f'teacher=t.safetensors,teacher_model={VIT_B16},'
                     'student=mobilenet_v3,runlocal=True')
  assert local.teachers[0].model == ('vit:patch_size=8,width=32,depth=2,num_heads=2,mlp_dim=64,'
                                     'pool_type=gap,normalization=minus_one_to_one')
  assert local.student.model == 'mobilenet_v3:variant=small,width=0.5'
  own = get_config('sun_funmatch.py', 'teacher_model=vit:normalization=imagenet,runlocal=True')
  assert models.resolve(own.teachers[0]).create(397).normalization == 'imagenet'
  with pytest.raises(ValueError, match="teacher_model: unknown model 'resnet'"):
    get_config('imagenet_funmatch.py', 'teacher_model=resnet')
  with pytest.raises(ValueError, match="student: unknown timm model 'convnext_tiny'"):
    get_config('food_funmatch.py', 'student=timm:convnext_tiny')


def test_a_timm_vit_teacher_with_the_paper_recipe(tmp_path, standins):
  """`configs/imagenet_funmatch.py:teacher=VIT.safetensors,teacher_model=timm:<ViT>` with
  `runlocal=True`: the tiny ViT teacher loads from timm's layout and teaches; the run's eval KL
  between it and the final student is that of both models' logits computed here."""
  data_dir, _ = standins
  local = get_config('imagenet_funmatch.py', f'teacher_model={VIT_B16},runlocal=True')
  model = models.resolve(local.teachers[0]).create(1000)
  params = init_variables(model, 0, (1, 32, 32, 3))['params']
  params['head']['kernel'] = np.random.default_rng(0).normal(
      size=params['head']['kernel'].shape).astype(np.float32)
  teacher = str(tmp_path / 'vit.safetensors')
  safetensors_numpy.save_file(vit.params_to_timm(params, model), teacher)
  workdir = str(tmp_path / 'run')
  run_main(f'{os.path.join(ROOT, "configs", "imagenet_funmatch.py")}:runlocal=True,'
           f'teacher={teacher},teacher_model={VIT_B16}', workdir,
           f'--config.input.data_dir={data_dir}', '--config.total_steps=3',
           '--config.eval_every_steps=3', '--config.log_every_steps=3')
  assert workdir_lib.read_config(workdir)['teachers'][0]['model'] == local.teachers[0].model
  final = [r for r in read_metrics(workdir) if 'eval/kl' in r][-1]
  config = get_config('imagenet_funmatch.py', 'runlocal=True')
  config.input.data_dir = data_dir
  images, labels = eval_images(config.input, input_pipeline.get_builder(config.input.dataset,
                                                                       data_dir))
  student = models.resolve(config.student).create(1000)
  student_variables = checkpoint.read_variables(workdir, 3)[0]
  teacher_logp = jax.nn.log_softmax(model.apply({'params': params}, images))
  student_logp = jax.nn.log_softmax(student.apply(student_variables, images))
  kl = np.sum(np.exp(teacher_logp) * (teacher_logp - student_logp), -1)
  assert final['eval/kl'] == pytest.approx(float(np.mean(kl)), rel=1e-4)
  assert final['eval/teacher_accuracy'] == pytest.approx(
      float(np.mean(np.argmax(teacher_logp, -1) == labels)), abs=1e-6)


@pytest.mark.parametrize('name', CLASSES)
def test_runlocal_on_a_standin(tmp_path, standins, name):
  data_dir, teachers = standins
  dataset, classes, _ = CLASSES[name]
  workdir = str(tmp_path / 'run')
  run_main(f'{os.path.join(ROOT, "configs", name)}:runlocal=True,teacher={teachers[classes]}',
           workdir, f'--config.input.data_dir={data_dir}')
  config = workdir_lib.read_config(workdir)
  assert config['input']['dataset'] == dataset and config['input']['resolution'] == 32
  records = read_metrics(workdir)
  losses = [r['train/loss'] for r in records if 'train/loss' in r]
  assert len(losses) == 2 and all(np.isfinite(losses)) and losses[0] > 0
  final = [r for r in records if 'eval/student_accuracy' in r][-1]
  assert final['step'] == 10 and 0 <= final['eval/teacher_accuracy'] <= 1
  params = ocp.StandardCheckpointer().restore(os.path.join(workdir_lib.checkpoints(workdir), '10', 'params'))
  assert params['head']['kernel'].shape == (256, classes)  # R14 x1/8: 256 features.
