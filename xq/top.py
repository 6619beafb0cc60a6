"""`xq top`: a live terminal dashboard of queues and workers (textual, the optional extra `xq-queue[top]`).

Two halves.  snapshot() is a plain function: one refresh of everything the screen shows, read through
xq.inspect.Inspector only (so it runs against any Redis with no supervisor change) and testable without a
terminal.  TopApp renders snapshots: the queues view (one row per queue, a sparkline of done per minute
over the last HISTORY_MINUTES) or the workers view (one row per live supervisor), and a detail pane for
the highlighted row.  The reads run in a worker thread, so a slow or absent Redis never blocks the UI; a
failed read shows "Redis unreachable: ..." in the status line and the next tick tries again.

Cost per refresh (default every second): one SMEMBERS of the queue set, one QSTATS round trip per queue
and one of its stats history (by_name for the highlighted one), the index and records of the workers, and
one history read per queue.
"""

from __future__ import annotations

import threading
import time

from .conn import redacted
from .errors import ConnectionLost
from .inspect import Inspector

__all__ = ["snapshot", "sparkline", "queue_rows", "worker_rows", "queue_detail", "worker_detail", "app_class", "run"]

HISTORY_MINUTES = 30
BARS = "▁▂▃▄▅▆▇█"
QUEUE_COLUMNS = ["QUEUE", "PAUSED", "READY", "RUNNING", "SCHED", "RETRY", "DEAD", "LATENCY",
                 f"DONE/MIN (last {HISTORY_MINUTES}m)", "DONE 1m", "FAILED 1m"]
WORKER_COLUMNS = ["HOST", "PID", "QUEUES", "BUSY", "DONE", "FAILED", "RSS", "BEAT", "STATE", "RUNNING"]


# ---------------------------------------------------------------- data: one refresh, no terminal
def snapshot(insp: Inspector, *, detail_queue: str | None = None, minutes: int = HISTORY_MINUTES) -> dict:
    """Everything one refresh shows: {"time", "queues": [Inspector.queue() + "throughput": done per minute,
    oldest first] by name, "workers": Inspector.workers() by host and pid (a stable order: the registry's
    is by heartbeat, which reshuffles every beat), "detail": Inspector.queue(detail_queue, by_name=True)
    or None}."""
    queues = []
    for q in insp.queues():
        row = dict(q)
        row["throughput"] = [m["done"] for m in insp.history(q["queue"], minutes=minutes)]
        queues.append(row)
    detail = None
    if detail_queue is not None and any(q["queue"] == detail_queue for q in queues):
        detail = insp.queue(detail_queue, by_name=True)
    workers = sorted(insp.workers(), key=lambda w: (str(w.get("host")), str(w.get("pid")), str(w.get("id"))))
    return {"time": time.time(), "queues": queues, "workers": workers, "detail": detail}


def sparkline(values: list[int], width: int = HISTORY_MINUTES) -> str:
    """The last `width` values as block characters scaled to their maximum, right-aligned to width; any
    non-zero value gets at least the second-lowest bar so it stands out from an idle minute."""
    vals = [max(0, int(v)) for v in values[-width:]]
    top = max(vals, default=0)
    bars = "".join(BARS[0] if v == 0 else BARS[max(1, round(v * (len(BARS) - 1) / top))] for v in vals)
    return bars.rjust(width)


def _count(v) -> str:
    return "-" if v is None else str(v)


def _age(s) -> str:
    if not isinstance(s, (int, float)):
        return "-"
    s = max(0.0, s)
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    if s < 3600:
        return f"{int(s) // 60}m{int(s) % 60:02d}s"
    if s < 86400:
        return f"{int(s) // 3600}h{int(s) % 3600 // 60:02d}m"
    return f"{int(s) // 86400}d{int(s) % 86400 // 3600:02d}h"


def _mib(n) -> str:
    return f"{n / 1048576:.0f}M" if isinstance(n, (int, float)) else "?"


def queue_rows(snap: dict) -> list[tuple[str, list[str]]]:
    """(queue name, cells) per queue, in QUEUE_COLUMNS order."""
    rows = []
    for q in snap["queues"]:
        rows.append((q["queue"], [
            q["queue"], "PAUSED" if q["paused"] else "no", str(q["ready"]), str(q["running"]),
            str(q["scheduled"]), str(q["retrying"]) + ("" if q.get("sched_split_exact", True) else "+"),
            str(q["dead"]), _age(q["latency"]), sparkline(q.get("throughput") or []),
            _count(q.get("done_1m")), _count(q.get("failed_1m"))]))
    return rows


def _tasks(w: dict) -> list[dict]:
    return [t for t in w.get("tasks") or [] if isinstance(t, dict)] if isinstance(w.get("tasks"), list) else []


def worker_rows(snap: dict) -> list[tuple[str, list[str]]]:
    """(worker id, cells) per live supervisor, in WORKER_COLUMNS order."""
    rows = []
    for w in snap["workers"]:
        if w.get("malformed"):
            rows.append((str(w["id"]), [f"malformed record: {'; '.join(w['malformed'])}"] +
                         [""] * (len(WORKER_COLUMNS) - 1)))
            continue
        queues = w.get("queues")
        rss = w.get("rss") if isinstance(w.get("rss"), dict) else {}
        names = ",".join(sorted({str(t.get("name")) for t in _tasks(w)}))
        rows.append((str(w["id"]), [
            str(w.get("host", "?")), str(w.get("pid", "?")),
            ",".join(map(str, queues)) if isinstance(queues, list) else "?",
            f"{w.get('busy', '?')}/{w.get('procs', '?')}", str(w.get("done", "?")), str(w.get("failed", "?")),
            _mib(rss.get("total")), _age(w.get("age")), str(w.get("state", "?")), names or "-"]))
    return rows


def queue_detail(q: dict | None) -> str:
    """The detail pane of a queue: ready by priority, then counts per task name (Inspector.queue by_name)."""
    if q is None:
        return "(no queue selected)"
    since = q.get("paused_since")
    lines = [f"queue {q['queue']}" + ("  PAUSED" + (f" since {time.strftime('%H:%M:%S', time.localtime(since))}"
                                                    if since else "") if q["paused"] else ""),
             f"latency {_age(q['latency'])}" + (f"  oldest ready {q['oldest_ready_id']}"
                                                if q.get("oldest_ready_id") else ""),
             "ready by priority: " + ("  ".join(f"{p}:{n}" for p, n in q["ready_by_priority"].items() if n)
                                      or "none"),
             f"waiting {q['waiting']}" + ("" if q.get("waiting_exact", True) else "+")]
    by_name = q.get("by_name") or {}
    if by_name:
        states = ("queued", "running", "scheduled", "retrying", "waiting", "dead")
        width = min(40, max(len("NAME"), *(len(n) for n in by_name)))
        lines.append("")
        lines.append("NAME".ljust(width) + "".join(s.upper().rjust(10) for s in states))
        for n, c in sorted(by_name.items()):
            lines.append(n[:width].ljust(width) + "".join(str(c.get(s, 0)).rjust(10) for s in states))
        if not q.get("by_name_exact", True):
            lines.append("(a sample: the first 200 ids of each list and set)")
    return "\n".join(lines)


def worker_detail(w: dict | None, now: float) -> str:
    """The detail pane of a worker: identity, then the tasks it runs now (id, name, queue, running for)."""
    if w is None:
        return "(no worker selected)"
    if w.get("malformed"):
        return f"worker {w['id']}: malformed record: {'; '.join(w['malformed'])}"
    started = w.get("started")
    lines = [f"worker {w['id']}  version {w.get('version', '?')}  impl {w.get('impl', '?')}  "
             f"up {_age(now - started) if isinstance(started, (int, float)) else '?'}  "
             f"children {w.get('children', '?')}/{w.get('procs', '?')}"]
    tasks = _tasks(w)
    if not tasks:
        lines.append("idle: no task running")
        return "\n".join(lines)
    lines.append("")
    lines.append(f"{'TASK ID':<36}  {'NAME':<30}  {'QUEUE':<16}  {'PID':>7}  RUNNING FOR")
    for t in sorted(tasks, key=lambda t: t.get("started") or 0):
        st = t.get("started")
        lines.append(f"{str(t.get('id'))[:36]:<36}  {str(t.get('name'))[:30]:<30}  {str(t.get('queue'))[:16]:<16}  "
                     f"{str(t.get('pid', '?')):>7}  {_age(now - st) if isinstance(st, (int, float)) else '?'}")
    return "\n".join(lines)


HELP = """xq top: keys
  q          quit
  tab        switch between the queues and workers views
  1 / 2      queues view / workers view
  up / down  select a row
  enter      show / hide the detail pane of the selected row
  p          pause the selected queue, or resume it if it is paused
  ?          show / hide this help
Refreshes every --interval seconds; reads only (except p) through xq.inspect.Inspector."""


# ---------------------------------------------------------------- the textual app
def app_class():
    """TopApp, defined on first use so that importing xq.top (and snapshot) works without textual."""
    from rich.text import Text
    from textual.app import App, ComposeResult
    from textual.binding import Binding
    from textual.containers import Vertical
    from textual.widgets import DataTable, Static

    class TopApp(App):
        """Renders snapshot() every `interval` seconds; reads and pause run in a worker thread."""

        TITLE = "xq top"
        CSS = """
        #status { height: 1; background: $primary-background; padding: 0 1; }
        #tables { height: 1fr; }
        DataTable { height: 1fr; }
        #detail { height: auto; max-height: 50%; border-top: solid $secondary; padding: 0 1; }
        #help { height: auto; border: solid $accent; padding: 0 1; }
        #keys { height: 1; color: $text-muted; padding: 0 1; }
        """
        BINDINGS = [
            Binding("q", "quit", "quit", priority=True),
            Binding("tab", "switch", "switch view", priority=True),
            Binding("1", "view('queues')", "queues", priority=True),
            Binding("2", "view('workers')", "workers", priority=True),
            Binding("p", "pause", "pause/resume", priority=True),
            Binding("question_mark", "help", "help", priority=True),
        ]

        def __init__(self, url: str | None = None, interval: float = 1.0, inspector: Inspector | None = None):
            super().__init__()
            self.interval = interval
            # reads fail fast (no retry window): the next tick is the retry, and the UI says so meanwhile
            self.insp = inspector or Inspector(url, retry_for=0, socket_timeout=max(2.0, interval * 2))
            self.lock = threading.Lock()  # one Redis user at a time: the refresh thread or a pause
            self.view = "queues"
            self.snap: dict | None = None
            self.error: str | None = None
            self.note = ""
            self.fetching = False
            self.selected = {"queues": None, "workers": None}

        def compose(self) -> ComposeResult:
            yield Static("xq top: connecting ...", id="status", markup=False)
            with Vertical(id="tables"):
                yield DataTable(id="queues", cursor_type="row", zebra_stripes=True)
                yield DataTable(id="workers", cursor_type="row", zebra_stripes=True)
            yield Static("", id="detail", markup=False)
            yield Static(HELP, id="help", markup=False)
            yield Static("q quit  tab/1/2 queues|workers  up/down select  enter detail  p pause/resume  ? help",
                         id="keys")

        def on_mount(self) -> None:
            self.query_one("#queues", DataTable).add_columns(*QUEUE_COLUMNS)
            self.query_one("#workers", DataTable).add_columns(*WORKER_COLUMNS)
            self.query_one("#help").display = False
            self._show_view()
            self.tick()
            self.set_interval(self.interval, self.tick)

        # ---- reading (worker thread)
        def tick(self) -> None:
            if not self.fetching:  # a read still under way (slow Redis): skip this tick, never pile up
                self.fetching = True
                self.run_worker(self._fetch, thread=True, group="fetch")

        def _fetch(self) -> None:
            snap, error = None, None
            try:
                with self.lock:
                    snap = snapshot(self.insp, detail_queue=self.selected["queues"])
            except Exception as e:  # noqa: BLE001 - shown in the status line; the next tick retries
                error = _status_error(e)
            finally:
                self.fetching = False
            self._from_thread(self._render, snap, error)

        def _from_thread(self, fn, *args) -> None:
            try:
                self.call_from_thread(fn, *args)
            except RuntimeError:
                pass  # the app is exiting: nothing left to show it on

        # ---- rendering (UI thread)
        def _render(self, snap: dict | None, error: str | None) -> None:
            self.error = error
            if snap is not None:
                self.snap = snap
                self._fill("queues", queue_rows(snap))
                self._fill("workers", worker_rows(snap))
                if self.selected["queues"] != (snap["detail"] or {}).get("queue"):
                    self.tick()  # the selection moved (or the first fill made one): its detail now
            self._render_detail()
            self._render_status()

        def _fill(self, which: str, rows: list[tuple[str, list[str]]]) -> None:
            table = self.query_one(f"#{which}", DataTable)
            keep = self.selected[which]
            table.clear()
            for key, cells in rows:
                table.add_row(*(Text(c) for c in cells), key=key)  # Text: a "[" in a name is not markup
            keys = [k for k, _ in rows]
            if keys:
                row = keys.index(keep) if keep in keys else min(table.cursor_row, len(keys) - 1)
                table.move_cursor(row=max(0, row), animate=False)
                self.selected[which] = keys[max(0, row)]
            else:
                self.selected[which] = None

        def _render_status(self) -> None:
            url = ""
            if self.error:
                text = f"{self.error}; retrying every {self.interval:g}s ({redacted(self.insp.url)})"
            elif self.snap is None:
                text = "xq top: connecting ..."
            else:
                s = self.snap
                at = time.strftime("%H:%M:%S", time.localtime(s["time"]))
                text = (f"xq top  [{self.view}]  {len(s['queues'])} queue(s)  {len(s['workers'])} worker(s)  "
                        f"updated {at}")
                url = f"  {redacted(self.insp.url)}"  # last: a long (Cluster, Sentinel) URL is cut, not the rest
            if self.note:
                text += f"  | {self.note}"
            self.query_one("#status", Static).update(text + url)

        def _render_detail(self) -> None:
            pane = self.query_one("#detail", Static)
            if self.snap is None:
                pane.update("")
                return
            if self.view == "queues":
                d, sel = self.snap.get("detail"), self.selected["queues"]
                pane.update(queue_detail(d) if d and d["queue"] == sel else
                            f"queue {sel}: reading ..." if sel else queue_detail(None))
            else:
                w = next((w for w in self.snap["workers"] if str(w.get("id")) == self.selected["workers"]), None)
                pane.update(worker_detail(w, time.time()))

        def _show_view(self) -> None:
            for which in ("queues", "workers"):
                self.query_one(f"#{which}", DataTable).display = which == self.view
            self.query_one(f"#{self.view}", DataTable).focus()

        # ---- events and keys
        def on_data_table_row_highlighted(self, event) -> None:
            which = event.data_table.id
            if event.row_key is not None and event.row_key.value is not None:
                changed = self.selected[which] != event.row_key.value
                self.selected[which] = event.row_key.value
                if changed:
                    self._render_detail()
                    if which == "queues":
                        self.tick()  # fetch the new queue's per-name counts now, not at the next tick

        def on_data_table_row_selected(self, event) -> None:
            pane = self.query_one("#detail")
            pane.display = not pane.display

        def action_switch(self) -> None:
            self.action_view("workers" if self.view == "queues" else "queues")

        def action_view(self, view: str) -> None:
            self.view = view
            self._show_view()
            self._render_detail()
            self._render_status()

        def action_help(self) -> None:
            pane = self.query_one("#help")
            pane.display = not pane.display

        def action_pause(self) -> None:
            q = self.selected["queues"]
            if self.view != "queues" or q is None:
                self.note = "p pauses the selected queue: switch to the queues view (1) first"
                self._render_status()
                return
            self.run_worker(lambda: self._toggle_pause(q), thread=True, group="pause")

        def _toggle_pause(self, queue: str) -> None:
            try:
                with self.lock:
                    if self.insp.paused(queue):
                        self.insp.resume_queue(queue)
                        note = f"resumed queue {queue}"
                    else:
                        self.insp.pause_queue(queue)
                        note = f"paused queue {queue}"
            except Exception as e:  # noqa: BLE001 - shown, never a traceback
                note = f"could not pause/resume {queue}: {_reason(e)}"
            self.note = note
            self._from_thread(self.tick)
            self._from_thread(self._render_status)

        def on_unmount(self) -> None:
            # a read stuck on an unresponsive Redis holds the lock for up to its socket timeout: quit anyway
            if self.lock.acquire(timeout=0.5):
                self.insp.close()
                self.lock.release()

    return TopApp


def _status_error(e: Exception) -> str:
    """The status line of a failed refresh: Redis unreachable (the common case), or what else went wrong."""
    reason = _reason(e)
    if isinstance(e, ConnectionLost):  # "Redis at URL unreachable: why": the status line names the URL already
        return "Redis unreachable: " + (reason.partition(" unreachable: ")[2] or reason)
    return f"refresh failed: {reason}"


def _reason(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def run(url: str | None = None, interval: float = 1.0) -> None:
    """Run the dashboard in this terminal until q (needs textual: ImportError otherwise)."""
    app = app_class()(url, interval)
    app.run()
