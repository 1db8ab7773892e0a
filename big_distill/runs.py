"""Running `big_distill.main` as a subprocess and reading results back (demo and reproduce)."""

import json
import os
import shlex
import subprocess
import sys
import time

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


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
