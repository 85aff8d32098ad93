"""Capabilities a case needs, and what an implementation declares it lacks.

A case states what it needs with ``@pytest.mark.requires(Capability.X, ...)``.
Run against an implementation without one of them, the case is reported
*unsupported*, with the capability as the reason: never a silent pass.
Expected failures are strict: a declared case that passes is an error. A
case an implementation fails in some interleavings only (a race it sometimes
wins) is declared in ``racy_failures`` instead, and graded *xfail* either way.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from .contract import Capability, Implementation

UNSUPPORTED = "unsupported"
#: How the reason of a racy expected failure starts.
RACY = "racy"


def check_known(needs: Iterable[str]) -> None:
    """Raise ValueError if ``needs`` names a capability :class:`Capability` does not."""
    unknown = [n for n in needs if n not in {str(c) for c in Capability}]
    if unknown:
        raise ValueError(
            f"Unknown capability {unknown[0]!r}; known: {sorted(map(str, Capability))}."
        )


def missing(impl: Implementation, needs: Iterable[str]) -> list[str]:
    """The capabilities in ``needs`` that ``impl`` does not declare, sorted."""
    needs = [str(n) for n in needs]  # read twice below: a generator would come back empty
    check_known(needs)
    declared = {str(c) for c in impl.capabilities}
    return sorted({n for n in needs if n not in declared})


def skip_unsupported(impl: Implementation, needs: Iterable[str]) -> None:
    """Skip the running case as *unsupported* if ``impl`` lacks any of ``needs``."""
    lacking = missing(impl, needs)
    if lacking:
        pytest.skip(f"{UNSUPPORTED}: {impl.name} lacks capability {', '.join(map(repr, lacking))}")


def expected_failure(
    impl: Implementation, case_id: str, nodeid: str = ""
) -> pytest.MarkDecorator | None:
    """An xfail marker if ``impl`` declares this case an expected failure.

    A key is a case ID (every test of the requirement) or ``ID:part``, for
    the tests of that requirement whose node ID contains ``part`` (a mode, a
    parameter, a test name): ``"FUNC-6:http"`` fails only over HTTP.
    """
    for key, reason in impl.expected_failures.items():
        if _matches(key, case_id, nodeid):
            return pytest.mark.xfail(strict=True, reason=f"{impl.name} declares {key}: {reason}")
    for key, reason in impl.racy_failures.items():
        if _matches(key, case_id, nodeid):
            why = f"{RACY}: {impl.name} declares {key} failing in some interleavings: {reason}"
            return pytest.mark.xfail(strict=False, reason=why)
    return None


def _matches(key: str, case_id: str, nodeid: str) -> bool:
    declared, _, part = key.partition(":")
    return declared == case_id and part in nodeid
