"""``python -m conformance cases``: every case, its level and what it needs, without running one.

The suites are read, not imported: each test's ``@pytest.mark.case`` and
``@pytest.mark.requires`` markers, and its module's ``pytestmark``, from the
source, so listing needs no implementation, event loop or database.

    python -m conformance cases                       every case, one line per test
    python -m conformance cases --capability cancel   the cases that need one capability
    python -m conformance cases --table               which capability unlocks which cases
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import spec
from .contract import Capability

SUITES = Path(__file__).parent / "suites"
#: Fixtures that need a capability of their own (the plugin skips without it).
FIXTURE_NEEDS = {"server_url": "http", "spawn_server": "process"}


@dataclass(frozen=True)
class Case:
    """One test of one requirement."""

    id: str
    level: str
    suite: str
    test: str
    #: Capabilities it needs, its module's and its own.
    needs: frozenset[str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--capability",
        choices=sorted(str(c) for c in Capability),
        help="only the cases that need this capability",
    )
    parser.add_argument(
        "--table", action="store_true", help="a Markdown table: capability -> case IDs"
    )


def run(args: argparse.Namespace) -> int:
    cases = list(collect())
    if args.table:
        print(table(cases))
        return 0
    if args.capability:
        cases = [case for case in cases if args.capability in case.needs]
    width = max(len(case.id) for case in cases) if cases else 0
    for case in cases:
        needs = ", ".join(sorted(case.needs)) or "-"
        print(f"{case.id:<{width}}  {case.level:<6}  {needs:<40}  {case.suite}::{case.test}")
    print(f"{len({c.id for c in cases})} requirements, {len(cases)} tests")
    return 0


def collect(directory: Path = SUITES) -> Iterator[Case]:
    """Every case of the suites in ``directory``, in file order."""
    for path in sorted(directory.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_needs = _module_needs(tree)
        aliases = _aliases(tree)
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            case_id, needs = None, set(module_needs)
            needs.update(FIXTURE_NEEDS[a.arg] for a in node.args.args if a.arg in FIXTURE_NEEDS)
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Name):
                    mark = aliases.get(decorator.id)
                else:
                    mark = _mark(decorator)
                if mark is None:
                    continue
                name, arguments = mark
                if name == "case":
                    case_id = _constant(arguments[0])
                elif name == "requires":
                    needs.update(_capabilities(arguments))
            if case_id is not None:
                level = str(spec.requirement(case_id).level)
                yield Case(case_id, level, path.name, node.name, frozenset(needs))


def table(cases: Iterable[Case]) -> str:
    """Markdown: each capability, and the requirements whose cases need it."""
    cases = list(cases)
    lines = ["| capability | unlocks |", "|---|---|"]
    for capability in sorted(str(c) for c in Capability):
        ids = sorted({c.id for c in cases if capability in c.needs}, key=_order)
        lines.append(f"| `{capability}` | {_ranges(ids) or '-'} |")
    free = sorted({c.id for c in cases if not c.needs}, key=_order)
    lines.append(f"| (none) | {_ranges(free)} |")
    return "\n".join(lines)


def _order(case_id: str) -> tuple[str, int]:
    prefix, _, number = case_id.partition("-")
    return prefix, int(number)


def _ranges(ids: list[str]) -> str:
    """``FUNC-1..3, FUNC-5`` for FUNC-1, FUNC-2, FUNC-3, FUNC-5."""
    spans: list[tuple[str, int, int]] = []
    for case_id in ids:
        prefix, number = _order(case_id)
        if spans and spans[-1][0] == prefix and spans[-1][2] == number - 1:
            spans[-1] = (prefix, spans[-1][1], number)
        else:
            spans.append((prefix, number, number))
    return ", ".join(
        f"{prefix}-{first}" if first == last else f"{prefix}-{first}..{last}"
        for prefix, first, last in spans
    )


def _module_needs(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            marks = node.value.elts if isinstance(node.value, ast.List) else [node.value]
            return {
                capability
                for mark in map(_mark, marks)
                if mark is not None and mark[0] == "requires"
                for capability in _capabilities(mark[1])
            }
    return set()


def _aliases(tree: ast.Module) -> dict[str, tuple[str, list[ast.expr]]]:
    """Marks bound to a module-level name (``process_case = pytest.mark.requires(...)``)."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, mark = node.targets[0], _mark(node.value)
            if isinstance(target, ast.Name) and mark is not None:
                found[target.id] = mark
    return found


def _mark(node: ast.expr) -> tuple[str, list[ast.expr]] | None:
    """(name, arguments) of ``pytest.mark.<name>(...)``."""
    if isinstance(node, ast.Call):
        match = re.fullmatch(r"pytest\.mark\.(\w+)", ast.unparse(node.func))
        if match:
            return match[1], list(node.args)
    return None


def _capabilities(arguments: list[ast.expr]) -> set[str]:
    found = set()
    for argument in arguments:
        text = ast.unparse(argument)
        match = re.fullmatch(r"Capability\.(\w+)", text)
        if match:
            found.add(str(Capability[match[1]]))
        elif isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            found.add(argument.value)
    return found


def _constant(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    raise ValueError(f"A case ID must be a string literal, got {ast.unparse(node)}.")


__all__ = ["Case", "add_arguments", "collect", "run", "table"]
