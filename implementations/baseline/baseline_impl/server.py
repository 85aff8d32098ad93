"""The seed's streaming server: asgineer on uvicorn, with uvicorn's own signal handling.

``python -m baseline_impl.server --host H --port P --db FILE``. It streams a
task's events to a client until a terminal one, starts tasks on
``POST /tasks/<model>/<id>/start`` (the way ``create_task`` asked the server
to run one), and answers ``/health``. As in the seed, it notices a client
that leaves only when it next writes to it, parses ids with ``int()``, and
has no shutdown handler: on SIGTERM uvicorn waits for open streams to end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from pathlib import Path
from typing import Any

import asgineer
import uvicorn

from .system import TERMINAL, Store, StreamTask, TaskCoordinator

_STREAM = re.compile(r"/stream/(?P<model>[^/]+)/(?P<pk>[^/]+)/?")
_START = re.compile(r"/tasks/(?P<model>[^/]+)/(?P<pk>[^/]+)/start/?")


def make_app(coordinator: TaskCoordinator) -> Any:
    async def handler(request: asgineer.HttpRequest) -> Any:
        if request.path == "/health":
            return 200, {"content-type": "text/plain"}, "OK"
        if match := _STREAM.fullmatch(request.path):
            return await stream(request, match["model"], match["pk"])
        if (match := _START.fullmatch(request.path)) and request.method == "POST":
            if match["model"] != StreamTask.MODEL:
                return 404, {}, f"Unknown model {match['model']}"
            task = await coordinator.load(int(match["pk"]))
            if task is None:
                return 404, {}, "Task not found"
            started = await coordinator.start_task(task)
            return (202, {}, {"started": True}) if started else (409, {}, {"started": False})
        return 404, {}, "Not found"

    async def stream(request: asgineer.HttpRequest, model: str, raw_pk: str) -> Any:
        if model != StreamTask.MODEL:
            return 404, {}, f"Unknown model {model}"
        try:
            pk = int(raw_pk)
        except ValueError:
            return 404, {}, "Task id must be an integer"
        task = await coordinator.load(pk)
        if task is None:
            return 404, {}, "Task not found"
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await task.add_client(queue)
        try:
            await request.accept(200, {"content-type": "text/event-stream"})
            while True:
                event = await queue.get()
                frame = f"event: {event['type']}\ndata: {json.dumps(event['data'])}\n\n"
                await request.send(frame)
                if event["type"] in TERMINAL:
                    return None
        finally:
            await task.remove_client(queue)

    return asgineer.to_asgi(handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args()
    coordinator = TaskCoordinator(Store(args.db))
    uvicorn.run(make_app(coordinator), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
