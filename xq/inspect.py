"""Operator-facing reads of a running fleet (and the few operator writes): one small set of functions that
the CLI, Producer and later `xq top`, the dashboard and the HTTP API share.

    with Inspector("redis://...") as i:
        i.workers()             # the live supervisors, newest heartbeat first
        i.worker(worker_id)     # one of them, or None
        i.pause_queue("q"); i.paused("q"); i.resume_queue("q")
        i.history("q", name="resize", minutes=60)   # per-minute done/failed/retried/runtime

Sync, built on xq.broker.Broker like xq/producer.py.  Reads never block a supervisor and are lenient: a
record that cannot be parsed is shown with what is wrong with it (xq/records.py) rather than raising.
"""

from __future__ import annotations

import os
import time

import orjson

from .broker import DEFAULT_URL, Broker
from .errors import ConfigError
from .keys import check_int, check_name, check_queue, queue_keys
from . import stats as _stats
from .producer import id_time, retry_window
from .records import cut as _cut, esc, task_view

__all__ = ["Inspector", "NotIndexed"]

SAMPLE = 200    # ids looked at per list or set by queue(): the sched split, the waiting walk, by_name
                # (about 1 ms of Redis time at the cap, measured: docs/design.md)
SCAN = 10000    # ids looked at most by a filtered tasks() listing
STATES_BY_NAME = ("queued", "scheduled", "retrying", "running", "waiting", "dead")
LISTED = ["queued", "scheduled", "retrying", "running", "waiting", "dead"]
FINISHED = ["done", "expired", "canceled"]
ROW_FIELDS = ("name", "state", "pri", "enq", "due", "att", "maxr", "claimed", "started", "worker", "error",
              "dead", "reason", "npend", "deps", "exp")


class NotIndexed(Exception):
    """A listing that needs an index xq does not keep yet (finished tasks)."""


class Inspector:
    """Reads of queues, tasks and workers over one Redis; Producer delegates to one sharing its Broker."""

    def __init__(self, url: str | None = None, *, retry_for: float | None = None, socket_timeout: float = 30.0,
                 broker: Broker | None = None):
        self.url = url or os.environ.get("XQ_REDIS_URL") or DEFAULT_URL
        self._own = broker is None
        self.broker = broker or Broker(self.url, retry_for=retry_window(retry_for), socket_timeout=socket_timeout)

    def close(self) -> None:
        if self._own:
            self.broker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- pause / resume
    def paused(self, queue: str) -> bool:
        """Is the queue paused (no supervisor claims from it)?"""
        return self.paused_since(queue) is not None

    def paused_since(self, queue: str) -> float | None:
        """When the queue was paused (seconds since the epoch, the pauser's clock), or None if it is not."""
        return self.broker.paused_since([queue_keys(check_queue(queue))])[0]

    def pause_queue(self, queue: str) -> bool:
        """Pause the queue: every supervisor's next claim skips it (tasks running now finish; due scheduled
        and retrying tasks stay scheduled).  Kept in Redis, so it outlives supervisor restarts.  Returns
        False if it was paused already."""
        qk = queue_keys(check_queue(queue))
        self.broker.register_queue(queue)
        return self.broker.set_paused(qk, True)

    def resume_queue(self, queue: str) -> bool:
        """Resume the queue and wake idle supervisors.  Returns False if it was not paused."""
        return self.broker.set_paused(queue_keys(check_queue(queue)), False)

    # ---------------------------------------------------------------- worker registry
    def workers(self) -> list[dict]:
        """Every live supervisor's registry record (xq/supervisor/registry.py), newest heartbeat first.
        A supervisor that stopped cleanly is gone at once; one that died, once its record expired (3
        heartbeats).  Each record gains `age`: seconds since its last heartbeat."""
        now = time.time()
        out = []
        for wid, _score, raw in self.broker.workers():
            if raw is None:
                continue  # expired: the worker died (its index entry is pruned by live workers later)
            out.append(_worker_view(wid, raw, now))
        return out

    def worker(self, worker_id: str) -> dict | None:
        """One supervisor's registry record, or None if it is not alive (unknown, stopped, or expired)."""
        raw = self.broker.worker_record(worker_id)
        return None if raw is None else _worker_view(worker_id, raw, time.time())

    # ---------------------------------------------------------------- queues and tasks (issue 11)
    def queues(self, by_name: bool = False) -> list[dict]:
        """queue() of every queue ever enqueued to (xq:queues), by name; one round trip per queue."""
        return [self.queue(q, by_name=by_name) for q in self.broker.queues()]

    def queue(self, queue: str, by_name: bool = False, sample: int = SAMPLE) -> dict:
        """The counts of one queue, read in one round trip (script QSTATS, read-only), and its done and
        failed attempts of the last minute and hour from the stats history (a second round trip):

        ready (per priority level 0..9, and in all), scheduled, retrying, running (leased), waiting,
        dead, paused (and since when), latency (seconds since the oldest ready task was enqueued: the
        head of the highest-priority non-empty ready list and its record's `enq`, against Redis TIME).
        scheduled and retrying share one sorted set: they are told apart by the record's state for the
        first `sample` (soonest due) ids; beyond that the split is a lower bound on retrying
        ("sched_split_exact" False).  Waiting tasks have no index: they are found through the hooked
        set (waiting_exact False when it holds more than `sample` ids).  by_name: counts per task name
        over the first `sample` ids of each list and set (a sample when "by_name_exact" is False), with a
        row for every name with stats history too.  done_1m, failed_1m, done_1h, failed_1h (the queue's and
        each name's): rolling windows of the last 60 s and 60 min, estimated from whole minutes (see
        stats.rolling); "failed" counts failed attempts, retried or dead."""
        qk = queue_keys(check_queue(queue))
        check_int("sample", sample, 1, 100000)
        (ready, nsched, retrying, looked, nleases, ndead, paused, head, head_enq, now, waiting,
         waiting_exact, names) = self.broker.queue_stats(qk, sample, by_name)
        at = time.time()
        latency = None
        if head:
            try:  # enq: a foreign producer's; xq's own ids carry their creation time instead
                enq_ms = int(head_enq) if head_enq else int(id_time(esc(head)) * 1000)
                latency = round(max(0, now - enq_ms) / 1000.0, 3)
            except (TypeError, ValueError):
                latency = None  # neither a readable enq nor an xq id (written by hand, or gone)
        out = {
            "queue": queue,
            "paused": bool(paused),
            "paused_since": _ms(paused),
            "ready": sum(ready),
            "ready_by_priority": {str(p): n for p, n in enumerate(ready)},
            "scheduled": nsched - retrying,
            "retrying": retrying,
            "sched_split_exact": looked >= nsched,
            "running": nleases,
            "waiting": waiting,
            "waiting_exact": bool(waiting_exact),
            "dead": ndead,
            "latency": latency,
            "oldest_ready_id": esc(head) if head else None,
        }
        rows = {esc(n): dict(zip(STATES_BY_NAME, row)) for n, row in zip(names[::2], names[1::2])}
        if by_name:  # names that ran lately but have no task in any state now get a row too
            for n in self.history_names(queue, now=at):
                rows.setdefault(n, dict.fromkeys(STATES_BY_NAME, 0))
        # one more round trip: the last 61 minutes of history of the queue (and of each name)
        keys = [None, *sorted(rows)] if by_name else [None]
        for key, hist in zip(keys, self._histories(qk, keys, 61, at)):
            target = out if key is None else rows[key]
            target["done_1m"], target["failed_1m"] = _stats.rolling(hist, at, 1)
            target["done_1h"], target["failed_1h"] = _stats.rolling(hist, at, 60)
        if by_name:
            out["by_name"] = {n: rows[n] for n in sorted(rows)}
            out["by_name_exact"] = max(ready + [nsched, nleases, ndead]) <= sample and bool(waiting_exact)
        return out

    # ---------------------------------------------------------------- stats history
    def history(self, queue: str, *, name: str | None = None, minutes: int = 60,
                now: float | None = None) -> list[dict]:
        """The stats history of the queue (name None) or of one task name, one dict per minute, oldest
        first, ending with the current minute (so far): {"minute": unix seconds of its start, "done",
        "failed" (= "retried" + "dead"), "retried", "dead", "runtime": seconds of run time of the attempts
        that ended in it}.  Minutes with nothing have zeros.  minutes 1..1500 (kept 24 h at least); now:
        the clock to read at (seconds since the epoch; default this machine's).  One round trip."""
        qk = queue_keys(check_queue(queue))
        check_int("minutes", minutes, 1, _stats.MAX_MINUTES)
        if name is not None:
            check_name(name)
        at = time.time() if now is None else now
        return [m.as_dict() for m in self._histories(qk, [name], minutes, at)[0]]

    def history_names(self, queue: str, *, now: float | None = None) -> list[str]:
        """The task names of the queue with stats history (written within the last 25 hours), sorted."""
        qk = queue_keys(check_queue(queue))
        at = time.time() if now is None else now
        return sorted(esc(n) for n in self.broker.stats_names(qk, int(at // 3600) - _stats.HOURS))

    def _histories(self, qk, names: list, minutes: int, now: float) -> list[list]:
        """stats.Minute lists of each name (None: the whole queue), in one pipelined round trip."""
        last = int(now // 60)
        first = last - minutes + 1
        spans = _stats.ranges(first, last)
        reads = [(qk.stats(hour, name), lo, hi) for name in names for hour, lo, hi in spans]
        got = self.broker.stats_ranges(reads)
        k = len(spans)
        return [_stats.decode(first, last, got[i * k:(i + 1) * k]) for i in range(len(names))]

    def tasks(self, queue: str, state: str, *, name: str | None = None, offset: int = 0,
              limit: int = 50, scan: int = SCAN) -> dict:
        """One page of the tasks of a queue in one state, as rows (id, name, state, priority, times,
        attempts, error's first line, reason, malformed), read leniently (xq/records.py).  Order:
        queued: claim order (priority 0 first, oldest first within a level); scheduled, retrying: soonest
        due first; running: soonest lease deadline first; dead: oldest death first; waiting: oldest
        enqueue first (found through the hooked set, at most `scan` hooked ids).  With a name filter, or
        for scheduled/retrying (which share a set), at most `scan` ids are looked at ("complete" False
        when there may be more).  Finished states (done, expired, canceled) need an index not built yet:
        NotIndexed."""
        qk = queue_keys(check_queue(queue))
        if state in FINISHED:
            raise NotIndexed(f"--state {state}: finished tasks are not indexed yet (issue 11 keeps a capped "
                             f"index of recently finished ids for this; look one up with `xq status ID`)")
        if state not in LISTED:
            raise ConfigError(f"invalid state {state!r}: expected one of {', '.join(LISTED + FINISHED)}")
        if offset < 0 or limit < 1:
            raise ConfigError("offset must be >= 0 and limit >= 1")
        # unfiltered, Redis skips the first `offset` positions; filtered, we skip `offset` matches
        filtered = name is not None or state in ("scheduled", "retrying") or state == "waiting"
        skip = offset if filtered else 0
        rows, matched, complete = [], 0, True

        def take(task_id, raw, cut=None) -> bool:
            nonlocal matched
            if not raw:
                return True  # the record is gone meanwhile (finished and purged): skip it
            v = task_view(task_id, queue, raw, cut, id_time=id_time)
            if v["status"] != state or (name is not None and v["name"] != name):
                return True  # e.g. a canceled id still in a ready list (supervisors drop it when popped)
            matched += 1
            if matched > skip:
                rows.append(_task_row(v))
            return len(rows) < limit

        if state == "waiting":
            ids, complete = self.broker.waiting_ids(qk, scan)
            recs = self.broker.raw_records(qk, ids, ROW_FIELDS)
            born = [task_view(i, queue, raw, id_time=id_time)["enqueued_at"] if raw else None
                    for i, raw in zip(ids, recs)]
            order = sorted(range(len(ids)), key=lambda k: (born[k] if isinstance(born[k], float) else 0.0, ids[k]))
            for k in order:
                if not take(ids[k], recs[k]):
                    break
        else:
            pos, looked = (0 if filtered else offset), 0
            for _ in range(scan):  # bounded: each turn reads one chunk
                chunk = min(200, scan - looked) if filtered else limit
                if chunk <= 0:
                    complete = False
                    break
                if state == "queued":
                    ids = self.broker.ready_ids(qk, pos, chunk)
                    batch = list(zip(ids, self.broker.raw_records(qk, ids, ROW_FIELDS), [None] * len(ids)))
                else:
                    zset = {"scheduled": qk.sched, "retrying": qk.sched, "running": qk.leases,
                            "dead": qk.dead}[state]
                    batch = [(i, rec, cut) for i, _s, rec, cut in self.broker.peek(zset, qk, pos, chunk)]
                pos += len(batch)
                looked += len(batch)
                more = all(take(*row) for row in batch)
                if not more or len(batch) < chunk or not filtered:
                    break
        return {"queue": queue, "state": state, "offset": offset, "tasks": rows, "complete": complete}


def _worker_view(wid: str, raw: bytes, now: float) -> dict:
    try:
        rec = orjson.loads(raw)
        if not isinstance(rec, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        return {"id": wid, "malformed": [f"registry record: {e}"]}
    rec.setdefault("id", wid)
    hb = rec.get("heartbeat")
    if isinstance(hb, (int, float)):
        rec["age"] = round(max(0.0, now - hb), 3)
    return rec


def _ms(v) -> float | None:
    try:
        return int(v) / 1000.0 if v else None
    except (TypeError, ValueError):
        return None


def _task_row(v: dict) -> dict:
    """One row of tasks(): the listing fields of a task_view, the error cut to its first line."""
    err = v.get("error")
    first = err.strip().splitlines()[0] if isinstance(err, str) and err.strip() else None
    row = {k: v.get(k) for k in ("id", "name", "status", "priority", "attempts", "enqueued_at", "eta",
                                 "next_attempt_at", "claimed_at", "started_at", "worker", "dead_at", "reason",
                                 "pending_dependencies")}
    row["error"] = _cut(first, 200) if first else None
    if v.get("malformed"):
        row["malformed"] = v["malformed"]
    if v.get("truncated"):
        row["truncated"] = v["truncated"]
    return row
