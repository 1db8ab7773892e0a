"""Benchmarks: run from the repository root as `python -m benchmarks.NAME`; JSON lines on stdout."""

import json
import os
import subprocess
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def json_lines(command: list[str], env: dict[str, str] | None = None) -> list[dict[str, Any]]:
  """The JSON lines of a benchmark process run from the repository root (its stderr on failure)."""
  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
  if proc.returncode:
    raise RuntimeError(f'{" ".join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}')
  return [json.loads(line) for line in proc.stdout.splitlines()]
