"""ClaimPipeline: tasks from Redis into the children's rings, and their results back into Redis.

    CLAIM reply -> inflight (seq -> InFlight) + buffer -> fill_ring -> child -> drain_results -> completions
    -> one write per step: progress commands, COMPLETE per queue, one CLAIM -> replies read in order

Up to MAX_STEPS steps are in flight at once, so Redis executes one while this process dispatches the
previous one's tasks and drains results.  When a claim comes back short the pipeline idles in BZPOPMIN on
the queues' wake markers with a CLAIM queued behind it on the same connection (Broker.start_wait): the
wake-up arrives with the tasks.  This module owns the CLAIM/COMPLETE arguments and the decoding of their
replies; the hot loops (take_claimed, fill_ring, drain_results, build_event) are in xq._fast.

On a Redis Cluster a claim cannot span slots: the queues form claim groups (queues next to each other in
order whose names hash to one slot; in practice one group per queue), each claimed by a CLAIM of its own
on its slot's master, with an idle wait of its own there; router.py carries a step's commands to the
masters.  How a step's want is split across the groups (_asks) is in docs/design.md, "Cluster".
"""

from __future__ import annotations

import logging
import math
import select
import time
from collections import deque
from typing import NamedTuple

from redis.exceptions import NoScriptError

from .._impl import fast
from ..broker import Broker, refusals
from ..conn import cannot_persist, full_message, redacted, refuses_writes
from ..errors import RedisFull
from ..keys import check_record
from .component import Component
from .leases import log_refused, resent
from .router import Router

log = logging.getLogger("xq")

BUFFER_SECONDS = 0.100           # keep ~100 ms of work queued in each child's ring
BURST_BUSY_WAIT = 0.1            # --burst: the idle wait's timeout while tasks still run
SIZES_OFF_AFTER = 64             # claims of only small payloads before CLAIM stops reading sizes first
LOW_SECONDS = 0.002              # a child with less queued than this is running short: its results go out at once
MAX_DEPTH = 1024
MAX_STEPS = 2                    # round trips in flight at once
RESULT_DELAY = 0.010             # longest a result waits while its child still has work queued
HELD_FACTOR = 4                  # a child whose current task has run this many times the average run time
HELD_MIN = 0.005                 # (at least this, at most BUFFER_SECONDS) gets no more tasks for now


class ClaimGroup(NamedTuple):
    """Queues one CLAIM covers: all of them on one Redis, queues sharing a slot on a Cluster."""

    queues: tuple        # their indexes in the supervisor's order: a run (the CLAIM reply's index i is first + i)
    keys: list           # the CLAIM's keys and tail (Broker.claim_keys, claim_tail)
    tail: list
    wake: list           # their wake markers (the idle wait's BZPOPMIN)
    weight: int          # the sum of their weights (0: strict order)


def claim_groups(sup) -> list[ClaimGroup]:
    """One group of every queue on one Redis; on a Cluster, one per run of queues (in the supervisor's
    order, so strict order holds) whose keys share a slot."""
    cfg, qks = sup.cfg, sup.qks
    runs: list[list[int]] = []
    last = None
    for i, qk in enumerate(qks):
        slot = sup.broker.client.keyslot(qk.base) if sup.broker.cluster else 0
        if runs and slot == last:
            runs[-1].append(i)
        else:
            runs.append([i])
        last = slot
    rates = sup.app.rate_limits_json()
    out = []
    for run in runs:
        gq = [qks[i] for i in run]
        weights = [cfg.weights[i] for i in run] if cfg.weights else None
        out.append(ClaimGroup(tuple(run), Broker.claim_keys(gq), Broker.claim_tail(gq, weights, cfg.level_weights,
                                                                                   rates),
                              [qk.wake for qk in gq], sum(weights) if weights else 0))
    return out


def shares(n: int, weights: list[int], turn: int) -> list[int]:
    """n split in proportion to weights: the floors, then what they leave over to one entry picked by
    weight from turn (a counter the caller advances), so that small splits do not starve any entry."""
    total = sum(weights)
    out = [n * w // total for w in weights]
    pick = turn % total
    for i, w in enumerate(weights):
        if pick < w:
            out[i] += n - sum(out)
            break
        pick -= w
    return out


class ClaimPipeline(Component):
    """Owns: the tasks this supervisor holds (inflight, the local buffer, those held for a large payload's
    read), results and progress not yet written, the replies it waits for, the ring depth.  Deadline:
    results due, the next scheduled task due, a ring out of bytes.  Fds: armed result-ring eventfds, the main Redis socket while replies are due, the
    BZPOPMIN socket while waiting."""

    def __init__(self, sup):
        self.sup = sup
        self.broker = sup.broker
        self.cfg = cfg = sup.cfg
        self.inflight: dict[int, fast.InFlight] = {}  # seq -> the claimed task, until COMPLETE or RELEASE
        self.buffer: deque[int] = deque()          # claimed seqs not yet in a ring
        self.completions: dict[int, list] = {}     # qidx -> flat COMPLETE args (7 a task)
        self.claim_lost = False                    # an outage ate a claim's reply: sweep its tasks back
        self.progress: dict[int, tuple] = {}       # seq -> (qidx, id, record JSON, event members, ts ms): last report
        self.stats: dict | None = {} if cfg.stats else None  # qidx -> {name: [done, run time s]}: this step's
        self._stats_seen: set[bytes] = set()       # stats keys written this hour (expiry set, name indexed)
        self._stats_hour = -1
        self.results_due = 0.0                     # monotonic time by which buffered results are sent
        self.seq = 0
        self.done_total = 0                        # results written since start: done, and any other outcome
        self.failed_total = 0                      # (counted per COMPLETE reply, for the worker registry)
        self.avg = 0.001                           # EWMA of task run time, seconds
        self.depth = 1
        self.idle = False                          # the last claim found the queues empty
        self.drained = False                       # ... and nothing was in flight then (burst exit)
        self.recheck = False                       # ... but it ran while tasks were in flight
        self.waiting: dict[int, tuple] = {}        # group -> (want, busy, its Broker) of the CLAIM queued behind
                                                   # an outstanding BZPOPMIN
        self._woke: set[int] = set()               # groups whose wait's reply the last poll() saw arrive
        self._unblocked: set[int] = set()          # groups whose wait was ended by CLIENT UNBLOCK
        self.end_wait = False                      # stopping: end the wait at the next sync
        self.refill_in: float | None = None        # the last dispatch found a ring out of bytes: look again in
        self.pending: deque[tuple] = deque()       # replies expected on the main connection, in order
        self.claiming = 0                          # tasks asked for by claims in flight
        self.next_due: float | None = None         # monotonic time the first scheduled/retrying task is due
        self.due_unblocked = False                 # the idle wait was ended early for a due task
        self._armed: list = []                     # children whose result ring is armed for this poll()
        self._wake_at = math.inf                   # when a child's results want a turn, decided by fds()
        self._wait_fds: dict[int, int] = {}        # fds of the waits and of the main connection, noted when used in
        self._main_fd = -1                         # sync(): fds() asks the broker nothing, so meets no Redis failure
        self._qks = sup.qks
        self._qnames_b = [q.encode() for q in sup.qnames]
        self._lease_ms = int(cfg.lease * 1000)
        self._groups = groups = claim_groups(sup)
        self._gof = [g for g, grp in enumerate(groups) for _ in grp.queues]  # queue index -> its group
        # a Cluster: the main connection is one per master (router.py); else the broker's own
        self.router = Router(self.broker, [sup.qnames[grp.queues[0]] for grp in groups]) if self.broker.cluster \
            else None
        self._raw = self.router or self.broker
        n = len(groups)
        self._short = [False] * n                  # group -> its last claim came back short (fewer than asked)
        self._got = [0] * n                        # ... with this many tasks
        self._due = [None] * n                     # group -> monotonic due time its last claim reported
        self._drained = [False] * n                # group -> its last claim found it drained (burst exit)
        self._turn = 0                             # advances the weighted split's remainder (shares)
        self._sizes = [False] * n                  # group -> its claims read payload sizes first (large ones seen)
        self._small = [0] * n                      # ... claims since the last large payload, while they do
        self.held: deque[int] = deque()            # claimed seqs behind a payload still being read, claim order
        self.fetching: set[int] = set()            # those of them whose payload (a large one) is being read
        self.refetch = False                       # an outage lost the fetches' replies: send them again
        self._prefixes = [qk.task_prefix.encode() for qk in self._qks]
        self._fetch_marks: list = []               # the ids (objects) of the last claim's tasks without payload

    # ------------------------------------------------------------------ loop
    def step(self, now: float) -> int:
        """Drain every result ring, then dispatch; returns the results read."""
        got = self.drain_all()
        self.dispatch()
        return got

    def sync(self, now: float) -> None:
        if self.refetch:  # an outage lost the payloads' replies: ask again
            self.refetch = False
            self._send_fetch([s for s in self.held if s in self.fetching])
        if self.waiting:
            self._take_waits()
        if self.waiting and self.end_wait:
            self.end_wait = False
            self._cancel_waits()
        self._collect()
        if self.waiting and self.next_due is not None and now >= self.next_due and not self.due_unblocked:
            # A task is due while we wait: end the wait so its claim runs now (BZPOPMIN's own timeout is
            # only as precise as Redis' 100 ms cron).
            self.due_unblocked = True
            self._cancel_waits()
        if len(self.pending) < MAX_STEPS:
            want = self._claim_size()
            due = self._due_now()
            if want > 0 or due or self._results_due():
                self._send_step(want, promote=due)
        # Burst: a short claim while tasks ran says nothing of whether the queues are drained; with nothing
        # in flight any more, the loop's recheck sends a plain claim at once instead of a wait's (1 s).
        if self.sup.accepting and self.idle and not self.waiting \
                and not (self.cfg.burst and self.recheck and not self.inflight):
            want = self._want()
            if want > 0:
                self._start_waits(want)

    def busy(self) -> bool:
        """Is there Redis work to do right now (so the loop must not sleep)?"""
        if len(self.pending) >= MAX_STEPS:
            return False  # wait for a reply (its socket is in the poll set)
        return self._results_due() or self._due_now() or self._claim_size() > 0 or (self.end_wait and self.waiting)

    def fds(self) -> list[int]:
        """Arms the result ring of each child that may sleep on it; a child whose results can wait (plenty
        queued, or no round trip slot free to send them) is looked at after RESULT_DELAY instead."""
        sup, now = self.sup, time.monotonic()
        out, armed, wake_at = [], [], math.inf
        low = self._low()
        steps_full = sup.up and len(self.pending) >= MAX_STEPS
        for c in sup.pool.children.values():
            if (len(c.unacked) > low or steps_full) and not c.stopping and sup.accepting:
                # Plenty queued in its ring: its results can wait a few ms and be written in one batch,
                # instead of waking this process for every task.
                wake_at = min(wake_at, now + RESULT_DELAY)
            elif c.outring.arm():
                armed.append(c)
                out.append(c.efds[1])
            else:
                wake_at = now
        self._armed, self._wake_at = armed, wake_at
        for g in self.waiting:
            out.append(self._wait_fds[g])
        if self.pending and sup.up:
            if self.router is not None:
                out += self.router.fds
            elif self._main_fd >= 0:
                out.append(self._main_fd)
        return out

    def polled(self, ready: set[int]) -> None:
        for c in self._armed:
            if c.outring is not None:
                c.outring.disarm(c.efds[1] in ready)  # not readable: no wake-up to consume, no read()
        self._armed = []
        if self.waiting:
            self._woke = {g for g in self.waiting if self._wait_fds[g] in ready}

    def deadline(self) -> float:
        d = self._wake_at
        if self.partials():
            d = min(d, time.monotonic() + 0.001)  # a message is half-written: the child frees space without telling us
        elif self.refill_in is not None:
            d = min(d, time.monotonic() + self.refill_in)
        if self.sup.up:
            if self.next_due is not None and self.sup.accepting:
                d = min(d, self.next_due)
            if (self.completions or self.progress) and len(self.pending) < MAX_STEPS:
                # (with every round trip slot taken they cannot go before a reply comes: its socket wakes us)
                d = min(d, self.results_due)
        return d

    def outage(self) -> None:
        # Results sent but not confirmed are kept to be sent again (COMPLETE is idempotent, and fenced: a
        # result of an attempt lost meanwhile is refused).  A claim whose reply was lost leased tasks we
        # never saw: Leases returns them once Redis answers (claim_lost).
        for entry in self.pending:
            if entry[0] == "complete":
                self._requeue_completions(entry[1], entry[2])
        # ... unless we sweep them back once Redis answers (Leases.sync): a claim was out, reply unread
        self.claim_lost = self.claim_lost or bool(self.waiting) or any(e[0] == "claim" for e in self.pending)
        self.pending.clear()
        self.refetch = bool(self.fetching)
        self._stats_seen = set()  # a lost step may have carried a key's EXPIRE: send them again
        self.claiming = 0
        self.waiting, self._woke, self._unblocked, self._wait_fds = {}, set(), set(), {}
        self._main_fd = -1
        if self.router is not None:
            self.router.reset()

    def held_ids(self, qidx: int) -> list[bytes]:
        """Every id of queue qidx this supervisor holds: claimed (buffer, rings, children) or with a result
        not yet confirmed."""
        ids = [t.id for t in self.inflight.values() if t.qidx == qidx]
        ids += self.completions.get(qidx, [])[0::7]
        return ids

    def reconnected(self) -> None:
        self.idle, self.waiting = False, {}

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stopping: claimed-but-unstarted tasks go back; an outstanding wait is ended so its claim replies
        at once and its tasks can be returned too."""
        self.return_buffer()
        self.end_wait = bool(self.waiting)

    def return_buffer(self) -> None:
        """Give claimed-but-unstarted tasks back to the head of their queues (those waiting for their payload
        too: the HGET's reply is then ignored)."""
        if not self.buffer and not self.held:
            return
        # everything in the buffer was claimed before anything held (see _hold)
        tasks = [self.inflight.pop(s) for s in self.buffer] + [self.inflight.pop(s) for s in self.held]
        self.buffer.clear()
        self.held.clear()
        self.fetching = set()
        self.sup.leases.release("return", tasks)

    # ------------------------------------------------------------------ results
    def drain_all(self) -> int:
        n = 0
        for c in self.sup.pool.values():
            n += self.drain(c)
        return n

    def drain(self, c) -> int:
        if c.outring is None:
            return 0
        first = not self.completions
        had_progress = bool(self.progress)
        n, busy = fast.drain_results(c.outring, self.inflight, self.completions, c.unacked, 4096, self.progress,
                                     self.stats)
        if self.progress and not had_progress and first and not n:
            # Progress alone waits up to RESULT_DELAY, like results, so reports coalesce into one write.
            self.results_due = time.monotonic() + RESULT_DELAY
        if n:
            # Results wait (up to RESULT_DELAY) only while their child has plenty queued: then they go out
            # in one batch with the next claim instead of one round trip, and one wake-up, per result.
            now = time.monotonic()
            if len(c.unacked) <= self._low() or c.stopping or not self.sup.accepting:
                self.results_due = now
            elif first:
                self.results_due = now + RESULT_DELAY
            # EWMA of run time, weighted by how many tasks this batch holds
            self.avg += min(1.0, 0.05 * n) * (busy / n - self.avg)
            self.depth = max(1, min(MAX_DEPTH, int(BUFFER_SECONDS / max(self.avg, 1e-6))))
            c.done += n
        return n

    def unstarted(self, seq: int) -> bool:
        """Is this claimed task still here, not handed to a child (in the buffer, or waiting for its payload)?"""
        return seq in self.buffer or seq in self.held

    def complete_unstarted(self, seq: int, outcome: bytes, text: bytes) -> None:
        """End a task not handed to a child yet without running it (a cancel that came before it started)."""
        if seq in self.held:
            self.held.remove(seq)
            self.fetching.discard(seq)  # its payload's reply is ignored
            self._release_held()
        else:
            self.buffer.remove(seq)
        t = self.inflight.pop(seq)
        ms = int(time.time() * 1000)
        self.completions.setdefault(t.qidx, []).extend((t.id, t.attempt, outcome, text, b"", ms, ms))
        self.results_due = 0.0

    def _results_due(self) -> bool:
        return bool(self.completions or self.progress) and time.monotonic() >= self.results_due

    def _low(self) -> int:
        """A child with at most this many tasks queued is running short: its results go out at once."""
        return max(1, min(self.depth // 3, int(LOW_SECONDS / max(self.avg, 1e-6))))

    # ------------------------------------------------------------------ dispatch
    def partials(self) -> bool:
        """Is a large message half-written into some child's ring?"""
        return any(c.partial is not None for c in self.sup.pool.children.values())

    def dispatch(self) -> None:
        """Move claimed tasks from the local buffer into the rings of the least-loaded children."""
        if not self.sup.accepting or not (self.buffer or self.partials()):
            return
        kids = [c for c in self.sup.pool.values() if not c.stopping]
        if not kids:
            return
        self.sup.canceler.dispatched()
        for c in kids:
            if c.partial is not None:
                self._continue(c)
        # A child whose current task has run well past the average (HELD_FACTOR times it, within HELD_MIN and
        # a ring's worth of work, BUFFER_SECONDS) gets nothing more: depth comes from tasks that finished, so it
        # knows nothing of a long one still running, and a task queued behind it would wait for it to end.
        # What it does not take stays in the buffer for the first child that frees (its result wakes this
        # loop).  A task queued before its predecessor turns out long still waits for it: a ring cannot give
        # back what it holds.
        now_ms = int(time.monotonic() * 1000)
        held_ms = 1000 * min(BUFFER_SECONDS, max(HELD_MIN, HELD_FACTOR * self.avg))
        kids = [c for c in kids if c.running_ms(now_ms) <= held_ms]
        self.refill_in = None
        if not kids:
            return
        depth = self.depth
        buffer, inflight = self.buffer, self.inflight
        # Even shares: each child gets up to (its unacked + the buffer) / children, capped by depth.
        total = len(buffer) + sum(len(c.unacked) for c in kids)
        share = min(depth, -(-total // len(kids)))
        for c in sorted(kids, key=lambda c: len(c.unacked)):
            if c.partial is not None:
                continue
            try:
                written, why = fast.fill_ring(c.inring, buffer, inflight, c.unacked, share - len(c.unacked))
            except (ValueError, OverflowError) as e:
                # the task at the head of the buffer cannot be framed (see encode_task_head): it fails
                # alone; the rest go out at the next dispatch
                self._fail_unframed(buffer[0], e)
                why = 0
            if why == 1:
                # Out of bytes for now; the child frees space without telling us.  Look again once it has
                # worked through about half of what it holds (at least 1 ms, at most RESULT_DELAY): polling
                # each ms woke this process ~600 times a second while 55 KB payloads filled the rings.
                wait = min(RESULT_DELAY, max(0.001, len(c.unacked) * self.avg / 2))
                self.refill_in = wait if self.refill_in is None else min(self.refill_in, wait)
            elif why == 2:  # a large message streams through in chunks
                seq = buffer.popleft()
                t = inflight[seq]
                try:
                    head = fast.encode_task_head(seq, t.attempt, t.ct, t.qidx, t.id, t.name)
                except (ValueError, OverflowError) as e:
                    buffer.appendleft(seq)
                    self._fail_unframed(seq, e)
                    continue
                c.partial = [seq, head, t.payload, 0]
                self._continue(c)
            if not buffer:
                return

    def _fail_unframed(self, seq: int, e: Exception) -> None:
        t = self.inflight[seq]
        log.warning("task %s: cannot be sent to a child, failed: %s", t.id[:60].decode(errors="replace"), e)
        self.complete_unstarted(seq, b"invalid", f"field id or name: {e}".encode())

    def _continue(self, c) -> bool:
        seq, head, body, off = c.partial
        off = c.inring.write(head, body, off)
        if off == c.inring.message_size(head, body):
            c.partial = None
            c.unacked.append(seq)
            return True
        c.partial[3] = off
        return False

    # ------------------------------------------------------------------ claiming
    def _due_now(self) -> bool:
        """Is a scheduled or retrying task due (so a claim must run, to move it, even with no room)?"""
        return self.next_due is not None and self.sup.accepting and not self.waiting and not self.claiming \
            and time.monotonic() >= self.next_due

    def _claim_size(self) -> int:
        """How many tasks to claim now: 0 unless a worthwhile batch is free (a quarter of the capacity),
        or nothing at all is in flight or being claimed."""
        if not self.sup.accepting or self.idle or self.waiting:
            return 0
        want = self._want()
        if want <= 0:
            return 0
        if self.claiming or self.inflight:
            if want < self.sup.pool.live() * (self.depth + max(self.cfg.prefetch, 1)) // 4:
                return 0
        return want

    def _want(self) -> int:
        cap = self.sup.pool.live() * (self.depth + max(self.cfg.prefetch, 1))
        return cap - len(self.inflight) - self.claiming

    def _start_waits(self, want: int) -> None:
        """Idle: one wait per claim group (BZPOPMIN cannot span slots), each with a CLAIM of up to want
        tasks behind it.  The first to wake ends the others (_take_waits): up to want tasks a group, so an
        idle Cluster supervisor may claim more than want at once when several queues fill together."""
        broker, cfg, busy = self.broker, self.cfg, bool(self.inflight)
        # burst, tasks still running: a short wait, so the claim that may find the queues drained is not
        # held back by the wait's timeout once they end
        timeout = min(cfg.wait_timeout, BURST_BUSY_WAIT) if cfg.burst and busy else cfg.wait_timeout
        for g, grp in enumerate(self._groups):
            w = broker if self.router is None else self.router.waiter(g)
            claim = broker.pack_claim(grp.keys, grp.tail, want, self.sup.worker_id, self._lease_ms,
                                      cfg.max_payload, cfg.result_ttl, self._sizes[g])
            self._wait_fds[g] = w.start_wait(grp.wake, timeout, claim)
            self.waiting[g] = (want, busy, w)
            self.claiming += want

    def _cancel_waits(self) -> None:
        """End every outstanding wait at once: their claims run and reply right away."""
        for g, (_, _, w) in self.waiting.items():
            if g not in self._unblocked:
                self._unblocked.add(g)
                w.cancel_wait()

    @staticmethod
    def _wait_ready(w) -> bool:
        fd = w.wait_fileno()
        if fd < 0:
            return True
        r, _, _ = select.select([fd], [], [], 0)
        return bool(r)

    @property
    def woken(self) -> bool:
        """Did the last poll() see a wait's reply arrive?"""
        return bool(self._woke)

    def take_waits(self) -> None:
        self._take_waits()

    def _take_waits(self) -> None:
        """The replies of the CLAIMs sent behind the BZPOPMIN waits (see Broker.start_wait) that arrived;
        once one has, the other groups' waits are ended, so their claims reply too."""
        took = False
        for g, (want, busy, w) in list(self.waiting.items()):
            if g not in self._woke and not self._wait_ready(w):
                continue
            reply = w.finish_wait()
            del self.waiting[g]
            self._unblocked.discard(g)
            self.idle = False
            self.claiming -= want
            if isinstance(reply, NoScriptError):
                self.broker.load_scripts()
            self._claimed(reply, want, busy, g)
            took = True
        self._woke = set()
        if not took:
            return
        if self.waiting:
            self._cancel_waits()
        if not self.sup.accepting:
            self.return_buffer()  # the wait was ended by a stop: these tasks go straight back
        else:
            self.dispatch()  # woken with tasks after idling: hand them to the children before anything else

    def _asks(self, want: int) -> list[int]:
        """want split across the claim groups.  Strict order: all of it to the first group, and what a group
        whose last claim came back short (with k tasks) will not fill, want - k, on to the next group, and
        so on.  Weights: each group's share by weight, and what a short group will not fill on to the
        next.  The split goes by the groups' last replies: strict within one round trip's staleness."""
        n = len(self._groups)
        if n == 1:
            return [want]
        if self.cfg.weights:
            self._turn += 1
            base = shares(want, [grp.weight for grp in self._groups], self._turn)
        else:
            base = [want] + [0] * (n - 1)
        out, carry = [], 0
        for g in range(n):
            ask = base[g] + carry
            out.append(ask)
            carry = max(0, ask - self._got[g]) if self._short[g] else 0
        return out

    def _send_step(self, want: int, promote: bool = False) -> None:
        """Send one round trip without waiting: the COMPLETE of every queue with results, then one CLAIM of
        up to want tasks.  Up to MAX_STEPS run at once, so Redis executes one while this process dispatches
        the previous one's tasks and drains results."""
        broker, cfg, worker, gof = self.broker, self.cfg, self.sup.worker_id, self._gof
        done = self.completions
        # (group, packed commands, how many replies) each, in send order (the order of the replies)
        # Progress first: a task whose result is in this step gets its last progress before its final state.
        parts = self._pack_progress() if self.progress else []
        nprogress = sum(p[2] for p in parts)
        ts = int(time.time() * 1000)
        parts += [(gof[q], broker.pack_complete(self._qks[q], cfg.result_ttl,
                                                fast.build_event(self._qnames_b[q], items, ts), items, worker,
                                                cfg.stats), 1)
                  for q, items in done.items()]
        nstats = 0
        if self.stats:  # the done counts drained since the last step: a few commands per queue (pack_stats)
            if ts // 3600000 != self._stats_hour:
                self._stats_hour, self._stats_seen = ts // 3600000, set()
            for q, rows in self.stats.items():
                packed, k = broker.pack_stats(self._qks[q], ts, rows, self._fresh_stats_key)
                parts.append((gof[q], packed, k))
                nstats += k
            self.stats = {}
        claims = []  # (group, want) of each CLAIM; want 0 only moves due tasks to their ready lists
        for g, ask in enumerate(self._asks(max(want, 0))):
            if ask > 0 or promote:
                grp = self._groups[g]
                parts.append((g, broker.pack_claim(grp.keys, grp.tail, ask, worker, self._lease_ms, cfg.max_payload,
                                                   cfg.result_ttl, self._sizes[g]), 1))
                claims.append((g, ask))
        if not parts:
            return
        if self.router is None:
            broker.send_packed(b"".join(p[1] for p in parts) if len(parts) > 1 else parts[0][1])
            self._main_fd = broker.main_fileno()
        else:
            try:
                self.router.send(parts)
            except BaseException:
                self.claim_lost = self.claim_lost or bool(claims)  # a master may have run its claim
                raise
        self.completions = {}
        if nprogress:
            self.pending.append(("progress", nprogress))
        for q, items in done.items():
            self.pending.append(("complete", q, items))
        if nstats:
            self.pending.append(("stats", nstats))
        busy = bool(self.inflight)
        for g, ask in claims:
            self.pending.append(("claim", ask, busy, g))
            self.claiming += ask
            if ask == 0 and promote:
                self.next_due = None  # the reply says when the next one is due

    def _collect(self) -> int:
        """Process the replies that have arrived."""
        broker, raw, n = self.broker, self._raw, 0
        while self.pending and raw.reply_ready():
            entry = self.pending[0]
            reply = raw.read_reply()
            self.pending.popleft()
            n += 1
            if entry[0] == "complete":
                if isinstance(reply, Exception):
                    self._requeue_completions(entry[1], entry[2])
                    self._check_full(reply)  # the results are kept: an outage until Redis takes writes
                    if not isinstance(reply, NoScriptError):
                        log.error("writing results failed: %s", reply)
                else:
                    self.sup.health.wrote()
                    items = entry[2]
                    if reply[1]:  # outcomes of attempts we no longer held were not written: not counted
                        refused = refusals(reply[1])
                        log_refused(refused, "result", self.sup.worker_id)
                        lost = {r.id for r in refused if not resent(r, self.sup.worker_id)}
                        if lost:
                            if self.sup.metrics is not None:
                                self.sup.metrics.forget(lost)
                            items = [v for k in range(0, len(items), 7) if items[k] not in lost
                                     for v in items[k:k + 7]]
                    ok = items[2::7].count(b"done")
                    self.done_total += ok
                    self.failed_total += len(items) // 7 - ok
                    if self.sup.metrics is not None and items:
                        self.sup.metrics.completed(entry[1], items)
            elif entry[0] == "stats":
                # best effort, like progress: counts a failed write loses are not sent again
                for i in range(entry[1]):
                    if i:
                        reply = raw.read_reply()
                    if isinstance(reply, Exception) and not refuses_writes(reply):
                        log.warning("writing stats history failed (dropped): %s", reply)
                reply = None
            elif entry[0] == "progress":
                # its replies were sent back to back, ahead of the step's COMPLETE: they are all here or close
                for i in range(entry[1]):
                    if i:
                        reply = raw.read_reply()
                    if isinstance(reply, Exception) and not refuses_writes(reply):  # full: the COMPLETE says so
                        log.warning("writing progress failed (dropped: progress is best effort): %s", reply)
                reply = None
            elif entry[0] == "fetch":
                for i, seq in enumerate(entry[1]):
                    if i:
                        reply = raw.read_reply()
                    self._fetched(seq, reply)
                reply = None
            else:
                self.claiming -= entry[1]
                self._claimed(reply, entry[1], entry[2], entry[3])
            if isinstance(reply, NoScriptError):
                broker.load_scripts()  # Redis restarted or was flushed: the next step runs again
        return n

    def _check_full(self, reply) -> None:
        """A reply refusing writes (OOM: Redis at maxmemory under noeviction; MISCONF: it cannot persist) is
        an outage, not a failed write: raised as RedisFull for Supervisor._redis, which backs off and
        retries; what was refused is kept."""
        if refuses_writes(reply):
            raise RedisFull(full_message(self.broker.url, "the supervisor's writes are refused", reply),
                            url=redacted(self.broker.url),
                            cause="misconf" if cannot_persist(reply) else "oom") from reply

    def _requeue_completions(self, qidx: int, items: list) -> None:
        cur = self.completions.get(qidx)
        self.completions[qidx] = items + cur if cur else items
        self.results_due = 0.0

    def _claimed(self, reply, want: int, busy: bool, g: int = 0) -> None:
        """A CLAIM reply of group g (asked for want tasks; busy: tasks were in flight when it was sent)."""
        if isinstance(reply, Exception):
            self._check_full(reply)
            if not isinstance(reply, NoScriptError):
                log.error("claim failed: %s", reply)
                self.idle = True
            return
        self.sup.health.wrote()
        tasks, notes, leased, earliest, rnow, fetch, large = reply
        if large or fetch:
            self._sizes[g], self._small[g] = True, 0
        elif self._sizes[g] and tasks:
            self._small[g] += 1
            if self._small[g] >= SIZES_OFF_AFTER:
                self._sizes[g] = False
        for i in range(0, len(notes), 2):
            log.warning("queue entry %s: %s", notes[i].decode(errors="replace"), notes[i + 1].decode(errors="replace"))
        n = len(tasks) // 7
        inflight = self.inflight
        # Redis' clock: the delay from its now to the due time, applied to ours
        due = time.monotonic() + max(0, earliest - rnow) / 1000.0 if earliest >= 0 else None
        if self.router is None:
            self.next_due = due
        else:  # the earliest of every group's last report
            self._due[g] = due
            dues = [d for d in self._due if d is not None]
            self.next_due = min(dues) if dues else None
        self.due_unblocked = False
        if n and any(tasks[6::7]):
            self.sup.canceler.saw_timeouts()
        if self.sup.metrics is not None:
            self.sup.metrics.claimed(tasks)
        # Burst exit also waits for other supervisors' leases (a dead one's tasks come back on expiry) and
        # for scheduled and retrying tasks.
        drained = n == 0 and not notes and not inflight and leased == 0 and not busy and earliest < 0
        if self.router is None:
            self.drained = drained
        else:  # drained: every group's last claim said so, none said otherwise since
            if not drained:
                self._drained = [False] * len(self._groups)
            self._drained[g] = drained
            self.drained = all(self._drained)
        self.recheck = n < want and (bool(inflight) or busy)
        first = self._groups[g].queues[0]  # a group is a run of queues: its index i is the supervisor's first + i
        if first and n:
            tasks[0::7] = [first + i for i in tasks[0::7]]
        tasks = self._screen_fetch(tasks, fetch) if fetch else self._screen(tasks)
        self.seq = fast.take_claimed(tasks, inflight, self.buffer, self.seq)
        if self._fetch_marks or self.held:
            self._hold(len(tasks) // 7)
        if want > 0:
            self._short[g] = n < want and not notes
            self._got[g] = n
            if all(self._short):
                self.idle = True

    def _screen(self, tasks: list) -> list:
        """The claimed tasks that may run: one whose record breaks a limit of docs/protocol.md (a foreign
        producer's) is failed alone, dead with a reason naming the field, and left out."""
        offs = fast.screen_claimed(tasks)  # the cheap pass: None in the common case
        if offs is None:
            return tasks
        bad = []
        for i in offs:
            why = check_record(tasks[i + 1], tasks[i + 2], tasks[i + 4], tasks[i + 5], tasks[i + 6])
            if why is not None:
                bad.append((i, why))
        if not bad:
            return tasks
        ms = int(time.time() * 1000)
        skip = set()
        for i, why in bad:
            skip.add(i)
            tid = tasks[i + 1]
            log.warning("task %s: invalid record, failed: %s", tid[:60].decode(errors="replace"), why)
            self.completions.setdefault(tasks[i], []).extend(
                (tid, tasks[i + 5], b"invalid", why.encode(), b"", ms, ms))
        self.results_due = 0.0
        return [v for i in range(0, len(tasks), 7) if i not in skip for v in tasks[i:i + 7]]

    # ------------------------------------------------------------------ large payloads
    # CLAIM leaves a payload over scripts.INLINE_PAYLOAD out of its reply (a string entering Lua costs Redis a
    # hash of every byte): its task is held back from the buffer while a plain HGET, pipelined on the main
    # connection like any step, reads the payload, then joins the buffer in claim order with the next tasks.
    # CLAIM does so only when asked (_sizes, per claim group: reading sizes first costs one command a task):
    # from the first claim that returns a large payload inline until SIZES_OFF_AFTER claims in a row held
    # none.
    def _screen_fetch(self, tasks: list, fetch: list) -> list:
        """_screen, noting which of the tasks kept lack their payload (marked by identity: the id object)."""
        marks = [tasks[i + 1] for i in fetch]
        tasks = self._screen(tasks)
        self._fetch_marks = marks
        return tasks

    def _hold(self, n: int) -> None:
        """The last n tasks queued in the buffer (one claim's) wait in held instead, in claim order, when one
        of them lacks its payload or earlier ones are held: a task joins the buffer only once every task
        claimed before it has its payload, so a queue's order is kept.  Sends the payloads' HGETs."""
        marks = {id(m) for m in self._fetch_marks}
        self._fetch_marks = []
        buf, inflight = self.buffer, self.inflight
        new = [buf.pop() for _ in range(n)][::-1]
        fetch = [seq for seq in new if id(inflight[seq].id) in marks]
        self.held.extend(new)
        self._send_fetch(fetch)
        self._release_held()

    def _release_held(self) -> None:
        held, buf, fetching = self.held, self.buffer, self.fetching
        while held and held[0] not in fetching:
            buf.append(held.popleft())

    def _send_fetch(self, seqs: list[int]) -> None:
        """Send the HGET of each task's payload (pipelined on the main connection, or its master's)."""
        if not seqs:
            return
        inflight, pre, gof = self.inflight, self._prefixes, self._gof
        self.fetching.update(seqs)
        by_g: dict[int, list[int]] = {}
        for seq in seqs:
            by_g.setdefault(gof[inflight[seq].qidx], []).append(seq)
        parts = []
        for g, ss in by_g.items():
            cmds = b"".join(fast.pack_command([b"HGET", pre[inflight[s].qidx] + inflight[s].id, b"payload"])
                            for s in ss)
            parts.append((g, cmds, len(ss)))
        if self.router is None:
            self.broker.send_packed(b"".join(p[1] for p in parts))
            self._main_fd = self.broker.main_fileno()
        else:
            self.router.send(parts)
        self.pending.append(("fetch", [s for ss in by_g.values() for s in ss]))  # the order of the replies

    def _fetched(self, seq: int, reply) -> None:
        """A held task's payload arrived: the held tasks it no longer blocks join the buffer.  A record that
        changed under its lease (deleted, its payload removed, the key overwritten) fails that task alone,
        as an invalid record does."""
        if seq not in self.fetching:
            return  # returned or canceled meanwhile
        self.fetching.discard(seq)
        t = self.inflight[seq]
        if isinstance(reply, bytes):
            t.payload = reply
        else:
            self.held.remove(seq)
            self.inflight.pop(seq)
            ms = int(time.time() * 1000)
            why = (f"invalid record: reading field payload after the claim failed: {reply}"
                   if isinstance(reply, Exception)
                   else "invalid record: field payload is missing (removed after the claim)").encode()
            log.warning("task %s: %s", t.id[:60].decode(errors="replace"), why.decode(errors="replace"))
            self.completions.setdefault(t.qidx, []).extend((t.id, t.attempt, b"invalid", why, b"", ms, ms))
            self.results_due = 0.0
        self._release_held()

    def _fresh_stats_key(self, key: bytes) -> bool:
        """Is this the first write of this hour's stats key by this supervisor?  Then pack_stats sets its
        expiry and indexes its name: once per key per hour, not per step."""
        if key in self._stats_seen:
            return False
        self._stats_seen.add(key)
        return True

    def _pack_progress(self) -> list[tuple[int, bytes, int]]:
        """The step's progress commands: (claim group, commands, how many replies they produce) a queue."""
        by_q: dict[int, list] = {}
        for qidx, tid, record, members, ts in self.progress.values():
            by_q.setdefault(qidx, []).append((tid, record, members, ts))
        self.progress = {}
        out = []
        for q, entries in by_q.items():
            cmds, k = self.broker.pack_progress(self._qks[q], entries)
            out.append((self._gof[q], cmds, k))
        return out
