"""Parameters split over the mesh axis `fsdp`: sharding rules, equality with replicated training,
restore with the configured shardings, and checkpoints read on another device layout."""

import json
import os
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from big_distill import checkpoint, configlib, parallel, steps, workdir as workdir_lib
from tests.helpers import (FUNMATCH_CONFIG, SGD_6, TINY_STUDENT, metric, read_metrics, run,
                           run_main)


@pytest.mark.parametrize('shape, size, spec', [
    ((3, 3, 16, 32), 2, P(None, None, None, 'fsdp')),  # Conv kernel: output channels.
    ((3, 3, 32, 32), 4, P(None, None, None, 'fsdp')),  # Equal sizes: the last.
    ((512, 10), 2, P('fsdp')),  # The largest dimension, though 10 divides too.
    ((6, 4), 4, P(None, 'fsdp')),  # The largest divisible one.
    ((10,), 4, P()),  # Nothing divisible: replicated.
    ((), 2, P()),  # Scalars (the step, Adam's count).
    ((512, 10), 1, P()),  # No fsdp axis.
])
def test_fsdp_spec_splits_the_largest_divisible_dimension(shape, size, spec):
  assert parallel.fsdp_spec(shape, size) == spec


def test_mesh_shape_fills_in_the_rest_and_rejects_misfits():
  assert parallel.mesh_shape(-1, 1, 4) == (4, 1)
  assert parallel.mesh_shape(-1, 2, 4) == (2, 2)
  assert parallel.mesh_shape(2, -1, 8) == (2, 4)
  for data, fsdp in ((3, 1), (-1, 3), (-1, -1), (0, 4), (2, 1)):
    with pytest.raises(ValueError, match='does not fit the 4 devices'):
      parallel.mesh_shape(data, fsdp, 4)


def test_a_run_may_continue_on_another_mesh(tmp_path):
  config, workdir = configlib.base_config(), str(tmp_path)
  workdir_lib.write_config(config, workdir)
  config.mesh.update(data=2, fsdp=2, teacher_fsdp=False)
  workdir_lib.check(config, workdir)
  config.lr = 0.5
  with pytest.raises(ValueError, match=r'another config \(differs in: lr\)'):
    workdir_lib.check(config, workdir)


def test_fsdp_run_matches_the_replicated_run(tmp_path, teacher_run, sgd_distill_run_4_devices):
  """4 devices as data 2 x fsdp 2 (student and teacher split) train like data 4 (replicated: the
  session's `conftest.sgd_distill_run_4_devices`, this command without `mesh.fsdp`).

  SGD as in test_e2e.test_four_devices_match_one_device. The checkpoints, written by 4 devices
  in two layouts, are read back in this 1-device process.
  """
  config = f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}'
  sgd = (*SGD_6, '--config.checkpoint_every_steps=1', '--config.keep_checkpoints=6')
  workdirs = {'replicated': sgd_distill_run_4_devices, 'fsdp': str(tmp_path / 'fsdp')}
  run_main(config, workdirs['fsdp'], *TINY_STUDENT, *sgd, '--config.mesh.fsdp=2', devices=4)
  losses = {k: metric(read_metrics(w), 'train/loss') for k, w in workdirs.items()}
  assert sorted(losses['fsdp']) == sorted(losses['replicated']) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([losses['fsdp'][s] for s in range(1, 7)],
                             [losses['replicated'][s] for s in range(1, 7)], rtol=2e-6)
  for name, split in (('fsdp', True), ('replicated', False)):  # As saved: every array split.
    metadata = ocp.StandardCheckpointer().metadata(
        os.path.join(workdir_lib.checkpoints(workdirs[name]), '6', 'params')).item_metadata
    assert {'fsdp' in m.sharding.partition_spec
            for m in jax.tree_util.tree_leaves(metadata)} == {split}, name
  (fsdp, step, _), (replicated, _, _) = (checkpoint.read_variables(w, 'latest')
                                         for w in workdirs.values())
  fsdp, replicated = fsdp['params'], replicated['params']
  assert step == 6
  # The layouts sum in different orders (float32 rounding: up to 3e-6 in a weight here), so the
  # parameters agree to a small part of what training changed from step 1 to 6.
  change = optax.tree.norm(optax.tree.sub(
      replicated, checkpoint.read_variables(workdirs['replicated'], 1)[0]['params']))
  assert optax.tree.norm(optax.tree.sub(fsdp, replicated)) < 0.01 * change


def restored_specs(directory: str) -> None:
  """Saves a small state split over data 2 x fsdp 2, restores it with `restore_latest` and prints
  {path: [spec of the restored array, expected spec, local shard shape]} as JSON."""
  mesh = parallel.make_mesh(data=2, fsdp=2)
  params = {'conv': np.arange(3 * 3 * 4 * 8, dtype=np.float32).reshape(3, 3, 4, 8),
            'bias': np.ones(8, np.float32), 'odd': np.ones(5, np.float32)}
  state = steps.new_state({'params': params}, optax.sgd(0.1, momentum=0.9))
  shardings = parallel.param_shardings(state, mesh, fsdp=True)
  manager = checkpoint.create_manager(directory, keep=1, keep_best=False)
  checkpoint.save(manager, 1, jax.device_put(state, shardings))
  checkpoint.wait(manager)
  abstract = parallel.with_shardings(jax.eval_shape(lambda: state), shardings)
  restored = checkpoint.restore_latest(manager, abstract, directory)
  manager.close()
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored.params, state.params)
  print(json.dumps({
      jax.tree_util.keystr(path): [str(x.sharding.spec), str(s.spec),
                                   list(x.addressable_shards[0].data.shape)]
      for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(restored),
                              jax.tree_util.tree_leaves(shardings))}))


def test_restore_puts_the_state_back_split_over_fsdp(tmp_path):
  code = f'from tests import test_fsdp; test_fsdp.restored_specs({str(tmp_path)!r})'
  proc = run([sys.executable, '-c', code], devices=4, timeout=300)
  specs = json.loads(proc.stdout.strip().splitlines()[-1])
  for key, (got, expected, _) in specs.items():
    assert got == expected, key
  # Momentum mirrors the params: split the same way; the step stays whole.
  for prefix in ('.params', '.opt_state[0].trace'):
    assert specs[f"{prefix}['conv']"] == [str(P(None, None, None, 'fsdp'))] * 2 + [[3, 3, 4, 4]]
    assert specs[f"{prefix}['bias']"] == [str(P('fsdp'))] * 2 + [[4]]
    assert specs[f"{prefix}['odd']"] == [str(P())] * 2 + [[5]]
  assert specs['.step'][:2] == [str(P())] * 2


FAMILIES_UNDER_FSDP = r'''
import json, jax, numpy as np
import ml_collections
from big_distill import build
from tests.helpers import get_config
out = {}
for student, teacher in (('mobilenet_v3',
                          'vit:patch_size=8,width=32,depth=2,num_heads=2,mlp_dim=64'),):
  losses = {}
  for fsdp in (1, 2):
    config = get_config('distill.py', f'runlocal=True,student={student}')
    config.teachers[0].model = teacher
    config.input.resolution = 32
    config.optimizer.name = 'sgd'
    config.mesh.fsdp = fsdp
    run = build.create_run(config, data=build.Data(10, 1, 64), teacher_params='random')
    state = run.init_state(jax.random.PRNGKey(0))
    split = {'fsdp' in str(x.sharding.spec) for x in jax.tree_util.tree_leaves(state.params)}
    teacher_split = {'fsdp' in str(x.sharding.spec)
                     for x in jax.tree_util.tree_leaves(run.teacher_params)}
    rng = np.random.default_rng(0)
    losses[fsdp] = []
    for step in range(3):
      batch = {'image': rng.uniform(-1, 1, (32, 32, 32, 1)).astype(np.float32),
               'label': rng.integers(0, 10, 32).astype(np.int32)}
      state, metrics = run.train_step(state, run.teacher_params, batch, jax.random.PRNGKey(step))
      losses[fsdp].append(float(metrics['loss']))
    out[f'{student}_{fsdp}'] = dict(losses=losses[fsdp], split=sorted(split),
                                    teacher_split=sorted(teacher_split),
                                    norm=run.step_kwargs['norm'].__name__)
print(json.dumps(out))
'''


def test_mobilenet_student_and_vit_teacher_train_alike_split_over_fsdp():
  """A MobileNetV3 student (with BatchNorm) and a ViT teacher, split over fsdp=2 of 4 devices,
  take the replicated run's steps (BiT is `test_fsdp_run_matches_the_replicated_run`)."""
  out = json.loads(run([sys.executable, '-c', FAMILIES_UNDER_FSDP], devices=4).stdout)
  replicated, split = out['mobilenet_v3_1'], out['mobilenet_v3_2']
  assert replicated['split'] == replicated['teacher_split'] == [False]
  assert True in split['split'] and True in split['teacher_split']
  # Norms of a split state per leaf (a concatenation would gather it); of a replicated one, as
  # one reduction (`optim.global_norm`).
  assert (replicated['norm'], split['norm']) == ('concatenated_norm', 'tree_norm')
  np.testing.assert_allclose(split['losses'], replicated['losses'], rtol=1e-5)
