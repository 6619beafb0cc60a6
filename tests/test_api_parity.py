"""One API, two flavours (issue 15): xq.AsyncProducer offers every public call of xq.Producer, with the same
parameters, as coroutines (an async iterator where the sync call returns an iterator); and the calls it
gained (group, group_status, scheduled, dead_letters, dead_count, replay, purge_dead, flush, delete_queue)
behave as the sync ones on the same state.  Real redis-server, real `xq run` (tests/apps/lifecycle.py)."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import xq
from xq.inspect import AsyncInspector
from xq.keys import queue_keys
from xqrun import XQRun, wait_for

APP = "apps.lifecycle:app"
FLAG = "test:flag"
ITERATORS = {"events"}  # sync: an iterator; async: an AsyncEventStream (async iterator + async context manager)


def run(coro, timeout: float = 90):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def public(cls) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def params(fn) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


# ------------------------------------------------------------------------------------------ the API itself


def test_the_same_public_names():
    sync, aio = public(xq.Producer), public(xq.AsyncProducer)
    assert sync - aio == set(), f"AsyncProducer lacks {sorted(sync - aio)}"
    assert aio - sync == set(), f"Producer lacks {sorted(aio - sync)}"
    # the context managers: `with` for one, `async with` for the other
    assert hasattr(xq.Producer, "__enter__") and hasattr(xq.Producer, "__exit__")
    assert hasattr(xq.AsyncProducer, "__aenter__") and hasattr(xq.AsyncProducer, "__aexit__")


def test_the_same_constructor_parameters():
    assert params(xq.AsyncProducer.__init__) == params(xq.Producer.__init__)


@pytest.mark.parametrize("name", sorted(public(xq.Producer)))
def test_the_same_parameters_and_async_flavour(name):
    s, a = getattr(xq.Producer, name), getattr(xq.AsyncProducer, name)
    if isinstance(inspect.getattr_static(xq.Producer, name), property):
        assert isinstance(inspect.getattr_static(xq.AsyncProducer, name), property), name
        return
    assert callable(s) and callable(a), name
    assert params(a) == params(s), f"{name}: {inspect.signature(a)} != {inspect.signature(s)}"
    assert not inspect.iscoroutinefunction(s), name
    if name in ITERATORS:
        assert not inspect.iscoroutinefunction(a), f"{name}: an async iterator, not a coroutine"
    else:
        assert inspect.iscoroutinefunction(a), f"AsyncProducer.{name} is not a coroutine function"


def test_core_operations_are_one_function_for_both():
    """The calls written once in producer.ProducerCore wrap the very same generator on both sides."""
    from xq.producer import ProducerCore

    ops = [n for n, f in vars(ProducerCore).items() if getattr(f, "xq_operation", False)]
    assert {"group", "group_status", "scheduled", "dead_letters", "dead_count", "replay", "purge_dead"} <= set(ops)
    for n in ops:
        assert getattr(xq.Producer, n).__wrapped__ is getattr(xq.AsyncProducer, n).__wrapped__, n
        assert getattr(xq.Producer, n).__doc__ == getattr(xq.AsyncProducer, n).__doc__, n


def test_bad_arguments_raise_the_same_errors_before_any_io():
    async def aio_errors():
        out = []
        async with xq.AsyncProducer("redis://127.0.0.1:1/0", retry_for=0) as ap:
            for call in CALLS:
                with pytest.raises(xq.ConfigError) as e:
                    await call(ap)
                out.append(str(e.value))
        return out

    sync = []
    p = xq.Producer("redis://127.0.0.1:1/0", retry_for=0)  # nothing answers there: checks come first
    for call in CALLS:
        with pytest.raises(xq.ConfigError) as e:
            call(p)
        sync.append(str(e.value))
    assert run(aio_errors()) == sync


CALLS = [
    lambda p: p.group([]),
    lambda p: p.group([("a", 1), ("b", 2, {"queue": "q2"})]),
    lambda p: p.group([("a", 1)], then=("cb", 1, {"delay": 3})),
    lambda p: p.dead_letters("default", limit=0),
    lambda p: p.scheduled("bad queue"),
    lambda p: p.dead_count("bad queue"),
    lambda p: p.replay("default", priority=12),
    lambda p: p.replay("default", to_queue="x y"),
    lambda p: p.replay("default", chunk=0),
    lambda p: p.purge_dead("bad queue"),
    lambda p: p.flush("default", "running"),
    lambda p: p.delete_queue("bad queue"),
]


# ---------------------------------------------------------------- the new async calls, against real Redis


def make_dead(redis_url, names_payloads, queue="default") -> list[str]:
    """Enqueue (asyncio) tasks that fail for good, run a supervisor until they are dead; their ids."""
    async def enqueue():
        async with xq.AsyncProducer(redis_url) as ap:
            return [await ap.enqueue(n, pl, queue=queue) for n, pl in names_payloads]
    ids = run(enqueue())
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app=APP, queues=queue) as w:
        wait_for(lambda: p.dead_count(queue) >= len(ids), timeout=30, what=f"{len(ids)} dead tasks")
    assert w.proc.returncode == 0, w.output()
    return ids


@pytest.mark.topologies("single", "cluster")
def test_group_and_group_status_after_completion(redis_url, r):
    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            g = await ap.group([("ok", 1), ("ok", 2), ("ok", 3)], then=("ok", "after"))
            assert isinstance(g, xq.Group) and len(g.ids) == 3 and g.callback and g.queue == "default"
            st = await ap.group_status(g)
            assert st["total"] == 3 and st["left"] == 3 and not st["finished"] and st["callback"] == g.callback
            assert await ap.group_status(g.id) == st  # by id, in the default queue
            with XQRun(redis_url, app=APP):
                assert await ap.result(g, timeout=30) == [1, 2, 3]
                assert (await ap.result(g.callback, timeout=30))["payload"] == "after"
            done = await ap.group_status(g)
            with pytest.raises(xq.UnknownTask, match="no group with id 'nope'"):
                await ap.group_status("nope")
            return g, done
    g, done = run(main())
    assert done["left"] == 0 and done["finished"]
    assert xq.Producer(redis_url).group_status(g) == done  # the same dict as the sync call


@pytest.mark.topologies("single", "cluster")
def test_dead_letters_scheduled_replay_and_purge(redis_url, r):
    a, b, c, d = make_dead(redis_url, [("needs_flag", x) for x in "abcd"])
    p = xq.Producer(redis_url)
    sched = p.enqueue("ok", 1, delay=600)

    async def look():
        async with xq.AsyncProducer(redis_url) as ap:
            return (await ap.dead_count(), await ap.dead_letters("default", limit=2),
                    await ap.dead_letters(offset=2), await ap.scheduled())
    count, page1, page2, scheduled = run(look())
    assert count == 4 and sorted(t["id"] for t in page1 + page2) == sorted([a, b, c, d])  # by time of death
    assert page1 == p.dead_letters("default", limit=2) and page2 == p.dead_letters(offset=2)
    assert page1[0]["status"] == "dead" and page1[0]["error"].startswith("RuntimeError: flag not set")
    assert [t["id"] for t in scheduled] == [sched] and scheduled == p.scheduled()

    r.set(FLAG, 1)  # from now on the handler succeeds

    async def replay_and_purge():
        async with xq.AsyncProducer(redis_url) as ap:
            seen = []
            assert await ap.replay("default", [a, "NOT-DEAD"], priority="high") == [a]
            assert await ap.replay("default", [a]) == []  # not dead any more
            assert await ap.purge_dead("default", [b, "NOT-DEAD"]) == [b]
            rest = await ap.replay(progress=lambda done, total: seen.append((done, total)))  # ids=None: all
            assert sorted(rest) == sorted([c, d]) and seen[-1] == (2, 2)
            assert await ap.dead_count() == 0 and await ap.replay() == [] and await ap.purge_dead() == 0
            with XQRun(redis_url, app=APP):
                got = [await ap.result(t, timeout=30) for t in (a, c, d)]
            return got, [await ap.status(t) for t in (a, c, d)]
    got, statuses = run(replay_and_purge())
    assert got == [{"ok": x, "queue": "default", "attempt": 2} for x in "acd"]
    for st in statuses:
        assert st["status"] == "done" and st["attempts"] == 2 and st["replays"] == 1
        assert [(h["attempt"], h["outcome"]) for h in st["history"]] == [(1, "failed"), (2, "done")]
    assert statuses[0]["priority"] == 2
    with pytest.raises(xq.UnknownTask):
        p.status(b)  # purged


@pytest.mark.topologies("single", "cluster")
def test_replay_to_another_queue_keeps_history_and_counts_replays(redis_url, r):
    """Defect 7, asyncio side, by ids and all at once; on a Cluster the two queues' slots may be on two
    masters (AsyncProducer's broker.at per queue)."""
    a, b = make_dead(redis_url, [("needs_flag", "a"), ("needs_flag", "b")])

    async def move():
        async with xq.AsyncProducer(redis_url) as ap:
            assert await ap.replay("default", [a], to_queue="other") == [a]
            assert await ap.replay("default", to_queue="other", chunk=1) == [b]
            assert await ap.dead_count("default") == 0
            return [await ap.status(t, queue="other") for t in (a, b)]
    for st in run(move()):
        assert st["status"] == "queued" and st["queue"] == "other"
        assert st["attempts"] == 1 and st["replays"] == 1
        assert [(h["attempt"], h["outcome"]) for h in st["history"]] == [(1, "failed")]
    # dead again in "other", then back into "default": the count goes on
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app=APP, queues="other"):
        wait_for(lambda: p.dead_count("other") == 2, timeout=30, what="both dead again in other")
    r.set(FLAG, 1)
    assert sorted(p.replay("other", to_queue="default")) == sorted([a, b])  # the sync side: the same rule
    with XQRun(redis_url, app=APP):
        assert p.result(a, timeout=30) == {"ok": "a", "queue": "default", "attempt": 3}
        assert p.result(b, timeout=30)["attempt"] == 3
    st = p.status(a)
    assert st["replays"] == 2 and [(h["attempt"], h["outcome"]) for h in st["history"]] == [
        (1, "failed"), (2, "failed"), (3, "done")]
    assert p.dead_count("other") == 0


@pytest.mark.topologies("single", "cluster")
def test_flush_and_delete_queue(redis_url, r):
    p = xq.Producer(redis_url)
    p.enqueue_many("ok", list(range(30)), queue="q1")
    p.enqueue_many("ok", list(range(5)), queue="q1", delay=600)
    p.enqueue_many("ok", [1, 2, 3], queue="q2")

    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            seen = []
            n = await ap.flush("q1", "queued", chunk=7, progress=lambda done, total: seen.append((done, total)))
            assert n == 30 and seen[-1] == (30, 30)
            assert await ap.flush("q1", "scheduled") == 5
            await ap.enqueue("ok", 1, queue="q1")
            async with AsyncInspector(redis_url) as ai:
                assert await ai.flush("q2", "queued") == 3
            return await ap.delete_queue("q1")
    out = run(main())
    assert out["queue"] == "q1" and out["tasks"] == 1 and out["keys"] >= 1 and out["workers"] == []
    assert "q1" not in [q["queue"] for q in p.queues()]


def test_async_inspector_has_every_inspector_call():
    """The same rule one level down: xq.inspect.AsyncInspector mirrors Inspector (flush and delete_queue
    are one operation each, op_flush / op_delete_queue, run by both)."""
    from xq.inspect import AsyncInspector, Inspector

    assert public(AsyncInspector) == public(Inspector)
    for name in sorted(public(Inspector)):
        s, a = getattr(Inspector, name), getattr(AsyncInspector, name)
        assert params(a) == params(s), f"{name}: {inspect.signature(a)} != {inspect.signature(s)}"
        assert inspect.iscoroutinefunction(a), name


def test_async_events_is_an_async_iterator_and_context_manager():
    async def main():
        ap = xq.AsyncProducer("redis://127.0.0.1:1/0", retry_for=0)  # nothing is sent before iterating
        stream = ap.events(queues="default", timeout=1)
        ok = hasattr(stream, "__aiter__") and hasattr(stream, "__anext__") and hasattr(stream, "__aenter__")
        await stream.aclose()
        await ap.close()
        return ok
    assert run(main())
