"""docs/deployment.md's code examples, every one run as written in the order of the file: its
shell commands from the repository root (the run shortened by overrides appended, the benchmark
given fewer rounds and examples), its Python examples in a directory that holds the two images
they read; the test's directory stands in for `/tmp/`."""

import ast
import json
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.helpers import ROOT, TINY_TEACHER, env, run

DOC = os.path.join(ROOT, 'docs', 'deployment.md')
# Appended to the doc's `big_distill.main` command: the tiny teacher at 28 px, 6 steps.
SHORT = (*TINY_TEACHER, '--config.total_steps=6', '--config.eval_every_steps=6',
         '--config.checkpoint_every_steps=6', '--config.log_every_steps=6')
FEWER = ('--max_examples=16', '--rounds=1', '--batch=4')  # Appended to `big_distill.deploy`.
FASHION_MNIST = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                 'Sneaker', 'Bag', 'Ankle boot')


def examples() -> list[tuple[str, str]]:
  """(language, code) of each fenced block of the doc, in order."""
  with open(DOC, encoding='utf-8') as f:
    return re.findall(r'^```(\w*)\n(.*?)^```', f.read(), re.S | re.M)


def _run_shell(code: str, tmp: str) -> list[str]:
  """Each command of a bash block (continuation lines joined), as written but for `/tmp/`."""
  outputs = []
  for line in code.replace('\\\n', ' ').splitlines():
    args = line.replace('/tmp/', f'{tmp}/').split()
    assert args[:2] == ['python', '-m'], line  # Run without a shell: commands only.
    args += {'big_distill.main': SHORT, 'big_distill.deploy': FEWER}.get(args[2], ())
    outputs.append(run([sys.executable, *args[1:]]).stdout)
  return outputs


def _run_python(code: str, script, cwd) -> list[str]:
  """A Python block as written but for `/tmp/`, run in `cwd` with this checkout's big_distill."""
  script.write_text(code.replace('/tmp/', f'{script.parent}/'))
  proc = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env(PYTHONPATH=ROOT),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.strip().splitlines()


def test_every_example_runs_as_written(tmp_path):
  tmp, images = str(tmp_path), tmp_path / 'images'
  images.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (40, 30, 3), np.uint8)).save(images / 'shoe.png')
  Image.fromarray(rng.integers(0, 256, (50, 50), np.uint8)).save(images / 'bag.jpg')
  blocks = examples()
  assert [language for language, _ in blocks] == [
      'bash', 'python', 'python', 'python', 'bash'], 'a new example: run it and check it below'
  outputs = [_run_shell(code, tmp) if language == 'bash' else
             _run_python(code, tmp_path / f'example_{i}.py', images)
             for i, (language, code) in enumerate(blocks)]
  assert os.path.isdir(tmp_path / 'student') and os.path.isfile(tmp_path / 'student.tflite')
  predicted = ast.literal_eval(outputs[1][-1])  # ['Sandal', 'Bag'] or so.
  assert len(predicted) == 2 and set(predicted) <= set(FASHION_MNIST)
  assert outputs[2][-1] == '(1, 10)'  # The default export: one image a call.
  assert outputs[3][-1] in FASHION_MNIST
  formats = [json.loads(line).get('format') for line in outputs[4][0].splitlines()]
  assert formats == ['jax', 'savedmodel', 'tflite_float32', 'tflite_int8', None]  # And summary.

