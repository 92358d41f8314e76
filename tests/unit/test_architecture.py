"""The library's shape (ARCHITECTURE.md, Layout): no import cycles, orchestration stays out, a small root.

Read from the source with ``ast`` (nothing is imported), so a cycle hidden by an import inside a
function counts as a cycle too. Run as a script to print the figures:
``python -m tests.unit.test_architecture``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "mergeline"
MAX_ROOT_MODULES = 15
# Orchestration and tracking libraries, and the only mergeline packages allowed to import each.
CONFINED = {"prefect": (), "dvc": (), "mlflow": ("mergeline.tracking",)}
# Where an import of the library may sit inside a function: the command line and the stage wrappers,
# which defer torch/transformers/MLflow until a command runs (``mergeline --help`` stays fast).
LAZY_ENTRY_POINTS = ("mergeline.cli", "mergeline.commands", "mergeline.stages")


@dataclass(frozen=True)
class Import:
    """One import statement's target, as a dotted name, and where it sits."""

    source: str
    target: str
    names: tuple[str, ...]
    in_function: bool


def module_name(path: Path, root: Path = REPO) -> str:
    """Dotted name of a source file (``mergeline/merge/__init__.py`` → ``mergeline.merge``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(source: str, is_package: bool, node: ast.ImportFrom) -> str:
    """Absolute module named by a ``from`` import (relative ones resolved against ``source``)."""
    if node.level == 0:
        return node.module or ""
    base = source.split(".")
    drop = node.level - 1 if is_package else node.level
    base = base[: len(base) - drop] if drop else base
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, root: Path) -> Iterator[Import]:
    source = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def walk(node: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(source, alias.name, (), in_function)
            elif isinstance(child, ast.ImportFrom):
                names = tuple(alias.name for alias in child.names)
                yield Import(source, _resolve(source, is_package, child), names, in_function)
            yield from walk(child, nested)

    yield from walk(tree, False)


def all_imports(package: str = PACKAGE, root: Path = REPO) -> list[Import]:
    """Every import statement in every module of ``package``, at any depth of nesting."""
    return [imp for path in sorted((root / package).rglob("*.py")) for imp in _imports(path, root)]


def import_graph(imports: list[Import], modules: set[str]) -> dict[str, set[str]]:
    """Edges module → module it makes Python execute (target, or ``from pkg import submodule``).

    A package's ``__init__`` runs before any of its submodules, so an import of ``a.b.c`` is an edge
    to ``a.b.c`` and to ``a.b`` and ``a``; the edges from a module to its own enclosing packages
    are left out (those are already executing when it is).
    """
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for imp in imports:
        targets = [f"{imp.target}.{name}" for name in imp.names if f"{imp.target}.{name}" in modules]
        targets.append(imp.target)
        for target in targets:
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                node = ".".join(parts[:depth])
                enclosing = imp.source == node or imp.source.startswith(node + ".")
                if node in modules and not enclosing:
                    graph[imp.source].add(node)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def library_modules(package: str = PACKAGE, root: Path = REPO) -> set[str]:
    return {module_name(path, root) for path in (root / package).rglob("*.py")}


def root_modules(package: str = PACKAGE, root: Path = REPO) -> list[str]:
    """The ``.py`` files directly in the package folder (``__init__``/``__main__`` included)."""
    return sorted(path.name for path in (root / package).glob("*.py"))


def in_function_imports(imports: list[Import], package: str = PACKAGE) -> tuple[list[Import], list[Import]]:
    """Imports inside functions, split into (of ``package`` itself, of other libraries)."""
    inside = [imp for imp in imports if imp.in_function]
    own = [imp for imp in inside if imp.target == package or imp.target.startswith(package + ".")]
    return own, [imp for imp in inside if imp not in own]


def test_no_import_cycles_among_library_modules() -> None:
    graph = import_graph(all_imports(), library_modules())
    assert cycles(graph) == []


def test_library_imports_inside_functions_only_in_entry_points() -> None:
    own, _ = in_function_imports(all_imports())
    inside = sorted({imp.source for imp in own if not imp.source.startswith(LAZY_ENTRY_POINTS)})
    assert inside == []


def test_orchestration_libraries_only_where_allowed() -> None:
    offenders = []
    for imp in all_imports():
        top = imp.target.split(".")[0]
        allowed = CONFINED.get(top)
        if allowed is not None and not any(imp.source == pkg or imp.source.startswith(pkg + ".") for pkg in allowed):
            offenders.append(f"{imp.source} imports {imp.target}")
    assert offenders == []


def test_package_root_stays_small() -> None:
    assert len(root_modules()) <= MAX_ROOT_MODULES, root_modules()


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from pkg import a\n    return a\n")
    imports = all_imports("pkg", tmp_path)
    assert cycles(import_graph(imports, library_modules("pkg", tmp_path))) == [["pkg.a", "pkg.b"]]
    own, other = in_function_imports(imports, "pkg")
    assert [(imp.source, imp.target) for imp in own] == [("pkg.b", "pkg")] and other == []



def test_test_files_have_unique_names() -> None:
    # The test folders are not packages (pytest's rootdir import mode): two test files with one
    # basename cannot both be collected in one session, and which one fails depends on the order.
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(REPO)} and {path.relative_to(REPO)}")
        seen.setdefault(path.name, path)
    assert not clashes, clashes

if __name__ == "__main__":
    found = all_imports()
    own_inside, other_inside = in_function_imports(found)
    print(f"root modules: {len(root_modules())}")
    print(f"cycles: {cycles(import_graph(found, library_modules()))}")
    print(f"imports inside functions: {len(own_inside)} of mergeline, {len(other_inside)} of other libraries")
