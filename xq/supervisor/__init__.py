"""The supervisor: one per machine; a handful of components on one event loop.

    component      file          owns                                             Redis
    ChildPool      children.py   the prefork children, their rings, respawn       -
    ClaimPipeline  claims.py     tasks held (InFlight), results, claim/complete    CLAIM, COMPLETE, BZPOPMIN
    Leases         leases.py     lease renewal, releases, expired-lease recovery   RENEW, RELEASE
    Canceler       canceler.py   cancel requests, timeouts, the kill watch         control channel
    Ticker         ticker.py     periodic (cron) entries                           CRON
    Registry       registry.py   this worker's heartbeat in the worker registry    SET PX, ZADD (a timer; --heartbeat 0: off)
    Metrics        metrics.py    /metrics, /healthz, /readyz (--metrics-port only) LLEN, ZCARD (a timer)

Each has its own state, a deadline() and fds() for the sleep, step(now) for local work and sync(now) for
its Redis work (component.py).  The Supervisor only wires them, runs the loop, handles signals (gunicorn
style: a handler only records the signal; the loop acts on it) and is the one owner of Redis failures:
`_redis` is the only place that catches xq.conn.OUTAGE.  One turn of the loop:

    signals -> children (reap, memory) -> claims (drain result rings, dispatch) -> canceler (timeouts,
    cancels) -> Redis: leases, claims (replies, one pipelined step, the idle wait), ticker, canceler
    (control channel) -> dispatch -> sleep in poll() on the union of fds until the earliest deadline,
    only when there is nothing to do.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import select
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass

import orjson

from .._impl import fast
from ..broker import Broker, redacted
from ..conn import OUTAGE, Backoff, Health
from ..errors import ConfigError
from ..keys import queue_keys
from .canceler import Canceler
from .children import EXIT_BOOT, ChildPool, close_quiet
from .claims import ClaimPipeline
from .leases import Leases
from .registry import Registry
from .ticker import Ticker

log = logging.getLogger("xq")

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_APP_IMPORT = 4  # MODULE:APP could not be imported (raised by the CLI)
EXIT_REDIS_UNREACHABLE = 6  # Redis did not answer for --connect-timeout seconds (--burst: $XQ_RETRY_FOR)
EXIT_REDIS_UNSAFE = 7  # the Redis server would lose tasks (xq.servercheck)

__all__ = ["Config", "Supervisor", "check_memory_limits", "EXIT_OK", "EXIT_INTERNAL", "EXIT_BOOT", "EXIT_APP_IMPORT"]


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
    max_memory_per_child: int = 0      # bytes of RSS: recycle a child over it after its task; 0 = no limit
    memory_limit_per_child: int = 0    # bytes of RSS: kill a child over it at once, mid-task; 0 = no limit
    prefetch: int = 0                  # tasks claimed ahead per child beyond its ring; 0 = one each
    wait_timeout: float = 1.0          # BZPOPMIN timeout: bounds the cost of a missed wake-up
    retain_memory: bool = True         # children keep freed memory for the next task (child.retain_freed_memory)
    weights: list | None = None        # per-queue claim weights (None: strict queue order)
    level_weights: list | None = None  # weights of priority levels 0..9 within each queue (None: strict)
    kill_grace: float = 5.0            # seconds between SIGTERM / xq.Cancelled and SIGKILL of a child
    check_server: bool = False         # run xq.servercheck at the first connect (Redis was down at start)
    allow_eviction: bool = False       # ... and let an evicting maxmemory-policy pass, with a warning
    heartbeat: float = 5.0             # seconds between worker-registry heartbeats; the record's TTL is 3x (0: off)
    metrics_port: int = 0              # serve /metrics, /healthz, /readyz on this port (0: off; metrics.py)
    stats: bool = True                 # write the per-minute stats history (xq/stats.py; --no-stats: off)
    connect_timeout: float | None = None  # seconds Redis may stay unreachable before exit 6 (None: retry forever)

    def __post_init__(self):
        check_memory_limits(self.max_memory_per_child, self.memory_limit_per_child)


def check_memory_limits(soft: int, hard: int) -> None:
    """Raise ConfigError unless the hard RSS limit (bytes; 0: none) is above the soft one (0: none)."""
    if hard and soft and hard <= soft:
        raise ConfigError(f"--memory-limit-per-child={hard // 1048576} MiB must be above "
                          f"--max-memory-per-child={soft // 1048576} MiB: the soft limit recycles a child "
                          f"after its task, the hard one kills it mid-task, so the hard one is the higher")


class Supervisor:
    def __init__(self, app, broker: Broker, cfg: Config, worker_id: str | None = None):
        self.app = app
        self.broker = broker
        self.cfg = cfg
        self.qnames = list(cfg.queues)
        self.qks = [queue_keys(q) for q in cfg.queues]
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.specs = {name.encode(): spec for name, spec in app.tasks.items()}
        self.max_retries_json = orjson.dumps(app.max_retries_overrides())
        # run state, read by the components
        self.accepting = True
        self.hard = False
        self.stop_deadline: float | None = None
        self.exit_code = EXIT_OK
        self.signals: deque[int] = deque()
        # Redis: reachable or not, decided only by _redis
        self.up = False
        self.retry_at = 0.0
        self.backoff = Backoff(base=0.1, cap=1.0)  # a reconnect try a second at most: back within ~1 s of a failover
        self.health = Health("supervisor " + self.worker_id, broker.url)
        self.redis_errors = 0              # failed attempts met by _redis (for metrics)
        self.reconnects = 0                # reconnects after an outage
        self.down_since: float | None = None  # monotonic time of the first failure of the current outage
        # the components, in the order the loop runs their steps
        self.pool = ChildPool(self)
        self.claims = ClaimPipeline(self)
        self.canceler = Canceler(self)
        self.leases = Leases(self)
        self.ticker = Ticker(self)
        self.components = (self.pool, self.claims, self.canceler, self.leases, self.ticker)
        # Redis work in this order: releases go out before the next claim can take the tasks again
        self.redis_components = (self.leases, self.claims, self.ticker, self.canceler)
        self.registry = None
        if cfg.heartbeat > 0:  # 0: this worker stays out of the registry (xq workers does not list it)
            self.registry = Registry(self)
            self.components += (self.registry,)
            self.redis_components += (self.registry,)
        self.metrics = None
        if cfg.metrics_port:
            from .metrics import Metrics

            self.metrics = Metrics(self, cfg.metrics_port)
            self.components += (self.metrics,)
            self.redis_components += (self.metrics,)

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        self._install_signals()
        log.info("xq supervisor %s: %d children, queues %s, Redis %s, %s hot path%s", self.worker_id,
                 self.cfg.procs, ",".join(self.qnames), redacted(self.broker.url), fast.IMPLEMENTATION,
                 ", burst" if self.cfg.burst else "")
        try:
            self.pool.spawn_all()
            # What boot made (imports, the app, the pool) is frozen out of every later collection: a full one
            # scanned it all, 15-17 ms here, a pause in the loop; and children fork with it untouched.
            gc.collect()
            gc.freeze()
            while not self._turn():
                pass
        finally:
            self._teardown()
        return self.exit_code

    def halt(self, code: int) -> None:
        """Stop at once with this exit code (children that cannot boot)."""
        self.exit_code = code
        self._begin_stop()
        self._hard_stop()

    def forget_after_fork(self) -> None:
        """In a new child: drop what belongs to the supervisor process alone."""
        close_quiet(self._sig_r)
        close_quiet(self._sig_w)
        if self.metrics is not None:
            self.metrics.forget_after_fork()
        self.broker.forget_after_fork()

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
                self.pool.reap_due = True  # reaped in this turn's pool.step (its pidfd woke poll())
                continue
            if self.accepting:
                log.info("received %s: stop claiming, finish running tasks (grace %.0f s), return the rest; "
                         "send it again to stop at once", signal.Signals(s).name, self.cfg.grace)
                self._begin_stop()
            elif not self.hard:
                log.warning("received %s again: stopping now; running tasks go back to their queues",
                            signal.Signals(s).name)
                self._hard_stop()

    def _begin_stop(self) -> None:
        # Order: no new claims, children told to finish, unstarted tasks handed back, the idle wait ended.
        self.accepting = False
        self.stop_deadline = time.monotonic() + self.cfg.grace
        self.pool.stop_all()
        self.claims.stop()

    def _hard_stop(self) -> None:
        self.hard = True
        self.pool.kill_all()

    def _teardown(self) -> None:
        self.pool.teardown()
        if self.registry is not None:
            self.registry.close()
        self.canceler.close()
        if self.metrics is not None:
            self.metrics.close()
        signal.set_wakeup_fd(-1)
        os.close(self._sig_r)
        os.close(self._sig_w)
        self.broker.reset()

    # ------------------------------------------------------------------ the loop
    def _turn(self) -> bool:
        """One turn of the main loop; True when the supervisor should exit."""
        now = time.monotonic()
        if self.claims.woken and self.up:
            # Woken from idle by a claim's reply: its tasks go to the children before the other steps of
            # the turn run (they added ~10 us to every idle task's start; poll() to ring took ~55 us).
            try:
                self.claims.take_waits()
            except OUTAGE as e:
                self._outage(e, now)
        self._handle_signals()
        self.pool.step(now)
        got = self.claims.step(now)
        self.canceler.step(now)
        if self.metrics is not None:
            self.metrics.step(now)
        if not self.accepting and self.stop_deadline is not None and now >= self.stop_deadline \
                and self.pool.children and not self.hard:
            log.warning("grace period of %.0f s ran out; stopping the remaining children", self.cfg.grace)
            self._hard_stop()
        self._redis(now)
        self.claims.dispatch()
        claims = self.claims
        if not self.accepting:
            if not self.pool.children:
                claims.return_buffer()
                settled = not claims.completions and not claims.buffer and not claims.waiting \
                    and not self.leases.releases
                if settled or not self._redis_reachable_for_exit(now):
                    return True
        elif self.cfg.burst and not claims.inflight and not claims.completions and self.up \
                and not claims.pending and not self.leases.releases:
            if claims.drained:
                log.info("burst mode: queues are empty and nothing is running; stopping")
                self._begin_stop()
                return False
            if claims.idle and claims.recheck:
                # The last claim ran while tasks were still in flight; the queues may have refilled since.
                claims.idle, claims.recheck = False, False
        if got or (self.up and (self.leases.releases or claims.busy())):
            return False
        self._sleep()
        return False

    def _redis(self, now: float) -> None:
        """The Redis work of every component, and the one owner of its failures: an outage (or Redis
        refusing us, say after a password rotation) is caught here alone, whoever met it."""
        if not self.up and now < self.retry_at:
            return
        try:
            back = not self.up
            if back:
                self.broker.ping()  # also: not a replica, not a Cluster node given as redis://
                if self.cfg.check_server and self._server_unsafe():
                    return
                self.broker.load_scripts()
                if self.redis_errors:
                    self.reconnects += 1
                self.up = True
                for c in self.components:
                    c.reconnected()
            else:
                self.broker.check_master()  # Sentinel: a failover its open connections did not notice
            for c in self.redis_components:
                c.sync(now)
            if back:  # back only once our own commands went through, not at a PING alone
                self.down_since = None
                self.backoff.reset()
                self.health.up()
        except OUTAGE as e:
            self._outage(e, now)

    def _server_unsafe(self) -> bool:
        """The start-time check of xq run, for a Redis that was unreachable then: run once, at the first
        connect, before any claim; a server that would lose tasks halts the supervisor (exit 7)."""
        from ..servercheck import RedisUnsafe, check_server

        try:
            check_server(self.broker.client, self.broker.url, allow_eviction=self.cfg.allow_eviction)
        except RedisUnsafe as e:
            log.error("%s; stopping", e)
            self.halt(EXIT_REDIS_UNSAFE)
            self.retry_at = math.inf  # no more Redis work: nothing was claimed
            return True
        self.cfg.check_server = False
        return False

    def _outage(self, e: BaseException, now: float) -> None:
        # Children keep running; results and releases stay buffered and are sent once Redis answers
        # again (both are fenced by attempt, so a late one is refused, never wrong).  Tasks claimed by a
        # claim whose reply was lost are returned after the reconnect (Leases._return_orphans).
        self.redis_errors += 1
        delay = self.backoff.next()
        self.health.down(e, retry_in=delay)  # logged once per change of state, not once per retry
        for c in self.components:
            c.outage()
        self.broker.reset()
        self.up = False
        self.retry_at = now + delay
        if self.down_since is None:
            self.down_since = now  # the start of this turn: before the failed call began (a stall counts)
        limit, down = self.cfg.connect_timeout, time.monotonic() - self.down_since
        if limit is not None and down >= limit and not self.hard:
            log.error("Redis at %s has not answered for %.0f s (--connect-timeout %g): stopping with exit code %d; "
                      "the tasks this supervisor holds come back when their leases expire",
                      redacted(self.broker.url), down, limit, EXIT_REDIS_UNREACHABLE)
            self.halt(EXIT_REDIS_UNREACHABLE)
            self.stop_deadline = now - 10.0  # nothing can be flushed to a Redis that is gone: exit at once
            self.retry_at = math.inf

    def _redis_reachable_for_exit(self, now: float) -> bool:
        # While stopping, keep trying to flush completions and returns for up to the grace period;
        # past it, what is left is safe anyway: leases expire and any supervisor recovers the tasks.
        return self.stop_deadline is None or now < self.stop_deadline + 10.0

    def _sleep(self) -> None:
        """Sleep in poll() on every component's fds (and the signal pipe) until the earliest deadline."""
        now = time.monotonic()
        fds, deadline = [self._sig_r], math.inf
        for c in self.components:
            fds += c.fds()
        for c in self.components:  # after fds(): arming a ring may bring a deadline forward
            deadline = min(deadline, c.deadline())
        if self.stop_deadline is not None:
            deadline = min(deadline, self.stop_deadline + 0.01)
        if not self.up:
            deadline = min(deadline, self.retry_at)
        timeout = max(0.0, min(deadline - now, 1.0))
        p = select.poll()
        for fd in fds:
            p.register(fd, select.POLLIN)
        try:
            ready = {fd for fd, _ in p.poll(timeout * 1000.0)}
        except InterruptedError:
            ready = {self._sig_r}
        for c in self.components:
            c.polled(ready)
        if self._sig_r in ready:
            try:
                while os.read(self._sig_r, 512):
                    pass
            except (BlockingIOError, OSError):
                pass
