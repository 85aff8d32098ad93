"""The reference's modules import one another in layers, never in a circle.

Read from the source, every import counted (at module level, inside
functions, under ``TYPE_CHECKING``): a circle is a circle to the reader even
where Python would tolerate it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

PACKAGE = Path(__file__).resolve().parents[1] / "streaming"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """The ``streaming`` modules ``path`` imports."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("streaming"):
                continue
            for alias in node.names:
                # ``from . import db`` imports the module streaming.db.
                candidate = f"{target}.{alias.name}"
                yield candidate if _exists(candidate) else target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("streaming"):
                    yield alias.name


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (
        PACKAGE / relative / "__init__.py"
    ).is_file()


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts or "management" in path.parts:
            continue
        module = _module(path)
        graph[module] = {target for target in _imports(path) if target != module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, or None."""
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> list[str] | None:
        if module in trail:
            return [*trail[trail.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph.get(module, ())):
            # A package's __init__ re-exporting its modules is not a circle.
            if module.startswith(f"{target}.") or target.startswith(f"{module}."):
                continue
            found = visit(target, [*trail, module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module, [])
        if found:
            return found
    return None


def test_modules_when_their_imports_are_followed_then_no_circle() -> None:
    graph = _graph()
    assert "streaming.coordinator" in graph and graph["streaming.leases"], sorted(graph)
    circle = _cycle(graph)
    assert circle is None, " -> ".join(circle or [])


def test_core_when_read_then_it_imports_nothing_that_runs_it() -> None:
    # The task model and what a run and a keeper are made of sit below the
    # coordinator; the HTTP side and operations sit above it.
    graph = _graph()
    below = [
        "streaming.models",
        "streaming.runs",
        "streaming.leases",
        "streaming.endings",
        "streaming.eventlog",
        "streaming.hub",
        "streaming.bus",
        "streaming.kinds",
    ]
    for module in below:
        upward = graph[module] & {"streaming.coordinator", "streaming.server", "streaming.adapter"}
        assert not upward, f"{module} imports {sorted(upward)}"
    # The task model knows storage and its states, nothing that runs it.
    assert graph["streaming.models"] <= {"streaming.db", "streaming.states"}


def test_coordinator_when_used_elsewhere_then_only_through_public_names() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "coordinator.py" or "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name | ast.Attribute)
                and ast.unparse(node.value).split(".")[-1] == "coordinator"
                and node.attr.startswith("_")
            ):
                raise AssertionError(f"{path.name}:{node.lineno} uses {ast.unparse(node)}")


def test_http_layer_when_read_then_no_function_is_over_sixty_lines() -> None:
    # The request pipeline is a list of small checks and handlers, each read
    # on one screen; ``server.py`` runs it on uvicorn.
    long = []
    for path in [*sorted((PACKAGE / "web").glob("*.py")), PACKAGE / "server.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long.append(f"{path.name}:{node.name} ({length} lines)")
    assert not long, long
