"""xq.AsyncProducer on redis.asyncio: enqueue and await, the same options and checks as the sync Producer.
Real redis-server, real `xq run` (tests/apps/compose.py); asyncio.run inside sync tests (no plugin)."""

from __future__ import annotations

import asyncio

import pytest

import xq
from xq.keys import queue_keys
from helpers import subscribers
from xqrun import XQRun, wait_for

APP = "apps.compose:app"
QK = queue_keys("default")


def run(coro, timeout: float = 60):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


pytestmark = pytest.mark.usefixtures("no_event_subscribers")


def test_enqueue_and_await_results_with_a_real_worker(redis_url, r):
    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            tid = await ap.enqueue("step", {"x": 1}, priority="high")
            st = await ap.status(tid)
            assert st["status"] == "queued" and st["priority"] == 2 and st["name"] == "step"
            more = [await ap.enqueue("step", i) for i in range(5)]
            with XQRun(redis_url, app=APP, procs=2) as w:
                # many concurrent waiters on one producer
                got = await asyncio.gather(ap.result(tid, timeout=20), *(ap.result(m, timeout=20) for m in more))
                assert got == [{"x": 1}, 0, 1, 2, 3, 4], w.output()
                bad = await ap.enqueue("fail", "boom")
                with pytest.raises(xq.TaskFailed, match="fails on purpose: boom"):
                    await ap.result(bad, timeout=20)
                g = xq.Producer(redis_url).group([("step", "g1"), ("step", "g2")])
                assert await ap.result(g, timeout=20) == ["g1", "g2"]
            assert (await ap.status(tid))["status"] == "done"
            assert await ap.result(tid, timeout=1) == {"x": 1}  # finished: returns at once
            return tid
    tid = run(main())
    assert xq.Producer(redis_url).status(tid)["status"] == "done"
    wait_for(lambda: subscribers(r) == 0, 10, what="the waiters' connections to close")


def test_enqueue_many_pipelines_chunks_and_matches_the_sync_records(redis_url, r):
    async def main():
        async with xq.AsyncProducer(redis_url, chunk=1000) as ap:
            ids = await ap.enqueue_many("step", (i for i in range(2500)), max_retries=1, timeout=5)
            raw = await ap.enqueue_many("step", [b"\x00\xff"] * 3, queue="bytes")
            return ids, raw
    ids, raw = run(main())
    assert len(ids) == len(set(ids)) == 2500 and ids == sorted(ids)  # ids are time-sortable, in order
    assert sum(r.llen(k) for k in QK.ready) == 2500
    assert r.lrange(QK.ready[5], 0, -1)[:3] == [i.encode() for i in ids[:3]]
    p = xq.Producer(redis_url)
    st = p.status(ids[-1])
    assert st["status"] == "queued" and st["max_retries"] == 1 and st["timeout"] == 5.0
    assert r.hget(QK.task(ids[1234]), "payload") == b"1234"
    assert p.status(raw[0])["queue"] == "bytes" and r.smembers("xq:queues") == {b"default", b"bytes"}
    with XQRun(redis_url, app=APP, procs=1, queues="bytes") as w:
        assert run(xq.AsyncProducer(redis_url).result(raw[2], timeout=20)) == b"\x00\xff", w.output()


def test_unique_key_returns_the_same_id(redis_url, r):
    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            first = await ap.enqueue("step", 1, unique_key="resize:42")
            again = await ap.enqueue("step", 2, unique_key="resize:42")
            other = await ap.enqueue("step", 3, unique_key="resize:43")
            return first, again, other
    first, again, other = run(main())
    assert first == again and other != first
    assert xq.Producer(redis_url).enqueue("step", 4, unique_key="resize:42") == first  # the same key as sync
    assert sum(r.llen(k) for k in QK.ready) == 2


BAD = [
    ({"priority": 12}, "invalid priority"),
    ({"bogus": 1}, "unknown enqueue option"),
    ({"queue": "no spaces"}, "invalid queue name"),
    ({"max_retries": -1}, "invalid max_retries"),
    ({"unique_ttl": 5}, "unique_ttl given without unique_key"),
    ({"concurrency_key": "k", "max_concurrency": 0}, "invalid max_concurrency"),
    ({"rate_key": "k", "rate_limit": "0/s"}, "invalid rate_limit"),
    ({"delay": 1, "eta": 2e9}, "give delay= or eta=, not both"),
    ({"expires": -1}, "expires"),
    ({"on_dependency_failure": "maybe", "depends_on": ["X"]}, "invalid on_dependency_failure"),
]


@pytest.mark.parametrize("opts,match", BAD, ids=[m for _, m in BAD])
def test_a_bad_option_raises_the_same_error_as_the_sync_producer(redis_url, r, opts, match):
    with pytest.raises(xq.ConfigError, match=match) as sync_err:
        xq.Producer(redis_url).enqueue("step", 1, **opts)

    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            with pytest.raises(xq.ConfigError) as async_err:
                await ap.enqueue("step", 1, **opts)
            return async_err
    async_err = run(main())
    assert type(async_err.value) is type(sync_err.value) and str(async_err.value) == str(sync_err.value)
    assert r.dbsize() == 0  # nothing sent


def test_other_errors_match_the_sync_producer(redis_url, r):
    p = xq.Producer(redis_url)
    other = p.enqueue("step", 1, queue="other")

    async def main():
        async with xq.AsyncProducer(redis_url, max_payload=100) as ap:
            with pytest.raises(xq.ConfigError, match="unique_key applies to one task"):
                await ap.enqueue_many("step", [1, 2], unique_key="k")
            with pytest.raises(xq.UnknownTask, match="NOSUCHID"):
                await ap.enqueue("step", 1, depends_on=["NOSUCHID"])
            with pytest.raises(xq.ConfigError, match="can only depend on tasks of its own queue"):
                await ap.enqueue("step", 1, depends_on=[other])
            with pytest.raises(xq.PayloadTooLarge):
                await ap.enqueue_many("step", [1, "x" * 200])
            with pytest.raises(xq.UnknownTask):
                await ap.status("NOSUCHID")
            with pytest.raises(xq.ConfigError, match="invalid Redis URL"):
                xq.AsyncProducer("http://nope")
            # a dependency on a task of the same queue is accepted, and waits
            a = await ap.enqueue("step", 1, delay=60)
            b = await ap.enqueue("step", 2, depends_on=a)
            assert (await ap.status(b))["status"] == "waiting"
            assert await ap.cancel(a) == "canceled"
            assert await ap.cancel(a) == "finished"
            with pytest.raises(xq.TaskFailed):
                await ap.result(a, timeout=5)
            with pytest.raises(xq.UnknownTask):
                await ap.cancel("NOSUCHID")
            return b
    b = run(main())
    assert p.status(b)["status"] == "dead"
    assert sum(r.llen(k) for k in QK.ready) == 0  # the failed enqueues sent nothing


def test_result_timeout_raises_result_timeout(redis_url, r):
    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            tid = await ap.enqueue("step", 1)
            with pytest.raises(xq.ResultTimeout):
                await ap.result(tid, timeout=0.3)
            g = xq.Producer(redis_url).group([("step", 1)])
            with pytest.raises(xq.ResultTimeout):
                await ap.result(g, timeout=0.3)
    run(main())
    wait_for(lambda: subscribers(r) == 0, 10, what="the waiters' connections to close")


def test_scripts_are_loaded_again_after_a_flush(redis_url, r):
    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            a = await ap.enqueue_many("step", [1, 2])  # the fixture flushed the scripts: NOSCRIPT, loaded
            r.script_flush()
            b = await ap.enqueue("step", 3)
            r.script_flush()
            assert await ap.cancel(b) == "canceled"
            return a, b
    a, b = run(main())
    assert xq.Producer(redis_url).status(a[1])["status"] == "queued"


def test_async_events_stream(redis_url, r):
    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            async with ap.events(queues="default", timeout=30) as stream:
                assert subscribers(r) == 1  # confirmed on entering
                tid = await ap.enqueue("step", "e")
                seen = []
                with XQRun(redis_url, app=APP, procs=1) as w:
                    async for ev in stream:
                        if ev["id"] == tid:
                            seen.append(ev["state"])
                            if ev["state"] == "done" or len(seen) > 10:
                                break
                    assert seen == ["queued", "running", "done"], w.output()
                    late = await ap.enqueue("step", "late", delay=0.2)
                    evs = [ev async for ev in ap.events(ids=[tid, late], until_done=True, timeout=30)]
            assert evs[0] == {**evs[0], "id": tid, "state": "done", "synthetic": True}
            assert [(e["id"], e["state"]) for e in evs[1:]] == [(late, "queued"), (late, "running"), (late, "done")]
            with pytest.raises(xq.ConfigError, match="unknown event state"):
                ap.events(states="finished")
            # ends at its timeout (run() bounds the whole test): late finished before, so nothing to report
            assert [ev async for ev in ap.events(ids=[late], states="queued", timeout=0.3)] == []
    run(main())
    wait_for(lambda: subscribers(r) == 0, 10, what="the streams' connections to close")
