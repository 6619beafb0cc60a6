"""The metrics' bookkeeping in the supervisor loop (xq/supervisor/metrics.py): tasks counted, run and wait
times bucketed a batch at a time in plain lists, folded into metric families only at scrape time.  Checked
against a per-value reference and through prometheus-client's own text format and parser.  (The end-to-end
scrape of a real `xq run` is tests/test_metrics.py.)"""

from __future__ import annotations

import random
import time
import types

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from xq import _fast, _pyfast
from xq.supervisor.metrics import RUN_BUCKETS, Hist, Metrics

IMPLS = {"cython": _fast, "python": _pyfast}


@pytest.fixture
def metrics():
    sup = types.SimpleNamespace(qnames=["default", "other"], cfg=types.SimpleNamespace(procs=2),
                                broker=types.SimpleNamespace(), pool=types.SimpleNamespace(children={}),
                                redis_errors=0, reconnects=0, up=True,
                                leases=types.SimpleNamespace(renewed=0, recovered=0))
    m = Metrics(sup, 0, host="127.0.0.1")
    try:
        yield m
    finally:
        m.close()


def scrape(m: Metrics) -> dict:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def v(m: dict, metric: str, **labels):
    return m.get((metric, tuple(sorted(labels.items()))))


def reference(bounds_ms, values) -> list:
    """Cumulative count per bound (and +Inf), one value at a time."""
    return [sum(1 for x in values if x <= b) for b in bounds_ms] + [len(values)]


def test_hist_matches_a_per_value_count_for_small_and_large_batches():
    rng = random.Random(7)
    h = Hist("t", "doc", RUN_BUCKETS)
    seen = []
    # sizes across the small (value by value) and large (sorted, one bisect a bucket) paths; values on the
    # bounds themselves (le is inclusive), zero, and past the last bound
    for size in (1, 3, 16, 17, 100, 1000, 2, 500):
        batch = [rng.choice((0, 1, 5, 10, 250, 3_600_000, 4_000_000, rng.randint(0, 10_000))) for _ in range(size)]
        seen += batch
        h.add(("q", "n"), list(batch))
    fam = h.family(HistogramMetricFamily)
    buckets = [s.value for s in fam.samples if s.name == "t_bucket"]
    assert buckets == reference([b * 1000 for b in RUN_BUCKETS], seen)
    assert [s.value for s in fam.samples if s.name == "t_count"] == [len(seen)]
    assert [s.value for s in fam.samples if s.name == "t_sum"] == [pytest.approx(sum(seen) / 1000)]


def test_hist_replaces_a_series_whole():
    # the scrape thread copies nothing: a series it holds must never change under it
    h = Hist("t", "doc", (1, 2), labels=(), scale=1)
    h.add((), [1])
    held = h.series[()]
    h.add((), [5] * 40)
    assert held == [1, 0, 0, 1]
    assert h.series[()] == [1, 0, 40, 201]


@pytest.mark.parametrize("impl", list(IMPLS))
def test_wait_times_read_the_enqueue_time_of_xq_ids_only(impl):
    fast = IMPLS[impl]
    t0 = 1_700_000_000_123
    xid = _pyfast._ALPHABET  # 32 chars: '0123456789ABC...'; an id whose 10 first chars are t0 in base32
    head = bytes(xid[(t0 >> (5 * (9 - i))) & 31] for i in range(10))
    good = head + b"0" * 16
    items = []
    for tid, attempt, started in [(good, 1, t0 + 40),         # 40 ms in the queue
                                  (good, 2, t0 + 40),         # a retry: its wait includes the backoff
                                  (good, 1, t0 - 1),          # started before its enqueue (clock step)
                                  (good, 1, t0),              # 0 ms
                                  (b"my-own-id", 1, t0 + 5),  # an id of the caller's own
                                  (head.lower() + b"0" * 16, 1, t0 + 5),  # not xq's alphabet
                                  (head[:9] + b"U" + b"0" * 16, 1, t0 + 5),  # U is not Crockford
                                  (good + b"0", 1, t0 + 5)]:  # 27 chars
        items += [tid, attempt, b"done", b"null", b"j", started, started + 1]
    assert fast.wait_times(items) == [40, -1, -1, 0, -1, -1, -1, -1]
    assert fast.wait_times([]) == []
    ids = fast.new_ids(50)
    now = int(time.time() * 1000) + 1000
    items = [x for i in ids for x in (i, 1, b"done", b"", b"", now, now)]
    assert all(0 <= w <= 2000 for w in fast.wait_times(items))


def test_completed_counts_by_name_and_outcome_and_buckets_times(metrics):
    ids = _fast.new_ids(40)
    names = [b"a" if i % 3 else b"b" for i in range(40)]
    metrics.claimed([x for i, n in zip(ids, names) for x in (0, i, n, b"", b"j", 1, b"")])
    now = int(time.time() * 1000) + 50
    # one batch of one name, all done (the fast path); then a mixed batch with failures and a retry
    a_ids = [i for i, n in zip(ids, names) if n == b"a"]
    metrics.completed(0, [x for i in a_ids[:20] for x in (i, 1, b"done", b"null", b"j", now, now + 3)])
    mixed = [i for i in ids if i not in a_ids[:20]]
    items = []
    for k, i in enumerate(mixed):
        items += [i, 2 if k == 0 else 1, b"retry" if k % 4 == 0 else b"done", b"x", b"j", now, now + 2000]
    metrics.completed(0, items)
    metrics.completed(1, [b"unknown-id", 1, b"canceled", b"", b"", now, now])  # never claimed here: name '?'
    m = scrape(metrics)
    done_a = 20 + sum(1 for k, i in enumerate(mixed) if i in a_ids and k % 4)
    failed_a = sum(1 for k, i in enumerate(mixed) if i in a_ids and k % 4 == 0)
    done_b = sum(1 for k, i in enumerate(mixed) if i not in a_ids and k % 4)
    failed_b = sum(1 for k, i in enumerate(mixed) if i not in a_ids and k % 4 == 0)
    assert v(m, "xq_tasks_total", queue="default", name="a", outcome="done") == done_a
    assert v(m, "xq_tasks_total", queue="default", name="a", outcome="failed") == failed_a
    assert v(m, "xq_tasks_total", queue="default", name="b", outcome="done") == done_b
    assert v(m, "xq_tasks_total", queue="default", name="b", outcome="failed") == failed_b
    assert v(m, "xq_tasks_total", queue="other", name="?", outcome="canceled") == 1
    assert v(m, "xq_tasks_created", queue="default", name="a", outcome="done") > 0
    n_a = done_a + failed_a
    assert v(m, "xq_task_run_seconds_count", queue="default", name="a") == n_a
    assert v(m, "xq_task_run_seconds_bucket", queue="default", name="a", le="0.005") == 20  # the 3 ms ones
    assert v(m, "xq_task_run_seconds_bucket", queue="default", name="a", le="2.5") == n_a
    assert v(m, "xq_task_run_seconds_sum", queue="default", name="a") == pytest.approx((20 * 3 + (n_a - 20) * 2000) / 1000)
    # waits: first attempts with xq ids only (the retry, attempt 2, and the unknown id are left out)
    assert v(m, "xq_task_wait_seconds_count", queue="default", name="a") + \
        v(m, "xq_task_wait_seconds_count", queue="default", name="b") == 39
    assert v(m, "xq_task_wait_seconds_count", queue="other", name="?") is None
    assert v(m, "xq_claim_batch_size_count") == 1
    assert v(m, "xq_claim_batch_size_sum") == 40
    assert v(m, "xq_claim_batch_size_bucket", le="32.0") == 0
    assert v(m, "xq_claim_batch_size_bucket", le="64.0") == 1
    assert v(m, "xq_claim_batch_size_created") > 0
    assert not metrics.names  # every claimed name was taken by its completion


def test_released_counts_by_outcome_and_forgets_returned_names(metrics):
    ids = _fast.new_ids(3)
    metrics.claimed([x for i in ids for x in (0, i, b"job", b"", b"j", 1, b"")])
    metrics.released(types.SimpleNamespace(mode="lost", options={"outcome": b"lost"}, qidx=0,
                                           tasks=[(ids[0], 0), (ids[1], 0)]))
    metrics.released(types.SimpleNamespace(mode="return", options={}, qidx=0, tasks=[(ids[2], 0)]))
    m = scrape(metrics)
    assert v(m, "xq_tasks_total", queue="default", name="job", outcome="lost") == 2
    assert not [k for k in m if k[0] == "xq_tasks_total" and dict(k[1])["outcome"] != "lost"]
    assert not metrics.names
