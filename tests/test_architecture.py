"""The package's import graph, read from the source (AST): no import loop, and the lower floors
never import the upper ones (issue 32). Every import counts, module-level or inside a function:
a lazy import still ties the two modules together."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'senet_jax')

# Each floor may import itself and the floors listed (nothing else of senet_jax).
FLOORS = {
    'senet_jax.errors': (),
    'senet_jax.utils': ('senet_jax.errors',),
    'senet_jax.ops': ('senet_jax.utils', 'senet_jax.errors'),
    'senet_jax.models': ('senet_jax.ops', 'senet_jax.utils', 'senet_jax.errors'),
}
# The tools stand at the top: no module of the package imports one, but the tools themselves
# and their old paths, kept for one release (each re-exports its tool).
TOOLS = 'senet_jax.tools'
OLD_TOOL_PATHS = ('senet_jax.cam', 'senet_jax.complexity', 'senet_jax.excitation',
                  'senet_jax.predict', 'senet_jax.summary', 'senet_jax.sweep', 'senet_jax.validate')


def _modules() -> dict[str, str]:
  """{dotted module name: path} of every module of the package."""
  found = {}
  for directory, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        found[dotted[:-len('.__init__')] if dotted.endswith('.__init__') else dotted] = path
  return found


def _imports(path: str, module: str, modules: dict[str, str]) -> set[str]:
  """The package modules `module` imports. `from pkg import sub` is an edge to pkg.sub when
  that is a module, else to pkg (a name its __init__ defines)."""
  is_package = path.endswith('__init__.py')
  edges = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # relative: resolve against this module's package
        parts = module.split('.')[:len(module.split('.')) - node.level + is_package]
        base = '.'.join(parts + ([base] if base else []))
      targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base
                 for a in node.names]
    else:
      continue
    edges.update(t for t in targets if t in modules and t != module)
  return edges


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imports(p, m, modules) for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        result.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return result


def test_the_graph_reader_sees_a_known_edge_and_a_loop():
  graph = _graph()
  assert 'senet_jax.models.registry' in graph['senet_jax.models']  # `from ... import create_model`
  assert 'senet_jax.convert.hub' in graph['senet_jax.pretrained']
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_no_import_loop():
  assert _cycles(_graph()) == []


@pytest.mark.parametrize('floor', sorted(FLOORS))
def test_lower_floors_import_nothing_above_them(floor):
  allowed = (floor,) + FLOORS[floor]
  climbing = {f'{m} -> {t}' for m, targets in _graph().items()
              if m == floor or m.startswith(floor + '.')
              for t in targets if not any(t == a or t.startswith(a + '.') for a in allowed)}
  assert climbing == set()


def test_nothing_below_the_tools_imports_them():
  graph = _graph()
  assert 'senet_jax.tools.evaluate' in graph['senet_jax.validate']  # the reader sees the edge
  assert 'senet_jax.models.counting' in graph['senet_jax.training.mfu']  # not the tool
  climbing = {f'{m} -> {t}' for m, targets in graph.items()
              if m != TOOLS and not m.startswith(TOOLS + '.') and m not in OLD_TOOL_PATHS
              for t in targets if t == TOOLS or t.startswith(TOOLS + '.')}
  assert climbing == set()
