"""The package's import layers (docs/architecture.md): a module imports only from its own layer or lower ones,
at module level, and no two modules import each other, directly or through others."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dora_jax"

# Lowest first. A module belongs to the first entry that is it or one of its packages.
LAYERS = (
    ("dora_jax.batch", "dora_jax.cache", "dora_jax.distributed", "dora_jax.sections", "dora_jax.testing", "dora_jax.writers"),
    ("dora_jax.sharding",),
    ("dora_jax.models",),
    ("dora_jax.scoring", "dora_jax.tasks"),
    ("dora_jax.rollout",),
    ("dora_jax.objectives",),
    ("dora_jax.trainer",),
    ("dora_jax.eval",),
    ("dora_jax.plan", "dora_jax.pipeline"),
    ("dora_jax.experiments",),
)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    for index, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return index
    return None


def _deepest(module: str, name: str) -> str:
    """`from module import name` imports the submodule module.name when there is one, else module."""
    path = PACKAGE.parent / f"{module}.{name}".replace(".", "/")
    return f"{module}.{name}" if path.with_suffix(".py").exists() or path.is_dir() else module


def _imports(path: pathlib.Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(module-level, function-level) imports of dora_jax modules as (name, line)."""
    tree = ast.parse(path.read_text())
    top, nested = [], []

    def visit(node, depth):
        for child in ast.iter_child_nodes(node):
            inner = depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [_deepest(child.module, a.name) for a in child.names]
            for name in names:
                if name == "dora_jax" or name.startswith("dora_jax."):
                    (nested if depth else top).append((name, child.lineno))
            visit(child, inner)

    visit(tree, 0)
    return top, nested


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = [_module_name(p) for p in MODULES if _module_name(p) != "dora_jax" and _layer(_module_name(p)) is None]
    assert not missing, f"modules outside LAYERS (add them to tests/layers_test.py and docs/architecture.md): {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_point_down(path):
    module = _module_name(path)
    own = _layer(module)
    top, nested = _imports(path)
    assert not nested, f"{module} imports {nested} inside a function: import at module level (a cycle means a " \
                       "layer is wrong)."
    for name, line in top:
        assert own is not None and _layer(name) is not None and _layer(name) <= own, (
            f"{path.name}:{line}: {module} (layer {own}) imports {name} (layer {_layer(name)}), a higher layer.")


def test_no_import_cycles():
    graph = {}
    for path in MODULES:
        graph[_module_name(path)] = {n for n, _ in _imports(path)[0]}
    # A package's __init__ re-exporting its submodules is not a cycle of the package with them.
    def edges(module):
        return {n for n in graph.get(module, ()) if n in graph and not n.startswith(module + ".")}

    state: dict[str, int] = {}

    def dfs(module, stack):
        state[module] = 1
        for nxt in edges(module):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}")
            if nxt not in state:
                dfs(nxt, stack + [nxt])
        state[module] = 2

    for module in graph:
        if module not in state:
            dfs(module, [module])
