"""Operator-facing reads of a running fleet (issue 11): one small set of functions that the CLI, Producer
and later the dashboard and HTTP API share.  Sync, built on xq.broker.Broker like xq/producer.py; records
are read leniently (xq/records.py)."""

from __future__ import annotations

import os

from .broker import DEFAULT_URL, Broker
from .keys import check_queue, queue_keys
from .producer import retry_window


class Inspector:
    """Reads (and the few operator writes) over one Redis; Producer delegates to one sharing its Broker."""

    def __init__(self, url: str | None = None, *, broker: Broker | None = None, retry_for: float | None = None):
        self.url = url or os.environ.get("XQ_REDIS_URL") or DEFAULT_URL
        self._own = broker is None
        self.broker = broker if broker is not None else Broker(self.url, retry_for=retry_window(retry_for))

    def close(self) -> None:
        if self._own:
            self.broker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- pause / resume (issue 11: xq queue pause Q / resume Q) ---
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
