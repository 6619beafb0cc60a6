"""ChildPool: the prefork children, their rings and control blocks; spawn, reap, recycle, respawn.

A child that dies is reaped through its pidfd: its result ring is drained first (results written before it
died are valid), the tasks still queued in its ring go back to the front of the local buffer, and the one
task it was running ends as its control block and the supervisor's state say (lost, timeout, canceled, or
returned while stopping).  A child that keeps failing before it is ready halts the supervisor (exit 3)
instead of respawning forever, as gunicorn does.

Two memory limits, both on a child's RSS, read from its /proc/<pid>/statm (kept open, one pread a check):
--max-memory-per-child is soft: checked every 2 s, a child over it is recycled after its current task.
--memory-limit-per-child is hard: checked at spawn and every 0.1 s while a child has tasks or is booting, a
child over it is SIGKILLed at once; the attempt it was running ends with the outcome `memory` and is
retried or dead like any failure.  A child over it before it ran a task counts as a boot failure.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field

from .. import child as childmod
from .._impl import fast
from .component import Component

log = logging.getLogger("xq")

RING_CAPACITY = 1 << 21          # 2 MiB each way per child; larger messages stream through in chunks
BOOT_FAILURES_TO_HALT = 5
EXIT_BOOT = 3                    # children fail to boot: halt instead of respawning forever
HARD_CHECK = 0.1                 # seconds between checks of --memory-limit-per-child while children work
SOFT_CHECK = 2.0                 # seconds between checks of --max-memory-per-child
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1048576


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
    kill: tuple | None = None          # (reason, seq, text): why we stop it: 'timeout', 'canceled', 'memory'
                                       # (mid-task, seq its task) or 'memory-boot' (before any task, seq 0)
    kill_at: float = 0.0               # monotonic time of the SIGKILL that follows a SIGTERM / cancel
    statm: int = -1                    # fd of /proc/<pid>/statm while a memory limit is set, else -1

    def running_ms(self, now_ms: int) -> int:
        """How long (ms, CLOCK_MONOTONIC) the child has been running the oldest task in its ring, 0 if it is
        running none.  CURRENT is read before STARTED, which the child writes first; CURRENT still names a
        finished task until the child clears it, but that task's seq has left unacked once drained."""
        cur = self.ctl[childmod.CTL_CURRENT]
        if not cur or not self.unacked or self.unacked[0] != cur:
            return 0
        return max(0, now_ms - self.ctl[childmod.CTL_STARTED])


class ChildPool(Component):
    """Owns: the children (pid -> Child), boot-failure count, the memory checks' schedules.
    Deadline: the next memory check (--max-memory-per-child every 2 s; --memory-limit-per-child every
    0.1 s, only while some child has tasks or is booting).  Fds: each child's pidfd."""

    def __init__(self, sup):
        self.sup = sup
        self.cfg = sup.cfg
        self.children: dict[int, Child] = {}
        self.boot_failures = 0
        self.next_rss = time.monotonic() + 5.0 if self.cfg.max_memory_per_child else math.inf
        self.limit = self.cfg.memory_limit_per_child
        self.next_hard = 0.0
        self.reap_due = True                  # a SIGCHLD came since the last waitpid() loop (Supervisor sets it)
        self.next_reap = 0.0

    def values(self) -> list[Child]:
        return list(self.children.values())

    def live(self) -> int:
        """Children not stopping: the ones new tasks may go to."""
        return sum(1 for c in self.children.values() if not c.stopping)

    # ------------------------------------------------------------------ loop
    def step(self, now: float) -> None:
        if self.reap_due or now >= self.next_reap:  # a SIGCHLD came (or, as a backstop, once a second)
            self.reap_due, self.next_reap = False, now + 1.0
            self._reap()
        if self.limit and now >= self.next_hard:
            self._check_limit()
            self.next_hard = now + HARD_CHECK
        if now >= self.next_rss:
            self._check_memory()
            self.next_rss = now + SOFT_CHECK

    def fds(self) -> list[int]:
        return [c.pidfd for c in self.children.values()]

    def deadline(self) -> float:
        if self.limit and any(self._watched(c) for c in self.children.values()):
            return min(self.next_rss, self.next_hard)
        return self.next_rss

    @staticmethod
    def _watched(c: Child) -> bool:
        """Whether the hard limit's check must run for c: it has tasks, or is still booting, and is not
        already being killed (one given a grace after SIGTERM or xq.Cancelled is still watched)."""
        return (c.kill is None or c.kill_at > 0) \
            and (bool(c.unacked) or c.partial is not None or not c.ctl[childmod.CTL_READY])

    # ------------------------------------------------------------------ start and stop
    def spawn_all(self) -> None:
        for slot in range(self.cfg.procs):
            self.spawn(slot)

    def spawn(self, slot: int) -> Child:
        size = fast.Ring.size_for(RING_CAPACITY)
        m_in, m_out, m_ctl = mmap.mmap(-1, size), mmap.mmap(-1, size), mmap.mmap(-1, childmod.CTL_SIZE)
        e_in = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        e_out = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        inring, outring = fast.Ring(m_in, e_in), fast.Ring(m_out, e_out)
        inring.reset()
        outring.reset()
        ctl = memoryview(m_ctl).cast("Q")
        parent = os.getpid()
        sup = self.sup
        pid = os.fork()
        if pid == 0:  # child
            for c in self.children.values():   # other children's rings are not ours to touch
                for fd in c.efds + [c.pidfd, c.statm]:
                    close_quiet(fd)
            sup.forget_after_fork()
            childmod.child_main(sup.app, sup.qnames, inring, outring, ctl, parent,
                                self.cfg.max_tasks_per_child, self.cfg.retain_memory)
        c = Child(slot, pid, os.pidfd_open(pid), inring, outring, [m_in, m_out, m_ctl], [e_in, e_out], ctl,
                  started=time.monotonic())
        if self.limit or self.cfg.max_memory_per_child:
            try:
                c.statm = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:  # it cannot have been reaped yet; a /proc without it is a broken host
                log.error("cannot watch the memory of child %d: %s", pid, e)
        self.children[pid] = c
        if self.limit:
            self._check_limit_of(c, time.monotonic())  # a fork has its parent's resident pages from the start
            self.next_hard = 0.0
        return c

    def stop_all(self) -> None:
        """Ask every child to finish its current task and exit."""
        for c in self.children.values():
            c.stopping = True
            c.ctl[childmod.CTL_STOP] = 1
            c.inring.write(b"", b"")  # an empty frame wakes a sleeping child; it reads nothing runnable

    def kill_all(self) -> None:
        for c in list(self.children.values()):
            kill(c.pid)

    def recycle(self, c: Child, why: str) -> None:
        log.info("recycling child %d: %s", c.pid, why)
        c.stopping = True
        c.ctl[childmod.CTL_STOP] = 1
        c.inring.write(b"", b"")

    def teardown(self) -> None:
        for c in list(self.children.values()):
            kill(c.pid)
            try:
                os.waitpid(c.pid, 0)
            except ChildProcessError:
                pass
            self._close(c)
        self.children.clear()

    # ------------------------------------------------------------------ exits
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
                self._exited(c, status)

    def _exited(self, c: Child, status: int) -> None:
        sup, claims = self.sup, self.sup.claims
        claims.drain(c)  # results written before it died are valid
        current = c.ctl[childmod.CTL_CURRENT]
        booted = c.ctl[childmod.CTL_READY]
        seqs = list(c.unacked)
        if c.partial is not None:
            seqs.append(c.partial[0])
        how = describe_exit(status)
        # Never started: back to the front of the local buffer, in order, for another child ...
        unstarted = [s for s in seqs if s != current]
        claims.buffer.extendleft(reversed(unstarted))
        # ... except those canceled while they waited in this child's ring: only this child knew to skip
        # them, so they end canceled here instead of running in the next one.
        for s in unstarted:
            if sup.canceler.canceling.pop(s, None) is not None:
                claims.complete_unstarted(s, b"canceled", b"canceled before it started")
        over = c.kill is not None and c.kill[0] == "memory-boot"
        if over:
            log.error("child %d: %s; this counts as a boot failure", c.pid, c.kill[2])
        # Exit 0 is a child that stopped on request or after --max-tasks-per-child: nothing was lost.
        clean = os.waitstatus_to_exitcode(status) == 0
        if current in seqs:
            started_ms = int(c.ctl[childmod.CTL_STARTED] - time.monotonic() * 1000 + time.time() * 1000)
            self._end_running(c, current, clean, how, started_ms)
        if c.kill and not sup.hard and sup.accepting:
            log.warning("child %d stopped (%s: %s); respawning", c.pid, c.kill[0], how)
        elif not clean and not sup.hard and sup.accepting:
            log.warning("child %d %s; respawning", c.pid, how)
        elif clean and not c.stopping and sup.accepting:
            log.info("child %d recycled after %d tasks (--max-tasks-per-child)", c.pid, c.ctl[childmod.CTL_DONE])
        self._close(c)
        if (not booted and os.waitstatus_to_exitcode(status) == childmod.EXIT_BOOT_FAILED) or over:
            self.boot_failures += 1
            if self.boot_failures >= BOOT_FAILURES_TO_HALT:
                log.critical("children failed to boot %d times in a row (each child logged why above: the app "
                             "failed to load in it, a Processor.setup() raised, or it was over "
                             "--memory-limit-per-child); halting with exit code %d", self.boot_failures, EXIT_BOOT)
                sup.halt(EXIT_BOOT)
                return
        elif booted:
            self.boot_failures = 0
        if sup.accepting and not sup.hard:
            self.spawn(c.slot)

    def _end_running(self, c: Child, seq: int, clean: bool, how: str, started_ms: int) -> None:
        """The task c was running when it exited: its attempt ends here, as why it exited says."""
        sup, claims, leases = self.sup, self.sup.claims, self.sup.leases
        t = claims.inflight.pop(seq)
        claims.progress.pop(seq, None)  # the RELEASE ends this attempt first: a later progress would be stale
        if sup.canceler.canceling.pop(seq, None) is not None:  # a cancel was being carried out
            leases.release("canceled", [t], error="canceled while running (the child was killed)",
                           outcome="canceled", started_ms=started_ms)
        elif c.kill and c.kill[0] in ("timeout", "memory") and c.kill[1] == seq:
            spec = sup.specs.get(t.name)
            delay = spec.backoff.delay(t.attempt) if spec is not None else 0.0
            log.error("task %s (%s): %s", t.id.decode(), t.name.decode(), c.kill[2])
            leases.release("lost", [t], error=c.kill[2], outcome=c.kill[0], delay_ms=int(delay * 1000),
                           started_ms=started_ms)
        elif sup.hard or (not sup.accepting and clean):
            leases.release("return", [t])
        else:
            err = f"worker process {c.pid} {how} while running the task"
            log.error("task %s (%s): %s", t.id.decode(), t.name.decode(), err)
            leases.release("lost", [t], error=err, outcome="lost", started_ms=started_ms)

    def _close(self, c: Child) -> None:
        for fd in c.efds + [c.pidfd, c.statm]:
            close_quiet(fd)
        c.statm = -1
        c.ctl.release()
        c.inring = c.outring = None
        for m in c.maps:
            try:
                m.close()
            except BufferError:
                pass  # a ring object still references it; it goes with the last reference

    def _check_memory(self) -> None:
        """--max-memory-per-child (soft): a child over it is recycled after its current task."""
        for c in list(self.children.values()):
            if c.stopping:
                continue
            rss = rss_of(c)
            if rss > self.cfg.max_memory_per_child:
                self.recycle(c, f"RSS {rss // MiB} MiB over --max-memory-per-child="
                                f"{self.cfg.max_memory_per_child // MiB} MiB")

    def _check_limit(self) -> None:
        """--memory-limit-per-child (hard): a child over it is killed now (see _check_limit_of)."""
        now = time.monotonic()
        for c in list(self.children.values()):
            if self._watched(c):
                self._check_limit_of(c, now)

    def _check_limit_of(self, c: Child, now: float) -> None:
        rss = rss_of(c)
        if rss <= self.limit:
            return
        limit = f"over --memory-limit-per-child={self.limit // MiB} MiB"
        if c.kill is not None:  # already stopping for a timeout or a cancel: its grace ends now
            log.warning("child %d (stopping: %s) reached an RSS of %d MiB, %s; killing it", c.pid, c.kill[0],
                        rss // MiB, limit)
            c.kill_at = 0.0
            kill(c.pid)
            return
        cur = c.ctl[childmod.CTL_CURRENT]
        t = self.sup.claims.inflight.get(cur) if cur else None
        if t is not None and cur in c.unacked:
            text = f"MemoryLimitExceeded: attempt {t.attempt} reached an RSS of {rss // MiB} MiB, {limit}"
            c.kill = ("memory", cur, text)
        elif not c.ctl[childmod.CTL_DONE] and not cur:
            # It has run nothing: its start (or what it inherited from the supervisor) is over the limit.
            c.kill = ("memory-boot", 0, f"RSS of {rss // MiB} MiB before it ran a task, {limit}")
        else:
            # Between tasks (memory kept from the last one): nothing is lost by stopping it; if it starts a
            # queued task before it sees the request, the next check kills it with that task's attempt.
            if not c.stopping:
                self.recycle(c, f"RSS {rss // MiB} MiB between tasks, {limit}")
            return
        c.stopping = True
        kill(c.pid)


def rss_of(c: Child) -> int:
    """A child's resident set size in bytes (0 if it cannot be read): the second field of its statm."""
    if c.statm < 0:
        return 0
    try:
        return int(os.pread(c.statm, 128, 0).split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0  # it exited; its reap is on the way


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def close_quiet(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by signal {sig} ({name})"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
