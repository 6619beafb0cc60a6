"""Network fault benchmark: what losing every connection every 2 s costs the drain.

Run: python -m pytest bench/test_netfault_bench.py --benchmark-only -s
The no-op drain of test_drain_noop, with `xq run` talking to Redis through the FaultProxy of the tests
(tests/faultproxy.py), once with the proxy cutting every connection every 2 s and once without cuts; both
arms go through the proxy, so the ratio measures the cuts, not the proxy.  Figures are reported, never
asserted (this VM's speed drifts by tens of percent from minute to minute).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
from urllib.parse import urlparse

import pytest

import xq
from benchutil import BENCH, drain_window, flush, xq_run
from xq.keys import queue_keys

sys.path.insert(0, os.path.join(os.path.dirname(BENCH), "tests"))  # `from faultproxy import ...`, as tests do

from faultproxy import FaultProxy  # noqa: E402

N_DRAIN = 100_000
CUT_EVERY = 2.0
LEASE = "5"  # both arms: a completion lost in a cut costs at most one lease before another claim retries it


def _attempts_over_one(r, ids) -> int:
    """How many tasks were claimed more than once (a claim or completion lost in a cut, its lease recovered;
    whether the first claim also ran the task, the record cannot tell)."""
    qk = queue_keys("default")
    n = 0
    for i in range(0, len(ids), 5000):
        pipe = r.pipeline(transaction=False)
        for tid in ids[i:i + 5000]:
            pipe.hget(qk.task(tid), "att")
        n += sum(1 for a in pipe.execute() if int(a or 0) > 1)
    return n


@pytest.mark.benchmark(group="netfault")
def test_drain_with_cuts_every_2s(benchmark, bench_redis, rdb):
    """100,000 no-op tasks through the proxy: rounds alternate plain / cut every 2 s in this one benchmark so
    both see the same drift of the machine, after one plain warm-up round, in the order P C C P P C."""
    proxy = FaultProxy("127.0.0.1", urlparse(bench_redis).port).start()
    p = xq.Producer(bench_redis)  # enqueued directly: only the drain goes through the proxy
    kinds = ["warmup", "plain", "cuts", "cuts", "plain", "plain", "cuts"]
    rates: dict[str, list[float]] = {"warmup": [], "plain": [], "cuts": []}
    cuts: list[int] = []       # connections cut, per cut round
    retried: list[int] = []    # tasks claimed more than once, per cut round
    order = iter(kinds)

    def setup():
        flush(rdb)
        return (next(order), p.enqueue_many("noop", [None] * N_DRAIN)), {}

    def run(kind, ids):
        stop = threading.Event()
        before = proxy.cuts

        def cutter():
            for _ in range(1000):  # bounded: 2000 s at most, ended by stop
                if stop.wait(CUT_EVERY):
                    return
                proxy.cut()

        t = threading.Thread(target=cutter, daemon=True)
        if kind == "cuts":
            t.start()
        proc = xq_run(proxy.url(), "--burst", "--result-ttl", "600", "--lease", LEASE)
        try:
            code = proc.wait(timeout=300)
        finally:
            stop.set()
            if t.is_alive():
                t.join(timeout=10)
            if proc.poll() is None:
                proc.kill()  # ours, by PID
                proc.wait(timeout=30)
        assert code == 0, f"{kind} round: xq run exited with {code}"
        first, last = drain_window(rdb, "default", ids)  # asserts every task is done
        rates[kind].append(len(ids) / (last - first))
        if kind == "cuts":
            cuts.append(proxy.cuts - before)
            retried.append(_attempts_over_one(rdb, ids))
        print(f"\n{kind} round: {rates[kind][-1]:,.0f} tasks/s"
              + (f", {cuts[-1]} connections cut, {retried[-1]} tasks claimed more than once" if kind == "cuts" else ""))

    try:
        benchmark.pedantic(run, setup=setup, rounds=len(kinds) - 1, iterations=1, warmup_rounds=1)
    finally:
        proxy.stop()
    plain, cut = statistics.median(rates["plain"]), statistics.median(rates["cuts"])
    ratio = cut / plain
    benchmark.extra_info.update(plain_tasks_per_s=round(plain), cuts_tasks_per_s=round(cut), ratio=round(ratio, 4),
                                plain_rounds=[round(x) for x in rates["plain"]],
                                cuts_rounds=[round(x) for x in rates["cuts"]], connections_cut=cuts,
                                tasks_retried=retried)
    print(f"\ndrain of {N_DRAIN} no-op tasks through the fault proxy, --procs auto --lease {LEASE}, after a plain "
          f"warm-up round ({rates['warmup'][0]:,.0f} tasks/s), rounds in the order P C C P P C: "
          f"plain {', '.join(f'{x:,.0f}' for x in rates['plain'])}; "
          f"cut every {CUT_EVERY:g} s {', '.join(f'{x:,.0f}' for x in rates['cuts'])} tasks/s "
          f"(connections cut per round {cuts}, tasks claimed more than once per round {retried})")
    print(f"drain through the proxy: plain {plain:,.0f}/s, cut every {CUT_EVERY:g} s {cut:,.0f}/s, "
          f"ratio {ratio:.3f} (medians of 3)")
