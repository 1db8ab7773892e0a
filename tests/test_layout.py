"""The package's shape: its modules import each other without cycles; the training loop, the
build, the steps and the checkpoint / preemption / parameter-import owners are separate; a model
family is decided in its own module alone; what was once written twice has one home; commands
start without JAX and TensorFlow."""

import ast
import os
import subprocess
import sys

from tests.helpers import ROOT

PACKAGE = os.path.join(ROOT, 'big_distill')


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len('.py')].replace(os.sep, '.')
  return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def import_graph() -> dict[str, set[str]]:
  """{module: the big_distill modules it imports} from the source (nothing is imported)."""
  modules = {}
  for directory, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        modules[_module_name(os.path.join(directory, name))] = os.path.join(directory, name)
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names if a.name in modules)
      elif isinstance(node, ast.ImportFrom) and node.module and node.module in modules:
        for alias in node.names:  # `from big_distill import x`: the module x if there is one.
          sub = f'{node.module}.{alias.name}'
          deps.add(sub if sub in modules else node.module)
    graph[module] = deps - {module}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == 'open':
        return stack[stack.index(dep):] + [dep]
      if dep not in state and (cycle := visit(dep)):
        return cycle
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_no_import_cycles():
  graph = import_graph()
  assert 'big_distill.build' in graph['big_distill.train']  # The graph is read right ...
  assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_a_cycle_is_found():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']  # ... and seen.
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_each_concern_has_its_own_module():
  graph = import_graph()
  for module in ('train', 'build', 'steps', 'checkpoint', 'preemption', 'models.loading',
                 'workdir', 'errors', 'variants'):
    assert f'big_distill.{module}' in graph, module
  # The loop builds through `build` and keeps state and preemption apart.
  assert {'big_distill.preemption', 'big_distill.checkpoint'} <= graph['big_distill.train']
  assert 'big_distill.models.bit' not in graph['big_distill.checkpoint']  # No BiT in the state.


def test_the_benchmarks_build_through_create_run():
  """No benchmark (those in benchmarks/, and the deploy benchmark that ships in the package)
  constructs models, teachers, meshes, shardings or datasets itself: each builds its runs as
  training does, or runs `benchmarks.step_throughput`, which does."""
  by_hand = ('models.resolve', '.create(', 'teachers_lib', 'load_params', 'init_params',
             'make_mesh', 'param_shardings', 'get_builder', 'train_batches(self.config')
  directory = os.path.join(ROOT, 'benchmarks')
  paths = [os.path.join(directory, name) for name in sorted(os.listdir(directory))
           if name.endswith('.py') and name != '__init__.py']
  for path in [*paths, os.path.join(PACKAGE, 'deploy.py')]:
    with open(path) as f:
      source = f.read()
    assert not [s for s in by_hand if s in source], path
    if os.path.basename(path) != 'comparison.py':
      assert any(s in source for s in ('build.create_run', 'train.train_and_evaluate',
                                       "'benchmarks.step_throughput'")), path


def _sources() -> dict[str, str]:
  """{path relative to the repository: source} of every Python file of the package."""
  out = {}
  for directory, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        with open(os.path.join(directory, name)) as f:
          out[os.path.relpath(os.path.join(directory, name), ROOT)] = f.read()
  return out


def _code_strings(source: str) -> list[tuple[int, str]]:
  """(line, value) of every string constant of `source` that is not a docstring."""
  tree = ast.parse(source)
  docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                and node.body and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)}
  return [(node.lineno, node.value) for node in ast.walk(tree)
          if isinstance(node, ast.Constant) and isinstance(node.value, str)
          and id(node) not in docstrings]


def test_no_module_branches_on_a_family_outside_its_own():
  """A family's name appears in code (not docs) only in its own module: the registry, loading,
  convert, export and the configs ask the family's record (`models.family.Family`)."""
  from big_distill import models  # pylint: disable=g-import-not-at-top
  names = set(models.FAMILIES)
  assert names == {'bit', 'vit', 'mobilenet_v3'}
  found = [(path, line, value) for path, source in _sources().items()
           for line, value in _code_strings(source) if value in names
           and path != os.path.join('big_distill', 'models', f'{value}.py')]
  assert not found, found
  assert _code_strings("x = 'vit'\n") == [(1, 'vit')]  # ... and a literal would be found.


def test_what_was_written_twice_has_one_home():
  """Each concern the families issue found in two or more places is in one: the lock, the remote
  path test, the config-file loader, the "at least one teacher" check, `check_input`, the
  image-folder test for a run's data, the local preparation of Fashion-MNIST, the exit codes, the
  softmax; and no error line is built by matching a library's message text."""
  sources = _sources()

  def where(text: str) -> list[str]:
    return sorted(path for path, source in sources.items() if text in source)

  data = os.path.join('big_distill', 'data')
  assert where('fcntl.flock(') == [os.path.join(data, 'locks.py')]
  assert where("'://'") == [os.path.join('big_distill', 'workdir.py')]
  assert where('spec_from_file_location(') == [os.path.join('big_distill', 'configlib.py')]
  assert where('config_flags.') == [os.path.join('big_distill', 'configlib.py')]
  assert where('needs at least one entry in config.teachers') == [
      os.path.join('big_distill', 'build.py')]
  assert where('check_input(') == sorted([os.path.join('big_distill', 'build.py'),
                                          os.path.join(data, 'input_pipeline.py')])
  assert sources[os.path.join(data, 'input_pipeline.py')].count('check_input(') == 1  # Its def.
  assert 'is_folder(' not in sources[os.path.join('big_distill', 'build.py')]
  assert 'fashion' not in sources[os.path.join(data, 'input_pipeline.py')]
  assert 'ConfigDict(dict(resolution=' not in ''.join(sources.values())
  cli = sources[os.path.join('big_distill', 'cli.py')]
  assert 'in str(e)' not in cli and 'IO_ERROR' not in cli and 'Pass --help' not in cli
  assert 'np.exp(' not in sources[os.path.join('big_distill', 'inference.py')]


def test_commands_start_without_jax_and_tensorflow():
  """`--help` of every command, and `import big_distill.errors`, load neither JAX nor
  TensorFlow (they are most of a command's start-up): the modules Python imported, read from
  `-X importtime`."""
  commands = ('main', 'predict', 'evaluate', 'export', 'convert', 'report', 'demo', 'reproduce',
              'deploy')
  for argv in ([['-c', 'import big_distill.errors']] +
               [['-m', f'big_distill.{name}', '--help'] for name in commands]):
    proc = subprocess.run([sys.executable, '-X', 'importtime', *argv], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, check=False)
    # absl's `--help` prints the flags and exits 1.
    assert proc.returncode == (0 if argv[0] == '-c' else 1), (argv, proc.stderr[-2000:])
    assert argv[0] == '-c' or 'Try --helpfull' in proc.stdout, (argv, proc.stdout[-2000:])
    imported = {line.split('|')[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith('import time:')}
    assert 'absl.flags' in imported or argv[0] == '-c', argv  # The reading works ...
    assert not imported & {'jax', 'tensorflow', 'flax', 'orbax.checkpoint'}, (argv, sorted(
        imported & {'jax', 'tensorflow', 'flax', 'orbax.checkpoint'}))
