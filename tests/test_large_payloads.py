"""Payloads over scripts.INLINE_PAYLOAD stay out of CLAIM's Lua: the script returns the task without its
payload and lists it in its reply's `fetch`; the supervisor reads the payload with a plain HGET before the
task joins its buffer (docs/design.md, "Large payloads").  Real redis-server, real `xq run`."""

from __future__ import annotations

import os
import signal

import orjson
import pytest
import redis

import xq
from test_engine import IMPLS, assert_queue_empty, states
from xq.broker import Broker
from xq.keys import queue_keys
from xq.scripts import CLAIM, INLINE_PAYLOAD, STAGE_PAYLOAD
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


# --- ENQUEUE: payloads over scripts.STAGE_PAYLOAD are staged and RENAMEd, never passed through Lua ---

def stage_keys(r) -> list:
    return r.keys(QK.stage_prefix.decode() + "*")


def calls(r, command: str) -> int:
    """Calls of a command since the last CONFIG RESETSTAT (on every master of a Cluster)."""
    if isinstance(r, redis.RedisCluster):
        nodes = r.get_primaries()
        return sum(int(r.info("commandstats", target_nodes=n).get("cmdstat_" + command, {}).get("calls", 0))
                   for n in nodes)
    return int(r.info("commandstats").get("cmdstat_" + command, {}).get("calls", 0))


def reset_stats(r) -> None:
    if isinstance(r, redis.RedisCluster):
        r.config_resetstat(target_nodes=redis.RedisCluster.PRIMARIES)
    else:
        r.config_resetstat()


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_enqueue_stages_large_payloads_outside_the_script(redis_url, r, flavour):
    """A large payload reaches the record through a stage key RENAMEd by ENQUEUE: the record is the same
    as ever (payload, ct; no TTL), no stage is left, and small payloads still go inline."""
    import asyncio

    blobs = [os.urandom(n) for n in (10, STAGE_PAYLOAD, STAGE_PAYLOAD + 1, 300_000)]
    doc = {"big": "é" * STAGE_PAYLOAD}

    def enqueue_many(payloads, **kw):
        if flavour == "sync":
            with xq.Producer(redis_url) as p:
                return p.enqueue_many("reverse", payloads, **kw)

        async def go():
            async with xq.AsyncProducer(redis_url) as p:
                return await p.enqueue_many("reverse", payloads, **kw)
        return asyncio.run(go())

    reset_stats(r)
    ids = enqueue_many(blobs + [doc])
    assert calls(r, "rename") == 3  # the two large blobs and the JSON document
    for tid, blob in zip(ids, blobs):
        rec = r.hgetall(QK.task(tid))
        assert rec[b"payload"] == blob and rec[b"ct"] == b"b" and rec[b"state"] == b"queued", rec.keys()
        assert r.pttl(QK.task(tid)) == -1
    rec = r.hgetall(QK.task(ids[-1]))
    assert orjson.loads(rec[b"payload"]) == doc and b"ct" not in rec
    assert stage_keys(r) == []
    # a resend of the same ids (a lost reply) stores nothing twice and leaves no stage behind,
    # even with other bytes: the first record wins
    assert enqueue_many([b"z" * 9000] * 5, ids=ids) == ids
    assert r.hget(QK.task(ids[3]), "payload") == blobs[3] and stage_keys(r) == []
    assert sum(r.llen(k) for k in QK.ready) == 5


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_refused_enqueues_leave_no_stage(redis_url, r, flavour):
    """An enqueue that stores nothing deletes the stages sent with it (a held unique key; the refusals
    a producer cannot reach are in the next test); after SCRIPT FLUSH (NOSCRIPT) the resend stages again."""
    import asyncio

    big = os.urandom(STAGE_PAYLOAD * 2)

    def call(method, *a, **kw):
        if flavour == "sync":
            with xq.Producer(redis_url) as p:
                return getattr(p, method)(*a, **kw)

        async def go():
            async with xq.AsyncProducer(redis_url) as p:
                return await getattr(p, method)(*a, **kw)
        return asyncio.run(go())

    holder = call("enqueue", "reverse", big, unique_key="k1")
    assert call("enqueue", "reverse", big, unique_key="k1") == holder
    assert stage_keys(r) == []
    r.script_flush()
    tid = call("enqueue", "reverse", big)
    assert r.hget(QK.task(tid), "payload") == big and stage_keys(r) == []


@pytest.mark.single_only("calls ENQUEUE directly, as a foreign producer would")
def test_a_gone_stage_fails_the_whole_call_naming_it(redis_url, r):
    """A staged payload that expired or was evicted before ENQUEUE ran: an error naming the task, and
    nothing of the call is written (its other stages go too).  So do the other refusals."""
    xq.Producer(redis_url).enqueue("reverse", b"warm")  # loads the scripts
    r.hset(QK.stage_prefix + b"A1", "payload", b"kept")
    sha = xq.scripts.SHA["enqueue"]
    fixed = [QK.task_prefix, "reverse", 5, "", "", "", "", "", "", QK.events, "default", ""]
    with pytest.raises(redis.ResponseError, match="staged payload of task A2 in queue default is gone"):
        r.evalsha(sha, 3, QK.ready[5], QK.wake, QK.sched, *fixed, "A1", "", "b+", "A2", "", "b+")
    assert not r.exists(QK.task("A1"), QK.task("A2")) and stage_keys(r) == []
    for flow, error in [(b'{"grp":"g0"}', "group g0 is not open"), (b'{"deps":["B0"]}', "unknown dependency B0")]:
        r.hset(QK.stage_prefix + b"A3", "payload", b"x" * 5000)
        with pytest.raises(redis.ResponseError, match=error):
            r.evalsha(sha, 3, QK.ready[5], QK.wake, QK.sched, *fixed[:-1], flow, "A3", "", "b+")
        assert not r.exists(QK.task("A3")) and stage_keys(r) == []
    # the same call with both stages stores both
    for tid in ("A1", "A2"):
        r.hset(QK.stage_prefix + tid.encode(), "payload", tid * 3000)
        r.pexpire(QK.stage_prefix + tid.encode(), 60_000)
    assert r.evalsha(sha, 3, QK.ready[5], QK.wake, QK.sched, *fixed, "A1", "", "b+", "A2", "", "b+") == 2
    assert r.hget(QK.task("A2"), "payload") == b"A2" * 3000 and r.pttl(QK.task("A2")) == -1
