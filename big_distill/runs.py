"""Running `big_distill.main` as a subprocess (the demo's and reproduce's stages)."""

import os
import shlex
import subprocess
import sys
import time

import ml_collections

from big_distill import checkpoint, configlib, errors, workdir as workdir_lib


def _configs_dir() -> str:
  """The directory of the config files: `big_distill/configs/` where the package was installed
  with them (setup.py ships `configs/` as `big_distill.configs`), else `configs/` of the checkout
  that holds the package (running from a checkout, or an editable install)."""
  package = os.path.dirname(os.path.abspath(__file__))
  installed = os.path.join(package, 'configs')
  if os.path.isfile(os.path.join(installed, 'fashion_mnist_teacher.py')):
    return installed
  return os.path.join(os.path.dirname(package), 'configs')


CONFIGS = _configs_dir()


def run_command(name: str, module: str, *args: str) -> float:
  """Runs `python -m <module> <args>` as the stage `name` (its progress and errors go to this
  process's terminal); returns its wall time in seconds. A failed stage has said why:
  `errors.StageFailed` with its exit code."""
  cmd = [sys.executable, '-m', module, *args]
  print(f'[{name}]', shlex.join(cmd), flush=True)
  start = time.time()
  code = subprocess.run(cmd, check=False).returncode
  if code:
    raise errors.StageFailed(code)
  return time.time() - start


def run_stage(name: str, config: str, workdir: str, *overrides: str) -> float:
  """`run_command` of one training run."""
  return run_command(name, 'big_distill.main', f'--config={config}', f'--workdir={workdir}',
                     *overrides)


def finished(workdir: str) -> bool:
  """Whether `workdir` holds a run that has saved the checkpoint of its last step (False for no
  run, or one that predates `data.json`, which records its training examples)."""
  data = workdir_lib.read_data(workdir) if os.path.isdir(workdir) else None
  if data is None or not os.path.exists(os.path.join(workdir, workdir_lib.CONFIG)):
    return False
  config = ml_collections.ConfigDict(workdir_lib.read_config(workdir))
  return configlib.total_steps(config, data['num_train']) in checkpoint.saved_steps(workdir)
