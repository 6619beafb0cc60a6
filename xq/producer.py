"""`xq.Producer`: enqueue tasks, read their status, wait for their results."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import OrderedDict
from typing import Any, Iterable, Sequence

import orjson

from ._impl import fast
from .app import DEFAULT_MAX_RETRIES, DEFAULT_QUEUE, App, check_seconds
from .broker import DEFAULT_URL, Broker
from .errors import ConfigError, ResultTimeout, TaskFailed, UnknownTask
from .keys import DEFAULT_PRIORITY, PRIORITIES, check_queue, queue_keys

PRIORITY_NAMES = {"critical": 0, "high": 2, "normal": 5, "low": 8}
DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024
TERMINAL = ("done", "dead", "expired", "canceled")
_ENQUEUE_OPTS = ("queue", "priority", "max_retries", "delay", "eta", "expires", "timeout")
ETA_PAST_LIMIT = 60.0  # seconds an eta may lie in the past (clock skew) and still mean "run now"


def check_priority(priority) -> int:
    """An integer 0 (highest) .. 9 (lowest), or one of the names critical/high/normal/low."""
    if isinstance(priority, str) and priority in PRIORITY_NAMES:
        return PRIORITY_NAMES[priority]
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority < PRIORITIES:
        raise ConfigError(f"invalid priority {priority!r}: use an integer 0 (highest) to 9 (lowest) "
                          f"or one of {', '.join(PRIORITY_NAMES)}")
    return priority


def _ms(v: bytes | None) -> float | None:
    return int(v) / 1000.0 if v not in (None, b"") else None


def _unix(what: str, value) -> float:
    """A datetime (naive = local time) or unix seconds, as unix seconds."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"invalid {what} {value!r}: expected a datetime or unix seconds")
    return float(value)


def timing_args(delay=None, eta=None, expires=None, timeout=None, default_expires=None) -> dict:
    """Check the timing options of an enqueue and turn them into ENQUEUE arguments (ms)."""
    out: dict = {}
    if delay is not None and eta is not None:
        raise ConfigError("give delay= or eta=, not both")
    if delay is not None:
        d = check_seconds("delay", delay, positive=False)
        if d > 0:
            out["delay_ms"] = int(d * 1000)
    elif eta is not None:
        t = _unix("eta", eta)
        ago = time.time() - t
        if ago > ETA_PAST_LIMIT:
            raise ConfigError(f"eta {eta!r} is {ago:.0f} s in the past (more than {ETA_PAST_LIMIT:.0f} s): "
                              f"to run now, leave eta out")
        out["eta_ms"] = int(t * 1000)
    if expires is None:
        expires = default_expires
    if isinstance(expires, dt.datetime):
        t = expires.timestamp()
        if t <= time.time():
            raise ConfigError(f"expires {expires!r} is in the past: the task could never run")
        out["expires_at_ms"] = int(t * 1000)
    elif expires is not None:
        out["expires_in_ms"] = max(1, int(check_seconds("expires", expires) * 1000))
    if timeout is not None:
        out["timeout_ms"] = max(1, int(check_seconds("timeout", timeout) * 1000))
    return out


def _check_page(offset, limit) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ConfigError(f"invalid offset {offset!r}: expected an integer >= 0")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"invalid limit {limit!r}: expected an integer >= 1")


def _history(raw: bytes | None) -> list[dict]:
    if not raw:
        return []
    out = []
    for h in orjson.loads(raw):
        out.append({"attempt": h.get("n"), "worker": h.get("worker") or None,
                    "started_at": h["start"] / 1000.0 if h.get("start") else None,
                    "finished_at": h["end"] / 1000.0 if h.get("end") else None,
                    "outcome": h.get("outcome"), "error": h.get("error") or None,
                    "traceback": h.get("traceback") or None})
    return out


def id_time(task_id: str) -> float | None:
    """Creation time (unix seconds) embedded in an xq task id, None for a foreign id."""
    if len(task_id) != 26:
        return None
    v = 0
    for ch in task_id[:10]:
        k = _CROCKFORD.find(ch)
        if k < 0:
            return None
        v = v * 32 + k
    return v / 1000.0  # 26 chars carry 130 bits, the top 2 zero: the first 10 are the 48-bit ms timestamp


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class Producer:
    """Enqueues tasks into Redis and reads their state; one per process is plenty (not thread-safe)."""

    def __init__(self, url: str | None = None, *, app: App | None = None,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, chunk: int = 1000, result_ttl: int = 86400):
        self.url = url or os.environ.get("XQ_REDIS_URL") or DEFAULT_URL
        self.broker = Broker(self.url)
        self.app = app
        self.max_payload = max_payload
        self.chunk = chunk
        self.result_ttl = result_ttl  # for records this producer finishes (cancel of a waiting task)
        self._known_queues: set[str] = set()
        self._queue_of: OrderedDict[str, str] = OrderedDict()
        self._pubsub = None

    def close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
        self.broker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- enqueue ---
    def _options(self, name: str, queue, priority, max_retries, opts: dict) -> tuple[str, int, int]:
        if opts:
            raise ConfigError(f"unknown enqueue option(s) {', '.join(sorted(opts))}; "
                              f"allowed: {', '.join(_ENQUEUE_OPTS)}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"invalid task name {name!r}: expected a non-empty string")
        spec = self.app.tasks.get(name) if self.app is not None else None
        if queue is None:
            queue = spec.queue if spec else DEFAULT_QUEUE
        check_queue(queue)
        if max_retries is None:
            max_retries = spec.max_retries if spec else DEFAULT_MAX_RETRIES
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"invalid max_retries {max_retries!r}: expected an integer >= 0")
        return queue, check_priority(priority), max_retries

    def _remember(self, queue: str, ids) -> None:
        if queue not in self._known_queues:
            self.broker.register_queue(queue)
            self._known_queues.add(queue)
        cache = self._queue_of
        for i in ids[-10000:]:
            cache[i] = queue
        while len(cache) > 100_000:
            cache.popitem(last=False)

    def enqueue(self, name: str, payload: Any = None, *, queue: str | None = None,
                priority: int | str = DEFAULT_PRIORITY, max_retries: int | None = None, delay: float | None = None,
                eta: dt.datetime | float | None = None, expires: float | dt.datetime | None = None,
                timeout: float | None = None, **opts) -> str:
        """Enqueue one task; returns its id.  See enqueue_many for the options."""
        return self.enqueue_many(name, [payload], queue=queue, priority=priority, max_retries=max_retries,
                                 delay=delay, eta=eta, expires=expires, timeout=timeout, **opts)[0]

    def enqueue_many(self, name: str, payloads: Iterable[Any], *, queue: str | None = None,
                     priority: int | str = DEFAULT_PRIORITY, max_retries: int | None = None,
                     delay: float | None = None, eta: dt.datetime | float | None = None,
                     expires: float | dt.datetime | None = None, timeout: float | None = None,
                     **opts) -> list[str]:
        """Enqueue one task per payload, pipelined in chunks; returns their ids in order.

        priority: 0 (highest) .. 9 or critical/high/normal/low; max_retries: attempts after the first;
        delay (seconds) or eta (datetime or unix seconds): status `scheduled` until then; expires (seconds
        from now, or a datetime): not started by then, the task becomes `expired` and never runs;
        timeout: seconds an attempt may run.  Every payload is encoded and checked before anything is
        sent, so a bad payload enqueues nothing.
        """
        queue, priority, max_retries = self._options(name, queue, priority, max_retries, opts)
        spec = self.app.tasks.get(name) if self.app is not None else None
        timing = timing_args(delay, eta, expires, timeout, spec.expires if spec else None)
        payloads = payloads if isinstance(payloads, (list, tuple)) else list(payloads)
        ids = fast.new_ids(len(payloads))
        qk = queue_keys(queue)
        step, broker = self.chunk, self.broker
        # Every chunk is encoded and packed before anything is sent, so a bad payload enqueues nothing.
        commands = [broker.pack_enqueue(qk, name, priority, max_retries, ids[i:i + step], payloads[i:i + step],
                                        i, self.max_payload, **timing)
                    for i in range(0, len(ids), step)]
        # Replies are one integer per chunk, so all can be sent before any is read.
        for cmd in commands:
            broker.send_packed(cmd)
        for reply in broker.read_replies(commands):
            if isinstance(reply, Exception):
                raise reply
        out = [i.decode() for i in ids]
        self._remember(queue, out)
        return out

    # --- inspection ---
    def _find(self, task_id: str, queue: str | None) -> str:
        if queue is not None:
            return check_queue(queue)
        q = self._queue_of.get(task_id)
        if q is None:
            q = self.broker.find_queue(task_id, self.broker.queues())
            if q is None:
                raise UnknownTask(f"no task with id {task_id!r} in any queue (never enqueued, or its "
                                  f"record expired)")
            self._queue_of[task_id] = q
        return q

    def status(self, task_id: str, *, queue: str | None = None) -> dict:
        """The task's record: status, attempts, timestamps (unix seconds), worker, error."""
        q = self._find(task_id, queue)
        rec = self.broker.task_record(queue_keys(q), task_id)
        if not rec:
            raise UnknownTask(f"no task with id {task_id!r} in queue {q!r} (never enqueued, or its "
                              f"record expired)")
        g = rec.get
        state = (g(b"state") or b"").decode()
        history = _history(g(b"hist"))
        attempts = int(g(b"att") or 0)
        if state in ("running", "done") or (state == "canceled" and g(b"claimed") and not
                                            (history and history[-1]["attempt"] == attempts)):
            # the current (or successful) attempt is the record itself
            history.append({"attempt": attempts, "worker": (g(b"worker") or b"").decode() or None,
                            "started_at": _ms(g(b"started")) or _ms(g(b"claimed")),
                            "finished_at": _ms(g(b"fin")) if state != "running" else None,
                            "outcome": {"running": "running", "done": "done"}.get(state, state),
                            "error": None, "traceback": None})
        due = _ms(g(b"due"))
        return {
            "id": task_id,
            "queue": q,
            "name": (g(b"name") or b"").decode(),
            "status": state,
            "attempts": attempts,
            "max_retries": int(g(b"maxr") or DEFAULT_MAX_RETRIES),
            "priority": int(g(b"pri") or DEFAULT_PRIORITY),
            "enqueued_at": _ms(g(b"enq")) or id_time(task_id),
            "claimed_at": _ms(g(b"claimed")),
            "started_at": _ms(g(b"started")),
            "finished_at": _ms(g(b"fin")),
            "worker": (g(b"worker") or b"").decode() or None,
            # a done task's record may still hold an earlier attempt's error (it is in the history)
            "error": None if state == "done" else (g(b"error") or b"").decode() or None,
            "eta": due if state == "scheduled" else None,
            "next_attempt_at": due if state == "retrying" else None,
            "expires_at": _ms(g(b"exp")),
            "timeout": int(g(b"to")) / 1000.0 if g(b"to") else None,
            "dead_at": _ms(g(b"dead")),
            "reason": (g(b"reason") or b"").decode() or None,
            "cancel_requested_at": _ms(g(b"cxl")),
            "replays": int(g(b"replays") or 0),
            "history": history,
        }

    @staticmethod
    def _decode_result(rec: dict) -> Any:
        data = rec.get(b"result")
        if rec.get(b"rct") == b"b":
            return data
        return orjson.loads(data) if data else None

    def _terminal(self, task_id: str, q: str):
        """(True, value) if the task has finished (raises TaskFailed for a failure), else (False, None)."""
        rec = self.broker.client.hmget(queue_keys(q).task(task_id), "state", "result", "rct", "error")
        state, result, rct, error = rec
        if state is None:
            raise UnknownTask(f"no task with id {task_id!r} in queue {q!r}")
        if state == b"done":
            return True, self._decode_result({b"result": result, b"rct": rct})
        if state in (b"dead", b"expired", b"canceled"):
            raise TaskFailed(task_id, state.decode(), (error or b"").decode())
        return False, None

    def _subscribe(self, channel: str) -> None:
        """Subscribe and wait for Redis to confirm, so no event published after this returns is missed."""
        if self._pubsub is None:
            self._pubsub = self.broker.client.pubsub()
        if channel.encode() in self._pubsub.channels:
            return
        self._pubsub.subscribe(channel)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            msg = self._pubsub.get_message(timeout=1.0)
            if msg and msg["type"] == "subscribe" and msg["channel"] == channel.encode():
                return
        raise ResultTimeout(f"Redis did not confirm the subscription to {channel} within 10 s")

    def result(self, task_id: str, timeout: float | None = None, *, queue: str | None = None) -> Any:
        """Wait for the task to finish and return its result, without polling.

        Subscribes to the queue's event channel before reading the state, so a completion between the
        two cannot be missed.  Raises TaskFailed if the task failed, ResultTimeout after timeout seconds.
        """
        q = self._find(task_id, queue)
        channel = queue_keys(q).events
        self._subscribe(channel)
        deadline = None if timeout is None else time.monotonic() + timeout
        done, value = self._terminal(task_id, q)
        if done:
            return value
        needle = task_id.encode()
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ResultTimeout(f"task {task_id} did not finish within {timeout} s")
            msg = self._pubsub.get_message(timeout=left if left is not None else 3600.0)
            if msg is None or msg["type"] != "message" or needle not in msg["data"]:
                continue
            for ev in orjson.loads(msg["data"]):
                if ev["id"] == task_id and ev["state"] in TERMINAL:
                    if "result" in ev:  # a small JSON result travels in the event: no read needed
                        return ev["result"]
                    done, value = self._terminal(task_id, q)
                    if done:
                        return value

    # --- cancellation ---
    def cancel(self, task_id: str, *, queue: str | None = None) -> str:
        """Cancel a task, wherever it is.  Returns what happened:

        "canceled"  it was queued, scheduled or retrying: status `canceled`, it never runs;
        "canceling" it is running: its supervisor interrupts the handler (xq.Cancelled is raised in it, the
                    child is killed after a grace if it does not stop) and records `canceled`;
        "finished"  it had already ended (done, dead, expired or canceled): nothing changes.
        Raises UnknownTask for an id with no record."""
        q = self._find(task_id, queue)
        outcome, _before = self.broker.cancel(queue_keys(q), task_id, self.result_ttl)
        if outcome == "unknown":
            raise UnknownTask(f"cannot cancel {task_id!r}: no task with that id in queue {q!r}")
        return outcome

    # --- dead letters and schedules ---
    def _page(self, queue: str, offset: int, limit: int, ids_of) -> list[dict]:
        """status() of each id of one page of a sorted set (records gone meanwhile are skipped)."""
        qk = queue_keys(check_queue(queue))
        _check_page(offset, limit)
        out = []
        for task_id, _score in ids_of(qk, offset, limit):
            try:
                out.append(self.status(task_id, queue=queue))
            except UnknownTask:
                continue  # purged, or its record expired, meanwhile
        return out

    def dead_letters(self, queue: str = DEFAULT_QUEUE, *, offset: int = 0, limit: int = 100) -> list[dict]:
        """One page of the queue's dead-letter set, oldest first: each entry is status() of the task."""
        return self._page(queue, offset, limit, self.broker.dead_ids)

    def scheduled(self, queue: str = DEFAULT_QUEUE, *, offset: int = 0, limit: int = 100) -> list[dict]:
        """One page of the queue's scheduled and retrying tasks, soonest due first: status() of each."""
        return self._page(queue, offset, limit, self.broker.scheduled_ids)

    def dead_count(self, queue: str = DEFAULT_QUEUE) -> int:
        return self.broker.dead_count(queue_keys(check_queue(queue)))

    def replay(self, queue: str = DEFAULT_QUEUE, ids: Sequence[str] | None = None, *,
               priority: int | str | None = None, to_queue: str | None = None) -> list[str]:
        """Put dead tasks back to work: all of them (ids=None) or those ids; optionally at a new priority
        and/or into another queue.  Attempts start again from zero; the attempt history is kept (in the
        same queue).  Returns the ids replayed; ids not in the dead-letter set are skipped, and replaying
        an empty set returns []."""
        qk = queue_keys(check_queue(queue))
        prio = None if priority is None else check_priority(priority)
        if to_queue is not None:
            check_queue(to_queue)
            if to_queue == queue:
                to_queue = None
        if ids is None:
            ids = [i for i, _ in self.broker.dead_ids(qk, 0, self.broker.dead_count(qk))]
        elif isinstance(ids, str):
            ids = [ids]
        done: list[str] = []
        for i in range(0, len(ids), 500):
            chunk = list(ids[i:i + 500])
            if to_queue is None:
                done += self.broker.replay(qk, chunk, prio)
            else:
                done += self._move_dead(qk, chunk, prio, to_queue)
        return done

    def _move_dead(self, qk, ids: list[str], prio: int | None, to_queue: str) -> list[str]:
        # Two steps, as the queues live in different hash slots: enqueue a copy in to_queue under the same
        # id, then drop the original.  A crash in between leaves both (replayed twice at worst), never none.
        moved = []
        dead = set(i for i, _ in self.broker.dead_ids(qk, 0, self.broker.dead_count(qk)))
        for task_id in ids:
            if task_id not in dead:
                continue
            rec = self.broker.task_record(qk, task_id)
            if rec.get(b"state") != b"dead":
                continue
            name = rec[b"name"].decode()
            payload = rec[b"payload"] if rec.get(b"ct") == b"b" else orjson.Fragment(rec[b"payload"])
            p = prio if prio is not None else int(rec.get(b"pri") or DEFAULT_PRIORITY)
            maxr = int(rec[b"maxr"]) if rec.get(b"maxr") else DEFAULT_MAX_RETRIES
            tqk = queue_keys(to_queue)
            timing = {"timeout_ms": int(rec[b"to"])} if rec.get(b"to") else {}
            cmd = self.broker.pack_enqueue(tqk, name, p, maxr, [task_id.encode()], [payload], 0, 1 << 62, **timing)
            self.broker.send_packed(cmd)
            reply = self.broker.read_replies([cmd])[0]
            if isinstance(reply, Exception):
                raise reply
            self._remember(to_queue, [task_id])
            moved += self.broker.replay(qk, [task_id], None, mode="remove")
        return moved

    def purge_dead(self, queue: str = DEFAULT_QUEUE) -> int:
        """Delete every task in the queue's dead-letter set; returns how many."""
        return self.broker.purge_dead(queue_keys(check_queue(queue)))
