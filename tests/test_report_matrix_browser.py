"""The HTML matrix in a real headless browser: Chromium driven by Playwright, 1280 by 800.

The page is the one ``python -m conformance report --html`` makes from the
repository's own results (``results/*.jsonl``), with one more result whose
test name and reason are long unbroken words. The page must fit the window's
width, and each filter must hide what it filters out. Every wait is
Playwright's own, for an element in a state, under a deadline.

Chromium comes from the system (``apt-get install chromium``) and Playwright
from the reference's ``test`` extra; neither downloads anything. Without them
these tests skip, saying which is missing; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance import report
from tests.test_report import record, write_jsonl

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]
#: Milliseconds Playwright waits for what a test expects to see.
DEADLINE_MS = 20_000
WIDTH, HEIGHT = 1280, 800


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI runs the browser tests (.ci/run installs chromium).")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the system, under Playwright."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _unavailable("chromium is not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e reference[test])")
    with sync_playwright() as playwright:
        # As root (CI containers) Chromium refuses to start sandboxed.
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The matrix of the repository's results, and of one result with long unbroken words."""
    if not list((ROOT / "results").glob("*.jsonl")):
        pytest.skip("no results/*.jsonl to make the matrix of (a source checkout has them)")
    where = tmp_path_factory.mktemp("matrix")
    for kept in (ROOT / "results").glob("*.jsonl"):
        shutil.copyfile(kept, where / kept.name)
    long_word = "test_" + "when_a_name_has_no_spaces_" * 12 + "then_it_still_wraps"
    write_jsonl(
        where / "long.jsonl",
        record(case="FUNC-1", test=long_word, grade="fail", reason="x" * 400),
    )
    page = where / "matrix.html"
    argv = ["--input-glob", str(where / "*.jsonl"), "--output", str(where / "TEST_RESULTS.md")]
    assert report.main([*argv, "--html", str(page)]) == 0
    return page


@pytest.fixture
def page(browser: Any, matrix: Path) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        response = opened.goto(matrix.as_uri())
        assert response is not None and response.ok
        yield opened
    finally:
        context.close()
    assert not errors, f"the page raised: {errors}"


def test_matrix_when_shown_at_1280_by_800_then_nothing_overflows_sideways(page: Any) -> None:
    width = page.evaluate(
        "() => ({page: document.documentElement.scrollWidth,"
        " window: document.documentElement.clientWidth})"
    )
    assert width["window"] <= WIDTH
    assert width["page"] <= width["window"], width
    for table in ("matrix", "details"):
        right = page.evaluate(
            f"() => document.getElementById('{table}').getBoundingClientRect().right"
        )
        assert right <= width["window"], (table, right, width)


def test_matrix_when_implementation_chosen_then_other_rows_hidden(page: Any) -> None:
    from playwright.sync_api import expect

    rows = page.locator("#matrix tbody tr")
    expect(rows.first).to_be_visible(timeout=DEADLINE_MS)
    assert rows.count() > 2
    page.select_option("#filter-implementation", "independent")
    visible = page.locator("#matrix tbody tr:visible")
    expect(visible).to_have_count(1, timeout=DEADLINE_MS)
    expect(visible).to_have_attribute("data-implementation", "independent")
    listed = page.locator("#details tbody tr:visible")
    for index in range(listed.count()):
        expect(listed.nth(index)).to_have_attribute("data-implementation", "independent")
    page.select_option("#filter-implementation", "")
    expect(page.locator("#matrix tbody tr:visible")).to_have_count(rows.count())


def test_matrix_when_suite_chosen_then_other_columns_hidden(page: Any) -> None:
    from playwright.sync_api import expect

    page.select_option("#filter-suite", "http")
    headers = page.locator("#matrix thead th[data-suite]:visible")
    expect(headers).to_have_count(1, timeout=DEADLINE_MS)
    expect(headers).to_have_attribute("data-suite", "http")
    expect(page.locator("#matrix tbody td[data-suite]:visible")).to_have_count(
        page.locator("#matrix tbody tr").count()
    )


def test_matrix_when_grade_chosen_then_rows_without_it_hidden_and_only_its_counts_shown(
    page: Any,
) -> None:
    from playwright.sync_api import expect

    page.select_option("#filter-grade", "expected")
    rows = page.locator("#matrix tbody tr:visible")
    expect(rows.first).to_be_visible(timeout=DEADLINE_MS)
    shown = {rows.nth(i).get_attribute("data-implementation") for i in range(rows.count())}
    # The reference conforms: no result of it is an expected failure.
    assert "reference" not in shown, "it has no expected failure"
    assert {"baseline", "misbehaving-crashes"} <= shown
    expect(page.locator("#matrix .count:visible:not([data-grade=expected])")).to_have_count(0)
    listed = page.locator("#details tbody tr:visible")
    expect(listed.first).to_be_visible()
    expect(page.locator("#details tbody tr:visible:not([data-grade=expected])")).to_have_count(0)
