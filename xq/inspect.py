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

import orjson

from .broker import DEFAULT_URL, Broker
from .keys import check_queue, queue_keys
from .producer import retry_window

__all__ = ["Inspector"]


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
