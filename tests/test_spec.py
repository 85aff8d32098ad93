"""Tests of SPEC.md and its parser (conformance/spec.py): the IDs every case cites."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conformance import spec

pytestmark = pytest.mark.timeout(30)

SUITES = Path(spec.__file__).with_name("suites")
MARKER = re.compile(r"""pytest\.mark\.case\(\s*["']([^"']+)["']""")


def cited_ids() -> dict[str, list[str]]:
    """Case IDs named by ``pytest.mark.case`` in the suites, with where each is cited."""
    cited: dict[str, list[str]] = {}
    for path in sorted(SUITES.glob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for case_id in MARKER.findall(line):
                cited.setdefault(case_id, []).append(f"{path.name}:{number}")
    return cited


def write_spec(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "SPEC.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_spec_when_parsed_then_every_requirement_has_id_level_and_text() -> None:
    requirements = spec.requirements()
    assert len(requirements) >= 20
    for case_id, requirement in requirements.items():
        assert requirement.id == case_id
        assert re.fullmatch(r"[A-Z]+-[1-9]\d*", case_id)
        assert requirement.level in (spec.Level.MUST, spec.Level.SHOULD)
        assert requirement.text.strip()
        assert requirement.suite == case_id.partition("-")[0]
    assert spec.requirement("FUNC-1").level is spec.Level.MUST
    assert spec.requirement("FUNC-14").level is spec.Level.SHOULD
    assert spec.requirements() is requirements  # parsed once, cached


def test_spec_when_ids_counted_in_text_then_each_is_stated_once() -> None:
    text = spec.SPEC_PATH.read_text(encoding="utf-8")
    stated = re.findall(r"^- \*\*([A-Z]+-\d+)\*\*", text, flags=re.MULTILINE)
    assert stated
    assert len(stated) == len(set(stated))
    assert list(spec.requirements()) == stated


def test_suites_when_markers_grepped_then_every_cited_id_is_in_spec() -> None:
    cited = cited_ids()
    assert "FUNC-1" in cited  # the grep itself works
    unknown = {
        case_id: where for case_id, where in cited.items() if case_id not in spec.requirements()
    }
    assert unknown == {}


def test_requirement_when_id_unknown_then_spec_error_names_it() -> None:
    with pytest.raises(spec.SpecError, match=r"'FUNC-999' is not stated in SPEC\.md"):
        spec.requirement("FUNC-999")


@pytest.mark.parametrize(
    ("case_id", "prefix", "selected"),
    [
        ("FUNC-1", "FUNC-1", True),
        ("FUNC-1", "FUNC", True),
        ("FUNC-1", "FUNC-", True),
        ("FUNC-10", "FUNC-1", False),
        ("FUNC-11", "FUNC-1", False),
        ("FUNC-10", "FUNC-10", True),
        ("FUNC-1", "FUN", False),
        ("HTTP-1", "FUNC", False),
        ("FUNC-1", "FUNC-10", False),
        ("FUNC-1", "", False),
    ],
)
def test_matches_prefix_when_prefix_given_then_selects_whole_id_parts_only(
    case_id: str, prefix: str, selected: bool
) -> None:
    assert spec.matches_prefix(case_id, prefix) is selected


def test_parse_when_file_is_well_formed_then_returns_requirements_in_order(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        "# Title",
        "",
        "- **ABC-2** SHOULD: second stated first.",
        "- not a requirement line",
        "- **ABC-1** MUST: the first.",
    )
    parsed = spec.parse(path)
    assert list(parsed) == ["ABC-2", "ABC-1"]
    assert parsed["ABC-1"] == spec.Requirement("ABC-1", spec.Level.MUST, "the first.")
    assert parsed["ABC-2"].level is spec.Level.SHOULD


@pytest.mark.parametrize(
    "bad_line",
    [
        "- **ABC-2** MAY: an unknown level.",
        "- **ABC-2** MUST the colon is missing.",
        "- **abc-2** MUST: a lower-case ID.",
        "- **ABC-2** MUST:",
    ],
)
def test_parse_when_requirement_line_malformed_then_spec_error_with_line_number(
    tmp_path: Path, bad_line: str
) -> None:
    path = write_spec(tmp_path, "# Title", "- **ABC-1** MUST: fine.", "", bad_line)
    with pytest.raises(spec.SpecError, match=r"^SPEC\.md:4: cannot parse") as raised:
        spec.parse(path)
    assert bad_line in str(raised.value)


def test_parse_when_id_stated_twice_then_spec_error_with_line_number(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "- **ABC-1** MUST: one.", "- **ABC-1** SHOULD: again.")
    with pytest.raises(spec.SpecError, match=r"^SPEC\.md:2: ABC-1 is stated twice"):
        spec.parse(path)
