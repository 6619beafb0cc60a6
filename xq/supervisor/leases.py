"""Leases: keep the leases of the tasks this supervisor holds, end the ones it gives up, recover expired ones.

Every claimed task has a lease in `xq:{Q}:leases` (Redis time).  This supervisor renews all of its own every
lease/6 (RENEW), so a child busy in C code for an hour keeps its task; it ends an attempt without a result
(child died, timed out, was canceled, or the task is returned at shutdown) with RELEASE; and, like asynq's
recoverer, it puts back tasks whose lease ran out, whoever held them (RELEASE 'expired', about once a
second).  RENEW and RELEASE name each task with the attempt this supervisor claimed: a task recovered
meanwhile, and maybe claimed again, is not touched (see scripts.holds).

Releases are queued and sent by sync(), so a release decided while Redis is away is sent once it is back
(RELEASE is fenced by attempt, so sending it late can only be refused, never wrong).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import NamedTuple

from .component import Component

log = logging.getLogger("xq")


class Release(NamedTuple):
    """One RELEASE to send: tasks of one queue ending the same way."""

    qidx: int
    mode: str          # scripts.RELEASE: 'return', 'lost', 'canceled'
    tasks: list        # (id, attempt) pairs
    options: dict      # error, outcome, delay_ms, started_ms


class Leases(Component):
    """Owns: the renewal and recovery schedule, releases not yet sent.  Deadline: the next renewal or
    recovery, or now while releases wait (only while Redis is reachable).  No fds."""

    def __init__(self, sup):
        self.sup = sup
        self.broker = sup.broker
        self.cfg = sup.cfg
        self.releases: deque[Release] = deque()
        now = time.monotonic()
        self.next_renew = now + self.cfg.lease / 6
        self.next_recover = now
        self.renewed = 0       # leases renewed, tasks recovered: counters for metrics
        self.recovered = 0
        self._lease_ms = int(self.cfg.lease * 1000)

    def reconnected(self) -> None:
        # Renew before anything else once Redis answers again: after an outage longer than the lease, the
        # recovery below (ours or any supervisor's) would otherwise put back the tasks we still run, or
        # whose results we hold, and have them run again.  RENEW extends a lease that ran out as long as
        # nobody recovered its task yet (the fence is the record's worker and attempt, not the score).
        self.next_renew = 0.0

    def release(self, mode: str, tasks: list, **options) -> None:
        """End these attempts (InFlight records this supervisor no longer holds in memory) at the next sync."""
        by_q: dict[int, list] = {}
        for t in tasks:
            by_q.setdefault(t.qidx, []).append((t.id, t.attempt))
        for q, pairs in by_q.items():
            self.releases.append(Release(q, mode, pairs, options))

    def sync(self, now: float) -> None:
        sup = self.sup
        if now >= self.next_renew:
            # First: while Redis is full the releases below are refused (RedisFull), but RENEW is allowed
            # (allow-oom: it rewrites scores in place), so the leases of the tasks whose results we keep
            # do not run out meanwhile and get them run twice once Redis takes writes again.
            self._renew()
            self.next_renew = now + self.cfg.lease / 6
        while self.releases:
            r = self.releases[0]
            _, _, refused = self.broker.release(sup.qks[r.qidx], r.mode, r.tasks, holder=sup.worker_id,
                                                ttl=self.cfg.result_ttl, max_retries=sup.max_retries_json,
                                                stats=self.cfg.stats, **r.options)
            self.releases.popleft()
            if r.mode != "return":  # lost, canceled, timed out, over memory: an attempt that failed
                sup.claims.failed_total += len(r.tasks)
            if sup.metrics is not None:
                sup.metrics.released(r)
            log_refused(refused, f"{r.mode} release", sup.worker_id)
        if sup.claims.claim_lost:
            self._return_orphans()
        if now >= self.next_recover:
            self._recover()
            self.next_recover = now + min(1.0, self.cfg.lease / 4)

    def deadline(self) -> float:
        if not self.sup.up:
            return math.inf
        if self.releases:
            return 0.0
        return min(self.next_renew, self.next_recover)

    def _renew(self) -> None:
        sup = self.sup
        by_q: dict[int, list] = {}
        for t in sup.claims.inflight.values():
            by_q.setdefault(t.qidx, []).append((t.id, t.attempt))
        # results kept until Redis takes them (an outage, Redis full): their tasks stay ours meanwhile
        for q, items in sup.claims.completions.items():
            by_q.setdefault(q, []).extend(zip(items[0::7], items[1::7]))
        for q, pairs in by_q.items():
            for i in range(0, len(pairs), 5000):
                lost_ids, cancel = self.broker.renew(sup.qks[q], sup.worker_id, self._lease_ms, pairs[i:i + 5000])
                self.renewed += len(pairs[i:i + 5000]) - len(lost_ids)
                for lost in lost_ids:
                    log.warning("task %s: this worker's lease was lost (it ran out during an outage or a stall?); "
                                "another worker may run it too, and this attempt's result will be refused",
                                lost.decode())
                for tid in cancel:  # in case the control message was missed
                    sup.canceler.cancel(tid)

    def _return_orphans(self) -> None:
        """An outage ate a claim's reply: the tasks it leased to us are ours, unknown and unstarted.  Put
        them back now rather than after their lease (after the pending releases, which name tasks we hold
        no longer in memory)."""
        sup = self.sup
        for q, qk in enumerate(sup.qks):
            back = self.broker.return_orphans(qk, sup.worker_id, sup.claims.held_ids(q) +
                                              [i for r in self.releases if r.qidx == q for i, _ in r.tasks])
            if back:
                sup.claims.idle = False
                log.info("queue %s: returned %d task(s) a claim took while its reply was lost", qk.name, len(back))
        sup.claims.claim_lost = False

    def _recover(self) -> None:
        sup = self.sup
        for qk in sup.qks:
            requeued, failed, _ = self.broker.release(qk, "expired", [], error="recovered by " + sup.worker_id,
                                                      ttl=self.cfg.result_ttl, max_retries=sup.max_retries_json,
                                                      stats=self.cfg.stats)
            if requeued or failed:
                self.recovered += len(requeued) + len(failed)
                sup.claims.idle = False
                log.warning("queue %s: recovered %d task(s) with expired leases (%d requeued, %d failed)",
                            qk.name, len(requeued) + len(failed), len(requeued), len(failed))


FINAL = (b"done", b"dead", b"canceled", b"expired")  # what a resend of our own outcome finds written


def resent(r, worker_id: str) -> bool:
    """Is this refusal our own outcome met again (a resend after its first reply was lost), not a refusal?"""
    return r.state in FINAL and r.attempt == r.now_attempt and r.worker.decode() == worker_id


def log_refused(refused, what: str, worker_id: str) -> None:
    """One line per report Redis refused because this worker no longer holds that attempt.  A resend
    after a lost reply meets the state its own first send wrote (this worker, this attempt, ended): that
    is no refusal worth a warning."""
    for r in refused:
        if resent(r, worker_id):
            log.debug("%s of task %s attempt %d: written already (a resend after a lost reply)", what,
                      r.id.decode(), r.attempt)
            continue
        if not r.state:
            now = "its record is gone (expired or deleted)"
        elif r.state == b"running":
            who = "this worker" if r.worker.decode() == worker_id else f"worker {r.worker.decode()}"
            now = f"lease lost; now running attempt {r.now_attempt} on {who}"
        else:
            now = f"lease lost; the task is now {r.state.decode()} (attempt {r.now_attempt})"
        log.warning("%s of task %s attempt %d refused: this worker no longer holds it (%s); the newer state "
                    "stands", what, r.id.decode(), r.attempt, now)
