"""The package's shape: no import cycles, no reaching into another subpackage's privates."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "fp8jax").rglob("*.py")) + sorted((ROOT / "interop").rglob("*.py"))


def _module(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _imports(path: pathlib.Path):
  """(imported module, imported name or None, at module level) for each import in path."""
  tree = ast.parse(path.read_text(encoding="utf-8"))
  top = set(map(id, tree.body))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        yield a.name, None, id(node) in top
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        yield node.module, a.name, id(node) in top


MODULES = {_module(p): p for p in SOURCES}


def _subpackage(module: str) -> str:
  parts = module.split(".")
  return ".".join(parts[:2]) if parts[0] == "fp8jax" else parts[0]


def _target(module: str, name: str | None) -> str:
  """The project module an import refers to (`from a.b import c` may name module a.b.c)."""
  if name is not None and f"{module}.{name}" in MODULES:
    return f"{module}.{name}"
  return module


def test_every_module_is_found():
  assert "fp8jax.quant.spec" in MODULES and "interop.convert" in MODULES
  assert len(MODULES) > 30


def _private(name: str) -> bool:
  """`_helper` is private; dunders (`__init__`, `__version__`) are not."""
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_of_another_subpackage(module):
  for mod, name, _ in _imports(MODULES[module]):
    target = _target(mod, name)
    if target.split(".")[0] not in ("fp8jax", "interop"):
      continue
    private = [p for p in target.split(".") if _private(p)]
    if name is not None and target == mod and _private(name):
      private.append(name)
    if _subpackage(target) == _subpackage(module):
      continue
    assert not private, f"{module} imports a private name of {target}: {private}"


def test_interop_imports_no_private_fp8jax_name():
  for module, path in MODULES.items():
    if not module.startswith("interop"):
      continue
    for mod, name, _ in _imports(path):
      if mod.startswith("fp8jax"):
        assert not any(p.startswith("_") for p in mod.split(".")), (module, mod)
        assert name is None or not name.startswith("_"), (module, mod, name)


def test_no_import_cycles():
  graph = {m: set() for m in MODULES}
  for module, path in MODULES.items():
    for mod, name, top in _imports(path):
      target = _target(mod, name)
      if top and target in MODULES and target != module:
        graph[module].add(target)
  state: dict[str, int] = {}

  def visit(m, trail):
    state[m] = 1
    for n in sorted(graph[m]):
      if state.get(n) == 1:
        raise AssertionError("import cycle: " + " -> ".join(trail + [m, n]))
      if n not in state:
        visit(n, trail + [m])
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m, [])


def test_no_module_shares_its_name_with_a_function_it_exports():
  import importlib
  for module in MODULES:
    mod = importlib.import_module(module)
    last = module.rsplit(".", 1)[-1]
    assert not callable(getattr(mod, last, None)) or module.endswith("__init__"), module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_attribute_of_another_subpackage(module):
  # `from fp8jax.quant import stats` then `stats._helper`: a private name all the same.
  tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
  bound = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        target = _target(node.module, a.name)
        if target in MODULES and target != node.module:
          bound[a.asname or a.name] = target
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name in MODULES and a.asname:
          bound[a.asname] = a.name
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in bound and node.attr.startswith("_")
        and not node.attr.startswith("__")):
      target = bound[node.value.id]
      assert _subpackage(target) == _subpackage(module), (
          f"{module} uses {target}.{node.attr}, a private name of another subpackage")
