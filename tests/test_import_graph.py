"""The package's imports point one way (docs/DESIGN.md, "Layers"): no cycle among its modules, and
nothing in trt_core/ imports ui/ or scripts/. Read from the source with ast, so the check needs
none of the heavy libraries and sees imports inside functions too (a lazy import is still a
dependency: it only moves the failure to the first call)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sd_unet_trt"
FOLDERS = ("trt_core", "models", "ui", "scripts")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def package_modules() -> dict[str, Path]:
    """module name -> file, for every .py under the package's folders and at its root (errors.py,
    __main__.py; install.py imports nothing of the package)."""
    paths = sorted(ROOT.glob("*.py")) + [path for folder in FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))]
    return {module_name(path): path for path in paths}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(body: list[ast.stmt], in_function: bool):
    """(import node, whether it runs only when a function is called) for every import in `body`;
    imports under `if TYPE_CHECKING:` never run and are left out."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _imports(node.orelse, in_function)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _imports(node.body, True)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _imports(getattr(node, field, None) or [], in_function)


def _targets(node: ast.stmt, importer: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The package's modules that `node` imports: `from a import b` names module a.b when b is one."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parent = importer.split(".")
            parent = parent[:len(parent) - node.level + (1 if is_package else 0)]
            base = ".".join(parent + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    found = []
    for name in names:
        while name and name not in known:  # `import a.b.c` of a name that is not a module: its package
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def import_edges(known: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """(importer, imported, lazy) for every import of a package module by a package module."""
    edges = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        for node, lazy in _imports(tree.body, False):
            for target in _targets(node, name, path.name == "__init__.py", known):
                if target != name:
                    edges.append((name, target, lazy))
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as [a, b, ..., a], or [] when the graph has none (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


@pytest.fixture(scope="module")
def edges():
    return import_edges(package_modules())


def test_the_walk_sees_the_package(edges):
    """The walk itself works: it finds modules in every folder and imports it is known to hold."""
    known = package_modules()
    assert all(any(name.startswith(f"{PACKAGE}.{folder}.") for name in known) for folder in FOLDERS)
    assert (f"{PACKAGE}.trt_core.router", f"{PACKAGE}.trt_core.profiles", False) in edges
    assert any(importer.startswith(f"{PACKAGE}.scripts.") and target.startswith(f"{PACKAGE}.ui.")
               for importer, target, _ in edges)


def test_imports_have_no_cycle(edges):
    """Module-level imports and those inside functions alike (the last cycle, backends.base ->
    quantize -> export_process -> export -> backends.base, went through a lazy import)."""
    graph: dict[str, set[str]] = {}
    for importer, target, _ in edges:
        graph.setdefault(importer, set()).add(target)
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_trt_core_imports_neither_ui_nor_scripts(edges):
    above = (f"{PACKAGE}.ui", f"{PACKAGE}.scripts")
    upward = [f"{importer} imports {target}" + (" (inside a function)" if lazy else "")
              for importer, target, lazy in edges
              if importer.startswith(f"{PACKAGE}.trt_core.") and target.startswith(above)]
    assert not upward, "trt_core/ must not import ui/ or scripts/:\n" + "\n".join(upward)


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) == []
