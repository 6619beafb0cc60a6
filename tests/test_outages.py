"""A running supervisor whose Redis connections are cut: it neither exits nor drops what it holds."""

from __future__ import annotations

import time

import pytest
import redis

import xq
from helpers import keep_every_record
from xq.keys import queue_keys
from xqrun import XQRun, wait_for
from test_engine import IMPLS


@pytest.mark.parametrize("pure", IMPLS)
def test_supervisor_rides_out_random_cuts_and_keeps_its_results(fault_proxy, pure):
    # Cuts land anywhere: mid CLAIM, mid COMPLETE, in the idle wait, while reading the control channel.
    # Every failure reaches the one outage handler; results held meanwhile are sent after the reconnect.
    r = redis.Redis.from_url(fault_proxy.redis.url)
    p = xq.Producer(fault_proxy.redis.url)  # the producer talks to Redis directly: only the supervisor is cut
    keep_every_record(fault_proxy.redis.url)  # every task's record is checked at the end
    ids = []
    try:
        # a claim whose reply is cut leases tasks nobody knows of: a short lease brings them back soon
        with XQRun(fault_proxy.url(), "--lease", "3", procs=2, pure=pure) as w:
            assert p.result(p.enqueue("echo", 0), timeout=20) == 0
            fault_proxy.cut_randomly(0.3, 4.0)
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                ids += p.enqueue_many("echo", list(range(200)))
                time.sleep(0.05)
            wait_for(lambda: not fault_proxy.cutting, 10, what="the cuts to end")
            qk = queue_keys("default")
            wait_for(lambda: all(s == b"done" for s in (x[0] for x in p.broker.records(qk, ids, "state"))), 60,
                     what="every task done: " + w.output())
            assert w.proc.poll() is None, w.output()  # the supervisor kept running
            out = w.output()
            assert fault_proxy.cuts >= 3
            downs = out.count("unreachable")
            assert 1 <= downs <= fault_proxy.cuts, out  # once per outage, not once per retry
            assert "reachable again" in out and "Traceback" not in out, out
            wait_for(lambda: r.zcard(qk.leases) == 0, 10, what="no lease left")
    finally:
        p.close()
        r.close()


@pytest.mark.parametrize("pure", IMPLS)
def test_tasks_of_a_claim_whose_reply_was_lost_come_back_at_once(fault_proxy, pure):
    # The idle supervisor's CLAIM waits in Redis behind its BZPOPMIN.  With replies held by the proxy, an
    # enqueue wakes it: Redis leases the tasks to the supervisor, but the reply never arrives, and the
    # connection is then cut.  After the reconnect the supervisor returns them (RELEASE 'orphans') instead
    # of letting them wait out their 30 s lease, and each runs once.
    r = redis.Redis.from_url(fault_proxy.redis.url)
    p = xq.Producer(fault_proxy.redis.url)
    qk = queue_keys("default")
    try:
        with XQRun(fault_proxy.url(), "--lease", "30", procs=1, pure=pure) as w:
            assert p.result(p.enqueue("echo", 0), timeout=20) == 0
            for _attempt in range(5):
                time.sleep(0.3)  # idle again: its BZPOPMIN and CLAIM are in Redis
                fault_proxy.stall("down")
                ids = p.enqueue_many("count", list(range(5)))
                try:
                    wait_for(lambda: r.zcard(qk.leases) == 5, 3, what="Redis to lease the tasks to the stalled supervisor")
                    break
                except AssertionError:
                    # its 1 s wait had just timed out, and the reply that would have made it wait again is
                    # held: nothing claimed.  Let it through, let it finish these, and try again.
                    fault_proxy.resume()
                    wait_for(lambda: all(x[0] == b"done" for x in p.broker.records(qk, ids, "state")), 15,
                             what="the tasks of a missed attempt to be done")
            else:
                raise AssertionError("the stalled supervisor's wait never claimed the tasks in 5 attempts")
            fault_proxy.cut()
            fault_proxy.resume()
            wait_for(lambda: all(x[0] == b"done" for x in p.broker.records(qk, ids, "state")), 15,
                     what="every task done well within its 30 s lease: " + w.output())
            assert "returned 5 task(s) a claim took while its reply was lost" in w.output(), w.output()
            assert w.proc.poll() is None
        assert all(int(n) == 1 for n in r.hvals("test:execs")), r.hgetall("test:execs")  # each ran once
    finally:
        p.close()
        r.close()


def test_an_outage_longer_than_the_lease_keeps_the_results_held_meanwhile(fault_proxy):
    # The task ends while Redis is away, for longer than its lease: the supervisor holds the result.  Back
    # on Redis it renews its leases before it recovers expired ones, so its own recovery does not put the
    # task back (it used to: the kept result was refused, logged only at debug, and the task ran again).
    r = redis.Redis.from_url(fault_proxy.redis.url)
    p = xq.Producer(fault_proxy.redis.url)
    try:
        with XQRun(fault_proxy.url(), "--lease", "2", procs=1, env={"XQ_TEST_REDIS": fault_proxy.redis.url}) as w:
            tid = p.enqueue("sleep", {"s": 1.5})
            wait_for(lambda: r.lrange("test:started", 0, -1) == [tid.encode()], 20, what="the task: " + w.output())
            fault_proxy.refuse(True)
            time.sleep(4.0)  # the task ends meanwhile; its lease (2 s) runs out
            fault_proxy.refuse(False)
            wait_for(lambda: p.status(tid)["status"] == "done", 30, what="the task done: " + w.output())
            time.sleep(1.5)  # a recovery would have run by now
            st = p.status(tid)
            out = w.output()
            assert st["status"] == "done" and st["attempts"] == 1, (st, out)
            assert r.lrange("test:started", 0, -1) == [tid.encode()], out  # it ran once
            assert "recovered" not in out and "refused" not in out and "Traceback" not in out, out
    finally:
        p.close()
        r.close()


def test_async_result_waits_through_an_outage_whose_first_reconnect_fails(fault_proxy):
    # The producer's Pub/Sub connection is refused for 2 s: its first subscribe again fails.  The waiter
    # must still get its result once the link is back, and later waits on the same producer too (the
    # reader used to idle on a connection subscribed to nothing, and every later result() timed out).
    import asyncio

    p = xq.Producer(fault_proxy.redis.url)
    with XQRun(fault_proxy.redis.url, procs=1, env={"XQ_TEST_REDIS": fault_proxy.redis.url}) as w:
        async def go():
            ap = xq.AsyncProducer(fault_proxy.url(), retry_for=30)
            try:
                assert await ap.result(await ap.enqueue("echo", 1), timeout=20) == 1  # subscribed
                tid = p.enqueue("sleep", {"s": 2.5})
                waiter = asyncio.ensure_future(ap.result(tid, timeout=30))
                await asyncio.sleep(0.3)
                fault_proxy.refuse(True)
                await asyncio.sleep(2.0)
                fault_proxy.refuse(False)
                assert await waiter == {"s": 2.5}
                t0 = time.monotonic()
                assert await ap.result(p.enqueue("echo", 2), timeout=20) == 2
                return time.monotonic() - t0
            finally:
                await ap.close()
        took = asyncio.run(go())
        assert took < 5, (took, w.output())
    p.close()


def test_result_through_an_outage_raises_xq_errors_only(fault_proxy):
    # The record's read in result() went around the broker's guard: a cut surfaced as redis-py's own
    # ConnectionError (with its traceback) instead of xq.ConnectionLost.
    p = xq.Producer(fault_proxy.url(), retry_for=1)
    try:
        tid = p.enqueue("echo", 1)  # no supervisor: it stays queued
        with pytest.raises(xq.ResultTimeout):
            p.result(tid, timeout=0.5)  # subscribed now
        fault_proxy.refuse(True)
        with pytest.raises((xq.ConnectionLost, xq.ResultTimeout)):
            p.result(tid, timeout=3)
    finally:
        fault_proxy.refuse(False)
        p.close()


def test_async_enqueue_cut_mid_write_never_calls_a_delivered_chunk_not_sent(fault_proxy):
    # The uplink stalls in the middle of a large enqueue_many's write: the first chunks reached Redis and
    # ran, the write then timed out.  Those chunks used to be reported "not sent" (neither .stored nor
    # .unknown), so a caller re-enqueueing the "not sent" tasks under new ids ran them twice.
    import asyncio

    real = redis.Redis.from_url(fault_proxy.redis.url)
    qk = queue_keys("default")
    ids = xq.new_ids(300)

    async def go():
        ap = xq.AsyncProducer(fault_proxy.url(), retry_for=1, socket_timeout=1)
        fault_proxy.delay(0.005)  # ~10 MB/s through the proxy: the stall comes while the write is under way
        try:
            task = asyncio.ensure_future(ap.enqueue_many("echo", [b"x" * 100_000] * len(ids), ids=ids))
            for _ in range(2000):  # until the first records are in Redis (bounded: 2 s)
                if real.exists(qk.task(ids[0])):
                    break
                await asyncio.sleep(0.001)
            fault_proxy.stall("up")
            with pytest.raises(xq.ConnectionLost) as ei:
                await asyncio.wait_for(task, 60)
            return ei.value
        finally:
            fault_proxy.delay(0)
            fault_proxy.resume()
            await ap.close()
    try:
        err = asyncio.run(go())
        there = {i for i in ids if real.exists(qk.task(i))}
        assert there, "no chunk reached Redis before the stall: the test did not test anything"
        assert there <= set(err.stored) | set(err.unknown), (len(there), len(err.stored), len(err.unknown))
    finally:
        real.close()


def test_a_stalled_redis_ends_a_call_within_its_retry_window_and_one_socket_timeout(fault_proxy):
    # The window used to start at the first failure, which a stall brings only after a socket timeout:
    # a call then took two socket timeouts or more, whatever retry_for said (60 s for retry_for=5).
    p = xq.Producer(fault_proxy.url(), retry_for=2, socket_timeout=3)
    try:
        p.enqueue("echo", 0)  # connected
        fault_proxy.stall()
        t0 = time.monotonic()
        with pytest.raises(xq.ConnectionLost):
            p.enqueue("echo", 1)
        took = time.monotonic() - t0
        assert took < 3 + 2, took  # one socket timeout, the window (2 s) already used up by then
    finally:
        fault_proxy.resume()
        p.close()


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
def test_a_large_enqueue_gets_through_a_link_cut_more_often_than_it_takes(fault_proxy, flavour):
    # 30 MB of payloads take ~2.5 s through the slowed proxy, which is cut every second: each round
    # sent every chunk again from the first, and the call never finished.  Chunks a cut round stored are
    # now found (EXISTS of their ids) and not sent again.
    import asyncio
    import threading

    real = redis.Redis.from_url(fault_proxy.redis.url)
    qk = queue_keys("default")
    ids = xq.new_ids(300)
    payloads = [b"x" * 100_000] * len(ids)
    stop = threading.Event()

    def cutter():
        for _ in range(60):  # bounded: at most a minute of cuts
            if stop.wait(1.0):
                return
            fault_proxy.cut()
    fault_proxy.delay(0.025)  # 256 KiB a chunk: ~10 MB/s
    t = threading.Thread(target=cutter, daemon=True)
    t.start()
    try:
        if flavour == "sync":
            p = xq.Producer(fault_proxy.url(), retry_for=40)
            try:
                got = p.enqueue_many("echo", payloads, ids=ids)
            finally:
                p.close()
        else:
            async def go():
                ap = xq.AsyncProducer(fault_proxy.url(), retry_for=40)
                try:
                    return await ap.enqueue_many("echo", payloads, ids=ids)
                finally:
                    await ap.close()
            got = asyncio.run(go())
    finally:
        stop.set()
        t.join(5)
        fault_proxy.delay(0)
    assert got == ids
    assert all(real.exists(qk.task(i)) for i in ids)
    assert sum(real.llen(k) for k in qk.ready) == len(ids)  # each stored once
    real.close()
