"""Operator-facing reads of a running fleet (and the few operator writes): one small set of functions that
the CLI, Producer and later `xq top`, the dashboard and the HTTP API share.

    with Inspector("redis://...") as i:
        i.workers()             # the live supervisors, newest heartbeat first
        i.worker(worker_id)     # one of them, or None
        i.pause_queue("q"); i.paused("q"); i.resume_queue("q")

Sync, built on xq.broker.Broker like xq/producer.py.  Reads never block a supervisor and are lenient: a
record that cannot be parsed is shown with what is wrong with it (xq/records.py) rather than raising.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import orjson

from .broker import DEFAULT_URL, Broker
from .errors import ConfigError
from .keys import check_int, check_queue, queue_keys
from .producer import id_time, retry_window
from .records import cut as _cut, esc, task_view

__all__ = ["Inspector", "NotIndexed"]

Progress = Callable[[int, "int | None"], None]  # progress(done, total or None): bulk operations report
BULK_CHUNK = 1000  # ids per script call of a bulk operation: ~5-15 ms of Redis time (docs/design.md)
MAX_CHUNK = 5000
BULK_DEPTH = 4     # script calls per round trip
FLUSHABLE = ("queued", "scheduled", "retrying", "dead")

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
        """The counts of one queue, read in one round trip (script QSTATS, read-only):

        ready (per priority level 0..9, and in all), scheduled, retrying, running (leased), waiting,
        dead, paused (and since when), latency (seconds since the oldest ready task was enqueued: the
        head of the highest-priority non-empty ready list and its record's `enq`, against Redis TIME).
        scheduled and retrying share one sorted set: they are told apart by the record's state for the
        first `sample` (soonest due) ids; beyond that the split is a lower bound on retrying
        ("sched_split_exact" False).  Waiting tasks have no index: they are found through the hooked
        set (waiting_exact False when it holds more than `sample` ids).  by_name: counts per task name
        over the first `sample` ids of each list and set (a sample when "by_name_exact" is False)."""
        qk = queue_keys(check_queue(queue))
        check_int("sample", sample, 1, 100000)
        (ready, nsched, retrying, looked, nleases, ndead, paused, head, head_enq, now, waiting,
         waiting_exact, names) = self.broker.queue_stats(qk, sample, by_name)
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
        if by_name:
            out["by_name"] = {esc(n): dict(zip(STATES_BY_NAME, row)) for n, row in zip(names[::2], names[1::2])}
            out["by_name_exact"] = max(ready + [nsched, nleases, ndead]) <= sample and bool(waiting_exact)
        return out

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

    # ---------------------------------------------------------------- bulk operations (issue 11)
    def flush(self, queue: str, state: str, *, progress: Progress | None = None, chunk: int = BULK_CHUNK,
              result_ttl: int = 86400) -> int:
        """Delete every task of the queue in one state: queued, scheduled, retrying or dead (records and
        index entries); returns how many.  What a task's end sets off happens as for a canceled task, with
        the state 'flushed' (its unique key is released, its group counts it out, its dependents die unless
        they run on failure).  Running tasks are never flushed (cancel them), nor waiting ones.  Tasks
        added while it runs may stay: it looks at as many as the queue held when it started (scheduled and
        retrying: one ZSCAN pass of their set).  Chunks of `chunk` ids per script call, BULK_DEPTH calls
        per round trip; progress(done, total) after each round trip."""
        qk = queue_keys(check_queue(queue))
        if state not in FLUSHABLE:
            why = {"running": "running tasks are never flushed: cancel them (xq cancel ID)",
                   "waiting": "waiting tasks have no index to flush them by: flush or cancel what they wait for"
                   }.get(state, f"expected one of {', '.join(FLUSHABLE)}")
            raise ConfigError(f"cannot flush state {state!r}: {why}")
        check_int("chunk", chunk, 1, MAX_CHUNK)
        counts = self.broker.counts(qk)
        total = {"queued": counts["queued"], "dead": counts["dead"]}.get(state, counts["sched"])
        deleted = looked = 0
        if state in ("queued", "dead"):
            while looked < total:  # bounded: each round looks at >= 1 id of `total`, or ends the loop
                left = total - looked
                sizes = [min(chunk, left - k * chunk) for k in range(BULK_DEPTH) if left > k * chunk]
                if state == "queued":
                    replies = self.broker.exchange([self.broker.pack_flush(qk, state, n, ttl=result_ttl)
                                                    for n in sizes])
                    d, n = sum(r[0] for r in replies), sum(r[1] for r in replies)
                else:
                    d = n = sum(self.broker.exchange([self.broker.pack_purge(qk, n) for n in sizes]))
                deleted, looked = deleted + d, looked + n
                if progress:
                    progress(min(looked, total), total)
                if n < sum(sizes):
                    break  # emptied (by us, or by supervisors claiming meanwhile)
        else:
            cursor = b"0"
            for _ in range(4 * total // chunk + 100):  # a ZSCAN pass takes about size/chunk steps
                d, n, cursor = self.broker.exchange([self.broker.pack_flush(qk, state, chunk, cursor,
                                                                            result_ttl)])[0]
                deleted, looked = deleted + d, looked + n
                if progress:
                    progress(min(looked, total), total)
                if cursor == b"0":
                    break
        return deleted

    def delete_queue(self, queue: str, *, progress: Progress | None = None, count: int = BULK_CHUNK) -> dict:
        """Delete every key of the queue (SCAN MATCH xq:{Q}:* in steps of `count`, each step's keys UNLINKed
        with the next step, one round trip each) and its entry in xq:queues, last, so a delete cut short
        still lists the queue and can be run again.  Returns {"queue", "keys" deleted, "tasks" (queued +
        scheduled + running + dead when it started), "running", "workers" (ids of live supervisors serving
        it)}.  Running tasks go on in their supervisors: their results are refused (no record to write) and
        logged; a supervisor still serving the queue just finds it empty, and may re-create its
        bookkeeping keys (the wake marker), as a producer enqueueing to it re-creates the queue: stop them
        first.  progress(keys deleted, None) after each step."""
        qk = queue_keys(check_queue(queue))
        check_int("count", count, 1, MAX_CHUNK)
        counts = self.broker.counts(qk)
        serving = [w["id"] for w in self.workers() if queue in (w.get("queues") or ())]
        bound = self.broker.dbsize() // count * 2 + 100  # a SCAN pass takes about dbsize/count steps
        cursor, found, deleted = 0, [], 0
        for _ in range(bound):
            n, (cursor, keys) = self.broker.unlink_scan(qk, cursor, count, found)
            deleted += n
            found = keys
            if progress:
                progress(deleted, None)
            if cursor == 0:
                break
        deleted += self.broker.unlink(found)
        self.broker.forget_queue(queue)
        if progress:
            progress(deleted, None)
        return {"queue": queue, "keys": deleted, "running": counts["running"], "workers": serving,
                "tasks": counts["queued"] + counts["sched"] + counts["running"] + counts["dead"]}


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
