"""Where the CPU goes in a drain: Redis, the supervisor and each child, plus Redis' per-command times.

    python3 bench/profile.py enqueue [--tasks 100000]   # enqueue_many, five rounds
    python3 bench/profile.py drain [--tasks 100000]     # no-op tasks
    python3 bench/profile.py cpu [--tasks 2400]         # ~5 ms Pillow thumbnails of 55 KB JPEGs

Starts its own redis-server, enqueues, runs `xq run --burst`, samples CPU times with psutil while it runs
(children are sampled until they exit, so a child's last few ms may be missed), and prints per-task
figures.  The benchmarks in this folder measure speed; this tells where the time went.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import psutil
import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import xq  # noqa: E402
from benchutil import drain_window, flush, private_redis, xq_run  # noqa: E402


def cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def profile_enqueue(r, p, rp: psutil.Process, n: int) -> None:
    me = psutil.Process()
    payloads = [{"i": i} for i in range(n)]
    for _ in range(5):
        flush(r)
        r0, m0, t0 = cpu(rp), cpu(me), time.perf_counter()
        p.enqueue_many("noop", payloads)
        t1 = time.perf_counter()
        print(f"enqueue_many of {n}: {n / (t1 - t0):,.0f} tasks/s; CPU per task: Redis "
              f"{(cpu(rp) - r0) / n * 1e6:.1f} us, this process {(cpu(me) - m0) / n * 1e6:.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["enqueue", "drain", "cpu"])
    ap.add_argument("--tasks", type=int, default=None)
    a = ap.parse_args()
    with private_redis() as (url, pid):
        r = redis.Redis.from_url(url)
        p = xq.Producer(url)
        if a.kind == "enqueue":
            profile_enqueue(r, p, psutil.Process(pid), a.tasks or 100_000)
            return
        flush(r)  # lifts the retention count: drain_window reads every record
        if a.kind == "drain":
            n = a.tasks or 100_000
            ids = p.enqueue_many("noop", [None] * n)
        else:
            from xq.examples.thumbs import make_images

            n = a.tasks or 2400
            images = make_images(8, size=(1200, 900))
            ids = p.enqueue_many("thumb", [images[i % 8] for i in range(n)])
        rp = psutil.Process(pid)
        r.config_resetstat()
        r0 = cpu(rp)
        proc = xq_run(url, "--burst", "--result-ttl", "600")
        sup = psutil.Process(proc.pid)
        kids: dict[int, float] = {}
        s = 0.0
        samples = []  # (time, supervisor, children, Redis CPU s): the share of the cores within the drain
        while proc.poll() is None:
            try:
                for k in sup.children():
                    kids[k.pid] = cpu(k)
                s = cpu(sup)
                switches = sup.num_ctx_switches()
                samples.append((time.time(), s, sum(kids.values()), cpu(rp)))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.02)
        redis_cpu = cpu(rp) - r0
        stats = r.info("commandstats")
        first, last = drain_window(r, "default", ids)
        us = 1e6 / n
        print(f"{n} {a.kind} tasks: {n / (last - first):,.0f} tasks/s (first claim -> last finish)")
        inside = [x for x in samples if first <= x[0] <= last]
        if len(inside) > 10:  # the middle 80% of the window: no start-up, no tail
            lo, hi = inside[len(inside) // 10], inside[-len(inside) // 10]
            cores = len(os.sched_getaffinity(0)) * (hi[0] - lo[0])
            sh = [(hi[i] - lo[i]) / cores for i in (2, 1, 3)]
            print(f"share of the {len(os.sched_getaffinity(0))} cores, middle 80% of the drain: children "
                  f"{sh[0]:.1%}, supervisor {sh[1]:.1%}, Redis {sh[2]:.1%}, the rest (this script, other "
                  f"processes, idle) {1 - sum(sh):.1%}")
        print(f"CPU per task: Redis {redis_cpu * us:.1f} us, supervisor {s * us:.1f} us (incl. its start and "
              f"stop), children {sum(kids.values()) * us:.1f} us (" + " + ".join(f"{c:.2f}" for c in kids.values())
              + " s)")
        print(f"supervisor context switches: {switches.voluntary} voluntary, {switches.involuntary} involuntary")
        print("Redis commands (calls, total ms; commands run by scripts are counted too):")
        for name, st in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:10]:
            print(f"  {name[8:]:<14} {st['calls']:>8} calls {st['usec'] / 1000:>9.1f} ms")
        r.close()


if __name__ == "__main__":
    main()
