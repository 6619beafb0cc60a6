"""Payloads over scripts.INLINE_PAYLOAD stay out of CLAIM's Lua: the script returns the task without its
payload and lists it in its reply's `fetch`; the supervisor reads the payload with a plain HGET before the
task joins its buffer (docs/design.md, "Large payloads").  Real redis-server, real `xq run`."""

from __future__ import annotations

import os
import signal

import orjson
import pytest

import xq
from test_engine import IMPLS, assert_queue_empty, states
from xq.broker import Broker
from xq.keys import queue_keys
from xq.scripts import CLAIM, INLINE_PAYLOAD
from xqrun import XQRun, wait_for

pytestmark = pytest.mark.topologies("single", "cluster")

QK = queue_keys("default")


@pytest.mark.single_only("calls the CLAIM script directly, as a supervisor on one Redis does")
def test_claim_returns_large_payloads_by_reference(redis_url, r):
    p = xq.Producer(redis_url)
    sizes = [0, 1, INLINE_PAYLOAD, INLINE_PAYLOAD + 1, 200_000]
    blobs = [os.urandom(n) for n in sizes]
    ids = p.enqueue_many("reverse", blobs)
    keys, tail = Broker.claim_keys([QK]), Broker.claim_tail([QK])
    assert tail[2] == ""  # sizes off by default: the payloads come inline, the large ones counted
    tasks, notes, leased, _earliest, _now, fetch, large = r.eval(CLAIM, len(keys), *keys, 2, "w1", 60_000,
                                                                 1 << 30, 0, *tail)
    assert [tasks[i + 3] for i in range(0, len(tasks), 7)] == blobs[:2] and fetch == [] and large == 0
    ids = ids[2:]
    blobs = blobs[2:]
    tail[2] = "1"  # sizes on, as a supervisor that saw a large payload asks
    tasks, notes, leased, _earliest, _now, fetch, large = r.eval(CLAIM, len(keys), *keys, 10, "w1", 60_000,
                                                                 1 << 30, 0, *tail)
    assert notes == [] and leased == len(sizes) and large == 0
    assert [tasks[i + 1].decode() for i in range(0, len(tasks), 7)] == ids  # claim order kept
    # positions (into the flat reply, 7 values a task) of the tasks whose payload was left out
    assert fetch == [1 * 7, 2 * 7]
    for k, blob in enumerate(blobs):
        payload = tasks[7 * k + 3]
        assert payload == (b"" if 7 * k in fetch else blob)
        assert r.hget(QK.task(ids[k]), "payload") == blob  # the record is untouched
        assert r.hget(QK.task(ids[k]), "state") == b"running"
    # sizes off, a large payload comes inline and is counted
    big = p.enqueue("reverse", b"z" * (INLINE_PAYLOAD + 1))
    tail[2] = ""
    tasks, _, _, _, _, fetch, large = r.eval(CLAIM, len(keys), *keys, 10, "w1", 60_000, 1 << 30, 0, *tail)
    assert tasks[1].decode() == big and tasks[3] == b"z" * (INLINE_PAYLOAD + 1) and fetch == [] and large == 1


@pytest.mark.parametrize("pure", IMPLS)
def test_mixed_sizes_run_in_order_with_correct_payloads(redis_url, r, pure):
    """Small and large payloads interleaved: every handler sees its own bytes (or JSON), once."""
    p = xq.Producer(redis_url)
    sizes = [0, 5, INLINE_PAYLOAD - 1, INLINE_PAYLOAD, INLINE_PAYLOAD + 1, 50_000, 3, 300_000, 9_000, 1]
    blobs = [os.urandom(n) for n in sizes] * 6
    ids = p.enqueue_many("reverse", blobs)
    doc = {"rows": list(range(3000)), "name": "é" * 2000}  # a JSON payload over the threshold too
    jid = p.enqueue("echo", doc)
    with XQRun(redis_url, procs=2, burst=True, pure=pure) as w:
        assert w.wait(120) == 0, w.output()
    for tid, blob in zip(ids, blobs):
        assert p.result(tid, timeout=5) == blob[::-1]
    assert p.result(jid, timeout=5) == doc
    assert all(p.status(t)["attempts"] == 1 for t in ids)
    assert_queue_empty(r)


@pytest.mark.parametrize("pure", IMPLS)
def test_sigterm_returns_large_payload_tasks_in_order(redis_url, r, pure):
    """Claimed tasks whose payload was read after the claim go back at a stop like any other, in order,
    their attempt not counted."""
    p = xq.Producer(redis_url)
    pad = "x" * (INLINE_PAYLOAD * 3)
    ids = p.enqueue_many("sleep", [{"s": 0.6, "pad": pad if i % 2 else ""} for i in range(12)])
    with XQRun(redis_url, "--prefetch", "4", procs=1, pure=pure) as w:
        wait_for(lambda: r.llen("test:started") >= 1, what="first task started")
        w.signal(signal.SIGTERM)
        assert w.wait(30) == 0, w.output()
    started = [x.decode() for x in r.lrange("test:started", 0, -1)]
    assert len(started) == 1
    assert states(r, ids) == {"done": 1, "queued": 11}
    assert [x.decode() for x in r.lrange(QK.ready[5], 0, -1)] == [i for i in ids if i not in started]
    assert all(p.status(i)["attempts"] == 0 for i in ids if i not in started)
    assert r.zcard(QK.leases) == 0


def test_cancel_of_a_claimed_large_payload_task_before_it_starts(redis_url, r):
    p = xq.Producer(redis_url)
    pad = "y" * (INLINE_PAYLOAD + 10)
    first = p.enqueue("sleep", {"s": 1.5, "pad": pad})
    rest = p.enqueue_many("sleep", [{"s": 0.01, "pad": pad}] * 3)
    with XQRun(redis_url, "--prefetch", "4", procs=1) as w:
        wait_for(lambda: r.llen("test:started") >= 1, what="first task started")
        # the others are claimed and held by the supervisor (prefetch), not started
        wait_for(lambda: all(p.status(t)["status"] == "running" for t in rest), what="the rest claimed")
        assert p.cancel(rest[1]) == "canceling"
        assert p.result(rest[2], timeout=30) == {"s": 0.01, "pad": pad}
        st = p.status(rest[1])
        assert st["status"] == "canceled" and "before it started" in st["error"], (st, w.output())
    started = [x.decode() for x in r.lrange("test:started", 0, -1)]
    assert rest[1] not in started and first in started
    assert orjson.loads(r.hget(QK.task(rest[0]), "result")) == {"s": 0.01, "pad": pad}
