"""Several worker processes on one port: ``runserver_stream --workers N``.

The supervisor binds the listening socket once and starts N workers, each a
full streaming server (``runserver_stream --fd``) accepting on that socket,
so the kernel spreads connections between them. The workers share tasks
through the database and events through Redis (``STREAMING_REDIS_URL``):
whichever worker a client reaches, it sees every run, and a cancel reaching
any worker stops the run wherever it is.

Signals: SIGTERM or SIGINT is passed on to every worker, which drains (its
runs get their grace period, its clients a farewell) and exits; a second
signal is passed on too, and the workers exit at once. A worker that dies
while the supervisor is not stopping is started again, since a deployment
that silently loses capacity is worse than one that says so in its log.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)

#: Seconds between polls of the workers' exit status.
POLL = 0.2
#: A worker that dies within this many seconds of its start is not restarted:
#: it would only die again (a bad setting, a port, a database away).
MIN_UPTIME = 5.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that child processes can inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Start ``count`` workers on one socket, pass signals on, restart the ones that die."""

    def __init__(self, count: int, sock: socket.socket, worker_args: list[str]) -> None:
        self.count = count
        self.sock = sock
        self.worker_args = worker_args
        self.workers: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self.signals = 0

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "django",
            "runserver_stream",
            "--fd",
            str(self.sock.fileno()),
            *self.worker_args,
        ]

    def spawn(self, slot: int) -> None:
        env = dict(os.environ)
        project = str(Path(__file__).resolve().parent.parent)  # where ``streaming`` is importable
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [project, env.get("PYTHONPATH")]))
        env["STREAMING_WORKER"] = str(slot)
        process = subprocess.Popen(self.command(), env=env, pass_fds=[self.sock.fileno()])
        self.workers[slot] = (process, time.monotonic())
        logger.info("worker %d started (pid %d)", slot, process.pid)

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals += 1
        for process, _ in self.workers.values():
            if process.poll() is None:
                process.send_signal(sig)

    def run(self) -> int:
        """Serve until a signal, then wait for the workers; 0 if all exited cleanly."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        for slot in range(self.count):
            self.spawn(slot)
        host, port = self.sock.getsockname()[:2]
        # Worded as uvicorn words it when it binds for its own workers.
        logger.info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, port)
        status = 0
        # The supervisor keeps the socket open, never accepting on it, so a
        # worker started again later can inherit it too.
        while self.workers:
            time.sleep(POLL)  # a supervisor's poll of its children
            for slot, (process, started) in list(self.workers.items()):
                code = process.poll()
                if code is None:
                    continue
                del self.workers[slot]
                if self.signals:
                    # Killed by the signal passed on: it was still starting, so
                    # it had nothing to drain; a clean stop all the same.
                    if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                        status = status or _exit_status(code)
                elif time.monotonic() - started < MIN_UPTIME:
                    logger.error("worker %d exited with %d at start; not restarting it", slot, code)
                    status = status or _exit_status(code) or 1
                else:
                    logger.error("worker %d exited with %d; starting it again", slot, code)
                    self.spawn(slot)
        self.sock.close()
        return status


def _exit_status(returncode: int) -> int:
    """A child's return code as an exit status: 128 + N for death by signal N, as shells say."""
    return returncode if returncode >= 0 else 128 - returncode
