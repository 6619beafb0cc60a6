"""Task lifecycle benchmarks: what retries and delayed tasks cost the engine.

Run: python -m pytest bench/test_lifecycle_bench.py --benchmark-only -s
Each prints its figure; pytest-benchmark's table gives the raw timings.  Figures are reported, never
asserted (this VM's speed drifts by tens of percent from minute to minute).
"""

from __future__ import annotations

import statistics
import subprocess
import time

import pytest

import xq
from benchutil import drain_window, flush, xq_run
from xq.keys import queue_keys

N_DRAIN = 100_000
N_DELAYED = 10_000


def _records(r, queue: str, ids, *fields):
    """HMGET of fields for every id, pipelined in chunks, in id order."""
    qk = queue_keys(queue)
    out = []
    for i in range(0, len(ids), 5000):
        pipe = r.pipeline(transaction=False)
        for tid in ids[i:i + 5000]:
            pipe.hmget(qk.task(tid), *fields)
        out.extend(pipe.execute())
    return out


@pytest.mark.benchmark(group="lifecycle")
def test_drain_retries_configured(benchmark, bench_redis, rdb):
    """The no-op drain of test_drain_noop, with a task that has retries configured (max_retries=5, a backoff)
    but never fails, against the plain no-op drain: rounds alternate plain / retries-configured in this one
    benchmark so both see the same drift of the machine.  Target: within 5% of the plain drain.

    One plain warm-up round first (a fresh redis-server page-faults its memory in while it first grows, see
    test_enqueue_many), then the pairs in the order plain-retry, retry-plain, plain-retry, so neither kind
    always runs second in its pair or sits on one side of a steady drift."""
    p = xq.Producer(bench_redis)
    kinds = ["warmup", "plain", "retry", "retry", "plain", "plain", "retry"]
    rates: dict[str, list[float]] = {"warmup": [], "plain": [], "retry": []}
    order = iter(kinds)

    def setup():
        flush(rdb)
        kind = next(order)
        if kind != "retry":
            ids = p.enqueue_many("noop", [None] * N_DRAIN)
        else:
            ids = p.enqueue_many("noop_retry", [None] * N_DRAIN, max_retries=5)
        return (kind, ids), {}

    def run(kind, ids):
        proc = xq_run(bench_redis, "--burst", "--result-ttl", "600")
        assert proc.wait(timeout=300) == 0
        first, last = drain_window(rdb, "default", ids)
        rates[kind].append(len(ids) / (last - first))

    benchmark.pedantic(run, setup=setup, rounds=len(kinds) - 1, iterations=1, warmup_rounds=1)
    plain, retry = statistics.median(rates["plain"]), statistics.median(rates["retry"])
    ratio = retry / plain
    benchmark.extra_info.update(plain_tasks_per_s=round(plain), retry_tasks_per_s=round(retry),
                                ratio=round(ratio, 4), plain_rounds=[round(x) for x in rates["plain"]],
                                retry_rounds=[round(x) for x in rates["retry"]])
    print(f"\ndrain of {N_DRAIN} no-op tasks, --procs auto, after a plain warm-up round "
          f"({rates['warmup'][0]:,.0f} tasks/s), rounds in the order P R R P P R: "
          f"plain {', '.join(f'{x:,.0f}' for x in rates['plain'])}; "
          f"retries configured {', '.join(f'{x:,.0f}' for x in rates['retry'])} tasks/s")
    print(f"drain plain {plain:,.0f}/s, retries configured {retry:,.0f}/s, ratio {ratio:.3f} "
          f"(medians of 3; target: ratio >= 0.95)")


@pytest.mark.benchmark(group="lifecycle")
def test_drain_ten_percent_fail_once(benchmark, bench_redis, rdb):
    """100,000 tasks of which every 10th fails its first attempt and is retried after a short backoff
    (0.01-0.05 s); --burst waits for the retrying ones.  Rate = tasks / (first claim -> last finish)."""
    p = xq.Producer(bench_redis)
    payloads = [{"f": 1} if i % 10 == 0 else None for i in range(N_DRAIN)]
    rates, retried = [], []

    def setup():
        flush(rdb)
        ids = p.enqueue_many("flaky", payloads)
        return (ids,), {}

    def run(ids):
        proc = xq_run(bench_redis, "--burst", "--result-ttl", "600")
        assert proc.wait(timeout=300) == 0
        first, last = drain_window(rdb, "default", ids)  # asserts every task is done
        rates.append(len(ids) / (last - first))
        atts = [int(a or 0) for (a,) in _records(rdb, "default", ids, "att")]
        bad = [(i, a) for i, a in enumerate(atts) if a != (2 if payloads[i] else 1)]
        assert not bad, f"{len(bad)} tasks with an unexpected attempt count, e.g. {bad[:5]}"
        retried.append(sum(1 for a in atts if a == 2))

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    rate = statistics.median(rates)
    benchmark.extra_info.update(tasks_per_s=round(rate), rounds=[round(x) for x in rates])
    print(f"\ndrain of {N_DRAIN} tasks, {retried[0]} failing once and retried (backoff 0.01-0.05 s), "
          f"--procs auto: per round {', '.join(f'{x:,.0f}' for x in rates)} tasks/s; "
          f"{rate:,.0f} tasks/s (first claim -> last finish, median of {len(rates)})")


@pytest.mark.benchmark(group="lifecycle")
def test_delayed_firing_precision(benchmark, bench_redis, rdb):
    """10,000 tasks due within the same second (100 groups of 100, due 10 ms apart, ~2 s ahead) on an
    idle supervisor: lateness = handler start (the child's clock) - due time.  Requirement: due tasks start
    within 100 ms of their time."""
    p = xq.Producer(bench_redis)
    groups, per = 100, N_DELAYED // 100
    rounds: list[tuple[float, float, float]] = []
    every: list[float] = []
    worst_groups: list[tuple[int, int]] = []  # per round: (due offset ms, lateness of its first start ms)
    proc = xq_run(bench_redis, "--result-ttl", "600")
    q = lambda xs, f: xs[min(len(xs) - 1, int(len(xs) * f))]  # noqa: E731

    def setup():  # rounds share the server (no flush under a running supervisor): records differ by id
        p.result(p.enqueue("noop", None), timeout=30)  # the supervisor is up
        time.sleep(1.0)  # ... and idle, blocked on its wake marker
        return (), {}

    def run():
        t0 = round(time.time() + 2.0, 3)
        ids, due = [], []
        for k in range(groups):
            eta = t0 + k * 0.01
            ids += p.enqueue_many("noop", [None] * per, eta=eta)
            due += [int(eta * 1000)] * per  # the due time the producer stores (eta ms)
        sent = time.time()
        assert sent < t0, f"enqueueing took until {sent - t0:+.3f} s after the first due time"
        deadline = time.monotonic() + (t0 - time.time()) + 120
        time.sleep(max(0.0, t0 + 1.1 - time.time()))  # no polling while the tasks come due: it shares the CPUs
        while True:  # bounded: 120 s past the first due time
            assert proc.poll() is None, f"supervisor exited with {proc.returncode}"
            recs = _records(rdb, "default", ids, "state", "started", "due")
            if all(s == b"done" for s, _, _ in recs):
                break
            assert time.monotonic() < deadline, \
                f"{sum(s != b'done' for s, _, _ in recs)} of {len(ids)} delayed tasks not done in time"
            time.sleep(0.2)
        assert all(int(d) == want for (_, _, d), want in zip(recs, due)), "a record's due time is not its eta"
        late = [int(s) - d for (_, s, _), d in zip(recs, due)]
        # the group whose earliest start was latest: a late claim of a whole group, not a slow child
        k = max(range(groups), key=lambda g: min(late[g * per:(g + 1) * per]))
        worst_groups.append((k * 10, min(late[k * per:(k + 1) * per])))
        late.sort()
        every.extend(late)
        rounds.append((q(late, .5), q(late, .99), late[-1]))

    try:
        benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # ours, by PID
            proc.wait(timeout=30)
            raise
    assert rc == 0, f"supervisor exited with {rc} on SIGTERM"
    every.sort()
    p50, p99, worst = q(every, .5), q(every, .99), every[-1]
    benchmark.extra_info.update(late_p50_ms=p50, late_p99_ms=p99, late_max_ms=worst, early_min_ms=every[0],
                                rounds=[list(r) for r in rounds], worst_groups=[list(g) for g in worst_groups])
    print(f"\ndelayed firing, {N_DELAYED} tasks due within one second (100 groups of 100, 10 ms apart), idle "
          f"supervisor, --procs auto: lateness (handler start - due) per round p50/p99/max "
          + "; ".join(f"{a} / {b} / {c} ms" for a, b, c in rounds)
          + f"; all {len(every)}: p50 {p50} ms, p99 {p99} ms, max {worst} ms, earliest {every[0]:+d} ms "
          f"(requirement: within 100 ms); latest group per round (due at +ms: its first start late by ms) "
          + ", ".join(f"+{o}: {m}" for o, m in worst_groups))
