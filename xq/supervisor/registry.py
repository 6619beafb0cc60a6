"""Registry: this supervisor's entry in the worker registry, written on a timer.

Every `heartbeat` seconds (`xq run --heartbeat`, default 5) the supervisor writes its record, a JSON string
`xq:worker:<id>` with a TTL of three heartbeats, and its score in the index `xq:workers` (id -> last
heartbeat, ms), in one pipelined round trip on the broker's pooled client (never the main connection, whose
replies are pipelined).  It is timer work, never per task: the record is built from what the other
components hold already (the children's control words, the claimed tasks, counters bumped per reply).
A clean stop deletes both at once; a supervisor that dies stops refreshing its record, which expires
within the TTL, and readers (xq.inspect.Inspector) skip index entries whose record is gone.

Redis failures take the loop's one path (Supervisor._redis): no heartbeat runs while Redis is away, and the
first turn after a reconnect writes one.  A Redis that refuses writes (full, or unable to persist) skips
the beat quietly: the record may expire meanwhile, the supervisor keeps working.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time

import orjson

from .. import __version__
from .. import child as childmod
from .._impl import fast
from ..errors import RedisFull
from .component import Component

log = logging.getLogger("xq")

TTL_BEATS = 3                 # a record lives this many heartbeats
PRUNE_AFTER_MS = 3600_000     # index entries not refreshed for an hour are dropped by any live worker
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_of(pid: int) -> int:
    """Resident set size of pid in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


class Registry(Component):
    """Owns: the heartbeat schedule, this worker's start time.  Deadline: the next heartbeat (only while
    Redis is reachable).  No fds."""

    def __init__(self, sup):
        self.sup = sup
        self.broker = sup.broker
        self.interval = max(0.1, float(getattr(sup.cfg, "heartbeat", 5.0)))
        self.ttl_ms = round(self.interval * TTL_BEATS * 1000)
        self.started = time.time()
        self.host = socket.gethostname()
        self.next_beat = 0.0
        self.registered = False

    def sync(self, now: float) -> None:
        if now < self.next_beat:
            return
        self.next_beat = now + self.interval
        ms = int(time.time() * 1000)
        try:
            self.broker.heartbeat(self.sup.worker_id, orjson.dumps(self.record()), self.ttl_ms, ms,
                                  ms - max(PRUNE_AFTER_MS, 10 * self.ttl_ms))
        except RedisFull as e:  # refuses writes for now: skip this beat, keep working
            log.debug("heartbeat skipped: %s", e)
            return
        self.registered = True

    def deadline(self) -> float:
        return self.next_beat if self.sup.up else math.inf

    def reconnected(self) -> None:
        self.next_beat = 0.0  # at once: the record may have expired during the outage

    def record(self) -> dict:
        """This supervisor as the registry shows it (docs/design.md, "Worker registry")."""
        sup = self.sup
        claims, pool = sup.claims, sup.pool
        now_wall, now_mono = time.time(), time.monotonic()
        current, child_rss, busy = [], 0, 0
        for c in pool.children.values():
            child_rss += rss_of(c.pid)
            seq = c.ctl[childmod.CTL_CURRENT]
            t = claims.inflight.get(seq) if seq else None
            if t is None:
                continue
            busy += 1
            started = now_wall - max(0.0, now_mono - c.ctl[childmod.CTL_STARTED] / 1000.0)
            current.append({"id": t.id.decode(errors="replace"), "name": t.name.decode(errors="replace"),
                            "queue": sup.qnames[t.qidx], "attempt": t.attempt, "pid": c.pid,
                            "started": round(started, 3)})
        own = rss_of(os.getpid())
        return {
            "id": sup.worker_id, "host": self.host, "pid": os.getpid(), "version": __version__,
            "queues": list(sup.qnames), "procs": sup.cfg.procs, "children": len(pool.children),
            "busy": busy, "state": "running" if sup.accepting else "stopping",
            "started": round(self.started, 3), "heartbeat": round(now_wall, 3),
            "heartbeat_interval": self.interval, "ttl": self.ttl_ms / 1000.0,
            "tasks": current, "done": claims.done_total, "failed": claims.failed_total,
            "rss": {"supervisor": own, "children": child_rss, "total": own + child_rss},
            "impl": fast.IMPLEMENTATION,
        }

    def close(self) -> None:
        """A clean stop: leave the registry at once (best effort: if Redis is away the record expires)."""
        if not (self.registered and self.sup.up):
            return
        try:
            self.broker.unregister(self.sup.worker_id)
        except Exception as e:  # noqa: BLE001 - stopping anyway; the TTL removes it
            log.debug("could not remove this worker from the registry (its record expires): %s", e)
