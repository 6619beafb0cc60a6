"""AsyncProducer's inspection and pause/resume (issue 11) against its sync twin: the same state read both ways
gives the same dicts, and the same bad input the same errors.  Real redis-server, real `xq run` for workers
and running tasks (tests/apps/basic.py); asyncio.run inside sync tests (no plugin), as tests/test_aio.py.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

import xq
from xq.inspect import AsyncInspector, Inspector
from xq.keys import WORKERS, queue_keys, worker_key
from test_queues import fleet  # noqa: F401 - the same fixture: a paused queue with tasks in every state
from xqrun import XQRun, wait_for

pytestmark = pytest.mark.topologies("single", "cluster")


def run(coro, timeout: float = 60):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def without(d: dict | None, *keys: str) -> dict | None:
    return None if d is None else {k: v for k, v in d.items() if k not in keys}


async def same_queue(ap: xq.AsyncProducer, p: xq.Producer, queue: str, **kw) -> dict:
    """ap.queue() == p.queue() but for the latency, which grows between the two reads."""
    a = await ap.queue(queue, **kw)
    b = p._inspector().queue(queue, **kw)
    assert without(a, "latency") == without(b, "latency")
    assert (a["latency"] is None) == (b["latency"] is None)
    assert a["latency"] is None or a["latency"] <= b["latency"]
    return a


async def same_workers(ap: xq.AsyncProducer, p: xq.Producer) -> list[dict]:
    """ap.workers() == p.workers() but for `age`; a heartbeat between the two reads changes the records, so
    they are read again (bounded) until both reads fall between two heartbeats."""
    for _ in range(20):
        a, b = await ap.workers(), p.workers()
        if [without(w, "age") for w in a] == [without(w, "age") for w in b]:
            assert all(("age" in x) == ("age" in y) for x, y in zip(a, b))
            return a
    raise AssertionError(f"async and sync workers() differ:\n{a}\n{b}")


def test_every_read_matches_its_sync_twin_on_a_live_queue(fleet, redis_url, r):  # noqa: F811
    p, ids = fleet
    p.enqueue("count", None, queue="idle")
    # a malformed registry record beside the live supervisor's: both sides show it the same way
    r.set(worker_key("w-bad"), b"{not json")
    r.zadd(WORKERS, {"w-bad": int(r.time()[0]) * 1000 + 600_000})  # newest: never pruned by the live one
    wait_for(lambda: any(t["id"] == ids["running"][0] for w in p.workers() for t in w.get("tasks", ())),
             what="the supervisor's record to show the running task")

    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            q = await same_queue(ap, p, "default")
            assert (q["ready"], q["scheduled"], q["retrying"], q["running"], q["waiting"], q["dead"]) == \
                (6, 3, 1, 1, 1, 1)
            assert q["paused"] and q["latency"] > 0
            by = await same_queue(ap, p, "default", by_name=True)
            assert by["by_name"]["count"]["queued"] == 6 and by["by_name_exact"]
            small = await same_queue(ap, p, "default", by_name=True, sample=1)
            assert not small["sched_split_exact"] and not small["by_name_exact"]
            a, b = await ap.queues(by_name=True), p.queues(by_name=True)
            assert [without(x, "latency") for x in a] == [without(x, "latency") for x in b]
            assert [x["queue"] for x in a] == ["default", "idle"]
            assert (await ap.queue())["queue"] == "default"  # the default queue, as Producer.queue
            pages = [("queued", {}), ("queued", {"offset": 2, "limit": 3}), ("queued", {"name": "echo"}),
                     ("scheduled", {}), ("scheduled", {"name": "echo", "limit": 2}),
                     ("scheduled", {"offset": 1, "limit": 1}), ("retrying", {}), ("running", {}),
                     ("dead", {}), ("waiting", {}), ("queued", {"name": "count", "scan": 3})]
            for state, kw in pages:
                assert await ap.tasks("default", state, **kw) == p.tasks("default", state, **kw), (state, kw)
            assert [t["id"] for t in (await ap.tasks("default", "queued"))["tasks"]] == \
                ids["ready"][0] + ids["ready"][5] + ids["ready"][9]
            assert [t["id"] for t in (await ap.tasks("default", "running"))["tasks"]] == ids["running"]
            assert not (await ap.tasks("default", "queued", name="count", scan=3))["complete"]
            ws = await same_workers(ap, p)
            live = [w for w in ws if not w.get("malformed")]
            assert len(live) == 1 and live[0]["tasks"][0]["id"] == ids["running"][0]
            assert ws[0]["id"] == "w-bad" and list(ws[0]) == ["id", "malformed"]
            for wid in (live[0]["id"], "w-bad", "no-such-worker"):
                for _ in range(20):  # a heartbeat may land between the two reads: read again (bounded)
                    a, b = await ap.worker(wid), p.worker(wid)
                    if without(a, "age") == without(b, "age"):
                        break
                assert without(a, "age") == without(b, "age"), wid
            assert await ap.worker("no-such-worker") is None
            assert await ap.paused("default") is True and await ap.paused("idle") is False
            at = time.time()  # one clock for both sides: the history ends at the current minute
            for kw in ({}, {"name": "boom", "minutes": 5}, {"name": "no-such-name", "minutes": 1}):
                assert await ap.history("default", now=at, **kw) == p.history("default", now=at, **kw), kw
            assert sum(m["failed"] for m in await ap.history("default", name="boom", now=at)) >= 1
            pol = await ap.set_retention("default", keep=50, keep_dead=70)
            assert pol == p.retention("default") and (pol["keep"], pol["keep_dead"]) == (50, 70)
            assert await ap.set_retention("default", reset=True) == p.retention("default")
            with pytest.raises(xq.ConfigError, match="keep"):
                await ap.set_retention("default", keep=0)
            async with AsyncInspector(redis_url) as ai:
                assert await ai.history_names("default", now=at) == Inspector(redis_url).history_names(
                    "default", now=at)
            async with AsyncInspector(redis_url) as ai:  # standalone, on a broker of its own
                assert await ai.paused_since("default") == Inspector(redis_url).paused_since("default")
                assert without(await ai.queue("idle"), "latency") == without(p.queue("idle"), "latency")
    run(main())


def test_waiting_tasks_through_dependencies_and_group_callbacks(redis_url, r):
    """No supervisor: the waiting walk (hooked set, d:<id> sets, group callbacks) runs on both brokers."""
    p = xq.Producer(redis_url)
    first = p.enqueue("echo", 0)
    deps = p.enqueue_many("echo", list(range(4)), depends_on=[first])
    g = p.group([("echo", 1), ("echo", 2)], then=("echo", "cb"))
    sync = p.tasks("default", "waiting")
    assert {t["id"] for t in sync["tasks"]} == set(deps) | {g.callback}

    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            assert await ap.tasks("default", "waiting") == sync
            assert await ap.tasks("default", "waiting", offset=1, limit=2) == \
                p.tasks("default", "waiting", offset=1, limit=2)
            assert await ap.tasks("default", "waiting", scan=1) == p.tasks("default", "waiting", scan=1)
            await same_queue(ap, p, "default", by_name=True)
            # sample >= the 3 hooked ids (first, the 2 members): a smaller one walks a random sample of them
            assert (await same_queue(ap, p, "default", sample=3))["waiting"] == 5
    run(main())
    p.close()


def test_async_pause_is_honoured_by_a_real_supervisor(redis_url, r):
    p = xq.Producer(redis_url)
    ps = r.pubsub()
    ps.subscribe(queue_keys("default").events)
    assert ps.get_message(timeout=5)["type"] == "subscribe"

    async def pause(ap):
        assert await ap.pause_queue("default") is True
        assert await ap.pause_queue("default") is False  # paused already
        return await ap.enqueue_many("count", [1, 2, 3])

    async def resume(ap):
        assert await ap.resume_queue("default") is True
        assert await ap.resume_queue("default") is False  # not paused any more
        return await ap.paused("default")

    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            held = await pause(ap)
            assert p.paused("default") and "default" in p.broker.queues()
            with XQRun(redis_url, queues="default,other", procs=2) as w:
                # default comes first in --queues: a claim that did not skip it would take these first
                flowing = await ap.enqueue_many("count", [4, 5], queue="other")
                assert await asyncio.gather(*(ap.result(t, timeout=20) for t in flowing)) == [4, 5], w.output()
                await asyncio.sleep(1.5)  # past the idle wait's 1 s timeout: the supervisor has claimed since
                assert {(await ap.status(t))["status"] for t in held} == {"queued"}
                assert r.hlen("test:execs") == 2  # only other's tasks ran
                assert await resume(ap) is False
                assert await asyncio.gather(*(ap.result(t, timeout=20) for t in held)) == [1, 2, 3], w.output()
    run(main())
    events = []
    for _ in range(100):  # bounded: the pause and resume events, among the tasks' own
        m = ps.get_message(timeout=0.1)
        if m and m["type"] == "message":
            events += [e for e in orjson.loads(m["data"]) if "id" not in e]
        if len(events) == 2:
            break
    ps.close()
    assert [(e["queue"], e["state"]) for e in events] == [("default", "paused"), ("default", "resumed")]
    assert not p.paused("default")
    p.close()


BAD = [
    ("queue", ("bad name",), {}),
    ("queue", ("default",), {"sample": 0}),
    ("tasks", ("default", "done"), {"offset": -1}),
    ("tasks", ("default", "sleeping"), {}),
    ("tasks", ("default", "queued"), {"offset": -1}),
    ("tasks", ("default", "queued"), {"limit": 0}),
    ("tasks", ("bad name", "queued"), {}),
    ("pause_queue", ("bad name",), {}),
    ("resume_queue", ("",), {}),
    ("paused", ("x" * 2000,), {}),
]


def _error(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the error itself is what is compared
        return type(e), str(e)
    raise AssertionError("no error")


def test_bad_input_gives_the_same_errors_and_touches_nothing(redis_url, r):
    p = xq.Producer(redis_url)
    sync = [_error(lambda m=m, a=a, k=k: getattr(p, m)(*a, **k)) for m, a, k in BAD]

    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            out = []
            for m, a, k in BAD:
                try:
                    await getattr(ap, m)(*a, **k)
                except Exception as e:  # noqa: BLE001
                    out.append((type(e), str(e)))
                else:
                    out.append(None)
            return out
    assert run(main()) == sync
    assert sync[2][0] is xq.ConfigError and "offset" in sync[2][1]
    assert sync[3][0] is xq.ConfigError and "invalid state 'sleeping'" in sync[3][1]
    assert "invalid queue name 'bad name'" in sync[0][1] and "sample" in sync[1][1]
    assert r.smembers("xq:queues") == set()  # a refused pause registered nothing

    async def unreachable():
        async with xq.AsyncProducer("redis://127.0.0.1:1/0", retry_for=0) as ap:
            with pytest.raises(xq.ConnectionLost):
                await ap.queue("default")
            with pytest.raises(xq.ConnectionLost):
                await ap.pause_queue("default")
    run(unreachable())
    with pytest.raises(xq.ConnectionLost):
        xq.Producer("redis://127.0.0.1:1/0", retry_for=0).queue("default")
    p.close()
