"""The page that watches one task: ``GET /tasks/<Model>/<id>``.

A small HTML page, no framework, no build. It shows the task's status, the
events the server still keeps of it (``Coordinator.task_history``: memory,
the bus, the event log), each with its time, and a progress bar once an
event says how far the task has got. Then it reads the events that follow
the last of those with the browser's own ``EventSource`` (``?last_event_id=``,
so that nothing is shown twice or missed), and has the buttons the status
allows: Start, Cancel, Retry, each a ``POST`` to the same routes and policy as
any client's. A page opened with ``?token=`` (``ops.policy.watch_url``) sends
the token with its stream and its buttons.

What it says always follows from what it was told last. The terminal event
of a run closes the stream at once (no reconnect to be told 204); a notice
("Cancel requested.", "The server is restarting") goes when the status
changes or the stream is back; and if the browser gives up on the stream
(a server that answers 503 while it restarts), the page opens it again from
the last event it shows.

An ``EventSource`` dispatches an event only to listeners of its type, and a
task kind may send any type: the page listens for the types the server sends
itself, common ones, those a kind lists in an ``event_types`` attribute and
those of the events it was given. Events of other types show as a gap in the
ids.
"""

from __future__ import annotations

import html
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from ..coordinator import TaskHistory
from ..events import CONTROL_TYPES, TERMINAL_TYPES
from ..hub import Message
from ..states import RETRY_FROM, START_FROM, TaskStatus
from .policy import TOKEN_QUERY

#: Event types most task kinds send (the reference's own kinds among them).
COMMON_TYPES = frozenset(
    {"start", "started", "progress", "step", "log", "message", "final", "fetching", "response"}
)
#: The status each terminal event says a task has ended in.
ENDINGS = {
    "complete": TaskStatus.SUCCESSFUL,
    "error": TaskStatus.FAILED,
    "cancelled": TaskStatus.CANCELLED,
    "timeout": TaskStatus.TIMED_OUT,
    "interrupted": TaskStatus.INTERRUPTED,
}
assert set(ENDINGS) == TERMINAL_TYPES, "a terminal event type without the status it records"
#: Events of its history a page shows at most: the latest ones.
HISTORY_SHOWN = 500
#: Characters of an event's data a page shows; the rest is cut.
PREVIEW_CHARS = 2000


def event_types(model: type, seen: Iterable[str] = ()) -> list[str]:
    """Every event type the page for a task of ``model`` listens for."""
    declared = getattr(model, "event_types", ())
    return sorted({*COMMON_TYPES, *TERMINAL_TYPES, *CONTROL_TYPES, *declared, *seen})


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


def fill(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each ``{{name}}`` replaced by ``values[name]``, in one pass.

    One pass: a value that holds ``{{...}}`` itself is left as it is.
    """
    return re.sub(r"\{\{(\w+)\}\}", lambda match: values[match[1]], template)


def script_json(value: Any) -> str:
    """``value`` as JSON to put inside ``<script>``: "<" escaped, so "</" cannot end it."""
    return json.dumps(value).replace("<", "\\u003c")


def render(
    model: type, pk: int, history: TaskHistory, token: str | None, *, retry_ms: int
) -> tuple[dict[str, str], str]:
    """The page's headers and HTML for task ``pk`` of ``model``, as ``history`` has it now."""
    name = model.__name__
    base = f"/{quote(name)}/{pk}"
    shown = history.events[-HISTORY_SHOWN:]
    last_id = shown[-1].event.id if shown else 0
    final = history.final
    # A task that has ended, with its ending among the events shown, has nothing to stream.
    live = not history.status.is_finished or (final is not None and final.id > last_id)
    config: Mapping[str, Any] = {
        "status": history.status,
        "stream": f"/stream{base}" if live else None,
        "commands": {action: f"/tasks{base}/{action}" for action in ("start", "cancel", "retry")},
        "allowed": {
            "start": sorted(START_FROM),
            "cancel": sorted(START_FROM | {TaskStatus.RUNNING}),
            "retry": sorted(RETRY_FROM),
        },
        "token": token,
        "types": event_types(model, {m.event.type for m in shown}),
        "terminal": ENDINGS,
        "control": sorted(CONTROL_TYPES),
        "history": [_entry(message) for message in shown],
        "omitted": len(history.events) - len(shown),
        "retryMs": retry_ms,
        "preview": PREVIEW_CHARS,
    }
    nonce = secrets.token_urlsafe(16)
    page = fill(
        _PAGE,
        {
            "title": html.escape(f"{name} {pk}"),
            "kind": html.escape(name),
            "pk": str(pk),
            "status": html.escape(history.status),
            "index": html.escape("/" + (f"?{urlencode({TOKEN_QUERY: token})}" if token else "")),
            "nonce": nonce,
            "config": script_json(config),
        },
    )
    return headers(nonce), page


def _entry(message: Message) -> dict[str, Any]:
    """One event of the history, as the page's script reads it."""
    event, data = message.event, message.json
    cut = len(data) > PREVIEW_CHARS
    return {
        "id": event.id,
        "type": event.type,
        "time": event.timestamp,
        "data": data[:PREVIEW_CHARS] if cut else data,
        "size": len(data) if cut else None,
    }


#: The page's style, shared with the task list (``tasks_page``).
STYLE = """\
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 52rem; }
  body { padding: 0 1rem; }
  [hidden] { display: none !important; }
  h1 { font-size: 1.4rem; margin: 0 0 .5rem; }
  a { color: #0969da; }
  .bar { display: flex; gap: 1.5rem; align-items: center; flex-wrap: wrap; }
  .status { font-weight: 600; }
  .status[data-status=SUCCESSFUL] { color: #1a7f37; }
  .status[data-status=FAILED], .status[data-status=TIMED_OUT] { color: #cf222e; }
  .status[data-status=CANCELLED], .status[data-status=INTERRUPTED] { color: #9a6700; }
  time, .id { color: #666; font-variant-numeric: tabular-nums; }
"""

_PAGE = (
    """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<style nonce="{{nonce}}">
"""
    + STYLE
    + """\
  .actions { display: flex; gap: .5rem; }
  #progress { display: flex; gap: .75rem; align-items: center; margin: .75rem 0 0; }
  #progress progress { flex: 1; max-width: 24rem; }
  #notice:empty { display: none; }
  #notice { background: #fff8c5; padding: .4rem .6rem; border-radius: 4px; }
  ol { padding-left: 0; list-style: none; }
  li { border-bottom: 1px solid #ddd; padding: .35rem 0; }
  li time, li .type, li .id { margin-right: .5rem; }
  li .type { font-weight: 600; }
  li code { white-space: pre-wrap; word-break: break-word; }
  li.gap { color: #666; font-style: italic; }
</style>
</head>
<body>
<p><a id="index" href="{{index}}">All tasks</a></p>
<h1>{{kind}} <span class="id">#{{pk}}</span></h1>
<div class="bar">
  <span>Status: <span id="status" class="status" data-status="{{status}}">{{status}}</span></span>
  <span>Stream: <span id="connection" data-state="connecting">connecting</span></span>
  <span class="actions">
    <button id="start" type="button" hidden>Start</button>
    <button id="cancel" type="button" hidden>Cancel task</button>
    <button id="retry" type="button" hidden>Retry</button>
  </span>
</div>
<div id="progress" hidden>
  <progress max="1" value="0"></progress><span id="progress-label"></span>
</div>
<p id="notice" role="status"></p>
<ol id="events" aria-live="polite"></ol>
<script type="application/json" id="config">{{config}}</script>
<script nonce="{{nonce}}">
"use strict";
(() => {
  const config = JSON.parse(document.getElementById("config").textContent);
  const byId = (id) => document.getElementById(id);
  const [statusView, connection, notice, list] = ["status", "connection", "notice", "events"]
    .map(byId);
  const [progress, progressLabel] = [byId("progress"), byId("progress-label")];
  const bar = progress.querySelector("progress");
  const buttons = { start: byId("start"), cancel: byId("cancel"), retry: byId("retry") };
  const names = { start: "Start", cancel: "Cancel", retry: "Retry" };
  const allowed = {};
  for (const [action, statuses] of Object.entries(config.allowed)) {
    allowed[action] = new Set(statuses);
  }
  const control = new Set(config.control);
  let status = config.status;
  let lastId = 0; // the id of the last event of the task shown
  let source = null; // the stream, while one is open
  let ended = false; // the last event of the stream ended a run
  let reopening = null; // a timer: the stream opens again
  let delay = config.retryMs;
  let busy = false; // a command is on its way
  let cancelAsked = false;

  // -- what the page says ---------------------------------------------------------------

  function setStatus(next) {
    if (next !== status) {
      // A notice was true of the status it was given in, no longer.
      say("");
      cancelAsked = false;
    }
    status = next;
    statusView.textContent = next;
    statusView.dataset.status = next;
    showButtons();
  }

  function showButtons() {
    for (const [action, button] of Object.entries(buttons)) {
      button.hidden = !allowed[action].has(status);
      button.disabled = busy || (action === "cancel" && cancelAsked);
    }
  }

  function say(text, about = "") {
    notice.textContent = text;
    notice.dataset.about = about;
  }

  function setConnection(state) {
    connection.textContent = state;
    connection.dataset.state = state;
  }

  function element(tag, className, text) {
    const made = document.createElement(tag);
    if (className) made.className = className;
    if (text !== undefined) made.textContent = text;
    return made;
  }

  function add(className, ...parts) {
    const item = element("li", className);
    item.append(...parts);
    list.append(item);
    return item;
  }

  function stamp(iso) {
    const time = element("time");
    const when = new Date(iso);
    if (typeof iso === "string" && !Number.isNaN(when.getTime())) {
      const two = (n) => String(n).padStart(2, "0");
      time.dateTime = iso;
      time.title = iso;
      time.textContent = [when.getHours(), when.getMinutes(), when.getSeconds()].map(two).join(":");
    }
    return time;
  }

  function showEvent(id, type, time, text, size) {
    // ``size``: the whole data's length, where ``text`` is only its start.
    const parts = [stamp(time), element("span", "type", type), element("span", "id", `#${id}`)];
    const code = element("code", "", size ? `${text}… (${size} characters in all)` : text);
    const item = add("event", ...parts, code);
    item.dataset.type = type;
    item.dataset.id = String(id);
  }

  function showGap(from, to, why) {
    if (to >= from) add("gap", from === to ? `id ${from}: ${why}` : `ids ${from} to ${to}: ${why}`);
  }

  function track(data) {
    // How far the task has got, where an event says: a step of a number of them, or a percentage.
    if (data === null || typeof data !== "object") return;
    let value, max, label;
    if (Number.isFinite(data.step) && Number.isFinite(data.total_steps) && data.total_steps > 0) {
      [value, max] = [Math.max(0, Math.min(data.step, data.total_steps)), data.total_steps];
      label = `${data.step} / ${data.total_steps}`;
    } else if (Number.isFinite(data.percent)) {
      [value, max] = [Math.max(0, Math.min(data.percent, 100)), 100];
      label = `${data.percent}%`;
    } else {
      return;
    }
    bar.setAttribute("max", String(max));
    bar.setAttribute("value", String(value));
    progressLabel.textContent = label;
    progress.hidden = false;
  }

  // -- what the server kept ----------------------------------------------------------------

  if (config.omitted > 0) {
    add("gap", `${config.omitted} earlier events are not shown here.`);
    lastId = config.history[0].id - 1;
  }
  for (const event of config.history) {
    showGap(lastId + 1, event.id - 1, "no events kept");
    const data = event.size ? null : JSON.parse(event.data);
    const text = data ? JSON.stringify(data) : event.data;
    showEvent(event.id, event.type, event.time, text, event.size);
    track(data);
    lastId = event.id;
  }

  // -- what follows, live ------------------------------------------------------------------

  function receive(type, message) {
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      data = { data: message.data };
    }
    const time = data._timestamp;
    for (const key of ["_task_id", "_model", "_timestamp"]) delete data[key];
    if (control.has(type)) {
      aboutStream(type, data);
      return;
    }
    const id = Number(message.lastEventId);
    if (id <= lastId) return; // shown already
    showGap(lastId + 1, id - 1, "of types this page does not show");
    lastId = id;
    const text = JSON.stringify(data);
    const long = text.length > config.preview;
    showEvent(id, type, time, long ? text.slice(0, config.preview) : text, long && text.length);
    track(data);
    ended = type in config.terminal;
    if (ended) {
      setStatus(config.terminal[type]);
    } else if (status !== "RUNNING") {
      setStatus("RUNNING");
    }
  }

  function aboutStream(type, data) {
    if (type === "stream-reset") {
      showGap(data.last_event_id + 1, data.oldest_available_id - 1, "no events kept");
      lastId = Math.max(lastId, data.oldest_available_id - 1);
    } else if (type === "shutdown") {
      say("The server is restarting; reconnecting.", "stream");
    } else if (type === "overflow") {
      say("This page fell behind the task's events; catching up.", "stream");
    } else if (type === "waiting") {
      // What the server waits on (a lost run's lease): true until the status changes.
      say(data.message, "task");
    }
  }

  function open() {
    clearTimeout(reopening);
    if (source !== null) source.close();
    const query = new URLSearchParams({ last_event_id: String(lastId) });
    if (config.token) query.set("token", config.token);
    const stream = new EventSource(`${config.stream}?${query}`);
    source = window.taskStream = stream;
    ended = false;
    for (const type of config.types) {
      stream.addEventListener(type, (message) => {
        // The task's "error" event, not the EventSource's own, which carries no data.
        if (message instanceof MessageEvent) receive(type, message);
      });
    }
    stream.onopen = () => {
      delay = config.retryMs;
      if (notice.dataset.about === "stream") say("");
      setConnection("live");
    };
    stream.onerror = () => {
      if (stream !== source) return;
      if (ended) {
        // The run's terminal event was the stream's last: nothing follows it.
        stream.close();
        setConnection("closed");
        return;
      }
      if (stream.readyState === EventSource.CLOSED) {
        // The browser gave up (a refusal, or a 503 while the server restarts): try again later.
        reopening = setTimeout(open, delay);
        delay = Math.min(delay * 2, 10000);
      }
      setConnection("reconnecting");
    };
    setConnection("connecting");
  }

  // -- the buttons -------------------------------------------------------------------------

  async function command(action) {
    busy = true;
    showButtons();
    const headers = { "Content-Type": "application/json" };
    if (config.token) headers.Authorization = `Bearer ${config.token}`;
    const body = action === "cancel" ? { reason: "cancelled from the watch page" } : {};
    try {
      const response = await fetch(config.commands[action], {
        method: "POST",
        headers,
        body: JSON.stringify(body),
      });
      const text = await response.text();
      let answer = null;
      try {
        answer = JSON.parse(text);
      } catch {
        // a refusal's reason is plain text
      }
      answered(action, response.status, answer, text);
    } catch (error) {
      say(`${names[action]} failed: ${error}`, "command");
    } finally {
      busy = false;
      showButtons();
    }
  }

  function answered(action, code, answer, text) {
    if (action === "cancel" && code === 200) {
      if (answer?.cancelled === true) {
        // Unless the stream has told the ending already.
        if (allowed.cancel.has(status)) {
          cancelAsked = true;
          say("Cancel requested.", "command");
        }
      } else {
        const why = answer?.reason ?? "the task is neither READY nor RUNNING.";
        say(`Not cancelled: ${why}`, "command");
      }
    } else if (code === 202 && action === "retry") {
      // A new run, whose events follow the last one shown, on a stream of its own.
      progress.hidden = true;
      setStatus("RUNNING");
      open();
    } else if (code === 202) {
      if (status === "READY") setStatus("RUNNING");
      if (source === null || source.readyState === EventSource.CLOSED) open();
    } else {
      say(`${names[action]} refused (${code}): ${answer?.reason ?? text}`, "command");
    }
  }

  for (const [action, button] of Object.entries(buttons)) {
    button.addEventListener("click", () => command(action));
  }

  setStatus(status);
  if (config.stream !== null) {
    open();
  } else {
    setConnection("closed");
  }
})();
</script>
</body>
</html>
"""
)
