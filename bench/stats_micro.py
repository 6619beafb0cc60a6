"""Per-task cost of the stats history in the supervisor: drain_results with and without the stats dict
(steps of 100 results of one task name, the two alternated step by step so a noisy machine hits both
alike), and Broker.pack_stats, run once per step.

    PYTHONPATH=$PWD python3 bench/stats_micro.py          (XQ_PURE=1 for the pure-Python twin)
"""
import mmap
import os
import statistics
import time
import timeit
from collections import deque

from xq._impl import IMPLEMENTATION, fast
from xq.broker import Broker
from xq.keys import queue_keys

BATCH, STEPS = 100, 20000
m = mmap.mmap(-1, fast.Ring.size_for(1 << 20))
efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
w, r = fast.Ring(m, efd), fast.Ring(m, efd)
w.reset()
ids = fast.new_ids(BATCH)
heads = [fast.encode_result_head(s, fast.ST_DONE, b"j", 1.0, 1.001, b"") for s in range(BATCH)]


def step(with_stats: bool) -> int:
    """ns of one drain of BATCH results."""
    inflight = {s: fast.InFlight(0, ids[s], b"noop", b"", b"j", 1) for s in range(BATCH)}
    for h in heads:
        w.write(h, b"null")
    stats = {} if with_stats else None
    t = time.perf_counter_ns()
    fast.drain_results(r, inflight, {}, deque(range(BATCH)), 4096, None, stats)
    return time.perf_counter_ns() - t


res = {False: [], True: []}
for i in range(STEPS):
    res[bool(i % 2)].append(step(bool(i % 2)))
off, on = statistics.median(res[False]) / BATCH, statistics.median(res[True]) / BATCH
qk, seen = queue_keys("default"), set()
n = 20000
pack = timeit.timeit(lambda: Broker.pack_stats(qk, 1_800_000_000_000, {b"noop": [BATCH, 0.1]},
                                               lambda k: k not in seen and not seen.add(k)), number=n) / n
print(f"{IMPLEMENTATION}: drain_results {off:.0f} ns per task without stats, {on:.0f} ns with (+{on - off:.0f} ns; "
      f"medians of {STEPS // 2} steps of {BATCH}); pack_stats {pack * 1e6:.1f} us per step of one name "
      f"(+{pack * 1e9 / BATCH:.0f} ns per task at {BATCH} a step)")
