"""The page that watches one task: ``GET /tasks/<Model>/<id>``.

A small HTML page, no framework, no build. It reads the task's stream with
the browser's own ``EventSource`` and lists each event as it comes, shows
the task's status (the stored one at first, then what the events say), and
has a button that cancels the task through the same authorization as
everything else. A page opened with ``?token=`` (``ops.policy.watch_url``)
passes the token on to its stream and its cancel.

It never closes its stream itself: once the task has ended, the stream
ends, the browser reconnects with ``Last-Event-ID`` set to the terminal
event, and the server's 204 is what makes an ``EventSource`` stop for good.

An ``EventSource`` dispatches an event only to listeners of its type, and
a task kind may send any type: the page listens for the types the server
sends itself, common ones, and those a kind lists in an ``event_types``
attribute. Events of other types show as a gap in the ids.
"""

from __future__ import annotations

import html
import json
import secrets
from collections.abc import Mapping
from string import Template
from typing import Any
from urllib.parse import quote, urlencode

from ..events import CONTROL_TYPES, TERMINAL_TYPES
from .policy import TOKEN_QUERY

#: Event types most task kinds send (the reference's own kinds among them).
COMMON_TYPES = frozenset(
    {"start", "started", "progress", "step", "log", "message", "final", "fetching", "response"}
)


def event_types(model: type) -> list[str]:
    """Every event type the page for a task of ``model`` listens for."""
    declared = getattr(model, "event_types", ())
    return sorted({*COMMON_TYPES, *TERMINAL_TYPES, *CONTROL_TYPES, *declared})


def headers(nonce: str) -> dict[str, str]:
    """Response headers: the page runs its own script only, and leaks no token onwards."""
    return {
        "content-type": "text/html; charset=utf-8",
        "content-security-policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "referrer-policy": "no-referrer",
        "x-content-type-options": "nosniff",
        "cache-control": "no-store",
    }


def render(model: type, pk: int, status: str, token: str | None) -> tuple[dict[str, str], str]:
    """The page's headers and HTML for task ``pk`` of ``model``, now ``status``."""
    name = model.__name__
    base = f"/{quote(name)}/{pk}"
    query = f"?{urlencode({TOKEN_QUERY: token})}" if token else ""
    config: Mapping[str, Any] = {
        "model": name,
        "id": pk,
        "status": status,
        "stream": f"/stream{base}{query}",
        "cancel": f"/tasks{base}/cancel",
        "token": token,
        "types": event_types(model),
        "final": {
            "complete": "SUCCESSFUL",
            "error": "FAILED",
            "cancelled": "CANCELLED",
            "timeout": "TIMED_OUT",
            "interrupted": "INTERRUPTED",
        },
        "control": sorted(CONTROL_TYPES),
    }
    nonce = secrets.token_urlsafe(16)
    page = _PAGE.substitute(
        title=html.escape(f"{name} {pk}"),
        kind=html.escape(name),
        pk=pk,
        status=html.escape(status),
        nonce=nonce,
        # Inside <script>, "</" would end the element: escape "<" in the JSON.
        config=json.dumps(config).replace("<", "\\u003c"),
    )
    return headers(nonce), page


_PAGE = Template("""\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style nonce="$nonce">
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 48rem; }
  body { padding: 0 1rem; }
  h1 { font-size: 1.4rem; margin: 0 0 .5rem; }
  .bar { display: flex; gap: 1.5rem; align-items: center; flex-wrap: wrap; }
  #status { font-weight: 600; }
  #status[data-status=SUCCESSFUL] { color: #1a7f37; }
  #status[data-status=FAILED], #status[data-status=TIMED_OUT] { color: #cf222e; }
  #status[data-status=CANCELLED], #status[data-status=INTERRUPTED] { color: #9a6700; }
  #notice:empty { display: none; }
  #notice { background: #fff8c5; padding: .4rem .6rem; border-radius: 4px; }
  ol { padding-left: 0; list-style: none; }
  li { border-bottom: 1px solid #ddd; padding: .35rem 0; }
  li .type { font-weight: 600; margin-right: .5rem; }
  li .id { color: #666; margin-right: .5rem; font-variant-numeric: tabular-nums; }
  li code { white-space: pre-wrap; word-break: break-word; }
  li.gap { color: #666; font-style: italic; }
</style>
</head>
<body>
<h1>$kind <span class="id">#$pk</span></h1>
<div class="bar">
  <span>Status: <span id="status" data-status="$status">$status</span></span>
  <span>Stream: <span id="connection" data-state="connecting">connecting</span></span>
  <button id="cancel" type="button">Cancel task</button>
</div>
<p id="notice" role="status"></p>
<ol id="events" aria-live="polite"></ol>
<script type="application/json" id="config">$config</script>
<script nonce="$nonce">
"use strict";
(() => {
  const config = JSON.parse(document.getElementById("config").textContent);
  const statusView = document.getElementById("status");
  const connection = document.getElementById("connection");
  const list = document.getElementById("events");
  const notice = document.getElementById("notice");
  const cancel = document.getElementById("cancel");
  const control = new Set(config.control);
  let status = config.status;
  let lastId = null;

  function setStatus(next) {
    status = next;
    statusView.textContent = next;
    statusView.dataset.status = next;
    cancel.disabled = !(next === "READY" || next === "RUNNING");
  }

  function setConnection(state) {
    connection.textContent = state;
    connection.dataset.state = state;
  }

  function item(className, ...parts) {
    const li = document.createElement("li");
    li.className = className;
    li.append(...parts);
    list.append(li);
    return li;
  }

  function span(className, text) {
    const element = document.createElement("span");
    element.className = className;
    element.textContent = text;
    return element;
  }

  function show(type, message) {
    const id = Number(message.lastEventId);
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      data = { data: message.data };
    }
    for (const key of ["_task_id", "_model", "_timestamp"]) delete data[key];
    if (!control.has(type)) {
      if (lastId !== null && id > lastId + 1) {
        item("gap", `events $${lastId + 1} to $${id - 1}: of types this page does not show`);
      }
      lastId = id;
    }
    const code = document.createElement("code");
    code.textContent = JSON.stringify(data);
    const li = item("event", span("type", type), span("id", message.lastEventId), code);
    li.dataset.type = type;
    li.dataset.id = String(id);
    if (type in config.final) {
      setStatus(config.final[type]);
    } else if (type === "stream-reset") {
      notice.textContent = "Some earlier events are no longer kept.";
    } else if (type === "shutdown") {
      notice.textContent = "The server is restarting; reconnecting.";
    } else if (!control.has(type) && status !== "RUNNING") {
      setStatus("RUNNING");
    }
  }

  const source = new EventSource(config.stream);
  for (const type of config.types) {
    source.addEventListener(type, (message) => {
      // The task's "error" event, not the EventSource's own, which carries no data.
      if (message instanceof MessageEvent) show(type, message);
    });
  }
  source.onmessage = (message) => show("message", message);
  source.onopen = () => setConnection("live");
  source.onerror = () => {
    // CLOSED: the server answered 204 (the task has ended and this page has
    // its last event) or refused; the browser will not try again.
    setConnection(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  };
  window.taskStream = source;

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    const headers = { "Content-Type": "application/json" };
    if (config.token) headers.Authorization = `Bearer $${config.token}`;
    try {
      const response = await fetch(config.cancel, {
        method: "POST",
        headers,
        body: JSON.stringify({ reason: "cancelled from the watch page" }),
      });
      const text = await response.text();
      if (!response.ok) {
        notice.textContent = `Cancel refused ($${response.status}): $${text}`;
      } else if (JSON.parse(text).cancelled) {
        notice.textContent = "Cancel requested.";
      } else {
        notice.textContent = "Nothing to cancel: the task is not running.";
      }
    } catch (error) {
      notice.textContent = `Cancel failed: $${error}`;
    } finally {
      cancel.disabled = !(status === "READY" || status === "RUNNING");
    }
  });

  setStatus(status);
})();
</script>
</body>
</html>
""")
