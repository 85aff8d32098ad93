"""Fixtures the suites share, beside the plugin's own.

The plugin gives ``impl``, ``runtime``, ``client``, ``server_url`` and
``spawn_server``. Each fixture here binds a harness tool to a case: what
the tool does, and why, is said in its module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from conformance.access import ANSWER_DEADLINE
from conformance.clients import HttpClient, InProcessClient, http_client, serve_asgi
from conformance.contract import Capability, Implementation, Runtime
from conformance.races import Race
from conformance.requirements import skip_unsupported
from conformance.tasks import another_runtime


@pytest.fixture
def race(race_seed: int) -> Race:
    """The seeded exploration of a race case (``races.seeds`` gives ``race_seed``)."""
    return Race(race_seed)


@pytest_asyncio.fixture
async def inprocess(runtime: Runtime) -> AsyncIterator[InProcessClient]:
    """An in-process client beside the parametrized one (a watcher, a control)."""
    client = InProcessClient(runtime)
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def second_runtime(impl: Implementation, runtime: Runtime) -> AsyncIterator[Runtime]:
    """A second runtime on the storage of ``runtime``."""
    async with another_runtime(impl) as second:
        yield second


@pytest_asyncio.fixture
async def http(server_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the implementation's default interface."""
    async with http_client(server_url, streaming=True) as client:
        yield client


@pytest_asyncio.fixture
async def sse(server_url: str) -> AsyncIterator[HttpClient]:
    """An SSE client of the implementation's default interface."""
    async with HttpClient(server_url) as client:
        yield client


@pytest_asyncio.fixture
async def guarded_url(impl: Implementation, runtime: Runtime) -> AsyncIterator[str]:
    """The guarded interface (``Runtime.guarded_asgi_app``), on a uvicorn of its own."""
    if not {Capability.AUTHORIZATION, Capability.RATE_LIMITS} & set(impl.capabilities):
        skip_unsupported(impl, [Capability.AUTHORIZATION])
    async with serve_asgi(runtime.guarded_asgi_app()) as url:
        yield url


@pytest_asyncio.fixture
async def guarded(guarded_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the guarded interface."""
    async with http_client(guarded_url, timeout=ANSWER_DEADLINE, streaming=True) as client:
        yield client


@pytest_asyncio.fixture
async def streams(guarded_url: str) -> AsyncIterator[HttpClient]:
    """An SSE client of the guarded interface, whose streams must be answered at once."""
    async with HttpClient(guarded_url, answer_within=ANSWER_DEADLINE) as client:
        yield client


@pytest_asyncio.fixture
async def streams_default(server_url: str) -> AsyncIterator[HttpClient]:
    """An SSE client of the default interface, whose streams must be answered at once."""
    async with HttpClient(server_url, answer_within=ANSWER_DEADLINE) as client:
        yield client
