"""Bulk operations against the enqueue rate: replay (in place and into another queue), flush per state and
delete of N tasks (default 1,000,000), on a private redis-server; prints tasks/s of each.

    PYTHONPATH=. python3 bench/bulk_ops.py [N] [--only STEP[,STEP]]

Steps: enqueue, flush_queued, flush_scheduled, replay, delete, replay_to, flush_dead.  Dead letters are
made as a producer can make them fast: tasks enqueued depending on a canceled task are born dead.  Each
step is bounded by N (and so in time); a step's enqueue is not timed except `enqueue`, the reference.
Only API calls that exist before this work are used for `replay_to` and `enqueue`, so the same script
measures an older checkout (PYTHONPATH=/path/to/it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import xq  # noqa: E402
from benchutil import private_redis  # noqa: E402

STEPS = ["enqueue", "flush_queued", "flush_scheduled", "replay", "delete", "replay_to", "flush_dead"]
BATCH = 100_000  # payloads per enqueue_many call, to bound the producer's memory


def fill(p: xq.Producer, queue: str, n: int, **kw) -> float:
    """Enqueue n tasks (100-byte JSON payloads) into queue; returns the seconds it took."""
    t = time.perf_counter()
    for start in range(0, n, BATCH):
        p.enqueue_many("bench", [{"i": i, "pad": "x" * 80} for i in range(start, min(n, start + BATCH))],
                       queue=queue, **kw)
    return time.perf_counter() - t


def fill_dead(p: xq.Producer, queue: str, n: int) -> None:
    p.set_retention(queue, keep_dead=10**9)  # the default keeps the newest 10,000 dead letters
    gate = p.enqueue("bench", None, queue=queue, delay=3600)
    p.cancel(gate, queue=queue)
    fill(p, queue, n, depends_on=[gate])
    assert p.dead_count(queue) == n, p.dead_count(queue)


def timed(label: str, n: int, fn, r) -> None:
    """Run fn, print tasks/s and the mean Redis time of one call (script, SCAN or UNLINK): how long one
    call holds Redis, so what a bulk operation adds to other clients' latency."""
    r.config_resetstat()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    stats = r.info("commandstats")
    per_call = max(stats.get(f"cmdstat_{c}", {}).get("usec_per_call", 0) for c in ("evalsha", "unlink", "scan"))
    print(f"{label:<26} {n:>9,} tasks in {dt:6.2f} s = {n / dt:>9,.0f} tasks/s, {per_call / 1000:5.1f} ms "
          f"a call  ({out})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=1_000_000)
    ap.add_argument("--only", default=",".join(STEPS))
    a = ap.parse_args()
    n, only = a.n, set(a.only.split(","))
    with private_redis() as (url, _pid):
        p = xq.Producer(url)
        r = p.broker.client
        if "enqueue" in only:
            dt = fill(p, "a", n)
            print(f"{'enqueue_many (reference)':<26} {n:>9,} tasks in {dt:6.2f} s = {n / dt:>9,.0f} tasks/s")
            p.delete_queue("a") if hasattr(p, "delete_queue") else p.broker.client.flushall()
        if "flush_queued" in only:
            fill(p, "a", n)
            timed("flush --state queued", n, lambda: p.flush("a", "queued"), r)
        if "flush_scheduled" in only:
            fill(p, "a", n, delay=3600)
            timed("flush --state scheduled", n, lambda: p.flush("a", "scheduled"), r)
        if "replay" in only or "delete" in only:
            fill_dead(p, "a", n)
            if "replay" in only:
                timed("replay (same queue)", n, lambda: len(p.replay("a")), r)
            if "delete" in only:
                timed("delete queue (tasks)", n, lambda: p.delete_queue("a")["keys"], r)
            else:
                p.broker.client.flushall()
        if "replay_to" in only:
            fill_dead(p, "src", n)
            timed("replay --to-queue", n, lambda: len(p.replay("src", to_queue="dst")), r)
            assert p.dead_count("src") == 0
            p.broker.client.flushall()
        if "flush_dead" in only:
            fill_dead(p, "a", n)
            timed("flush --state dead", n, lambda: p.flush("a", "dead"), r)
        p.close()


if __name__ == "__main__":
    main()
