"""notebooks/colab_small_dataset.ipynb runs headless in its tiny setting and draws its curves."""

import os
import re
import sys

import nbformat
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'colab_small_dataset.ipynb')


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
