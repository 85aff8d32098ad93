"""A streaming task coordinator written from the conformance suite's SPEC.md and contract.

``IndependentImplementation`` is the factory the suite loads (entry point
``independent`` in ``conformance.implementations``). The modules, one concern
each: :mod:`.store` (SQLite), :mod:`.eventlog` (the event log writer),
:mod:`.fanout` (topics and bounded client queues), :mod:`.runs` (one run and
how it ends), :mod:`.leases` (lost runs), :mod:`.coordinator` (the Runtime),
:mod:`.http` (the ASGI app), :mod:`.server` (the server process) and
:mod:`.adapter` (the contract's Implementation).
"""

from .adapter import IndependentImplementation, __version__
from .coordinator import Coordinator

__all__ = ["Coordinator", "IndependentImplementation", "__version__"]
