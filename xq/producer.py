"""`xq.Producer`: enqueue tasks, read their status, wait for their results."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Any, Iterable

import orjson

from ._impl import fast
from .app import DEFAULT_MAX_RETRIES, DEFAULT_QUEUE, App
from .broker import DEFAULT_URL, Broker
from .errors import ConfigError, ResultTimeout, TaskFailed, UnknownTask
from .keys import DEFAULT_PRIORITY, PRIORITIES, check_queue, queue_keys

PRIORITY_NAMES = {"critical": 0, "high": 2, "normal": 5, "low": 8}
DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024
TERMINAL = ("done", "failed")
_ENQUEUE_OPTS = ("queue", "priority", "max_retries")


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
                 max_payload: int = DEFAULT_MAX_PAYLOAD, chunk: int = 1000):
        self.url = url or os.environ.get("XQ_REDIS_URL") or DEFAULT_URL
        self.broker = Broker(self.url)
        self.app = app
        self.max_payload = max_payload
        self.chunk = chunk
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
                priority: int | str = DEFAULT_PRIORITY, max_retries: int | None = None, **opts) -> str:
        """Enqueue one task; returns its id."""
        return self.enqueue_many(name, [payload], queue=queue, priority=priority,
                                 max_retries=max_retries, **opts)[0]

    def enqueue_many(self, name: str, payloads: Iterable[Any], *, queue: str | None = None,
                     priority: int | str = DEFAULT_PRIORITY, max_retries: int | None = None,
                     **opts) -> list[str]:
        """Enqueue one task per payload, pipelined in chunks; returns their ids in order.

        Every payload is encoded and checked before anything is sent, so a bad payload enqueues nothing.
        """
        queue, priority, max_retries = self._options(name, queue, priority, max_retries, opts)
        payloads = payloads if isinstance(payloads, (list, tuple)) else list(payloads)
        ids = fast.new_ids(len(payloads))
        qk = queue_keys(queue)
        step, broker = self.chunk, self.broker
        # Every chunk is encoded and packed before anything is sent, so a bad payload enqueues nothing.
        commands = [broker.pack_enqueue(qk, name, priority, max_retries, ids[i:i + step], payloads[i:i + step],
                                        i, self.max_payload)
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
        return {
            "id": task_id,
            "queue": q,
            "name": (g(b"name") or b"").decode(),
            "status": (g(b"state") or b"").decode(),
            "attempts": int(g(b"att") or 0),
            "max_retries": int(g(b"maxr") or DEFAULT_MAX_RETRIES),
            "priority": int(g(b"pri") or DEFAULT_PRIORITY),
            "enqueued_at": _ms(g(b"enq")) or id_time(task_id),
            "claimed_at": _ms(g(b"claimed")),
            "started_at": _ms(g(b"started")),
            "finished_at": _ms(g(b"fin")),
            "worker": (g(b"worker") or b"").decode() or None,
            "error": (g(b"error") or b"").decode() or None,
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
        if state == b"failed":
            raise TaskFailed(task_id, "failed", (error or b"").decode())
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
