"""Lenient readers of task and group records, for every inspection path (status, listings, the CLI).

A record may have been written by any producer (docs/protocol.md invites other languages), by hand, or
be damaged; the supervisor fails such a task alone, and inspection must show it, never crash on it.
So nothing here raises on a record's contents: text that is not UTF-8 is shown with backslash escapes
(b"\\xff" -> "\\\\xff"), a number or JSON value that does not parse is kept as its (escaped) raw text,
and the view's "malformed" list says, one entry per bad field, what is wrong with it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .app import DEFAULT_MAX_RETRIES
from .keys import DEFAULT_PRIORITY, PRIORITIES


def esc(value: bytes | str | None) -> str | None:
    """bytes as text: UTF-8, with any byte that is not valid UTF-8 as a backslash escape."""
    if value is None or isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "backslashreplace")


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"


class Fields:
    """A raw record (HGETALL reply: bytes -> bytes) read leniently; each bad field noted in .malformed."""

    __slots__ = ("raw", "malformed", "truncated")

    def __init__(self, raw: dict, truncated: dict | None = None):
        self.raw = raw or {}
        self.malformed: list[str] = []
        self.truncated = truncated or {}  # field -> its full length in bytes (the value was cut)

    def _note(self, field: str, what: str) -> None:
        msg = f"{field}: {what}"
        if msg not in self.malformed:
            self.malformed.append(msg)

    def get(self, field: str) -> bytes | None:
        v = self.raw.get(field.encode())
        return None if v is None else bytes(v)

    def text(self, field: str, default: str | None = None) -> str | None:
        """The field as text ('' counts as absent), escaped if it is not UTF-8."""
        v = self.get(field)
        if not v:
            return default
        try:
            return v.decode()
        except UnicodeDecodeError:
            if field not in self.truncated:  # a cut may split a character: not the record's fault
                self._note(field, "not UTF-8 (shown with backslash escapes)")
            return esc(v)

    def int(self, field: str, default: Any = None, lo: int | None = None, hi: int | None = None) -> Any:
        """The field as an integer; absent: default; not an integer (or out of lo..hi): its raw text."""
        v = self.get(field)
        if not v:
            return default
        try:
            n = int(v)
        except ValueError:
            self._note(field, f"{_short(esc(v))!r} is not an integer")
            return esc(v)
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            self._note(field, f"{n} is out of range {lo}..{hi}")
        return n

    def ms(self, field: str) -> Any:
        """A time in ms as unix seconds; absent: None; not a number: its raw text."""
        v = self.get(field)
        if not v:
            return None
        try:
            return int(v) / 1000.0
        except ValueError:
            try:
                return float(v) / 1000.0  # Lua may write a float
            except ValueError:
                self._note(field, f"{_short(esc(v))!r} is not a time in ms")
                return esc(v)

    def json(self, field: str, default: Any = None) -> Any:
        """The field parsed as JSON; absent: default; not JSON: its raw text."""
        v = self.get(field)
        if not v:
            return default
        try:
            return orjson.loads(v)
        except orjson.JSONDecodeError as e:
            if field not in self.truncated:  # a listing cut it (named in "truncated"): not the record's fault
                self._note(field, f"not JSON ({e})")
            return esc(v)


def _hist_time(fields: Fields, value) -> Any:
    if value in (None, "", 0):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value / 1000.0
    fields._note("hist", f"a time {_short(repr(value))} is not a number")
    return value


def history(fields: Fields) -> list[dict]:
    """The attempt history of a record (its "hist" JSON), each entry checked."""
    raw = fields.json("hist", [])
    if isinstance(raw, str):  # not JSON: noted by json()
        return []
    if not isinstance(raw, list):
        fields._note("hist", f"expected a JSON list, got {type(raw).__name__}")
        return []
    out = []
    for h in raw:
        if not isinstance(h, dict):
            fields._note("hist", f"an entry {_short(repr(h))} is not an object")
            continue
        out.append({"attempt": h.get("n"), "worker": h.get("worker") or None,
                    "started_at": _hist_time(fields, h.get("start")),
                    "finished_at": _hist_time(fields, h.get("end")),
                    "outcome": h.get("outcome"), "error": h.get("error") or None,
                    "traceback": h.get("traceback") or None})
    return out


_ESCAPED = re.compile(rb"\\x([0-9a-f]{2})")


def raw_id(task_id: bytes | str) -> bytes:
    """A task id as the bytes Redis holds: a str shown by esc() (an id that is not UTF-8, with backslash
    escapes) back to its bytes.  Unambiguous: a well-formed id has no backslash (keys.check_task_ids)."""
    if not isinstance(task_id, str):
        return task_id
    b = task_id.encode()
    return _ESCAPED.sub(lambda m: bytes([int(m[1], 16)]), b) if b"\\x" in b else b


def task_view(task_id: bytes | str, queue: str, raw: dict, truncated: dict | None = None,
              id_time=None) -> dict:
    """status() of a task from its raw record (non-empty HGETALL reply); never raises.

    truncated: {field: full length} of the fields a listing cut (see Broker.peek); id_time: a function
    giving the creation time embedded in an id (for records without "enq")."""
    f = Fields(raw, truncated)
    tid = esc(task_id)
    if isinstance(task_id, bytes):
        try:
            task_id.decode()
        except UnicodeDecodeError:
            f._note("id", "not UTF-8 (shown with backslash escapes)")
    state = f.text("state", "")
    if not state:
        f._note("state", "missing")
    name = f.text("name", "")
    if not name:
        f._note("name", "missing")
    hist = history(f)
    attempts = f.int("att", 0, lo=0)
    att_n = attempts if isinstance(attempts, int) else 0
    if state in ("running", "done") or (state == "canceled" and f.get("claimed") and not
                                        (hist and hist[-1]["attempt"] == att_n)):
        # the current (or successful) attempt is the record itself
        started = f.ms("started")
        hist.append({"attempt": attempts, "worker": f.text("worker"),
                     "started_at": started if started is not None else f.ms("claimed"),
                     "finished_at": f.ms("fin") if state != "running" else None,
                     "outcome": {"running": "running", "done": "done"}.get(state, state),
                     "error": None, "traceback": None})
    due = f.ms("due")
    enq = f.ms("enq")
    deps = f.json("deps", [])
    view = {
        "id": tid,
        "queue": queue,
        "name": name,
        "status": state,
        "attempts": attempts,
        "max_retries": f.int("maxr", DEFAULT_MAX_RETRIES, lo=0),
        "priority": f.int("pri", DEFAULT_PRIORITY, lo=0, hi=PRIORITIES - 1),
        "enqueued_at": enq if enq is not None else (id_time(tid) if id_time else None),
        "claimed_at": f.ms("claimed"),
        # the handler's start is written with the outcome; while it runs, the claim's time stands for it (as
        # in its history), at most a ring's worth of queued work (~100 ms) early
        "started_at": f.ms("started") if state != "running" or f.get("started") else f.ms("claimed"),
        "finished_at": f.ms("fin"),
        "worker": f.text("worker"),
        # a done task's record may still hold an earlier attempt's error (it is in the history)
        "error": None if state == "done" else f.text("error"),
        "eta": due if state == "scheduled" else None,
        "next_attempt_at": due if state == "retrying" else None,
        "expires_at": f.ms("exp"),
        "timeout": None,
        "dead_at": f.ms("dead"),
        "reason": f.text("reason"),
        "cancel_requested_at": f.ms("cxl"),
        "replays": f.int("replays", 0),
        "history": hist,
        # flow control
        "unique_key": f.text("uk"),
        "depends_on": deps,
        "pending_dependencies": f.int("npend", 0) if state == "waiting" else 0,
        "group": f.text("grp") or f.text("grpcb"),
        "limits": f.json("lim"),
        "progress": f.json("progress"),  # {"pct", "msg", "ts"}
    }
    to = f.int("to")
    view["timeout"] = to / 1000.0 if isinstance(to, int) else to
    if f.truncated:
        view["truncated"] = {k: n for k, n in f.truncated.items()}
    view["malformed"] = f.malformed
    return view


def group_view(group_id: str, queue: str, raw: dict) -> dict:
    """group_status() of a group from its raw hash (non-empty); never raises."""
    f = Fields(raw)
    return {"id": group_id, "queue": queue, "total": f.int("total", 0), "left": f.int("left", 0),
            "sealed": f.get("sealed") == b"1", "finished": f.get("fired") is not None,
            "callback": f.text("cb"), "malformed": f.malformed}


def cut(text: Any, n: int = 200) -> str:
    """text for one line of a listing: at most n characters, and how many more there were."""
    s = "" if text is None else str(text)
    return s if len(s) <= n else f"{s[:n]}... [{len(s) - n} more chars]"
