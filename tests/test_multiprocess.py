"""Multi-process runs on localhost: 2 processes x 2 CPU devices train like 1 process x 4 devices."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from big_distill import checkpoint, errors, teachers
from tests.helpers import (TEACHER_CONFIG, TINY_TEACHER, Started, finish, main_command, metric,
                           read_metrics, run, start)

# SGD (see test_e2e.test_four_devices_match_one_device); equal `data_shards`, equal batches.
OVERRIDES = (*TINY_TEACHER, '--config.optimizer.name=sgd', '--config.total_steps=4',
             '--config.log_every_steps=1', '--config.input.data_shards=4')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(workdir: str, devices: int, *flags: str, **env: str) -> Started:
  """`python -m big_distill.main` in the background."""
  return start(main_command(f'{TEACHER_CONFIG}:runlocal=True', workdir, *OVERRIDES, *flags),
               devices=devices, **env)


def test_two_processes_match_one_process(tmp_path):
  """Process 0 gets the coordinator flags, process 1 the environment variables."""
  multi, single = str(tmp_path / 'two_processes'), str(tmp_path / 'one_process')
  address = f'127.0.0.1:{_free_port()}'
  logs = finish([  # Three runs at once on a shared 2-core machine: 72 s alone.
      _start(multi, 2, f'--coordinator_address={address}', '--num_processes=2',
             '--process_id=0'),
      _start(multi, 2, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES='2',
             JAX_PROCESS_ID='1'),
      _start(single, 4)])
  for i in (0, 1):
    assert f'JAX process {i} of 2, 2 local / 4 global devices.' in logs[i]
  assert 'JAX process 0 of 1, 4 local / 4 global devices.' in logs[2]

  records = read_metrics(multi)  # Written by process 0 alone: every step once.
  assert [r['step'] for r in records if 'train/loss' in r] == [1, 2, 3, 4]
  assert [r['step'] for r in records if 'eval/accuracy' in r] == [4]
  np.testing.assert_allclose(list(metric(records, 'train/loss').values()),
                             list(metric(read_metrics(single), 'train/loss').values()), rtol=1e-6)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      checkpoint.read_variables(multi, 4)[0], checkpoint.read_variables(single, 4)[0])


def test_partial_multiprocess_flags_are_bad_input(tmp_path):
  proc = run(main_command(f'{TEACHER_CONFIG}:runlocal=True', str(tmp_path / 'w'),
                          '--coordinator_address=127.0.0.1:1234'), check=False, timeout=120)
  assert proc.returncode == errors.BAD_INPUT
  assert 'big_distill: error: a multi-process run needs' in proc.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_only_a_slurm_step_with_several_tasks_is_detected():
  """SLURM with one task stays single-process. (In a subprocess, as main.py defines flags.)"""
  cases = [{}, {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1', 'SLURM_STEP_NODELIST': 'n1'},
           {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '8', 'SLURM_STEP_NODELIST': 'n[1-2]'}]
  code = ('import json, os, sys\nfrom big_distill import main\n'
          'for env in json.loads(sys.argv[1]):\n'
          '  os.environ.update(env)\n'
          '  print(main.cluster_detected())')
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  proc = subprocess.run([sys.executable, '-c', code, json.dumps(cases)], env=env, check=True,
                        capture_output=True, text=True, timeout=120)
  assert proc.stdout.split() == ['False', 'False', 'True']


_FINGERPRINT = '''
import json, sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from big_distill import teachers
full = np.arange(12, dtype=np.float32).reshape(4, 3)
split = jax.make_array_from_callback(  # Rows 0-1 in process 0, rows 2-3 in process 1.
    full.shape, NamedSharding(Mesh(np.array(jax.devices()), ('fsdp',)), PartitionSpec('fsdp')),
    lambda index: full[index])
print(json.dumps(teachers.fingerprint([{'model': 'bit'}], ({'kernel': split},))))
'''


def test_fingerprint_of_a_teacher_split_over_processes(tmp_path):
  """`variant=fixed` with fsdp across hosts: every process hashes the whole weights."""
  address = f'127.0.0.1:{_free_port()}'
  procs = [start([sys.executable, '-c', _FINGERPRINT, address, str(i)]) for i in (0, 1)]
  finish(procs, timeout=120)
  full = np.arange(12, dtype=np.float32).reshape(4, 3)
  expected = teachers.fingerprint([{'model': 'bit'}], ({'kernel': full},))
  assert [json.loads(p.stdout.splitlines()[-1]) for p in procs] == [expected, expected]
