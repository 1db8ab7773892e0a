"""Shared fixtures: the offline Fashion-MNIST dataset and short runs of the real entry point."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_CONFIG = os.path.join(ROOT, 'configs', 'fashion_mnist_teacher.py')
FUNMATCH_CONFIG = os.path.join(ROOT, 'configs', 'fashion_mnist_funmatch.py')
# Tiny models at 28x28 keep the end-to-end runs to seconds.
TINY_TEACHER = ('--config.student.depth=14', '--config.student.width=0.25',
                '--config.input.resolution=28')
TINY_STUDENT = ('--config.teachers[0].depth=14', '--config.teachers[0].width=0.25',
                '--config.student.depth=14', '--config.student.width=0.125',
                '--config.input.resolution=28')


def get_config(name: str, arg: str | None = None):
  """`get_config(arg)` of `configs/<name>`."""
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, 'configs', name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def run_main(config: str, workdir: str, *overrides: str, devices: int = 1,
             check: bool = True, **env_vars: str) -> subprocess.CompletedProcess:
  """Runs `python -m big_distill.main` in a fresh process with `devices` CPU devices (and the
  environment variables `env_vars`)."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', **env_vars)
  cmd = [sys.executable, '-m', 'big_distill.main', f'--config={config}',
         f'--workdir={workdir}', *overrides]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f'{" ".join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
  return proc


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def metric(records: list[dict], key: str) -> dict[int, float]:
  """{step: value} of one key."""
  return {r['step']: r[key] for r in records if key in r}


@pytest.fixture(scope='session')
def fmnist_builder():
  from big_distill.data import input_pipeline
  return input_pipeline.get_builder('fashion_mnist')


@pytest.fixture(scope='session')
def teacher_run(tmp_path_factory, fmnist_builder):
  """A 10-step supervised run of the demo teacher config on a slice of Fashion-MNIST."""
  workdir = str(tmp_path_factory.mktemp('teacher'))
  run_main(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER)
  return workdir


@pytest.fixture(scope='session')
def distill_run(tmp_path_factory, teacher_run):
  """A 10-step function-matching run distilling `teacher_run` into an R14 x 1/8 student."""
  workdir = str(tmp_path_factory.mktemp('distill'))
  run_main(f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}', workdir, *TINY_STUDENT)
  return workdir
