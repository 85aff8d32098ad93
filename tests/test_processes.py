"""The suite's child processes: signal dispositions, and ports another process took.

Whatever this process ignores (pytest under ``nohup``, a CI runner that
ignores SIGINT), a server or stream client the suite starts must still take
the Ctrl+C and SIGTERM that cases send it.
"""

from __future__ import annotations

import asyncio
import http.server
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import cast

import pytest

from conformance.contract import Implementation, ServerSpec
from conformance.processes import ServerProcess, listens_on, with_default_signals

pytestmark = pytest.mark.timeout(30)

REPORT = (
    "import signal; "
    "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
    "signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)"
)


@pytest.fixture
def parent_ignores_signals() -> Iterator[None]:
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.mark.usefixtures("parent_ignores_signals")
def test_child_when_parent_ignores_signals_then_started_with_their_defaults() -> None:
    inherited = subprocess.run(
        [sys.executable, "-c", REPORT], capture_output=True, text=True, check=True
    )
    reset = subprocess.run(
        with_default_signals([sys.executable, "-c", REPORT]),
        capture_output=True,
        text=True,
        check=True,
    )
    assert inherited.stdout.split() == ["False", "False"]  # what the fix is for
    assert reset.stdout.split() == ["True", "True"]


def test_child_when_started_with_default_signals_then_it_is_the_same_process() -> None:
    child = subprocess.Popen(
        with_default_signals([sys.executable, "-c", "import os; print(os.getpid())"]),
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = child.communicate(timeout=20)
    assert int(out) == child.pid  # signals sent to the pid reach the program itself


#: A server that answers 200 on every path, on the port in argv[1]; exits 1 if it cannot bind.
HEALTHY_SERVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
    def log_message(self, *args): pass
try:
    server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
except OSError as exc:
    sys.exit(f"cannot bind: {exc}")
server.serve_forever()
"""


class StdlibServer:
    """An implementation whose server is HEALTHY_SERVER: only ServerProcess's needs."""

    name = "stdlib-server"

    def server_command(self, host: str, port: int, *, grace: float) -> ServerSpec:
        return ServerSpec(argv=[sys.executable, "-c", HEALTHY_SERVER, str(port)])


async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
    await writer.drain()
    writer.close()


@pytest.mark.asyncio
async def test_server_when_another_process_took_its_port_then_started_on_another() -> None:
    server = ServerProcess(cast(Implementation, StdlibServer()), grace=1.0)
    taken = server.port
    # Someone else answers /health on that port first, as another test run's server may.
    squatter = await asyncio.start_server(_answer_ok, "127.0.0.1", taken)
    try:
        await server.start()
        assert server.port != taken
        assert listens_on(server.pid, server.port)
        assert not listens_on(server.pid, taken)
        assert (await server.request("GET", "/health")).text == "OK"
    finally:
        await server.stop()
        squatter.close()
        await squatter.wait_closed()


class _Answering(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"squatter")

    def log_message(self, *args: object) -> None:
        pass


def test_server_when_started_blocking_on_a_taken_port_then_started_on_another() -> None:
    server = ServerProcess(cast(Implementation, StdlibServer()), grace=1.0)
    taken = server.port
    # The blocking twin (reference tests, dev.py) must tell the squatter's answer from its own.
    squatter = http.server.HTTPServer(("127.0.0.1", taken), _Answering)
    thread = threading.Thread(target=squatter.serve_forever, daemon=True)
    thread.start()
    try:
        server.start_blocking()
        assert server.port != taken
        assert listens_on(server.pid, server.port)
        assert not listens_on(server.pid, taken)
    finally:
        server.stop_blocking()
        squatter.shutdown()
        squatter.server_close()
        thread.join(timeout=5)
