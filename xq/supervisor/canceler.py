"""Canceler: cancel requests, processing timeouts, and the SIGTERM/SIGKILL watch over running children.

Cancel requests come on the queues' control channel (Pub/Sub; RENEW reports them too, in case a message
was missed during a reconnect).  A task still in the local buffer ends `canceled` without running; one in
a child's ring gets its seq in the child's cancel slot, so the child skips it; a running one also gets
SIGUSR1 (xq.Cancelled in the handler), then SIGKILL after --kill-grace.  Timeouts are enforced here, never
in the child: past a task's deadline its child gets SIGTERM (whose default action ends even C code), then
SIGKILL after --kill-grace; the watch runs only when some deadline is due, never as a periodic poll.
"""

from __future__ import annotations

import logging
import math
import signal
import time

from .. import child as childmod
from .children import Child, kill
from .component import Component

log = logging.getLogger("xq")

CONTROL_POLL = 0.05              # a loop too busy to sleep still reads the control channel this often


class Canceler(Component):
    """Owns: the control channel subscription, the cancels being carried out, the timeout watch.  Deadline:
    the next watch (a timeout or a kill grace running out).  Fds: the control channel's socket."""

    def __init__(self, sup):
        self.sup = sup
        self.broker = sup.broker
        self.cfg = sup.cfg
        self.timeouts = {n: int(s.timeout * 1000) for n, s in sup.specs.items() if s.timeout}
        self.watching = bool(self.timeouts)        # some task may have a timeout: watch running children
        self.next_watch = 0.0
        self.canceling: dict[int, float] = {}      # seq -> monotonic SIGKILL deadline (0: not signalled yet)
        self.control = None                        # Pub/Sub connection of the queues' control channels
        self.control_ready = False                 # poll() saw it readable
        self.next_control = 0.0
        self._control_fd = -1

    # ------------------------------------------------------------------ loop
    def step(self, now: float) -> None:
        if (self.watching or self.canceling or self.next_watch) and now >= self.next_watch:
            self._watch(now)

    def sync(self, now: float) -> None:
        if self.control is None and self.sup.accepting:
            self.control = self.broker.subscribe([qk.control for qk in self.sup.qks])
        if self.control is not None and (self.control_ready or now >= self.next_control):
            # poll() said a cancel request arrived; a loop too busy to sleep looks every CONTROL_POLL
            self.control_ready = False
            self.next_control = now + CONTROL_POLL
            for task_id in self.broker.messages(self.control):
                self.cancel(task_id)

    def fds(self) -> list[int]:
        self._control_fd = -1
        if self.control is not None and self.sup.up:
            sock = getattr(self.control.connection, "_sock", None)
            if sock is not None:
                self._control_fd = sock.fileno()
                return [self._control_fd]
        return []

    def polled(self, ready: set[int]) -> None:
        if self._control_fd in ready:
            self.control_ready = True

    def deadline(self) -> float:
        if self.watching or self.canceling or self.next_watch:
            return self.next_watch
        return math.inf

    def outage(self) -> None:
        self.close()  # subscribed again at the first sync after the reconnect

    def close(self) -> None:
        if self.control is not None:
            try:
                self.control.close()
            except Exception:
                pass  # closing a connection that already broke
            self.control = None

    # ------------------------------------------------------------------ told by the other components
    def saw_timeouts(self) -> None:
        """Tasks with their own timeout were claimed."""
        self.watching = True

    def dispatched(self) -> None:
        """New tasks went into rings: they may carry timeouts, so look at the children on the next turn."""
        if self.watching:
            self.next_watch = 0.0

    def cancel(self, task_id: bytes) -> None:
        """A cancel request for task_id reached us (control channel or lease renewal)."""
        claims = self.sup.claims
        seq = next((sq for sq, t in claims.inflight.items() if t.id == task_id), None)
        if seq is None or seq in self.canceling:
            return
        now = time.monotonic()
        if claims.unstarted(seq):  # not handed to a child yet
            claims.complete_unstarted(seq, b"canceled", b"canceled before it started")
            log.info("task %s canceled before it started", task_id.decode())
            return
        for c in self.sup.pool.children.values():
            if seq in c.unacked or (c.partial is not None and c.partial[0] == seq):
                c.ctl[childmod.CTL_CANCEL + seq % childmod.CANCEL_SLOTS] = seq
                self.canceling[seq] = 0.0
                log.info("task %s canceled while in child %d", task_id.decode(), c.pid)
                if c.ctl[childmod.CTL_CURRENT] == seq:
                    self._signal_cancel(c, seq, now)
                self.next_watch = now
                return

    # ------------------------------------------------------------------ the watch
    def _timeout_ms(self, t) -> int:
        """The processing timeout of an in-flight task, ms (0: none): its own, else its task's."""
        return t.timeout_ms or self.timeouts.get(t.name, 0)

    def _watch(self, now: float) -> None:
        """Stop children whose task ran past its timeout or was canceled; SIGKILL those past their grace.
        Sets next_watch to when this must run again (no periodic polling when nothing needs watching)."""
        nxt = math.inf
        inflight = self.sup.claims.inflight
        for seq in [sq for sq in self.canceling if sq not in inflight]:
            del self.canceling[seq]  # finished (canceled or not)
        for c in self.sup.pool.values():
            if c.kill_at:
                if now >= c.kill_at:
                    log.warning("child %d did not stop within %.1f s of %s; killing it", c.pid, self.cfg.kill_grace,
                                c.kill[0] if c.kill else "its stop request")
                    kill(c.pid)
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
        # RELEASE's attempt_failed reads "its timeout of N s" from this text for the dead task's reason
        text = f"TaskTimeout: attempt {t.attempt} ran longer than its timeout of {to / 1000:g} s; its child was stopped"
        c.kill = ("timeout", seq, text)
        c.kill_at = now + self.cfg.kill_grace
        c.stopping = True
        kill(c.pid, signal.SIGTERM)  # children keep SIGTERM's default action: this ends even C code

    def _signal_cancel(self, c: Child, seq: int, now: float) -> None:
        if self.canceling.get(seq):
            if now >= self.canceling[seq]:
                c.kill = ("canceled", seq, "canceled")
                c.stopping = True
                kill(c.pid)
            return
        self.canceling[seq] = now + self.cfg.kill_grace
        kill(c.pid, childmod.CANCEL_SIGNAL)
