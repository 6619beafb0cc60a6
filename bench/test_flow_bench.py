"""Flow-control benchmarks: what a concurrency key or a unique key on every task costs the engine.

Run: python -m pytest bench/test_flow_bench.py --benchmark-only -s
Figures are reported, never asserted (this VM's speed drifts by tens of percent from minute to minute).
"""

from __future__ import annotations

import statistics
import time

import pytest

import xq
from benchutil import drain_window, flush, xq_run

N_DRAIN = 100_000


@pytest.mark.benchmark(group="flow")
def test_drain_with_concurrency_and_unique_keys(benchmark, bench_redis, rdb):
    """The no-op drain three ways, rounds alternated in this one benchmark so all see the same drift of the
    machine: plain (P); every task with its own concurrency key, max_concurrency=2 (C: many distinct keys,
    so each claim takes a slot and each completion gives it back, and nothing is parked); every task with
    its own unique key (U: held until the task ends, released by COMPLETE).  Reported as ratios to plain.

    A plain warm-up round first, then P C U U C P P C U, so no kind always runs first or last."""
    p = xq.Producer(bench_redis)
    kinds = ["warmup", "P", "C", "U", "U", "C", "P", "P", "C", "U"]
    rates: dict[str, list[float]] = {k: [] for k in ("warmup", "P", "C", "U")}
    order = iter(kinds)

    def setup():
        flush(rdb)
        kind = next(order)
        if kind == "C":
            # one enqueue per key: 100,000 round trips, outside the measured drain
            ids = [p.enqueue("noop", None, concurrency_key=f"k{j}", max_concurrency=2) for j in range(N_DRAIN)]
        elif kind == "U":
            ids = [p.enqueue("noop", None, unique_key=f"u{j}") for j in range(N_DRAIN)]
        else:
            ids = p.enqueue_many("noop", [None] * N_DRAIN)
        return (kind, ids), {}

    def run(kind, ids):
        proc = xq_run(bench_redis, "--burst", "--result-ttl", "600")
        assert proc.wait(timeout=300) == 0
        first, last = drain_window(rdb, "default", ids)  # asserts every task is done
        rates[kind].append(len(ids) / (last - first))

    benchmark.pedantic(run, setup=setup, rounds=len(kinds) - 1, iterations=1, warmup_rounds=1)
    plain, conc, uniq = (statistics.median(rates[k]) for k in ("P", "C", "U"))
    assert rdb.scard("xq:{default}:hooked") == 0  # every task's end was settled
    benchmark.extra_info.update(plain_tasks_per_s=round(plain), concurrency_key_tasks_per_s=round(conc),
                                unique_key_tasks_per_s=round(uniq), concurrency_ratio=round(conc / plain, 4),
                                unique_ratio=round(uniq / plain, 4),
                                rounds={k: [round(x) for x in v] for k, v in rates.items()})
    print(f"\ndrain of {N_DRAIN} no-op tasks, --procs auto, after a plain warm-up round "
          f"({rates['warmup'][0]:,.0f} tasks/s), rounds P C U U C P P C U: "
          + "; ".join(f"{k} {', '.join(f'{x:,.0f}' for x in rates[k])}" for k in ("P", "C", "U")) + " tasks/s")
    print(f"drain plain {plain:,.0f}/s, a concurrency key on every task {conc:,.0f}/s (ratio {conc / plain:.3f}), "
          f"a unique key on every task {uniq:,.0f}/s (ratio {uniq / plain:.3f}); medians of 3")


@pytest.mark.benchmark(group="flow")
def test_group_of_100000(benchmark, bench_redis, rdb):
    """A group of 100,000 no-op tasks with a callback (a chord): enqueue time of the whole group, and the
    drain from the first member's claim to the callback's finish; the callback must run exactly once and
    receive every member.  The callback task ("group_size") returns how many ids it was handed."""
    p = xq.Producer(bench_redis)
    n = 100_000
    out = {}

    def setup():
        flush(rdb)
        t0 = time.perf_counter()
        g = p.group([("noop", None)] * n, then=("group_size", None))
        out["enqueue_s"] = time.perf_counter() - t0
        return (g,), {}

    def run(g):
        proc = xq_run(bench_redis, "--burst", "--result-ttl", "600")
        assert proc.wait(timeout=300) == 0
        assert p.result(g.callback, timeout=60) == n
        first, _ = drain_window(rdb, "default", g.ids)
        cb = p.status(g.callback)
        out["drain_s"] = cb["finished_at"] - first
        out["callback_attempts"] = cb["attempts"]

    benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    assert out["callback_attempts"] == 1
    benchmark.extra_info.update(out)
    print(f"\ngroup of {n:,} no-op tasks with a callback: group() took {out['enqueue_s']:.2f} s "
          f"({n / out['enqueue_s']:,.0f} tasks/s); first claim -> callback finished {out['drain_s']:.2f} s "
          f"({n / out['drain_s']:,.0f} tasks/s); the callback ran once, with all {n:,} ids")


@pytest.mark.benchmark(group="flow")
def test_claim_deferring_a_rate_limited_backlog(benchmark, bench_redis, rdb):
    """What a rate limit costs CLAIM: one claim of a backlog of 10,000 tasks with rate_key + rate_limit "5/s"
    starts 5 and defers the other 9,995, all in one script call; reported per deferred task.  A second claim
    then meets 10,000 more while the first 9,995 promises are still planned (the plan does not slow a
    deferral down).  Median of 3 rounds of each."""
    from xq import scripts
    from xq.broker import Broker
    from xq.keys import queue_keys

    p = xq.Producer(bench_redis)
    qk = queue_keys("default")
    keys, tail = Broker.claim_keys([qk]), Broker.claim_tail([qk])
    n = 10_000
    per_task: dict[str, list[float]] = {"first": [], "second": []}

    def claim() -> float:
        t0 = time.perf_counter()
        out = rdb.eval(scripts.CLAIM, len(keys), *keys, 100, "w", 60_000, 1 << 20, 0, *tail)
        dt = time.perf_counter() - t0
        assert len(out[0]) <= 5 * 7  # at most 5 started
        return dt

    def run():
        for _ in range(3):
            flush(rdb)
            rdb.eval(scripts.CLAIM, len(keys), *keys, 0, "w", 60_000, 1 << 20, 0, *tail)  # load the script
            p.enqueue_many("noop", [None] * n, rate_key="api", rate_limit="5/s")
            per_task["first"].append(claim() / (n - 5))
            p.enqueue_many("noop", [None] * n, rate_key="api", rate_limit="5/s")
            per_task["second"].append(claim() / n)
            assert rdb.zcard(qk.sched) >= 2 * n - 10  # (5 more may have come due and started meanwhile)

    benchmark.pedantic(run, rounds=1, iterations=1)
    first, second = (statistics.median(per_task[k]) * 1e6 for k in ("first", "second"))
    benchmark.extra_info.update({"us_per_deferral_first": first, "us_per_deferral_second": second})
    print(f"\nCLAIM deferring a 10,000-task backlog at 5/s: {first:.1f} us per deferred task; "
          f"10,000 more behind 9,995 promises: {second:.1f} us per task (medians of 3)")
