"""The shape of the code: layers (imaging <- models <- pipelines), no import cycles (imports
inside functions count), and the run-time path free of torch. Read from the source with
``ast``; nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("imaging", "models", "pipelines")
TORCH_MODULES = {"ictus.models.deepmedic.network", "ictus.models.export", "ictus.models.train",
                 "ictus.models.monai_export"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["ictus", *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (annotations only; never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imports(path: Path, known: set[str]) -> set[str]:
    """The ictus modules that ``path`` imports when it runs (top level or inside functions;
    not the annotation-only imports under ``if TYPE_CHECKING:``)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_blocks(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("ictus.") and name in known:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, set(mods)) - {name} for name, path in mods.items()}


def test_layers_import_nothing_upward(graph):
    layer = {"imaging": 0, "models": 1, "pipelines": 2}
    upward = [(a, b) for a, deps in graph.items() for b in deps
              if layer[b.split(".")[1]] > layer[a.split(".")[1]]]
    assert not upward, upward


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components over module imports; a package's ``__init__``
    re-exporting its own modules is not a cycle (edges into a parent package are dropped)."""
    edges = {a: {b for b in deps if not a.startswith(b + ".")} for a, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_triage_path_imports_no_torch(graph):
    """Modules reachable from the triage function never reach the torch modules."""
    seen: set[str] = set()
    todo = ["ictus.pipelines.triage", "ictus.pipelines.api", "ictus.pipelines.pacs.listener"]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(graph.get(m, ()))
    assert not seen & TORCH_MODULES, sorted(seen & TORCH_MODULES)
