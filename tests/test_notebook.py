"""notebooks/colab_small_dataset.ipynb runs headless in its tiny setting and draws its curves; its
install cell, unchanged, installs the checkout it sits in, or asks for REPO_URL."""

import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import ROOT

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'colab_small_dataset.ipynb')
PIP = [sys.executable, '-m', 'pip', 'install', '-q', '-e']


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


def test_install_cell_installs_the_checkout_it_sits_in(install_cell):
  """Jupyter runs a notebook in its folder: notebooks/ of this checkout. No clone, no REPO_URL."""
  variables, commands = install_cell(os.path.join(ROOT, 'notebooks'))
  assert commands == [[*PIP, ROOT]]
  assert variables['REPO_DIR'] == ROOT and sys.path[0] == ROOT  # This kernel imports it now.


def test_install_cell_without_a_checkout_asks_for_repo_url(install_cell, tmp_path):
  with pytest.raises(RuntimeError, match='set REPO_URL in the first code cell') as error:
    install_cell(str(tmp_path))
  assert '\n' not in str(error.value)
  clone = str(tmp_path / 'clone')
  _, commands = install_cell(str(tmp_path), f'REPO_URL, REPO_DIR = "https://x/bd.git", {clone!r}')
  assert commands == [['git', 'clone', '-q', '--depth=1', 'https://x/bd.git', clone],
                      [*PIP, clone]]


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
  assert sum('image/png' in o.get('data', {}) for o in outputs) == 2  # Teacher, student.
  for name in ('teacher test accuracy', 'student test accuracy', 'top-1 agreement'):
    value = float(re.search(rf'{name}[^:]*: ([\d.]+)%', stdout).group(1))
    assert 0.0 < value <= 100.0, name
  assert sorted(os.listdir(tmp_path)) == ['student', 'teacher']  # FLOWERS stayed off.
