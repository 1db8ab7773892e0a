"""launch/*.sh: usage, the exact commands of dry runs, usage errors, requeue on exit code 75,
paths relative to the caller, setup.sh's venv, and the configs shipped with the package."""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from big_distill import errors
from tests.helpers import ROOT

CONFIG = 'configs/distill.py:epochs=2,teacher=/data/teacher'
OVERRIDES = ('--config.input.batch_size=64', "--config.teachers[0].checkpoint=/data/it's here.npz")
TRAIN = ['-m', 'big_distill.main', f'--config={CONFIG}']
GCLOUD = ['gcloud', 'compute', 'tpus', 'tpu-vm']
SLURM = os.path.join(ROOT, 'launch', 'gpu_slurm.sh')


def _run(script: str, *args: str, cwd: str | None = None,
         **env: str) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', os.path.join(ROOT, 'launch', script), *args], text=True,
                        capture_output=True, env={**os.environ, **env}, timeout=60, cwd=cwd)


def _fake(path, body: str) -> str:
  """An executable bash script at `path`."""
  path.write_text(f'#!/bin/bash\n{body}\n')
  path.chmod(0o755)
  return str(path)


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
  assert proc.returncode == errors.BAD_INPUT and proc.stdout == ''
  assert 'Usage:' in proc.stderr


@pytest.mark.parametrize('config, workdir, message', [
    ('configs/no_such_config.py', 'gs://bucket/run', 'CONFIG must be a file of this checkout'),
    (os.path.join(ROOT, 'configs', 'teacher.py'), 'gs://bucket/run',
     'CONFIG must be a file of this checkout'),
    (CONFIG, 'runs/mine', 'WORKDIR must be shared by all workers'),
])
def test_tpu_pod_refuses_paths_the_workers_cannot_use(tmp_path, config, workdir, message):
  """The workers run in their copy of the checkout: CONFIG is relative to its root, and a relative
  WORKDIR would land inside ~/big_distill, which the next launch replaces."""
  proc = _run('tpu_pod.sh', 'my-tpu', 'us-central2-b', config, workdir, cwd=str(tmp_path),
              DRY_RUN='1')
  assert proc.returncode == errors.BAD_INPUT and proc.stdout == ''
  assert message in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_local_dry_run():
  proc = _run('local.sh', '--dry-run', CONFIG, '/tmp/w', *OVERRIDES, PYTHON='/opt/py')
  assert _commands(proc.stdout) == [['/opt/py', *TRAIN, '--workdir=/tmp/w', *OVERRIDES]]
  proc = _run('local.sh', CONFIG, '/tmp/w', DRY_RUN='1', DEVICES='4', PYTHON='py', XLA_FLAGS='')
  assert _commands(proc.stdout) == [
      ['env', 'XLA_FLAGS=--xla_force_host_platform_device_count=4', 'py', *TRAIN,
       '--workdir=/tmp/w']]
  env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
  proc = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'local.sh'), '--dry-run', 'c.py',
                         'w'], env=env, capture_output=True, text=True, timeout=60, cwd='/')
  venv = os.path.join(ROOT, '.venv', 'bin', 'python')
  default = venv if os.access(venv, os.X_OK) else 'python3'  # The checkout's, from anywhere.
  assert _commands(proc.stdout) == [[default, *TRAIN[:2], '--config=c.py', '--workdir=/w']]


def test_local_runs_in_the_callers_directory(tmp_path):
  """Relative paths (WORKDIR, CONFIG, checkpoints) mean what they mean where local.sh is called."""
  caller = tmp_path / 'caller'
  caller.mkdir()
  log = tmp_path / 'log'
  python = _fake(tmp_path / 'python',
                 f'{{ pwd; echo "$PYTHONPATH"; printf "%s\\n" "$@"; }} > {log}')
  args = ('configs/mine.py', './myrun', '--config.teachers[0].checkpoint=teacher/ckpt')
  proc = _run('local.sh', '--dry-run', *args, cwd=str(caller), PYTHON=python)
  expected = ['-m', 'big_distill.main', '--config=configs/mine.py', f'--workdir={caller}/myrun',
              '--config.teachers[0].checkpoint=teacher/ckpt']
  assert _commands(proc.stdout) == [[python, *expected]]
  proc = _run('local.sh', *args, cwd=str(caller), PYTHON=python, PYTHONPATH='/elsewhere')
  assert proc.returncode == 0, proc.stderr
  cwd, pythonpath, *argv = log.read_text().splitlines()
  assert cwd == str(caller) and argv == expected
  assert pythonpath == f'{ROOT}:/elsewhere'  # This checkout's package, from any directory.


def test_tpu_pod_dry_run_copies_installs_and_runs_on_all_workers(tmp_path):
  proc = _run('tpu_pod.sh', '--dry-run', '--project=proj', 'my-tpu', 'us-central2-b', CONFIG,
              'gs://bucket/run', *OVERRIDES, TMPDIR=str(tmp_path), cwd=str(tmp_path))
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
  assert {'./setup.py', './big_distill/main.py', './configs/teacher.py'} <= names
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
  for name, body in (('srun', f'trap "exit {errors.PREEMPTED}" TERM; touch "$FAKE_LOG.started"\n'
                              'sleep "${FAKE_SLEEP:-0}" & wait; exit "$FAKE_STATUS"'),
                     ('scontrol', 'true')):
    path = tmp_path / name
    path.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "$FAKE_LOG"\n'
                    f'pwd > "$FAKE_LOG.{name}_cwd"\n{body}\n')
    path.chmod(0o755)
  env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', FAKE_LOG=str(log),
             SLURM_JOB_ID='42', SLURM_SUBMIT_DIR=ROOT, PYTHON='py')
  return env, log


@pytest.mark.parametrize('status', [errors.OK, errors.BAD_INPUT, errors.PREEMPTED])
def test_gpu_slurm_requeues_only_on_exit_75(fake_slurm, status):
  env, log = fake_slurm
  proc = subprocess.run(['bash', SLURM, CONFIG, '/shared/w'],
                        env={**env, 'FAKE_STATUS': str(status)}, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == status
  lines = log.read_text().splitlines()
  assert lines[0] == f'srun py -m big_distill.main --config={CONFIG} --workdir=/shared/w'
  assert lines[1:] == (['scontrol requeue 42'] if status == errors.PREEMPTED else [])


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
  assert proc.wait(timeout=30) == errors.PREEMPTED
  assert log.read_text().splitlines()[1:] == ['scontrol requeue 42']


def test_gpu_slurm_runs_in_the_callers_directory(fake_slurm, tmp_path):
  """Run with bash (no SLURM_SUBMIT_DIR), relative paths are the caller's, like under sbatch."""
  env, log = fake_slurm
  del env['SLURM_SUBMIT_DIR']
  caller = tmp_path / 'caller'
  caller.mkdir()
  proc = subprocess.run(['bash', SLURM, 'configs/mine.py', 'runs/w'], cwd=caller,
                        env={**env, 'FAKE_STATUS': '0'}, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert log.read_text().splitlines() == [
      f'srun py -m big_distill.main --config=configs/mine.py --workdir={caller}/runs/w']
  assert (tmp_path / 'log.srun_cwd').read_text().strip() == str(caller)


def test_gpu_slurm_under_sbatch_finds_its_helpers_in_the_submit_dir(fake_slurm, tmp_path):
  """sbatch runs a copy of the script from its spool directory, in the submit directory."""
  env, log = fake_slurm
  spool = tmp_path / 'spool'
  spool.mkdir()
  shutil.copy(SLURM, spool / 'slurm_script')
  proc = subprocess.run(['bash', str(spool / 'slurm_script'), CONFIG, 'runs/w'], cwd=ROOT,
                        env={**env, 'FAKE_STATUS': '0'}, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert log.read_text().splitlines() == [
      f'srun py -m big_distill.main --config={CONFIG} --workdir={ROOT}/runs/w']


# setup.sh on a Debian where apt-get works, with stand-ins: the base interpreter creates .venv like
# Debian's python3 -m venv (without the pythonX.Y-venv package: a .venv/bin/python with no pip, and
# a failure); apt-get installs that package; the venv's python logs what it is asked to run.
_BASE_PYTHON = r"""echo "python $*" >> "$FAKE/log"
case "$*" in
  '-c import ensurepip') [[ -e "$FAKE/venv_module" ]] ;;
  -c*) echo 3.11 ;;
  '-m venv'*)
    rm -rf .venv && mkdir -p .venv/bin
    if [[ -e "$FAKE/venv_module" ]]; then cp "$FAKE/good_python" .venv/bin/python
    else cp "$FAKE/broken_python" .venv/bin/python; echo 'ensurepip is not available' >&2; exit 1
    fi ;;
esac"""


@pytest.fixture
def fake_debian(tmp_path):
  """A copy of setup.sh in an empty checkout, a PATH with the stand-ins; returns (run, log)."""
  fake = tmp_path / 'fake'
  (fake / 'bin').mkdir(parents=True)
  (tmp_path / 'repo' / 'launch').mkdir(parents=True)
  shutil.copy(os.path.join(ROOT, 'launch', 'setup.sh'), tmp_path / 'repo' / 'launch')
  _fake(fake / 'good_python', 'echo "venv-python $*" >> "$FAKE/log"')
  _fake(fake / 'broken_python', 'echo "venv-python $*" >> "$FAKE/log"\n'
        '[[ "$1 $2" != "-m pip" ]] || { echo "No module named pip" >&2; exit 1; }')
  _fake(fake / 'bin' / 'apt-get', 'echo "apt-get $*" >> "$FAKE/log"\n'
        '[[ "$*" != *-venv* ]] || touch "$FAKE/venv_module"')
  for tool in ('dirname', 'rm', 'mkdir', 'cp', 'touch', 'sed'):
    os.symlink(shutil.which(tool), fake / 'bin' / tool)
  python = _fake(fake / 'python3', _BASE_PYTHON)
  bash = shutil.which('bash')

  def run(apt: bool = True) -> subprocess.CompletedProcess:
    if not apt:
      os.remove(fake / 'bin' / 'apt-get')
    env = {'PATH': str(fake / 'bin'), 'FAKE': str(fake), 'PYTHON': python}
    return subprocess.run([bash, str(tmp_path / 'repo' / 'launch' / 'setup.sh')], env=env,
                          capture_output=True, text=True, timeout=60)

  def log() -> list[str]:
    lines = (fake / 'log').read_text().splitlines() if (fake / 'log').exists() else []
    (fake / 'log').unlink(missing_ok=True)
    return [line for line in lines if not line.startswith('python -c')]

  return run, log, fake


PIP_INSTALL = 'venv-python -m pip install -q --disable-pip-version-check -e .[test]'
DATASET = [] if os.path.isdir('/usr/share/datasets/fashion-mnist') else ['dataset-fashion-mnist']


def test_setup_installs_the_venv_module_with_apt(fake_debian):
  run, log, _ = fake_debian
  proc = run()
  assert proc.returncode == 0, proc.stderr
  assert log() == ['apt-get update -qq',
                   f'apt-get install -y -qq {" ".join([*DATASET, "python3.11-venv"])}',
                   'python -m venv --clear .venv', PIP_INSTALL]


def test_setup_recreates_a_venv_without_pip(fake_debian):
  """An earlier run without the venv module left .venv/bin/python: setup re-creates the venv."""
  run, log, fake = fake_debian
  (fake / 'venv_module').touch()
  venv = fake.parent / 'repo' / '.venv' / 'bin'
  venv.mkdir(parents=True)
  shutil.copy(fake / 'broken_python', venv / 'python')
  proc = run()
  assert proc.returncode == 0, proc.stderr
  assert '.venv has no working pip; re-creating it' in proc.stderr
  apt = ['apt-get update -qq', f'apt-get install -y -qq {DATASET[0]}'] if DATASET else []
  assert log() == ['venv-python -m pip --version', *apt, 'venv-python -m pip --version',
                   'python -m venv --clear .venv', PIP_INSTALL]
  assert run().returncode == 0  # Idempotent: the venv stays.
  assert 'python -m venv --clear .venv' not in log()


def test_setup_without_apt_or_venv_module_says_what_to_install(fake_debian):
  run, log, fake = fake_debian
  proc = run(apt=False)
  assert proc.returncode == 1
  assert 'apt-get install python3.11-venv' in proc.stderr.splitlines()[-1]
  assert log() == [] and not (fake.parent / 'repo' / '.venv').exists()


def test_configs_ship_with_the_package(tmp_path):
  """After a non-editable install, demo and reproduce find their configs in the package; from a
  checkout (and an editable install) they are the checkout's configs/."""
  from big_distill import runs
  assert runs.CONFIGS == os.path.join(ROOT, 'configs')
  src, site = tmp_path / 'src', tmp_path / 'site'
  shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
      '.git', '.venv', 'build', '*.egg-info', '__pycache__', '.pytest_cache'))
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index',
                  '--no-build-isolation', '--target', str(site), str(src)], check=True,
                 capture_output=True, timeout=300)
  code = ('import os, runpy; from big_distill import runs; print(runs.__file__);'
          'print(runs.CONFIGS); config = os.path.join(runs.CONFIGS, "teacher.py");'
          'print(runpy.run_path(config)["get_config"]("runlocal=True").input.dataset)')
  proc = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                        text=True, env={**os.environ, 'PYTHONPATH': str(site)}, timeout=120)
  assert proc.returncode == 0, proc.stderr
  module, configs, dataset = proc.stdout.splitlines()
  assert module == str(site / 'big_distill' / 'runs.py')
  assert configs == str(site / 'big_distill' / 'configs') and dataset == 'fashion_mnist'
  assert {f for f in os.listdir(os.path.join(ROOT, 'configs')) if f.endswith('.py')} <= set(
      os.listdir(configs))
