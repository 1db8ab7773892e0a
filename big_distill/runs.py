"""Running `big_distill.main` as a subprocess and reading results back (demo and reproduce)."""

import json
import os
import shlex
import subprocess
import sys
import time


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


def last_metrics(workdir: str) -> dict[str, float]:
  """The newest value of every key in `workdir/metrics.jsonl`."""
  latest = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      latest.update(json.loads(line))
  return latest


def run_stage(config: str, workdir: str, *overrides: str) -> float:
  """Runs one training command, echoing it; returns its wall time in seconds."""
  cmd = [sys.executable, '-m', 'big_distill.main', f'--config={config}', f'--workdir={workdir}',
         *overrides]
  print('+', shlex.join(cmd), flush=True)
  start = time.time()
  subprocess.run(cmd, check=True)
  return time.time() - start
