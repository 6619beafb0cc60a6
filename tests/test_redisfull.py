"""Redis at maxmemory under noeviction: producers get xq.RedisFull naming what was stored, supervisors keep
their results until Redis takes writes again.  Real redis-servers, real `xq run` (tests/apps/naps.py)."""

from __future__ import annotations

import os
import shutil

import pytest
import redis

import xq
from xq.keys import queue_keys
from xqrun import XQRun, wait_for

QK = queue_keys("default")


def evalsha_calls(c: redis.Redis) -> tuple[int, int]:
    """(calls, rejected calls) of EVALSHA since the last CONFIG RESETSTAT."""
    st = c.info("commandstats").get("cmdstat_evalsha", {})
    return int(st.get("calls", 0)), int(st.get("rejected_calls", 0))


@pytest.fixture
def c(fresh_redis):
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        yield client
    finally:
        client.close()


def test_enqueue_into_a_full_redis_raises_redisfull_and_stores_nothing(fresh_redis, c):
    with xq.Producer(fresh_redis.url) as p:
        p.enqueue("nap", {"s": 0, "v": 0})  # scripts loaded, queue registered
        c.config_set("maxmemory", 1)
        c.config_resetstat()
        with pytest.raises(xq.RedisFull) as ei:
            p.enqueue("nap", {"s": 0, "v": 1}, task_id="full-1")
        e = ei.value
        assert "Redis is full" in str(e) and "nothing was stored" in str(e) and "maxmemory" in str(e), str(e)
        assert e.stored == [] and e.not_stored == ["full-1"]
        assert isinstance(e, xq.XQError) and not isinstance(e, xq.ConnectionLost)
        assert c.exists(QK.task("full-1")) == 0
        assert sum(c.llen(k) for k in QK.ready) == 1  # only the first task
        assert evalsha_calls(c) == (0, 1)  # refused once, up front (#!lua), and not retried
        c.config_set("maxmemory", 0)
        assert p.enqueue("nap", {"s": 0, "v": 1}, task_id="full-1") == "full-1"


def test_enqueue_many_says_which_tasks_were_stored(fresh_redis, c):
    with xq.Producer(fresh_redis.url, chunk=1) as p:
        p.enqueue("nap", {"s": 0, "v": 0})
        c.config_set("maxmemory", c.info("memory")["used_memory"] + 5_000_000)
        ids = xq.new_ids(10)
        with pytest.raises(xq.RedisFull) as ei:
            p.enqueue_many("nap", [{"s": 0, "v": "a" * 1_000_000}] * 10, ids=ids)
        e = ei.value
        assert e.stored and e.not_stored, (len(e.stored), len(e.not_stored))
        assert e.stored + e.not_stored == ids  # in order: the chunks sent before Redis filled up
        assert f"{len(e.stored)} were stored" in str(e) and f"{len(e.not_stored)} were not" in str(e), str(e)
        assert all(c.exists(QK.task(i)) for i in e.stored)
        assert not any(c.exists(QK.task(i)) for i in e.not_stored)
        c.config_set("maxmemory", 0)
        assert p.enqueue_many("nap", [{"s": 0, "v": 1}] * 10, ids=ids) == ids  # stores only the rest
        assert sum(c.llen(k) for k in QK.ready) == 11


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_large_payloads_go_in_several_commands_and_full_says_which(fresh_redis, c, flavour):
    """Raw payloads of 1 MB split an enqueue_many into commands of about a MiB (producer.CHUNK_BYTES) with
    the default chunk of 1000 tasks, and RedisFull still names the ids each command stored or not."""
    import asyncio

    blobs = [os.urandom(1_000_000) for _ in range(10)]
    ids = xq.new_ids(10)

    def enqueue(**kw):
        if flavour == "sync":
            with xq.Producer(fresh_redis.url) as p:
                return p.enqueue_many("nap", blobs, ids=ids, **kw)

        async def go():
            async with xq.AsyncProducer(fresh_redis.url) as p:
                return await p.enqueue_many("nap", blobs, ids=ids, **kw)
        return asyncio.run(go())

    with xq.Producer(fresh_redis.url) as p:
        p.enqueue("nap", {"s": 0, "v": 0})
    c.config_set("maxmemory", c.info("memory")["used_memory"] + 5_500_000)
    c.config_resetstat()
    with pytest.raises(xq.RedisFull) as ei:
        enqueue()
    e = ei.value
    assert e.stored and e.not_stored, (len(e.stored), len(e.not_stored))
    assert e.stored + e.not_stored == ids
    assert all(c.exists(QK.task(i)) for i in e.stored)
    assert not any(c.exists(QK.task(i)) for i in e.not_stored)
    c.config_set("maxmemory", 0)
    c.config_resetstat()
    assert enqueue() == ids
    assert evalsha_calls(c)[0] == 5  # two payloads a command: the second takes it past the MiB
    assert [c.hget(QK.task(i), "payload") for i in ids] == blobs
    assert sum(c.llen(k) for k in QK.ready) == 11


def test_supervisor_keeps_results_while_redis_is_full(fresh_redis, c, tmp_path):
    naps = tmp_path / "naps"
    naps.write_text("")
    with XQRun(fresh_redis.url, app="apps.naps:app", procs=2, env={"XQ_TEST_NAPS": str(naps)}) as w:
        with xq.Producer(fresh_redis.url) as p:
            ids = p.enqueue_many("nap", [{"s": 1.0, "v": i} for i in range(6)])
            wait_for(lambda: c.zcard(QK.leases) > 0, 20, what="a task to be claimed")
            c.config_set("maxmemory", 1)  # Redis refuses writes from now on (before the first 1 s task ends)
            c.config_resetstat()
            wait_for(lambda: "Redis is full" in w.output(), 20, what="the supervisor to log that Redis is full")
            wait_for(lambda: len(naps.read_text().split()) >= 2, 20, what="tasks to run while Redis is full")
            wait_for(lambda: evalsha_calls(c)[1] >= 4, 30, what="the supervisor to retry its writes")
            held = naps.read_text().split()
            assert [c.hget(QK.task(i), "state") for i in held] == [b"running"] * len(held)  # results unwritten
            assert c.zcard(QK.dead) == 0
            c.config_set("maxmemory", 0)
            assert [p.result(i, timeout=30) for i in ids] == list(range(6))
        wait_for(lambda: "takes writes again" in w.output(), 10, what="the supervisor to log the recovery")
        out = w.output()
    ran = naps.read_text().split()
    assert sorted(ran) == sorted(ids), out  # each ran once: no result lost, no task run again
    assert out.count("Redis is full") == 1, out
    assert out.count("takes writes again") == 1, out
    assert "writing results failed" not in out and "claim failed" not in out, out
    assert c.zcard(QK.leases) == 0 and c.zcard(QK.dead) == 0


def cannot_persist(c: redis.Redis, data_dir) -> None:
    """Make Redis refuse writes with MISCONF, as a full or read-only disk does: an RDB save point, the data
    directory gone from under it, a BGSAVE that fails (stop-writes-on-bgsave-error is yes by default)."""
    c.config_set("save", "3600 1")
    shutil.rmtree(data_dir)
    c.bgsave()
    wait_for(lambda: c.info("persistence")["rdb_last_bgsave_status"] == "err", 20, what="the save to fail")


def test_a_redis_that_cannot_persist_is_waited_out_and_producers_hear_why(fresh_redis, c, tmp_path):
    """MISCONF used to reach the supervisor as a bug: it logged 'claim failed' and 'writing results
    failed' thousands of times a second and then exited on a traceback; producers got a bare
    ResponseError."""
    naps = tmp_path / "naps"
    naps.write_text("")
    try:
        with XQRun(fresh_redis.url, app="apps.naps:app", procs=2, env={"XQ_TEST_NAPS": str(naps)}) as w:
            with xq.Producer(fresh_redis.url) as p:
                ids = p.enqueue_many("nap", [{"s": 1.0, "v": i} for i in range(6)])
                wait_for(lambda: c.zcard(QK.leases) > 0, 20, what="a task to be claimed")
                cannot_persist(c, tmp_path / "redis")
                with pytest.raises(xq.RedisFull) as ei:
                    p.enqueue("nap", {"s": 0, "v": 9}, task_id="misconf-1")
                assert ei.value.cause == "misconf" and ei.value.not_stored == ["misconf-1"]
                assert "cannot persist to disk" in str(ei.value) and "nothing was stored" in str(ei.value)
                wait_for(lambda: "cannot persist to disk" in w.output(), 20, what="the supervisor to say why")
                wait_for(lambda: len(naps.read_text().split()) >= 2, 20, what="tasks to run meanwhile")
                c.config_set("stop-writes-on-bgsave-error", "no")  # what the message suggests
                assert [p.result(i, timeout=30) for i in ids] == list(range(6))
            wait_for(lambda: "takes writes again" in w.output(), 10, what="the supervisor to log the recovery")
            assert w.proc.poll() is None, w.output()
            out = w.output()
    finally:
        c.config_set("save", "")  # so the fixture's shutdown does not try to save into the missing directory
    assert sorted(naps.read_text().split()) == sorted(ids), out  # each ran once
    assert out.count("cannot persist to disk") == 1, out
    assert "claim failed" not in out and "writing results failed" not in out and "Traceback" not in out, out


def test_an_oom_reply_is_classified_full_and_translated_to_redisfull(fresh_redis, c):
    from xq import conn

    c.config_set("maxmemory", 1)
    with pytest.raises(redis.ResponseError) as ei:
        c.set("k", "v")
    assert conn.classify(ei.value) == "full"
    url = fresh_redis.url.replace("redis://", "redis://:secret@")
    t = conn.translate(ei.value, url)
    assert isinstance(t, xq.RedisFull) and "is full" in str(t) and "secret" not in str(t), str(t)
    assert isinstance(t, conn.OUTAGE)  # a supervisor waits it out


def test_async_enqueue_and_other_producer_writes_raise_redisfull_at_once(fresh_redis, c):
    import asyncio

    async def go():
        async with xq.AsyncProducer(fresh_redis.url) as ap:
            await ap.enqueue("nap", {"s": 0, "v": 0}, task_id="a-0")
            c.config_set("maxmemory", 1)
            with pytest.raises(xq.RedisFull) as ei:
                await ap.enqueue("nap", {"s": 0, "v": 1}, task_id="a-1")
            return ei.value

    e = asyncio.run(go())
    assert e.not_stored == ["a-1"] and e.stored == [], (e.stored, e.not_stored)
    with xq.Producer(fresh_redis.url, retry_for=30) as p:
        c.config_resetstat()
        with pytest.raises(xq.RedisFull):
            p.cancel("a-0")  # not retried for retry_for seconds: one refused call
        assert evalsha_calls(c) == (0, 1)
    c.config_set("maxmemory", 0)
    assert c.hget(QK.task("a-0"), "state") == b"queued" and not c.exists(QK.task("a-1"))


def test_leases_of_kept_results_are_renewed_while_full(fresh_redis, c, tmp_path):
    """Redis full for longer than the lease: the supervisor keeps renewing the tasks whose results it holds
    (RENEW is allow-oom), so when Redis takes writes again their results are written, not refused as late,
    and no task runs twice."""
    naps = tmp_path / "naps"
    naps.write_text("")
    with XQRun(fresh_redis.url, "--lease", "3", app="apps.naps:app", procs=2,
               env={"XQ_TEST_NAPS": str(naps)}) as w:
        with xq.Producer(fresh_redis.url) as p:
            ids = p.enqueue_many("nap", [{"s": 0.5, "v": i} for i in range(2)])
            wait_for(lambda: c.zcard(QK.leases) == 2, 20, what="both tasks to be claimed")
            c.config_set("maxmemory", 1)
            try:
                wait_for(lambda: len(naps.read_text().split()) == 2, 20, what="both tasks to run while Redis is full")
            except AssertionError as e:
                raise AssertionError(f"{e}; ran {naps.read_text().split()}; supervisor said:\n{w.output()}") from None
            wait_for(lambda: "Redis is full" in w.output(), 20, what="the supervisor to log that Redis is full")
            first = {i: c.zscore(QK.leases, i) for i in ids}
            t0 = c.time()
            start_ms = t0[0] * 1000 + t0[1] // 1000

            def renewed_past_the_first_lease():
                t = c.time()
                now_ms = t[0] * 1000 + t[1] // 1000
                return now_ms > max(first.values()) + 1000 and all(c.zscore(QK.leases, i) > now_ms for i in ids)

            wait_for(renewed_past_the_first_lease, 40, what="the leases to be renewed past their first deadline "
                     f"(first {first}, start {start_ms})")
            assert [c.hget(QK.task(i), "state") for i in ids] == [b"running"] * 2
            c.config_set("maxmemory", 0)
            assert [p.result(i, timeout=30) for i in ids] == [0, 1]
        out = w.output()
    assert sorted(naps.read_text().split()) == sorted(ids), out  # each ran once
    assert "lease was lost" not in out and "refused" not in out.replace("writes are refused", ""), out


def test_a_refused_side_write_keeps_the_replies_the_main_connection_awaits(fresh_redis, c):
    """A side write refused as full (the registry heartbeat, which skips its beat and goes on) used to reset
    the broker's dedicated connections, throwing away a claim reply the supervisor still awaited: the
    claimed tasks stayed leased and never ran (test_leases_of_kept_results_are_renewed_while_full, 1 run
    in 10).  A refused write leaves every connection in step: nothing is dropped."""
    from xq.broker import Broker

    b = Broker(fresh_redis.url)
    try:
        b.send_packed(b"*1\r\n$4\r\nPING\r\n")  # awaited on the main connection, as a claim's reply is
        c.config_set("maxmemory", 1)
        with pytest.raises(xq.RedisFull):
            b.heartbeat("w1", b"{}", 1000, 1, 0)
        assert b.read_reply() == b"PONG"
    finally:
        c.config_set("maxmemory", 0)
        b.close()


def test_every_script_declares_itself_to_redis():
    """A script without the `#!lua` shebang may fail half-way on a full Redis; one that writes nothing says so
    (`no-writes`), so listings still work on a full Redis and on replicas."""
    from xq import scripts
    for name, src in scripts.ALL.items():
        assert src.startswith("#!lua"), f"script {name} lacks the #!lua shebang"
    for src in (scripts.PEEK, scripts.RECORD):
        assert src.startswith("#!lua flags=no-writes\n")
