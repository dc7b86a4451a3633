"""The packages' layers, read from the source: imports run only downward, with no circle.

Every `import` and `from ... import` of a module under sdxl/ counts, those inside functions
too (a lazy import is still a dependency); only the test builders' rule is about import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SDXL = Path(__file__).resolve().parent.parent / "sdxl"
# Top to bottom: a package may import its own modules and those of the layers below it.
LAYERS = (
    ("cli", "__main__"),
    ("cog", "http"),
    ("runtime",),
    ("train",),
    ("engine",),
    ("adapters",),
    ("control",),
    ("model",),
    ("generate",),
    ("inputs", "net", "builders"),
    ("images", "weights", "settings", "upscale"),
    ("store", "errors", "config", "numbers", "logs"),
)
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def _module(path: Path) -> str:
    parts = path.relative_to(SDXL.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _imports(tree: ast.AST, module: str, top_level_only: bool = False):
    """(imported module, line) of every sdxl import in `tree`."""
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "sdxl":  # from sdxl import logs
                for alias in node.names:
                    yield f"sdxl.{alias.name}", node.lineno
            elif node.module.startswith("sdxl."):
                yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sdxl."):
                    yield alias.name, node.lineno


def _graph(top_level_only: bool = False) -> dict[str, list[tuple[str, int]]]:
    graph = {}
    for path in sorted(SDXL.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        graph[_module(path)] = list(_imports(tree, _module(path), top_level_only))
    return graph


@pytest.fixture(scope="module")
def graph():
    return _graph()


def test_every_package_has_a_layer(graph):
    packages = {_package(module) for module in graph} - {""}
    assert packages <= set(RANK), f"packages with no layer in LAYERS: {packages - set(RANK)}"


def test_imports_run_only_downward(graph):
    upward = [
        f"{module}:{line} imports {target}"
        for module, targets in graph.items()
        for target, line in targets
        if _package(module) in RANK
        and _package(target) in RANK
        and RANK[_package(target)] < RANK[_package(module)]
    ]
    assert upward == []


def test_nothing_outside_the_apis_imports_them(graph):
    allowed = {"sdxl.cli", "sdxl.__main__"}
    found = [
        f"{module}:{line} imports {target}"
        for module, targets in graph.items()
        for target, line in targets
        if target.startswith("sdxl.http") and _package(module) != "http" and module not in allowed
    ]
    assert found == []


def test_the_engine_knows_neither_the_store_nor_the_apis(graph):
    found = [
        f"{module}:{line} imports {target}"
        for module, targets in graph.items()
        if _package(module) == "engine"
        for target, line in targets
        if _package(target) in ("store", "http", "runtime", "cog")
    ]
    assert found == []


def test_no_circle_between_modules(graph):
    """Tarjan's strongly connected components over the modules: each must be one module."""
    known = set(graph)

    def targets(module: str) -> list[str]:
        found = []
        for target, _line in graph[module]:
            while target not in known and "." in target:  # from sdxl.x.y import name
                target = target.rsplit(".", 1)[0]
            if target in known and target != module:
                found.append(target)
        return found

    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in targets(module):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert circles == []


def test_product_modules_never_import_test_builders_at_import_time():
    found = [
        f"{module}:{line} imports {target}"
        for module, targets in _graph(top_level_only=True).items()
        for target, line in targets
        if _package(target) == "builders" and _package(module) != "builders"
    ]
    assert found == []


def test_the_layer_checks_can_fail():
    """The scan sees an upward import and a circle where they are (a file written here)."""
    tree = ast.parse("from sdxl.http.server import main\n\ndef f():\n    import sdxl.store.db\n")
    assert [t for t, _ in _imports(tree, "sdxl.engine.x")] == ["sdxl.http.server", "sdxl.store.db"]
    assert [t for t, _ in _imports(tree, "sdxl.engine.x", top_level_only=True)] == [
        "sdxl.http.server"
    ]
