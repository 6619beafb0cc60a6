"""The cost of observability: a no-op drain and the idle latency of a real `xq run`, with the worker registry,
stats history and metrics on and off, alternated in one run.

    PYTHONPATH=$PWD python3 bench/observability_cost.py [--tasks 100000] [--pairs 5] [--procs 2]
        [--latency-tasks 200] [--scrape-every 1] [--max-seconds 900] [--variant 'NAME: ARGS' ...]

A variant is a name and the extra `xq run` arguments that make it ("{port}" becomes a free port; the token
--scrape is this script's: a thread GETs /metrics every --scrape-every s, as Prometheus would).  The first
variant is the baseline the others are compared with.  Each round runs every variant once, in an order
rotated from round to round (A B C, B C A, ...), so a drift of the machine's speed hits them alike:

one `xq run` (not --burst) a variant and round, measuring in turn:

- idle latency: --latency-tasks tasks one at a time, 2 ms apart (the supervisor idle in its wait between
  them): enqueue -> handler start, and enqueue -> result() returned; the round's median;
- drain: --tasks no-op tasks enqueued while the queue is paused, then resumed: tasks/s over the drain
  window taken from the task records (first claim to last finish), and the CPU time (user + system) the
  supervisor process alone spent from the resume to the last result, per task (in 10 ms ticks), the
  figure the per-task costs of the registry, stats and metrics (and the scrapes) add to.  On a shared
  machine both move by tens of percent between rounds (other load changes the supervisor's batch sizes,
  hence its CPU per task too): quote the medians of many rounds, and count instructions for small
  differences (bench/metrics_micro.py under callgrind).

Prints every measurement as it is taken, then per variant the median of its rounds, and the median of the
per-round ratios to the baseline (the figure to quote: each ratio pairs runs a few seconds apart).  Every
loop is bounded: --pairs rounds, and no new round starts after --max-seconds.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil  # noqa: E402
import redis  # noqa: E402

import xq  # noqa: E402
import xq.keys  # noqa: E402
from benchutil import _free_port, drain_window, flush, private_redis, xq_run  # noqa: E402

VARIANTS = [
    "off: --heartbeat 0 --no-stats",
    "registry: --heartbeat 5 --no-stats",
    "stats: --heartbeat 0",
    "metrics: --heartbeat 0 --no-stats --metrics-port {port}",
    "metrics+scrape: --heartbeat 0 --no-stats --metrics-port {port} --scrape",
    "all+scrape: --heartbeat 5 --metrics-port {port} --scrape",
]


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, args = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected 'NAME: ARGS' (ARGS may be empty)")
    return name.strip(), shlex.split(args)


def scrape_until(port: int, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
        except OSError:
            pass  # not listening yet, or gone


class Variant:
    def __init__(self, name: str, args: list[str], every: float):
        self.name, self.args, self.every = name, args, every
        self.drain: list[float] = []     # tasks/s per round
        self.start: list[float] = []     # idle latency, enqueue -> handler start, ms (median of a round)
        self.result: list[float] = []    # idle latency, enqueue -> result() returned, ms
        self.cpu: list[float] = []       # CPU time of the supervisor process per drained task, us

    def launch(self, url: str, procs: str, *extra: str):
        """(the `xq run` process, a stop event for its scraper)."""
        port = _free_port()
        args = [a.replace("{port}", str(port)) for a in self.args if a != "--scrape"]
        stop = threading.Event()
        if "--scrape" in self.args:
            threading.Thread(target=scrape_until, args=(port, stop, self.every), daemon=True).start()
        return xq_run(url, *extra, *args, procs=procs), stop


def stop_run(proc, stop: threading.Event) -> None:
    stop.set()
    if proc.poll() is None:
        proc.terminate()
    proc.wait(timeout=60)


def drained(r, ids) -> int:
    """How many of ids are not done yet."""
    states = xq.keys.queue_keys("default").task
    left = 0
    for i in range(0, len(ids), 5000):
        pipe = r.pipeline(transaction=False)
        for tid in ids[i:i + 5000]:
            pipe.hget(states(tid), "state")
        left += sum(1 for st in pipe.execute() if st != b"done")
    return left


def measure(v: Variant, url: str, r, n: int, latency_n: int, procs: str) -> None:
    """One round of a variant: one `xq run`; its idle latency, then a drain of n tasks enqueued while the
    queue was paused (so the drain is all claims, no enqueue competing) and resumed at once."""
    flush(r)  # and lift the retention count: every task's record is read at the end
    proc, stop = v.launch(url, procs, "--queues", "default")
    sup = psutil.Process(proc.pid)
    starts, results = [], []
    try:
        with xq.Producer(url) as p:
            p.result(p.enqueue("stamp", None, queue="default"), timeout=30)  # up, children booted
            time.sleep(0.5)  # past the start-up's first heartbeat and depth read
            for _ in range(latency_n):
                time.sleep(0.002)  # let the supervisor go idle (blocked in its wait) again
                t0 = time.time()
                started = p.result(p.enqueue("stamp", None, queue="default"), timeout=10)
                starts.append((started - t0) * 1000)
                results.append((time.time() - t0) * 1000)
            p.pause_queue("default")
            ids = p.enqueue_many("noop", [None] * n, queue="default")
            time.sleep(0.2)
            c0 = sup.cpu_times()
            p.resume_queue("default")
            p.result(ids[-1], timeout=300)
            left = drained(r, ids)
            if left:  # the children finish out of order: one may still hold earlier tasks in its ring
                print(f"note: {v.name}: {left} tasks not done yet when the last enqueued one was", flush=True)
                for _ in range(3000):  # bounded: 300 s
                    time.sleep(0.1)
                    if not drained(r, ids):
                        break
            c1 = sup.cpu_times()
    finally:
        stop_run(proc, stop)
    first, last = drain_window(r, "default", ids)
    v.start.append(statistics.median(starts))
    v.result.append(statistics.median(results))
    v.drain.append(n / (last - first))
    v.cpu.append((c1.user + c1.system - c0.user - c0.system) / n * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=100_000, help="no-op tasks per drain (CPU time is counted in 10 ms ticks)")
    ap.add_argument("--pairs", type=int, default=5, help="rounds, each running every variant once")
    ap.add_argument("--procs", default="2")
    ap.add_argument("--latency-tasks", type=int, default=200, help="tasks per idle-latency measurement")
    ap.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes of --scrape")
    ap.add_argument("--max-seconds", type=float, default=900, help="no new round starts after this")
    ap.add_argument("--variant", action="append", type=parse_variant, default=None,
                    help="'NAME: ARGS' (repeat; the first is the baseline); default: " + "; ".join(VARIANTS))
    a = ap.parse_args()
    specs = a.variant or [parse_variant(t) for t in VARIANTS]
    variants = [Variant(name, args, a.scrape_every) for name, args in specs]
    print(f"{a.pairs} rounds of {len(variants)} variants; drain of {a.tasks:,} no-op tasks, idle latency over "
          f"{a.latency_tasks} tasks; --procs {a.procs}; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f} at start", flush=True)
    t_end = time.monotonic() + a.max_seconds
    with private_redis() as (url, _):
        r = redis.Redis.from_url(url)
        for rnd in range(a.pairs):
            if time.monotonic() > t_end:
                print(f"--max-seconds reached: stopping after {rnd} rounds", flush=True)
                break
            k = rnd % len(variants)
            for v in variants[k:] + variants[:k]:
                measure(v, url, r, a.tasks, a.latency_tasks, a.procs)
                print(f"round {rnd + 1} {v.name:16} drain {v.drain[-1]:7,.0f} tasks/s, supervisor CPU "
                      f"{v.cpu[-1]:6.2f} us/task; idle latency p50: start {v.start[-1]:6.3f} ms, result "
                      f"{v.result[-1]:6.3f} ms", flush=True)
        r.close()
    report(variants)


def report(variants: list[Variant]) -> None:
    base = variants[0]
    rounds = min(len(v.drain) for v in variants)
    print(f"\nmedians over {rounds} rounds; ratio = median of the per-round ratios to '{base.name}' "
          f"(drain: higher is better; latency: lower is better)")
    print(f"{'variant':16} {'drain/s':>9} {'ratio':>7}   {'CPU us/task':>11} {'ratio':>7}   {'start ms':>8} "
          f"{'ratio':>7}   {'result ms':>9} {'ratio':>7}")

    def ratio(xs, bs):
        return statistics.median(x / b for x, b in zip(xs, bs))

    for v in variants:
        print(f"{v.name:16} {statistics.median(v.drain):9,.0f} {ratio(v.drain, base.drain):7.3f}   "
              f"{statistics.median(v.cpu):11.2f} {ratio(v.cpu, base.cpu):7.3f}   "
              f"{statistics.median(v.start):8.3f} {ratio(v.start, base.start):7.3f}   "
              f"{statistics.median(v.result):9.3f} {ratio(v.result, base.result):7.3f}")
    print("\nraw (per round, in round order):")
    for v in variants:
        print(f"{v.name:16} drain/s  " + " ".join(f"{x:.0f}" for x in v.drain))
        print(f"{'':16} CPU us/task " + " ".join(f"{x:.2f}" for x in v.cpu))
        print(f"{'':16} start ms " + " ".join(f"{x:.3f}" for x in v.start))
        print(f"{'':16} result ms " + " ".join(f"{x:.3f}" for x in v.result))


if __name__ == "__main__":
    main()
