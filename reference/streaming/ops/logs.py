"""Log records that say which task they are about, as text or as JSON lines.

:class:`TaskFields` is a filter for handlers: it gives every record
``task_kind`` and ``task_id`` (None when it is about no task) and ``task``
(``Kind:id``, or ``-``). It takes them, in this order, from the record's own
``extra``; from the asyncio task that logged it, whose name the coordinator
makes ``streaming:[<what>:]<Kind>:<id>`` (a run, the writing of its outcome);
and from the first argument of the message, where the coordinator and the
keeper put a task's key. So the traceback of a failed task, logged by its
run, carries its kind and id without the coordinator passing them.

:class:`JsonFormatter` writes one JSON object per line: ``time``, ``level``,
``logger``, ``message``, ``task_kind``, ``task_id`` and, for an exception,
``traceback``. ``STREAMING_LOG_FORMAT=json`` selects it (settings.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

#: An asyncio task's name, or a log argument, that names one task.
_TASK_NAME = re.compile(r"streaming:(?:[a-z-]+:)?(?P<kind>[A-Z]\w*):(?P<id>\d+)")
_KEY = re.compile(r"(?P<kind>[A-Z]\w*):(?P<id>\d+)")


#: A task token in a logged URL's query (``?token=`` is how an EventSource sends one).
_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"]*", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Blank out task tokens in a record's arguments: an access log line is not a secret store.

    A token that allows cancel, start or retry would otherwise be written, in
    full, to every log that keeps uvicorn's access lines. Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, str) and "token=" in arg.lower() for arg in record.args
        ):
            record.args = tuple(
                _TOKEN_IN_QUERY.sub(r"\1[redacted]", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


class TaskFields(logging.Filter):
    """Give every record ``task_kind``, ``task_id`` and ``task``; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        kind = getattr(record, "task_kind", None)
        task_id = getattr(record, "task_id", None)
        if kind is None:
            kind, task_id = _from_asyncio_task() or _from_args(record.args) or (None, None)
        record.task_kind = kind
        record.task_id = task_id
        record.task = f"{kind}:{task_id}" if kind is not None else "-"
        return True


def _from_asyncio_task() -> tuple[str, str] | None:
    try:
        current = asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        return None
    if current is None:
        return None
    match = _TASK_NAME.fullmatch(current.get_name())
    return (match["kind"], match["id"]) if match else None


def _from_args(args: Any) -> tuple[str, str] | None:
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        match = _KEY.fullmatch(args[0])
        if match:
            return match["kind"], match["id"]
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "task_kind": getattr(record, "task_kind", None),
            "task_id": getattr(record, "task_id", None),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["traceback"] = record.exc_text
        return json.dumps(entry, default=str)
