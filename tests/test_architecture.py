"""The layout keeps the architecture visible: no import cycles, arrows point down the layers,
and the public API is exactly ``harness.__all__``.

Every import in ``harness/`` counts, function-local and ``TYPE_CHECKING`` ones included: a
local import does not dodge a cycle here, it is one.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness

ROOT = Path(harness.__file__).parent

# Layers, lowest first. A module may import from a lower layer, and within its own family
# (subpackage); never from its own layer or above. docs/architecture.md draws the same.
LAYERS: list[set[str]] = [
    {"scrub"},  # secrets redacted, control characters made visible: used by every layer
    {"errors", "clock", "usage", "messages", "logs", "cron", "workspace"},  # plain data
    {"sources"},  # reading what a user wrote: files, HARNESS_* variables
    {"settings"},
    {"agents"},
    {"store"},
    {"provider", "tools", "ledger"},
    {"runtime", "steps"},
    {"context"},  # what of a task's transcript is sent: masks, summaries, overflow recovery
    {"loop"},
    {"report"},
    {"schedules"},
    {"worker"},
    {"telemetry"},  # metrics and traces of a runtime's events (and of the database)
    {"web", "mcp"},  # the dashboard, harness as an MCP server; below cli, which serves both
    {"cli", "testing"},
    {"__init__", "__main__"},  # the public face: re-exports, lazily
]
RANK = {family: rank for rank, families in enumerate(LAYERS) for family in families}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield ".".join(["harness", *parts]), path


MODULES = dict(_modules())
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _family(module: str) -> str:
    """``harness.store.queue`` -> ``store``; ``harness.loop`` -> ``loop``; ``harness`` ->
    ``__init__``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _resolve(module: str, node: ast.ImportFrom) -> str:
    package = module if module in PACKAGES else module.rsplit(".", 1)[0]
    if node.level == 0:
        return node.module or ""
    base = package.split(".")
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(module: str, path: Path) -> set[str]:
    """The harness modules ``module`` imports (anywhere in its body)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            # ``from . import queue``: the submodule; ``from .store import Store``: the package
            names = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            names = names or [target]
        else:
            continue
        found.update(n for n in names if n == "harness" or n.startswith("harness."))
    found.discard(module)
    return found


GRAPH = {module: imports(module, path) for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_placed_on_a_layer() -> None:
    unplaced = sorted({_family(m) for m in MODULES} - set(RANK))
    assert not unplaced, f"add these to LAYERS (and docs/architecture.md): {unplaced}"


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(GRAPH) == []


def test_no_import_cycle_between_families() -> None:
    families: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        mine = _family(module)
        families.setdefault(mine, set()).update(_family(t) for t in targets if _family(t) != mine)
    assert _cycles(families) == []


def test_imports_point_down_the_layers() -> None:
    upward = []
    for module, targets in sorted(GRAPH.items()):
        for target in sorted(targets):
            a, b = _family(module), _family(target)
            if a != b and RANK[a] <= RANK[b]:
                upward.append(f"{module} -> {target} ({a}: layer {RANK[a]}, {b}: {RANK[b]})")
    assert upward == []


def test_harness_never_imports_a_workspace() -> None:
    """A workspace's ``agents/`` and ``tools/`` import ``harness``; never the other way."""
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [f"{module}: {n}" for n in names if n.split(".")[0] in ("tools", "agents")]
    assert found == []


def test_the_cycle_check_sees_a_cycle() -> None:
    """The checks above can fail: a local import that closes a loop is found."""
    graph = {**GRAPH, "harness.settings": {*GRAPH["harness.settings"], "harness.schedules"}}
    assert any("harness.settings" in c for c in _cycles(graph))


# -- the public API ------------------------------------------------------------------------


def test_all_is_exactly_the_public_names() -> None:
    """Like httpx's test_exported_members: ``__all__`` lists every public name, each one
    resolves, and nothing public is left out."""
    public = {
        name
        for name in dir(harness)
        if not name.startswith("_") and not inspect.ismodule(getattr(harness, name))
    }
    assert set(harness.__all__) - {"__version__"} == public
    assert len(harness.__all__) == len(set(harness.__all__))
    for name in harness.__all__:
        assert getattr(harness, name) is not None, name


def test_the_type_checking_block_repeats_the_exports() -> None:
    """``_EXPORTS`` is the one list; the block for type checkers must name the same."""
    tree = ast.parse((ROOT / "__init__.py").read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If))
    typed = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name}: re-export it as itself"
            typed[alias.name] = (node.module or "").split(".")[0]
    assert typed == harness._EXPORTS


@pytest.mark.parametrize("package", sorted(PACKAGES - {"harness"}))
def test_every_family_names_its_public_face(package: str) -> None:
    """Each subpackage's ``__init__`` has a docstring and an ``__all__`` that resolves."""
    module = importlib.import_module(package)
    if ".migrations" in package:
        return  # Alembic's folder: revisions, no public face
    assert inspect.getdoc(module), f"{package} needs a docstring saying what it holds"
    assert module.__all__, package
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ names {name!r}, which is missing"
