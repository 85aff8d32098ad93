"""The HTML matrix of ``python -m conformance report --html``: implementations by suites.

Each cell counts one implementation's results in one suite over every
environment and mode, by grade, with expected failures (declared xfails,
planted faults' intended failures) counted apart; each row has its totals;
the results other than pass are listed below; the reader filters both by
implementation, suite and grade. The page is read here with the standard
library's HTML parser; tests/test_report_matrix_browser.py runs its filters
in Chromium.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from conformance import report
from tests.test_report import record, write_jsonl

pytestmark = pytest.mark.timeout(60)

ENVIRONMENTS = [
    {"database": "sqlite", "python": "3.11.7", "stack": "Django 5.2.19"},
    {"database": "postgresql", "python": "3.11.7", "stack": "Django 5.2.19"},
    {"database": "sqlite", "python": "3.13.0", "stack": "Django 6.0.1"},
]


#: Elements whose text runs on with the text around them.
INLINE = frozenset({"a", "code", "em", "span"})


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    #: Elements and text, in the page's order.
    children: list[Element | str] = field(default_factory=list)

    def all(self, tag: str, **attrs: str) -> list[Element]:
        """Every element below this one with the tag and the attributes given."""
        found = []
        for child in self.children:
            if isinstance(child, str):
                continue
            if child.tag == tag and all(child.attrs.get(k) == v for k, v in attrs.items()):
                found.append(child)
            found += child.all(tag, **attrs)
        return found

    def one(self, tag: str, **attrs: str) -> Element:
        (found,) = self.all(tag, **attrs)
        return found

    def words(self) -> str:
        """Its text, as a reader sees it: whitespace made single spaces."""
        parts = (
            c if isinstance(c, str) else c.words() if c.tag in INLINE else f" {c.words()} "
            for c in self.children
        )
        return " ".join("".join(parts).split())


class _Tree(HTMLParser):
    VOID = frozenset({"meta", "br", "input", "link", "img", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.root = Element("root", {})
        self.open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.open[-1].children.append(element)
        if tag not in self.VOID:
            self.open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self.open[-1].tag != tag:
            self.open.pop()
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.open[-1].children.append(data)


def parse(page: str) -> Element:
    tree = _Tree()
    tree.feed(page)
    return tree.root


def matrix_of(tmp_path: Path, *records: dict[str, Any]) -> Element:
    path = write_jsonl(tmp_path / "results-a.jsonl", *records)
    return parse(report.render_html(report.load_results([path])))


def counts(cell: Element) -> dict[str, int]:
    """The grade counts a cell shows: {grade: count}."""
    return {
        badge.attrs["data-grade"]: int(badge.attrs["data-count"])
        for badge in cell.all("span")
        if "count" in badge.attrs.get("class", "").split()
    }


def rows(page: Element) -> dict[str, Element]:
    body = page.one("table", id="matrix").one("tbody")
    return {row.attrs["data-implementation"]: row for row in body.all("tr")}


def cell(row: Element, suite: str) -> Element:
    return row.one("td", **{"data-suite": suite})


def test_matrix_when_many_environments_and_modes_then_one_row_per_implementation_and_suite_columns(
    tmp_path: Path,
) -> None:
    page = matrix_of(
        tmp_path,
        *(
            record(case=case, suite=suite, implementation=impl, mode=mode, **env)
            for impl in ("reference", "independent")
            for env in ENVIRONMENTS
            for mode in ("inprocess", "http")
            for case, suite in (("FUNC-1", "functional"), ("HTTP-1", "http"))
        ),
    )
    head = page.one("table", id="matrix").one("thead")
    assert [th.attrs.get("data-suite") for th in head.all("th")] == [
        None,
        "functional",
        "http",
        None,
    ]
    assert head.all("th")[-1].words() == "all suites"
    assert list(rows(page)) == ["independent", "reference"]
    assert counts(cell(rows(page)["reference"], "functional")) == {"pass": 6}


def test_matrix_when_grades_mixed_then_each_cell_counts_them_and_the_row_totals_them(
    tmp_path: Path,
) -> None:
    page = matrix_of(
        tmp_path,
        record(case="FUNC-1", grade="pass"),
        record(case="FUNC-2", grade="pass", database="postgresql"),
        record(case="FUNC-3", grade="fail", reason="expected 'done'"),
        record(case="FUNC-4", grade="error", reason="timed out"),
        record(case="FUNC-5", grade="unsupported", reason="capability: cancel"),
        record(case="FUNC-6", grade="non-strict", level="SHOULD", reason="slow"),
        record(case="HTTP-1", suite="http", grade="pass"),
        record(case="HTTP-2", suite="http", grade="fail", reason="404"),
    )
    reference = rows(page)["reference"]
    assert counts(cell(reference, "functional")) == {
        "pass": 2,
        "fail": 1,
        "error": 1,
        "non-strict": 1,
        "unsupported": 1,
    }
    assert counts(cell(reference, "http")) == {"pass": 1, "fail": 1}
    assert counts(reference.one("td", **{"class": "total"})) == {
        "pass": 3,
        "fail": 2,
        "error": 1,
        "non-strict": 1,
        "unsupported": 1,
    }
    assert "1 error" in cell(reference, "functional").words()


def test_matrix_when_xfail_declared_then_counted_as_expected_and_marked(tmp_path: Path) -> None:
    page = matrix_of(
        tmp_path,
        record(case="EDGE-1", suite="edge_cases", implementation="baseline", grade="xfail"),
        record(case="EDGE-2", suite="edge_cases", implementation="baseline", grade="pass"),
    )
    badges = cell(rows(page)["baseline"], "edge_cases")
    assert counts(badges) == {"pass": 1, "expected": 1}
    assert "1 expected" in badges.words()
    (listed,) = page.one("table", id="details").one("tbody").all("tr")
    assert listed.attrs["data-grade"] == "expected"
    assert "xfail, expected: declared by baseline" in listed.words()


def test_matrix_when_planted_fault_fails_or_errors_then_expected_and_its_passes_stay_pass(
    tmp_path: Path,
) -> None:
    page = matrix_of(
        tmp_path,
        record(implementation="misbehaving-garbles", case="FUNC-1", grade="fail", reason="x"),
        record(implementation="misbehaving-garbles", case="FUNC-3", grade="pass"),
        record(implementation="misbehaving-crashes", case="FUNC-1", grade="error", reason="y"),
        record(implementation="reference", case="FUNC-1", grade="fail", reason="z"),
    )
    matrix = rows(page)
    assert counts(cell(matrix["misbehaving-garbles"], "functional")) == {"pass": 1, "expected": 1}
    assert counts(cell(matrix["misbehaving-crashes"], "functional")) == {"expected": 1}
    assert counts(cell(matrix["reference"], "functional")) == {"fail": 1}
    assert list(matrix) == ["reference", "misbehaving-crashes", "misbehaving-garbles"], (
        "the planted faults after the implementations"
    )
    listed = {
        row.attrs["data-implementation"]: row
        for row in page.one("table", id="details").one("tbody").all("tr")
    }
    assert "fail, expected: planted fault" in listed["misbehaving-garbles"].words()
    assert listed["reference"].attrs["data-grade"] == "fail"
    assert "expected" not in listed["reference"].words()


def test_matrix_when_results_other_than_pass_then_listed_with_environments_and_reasons(
    tmp_path: Path,
) -> None:
    page = matrix_of(
        tmp_path,
        *(
            record(case="FUNC-3", grade="fail", reason="expected 'done'", **env)
            for env in ENVIRONMENTS
        ),
        record(case="FUNC-1", grade="pass"),
    )
    (listed,) = page.one("table", id="details").one("tbody").all("tr")
    assert {k: listed.attrs[k] for k in ("data-implementation", "data-suite", "data-grade")} == {
        "data-implementation": "reference",
        "data-suite": "functional",
        "data-grade": "fail",
    }
    words = listed.words()
    assert "FUNC-3" in words and "3 environments" in words
    assert "test_x_when_y_then_z: expected 'done'" in words


def test_matrix_when_rendered_then_filters_offer_every_implementation_suite_and_grade(
    tmp_path: Path,
) -> None:
    page = matrix_of(
        tmp_path,
        record(case="FUNC-1"),
        record(case="HTTP-1", suite="http", implementation="independent"),
    )

    def options(name: str) -> list[str]:
        return [o.attrs["value"] for o in page.one("select", id=f"filter-{name}").all("option")]

    assert options("implementation") == ["", "independent", "reference"]
    assert options("suite") == ["", "functional", "http"]
    assert options("grade") == [
        "",
        "pass",
        "fail",
        "error",
        "non-strict",
        "unsupported",
        "expected",
    ]
    assert page.all("script"), "the filters run in the page itself"


def test_matrix_when_reason_contains_script_then_escaped(tmp_path: Path) -> None:
    reason = '<script>alert("x")</script>'
    path = write_jsonl(tmp_path / "results-a.jsonl", record(grade="fail", reason=reason))
    page = report.render_html(report.load_results([path]))
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_matrix_when_implementation_not_graded_in_a_suite_then_its_cell_says_so(
    tmp_path: Path,
) -> None:
    page = matrix_of(
        tmp_path,
        record(case="FUNC-1"),
        record(case="HTTP-1", suite="http", implementation="independent"),
    )
    empty = cell(rows(page)["reference"], "http")
    assert empty.attrs["class"] == "empty" and empty.attrs["data-grades"] == ""
    assert counts(empty) == {}


def test_matrix_when_case_ids_numbered_then_results_listed_in_natural_order(
    tmp_path: Path,
) -> None:
    page = matrix_of(
        tmp_path,
        *(record(case=case, grade="fail", reason="r") for case in ("FUNC-10", "FUNC-2", "FUNC-1")),
    )
    listed = page.one("table", id="details").one("tbody").all("tr")
    assert [row.all("td")[2].words() for row in listed] == ["FUNC-1", "FUNC-2", "FUNC-10"]
