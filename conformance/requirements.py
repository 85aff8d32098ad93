"""Capabilities a case needs, and what an implementation declares it lacks.

A case states what it needs with ``@pytest.mark.requires(Capability.X, ...)``.
Run against an implementation without one of them, the case is reported
*unsupported*, with the capability as the reason: never a silent pass.
Expected failures are strict: a declared case that passes is an error.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from .contract import Capability, Implementation

UNSUPPORTED = "unsupported"


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
    """A strict xfail marker if ``impl`` declares this case an expected failure.

    A key is a case ID (every test of the requirement) or ``ID:part``, for
    the tests of that requirement whose node ID contains ``part`` (a mode, a
    parameter, a test name): ``"FUNC-6:http"`` fails only over HTTP.
    """
    for key, reason in impl.expected_failures.items():
        declared, _, part = key.partition(":")
        if declared == case_id and part in nodeid:
            return pytest.mark.xfail(strict=True, reason=f"{impl.name} declares {key}: {reason}")
    return None
