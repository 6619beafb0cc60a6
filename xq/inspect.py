"""Operator-facing reads of a running fleet (and the few operator writes): one small set of functions that
the CLI, Producer and later `xq top`, the dashboard and the HTTP API share.

    with Inspector("redis://...") as i:
        i.workers()             # the live supervisors, newest heartbeat first
        i.worker(worker_id)     # one of them, or None
        i.pause_queue("q"); i.paused("q"); i.resume_queue("q")
        i.retention("q"); i.set_retention("q", keep=1000, max_age=3600)
        i.history("q", name="resize", minutes=60)   # per-minute done/failed/retried/runtime

Sync, built on xq.broker.Broker like xq/producer.py; AsyncInspector is its asyncio twin (AsyncProducer's),
running the same plans (plan_* below) on xq.aio's broker.  Reads never block a supervisor and are lenient: a
record that cannot be parsed is shown with what is wrong with it (xq/records.py) rather than raising.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import orjson

from .broker import DEFAULT_URL, Broker
from .errors import ConfigError
from . import stats as _stats
from .keys import MAX_KEEP, MAX_RESULT_TTL, check_int, check_name, check_queue, queue_keys
from .producer import call, drive, id_time, retention_view, retry_window
from .records import cut as _cut, esc, raw_id, task_view

__all__ = ["AsyncInspector", "Inspector"]

Progress = Callable[[int, "int | None"], None]  # progress(done, total or None): bulk operations report
BULK_CHUNK = 1000  # ids per script call of a bulk operation: ~5-15 ms of Redis time (docs/design.md)
MAX_CHUNK = 5000
BULK_DEPTH = 4     # script calls per round trip
FLUSHABLE = ("queued", "scheduled", "retrying", "dead")

SAMPLE = 200    # ids looked at per list or set by queue(): the sched split, the waiting walk, by_name
                # (about 1 ms of Redis time at the cap, measured: docs/design.md)
SCAN = 10000    # ids looked at most by a filtered tasks() listing
STATES_BY_NAME = ("queued", "scheduled", "retrying", "running", "waiting", "dead")
PREVIEW = 64 * 1024  # bytes of a payload decoded for display (Inspector.payload)
LISTED = ["queued", "scheduled", "retrying", "running", "waiting", "dead"]
FINISHED = ["done", "expired", "canceled"]
ROW_FIELDS = ("name", "state", "pri", "enq", "due", "att", "maxr", "claimed", "started", "worker", "error",
              "dead", "reason", "npend", "deps", "exp")


def run_plan(broker, plan):
    """Run an inspection plan (see plan_queue) on a sync Broker: its return value."""
    result = None
    try:
        while True:
            method, *args = plan.send(result)
            result = getattr(broker, method)(*args)
    except StopIteration as done:
        return done.value


class Inspector:
    """Reads of queues, tasks and workers over one Redis; Producer delegates to one sharing its Broker.
    Each method runs a plan_* of this module (shared with the asyncio twin, AsyncInspector)."""

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
        return run_plan(self.broker, plan_paused_since(queue))

    def pause_queue(self, queue: str) -> bool:
        """Pause the queue: every supervisor's next claim skips it (tasks running now finish; due scheduled
        and retrying tasks stay scheduled).  Kept in Redis, so it outlives supervisor restarts.  Returns
        False if it was paused already."""
        return run_plan(self.broker, plan_pause_queue(queue))

    def resume_queue(self, queue: str) -> bool:
        """Resume the queue and wake idle supervisors.  Returns False if it was not paused."""
        return run_plan(self.broker, plan_resume_queue(queue))

    # ---------------------------------------------------------------- retention
    def retention(self, queue: str) -> dict:
        """The queue's retention policy (keep: finished records kept per final state; max_age: seconds,
        None for the result ttl; keep_dead: dead letters kept; "defaults": the fields not set), what the
        scripts removed so far (trimmed: count, trimmed_newest: finish time of the newest removed,
        trimmed_at) and the sizes of the finished indexes (done, canceled, expired, dead)."""
        return run_plan(self.broker, plan_retention(queue))

    def set_retention(self, queue: str, *, keep: int | None = None, max_age: int | None = None,
                      keep_dead: int | None = None, reset: bool = False) -> dict:
        """Set the queue's retention policy: keep (1..10^9 finished records per final state), max_age
        (seconds, 1..10^11; 0: back to the result ttl), keep_dead (1..10^9 dead letters); reset first
        puts every field back to its default.  Read by every finishing script from its next call; a lower
        cap is caught up over a few calls.  Returns retention()."""
        return run_plan(self.broker, plan_set_retention(queue, keep, max_age, keep_dead, reset))

    # ---------------------------------------------------------------- worker registry
    def workers(self) -> list[dict]:
        """Every live supervisor's registry record (xq/supervisor/registry.py), newest heartbeat first.
        A supervisor that stopped cleanly is gone at once; one that died, once its record expired (3
        heartbeats).  Each record gains `age`: seconds since its last heartbeat."""
        return run_plan(self.broker, plan_workers())

    def worker(self, worker_id: str) -> dict | None:
        """One supervisor's registry record, or None if it is not alive (unknown, stopped, or expired)."""
        return run_plan(self.broker, plan_worker(worker_id))

    # ---------------------------------------------------------------- queues and tasks (issue 11)
    def queues(self, by_name: bool = False) -> list[dict]:
        """queue() of every queue ever enqueued to (xq:queues), by name; one round trip per queue."""
        return run_plan(self.broker, plan_queues(by_name))

    def queue(self, queue: str, by_name: bool = False, sample: int = SAMPLE) -> dict:
        """The counts of one queue, read in one round trip (script QSTATS, read-only), and its done and
        failed attempts of the last minute and hour from the stats history (a second round trip):

        ready (per priority level 0..9, and in all), scheduled, retrying, running (leased), waiting,
        dead, paused (and since when), latency (seconds since the oldest ready task was enqueued, or became
        due if it was scheduled, retried or replayed: the head of the highest-priority non-empty ready list
        and its record's `enq` or id time and `due`, against Redis TIME).
        scheduled and retrying share one sorted set: they are told apart by the record's state for the
        first `sample` (soonest due) ids; beyond that the split is a lower bound on retrying
        ("sched_split_exact" False).  Waiting tasks have no index: they are found through the hooked
        set (waiting_exact False when it holds more than `sample` ids).  by_name: counts per task name
        over the first `sample` ids of each list and set (a sample when "by_name_exact" is False), with a
        row for every name with stats history too.  done_1m, failed_1m, done_1h, failed_1h (the queue's and
        each name's): rolling windows of the last 60 s and 60 min, estimated from whole minutes (see
        stats.rolling); "failed" counts failed attempts, retried or dead."""
        return run_plan(self.broker, plan_queue(queue, by_name, sample))

    # ---------------------------------------------------------------- stats history
    def history(self, queue: str, *, name: str | None = None, minutes: int = 60,
                now: float | None = None) -> list[dict]:
        """The stats history of the queue (name None) or of one task name, one dict per minute, oldest
        first, ending with the current minute (so far): {"minute": unix seconds of its start, "done",
        "failed" (= "retried" + "dead"), "retried", "dead", "runtime": seconds of run time of the attempts
        that ended in it}.  Minutes with nothing have zeros.  minutes 1..1500 (kept 24 h at least); now:
        the clock to read at (seconds since the epoch; default this machine's).  One round trip."""
        return run_plan(self.broker, plan_history(queue, name, minutes, now))

    def history_names(self, queue: str, *, now: float | None = None) -> list[str]:
        """The task names of the queue with stats history (written within the last 25 hours), sorted."""
        return run_plan(self.broker, plan_history_names(queue, now))

    def tasks(self, queue: str, state: str, *, name: str | None = None, offset: int = 0,
              limit: int = 50, scan: int = SCAN) -> dict:
        """One page of the tasks of a queue in one state, as rows (id, name, state, priority, times,
        attempts, error's first line, reason, malformed), read leniently (xq/records.py).  Order:
        queued: claim order (priority 0 first, oldest first within a level); scheduled, retrying: soonest
        due first; running: soonest lease deadline first; dead: oldest death first; waiting: oldest
        enqueue first (found through the hooked set, at most `scan` hooked ids); done, expired, canceled:
        newest finished first, from the queue's capped index of finished ids (see retention()).  With a
        name filter, or for scheduled/retrying (which share a set), at most `scan` ids are looked at
        ("complete" False when there may be more)."""
        return run_plan(self.broker, plan_tasks(queue, state, name, offset, limit, scan))

    def payload(self, queue: str, task_id: str, *, preview: int = PREVIEW) -> dict | None:
        """A task's payload for display, or None if it has no record: {"size" (bytes), "bytes" (True for
        a raw-bytes payload), "json" (the decoded payload, JSON only and only when size <= preview, else
        None), "malformed" (a note if the stored JSON does not decode)}.  One round trip (HGETALL)."""
        return run_plan(self.broker, plan_payload(queue, task_id, preview))

    def task(self, queue: str, task_id: str, *, preview: int = PREVIEW) -> dict | None:
        """status() of a task plus its payload and result for display, or None if it has no record: see
        plan_task.  One round trip (script RECORD): a payload or result over `preview` bytes is not read."""
        return run_plan(self.broker, plan_task(queue, task_id, preview))

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
        return drive(op_flush(self.broker, queue, state, progress, chunk, result_ttl))

    def delete_queue(self, queue: str, *, progress: Progress | None = None, count: int = BULK_CHUNK) -> dict:
        """Delete every key of the queue (SCAN MATCH xq:{Q}:* in steps of `count`, each step's keys UNLINKed
        with the next step, one round trip each) and its entry in xq:queues, last, so a delete cut short
        still lists the queue and can be run again.  Returns {"queue", "keys" deleted, "tasks" (queued +
        scheduled + running + dead when it started), "running", "workers" (ids of live supervisors serving
        it)}.  Running tasks go on in their supervisors: their results are refused (no record to write) and
        logged; a supervisor still serving the queue just finds it empty, and may re-create its
        bookkeeping keys (the wake marker), as a producer enqueueing to it re-creates the queue: stop them
        first.  progress(keys deleted, None) after each step."""
        return drive(op_delete_queue(self.broker, queue, progress, count))


def plan_calls(broker, plan):
    """An inspection plan (steps ("method", *args) on broker) as an operation yielding producer.Calls."""
    result = None
    try:
        while True:
            method, *args = plan.send(result)
            result = yield call(broker, method, *args)
    except StopIteration as done:
        return done.value


def op_flush(broker, queue: str, state: str, progress: Progress | None, chunk: int, result_ttl: int):
    """Inspector.flush as an operation (steps: producer.Call), shared with Producer / AsyncProducer.flush."""
    qk = queue_keys(check_queue(queue))
    if state not in FLUSHABLE:
        why = {"running": "running tasks are never flushed: cancel them (xq cancel ID)",
               "waiting": "waiting tasks have no index to flush them by: flush or cancel what they wait for"
               }.get(state, f"expected one of {', '.join(FLUSHABLE)}")
        raise ConfigError(f"cannot flush state {state!r}: {why}")
    check_int("chunk", chunk, 1, MAX_CHUNK)
    counts = yield call(broker, "counts", qk)
    node = yield call(broker, "at", queue)  # the raw path to the queue's slot (its master on a Cluster)
    total = {"queued": counts["queued"], "dead": counts["dead"]}.get(state, counts["sched"])
    deleted = looked = 0
    if state in ("queued", "dead"):
        while looked < total:  # bounded: each round looks at >= 1 id of `total`, or ends the loop
            left = total - looked
            sizes = [min(chunk, left - k * chunk) for k in range(BULK_DEPTH) if left > k * chunk]
            if state == "queued":
                replies = yield call(node, "exchange", [node.pack_flush(qk, state, n, ttl=result_ttl)
                                                        for n in sizes])
                d, n = sum(r[0] for r in replies), sum(r[1] for r in replies)
            else:
                d = n = sum((yield call(node, "exchange", [node.pack_purge(qk, n) for n in sizes])))
            deleted, looked = deleted + d, looked + n
            if progress:
                progress(min(looked, total), total)
            if n < sum(sizes):
                break  # emptied (by us, or by supervisors claiming meanwhile)
    else:
        cursor = b"0"
        for _ in range(4 * total // chunk + 100):  # a ZSCAN pass takes about size/chunk steps
            d, n, cursor = (yield call(node, "exchange", [node.pack_flush(qk, state, chunk, cursor,
                                                                         result_ttl)]))[0]
            deleted, looked = deleted + d, looked + n
            if progress:
                progress(min(looked, total), total)
            if cursor == b"0":
                break
    return deleted


def op_delete_queue(broker, queue: str, progress: Progress | None, count: int):
    """Inspector.delete_queue as an operation (steps: producer.Call), shared with Producer /
    AsyncProducer.delete_queue."""
    qk = queue_keys(check_queue(queue))
    check_int("count", count, 1, MAX_CHUNK)
    counts = yield call(broker, "counts", qk)
    serving = [w["id"] for w in (yield from plan_calls(broker, plan_workers())) if queue in (w.get("queues") or ())]
    node = yield call(broker, "at", queue)  # SCAN the node serving the queue's slot (on a Cluster: its master)
    bound = (yield call(node, "dbsize")) // count * 2 + 100  # a SCAN pass takes about dbsize/count steps
    cursor, found, deleted = 0, [], 0
    for _ in range(bound):
        n, (cursor, keys) = yield call(node, "unlink_scan", qk, cursor, count, found)
        deleted += n
        found = keys
        if progress:
            progress(deleted, None)
        if cursor == 0:
            break
    deleted += yield call(node, "unlink", found)
    yield call(broker, "forget_queue", queue)
    if progress:
        progress(deleted, None)
    return {"queue": queue, "keys": deleted, "running": counts["running"], "workers": serving,
            "tasks": counts["queued"] + counts["sched"] + counts["running"] + counts["dead"]}


class AsyncInspector:
    """The asyncio twin of Inspector, on xq.aio's broker (redis.asyncio): the same plans, so the same
    results and errors; AsyncProducer delegates to one sharing its broker."""

    def __init__(self, url: str | None = None, *, retry_for: float | None = None, socket_timeout: float = 30.0,
                 broker=None):
        from .aio import _AsyncBroker  # redis.asyncio only for those who use it

        self.url = url or os.environ.get("XQ_REDIS_URL") or DEFAULT_URL
        self._own = broker is None
        self.broker = broker or _AsyncBroker(self.url, retry_for=retry_window(retry_for),
                                             socket_timeout=socket_timeout)

    async def close(self) -> None:
        if self._own:
            await self.broker.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def _run(self, plan):
        result = None
        try:
            while True:
                method, *args = plan.send(result)
                result = await getattr(self.broker, method)(*args)
        except StopIteration as done:
            return done.value

    async def flush(self, queue: str, state: str, *, progress: Progress | None = None, chunk: int = BULK_CHUNK,
                    result_ttl: int = 86400) -> int:
        """As Inspector.flush (the same operation, op_flush)."""
        from .aio import drive

        return await drive(op_flush(self.broker, queue, state, progress, chunk, result_ttl))

    async def delete_queue(self, queue: str, *, progress: Progress | None = None, count: int = BULK_CHUNK) -> dict:
        """As Inspector.delete_queue (the same operation, op_delete_queue)."""
        from .aio import drive

        return await drive(op_delete_queue(self.broker, queue, progress, count))

    async def paused(self, queue: str) -> bool:
        """As Inspector.paused."""
        return await self.paused_since(queue) is not None

    async def paused_since(self, queue: str) -> float | None:
        """As Inspector.paused_since."""
        return await self._run(plan_paused_since(queue))

    async def pause_queue(self, queue: str) -> bool:
        """As Inspector.pause_queue."""
        return await self._run(plan_pause_queue(queue))

    async def resume_queue(self, queue: str) -> bool:
        """As Inspector.resume_queue."""
        return await self._run(plan_resume_queue(queue))

    async def workers(self) -> list[dict]:
        """As Inspector.workers."""
        return await self._run(plan_workers())

    async def worker(self, worker_id: str) -> dict | None:
        """As Inspector.worker."""
        return await self._run(plan_worker(worker_id))

    async def queues(self, by_name: bool = False) -> list[dict]:
        """As Inspector.queues."""
        return await self._run(plan_queues(by_name))

    async def queue(self, queue: str, by_name: bool = False, sample: int = SAMPLE) -> dict:
        """As Inspector.queue."""
        return await self._run(plan_queue(queue, by_name, sample))

    async def retention(self, queue: str) -> dict:
        """As Inspector.retention."""
        return await self._run(plan_retention(queue))

    async def set_retention(self, queue: str, *, keep: int | None = None, max_age: int | None = None,
                            keep_dead: int | None = None, reset: bool = False) -> dict:
        """As Inspector.set_retention."""
        return await self._run(plan_set_retention(queue, keep, max_age, keep_dead, reset))

    async def history(self, queue: str, *, name: str | None = None, minutes: int = 60,
                      now: float | None = None) -> list[dict]:
        """As Inspector.history."""
        return await self._run(plan_history(queue, name, minutes, now))

    async def history_names(self, queue: str, *, now: float | None = None) -> list[str]:
        """As Inspector.history_names."""
        return await self._run(plan_history_names(queue, now))

    async def tasks(self, queue: str, state: str, *, name: str | None = None, offset: int = 0,
                    limit: int = 50, scan: int = SCAN) -> dict:
        """As Inspector.tasks."""
        return await self._run(plan_tasks(queue, state, name, offset, limit, scan))

    async def payload(self, queue: str, task_id: str, *, preview: int = PREVIEW) -> dict | None:
        """As Inspector.payload."""
        return await self._run(plan_payload(queue, task_id, preview))

    async def task(self, queue: str, task_id: str, *, preview: int = PREVIEW) -> dict | None:
        """As Inspector.task."""
        return await self._run(plan_task(queue, task_id, preview))


# ---------------------------------------------------------------- plans
# An inspection function is written once, as a plan: a generator that yields a broker call, a tuple
# (Broker method name, *args), and is sent its result, and returns what the function returns.  It checks
# its arguments before its first yield, so both sides raise the same errors for bad input.  Inspector runs
# plans on xq.broker.Broker (run_plan), AsyncInspector on xq.aio._AsyncBroker, whose methods have the same
# names and results.  How to add one: docs/design.md "Inspection".

def plan_paused_since(queue: str):
    return (yield "paused_since", [queue_keys(check_queue(queue))])[0]


def plan_pause_queue(queue: str):
    qk = queue_keys(check_queue(queue))
    yield "register_queue", queue
    return (yield "set_paused", qk, True)


def plan_resume_queue(queue: str):
    return (yield "set_paused", queue_keys(check_queue(queue)), False)


def plan_workers():
    now = time.time()
    out = []
    for wid, _score, raw in (yield "workers",):
        if raw is None:
            continue  # expired: the worker died (its index entry is pruned by live workers later)
        out.append(_worker_view(wid, raw, now))
    return out


def plan_worker(worker_id: str):
    raw = yield "worker_record", worker_id
    return None if raw is None else _worker_view(worker_id, raw, time.time())


def plan_queues(by_name: bool):
    out = []
    for q in (yield "queues",):
        out.append((yield from plan_queue(q, by_name, SAMPLE)))
    return out


def plan_queue(queue: str, by_name: bool, sample: int):
    qk = queue_keys(check_queue(queue))
    check_int("sample", sample, 1, 100000)
    (ready, nsched, retrying, looked, nleases, ndead, paused, head, head_enq, now, waiting,
     waiting_exact, names) = yield "queue_stats", qk, sample, by_name
    latency = None
    if head:
        enq, due = head_enq
        try:  # enq: a foreign producer's; xq's own ids carry their creation time instead
            since = int(enq) if enq else int(id_time(esc(head)) * 1000)
        except (TypeError, ValueError):
            since = None  # neither a readable enq nor an xq id (written by hand, or gone)
        try:  # a task scheduled, retried or replayed has waited since it became due, not since its enqueue
            since = max(since or 0, int(due)) if due else since
        except ValueError:
            pass
        if since is not None:
            latency = round(max(0, now - since) / 1000.0, 3)
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
    at = time.time()
    rows = {esc(n): dict(zip(STATES_BY_NAME, row)) for n, row in zip(names[::2], names[1::2])}
    if by_name:  # names that ran lately but have no task in any state now get a row too
        for n in (yield from plan_history_names(queue, at)):
            rows.setdefault(n, dict.fromkeys(STATES_BY_NAME, 0))
    # one more round trip: the last 61 minutes of history of the queue (and of each name)
    keys = [None, *sorted(rows)] if by_name else [None]
    for key, hist in zip(keys, (yield from _plan_histories(qk, keys, 61, at))):
        target = out if key is None else rows[key]
        target["done_1m"], target["failed_1m"] = _stats.rolling(hist, at, 1)
        target["done_1h"], target["failed_1h"] = _stats.rolling(hist, at, 60)
    if by_name:
        out["by_name"] = {n: rows[n] for n in sorted(rows)}
        out["by_name_exact"] = max(ready + [nsched, nleases, ndead]) <= sample and bool(waiting_exact)
    return out


def plan_retention(queue: str):
    qk = queue_keys(check_queue(queue))
    [(policy, mark)] = yield "retention", [qk]
    out = {"queue": queue, **retention_view(policy, mark)}
    out["indexed"] = dict(zip(("done", "canceled", "expired", "dead"), (yield "finished_counts", qk)))
    return out


def plan_set_retention(queue: str, keep: int | None, max_age: int | None, keep_dead: int | None, reset: bool):
    qk = queue_keys(check_queue(queue))
    values, unset = {}, ["keep", "max_age", "keep_dead"] if reset else []
    if keep is not None:
        values["keep"] = check_int("keep", keep, 1, MAX_KEEP)
    if keep_dead is not None:
        values["keep_dead"] = check_int("keep_dead", keep_dead, 1, MAX_KEEP)
    if max_age is not None:
        if check_int("max_age", max_age, 0, MAX_RESULT_TTL) == 0:
            unset.append("max_age")
        else:
            values["max_age"] = max_age
    unset = [u for u in unset if u not in values]
    if values or unset:
        yield "register_queue", queue
        yield "set_retention", qk, values, unset
    return (yield from plan_retention(queue))


def plan_history(queue: str, name: str | None, minutes: int, now: float | None):
    qk = queue_keys(check_queue(queue))
    check_int("minutes", minutes, 1, _stats.MAX_MINUTES)
    if name is not None:
        check_name(name)
    at = time.time() if now is None else now
    return [m.as_dict() for m in (yield from _plan_histories(qk, [name], minutes, at))[0]]


def plan_history_names(queue: str, now: float | None):
    qk = queue_keys(check_queue(queue))
    at = time.time() if now is None else now
    return sorted(esc(n) for n in (yield "stats_names", qk, int(at // 3600) - _stats.HOURS))


def _plan_histories(qk, names: list, minutes: int, now: float):
    """stats.Minute lists of each name (None: the whole queue), in one pipelined round trip."""
    last = int(now // 60)
    first = last - minutes + 1
    spans = _stats.ranges(first, last)
    reads = [(qk.stats(hour, name), lo, hi) for name in names for hour, lo, hi in spans]
    got = (yield "stats_ranges", reads) if reads else []
    k = len(spans)
    return [_stats.decode(first, last, got[i * k:(i + 1) * k]) for i in range(len(names))]


def plan_payload(queue: str, task_id: str, preview: int):
    rec = yield "task_record", queue_keys(check_queue(queue)), raw_id(task_id)
    if not rec:
        return None
    data = rec.get(b"payload") or b""
    out = {"size": len(data), "bytes": rec.get(b"ct") == b"b", "json": None, "malformed": None}
    if not out["bytes"] and data and len(data) <= preview:
        try:
            out["json"] = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            out["malformed"] = f"the payload is not JSON ({e})"
    return out


def plan_task(queue: str, task_id: str, preview: int):
    """The task's status() view with "payload" and "result" (the decoded JSON, or None unless shown in full)
    and "payload_info" and "result_info": {"type": "json" or "bytes", "size" (bytes), "inline" (True when
    the value is the JSON given in full)}; result_info is None unless the task is done.  A payload or result
    over `preview` bytes, or raw bytes, is not shown (fetch it whole: xq web's download routes)."""
    raw = raw_id(task_id)
    rec, cut = yield "task_brief", queue_keys(check_queue(queue)), raw, preview
    if not rec and not cut:
        return None
    view = task_view(raw, queue, rec, id_time=id_time)
    for field, ct in (("payload", b"ct"), ("result", b"rct")):
        data = rec.get(field.encode())
        size = cut.get(field, len(data or b""))
        kind = "bytes" if rec.get(ct) == b"b" else "json"
        info = {"type": kind, "size": size, "inline": False}
        view[field] = None
        if kind == "json" and field not in cut:
            try:
                view[field] = orjson.loads(data) if data else None
                info["inline"] = True
            except orjson.JSONDecodeError as e:
                view["malformed"] = [*view.get("malformed", []), f"{field}: not JSON ({e})"]
        view[field + "_info"] = info if field == "payload" or view["status"] == "done" else None
    return view


def plan_tasks(queue: str, state: str, name: str | None, offset: int, limit: int, scan: int):
    qk = queue_keys(check_queue(queue))
    if state not in LISTED + FINISHED:
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
            rows.append(_task_row(v, finished=state in FINISHED))
        return len(rows) < limit

    if state == "waiting":
        ids, complete = yield "waiting_ids", qk, scan
        recs = yield "raw_records", qk, ids, ROW_FIELDS
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
                ids = yield "ready_ids", qk, pos, chunk
                batch = list(zip(ids, (yield "raw_records", qk, ids, ROW_FIELDS), [None] * len(ids)))
            elif state in FINISHED:
                # newest first: the chunk `pos` entries from the end, by negative ranks, reversed
                page = yield "peek", qk.finished(state), qk, -(pos + chunk), chunk
                batch = [(i, rec, cut) for i, _s, rec, cut in reversed(page)]
            else:
                zset = {"scheduled": qk.sched, "retrying": qk.sched, "running": qk.leases,
                        "dead": qk.dead}[state]
                batch = [(i, rec, cut) for i, _s, rec, cut in (yield "peek", zset, qk, pos, chunk)]
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


def _task_row(v: dict, finished: bool = False) -> dict:
    """One row of tasks(): the listing fields of a task_view, the error cut to its first line (and, for a
    finished one, when it finished)."""
    err = v.get("error")
    first = err.strip().splitlines()[0] if isinstance(err, str) and err.strip() else None
    row = {k: v.get(k) for k in ("id", "name", "status", "priority", "attempts", "enqueued_at", "eta",
                                 "next_attempt_at", "claimed_at", "started_at", "worker", "dead_at", "reason",
                                 "pending_dependencies")}
    row["error"] = _cut(first, 200) if first else None
    if finished:
        row["finished_at"] = v.get("finished_at")
    if v.get("malformed"):
        row["malformed"] = v["malformed"]
    if v.get("truncated"):
        row["truncated"] = v["truncated"]
    return row
