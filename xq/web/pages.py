"""The dashboard of `xq web`: server-rendered pages over AsyncInspector / AsyncProducer.

Login with a token (xq.web.session: signed cookie, CSRF, failed-login limit); every page needs a session
(anonymous admin when the app runs without tokens, loopback only).  Writes (pause/resume, replay, purge)
are form POSTs carrying the session's CSRF token and are checked for the admin role on the server.
Live parts (data-live) are refreshed from /ui/live/... when the page's event stream (/ui/events, the API's
SSE over the session cookie) says something changed, at most once every 0.75 s, and by a slow fallback
poll (FALLBACK) for what changes without events (workers' heartbeats); static/app.js.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from urllib.parse import parse_qs, quote, urlencode

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import ConfigError, ConnectionLost, RedisFull, RedisRefused, UnknownTask
from ..inspect import FINISHED, LISTED
from ..producer import EVENT_STATES, TERMINAL
from . import api, auth
from .session import COOKIE, TTL

log = logging.getLogger("xq.web")

STATES = (*LISTED, *FINISHED)
PAGE = 50
MAX_FORM = 1024 * 1024  # bytes of a form body (a replay of many selected ids)
FALLBACK = 10.0  # seconds between the live parts' fallback polls (events trigger the refreshes)
COUNT_STATES = ",".join(x for x in EVENT_STATES if x != "progress")  # the events that change counts
SPANS = {60: "1 h", 360: "6 h", 1440: "24 h"}  # the queue page's chart spans, in minutes


class Form(dict):
    """A urlencoded form body: name -> list of values (stdlib parse_qs; no python-multipart needed)."""

    def get(self, k, default=None):
        v = super().get(k)
        return v[0] if v else default

    def getlist(self, k) -> list[str]:
        return list(super().get(k, []))


async def read_form(request: Request) -> Form:
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    raw = await request.body()
    if len(raw) > MAX_FORM:
        raise ConfigError(f"the form is over {MAX_FORM} bytes")
    if ctype != "application/x-www-form-urlencoded":
        return Form()
    return Form(parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=100_000))


def e(v) -> str:
    return html.escape("" if v is None else str(v))


def ago(t) -> str:
    if not t:
        return ""
    s = time.time() - float(t)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


def layout(title: str, body: str, session: dict | None) -> HTMLResponse:
    nav = ""
    if session:
        who = f"{e(session['name'])} ({e(session['role'])})"
        logout = "" if session.get("anonymous") else (
            f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" '
            f'value="{e(session["csrf"])}"><button>Log out</button></form>')
        nav = (f'<nav><a href="/">Overview</a> <a href="/workers">Workers</a> '
               f'<span class="who">{who}</span> {logout}</nav>')
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{e(title)} · xq</title><link rel="icon" href="data:,">'  # no favicon request (a 404 each page)
        f'<link rel="stylesheet" href="/static/app.css"></head>'
        f'<body>{nav}<main><h1>{e(title)}</h1>{body}</main><script src="/static/app.js"></script></body></html>')


def csrf_field(session: dict) -> str:
    return f'<input type="hidden" name="csrf" value="{e(session["csrf"])}">'


def live(url: str, events: str, inner: str) -> str:
    """A live block: refreshed from url (JSON {"parts": {element id: html}, "events": url}) when the
    event stream at events sends anything, and every FALLBACK seconds."""
    return (f'<div data-live="{e(url)}" data-events="{e(events)}" data-poll="{round(FALLBACK * 1000)}">'
            f'{inner}</div>')


def live_json(parts: dict, events: str) -> Response:
    return Response(orjson.dumps({"parts": parts, "events": events}), media_type="application/json")


def queue_events(names: list[str]) -> str:
    """The event stream URL of the count-changing events of these queues."""
    return "/ui/events?" + urlencode({"queue": ",".join(names), "states": COUNT_STATES})


def series(rows: list[dict], key: str, x0: float, y0: float, w: float, h: float, top: float) -> str:
    """The points of a polyline of rows[i][key] in the box (x0, y0, w, h), top the value at its top."""
    step = w / max(1, len(rows) - 1)
    return " ".join(f"{x0 + i * step:.1f},{y0 + h - (r.get(key) or 0) / top * h:.1f}" for i, r in enumerate(rows))


def sparkline(rows: list[dict], w: int = 120, h: int = 24) -> str:
    """Done (blue) and failed (red) per minute, on one scale."""
    rows = rows or [{}]
    done, failed = (max(r.get(k) or 0 for r in rows) for k in ("done", "failed"))
    top = max(done, failed) or 1
    return (f'<svg class="spark" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
            f'aria-label="per minute: done max {done}, failed max {failed}"><title>per minute: done max {done}, '
            f'failed max {failed}</title><polyline class="done" points="{series(rows, "done", 0, 1, w, h - 2, top)}"/>'
            f'<polyline class="failed" points="{series(rows, "failed", 0, 1, w, h - 2, top)}"/></svg>')


def span_label(minutes: int) -> str:
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def chart(rows: list[dict], minutes: int, w: int = 640, h: int = 180) -> str:
    """Throughput (done/min) and failures (failed/min) over the history rows, an inline SVG with its scale
    (0 and the top value, the span) and a legend with the totals."""
    rows = rows or [{}]
    peak = max(max(r.get("done") or 0, r.get("failed") or 0) for r in rows)
    top = peak or 1
    x0, y0, pw, ph = 52, 10, w - 60, h - 32
    grid = "".join(f'<line class="grid" x1="{x0}" x2="{x0 + pw}" y1="{y0 + ph * f:.1f}" y2="{y0 + ph * f:.1f}"/>'
                   for f in (0, 0.5, 1))
    labels = (f'<text x="{x0 - 4}" y="{y0 + 4}" text-anchor="end" class="top">{top}</text>'
              + (f'<text x="{x0 - 4}" y="{y0 + ph / 2 + 4:.1f}" text-anchor="end">{top / 2:g}</text>'
                 if top > 1 else "")
              + f'<text x="{x0 - 4}" y="{y0 + ph + 4}" text-anchor="end">0</text>'
              f'<text x="{x0}" y="{h - 4}">-{span_label(minutes)}</text>'
              f'<text x="{x0 + pw}" y="{h - 4}" text-anchor="end">now</text>')
    done, failed = (sum(r.get(k) or 0 for r in rows) for k in ("done", "failed"))
    svg = (f'<svg id="chart" class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="done and failed tasks per '
           f'minute over the last {span_label(minutes)}, scale 0 to {top}">{grid}{labels}'
           f'<polyline class="done" points="{series(rows, "done", x0, y0, pw, ph, top)}"/>'
           f'<polyline class="failed" points="{series(rows, "failed", x0, y0, pw, ph, top)}"/></svg>')
    return (f'{svg}<p class="legend"><span class="done">■ done/min</span> <span class="failed">■ failed/min</span>'
            f' · in the last {span_label(minutes)}: <b id="sum-done">{done}</b> done, <b id="sum-failed">{failed}'
            f'</b> failed · busiest minute {peak}</p>')


# ---------------------------------------------------------------- sessions
def current(request: Request) -> dict | None:
    """The request's session (with its csrf token), or None.  Without tokens: anonymous admin."""
    st = request.app.state
    if not st.xq.tokens:
        s = {"sid": "anonymous", "name": "anonymous", "role": "admin", "anonymous": True}
    else:
        s = st.sessions.read(request.cookies.get(COOKIE))
        if s is None:
            return None
    s["csrf"] = st.sessions.csrf(s)
    return s


def page(role: str = "read", write: bool = False):
    """Wrap handler(state, request, session): redirect to /login without a session; for a write, 403
    without the CSRF token or the admin role."""
    def wrap(handler):
        async def run(request: Request) -> Response:
            s = current(request)
            if s is None:
                return RedirectResponse("/login?next=" + quote(request.url.path), status_code=303)
            try:
                if write:
                    form = await read_form(request)
                    if not request.app.state.sessions.csrf_ok(s, form.get("csrf")):
                        r = layout("Refused", "<p class=err>Missing or wrong CSRF token.</p>", s)
                        r.status_code = 403
                        return r
                    request.state.form = form
                if role == "admin" and s["role"] != "admin":
                    r = layout("Refused", "<p class=err>This needs an admin token.</p>", s)
                    r.status_code = 403
                    return r
                return await handler(request.app.state.xq, request, s)
            except UnknownTask as err:
                r = layout("Not found", f"<p class=err>{e(err)}</p>", s)
                r.status_code = 404
                return r
            except ConfigError as err:
                r = layout("Bad request", f"<p class=err>{e(err)}</p>", s)
                r.status_code = 422
                return r
            except (ConnectionLost, RedisRefused, RedisFull) as err:  # as the API: 503, or 507 when full
                full = isinstance(err, RedisFull)
                r = layout("Redis is full" if full else "Redis unavailable",
                           f'<p class=err id="redis-error">{e(err)}</p><p><a href="{e(request.url.path)}">Try '
                           f'again</a> once Redis answers.</p>', s)
                r.status_code = 507 if full else 503
                return r
        return run
    return wrap


def _addr(request: Request) -> str:
    return request.client.host if request.client else "?"


async def login_form(request: Request, error: str = "", status: int = 200) -> Response:
    nxt = request.query_params.get("next", "/")
    err = f'<p class="err" id="login-error">{e(error)}</p>' if error else ""
    body = (f'{err}<form method="post" action="/login" class="login"><input type="hidden" name="next" '
            f'value="{e(nxt)}"><label>Token <input type="password" name="token" autocomplete="current-password" '
            f'autofocus required></label><button>Log in</button></form>')
    r = layout("Log in", body, None)
    r.status_code = status
    return r


async def login(request: Request) -> Response:
    if request.method == "GET":
        return await login_form(request)
    sessions, tokens = request.app.state.sessions, request.app.state.xq.tokens
    addr = _addr(request)
    if sessions.blocked(addr):
        return await login_form(request, "Too many failed logins; wait a minute.", 429)
    form = await read_form(request)
    token = auth.match(tokens, "Bearer " + str(form.get("token", ""))) if tokens else None
    if token is None:
        sessions.failed(addr)
        log.info("failed dashboard login from %s", addr)  # never the token given
        return await login_form(request, "Wrong token.", 401)
    nxt = str(form.get("next") or "/")
    if not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:  # only a path here, never a host
        nxt = "/"
    r = RedirectResponse(nxt, status_code=303)
    r.set_cookie(COOKIE, sessions.issue(token.name, token.role), max_age=TTL, httponly=True, samesite="strict",
                 secure=request.url.scheme == "https", path="/")
    log.info("dashboard login: %s (%s) from %s", token.name, token.role, addr)
    return r


@page(write=True)
async def logout(state, request, s):
    r = RedirectResponse("/login", status_code=303)
    r.delete_cookie(COOKIE, path="/")
    return r


# ---------------------------------------------------------------- overview
def queue_rows(queues: list[dict], hist: dict) -> str:
    rows = []
    for q in queues:
        n = q.get("queue") or q.get("name")
        rows.append(
            f'<tr data-queue="{e(n)}"><td><a href="/queues/{quote(n)}">{e(n)}</a></td>'
            f'<td class="n ready">{e(q.get("ready"))}</td><td class="n running">{e(q.get("running"))}</td>'
            f'<td class="n scheduled">{e(q.get("scheduled"))}</td><td class="n dead">'
            f'<a href="/queues/{quote(n)}/dead">{e(q.get("dead"))}</a></td>'
            f'<td class="n latency">{e(latency(q.get("latency")))}</td>'
            f'<td class="paused">{"paused" if q.get("paused") else ""}</td>'
            f'<td class="n done1h">{e(q.get("done_1h"))}</td><td>{sparkline(hist.get(n, []))}</td></tr>')
    return ("<table id=queues><thead><tr><th>Queue</th><th>Ready</th><th>Running</th><th>Sched.</th>"
            "<th>Dead</th><th>Latency</th><th></th><th>Done 1h</th><th>Throughput</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def current_tasks(w: dict) -> str:
    return " ".join(f'<a href="/tasks/{quote(t["id"])}?queue={quote(t["queue"])}">{e(t["name"])}</a>'
                    for t in w.get("tasks", []))


def worker_rows(workers: list[dict]) -> str:
    rows = "".join(
        f'<tr><td>{e(w.get("id"))}</td><td>{e(w.get("host"))}</td><td>{e(",".join(w.get("queues", [])))}</td>'
        f'<td class="n">{e(w.get("busy"))}/{e(w.get("children"))}</td><td>{e(w.get("state"))}</td>'
        f'<td class="n">{e(round(w.get("age") or 0, 1))}s</td>'
        f'<td>{current_tasks(w)}</td></tr>' for w in workers)
    return ("<table id=workers><thead><tr><th>Worker</th><th>Host</th><th>Queues</th><th>Busy</th>"
            "<th>State</th><th>Heartbeat</th><th>Current tasks</th></tr></thead><tbody>"
            + (rows or '<tr><td colspan=7>no live workers</td></tr>') + "</tbody></table>")


async def overview_parts(state) -> tuple[str, str, str]:
    """The queues' and the workers' tables and the event stream URL of the queues."""
    queues = await state.inspector.queues()
    names = [q.get("queue") or q.get("name") for q in queues]
    hists = await asyncio.gather(*(state.inspector.history(n, minutes=60) for n in names))
    return queue_rows(queues, dict(zip(names, hists))), worker_rows(await state.inspector.workers()), \
        queue_events(names)


@page()
async def overview(state, request, s):
    qs, ws, events = await overview_parts(state)
    body = live("/ui/live/overview", events, f'<section><h2>Queues</h2><div id="live-queues">{qs}</div></section>'
                f'<section><h2>Workers</h2><div id="live-workers">{ws}</div></section>')
    return layout("Overview", body, s)


@page()
async def live_overview(state, request, s):
    qs, ws, events = await overview_parts(state)
    return live_json({"live-queues": qs, "live-workers": ws}, events)


# ---------------------------------------------------------------- queue
@page()
async def queue_page(state, request, s):
    q = request.path_params["queue"]
    tid = request.query_params.get("id")
    if tid:
        return RedirectResponse(f"/tasks/{quote(tid)}?queue={quote(q)}", status_code=303)
    st = request.query_params.get("state", "queued")
    if st not in STATES:
        raise ConfigError(f"invalid state {st!r}: expected one of {', '.join(STATES)}")
    try:
        offset = max(0, int(request.query_params.get("offset", 0)))
    except ValueError:
        raise ConfigError("invalid offset: expected an integer") from None
    minutes = chart_minutes(request)
    info = await state.inspector.queue(q)
    tasks = await state.inspector.tasks(q, st, offset=offset, limit=PAGE)
    hist = await state.inspector.history(q, minutes=minutes)
    rows = "".join(
        f'<tr><td><a href="/tasks/{quote(t["id"])}?queue={quote(q)}">{e(t["id"])}</a></td><td>{e(t.get("name"))}</td>'
        f'<td class="n">{e(t.get("priority"))}</td><td class="n">{e(t.get("attempts"))}</td>'
        f'<td>{e(t.get("error"))}</td></tr>' for t in tasks.get("tasks", []))
    tabs = " ".join(f'<a class="{"on" if x == st else ""}" href="?state={x}">{x}</a>' for x in STATES)
    nav = ""
    if offset:
        nav += f'<a href="?{urlencode({"state": st, "offset": max(0, offset - PAGE)})}">← newer</a> '
    if len(tasks.get("tasks", [])) == PAGE:
        nav += f'<a href="?{urlencode({"state": st, "offset": offset + PAGE})}">next →</a>'
    paused = info.get("paused")
    write = ""
    if s["role"] == "admin":
        act = "resume" if paused else "pause"
        write = (f'<form method="post" action="/queues/{quote(q)}/{act}" class="inline">{csrf_field(s)}'
                 f'<button id="{act}">{act.capitalize()}</button></form>')
    spans = " ".join(f'<a class="{"on" if m == minutes else ""}" '
                     f'href="?{urlencode({"state": st, "minutes": m})}">{label}</a>' for m, label in SPANS.items())
    live_url = f"/ui/live/queue/{quote(q)}?minutes={minutes}"
    body = (live(live_url, queue_events([q]), f'<p><span id="live-counts">{queue_counts(info)}</span> · '
                 f'<span id="paused">{"paused" if paused else "not paused"}</span> {write} '
                 f'<a href="/queues/{quote(q)}/dead">dead letters</a></p>'
                 f'<h2>Throughput and failures</h2><p class="tabs spans">{spans}</p>'
                 f'<div id="live-chart">{chart(hist, minutes)}</div>')
            + '<h2>Tasks</h2><form method="get" class="inline">'
            f'<input name="id" placeholder="task id" aria-label="task id">'
            f'<button>Find</button></form><p class="tabs">{tabs}</p>'
            f'<table id="tasks"><thead><tr><th>Id</th><th>Name</th><th>Prio</th><th>Attempts</th><th>Error</th>'
            f'</tr></thead><tbody>{rows or "<tr><td colspan=5>none</td></tr>"}</tbody></table><p>{nav}</p>')
    return layout(f"Queue {q}", body, s)


def chart_minutes(request: Request) -> int:
    raw = request.query_params.get("minutes", "60")
    if not raw.isdigit() or int(raw) not in SPANS:
        raise ConfigError(f"invalid minutes {raw!r}: expected one of {', '.join(map(str, SPANS))}")
    return int(raw)


def queue_counts(info: dict) -> str:
    return " · ".join(f'{k} <b class="{k}">{e(info.get(k))}</b>' for k in ("ready", "running", "scheduled",
                                                                          "retrying", "waiting", "dead"))


@page()
async def live_queue(state, request, s):
    q = request.path_params["queue"]
    minutes = chart_minutes(request)
    info, hist = await asyncio.gather(state.inspector.queue(q), state.inspector.history(q, minutes=minutes))
    return live_json({"live-counts": queue_counts(info), "live-chart": chart(hist, minutes)}, queue_events([q]))


@page("admin", write=True)
async def pause(state, request, s):
    q = request.path_params["queue"]
    await state.inspector.pause_queue(q)
    return RedirectResponse(f"/queues/{quote(q)}", status_code=303)


@page("admin", write=True)
async def resume(state, request, s):
    q = request.path_params["queue"]
    await state.inspector.resume_queue(q)
    return RedirectResponse(f"/queues/{quote(q)}", status_code=303)


# ---------------------------------------------------------------- task
async def task_view(state, tid: str, queue: str | None) -> dict:
    return await api.task_view(state, tid, queue)  # a big payload or result is not read


def latency(seconds) -> str:
    """A queue's latency cell: "-" when nothing is ready (the API's null), not 0s."""
    return "-" if seconds is None else f"{round(seconds, 1)}s"


def progress_bar(view: dict) -> str:
    """The task's progress bar; hidden until the task reports progress (app.js shows it at the first report),
    so a task that never reports does not look stuck at 0%."""
    p = view.get("progress")
    pct = p.get("pct") if isinstance(p, dict) else p
    hidden = "" if pct is not None else " hidden"
    pct = float(pct or 0)
    msg = p.get("msg") if isinstance(p, dict) else None
    return (f'<span id="progress-box"{hidden}><progress id="progress" max="100" value="{pct:g}">{pct:g}%</progress> '
            f'<span id="progress-pct">{pct:g}%</span> <span id="progress-msg">{e(msg)}</span></span>')


def preview(view: dict, field: str) -> str:
    """The payload or result of api.task_view: JSON pretty-printed, else its size and a download link."""
    info = view[field + "_info"]
    if info is None:
        status = view.get("status")
        return ("<i>none yet</i>" if status not in TERMINAL else
                "<i>none: the task failed</i>" if status == "dead" else f"<i>none: the task was {e(status)}</i>")
    if info["inline"]:
        return f"<pre>{e(orjson.dumps(view[field], option=orjson.OPT_INDENT_2).decode())}</pre>"
    what = "raw bytes" if info["type"] == "bytes" else "JSON, too large to preview"
    href = info["href"].removeprefix("/api")  # the dashboard's route: same download, the session cookie
    return f'<p>{info["size"]} bytes ({what}) · <a id="{field}-download" href="{e(href)}" download>download</a></p>'


def outcome(view: dict) -> str:
    """The Result and Error sections of a task page: refreshed live, so a task that ends while the page is
    open shows its result (or error) without a reload."""
    return (f'<h2>Result</h2>{preview(view, "result")}'
            + (f'<h2>Error</h2><pre class=err>{e(view.get("error"))}</pre>' if view.get("error") else ""))


def timeline(view: dict) -> str:
    items = []
    for h in view.get("history") or []:
        if not isinstance(h, dict):
            continue
        tb = f'<details><summary>traceback</summary><pre>{e(h["traceback"])}</pre></details>' \
            if h.get("traceback") else ""
        items.append(f'<li><b>attempt {e(h.get("attempt"))}</b>: {e(h.get("outcome"))} '
                     f'{e(ago(h.get("started_at")))} on {e(h.get("worker"))}'
                     f'{" · " + e(h["error"]) if h.get("error") else ""}{tb}</li>')
    return f'<ol class="timeline">{"".join(items) or "<li>not run yet</li>"}</ol>'


def status_line(view: dict) -> str:
    q = view["queue"]
    return (f'<p>Status <b id="status">{e(view.get("status"))}</b> in <a href="/queues/{quote(q)}">{e(q)}</a> · '
            f'{e(view.get("name"))} · priority {e(view.get("priority"))} · attempts {e(view.get("attempts"))}</p>')


@page()
async def task_page(state, request, s):
    tid = request.path_params["task_id"]
    view = await task_view(state, tid, request.query_params.get("queue") or None)
    malformed = "".join(f"<p class=err>{e(m)}</p>" for m in view.get("malformed") or [])
    q = view["queue"]
    body = (f'<div data-task="{e(tid)}">'
            + live(f"/ui/live/task/{quote(tid)}?queue={quote(q)}", task_events(tid, q),
                   f'<div id="live-status">{status_line(view)}</div><div id="live-progress">{progress_bar(view)}</div>')
            + f'</div>{malformed}'
            f'<h2>Payload</h2>{preview(view, "payload")}'
            f'<div id="live-outcome">{outcome(view)}</div>'
            f'<h2>Attempts</h2><div id="live-attempts">{timeline(view)}</div>')
    return layout(f"Task {tid}", body, s)


async def download(state, request, s, field: str) -> Response:
    """api.download behind the dashboard's session cookie."""
    try:
        return await api.download(state, request.path_params["task_id"], request.query_params.get("queue") or None,
                                  field)
    except api.ApiError as err:
        r = layout("Not available", f"<p class=err>{e(err.message)}</p>", s)
        r.status_code = err.status
        return r


@page()
async def task_payload(state, request, s):
    return await download(state, request, s, "payload")


@page()
async def task_result(state, request, s):
    return await download(state, request, s, "result")


@page()
async def live_task(state, request, s):
    tid = request.path_params["task_id"]
    view = await task_view(state, tid, request.query_params.get("queue") or None)
    return live_json({"live-status": status_line(view), "live-progress": progress_bar(view),
                      "live-outcome": outcome(view), "live-attempts": timeline(view)}, task_events(tid, view["queue"]))


def task_events(tid: str, queue: str) -> str:
    """The event stream URL of one task's events (progress too: app.js moves the bar from them)."""
    return "/ui/events?" + urlencode({"ids": tid, "queue": queue})


# ---------------------------------------------------------------- dead letters
@page()
async def dead_page(state, request, s):
    q = request.path_params["queue"]
    try:
        offset = max(0, int(request.query_params.get("offset", 0)))
    except ValueError:
        raise ConfigError("invalid offset: expected an integer") from None
    page_ = await state.inspector.tasks(q, "dead", offset=offset, limit=PAGE)
    admin = s["role"] == "admin"
    rows = "".join(
        f'<tr>{"<td><input type=checkbox name=id value=" + chr(34) + e(t["id"]) + chr(34) + "></td>" if admin else ""}'
        f'<td><a href="/tasks/{quote(t["id"])}?queue={quote(q)}">{e(t["id"])}</a></td><td>{e(t.get("name"))}</td>'
        f'<td>{e(t.get("error"))}</td></tr>' for t in page_.get("tasks", []))
    table = (f'<table id="dead"><thead><tr>{"<th></th>" if admin else ""}<th>Id</th><th>Name</th><th>Error</th>'
             f'</tr></thead><tbody>{rows or "<tr><td colspan=4>no dead tasks</td></tr>"}</tbody></table>')
    if admin:
        body = (f'<form method="post" action="/queues/{quote(q)}/dead/replay" data-confirm="Replay the selected '
                f'tasks?">{csrf_field(s)}{table}<label>Priority <input name="priority" size="4" '
                f'placeholder="same"></label> <label>To queue <input name="to_queue" size="10" '
                f'placeholder="{e(q)}"></label> <button id="replay">Replay selected</button></form>'
                f'<form method="post" action="/queues/{quote(q)}/dead/purge" data-confirm="Delete every dead task '
                f'of {e(q)}?">{csrf_field(s)}<button id="purge" class="danger">Purge all</button></form>')
    else:
        body = table
    return layout(f"Dead letters of {q}", body, s)


@page("admin", write=True)
async def dead_replay(state, request, s):
    q = request.path_params["queue"]
    form = request.state.form
    ids = form.getlist("id")
    if not ids:
        raise ConfigError("no task selected: tick the dead tasks to replay")
    prio = form.get("priority") or None
    if prio is not None and prio.lstrip("-").isdigit():
        prio = int(prio)
    to_queue = form.get("to_queue") or None
    await api.in_thread(state, state.sync.replay, q, ids, priority=prio, to_queue=to_queue)
    return RedirectResponse(f"/queues/{quote(q)}/dead", status_code=303)


@page("admin", write=True)
async def dead_purge(state, request, s):
    q = request.path_params["queue"]
    await api.in_thread(state, state.sync.purge_dead, q)
    return RedirectResponse(f"/queues/{quote(q)}/dead", status_code=303)



# ---------------------------------------------------------------- workers
async def workers_parts(state) -> tuple[str, str]:
    """The workers' table and the event stream URL of the queues they serve."""
    workers = await state.inspector.workers()
    return worker_rows(workers), queue_events(sorted({q for w in workers for q in w.get("queues", [])}))


@page()
async def workers_page(state, request, s):
    ws, events = await workers_parts(state)
    return layout("Workers", live("/ui/live/workers", events, f'<div id="live-workers">{ws}</div>'), s)


@page()
async def live_workers(state, request, s):
    ws, events = await workers_parts(state)
    return live_json({"live-workers": ws}, events)


# ---------------------------------------------------------------- events, errors
async def _ui_events(state, request):
    if current(request) is None:
        raise api.ApiError(401, "unauthorized", "log in to the dashboard first (no session cookie)")
    return await api.sse_response(state, request)


# GET /ui/events: the API's SSE stream (same filters: queue=, ids=, states=) for the dashboard's pages,
# authenticated by the session cookie (any role: it only reads); errors as the API's JSON
ui_events = api.endpoint(None)(_ui_events)

API_PATHS = ("/api/", "/healthz", "/readyz", "/openapi.json")


async def http_error(request: Request, exc) -> Response:
    """Starlette's own errors (no such route, method not allowed): JSON under the API's paths, an HTML
    page in the layout elsewhere."""
    path = request.url.path
    if path == "/api" or path.startswith(API_PATHS):
        return await api.http_error(request, exc)
    title = "Not found" if exc.status_code == 404 else "Error"
    r = layout(title, f'<p class="err">{e(request.method)} {e(path)}: {e(exc.detail)}</p>'
                      f'<p><a href="/">Back to the overview</a></p>', current(request))
    r.status_code = exc.status_code
    r.headers.update(exc.headers or {})  # a 405's Allow
    return r


STATIC = __file__.rsplit("/", 1)[0] + "/static"

ROUTES = [
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/", overview),
    Route("/workers", workers_page),
    Route("/queues/{queue}", queue_page),
    Route("/queues/{queue}/pause", pause, methods=["POST"]),
    Route("/queues/{queue}/resume", resume, methods=["POST"]),
    Route("/queues/{queue}/dead", dead_page),
    Route("/queues/{queue}/dead/replay", dead_replay, methods=["POST"]),
    Route("/queues/{queue}/dead/purge", dead_purge, methods=["POST"]),
    Route("/tasks/{task_id}", task_page),
    Route("/tasks/{task_id}/payload", task_payload),
    Route("/tasks/{task_id}/result", task_result),
    Route("/ui/live/overview", live_overview),
    Route("/ui/live/workers", live_workers),
    Route("/ui/live/queue/{queue}", live_queue),
    Route("/ui/live/task/{task_id}", live_task),
    Route("/ui/events", ui_events),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
