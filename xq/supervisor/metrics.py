"""Metrics: Prometheus `/metrics` and the `/healthz` and `/readyz` probes, served by the supervisor itself.

`xq run --metrics-port PORT` (0: off) starts a small threaded HTTP server (stdlib http.server) in a daemon
thread.  It only reads what the loop publishes; it never takes a lock the loop waits on, and never talks
to Redis.  The supervisor sees every completion of its children, so it aggregates for them: no per-child
multiprocess files.

What the loop does, and when (never per Redis call; only while metrics are on):

- per claim reply (ClaimPipeline._claimed): the batch size, and the names of the claimed ids (COMPLETE
  items carry no name: a dict update from the reply, popped at completion);
- per COMPLETE reply (ClaimPipeline._collect): tasks by queue, name and outcome, run time (finished -
  started, both from the child) and queue wait time histograms;
- a timer (every DEPTH_INTERVAL s, Inspector.queue: one read-only script per queue on the pooled client,
  the figures `xq queue show` gives): queue depth by state and latency (age of the oldest ready task) of this supervisor's queues;
- every turn: the time of the turn, for /healthz.

Queue wait time is the task's start minus its enqueue time, read from its id (xq ids begin with the enqueue
time in ms, like a ULID), for first attempts only (a retry's wait would include its backoff); it includes
any delay a scheduled task was given, and tasks with ids of the caller's own are left out.  Counters the
other components keep anyway (Redis errors and reconnects, lease renewals and recoveries, done/failed) are
read at scrape time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_left, bisect_right
from collections import Counter
from itertools import accumulate, repeat
from operator import sub
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .. import child as childmod
from .._impl import fast
from ..errors import ConfigError
from ..inspect import Inspector
from .component import Component

log = logging.getLogger("xq")

DEPTH_INTERVAL = 5.0      # seconds between queue depth/latency reads
HEALTHY_WITHIN = 10.0     # /healthz: the loop turned within this many seconds (it sleeps at most 1 s)
NAMES_CAP = 200_000       # claimed-id -> name entries kept (released tasks never complete here)
RUN_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
WAIT_BUCKETS = (.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
BATCH_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# the attempt's outcome as COMPLETE gets it; 'retry' is any failure the script retries or makes dead as the
# task's retries decide: shown as 'failed' (others: done, canceled, invalid, memory, ... as sent)
OUTCOME_LABEL = {b"done": "done", b"retry": "failed"}


class Hist:
    """Histograms by label values kept as plain bucket counts, filled a batch at a time, never with a call
    per value into prometheus-client (whose observe() takes a lock and a Python call per value): a few
    values are bisected one by one, a larger batch is sorted (C) and each bucket takes one bisect into it,
    stopping at the batch's largest value.  A series is replaced whole, never changed in place, so the
    scrape thread (family(), through a collector) reads a consistent one."""

    SMALL = 16  # batches up to this size are bisected value by value

    def __init__(self, name: str, doc: str, bounds: tuple, labels: tuple = ("queue", "name"),
                 scale: float = 1000.0):
        self.name, self.doc, self.labels, self.scale = name, doc, labels, scale
        self.bounds = tuple(bounds)
        self.edges = [b * scale for b in bounds]  # in the unit of the values added (ms for times)
        self.series: dict[tuple, list] = {}  # label values -> [count per bucket (+Inf last)..., sum]
        self.created: dict[tuple, float] = {}

    def add(self, key: tuple, values: list) -> None:
        """Observe values (sorted here, in place, if many) in the series of these label values."""
        edges, n = self.edges, len(values)
        s = self.series.get(key)
        new = list(s) if s is not None else [0] * (len(edges) + 2)
        if n <= self.SMALL:
            for v in values:
                new[bisect_left(edges, v)] += 1
        else:
            values.sort()
            lo = 0
            for i, e in enumerate(edges):
                hi = bisect_right(values, e, lo)
                new[i] += hi - lo
                lo = hi
                if lo == n:
                    break
            new[len(edges)] += n - lo
        new[-1] += sum(values)
        if s is None:
            self.created[key] = time.time()
        self.series[key] = new

    def family(self, HistogramMetricFamily, created: bool = False):
        from prometheus_client.utils import floatToGoString

        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for key, s in list(self.series.items()):
            fam.add_metric(key, list(zip(les, accumulate(s[:-1]))), s[-1] / self.scale)
            if created:
                fam.add_sample(self.name + "_created", dict(zip(self.labels, key)), self.created[key])
        return fam


def require_client():
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError("--metrics-port needs the prometheus-client package: pip install 'xq-queue[metrics]'") from None
    return prometheus_client


class Metrics(Component):
    """Owns: the Prometheus registry, the HTTP server thread, the claimed-name map, the depth timer.
    Deadline: the next depth read (only while Redis is reachable).  No fds."""

    def __init__(self, sup, port: int, host: str = "0.0.0.0"):
        pc = require_client()
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        self.sup = sup
        self.names: dict[bytes, bytes] = {}
        self.last_turn = time.monotonic()
        self.next_depth = 0.0
        self.inspector = Inspector(broker=sup.broker)  # shares the supervisor's Broker: nothing to close
        self.qnames = list(sup.qnames)
        reg = self.registry = pc.CollectorRegistry()
        # plain ints and lists the loop adds to a batch at a time; folded into metric families at scrape time
        self.tasks: dict[tuple, int] = {}          # (queue, name, outcome) -> tasks
        self.tasks_created: dict[tuple, float] = {}
        self.run_time = Hist("xq_task_run_seconds", "Task run time in a child (finished - started)", RUN_BUCKETS)
        self.wait_time = Hist("xq_task_wait_seconds", "Queue wait of first attempts: start - enqueue (from the "
                              "task id)", WAIT_BUCKETS)
        self.batch = Hist("xq_claim_batch_size", "Tasks per claim reply", BATCH_BUCKETS, labels=(), scale=1)
        metrics = self
        created = getattr(pc.metrics, "_use_created", True)  # PROMETHEUS_DISABLE_CREATED_SERIES, as pc's own

        class Counts:
            """The task counter and the claim batch histogram, as prometheus-client's Counter and Histogram
            showed them (with their _created series)."""

            def collect(self):
                fam = CounterMetricFamily("xq_tasks", "Tasks finished by this supervisor, by queue, name and "
                                          "outcome", labels=("queue", "name", "outcome"))
                born = metrics.tasks_created
                for key, n in list(metrics.tasks.items()):
                    fam.add_metric(key, n, created=born[key] if created else None)
                yield fam
                yield metrics.batch.family(HistogramMetricFamily, created=created)

        reg.register(Counts())
        self.depth = pc.Gauge("xq_queue_depth", "Tasks in this supervisor's queues by state (read every "
                              f"{DEPTH_INTERVAL:.0f} s)", ("queue", "state"), registry=reg)
        self.latency = pc.Gauge("xq_queue_latency_seconds", "Age of the oldest ready task (0: none ready)",
                                ("queue",), registry=reg)

        class Live:
            """Read at scrape time from counters the loop keeps anyway (plain ints: no lock needed)."""

            def collect(self):
                yield metrics.run_time.family(HistogramMetricFamily)
                yield metrics.wait_time.family(HistogramMetricFamily)
                s = metrics.sup
                busy, total = metrics.children()
                g = GaugeMetricFamily("xq_children", "Child processes of this supervisor", labels=("state",))
                g.add_metric(("busy",), busy)
                g.add_metric(("total",), total)
                yield g
                yield GaugeMetricFamily("xq_children_configured", "--procs", value=s.cfg.procs)
                yield CounterMetricFamily("xq_redis_errors", "Redis failures met by the loop (each failed "
                                          "attempt, outages and refusals)", value=s.redis_errors)
                yield CounterMetricFamily("xq_redis_reconnects", "Reconnects after an outage",
                                          value=s.reconnects)
                yield CounterMetricFamily("xq_lease_renewals", "Leases renewed", value=s.leases.renewed)
                yield CounterMetricFamily("xq_lease_recoveries", "Tasks with expired leases recovered "
                                          "(requeued or failed) by this supervisor", value=s.leases.recovered)
                yield GaugeMetricFamily("xq_up", "Redis reachable (1) or not (0)", value=1 if s.up else 0)
                yield GaugeMetricFamily("xq_loop_age_seconds", "Seconds since the loop last turned",
                                        value=time.monotonic() - metrics.last_turn)

        reg.register(Live())
        try:
            self.server = ThreadingHTTPServer((host, port), _handler(self, pc))
        except OSError as e:
            raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="xq-metrics", daemon=True)
        self.thread.start()
        log.info("metrics on http://%s:%d/metrics (/healthz, /readyz)", host, self.port)

    # ------------------------------------------------------------------ read by the HTTP thread
    def children(self) -> tuple[int, int]:
        kids = list(self.sup.pool.children.values())
        return sum(1 for c in kids if c.ctl[childmod.CTL_CURRENT]), len(kids)

    def healthz(self) -> tuple[int, str]:
        age = time.monotonic() - self.last_turn
        if age <= HEALTHY_WITHIN:
            return 200, f"ok: the loop turned {age:.2f} s ago\n"
        return 503, f"stalled: the loop last turned {age:.1f} s ago\n"

    def readyz(self) -> tuple[int, str]:
        s = self.sup
        if not s.up:
            kind, _, why = (s.health.reason or "").partition(":")
            what = {"full": "redis refuses writes", "refused": "redis refuses us"}.get(kind, "redis unreachable")
            return 503, f"{what}: {why or 'not connected yet'}\n"
        if not s.accepting:
            return 503, "draining: stopping, no new claims\n"
        kids = list(s.pool.children.values())
        booted = sum(1 for c in kids if c.ctl[childmod.CTL_READY])
        if booted < s.cfg.procs:
            return 503, f"children booting: {booted} of {s.cfg.procs} ready\n"
        return 200, "ready\n"

    # ------------------------------------------------------------------ called by the loop
    def step(self, now: float) -> None:
        self.last_turn = now

    def count(self, q: str, name: bytes, outcome: str, n: int) -> None:
        key = (q, name.decode(errors="replace"), outcome)
        c = self.tasks
        if key not in c:
            self.tasks_created[key] = time.time()
            c[key] = n
        else:
            c[key] += n

    def claimed(self, tasks: list) -> None:
        """One claim reply (7 items a task: qidx, id, name, ...)."""
        self.batch.add((), [len(tasks) // 7])
        if len(self.names) > NAMES_CAP:
            self.names.clear()  # ids released without completing here; their names show as '?'
        self.names.update(zip(tasks[1::7], tasks[2::7]))

    def forget(self, ids) -> None:
        """Tasks whose outcome Redis refused (the attempt was no longer ours): not counted, names dropped."""
        for i in ids:
            self.names.pop(i, None)

    def completed(self, qidx: int, items: list) -> None:
        """One accepted COMPLETE: items are 7 a task (id, attempt, outcome, text, result, started, finished ms)."""
        q = self.qnames[qidx]
        names = list(map(self.names.pop, items[0::7], repeat(b"?")))
        outcomes = items[2::7]
        runs = list(map(sub, items[6::7], items[5::7]))
        waits = fast.wait_times(items)  # ms, -1: not known (a retry, an id of another form)
        one = names[0]
        if names.count(one) == len(names):  # the common case: a batch of one task name
            if outcomes.count(b"done") == len(names):
                self.count(q, one, "done", len(names))
            else:
                for outcome, n in Counter(outcomes).items():
                    self.count(q, one, OUTCOME_LABEL.get(outcome) or outcome.decode(errors="replace"), n)
            key = (q, one.decode(errors="replace"))
            self.run_time.add(key, runs)
            waits = list(filter((0).__le__, waits))
            if waits:
                self.wait_time.add(key, waits)
            return
        for (name, outcome), n in Counter(zip(names, outcomes)).items():
            self.count(q, name, OUTCOME_LABEL.get(outcome) or outcome.decode(errors="replace"), n)
        by_name: dict[bytes, list] = {}
        for name, v in zip(names, runs):
            by_name.setdefault(name, []).append(v)
        for name, vs in by_name.items():
            self.run_time.add((q, name.decode(errors="replace")), vs)
        by_name = {}
        for name, w in zip(names, waits):
            if w >= 0:
                by_name.setdefault(name, []).append(w)
        for name, vs in by_name.items():
            self.wait_time.add((q, name.decode(errors="replace")), vs)

    def released(self, r) -> None:
        """One accepted RELEASE (Leases.Release): attempts ended without a result (lost, canceled, timeout,
        memory) count by their outcome; tasks handed back unstarted ('return') only drop their names."""
        pop = self.names.pop
        if r.mode == "return":
            for tid, _ in r.tasks:
                pop(tid, None)
            return
        outcome = r.options.get("outcome") or r.mode
        outcome = outcome.decode(errors="replace") if isinstance(outcome, bytes) else str(outcome)
        q, counts = self.qnames[r.qidx], {}
        for tid, _ in r.tasks:
            name = pop(tid, b"?")
            counts[name] = counts.get(name, 0) + 1
        for name, n in counts.items():
            self.count(q, name, outcome, n)

    def sync(self, now: float) -> None:
        if now < self.next_depth:
            return
        self.next_depth = now + DEPTH_INTERVAL
        # the counts and latency `xq queue show` gives (Inspector.queue: one read-only script per queue),
        # so a dashboard and the CLI never disagree; sample=1: no per-task walk, only the counts
        for q in self.qnames:
            st = self.inspector.queue(q, sample=1)
            self.depth.labels(q, "ready").set(st["ready"])
            self.depth.labels(q, "scheduled").set(st["scheduled"] + st["retrying"])
            self.depth.labels(q, "running").set(st["running"])
            self.depth.labels(q, "dead").set(st["dead"])
            self.latency.labels(q).set(st["latency"] or 0.0)

    def deadline(self) -> float:
        return self.next_depth if self.sup.up else math.inf

    def reconnected(self) -> None:
        self.next_depth = 0.0

    def forget_after_fork(self) -> None:
        """In a new child: the listening socket is the supervisor's (the server thread is not copied)."""
        self.server.socket.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(metrics: Metrics, pc):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            ctype = "text/plain; charset=utf-8"
            try:
                if path == "/metrics":
                    code, body, ctype = 200, pc.generate_latest(metrics.registry), pc.CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    code, text = metrics.healthz()
                    body = text.encode()
                elif path == "/readyz":
                    code, text = metrics.readyz()
                    body = text.encode()
                else:
                    code, body = 404, b"not found: /metrics, /healthz, /readyz\n"
            except Exception as e:  # noqa: BLE001 - a scrape must never take the supervisor down
                code, body = 500, f"error: {e}\n".encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            pass

    return Handler
