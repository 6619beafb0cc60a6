"""The supervisor: one per machine; claims batches from Redis, fans them out to prefork children over
shared-memory rings, writes results back in pipelined batches, renews leases and recovers lost ones.

Shape of the main loop (gunicorn-like: signal handlers only record the signal; the loop acts on it):

    drain result rings -> one round trip: COMPLETE per queue + CLAIM -> dispatch into rings -> periodic
    work (lease renewal, expired-lease recovery, child memory) -> sleep in poll() only when there is
    nothing to do, on: result eventfds, child pidfds, the signal pipe, and the BZPOPMIN socket.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import select
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field

import orjson

from . import child as childmod
from ._impl import fast
from redis.exceptions import NoScriptError

from .broker import CONNECTION_ERRORS, Broker, redacted, refusals
from .keys import queue_keys

log = logging.getLogger("xq")

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BOOT = 3        # children fail to boot: halt instead of respawning forever
EXIT_APP_IMPORT = 4  # MODULE:APP could not be imported (raised by the CLI)

RING_CAPACITY = 1 << 21          # 2 MiB each way per child; larger messages stream through in chunks
BUFFER_SECONDS = 0.030           # keep ~30 ms of work queued in each child's ring
MAX_DEPTH = 1024
BOOT_FAILURES_TO_HALT = 5
MAX_STEPS = 2                    # round trips in flight at once
RESULT_DELAY = 0.010             # longest a result waits while its child still has work queued


@dataclass
class Config:
    """Options of `xq run`."""

    queues: list[str]
    procs: int
    burst: bool = False
    lease: float = 30.0
    result_ttl: int = 86400
    max_payload: int = 32 * 1024 * 1024
    grace: float = 30.0
    max_tasks_per_child: int = 0
    max_memory_per_child: int = 0      # bytes of RSS; 0 = no limit
    prefetch: int = 0                  # tasks claimed ahead per child beyond its ring; 0 = one each
    wait_timeout: float = 1.0          # BZPOPMIN timeout: bounds the cost of a missed wake-up
    retain_memory: bool = True         # children keep freed memory for the next task (child.retain_freed_memory)
    weights: list | None = None        # per-queue claim weights (None: strict queue order)
    level_weights: list | None = None  # weights of priority levels 0..9 within each queue (None: strict)
    kill_grace: float = 5.0            # seconds between SIGTERM / xq.Cancelled and SIGKILL of a child


@dataclass
class Child:
    """One prefork child and its two rings."""

    slot: int
    pid: int
    pidfd: int
    inring: object                     # supervisor -> child
    outring: object                    # child -> supervisor
    maps: list                         # mmaps to close after exit
    efds: list                         # eventfds to close after exit
    ctl: memoryview                    # shared control words (see child.py)
    unacked: deque = field(default_factory=deque)   # seqs written to the ring, in order
    partial: list | None = None        # [seq, head, body, offset] of a message not fully written yet
    done: int = 0
    stopping: bool = False
    started: float = 0.0
    kill: tuple | None = None          # (reason 'timeout'|'canceled', seq, text): why we are stopping it mid-task
    kill_at: float = 0.0               # monotonic time of the SIGKILL that follows a SIGTERM / cancel


class Supervisor:
    def __init__(self, app, broker: Broker, cfg: Config, worker_id: str | None = None):
        self.app = app
        self.broker = broker
        self.cfg = cfg
        self.qks = [queue_keys(q) for q in cfg.queues]
        self.qnames = list(cfg.queues)
        self._qnames_b = [q.encode() for q in self.qnames]
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.children: dict[int, Child] = {}       # pid -> child
        self.inflight: dict[int, fast.InFlight] = {}  # seq -> the claimed task
        self.buffer: deque[int] = deque()          # claimed seqs not yet in a ring
        self.completions: dict[int, list] = {}     # qidx -> flat COMPLETE args
        self.progress: dict[int, tuple] = {}       # seq -> (qidx, id, record JSON, event members, ts ms): last report
        self.results_due = 0.0                     # monotonic time by which buffered results are sent
        self.seq = 0
        self.avg = 0.001                           # EWMA of task run time, seconds
        self.depth = 1
        self.accepting = True
        self.stop_deadline = None
        self.hard = False
        self.idle = False                          # the last claim found the queues empty
        self.drained = False                       # ... and nothing was in flight then (burst exit)
        self.recheck = False                       # ... but it ran while tasks were in flight
        self.waiting: tuple | bool = False         # (want, busy) of the CLAIM queued behind an outstanding BZPOPMIN
        self.wait_woke = False                     # the last poll() saw the wait's reply arrive
        self.ring_full = False                     # the last dispatch found a ring out of bytes
        self.redis_ok = False
        self.next_redis_try = 0.0
        self.backoff = 0.1
        self.boot_failures = 0
        self.exit_code = EXIT_OK
        self.pending: deque[tuple] = deque()       # replies expected on the main connection, in order
        self.claiming = 0                          # tasks asked for by claims in flight
        self.signals: deque[int] = deque()
        now = time.monotonic()
        self.next_renew = now + cfg.lease / 6
        self.next_recover = now
        self.next_rss = now + 5.0
        self._claim_keys = Broker.claim_keys(self.qks)
        self._claim_tail = Broker.claim_tail(self.qks, cfg.weights, cfg.level_weights, app.rate_limits_json())
        self._wake_keys = [qk.wake for qk in self.qks]
        self.lease_ms = int(cfg.lease * 1000)
        # lifecycle
        self.specs = {name.encode(): spec for name, spec in app.tasks.items()}
        self.timeouts = {n: int(s.timeout * 1000) for n, s in self.specs.items() if s.timeout}
        self.watching = bool(self.timeouts)        # some task may have a timeout: watch running children
        self.next_watch = 0.0
        self.max_retries_json = orjson.dumps(app.max_retries_overrides())
        self.next_due: float | None = None         # monotonic time the first scheduled/retrying task is due
        self.due_unblocked = False                 # the idle wait was ended early for a due task
        self.canceling: dict[int, float] = {}      # seq -> monotonic SIGKILL deadline (0: not signalled yet)
        self.control = None                        # Pub/Sub connection of the queues' control channels
        self.control_ready = False                 # poll() saw it readable
        self.next_control = 0.0
        qset = set(self.qnames)
        self.crons = [e for e in app.crons if e.queue in qset]
        self.clock = app.clock
        self.next_cron: dict[str, float] = {}      # entry key -> next tick (clock time)
        self.cron_ready = False

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        self._install_signals()
        log.info("xq supervisor %s: %d children, queues %s, Redis %s, %s hot path%s", self.worker_id,
                 self.cfg.procs, ",".join(self.qnames), redacted(self.broker.url), fast.IMPLEMENTATION,
                 ", burst" if self.cfg.burst else "")
        try:
            for slot in range(self.cfg.procs):
                self._spawn(slot)
            while True:
                if self._tick():
                    break
        finally:
            self._teardown()
        return self.exit_code

    def _install_signals(self) -> None:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sig_r, self._sig_w = r, w
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(s, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def _handle_signals(self) -> None:
        while self.signals:
            s = self.signals.popleft()
            if s == signal.SIGCHLD:
                continue  # pidfds tell us; the signal only wakes poll()
            if self.accepting:
                log.info("received %s: stop claiming, finish running tasks (grace %.0f s), return the rest; "
                         "send it again to stop at once", signal.Signals(s).name, self.cfg.grace)
                self._begin_stop()
            elif not self.hard:
                log.warning("received %s again: stopping now; running tasks go back to their queues",
                            signal.Signals(s).name)
                self._hard_stop()

    def _begin_stop(self) -> None:
        self.accepting = False
        self.stop_deadline = time.monotonic() + self.cfg.grace
        for c in self.children.values():
            c.stopping = True
            c.ctl[childmod.CTL_STOP] = 1
            c.inring.write(b"", b"")  # an empty frame wakes a sleeping child; it reads nothing runnable
        self._return_buffer()
        self._end_wait()

    def _hard_stop(self) -> None:
        self.hard = True
        for c in list(self.children.values()):
            self._kill(c.pid)

    def _kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _teardown(self) -> None:
        for c in list(self.children.values()):
            self._kill(c.pid)
            try:
                os.waitpid(c.pid, 0)
            except ChildProcessError:
                pass
            self._close_child(c)
        self.children.clear()
        self._close_control()
        signal.set_wakeup_fd(-1)
        os.close(self._sig_r)
        os.close(self._sig_w)
        self.broker.reset()

    # ------------------------------------------------------------------ children
    def _spawn(self, slot: int) -> Child:
        size = fast.Ring.size_for(RING_CAPACITY)
        m_in, m_out, m_ctl = mmap.mmap(-1, size), mmap.mmap(-1, size), mmap.mmap(-1, childmod.CTL_SIZE)
        e_in = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        e_out = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        inring, outring = fast.Ring(m_in, e_in), fast.Ring(m_out, e_out)
        inring.reset()
        outring.reset()
        ctl = memoryview(m_ctl).cast("Q")
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # child
            for c in self.children.values():   # other children's rings are not ours to touch
                for fd in c.efds + [c.pidfd]:
                    _close_quiet(fd)
            _close_quiet(self._sig_r)
            _close_quiet(self._sig_w)
            self.broker.forget_after_fork()
            childmod.child_main(self.app, self.qnames, inring, outring, ctl, parent,
                                self.cfg.max_tasks_per_child, self.cfg.retain_memory)
        c = Child(slot, pid, os.pidfd_open(pid), inring, outring, [m_in, m_out, m_ctl], [e_in, e_out], ctl,
                  started=time.monotonic())
        self.children[pid] = c
        return c

    def _close_child(self, c: Child) -> None:
        for fd in c.efds + [c.pidfd]:
            _close_quiet(fd)
        c.ctl.release()
        c.inring = c.outring = None
        for m in c.maps:
            try:
                m.close()
            except BufferError:
                pass  # a ring object still references it; it goes with the last reference

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            c = self.children.pop(pid, None)
            if c is not None:
                self._on_child_exit(c, status)

    def _on_child_exit(self, c: Child, status: int) -> None:
        self._drain(c)  # results written before it died are valid
        current = c.ctl[childmod.CTL_CURRENT]
        booted = c.ctl[childmod.CTL_READY]
        seqs = list(c.unacked)
        if c.partial is not None:
            seqs.append(c.partial[0])
        how = _describe_exit(status)
        lost = [s for s in seqs if s == current]
        unstarted = [s for s in seqs if s != current]
        # Never started: back to the front of the local buffer, in order, for another child.
        self.buffer.extendleft(reversed(unstarted))
        # Exit 0 is a child that stopped on request or after --max-tasks-per-child: nothing was lost.
        clean = os.waitstatus_to_exitcode(status) == 0
        started_ms = int(c.ctl[childmod.CTL_STARTED] - time.monotonic() * 1000 + time.time() * 1000)
        if lost:
            seq = lost[0]
            t = self.inflight.pop(seq)
            self.progress.pop(seq, None)  # RELEASE below ends this attempt first: a later progress would be stale
            if self.canceling.pop(seq, None) is not None:  # a cancel was being carried out
                self._release(t.qidx, "canceled", [(t.id, t.attempt)], error="canceled while running (the child was killed)",
                              outcome="canceled", started_ms=started_ms)
            elif c.kill and c.kill[0] == "timeout" and c.kill[1] == seq:
                spec = self.specs.get(t.name)
                delay = spec.backoff.delay(t.attempt) if spec is not None else 0.0
                log.error("task %s (%s): %s", t.id.decode(), t.name.decode(), c.kill[2])
                self._release(t.qidx, "lost", [(t.id, t.attempt)], error=c.kill[2], outcome="timeout",
                              delay_ms=int(delay * 1000), started_ms=started_ms)
            elif self.hard or (not self.accepting and clean):
                self._release(t.qidx, "return", [(t.id, t.attempt)])
            else:
                err = f"worker process {c.pid} {how} while running the task"
                log.error("task %s (%s): %s", t.id.decode(), t.name.decode(), err)
                self._release(t.qidx, "lost", [(t.id, t.attempt)], error=err, outcome="lost", started_ms=started_ms)
        if c.kill and not self.hard and self.accepting:
            log.warning("child %d stopped (%s: %s); respawning", c.pid, c.kill[0], how)
        elif not clean and not self.hard and self.accepting:
            log.warning("child %d %s; respawning", c.pid, how)
        elif clean and not c.stopping and self.accepting:
            log.info("child %d recycled after %d tasks (--max-tasks-per-child)", c.pid, c.ctl[childmod.CTL_DONE])
        self._close_child(c)
        if not booted and os.waitstatus_to_exitcode(status) == childmod.EXIT_BOOT_FAILED:
            self.boot_failures += 1
            if self.boot_failures >= BOOT_FAILURES_TO_HALT:
                log.critical("children failed to boot %d times in a row; halting", self.boot_failures)
                self.exit_code = EXIT_BOOT
                self._begin_stop()
                self._hard_stop()
                return
        elif booted:
            self.boot_failures = 0
        if self.accepting and not self.hard:
            self._spawn(c.slot)

    # ------------------------------------------------------------------ the loop
    def _tick(self) -> bool:
        """One turn of the main loop; True when the supervisor should exit."""
        if self.waiting and self.wait_woke:
            # Woken with tasks after idling: hand them to the children before anything else.
            self._take_wait()
            if self.accepting and self.buffer:
                self._dispatch()
        self._handle_signals()
        self._reap()
        got = self._drain_all()
        now = time.monotonic()
        if self.control is not None and (self.control_ready or now >= self.next_control):
            # poll() said a cancel request arrived; a loop too busy to sleep looks every 50 ms
            self.control_ready = False
            self.next_control = now + 0.05
            self._read_control()
        if (self.watching or self.canceling or self.next_watch) and now >= self.next_watch:
            self._watch(now)
        if not self.accepting and self.stop_deadline is not None and now >= self.stop_deadline \
                and self.children and not self.hard:
            log.warning("grace period of %.0f s ran out; stopping the remaining children", self.cfg.grace)
            self._hard_stop()
        if self.accepting and (self.buffer or self.partials()):
            self._dispatch()
        self._redis_work(now)
        if self.accepting and (self.buffer or self.partials()):
            self._dispatch()
        if not self.accepting:
            if not self.children:
                self._return_buffer()
                if not self.completions and not self.buffer and not self.waiting \
                        or not self._redis_reachable_for_exit(now):
                    return True
        elif self.cfg.burst and not self.inflight and not self.completions and self.redis_ok \
                and not self.pending:
            if self.drained:
                log.info("burst mode: queues are empty and nothing is running; stopping")
                self._begin_stop()
                return False
            if self.idle and self.recheck:
                # The last claim ran while tasks were still in flight; the queues may have refilled since.
                self.idle, self.recheck = False, False
        if got or self._busy():
            return False
        self._sleep()
        return False

    def partials(self) -> bool:
        """Is a large message half-written into some child's ring?"""
        return any(c.partial is not None for c in self.children.values())

    def _busy(self) -> bool:
        """Is there Redis work to do right now (so the loop must not sleep)?"""
        if not self.redis_ok:
            return False
        if self.pending and self.broker.reply_ready():
            return True
        if len(self.pending) >= MAX_STEPS:
            return False  # wait for a reply (its socket is in the poll set)
        if self._results_due() or self._due_now():
            return True
        return self._claim_size() > 0

    def _due_now(self) -> bool:
        """Is a scheduled or retrying task due (so a claim must run, to move it, even with no room)?"""
        return self.next_due is not None and self.accepting and not self.waiting and not self.claiming \
            and time.monotonic() >= self.next_due

    def _results_due(self) -> bool:
        return bool(self.completions or self.progress) and time.monotonic() >= self.results_due

    def _low(self) -> int:
        """A child with at most this many tasks queued is running short: its results go out at once."""
        return max(1, self.depth // 3)

    def _redis_reachable_for_exit(self, now: float) -> bool:
        # While stopping, keep trying to flush completions and returns for up to the grace period;
        # past it, what is left is safe anyway: leases expire and any supervisor recovers the tasks.
        return self.stop_deadline is None or now < self.stop_deadline + 10.0

    def _claim_size(self) -> int:
        """How many tasks to claim now: 0 unless a worthwhile batch is free (a quarter of the capacity),
        or nothing at all is in flight or being claimed."""
        if not self.accepting or self.idle or self.waiting:
            return 0
        want = self._want()
        if want <= 0:
            return 0
        if self.claiming or self.inflight:
            live = sum(1 for c in self.children.values() if not c.stopping)
            if want < live * (self.depth + max(self.cfg.prefetch, 1)) // 4:
                return 0
        return want

    def _want(self) -> int:
        live = sum(1 for c in self.children.values() if not c.stopping)
        cap = live * (self.depth + max(self.cfg.prefetch, 1))
        return cap - len(self.inflight) - self.claiming

    # ------------------------------------------------------------------ results
    def _drain_all(self) -> int:
        n = 0
        for c in list(self.children.values()):
            n += self._drain(c)
        return n

    def _drain(self, c: Child) -> int:
        if c.outring is None:
            return 0
        first = not self.completions
        had_progress = bool(self.progress)
        n, busy = fast.drain_results(c.outring, self.inflight, self.completions, c.unacked, 4096, self.progress)
        if self.progress and not had_progress and first and not n:
            # Progress alone waits up to RESULT_DELAY, like results, so reports coalesce into one write.
            self.results_due = time.monotonic() + RESULT_DELAY
        if n:
            # Results wait (up to RESULT_DELAY) only while their child has plenty queued: then they go out
            # in one batch with the next claim instead of one round trip, and one wake-up, per result.
            now = time.monotonic()
            if len(c.unacked) <= self._low() or c.stopping or not self.accepting:
                self.results_due = now
            elif first:
                self.results_due = now + RESULT_DELAY
            # EWMA of run time, weighted by how many tasks this batch holds
            self.avg += min(1.0, 0.05 * n) * (busy / n - self.avg)
            self.depth = max(1, min(MAX_DEPTH, int(BUFFER_SECONDS / max(self.avg, 1e-6))))
            c.done += n
        return n

    def _recycle(self, c: Child, why: str) -> None:
        log.info("recycling child %d: %s", c.pid, why)
        c.stopping = True
        c.ctl[childmod.CTL_STOP] = 1
        c.inring.write(b"", b"")

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self) -> None:
        """Move claimed tasks from the local buffer into the rings of the least-loaded children."""
        kids = [c for c in self.children.values() if not c.stopping]
        if not kids:
            return
        if self.watching:
            self.next_watch = 0.0  # new tasks may carry timeouts: look at the children on the next turn
        for c in kids:
            if c.partial is not None:
                self._continue(c)
        self.ring_full = False
        depth = self.depth
        buffer, inflight = self.buffer, self.inflight
        # Even shares: each child gets up to (its unacked + the buffer) / children, capped by depth.
        total = len(buffer) + sum(len(c.unacked) for c in kids)
        share = min(depth, -(-total // len(kids)))
        for c in sorted(kids, key=lambda c: len(c.unacked)):
            if c.partial is not None:
                continue
            written, why = fast.fill_ring(c.inring, buffer, inflight, c.unacked, share - len(c.unacked))
            if why == 1:
                self.ring_full = True  # out of bytes for now
            elif why == 2:  # a large message streams through in chunks
                seq = buffer.popleft()
                t = inflight[seq]
                c.partial = [seq, fast.encode_task_head(seq, t.attempt, t.ct, t.qidx, t.id, t.name), t.payload, 0]
                self._continue(c)
            if not buffer:
                return

    def _continue(self, c: Child) -> bool:
        seq, head, body, off = c.partial
        off = c.inring.write(head, body, off)
        if off == c.inring.message_size(head, body):
            c.partial = None
            c.unacked.append(seq)
            return True
        c.partial[3] = off
        return False

    # ------------------------------------------------------------------ Redis
    def _redis_work(self, now: float) -> None:
        if not self.redis_ok:
            if now < self.next_redis_try:
                return
            try:
                self.broker.ping()
                self.broker.load_scripts()
            except CONNECTION_ERRORS as e:
                self._redis_down(e, now)
                return
            if self.backoff > 0.1:
                log.info("Redis at %s is reachable again", redacted(self.broker.url))
            self.redis_ok, self.backoff, self.idle, self.waiting = True, 0.1, False, False
        try:
            if self.waiting and self._wait_ready():
                self._take_wait()
            self._collect()
            if self.waiting and self.next_due is not None and now >= self.next_due and not self.due_unblocked:
                # A task is due while we wait: end the wait so its claim runs now (BZPOPMIN's own timeout
                # is only as precise as Redis' 100 ms cron).
                self.due_unblocked = True
                self.broker.cancel_wait()
            if len(self.pending) < MAX_STEPS:
                want = self._claim_size()
                due = self._due_now()
                if want > 0 or due or self._results_due():
                    self._send_step(want, promote=due)
            if self.crons and self.accepting:
                self._cron(now)
            if self.control is None and self.accepting:
                self._subscribe_control()
            if now >= self.next_renew:
                self._renew()
                self.next_renew = now + self.cfg.lease / 6
            if now >= self.next_recover:
                self._recover()
                self.next_recover = now + min(1.0, self.cfg.lease / 4)
            if now >= self.next_rss and self.cfg.max_memory_per_child:
                self._check_memory()
                self.next_rss = now + 2.0
        except CONNECTION_ERRORS as e:
            self._redis_down(e, now)

    def _redis_down(self, e: Exception, now: float) -> None:
        # Results sent but not confirmed are kept to be sent again (COMPLETE is idempotent).  A claim
        # whose reply was lost leased tasks we never saw: their leases expire and any supervisor
        # recovers them.
        for entry in self.pending:
            if entry[0] == "complete":
                self._requeue_completions(entry[1], entry[2])
        self.pending.clear()
        self.claiming = 0
        log.error("Redis at %s unreachable (%s: %s); retrying in %.1f s; running tasks continue, results are "
                  "kept until it is back", redacted(self.broker.url), type(e).__name__, e, self.backoff)
        self.broker.reset()
        self._close_control()
        self.redis_ok = False
        self.waiting = False
        self.next_redis_try = now + self.backoff
        self.backoff = min(self.backoff * 2, 5.0)

    def _wait_ready(self) -> bool:
        fd = self.broker.wait_fileno()
        if fd < 0:
            return True
        r, _, _ = select.select([fd], [], [], 0)
        return bool(r)

    def _take_wait(self) -> None:
        self.wait_woke = False
        try:
            reply = self.broker.finish_wait()
        except CONNECTION_ERRORS as e:
            self._redis_down(e, time.monotonic())
            return
        self._wait_claimed(reply)

    def _wait_claimed(self, reply) -> None:
        """The reply of the CLAIM sent behind the BZPOPMIN wait (see Broker.start_wait)."""
        want, busy = self.waiting
        self.waiting, self.idle = False, False
        self.claiming -= want
        if isinstance(reply, NoScriptError):
            self.broker.load_scripts()
        self._claimed(reply, want, busy)
        if not self.accepting:
            self._return_buffer()  # the wait was ended by a stop: these tasks go straight back

    def _end_wait(self) -> None:
        """Stopping: end the wait now so its claim replies at once and its tasks can be returned."""
        if self.waiting and self.redis_ok:
            try:
                self.broker.cancel_wait()
            except CONNECTION_ERRORS as e:
                self._redis_down(e, time.monotonic())

    def _send_step(self, want: int, promote: bool = False) -> None:
        """Send one round trip without waiting: the COMPLETE of every queue with results, then one CLAIM of
        up to want tasks.  Up to MAX_STEPS run at once, so Redis executes one while this process dispatches
        the previous one's tasks and drains results."""
        broker, cfg = self.broker, self.cfg
        done = self.completions
        # Progress first: a task whose result is in this step gets its last progress before its final state.
        progress, nprogress = self._pack_progress() if self.progress else (None, 0)
        cmds = [progress] if progress else []
        cmds += [broker.pack_complete(self.qks[q], cfg.result_ttl, self._event(q, items), items, self.worker_id)
                 for q, items in done.items()]
        claim = want > 0 or promote
        if claim:  # want 0 only moves due tasks to their ready lists
            cmds.append(broker.pack_claim(self._claim_keys, self._claim_tail, max(want, 0), self.worker_id,
                                          self.lease_ms, cfg.max_payload, cfg.result_ttl))
        if not cmds:
            return
        broker.send_packed(b"".join(cmds) if len(cmds) > 1 else cmds[0])
        self.completions = {}
        if nprogress:
            self.pending.append(("progress", nprogress))
        for q, items in done.items():
            self.pending.append(("complete", q, items))
        if claim:
            want = max(want, 0)
            self.pending.append(("claim", want, bool(self.inflight)))
            self.claiming += want
            if want == 0:
                self.next_due = None  # the reply says when the next one is due

    def _collect(self, block: bool = False) -> int:
        """Process the replies that have arrived (or wait for the oldest one if block)."""
        broker, n = self.broker, 0
        while self.pending and (block or broker.reply_ready()):
            block = False
            entry = self.pending[0]
            reply = broker.read_reply()
            self.pending.popleft()
            n += 1
            if entry[0] == "complete":
                if isinstance(reply, Exception):
                    self._requeue_completions(entry[1], entry[2])
                    if not isinstance(reply, NoScriptError):
                        log.error("writing results failed: %s", reply)
                else:
                    _log_refused(refusals(reply[1]), "result", self.worker_id)
            elif entry[0] == "progress":
                # its replies were sent back to back, ahead of the step's COMPLETE: they are all here or close
                for i in range(entry[1]):
                    if i:
                        reply = broker.read_reply()
                    if isinstance(reply, Exception):
                        log.warning("writing progress failed (dropped: progress is best effort): %s", reply)
                reply = None
            else:
                self.claiming -= entry[1]
                self._claimed(reply, entry[1], entry[2])
            if isinstance(reply, NoScriptError):
                broker.load_scripts()  # Redis restarted or was flushed: the next step runs again
        return n

    def _requeue_completions(self, qidx: int, items: list) -> None:
        cur = self.completions.get(qidx)
        self.completions[qidx] = items + cur if cur else items
        self.results_due = 0.0

    def _claimed(self, reply, want: int, busy: bool) -> None:
        if isinstance(reply, Exception):
            if not isinstance(reply, NoScriptError):
                log.error("claim failed: %s", reply)
                self.idle = True
            return
        tasks, notes, leased, earliest, rnow = reply
        for i in range(0, len(notes), 2):
            log.warning("queue entry %s: %s", notes[i].decode(errors="replace"), notes[i + 1].decode(errors="replace"))
        n = len(tasks) // 7
        inflight, buffer = self.inflight, self.buffer
        if earliest >= 0:
            # Redis' clock: the delay from its now to the due time, applied to ours
            self.next_due = time.monotonic() + max(0, earliest - rnow) / 1000.0
        else:
            self.next_due = None
        self.due_unblocked = False
        if not self.watching and n and any(tasks[6::7]):
            self.watching = True  # tasks with their own timeout arrived
        # Burst exit also waits for other supervisors' leases (a dead one's tasks come back on expiry) and
        # for scheduled and retrying tasks.
        self.drained = n == 0 and not notes and not inflight and leased == 0 and not busy and earliest < 0
        self.recheck = n < want and (bool(inflight) or busy)
        self.seq = fast.take_claimed(tasks, inflight, buffer, self.seq)
        if n < want and not notes:
            self.idle = True

    def _pack_progress(self) -> tuple[bytes, int]:
        """The step's progress commands, one group per queue, and how many replies they produce."""
        by_q: dict[int, list] = {}
        for qidx, tid, record, members, ts in self.progress.values():
            by_q.setdefault(qidx, []).append((tid, record, members, ts))
        self.progress = {}
        out, n = [], 0
        for q, entries in by_q.items():
            cmds, k = self.broker.pack_progress(self.qks[q], entries)
            out.append(cmds)
            n += k
        return b"".join(out), n

    def _event(self, qidx: int, items: list) -> bytes:
        """The events message of one COMPLETE (format in scripts.py)."""
        return fast.build_event(self._qnames_b[qidx], items, int(time.time() * 1000))

    def _by_queue(self, seqs) -> dict[int, list]:
        out: dict[int, list] = {}
        for s in seqs:
            t = self.inflight[s]
            out.setdefault(t.qidx, []).append((t.id, t.attempt))
        return out

    def _renew(self) -> None:
        for q, ids in self._by_queue(list(self.inflight)).items():
            for i in range(0, len(ids), 5000):
                lost_ids, cancel = self.broker.renew(self.qks[q], self.worker_id, self.lease_ms, ids[i:i + 5000])
                for lost in lost_ids:
                    log.warning("task %s: this worker's lease was lost (it ran out during an outage?); another "
                                "worker may run it too", lost.decode())
                for tid in cancel:  # in case the control message was missed
                    self._cancel(tid)

    def _recover(self) -> None:
        for qk in self.qks:
            requeued, failed, _ = self.broker.release(qk, "expired", [], error="recovered by " + self.worker_id,
                                                   ttl=self.cfg.result_ttl, max_retries=self.max_retries_json)
            if requeued or failed:
                self.idle = False
                log.warning("queue %s: recovered %d task(s) with expired leases (%d requeued, %d failed)",
                            qk.name, len(requeued) + len(failed), len(requeued), len(failed))

    def _release(self, qidx, mode: str, ids: list, error: str = "", outcome: str = "lost", delay_ms: int = 0,
                 started_ms="") -> None:
        try:
            _, _, refused = self.broker.release(self.qks[qidx], mode, ids, error=error, holder=self.worker_id,
                                                ttl=self.cfg.result_ttl, outcome=outcome, delay_ms=delay_ms,
                                                started_ms=started_ms, max_retries=self.max_retries_json)
            _log_refused(refused, f"{mode} release", self.worker_id)
        except CONNECTION_ERRORS as e:
            # The lease stays: once it expires, any live supervisor recovers the task.
            log.error("could not release %d task(s) (%s); their leases will expire and be recovered", len(ids), e)

    def _return_buffer(self) -> None:
        """Give claimed-but-unstarted tasks back to the head of their queues."""
        if not self.buffer:
            return
        seqs = list(self.buffer)
        self.buffer.clear()
        for q, ids in self._by_queue(seqs).items():
            self._release(q, "return", ids)
        for s in seqs:
            self.inflight.pop(s, None)

    # ------------------------------------------------------------------ timeouts and cancellation
    def _timeout_ms(self, t) -> int:
        """The processing timeout of an inflight task, ms (0: none): its own, else its task's."""
        return t.timeout_ms or self.timeouts.get(t.name, 0)

    def _watch(self, now: float) -> None:
        """Stop children whose task ran past its timeout or was canceled; SIGKILL those past their grace.
        Sets next_watch to when this must run again (no periodic polling when nothing needs watching)."""
        nxt = math.inf
        inflight = self.inflight
        for seq in [sq for sq in self.canceling if sq not in inflight]:
            del self.canceling[seq]  # finished (canceled or not)
        for c in list(self.children.values()):
            if c.kill_at:
                if now >= c.kill_at:
                    log.warning("child %d did not stop within %.1f s of %s; killing it", c.pid, self.cfg.kill_grace,
                                c.kill[0] if c.kill else "its stop request")
                    self._kill(c.pid)
                    c.kill_at = 0.0
                else:
                    nxt = min(nxt, c.kill_at - now)
                continue
            cur = c.ctl[childmod.CTL_CURRENT]
            # CURRENT names the last task until the child clears it after writing its result: one no longer
            # in flight has ended, and the tasks queued behind it still need watching.
            t = inflight.get(cur) if cur else None
            if t is not None:
                if cur in self.canceling:
                    self._signal_cancel(c, cur, now)
                    nxt = min(nxt, self.cfg.kill_grace)
                    continue
                to = self._timeout_ms(t) if self.watching else 0
                if to:
                    left = c.ctl[childmod.CTL_STARTED] / 1000.0 + to / 1000.0 - now
                    if left <= 0:
                        self._stop_for_timeout(c, cur, t, to, now)
                        nxt = min(nxt, self.cfg.kill_grace)
                    else:
                        nxt = min(nxt, left)
            if self.watching:
                # A queued task cannot run out before its own timeout has passed from now.  Every queued
                # one counts, not only the next: one without a timeout may start and end before it.
                for seq in c.unacked:
                    t = inflight.get(seq) if seq != cur else None
                    to = self._timeout_ms(t) if t is not None else 0
                    if to:
                        nxt = min(nxt, to / 1000.0)
        if self.canceling:
            nxt = min(nxt, 0.05)  # a canceled task may start any moment: look again soon, while any is pending
        self.next_watch = now + nxt

    def _stop_for_timeout(self, c: Child, seq: int, t, to: int, now: float) -> None:
        text = f"TaskTimeout: attempt {t.attempt} ran longer than its timeout of {to / 1000:g} s; its child was stopped"
        c.kill = ("timeout", seq, text)
        c.kill_at = now + self.cfg.kill_grace
        c.stopping = True
        try:
            os.kill(c.pid, signal.SIGTERM)  # children keep SIGTERM's default action: this ends even C code
        except ProcessLookupError:
            pass

    def _signal_cancel(self, c: Child, seq: int, now: float) -> None:
        if self.canceling.get(seq):
            if now >= self.canceling[seq]:
                c.kill = ("canceled", seq, "canceled")
                c.stopping = True
                self._kill(c.pid)
            return
        self.canceling[seq] = now + self.cfg.kill_grace
        try:
            os.kill(c.pid, childmod.CANCEL_SIGNAL)
        except ProcessLookupError:
            pass

    def _cancel(self, task_id: bytes) -> None:
        """A cancel request for task_id reached us (control channel or lease renewal)."""
        seq = next((sq for sq, t in self.inflight.items() if t.id == task_id), None)
        if seq is None or seq in self.canceling:
            return
        now = time.monotonic()
        if seq in self.buffer:  # not handed to a child yet
            self.buffer.remove(seq)
            t = self.inflight.pop(seq)
            ms = int(time.time() * 1000)
            self.completions.setdefault(t.qidx, []).extend(
                (t.id, t.attempt, b"canceled", b"canceled before it started", b"", ms, ms))
            self.results_due = 0.0
            log.info("task %s canceled before it started", task_id.decode())
            return
        for c in self.children.values():
            if seq in c.unacked or (c.partial is not None and c.partial[0] == seq):
                c.ctl[childmod.CTL_CANCEL + seq % childmod.CANCEL_SLOTS] = seq
                self.canceling[seq] = 0.0
                log.info("task %s canceled while in child %d", task_id.decode(), c.pid)
                if c.ctl[childmod.CTL_CURRENT] == seq:
                    self._signal_cancel(c, seq, now)
                self.next_watch = now
                return

    def _subscribe_control(self) -> None:
        ps = self.broker.client.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(*[qk.control for qk in self.qks])
        self.control = ps

    def _read_control(self) -> None:
        ps = self.control
        if ps is None:
            return
        try:
            while True:
                msg = ps.get_message(timeout=0.0)
                if msg is None:
                    break
                if msg.get("type") == "message":
                    self._cancel(msg["data"])
        except CONNECTION_ERRORS as e:
            self._redis_down(e, time.monotonic())

    def _close_control(self) -> None:
        if self.control is not None:
            try:
                self.control.close()
            except Exception:
                pass
            self.control = None

    # ------------------------------------------------------------------ periodic tasks
    def _cron(self, now: float) -> None:
        """Fire every periodic entry whose tick has come (the CRON script makes each tick fire once)."""
        t = self.clock.time()
        if not self.cron_ready:
            for e in self.crons:
                last = e.last_at_or_before(t)
                _, before = self.broker.cron_fire(queue_keys(e.queue), e.key, int(last * 1000), "init")
                if before >= 0 and before < int(last * 1000):
                    self._fire(e, last)  # missed while no supervisor ran: once, now
                self.next_cron[e.key] = e.next_after(t)
            self.cron_ready = True
            return
        for e in self.crons:
            if t >= self.next_cron[e.key]:
                tick = e.last_at_or_before(t)
                self._fire(e, tick)
                self.next_cron[e.key] = e.next_after(t)

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

    def _cron_wait(self) -> float:
        """Real seconds until the next cron tick."""
        if not self.crons or not self.cron_ready or not self.accepting:
            return math.inf
        t = self.clock.time()
        return max(0.0, (min(self.next_cron.values()) - t) / self.clock.rate)

    def _check_memory(self) -> None:
        import psutil

        for c in list(self.children.values()):
            if c.stopping:
                continue
            try:
                rss = psutil.Process(c.pid).memory_info().rss
            except psutil.Error:
                continue
            if rss > self.cfg.max_memory_per_child:
                self._recycle(c, f"RSS {rss // 1048576} MiB over --max-memory-per-child="
                                 f"{self.cfg.max_memory_per_child // 1048576} MiB")

    # ------------------------------------------------------------------ sleeping
    def _sleep(self) -> None:
        now = time.monotonic()
        timeout = min(self.next_renew, self.next_recover) - now
        if self.cfg.max_memory_per_child:
            timeout = min(timeout, self.next_rss - now)
        if not self.redis_ok:
            timeout = min(timeout, self.next_redis_try - now)
        if self.stop_deadline is not None:
            timeout = min(timeout, max(self.stop_deadline - now, 0.0) + 0.01)
        if self.ring_full or self.partials():
            timeout = min(timeout, 0.001)  # a ring is out of bytes: the child frees space without telling us
        if self.next_watch:
            timeout = min(timeout, self.next_watch - now)
        if self.next_due is not None and self.redis_ok and self.accepting:
            timeout = min(timeout, self.next_due - now)
        timeout = min(timeout, self._cron_wait())
        timeout = max(0.0, min(timeout, 1.0))
        p = select.poll()
        p.register(self._sig_r, select.POLLIN)
        armed = []
        low = self._low()
        if (self.completions or self.progress) and self.redis_ok:
            timeout = min(timeout, max(0.0, self.results_due - now))
        # With every round trip slot taken, a result could not be sent anyway: the next reply wakes us.
        steps_full = self.redis_ok and len(self.pending) >= MAX_STEPS
        for c in self.children.values():
            p.register(c.pidfd, select.POLLIN)
            if (len(c.unacked) > low or steps_full) and not c.stopping and self.accepting:
                # Plenty queued in its ring: its results can wait a few ms and be written in one batch,
                # instead of waking this process for every task.
                timeout = min(timeout, RESULT_DELAY)
            elif c.outring.arm():
                armed.append(c)
                p.register(c.efds[1], select.POLLIN)
            else:
                timeout = 0.0
        if self.accepting and self.redis_ok and self.idle and not self.waiting and timeout > 0:
            want = self._want()
            if want > 0:
                try:
                    claim = self.broker.pack_claim(self._claim_keys, self._claim_tail, want, self.worker_id,
                                                   self.lease_ms, self.cfg.max_payload, self.cfg.result_ttl)
                    self.broker.start_wait(self._wake_keys, self.cfg.wait_timeout, claim)
                    self.waiting = (want, bool(self.inflight))
                    self.claiming += want
                except CONNECTION_ERRORS as e:
                    self._redis_down(e, now)
        wait_fd = self.broker.wait_fileno() if self.waiting else -1
        if self.waiting:
            p.register(wait_fd, select.POLLIN)
        if self.pending and self.redis_ok:
            p.register(self.broker.main_fileno(), select.POLLIN)
        control_fd = -1
        if self.control is not None and self.redis_ok:
            sock = getattr(self.control.connection, "_sock", None)
            if sock is not None:
                control_fd = sock.fileno()
                p.register(control_fd, select.POLLIN)
        try:
            ready = p.poll(timeout * 1000.0)
        except InterruptedError:
            ready = [(self._sig_r, select.POLLIN)]
        for c in armed:
            if c.outring is not None:
                c.outring.disarm()
        self.wait_woke = any(fd == wait_fd for fd, _ in ready)
        if control_fd >= 0 and any(fd == control_fd for fd, _ in ready):
            self.control_ready = True
        if any(fd == self._sig_r for fd, _ in ready):
            try:
                while os.read(self._sig_r, 512):
                    pass
            except (BlockingIOError, OSError):
                pass


def _log_refused(refused, what: str, worker_id: str) -> None:
    """One line per report Redis refused because this worker no longer holds that attempt (scripts.holds)."""
    for r in refused:
        if not r.state:
            now = "its record is gone (expired or deleted)"
        elif r.state == b"running":
            who = "this worker" if r.worker.decode() == worker_id else f"worker {r.worker.decode()}"
            now = f"lease lost; now running attempt {r.now_attempt} on {who}"
        else:
            now = f"lease lost; the task is now {r.state.decode()} (attempt {r.now_attempt})"
        log.warning("%s of task %s attempt %d refused: this worker no longer holds it (%s); the newer state "
                    "stands", what, r.id.decode(), r.attempt, now)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _close_quiet(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by signal {sig} ({name})"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


