"""Ticker: fires the app's periodic (cron) entries of this supervisor's queues.

The schedule math is xq/cron.py's; the clock is the app's (injectable, so tests run minutes in seconds).
Every supervisor serving an entry's queue fires it at its tick through the CRON script, which records the
tick in the same call, so each tick fires once however many supervisors race.  At start, the most recent
tick missed while no supervisor ran fires once.
"""

from __future__ import annotations

import logging
import math
import time

import orjson

from .._impl import fast
from ..keys import queue_keys
from .component import Component

log = logging.getLogger("xq")


class Ticker(Component):
    """Owns: the next tick of each entry (app clock).  Deadline: the earliest tick, in monotonic time
    (only while Redis is reachable and the supervisor accepts work).  No fds."""

    def __init__(self, sup):
        self.sup = sup
        self.broker = sup.broker
        qset = set(sup.qnames)
        self.crons = [e for e in sup.app.crons if e.queue in qset]
        self.clock = sup.app.clock
        self.next_cron: dict[str, float] = {}      # entry key -> next tick (clock time)
        self.ready = False

    def sync(self, now: float) -> None:
        if not self.crons or not self.sup.accepting:
            return
        t = self.clock.time()
        if not self.ready:
            for e in self.crons:
                last = e.last_at_or_before(t)
                _, before = self.broker.cron_fire(queue_keys(e.queue), e.key, int(last * 1000), "init")
                if before >= 0 and before < int(last * 1000):
                    self._fire(e, last)  # missed while no supervisor ran: once, now
                self.next_cron[e.key] = e.next_after(t)
            self.ready = True
            return
        for e in self.crons:
            if t >= self.next_cron[e.key]:
                self._fire(e, e.last_at_or_before(t))
                self.next_cron[e.key] = e.next_after(t)

    def deadline(self) -> float:
        if not self.crons or not self.ready or not self.sup.accepting or not self.sup.up:
            return math.inf
        wait = (min(self.next_cron.values()) - self.clock.time()) / self.clock.rate
        return time.monotonic() + max(0.0, wait)

    def _fire(self, e, tick: float) -> None:
        payload, ct = (orjson.dumps(e.payload), b"j") if not isinstance(e.payload, (bytes, bytearray)) \
            else (bytes(e.payload), b"b")
        tid = fast.new_ids(1)[0]
        fired, last = self.broker.cron_fire(queue_keys(e.queue), e.key, int(tick * 1000), "fire", tid, e.task,
                                            payload, ct, e.priority)
        if fired:
            if last >= 0:
                skipped = e.ticks_between(last / 1000.0, tick) - 1
                if skipped > 0:
                    log.warning("cron %s: %d tick(s) since %s were missed (no supervisor ran); firing once for %s",
                                e.key, skipped, _iso(last / 1000.0), _iso(tick))
            log.info("cron %s: fired tick %s as task %s", e.key, _iso(tick), tid.decode())


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
