"""The package's shape: its modules import each other without cycles, and the training loop,
the build, the steps and the checkpoint / preemption / parameter-import owners are separate."""

import ast
import os

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
  constructs models, teachers, meshes, shardings or datasets itself."""
  by_hand = ('from_config', 'get_model', 'teachers_lib', 'load_params', 'init_params',
             'make_mesh', 'param_shardings', 'get_builder', 'train_batches(self.config')
  directory = os.path.join(ROOT, 'benchmarks')
  paths = [os.path.join(directory, name) for name in sorted(os.listdir(directory))
           if name.endswith('.py') and name != '__init__.py']
  for path in [*paths, os.path.join(PACKAGE, 'deploy.py')]:
    with open(path) as f:
      source = f.read()
    assert not [s for s in by_hand if s in source], path
    if os.path.basename(path) != 'comparison.py':
      assert 'build.create_run' in source or 'train.train_and_evaluate' in source, path
