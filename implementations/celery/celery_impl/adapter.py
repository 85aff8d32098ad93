"""Celery with Redis seen through ``conformance.contract``.

The session starts one Celery worker process (``celery -A celery_impl.worker
worker``) on a queue of its own, shared by every runtime of the session, as
one deployment's web processes share their workers. A runtime is the web
side: it sends tasks, aborts them, and fans the result backend's published
states out to its clients (runtime.py), in process and over SSE (web.py).
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from conformance.contract import Capability, Implementation, Runtime, Timings

from .stack import Keys, make_app
from .web import KEEPALIVE, WRITE_DEADLINE

#: The glue's cancel grace under the suite, in seconds (worker.CANCEL_GRACE).
CANCEL_GRACE = 1.0
#: Threads of the worker's pool: tasks that wait (most of the suite's) run side by side.
CONCURRENCY = 64
#: How long the worker may take to start consuming, in seconds.
WORKER_START = 60.0


class CeleryImplementation(Implementation):
    """Celery 5.7 (Redis broker and result backend) with sse-starlette on Starlette."""

    name = "celery"
    version = "5.7.0"
    contract_version = "2.2"
    capabilities = frozenset({Capability.HTTP, Capability.CANCEL, Capability.TIMEOUTS})
    timings = Timings(keepalive=KEEPALIVE, write_deadline=WRITE_DEADLINE, cancel_grace=CANCEL_GRACE)

    def __init__(self) -> None:
        from .expected import EXPECTED_FAILURES, RACY_FAILURES

        self.expected_failures = EXPECTED_FAILURES
        self.racy_failures = RACY_FAILURES
        self.redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        self.unavailable = _unreachable(self.redis_url)
        self.prefix = f"conformance-celery-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.keys = Keys(self.prefix)
        self.app = make_app(self.redis_url, self.prefix)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-impl")
        self.worker: subprocess.Popen[bytes] | None = None
        self._log: str | None = None
        #: Whether Celery's pools in this process were opened (CeleryRuntime.warm_up).
        self.warm = False

    async def start(self) -> Runtime:
        if self.unavailable:
            import pytest

            pytest.skip(f"unsupported: celery needs Redis at {self.redis_url}: {self.unavailable}")
        from .runtime import CeleryRuntime

        if self.worker is None or self.worker.poll() is not None:
            import asyncio

            self.warm = False
            await asyncio.get_running_loop().run_in_executor(self.executor, self._start_worker)
        if not self.warm:
            warm = CeleryRuntime(
                self.app,
                self.keys,
                self.redis_url,
                self.executor,
                self.client_queue_size,
                CANCEL_GRACE,
            )
            await warm.open()
            await warm.warm_up()
            await warm.shutdown(0)
            self.warm = True
        runtime = CeleryRuntime(
            self.app, self.keys, self.redis_url, self.executor, self.client_queue_size, CANCEL_GRACE
        )
        await runtime.open()
        return runtime

    def _start_worker(self) -> None:
        """Start the session's worker; return once it consumes its queue."""
        import redis

        if self._log is None:
            handle, self._log = tempfile.mkstemp(prefix="celery-impl-worker-", suffix=".log")
            os.close(handle)
        with open(self._log, "ab") as log:
            self.worker = self._popen(log)
        # redis-py's socket timeout would end the wait before BLPOP's own does.
        with redis.Redis.from_url(self.redis_url, socket_timeout=WORKER_START + 5) as client:
            if client.blpop([self.keys.ready], timeout=WORKER_START) is None:
                self.worker.kill()
                self.worker.wait()
                raise RuntimeError(f"The Celery worker did not start: {self.worker_log()}")

    def _popen(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_impl.worker",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(CONCURRENCY),
                "--queues",
                self.prefix,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
            ],
            env={
                **os.environ,
                "CELERY_IMPL_REDIS_URL": self.redis_url,
                "CELERY_IMPL_PREFIX": self.prefix,
                "CELERY_IMPL_CANCEL_GRACE": str(CANCEL_GRACE),
                "PYTHONPATH": _import_path(),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )

    def worker_log(self) -> str:
        if self._log is None:
            return ""
        return Path(self._log).read_text(errors="replace")[-4000:]

    def environment(self) -> Mapping[str, str]:
        import celery
        import redis
        import sse_starlette
        import starlette

        return {
            "stack": f"Celery {celery.__version__} (Redis broker and backend, redis-py "
            f"{redis.__version__}), sse-starlette {sse_starlette.__version__}, "
            f"Starlette {starlette.__version__}",
            "database": "redis",
            "platform": f"{platform.system()}-{platform.machine()}",
        }

    def close(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            # Celery's warm shutdown waits for running tasks, and a task that swallows its
            # cancellation never ends (nor does a thread pool's cold shutdown): killed after
            # a short wait, before pytest-xdist's teardown gives up on this process.
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(3)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        if self._log is not None:
            Path(self._log).unlink(missing_ok=True)
        self.executor.shutdown(wait=False)
        if not self.unavailable:
            _forget_keys(self.redis_url, self.prefix)


def _die_with_parent() -> None:
    """In the worker, before exec: on Linux, SIGKILL when the session's process dies.

    A session that crashes (a pytest-xdist worker lost) never reaches close(), and its
    Celery worker would run on, consuming a queue nobody feeds.
    """
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _unreachable(url: str) -> str:
    """Why Redis at ``url`` does not answer, '' if it does; under ``CI=true``, an error."""
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"Redis at {url} does not answer ({exc}); CI needs it.") from exc
        return str(exc) or type(exc).__name__
    return ""


def _forget_keys(url: str, prefix: str) -> None:
    """Delete what the session left in Redis: Celery's keys and the glue's, under its prefix."""
    import redis

    with redis.Redis.from_url(url) as client:
        for match in (f"{prefix}:*", f"{prefix}_*"):
            keys = list(client.scan_iter(match=match, count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])


def _import_path() -> str:
    """PYTHONPATH for the worker: this package and the suite, as this process has them."""
    import conformance

    here = [str(Path(__file__).resolve().parents[1]), str(Path(conformance.__file__).parents[1])]
    inherited = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(dict.fromkeys([*here, *filter(None, inherited.split(os.pathsep))]))
