"""The streaming server's HTTP side: one ASGI app per coordinator.

Routes::

    GET  /live                         200 "OK" while the process answers (liveness)
    GET  /health                       200 "OK"; 503 with the reason (draining, database)
    GET  /ready                        200 "OK" when it can serve: accepting work, database
                                       and bus reachable; 503 naming what is not (readiness)
    GET  /metrics                      Prometheus metrics (settings METRICS)
    GET  /stream/<Model>/<id>          Server-Sent Events of one task; Last-Event-ID (or,
                                       without it, ?last_event_id=) resumes, and is
                                       answered 204 past the task's end
    GET  /                             the tasks, newest first: ?kind=, ?status=, ?page=,
                                       ?per_page= (ops/tasks_page.py)
    GET  /tasks/<Model>/<id>           a page that watches the task live (ops/watch.py)
    POST /tasks/<Model>/<id>/start     start a READY task
    POST /tasks/<Model>/<id>/retry     run a FAILED/CANCELLED/TIMED_OUT/INTERRUPTED task again
    POST /tasks/<Model>/<id>/cancel    cancel it; JSON body {"reason": "..."} optional;
                                       {"cancelled": false, "reason": "..."} if it cannot be

- ``checks.py``: what a request passes before its handler, as ordered lists;
- ``handlers.py``: one function per route, asking the coordinator;
- ``app.py``: the ASGI entry that runs the one, then the other;
- ``request.py``, ``services.py``: what they share.

Streams are the hot path, so they bypass the framework: ``sse.StreamWriter``
writes a subscriber's queued events in one ``send`` and ``sse.Writers``
keeps one timer for every stream's keep-alive and write deadline. Every
other route is an asgineer handler. No request reaches a task unless its id
is canonical decimal, and no bad request gets a 5xx: the answer is 400, 404,
405, 409 or 413 with a reason, or 503 while the database is unavailable.
"""

from __future__ import annotations

from .app import App, make_app

__all__ = ["App", "make_app"]
