"""launch/*.sh: usage, the exact commands of dry runs, usage errors, requeue on exit code 75."""

import os
import shlex
import signal
import subprocess
import tarfile
import time

import pytest

from conftest import ROOT

CONFIG = 'configs/fashion_mnist_funmatch.py:epochs=2,teacher=/data/teacher'
OVERRIDES = ('--config.input.batch_size=64', "--config.teachers[0].checkpoint=/data/it's here.npz")
TRAIN = ['-m', 'big_distill.main', f'--config={CONFIG}']
GCLOUD = ['gcloud', 'compute', 'tpus', 'tpu-vm']
SLURM = os.path.join(ROOT, 'launch', 'gpu_slurm.sh')


def _run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', os.path.join(ROOT, 'launch', script), *args], text=True,
                        capture_output=True, env={**os.environ, **env}, timeout=60)


def _commands(stdout: str) -> list[list[str]]:
  """Each printed line as the argument list a shell would make of it."""
  return [shlex.split(line) for line in stdout.splitlines()]


@pytest.mark.parametrize('script', ['local.sh', 'tpu_pod.sh', 'gpu_slurm.sh'])
def test_help_prints_usage_and_exit_codes(script):
  proc = _run(script, '--help')
  assert proc.returncode == 0 and proc.stderr == ''
  assert f'launch/{script} [--dry-run' in proc.stdout
  assert 'Exit code: 0 done; 2 bad input' in proc.stdout and '75 preempted' in proc.stdout


@pytest.mark.parametrize('script, args', [
    ('local.sh', ['configs/x.py']),
    ('local.sh', ['--verbose', 'configs/x.py', '/tmp/w']),
    ('tpu_pod.sh', ['my-tpu', 'us-central2-b', 'configs/x.py']),
    ('tpu_pod.sh', ['--project', 'p', 'my-tpu', 'us-central2-b', 'configs/x.py', '/w']),
    ('gpu_slurm.sh', []),
])
def test_bad_arguments_are_a_usage_error(script, args):
  proc = _run(script, *args, DRY_RUN='1')
  assert proc.returncode == 2 and proc.stdout == ''
  assert 'Usage:' in proc.stderr


def test_local_dry_run():
  proc = _run('local.sh', '--dry-run', CONFIG, '/tmp/w', *OVERRIDES, PYTHON='/opt/py')
  assert _commands(proc.stdout) == [['/opt/py', *TRAIN, '--workdir=/tmp/w', *OVERRIDES]]
  proc = _run('local.sh', CONFIG, '/tmp/w', DRY_RUN='1', DEVICES='4', PYTHON='py', XLA_FLAGS='')
  assert _commands(proc.stdout) == [
      ['env', 'XLA_FLAGS=--xla_force_host_platform_device_count=4', 'py', *TRAIN,
       '--workdir=/tmp/w']]


def test_tpu_pod_dry_run_copies_installs_and_runs_on_all_workers(tmp_path):
  proc = _run('tpu_pod.sh', '--dry-run', '--project=proj', 'my-tpu', 'us-central2-b', CONFIG,
              'gs://bucket/run', *OVERRIDES, TMPDIR=str(tmp_path))
  assert proc.returncode == 0, proc.stderr
  tar, scp, install, train = _commands(proc.stdout)
  archive = str(tmp_path / 'big_distill-my-tpu.tar.gz')
  workers = ['--worker=all', '--zone=us-central2-b', '--project=proj']
  assert tar[:3] == ['tar', '-czf', archive] and tar[-3:] == ['-C', ROOT, '.']
  assert scp == [*GCLOUD, 'scp', archive, 'my-tpu:big_distill.tar.gz', *workers]
  assert install[:-1] == train[:-1] == [*GCLOUD, 'ssh', 'my-tpu', *workers]
  assert install[-1].startswith('--command=') and train[-1].startswith('--command=')
  assert shlex.split(install[-1].split(' && ')[-1]) == [
      'python3', '-m', 'pip', 'install', '-q', '-e', '~/big_distill', 'jax[tpu]',
      'google-cloud-storage']
  cd, run = train[-1].removeprefix('--command=').split(' && ')
  assert cd == 'cd ~/big_distill'
  assert shlex.split(run) == ['python3', *TRAIN, '--workdir=gs://bucket/run', *OVERRIDES]
  assert not os.path.exists(archive)  # A dry run creates nothing.

  subprocess.run(tar, check=True)  # The printed archive command packs the checkout.
  with tarfile.open(archive) as f:
    names = set(f.getnames())
  assert {'./setup.py', './big_distill/main.py', './configs/fashion_mnist_teacher.py'} <= names
  assert not any(n.startswith('./.git/') or '__pycache__' in n for n in names)


def test_gpu_slurm_dry_run_and_one_task_per_gpu():
  proc = _run('gpu_slurm.sh', '--dry-run', CONFIG, '/shared/w', *OVERRIDES, PYTHON='py')
  assert _commands(proc.stdout) == [['srun', 'py', *TRAIN, '--workdir=/shared/w', *OVERRIDES]]
  with open(SLURM) as f:
    sbatch = dict(line[len('#SBATCH '):].strip().partition('=')[::2]
                  for line in f if line.startswith('#SBATCH '))
  assert sbatch['--ntasks-per-node'] == sbatch['--gpus-per-node']
  assert '--requeue' in sbatch and sbatch['--signal'].startswith('TERM@')


@pytest.fixture
def fake_slurm(tmp_path):
  """`srun` and `scontrol` that log their arguments; srun exits $FAKE_STATUS, or 75 on SIGTERM."""
  log = tmp_path / 'log'
  for name, body in (('srun', 'trap "exit 75" TERM; touch "$FAKE_LOG.started"\n'
                              'sleep "${FAKE_SLEEP:-0}" & wait; exit "$FAKE_STATUS"'),
                     ('scontrol', 'true')):
    path = tmp_path / name
    path.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "$FAKE_LOG"\n{body}\n')
    path.chmod(0o755)
  env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', FAKE_LOG=str(log),
             SLURM_JOB_ID='42', SLURM_SUBMIT_DIR=ROOT, PYTHON='py')
  return env, log


@pytest.mark.parametrize('status', [0, 2, 75])
def test_gpu_slurm_requeues_only_on_exit_75(fake_slurm, status):
  env, log = fake_slurm
  proc = subprocess.run(['bash', SLURM, CONFIG, '/shared/w'],
                        env={**env, 'FAKE_STATUS': str(status)}, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == status
  lines = log.read_text().splitlines()
  assert lines[0] == f'srun py -m big_distill.main --config={CONFIG} --workdir=/shared/w'
  assert lines[1:] == (['scontrol requeue 42'] if status == 75 else [])


def test_gpu_slurm_outlives_sigterm_and_requeues(fake_slurm):
  """SLURM signals the batch shell and the run alike; the shell waits for the run's 75."""
  env, log = fake_slurm
  proc = subprocess.Popen(['bash', SLURM, CONFIG, '/w'],
                          env={**env, 'FAKE_SLEEP': '30', 'FAKE_STATUS': '0'},
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
  deadline = time.time() + 30
  while not os.path.exists(f'{log}.started') and time.time() < deadline:
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGTERM)
  assert proc.wait(timeout=30) == 75
  assert log.read_text().splitlines()[1:] == ['scontrol requeue 42']
