"""notebooks/colab_small_dataset.ipynb runs headless in its tiny setting and draws its curves; its
install cell, unchanged, installs the checkout it sits in, or asks for REPO_URL."""

from importlib import metadata
import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import ROOT

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'colab_small_dataset.ipynb')
PIP = [sys.executable, '-m', 'pip', 'install', '-q']


@pytest.fixture
def install_cell(monkeypatch):
  """Runs the parameters cell, then `overrides`, then the install cell, as stored, in this process
  and in directory `cwd`, with subprocess.run recording its commands instead of running them;
  returns (the cells' variables, the commands)."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = next(i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', []))
  install = next(c for c in nb.cells[params + 1:] if c.cell_type == 'code')
  commands = []
  monkeypatch.setattr(subprocess, 'run', lambda cmd, **kwargs: commands.append(cmd))
  monkeypatch.setattr(sys, 'path', list(sys.path))

  def run(cwd: str, overrides: str = '') -> tuple[dict, list[list[str]]]:
    monkeypatch.chdir(cwd)
    variables = {}
    exec('\n'.join([nb.cells[params].source, overrides, install.source]), variables)
    return variables, commands

  return run


def _requirement_names(command: list[str]) -> set[str]:
  return {re.split(r'[<>=!~ ]', r)[0].lower() for r in command[len(PIP):]}


def test_install_cell_installs_the_checkout_it_sits_in(install_cell):
  """Jupyter runs a notebook in its folder: notebooks/ of this checkout. No clone, no REPO_URL;
  the package without its dependencies, then those the kernel lacks, never its TF or JAX."""
  variables, commands = install_cell(os.path.join(ROOT, 'notebooks'))
  assert commands[0] == [*PIP, '--no-deps', '-e', ROOT]
  assert commands[1][:len(PIP)] == PIP
  names = _requirement_names(commands[1])
  assert {'flax', 'optax', 'orbax-checkpoint', 'clu'} <= names
  assert not names & {'tensorflow', 'tensorflow-cpu', 'jax', 'jaxlib', 'pytest', 'torch'}
  assert variables['REPO_DIR'] == ROOT and sys.path[0] == ROOT  # This kernel imports it now.


def test_install_cell_on_colab_keeps_its_tensorflow_and_jax(install_cell, tmp_path, monkeypatch):
  """Without a checkout: asks for REPO_URL or WHEEL; installs from either; where the kernel has
  no TensorFlow or JAX of its own (unlike Colab), they are installed too."""
  with pytest.raises(RuntimeError, match='set REPO_URL .* or WHEEL') as error:
    install_cell(str(tmp_path))
  assert '\n' not in str(error.value)
  _, commands = install_cell(str(tmp_path), 'REPO_URL = "https://x/bd.git"')
  assert commands[0] == [*PIP, '--no-deps', 'big_distill @ git+https://x/bd.git']
  assert not _requirement_names(commands[1]) & {'tensorflow', 'tensorflow-cpu', 'jax'}
  commands.clear()
  real_version = metadata.version

  def version(name):
    if name.startswith(('tensorflow', 'tf-', 'jax')):
      raise metadata.PackageNotFoundError(name)
    return real_version(name)

  monkeypatch.setattr(metadata, 'version', version)
  _, commands = install_cell(str(tmp_path), 'WHEEL = "/content/big_distill-0.1.0.whl"')
  assert commands[0] == [*PIP, '--no-deps', '/content/big_distill-0.1.0.whl']
  assert {'jax', 'tensorflow-cpu'} <= _requirement_names(commands[1])


def test_notebook_distils_and_plots(tmp_path, monkeypatch, fmnist_builder):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert not any(c.outputs for c in code), 'the notebook is stored without outputs'
  params = next(i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', []))
  # Like papermill's injected parameters: installed here, 10 steps per run at 28 px.
  nb.cells.insert(params + 1, nbformat.v4.new_code_cell(
      f'INSTALL, REPO_DIR, WORKDIR = False, {ROOT!r}, {str(tmp_path)!r}\n'
      'RUNLOCAL, RESOLUTION = True, 28\n'
      'import sys\nprint("kernel:", sys.executable)'))
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': str(tmp_path)}}).execute()

  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  stdout = ''.join(o.text for o in outputs if o.output_type == 'stream' and o.name == 'stdout')
  assert f'kernel: {sys.executable}' in stdout
  stderr = ''.join(o.text for o in outputs if o.output_type == 'stream' and o.name == 'stderr')
  assert re.search(r'train: .*10/10', stderr), 'no progress bar'  # Text bars: no ipywidgets.
  assert sum('image/png' in o.get('data', {}) for o in outputs) == 2  # Teacher, student.
  for name in ('teacher test accuracy', 'student test accuracy', 'top-1 agreement'):
    value = float(re.search(rf'{name}[^:]*: ([\d.]+)%', stdout).group(1))
    assert 0.0 < value <= 100.0, name
  assert sorted(os.listdir(tmp_path)) == ['student', 'teacher']  # FLOWERS stayed off.
