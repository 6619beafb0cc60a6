"""End to end: how the supervisor spreads tasks over its children's rings (the real `xq run`)."""

from __future__ import annotations

import time

import psutil
import pytest

import xq
from xqrun import XQRun, wait_for

IMPLS = [pytest.param(False, id="cython"), pytest.param(True, id="pure")]


@pytest.mark.parametrize("pure", IMPLS)
def test_quick_task_never_queued_behind_a_long_running_one(redis_url, r, pure):
    """Depth comes from tasks that finished, so it knew nothing of a long task still running: a child busy
    with one used to get its even share of new tasks, which then waited for the long one to end (a task
    left "running" for as long as the long task ran).  Now the quick task waits in the supervisor for the
    first child to free, here the one running a 0.5 s nap."""
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app="apps.gates:app", procs=2, pure=pure) as w:
        # quick tasks first: their run times set the ring depth well above 1
        for i in range(3):
            p.result(p.enqueue("quick", i), timeout=20)
        long = p.enqueue("gate", {"s": 30})
        wait_for(lambda: r.lrange("test:started", 0, -1) == [long.encode()], what="the long task to start")
        nap = p.enqueue("nap", {"s": 0.5})
        wait_for(lambda: r.llen("test:started") == 2, what="the nap to start (in the other child)")
        time.sleep(0.1)  # both children are now past a ring's worth of work (30 ms) into their tasks
        quick = p.enqueue("quick", 3)
        try:
            try:
                ran_in = p.result(quick, timeout=10)
            except xq.ResultTimeout:
                pytest.fail(f"the quick task is {p.status(quick)['status']} after 10 s, queued behind "
                            f"the long one; log:\n{w.output()[-3000:]}")
            assert p.status(long)["status"] == "running"
            assert ran_in == p.result(nap, timeout=10)  # the nap's child took it once free
        finally:
            r.rpush("test:gate", 1)
        assert p.result(long, timeout=20) != ran_in


def test_a_full_ring_does_not_make_the_supervisor_poll_every_millisecond(redis_url, r):
    """A ring full of 200 KB payloads (a 2 MiB ring holds 10, the depth wanted 20 at 5 ms a task): the child
    frees space without telling the supervisor, which used to look again every millisecond, ~1,000 wake-ups
    a second while it had nothing to do.  It now looks again once the child has worked through about half of
    what its ring holds (at most RESULT_DELAY, 10 ms, when the results are due anyway)."""
    p = xq.Producer(redis_url)
    n = 500
    p.enqueue_many("sleep", [{"s": 0.005, "pad": "x" * 200_000}] * n)
    with XQRun(redis_url, procs=1) as w:
        sup = psutil.Process(w.pid)
        wait_for(lambda: done(r) >= 50, 60, what="the first 50 tasks")
        c0, d0 = sup.num_ctx_switches().voluntary, done(r)
        time.sleep(1.0)
        c1, d1 = sup.num_ctx_switches().voluntary, done(r)
        assert d1 - d0 > 50 and d1 < n, "the window must fall inside the drain"
        # per task done: up to 5 before (a wake-up each ms, a task each 5 ms); a results write every 10 ms
        # and a claim every ~5 tasks (two round trips: the payloads are fetched after it) make 1.2 - 1.3 here
        assert (c1 - c0) / (d1 - d0) < 2.0, f"{c1 - c0} wake-ups for {d1 - d0} tasks"
        wait_for(lambda: done(r) == n, 120, what="the drain to end")


def done(r) -> int:
    from xq.keys import queue_keys

    return r.zcard(queue_keys("default").finished("done"))


def test_a_slow_link_to_redis_does_not_make_the_supervisor_spin(fault_proxy):
    """100 ms each way to Redis: both round trip slots are taken while results wait.  The results' due
    time, passed, kept the poll() timeout at zero until a reply came: a busy loop (poll() returning at
    once, ~3,200 times a second, most of a core) for a few dozen tasks a second.  A reply's arrival wakes
    the supervisor; until then it sleeps."""
    import redis as redis_

    r = redis_.Redis.from_url(fault_proxy.redis.url)
    p = xq.Producer(fault_proxy.redis.url)
    n = 400
    p.enqueue_many("sleep", [{"s": 0.01}] * n)
    with XQRun(fault_proxy.url(), procs=2, env={"XQ_TEST_REDIS": fault_proxy.redis.url}) as w:
        wait_for(lambda: done(r) >= 20, 60, what="the first tasks: " + w.output())
        fault_proxy.delay(0.1)
        time.sleep(0.5)
        sup = psutil.Process(w.pid)
        t0, c0, d0 = time.monotonic(), sum(sup.cpu_times()[:2]), done(r)
        time.sleep(2.0)
        t1, c1, d1 = time.monotonic(), sum(sup.cpu_times()[:2]), done(r)
        fault_proxy.delay(0)
        assert d1 - d0 > 10 and d1 < n, "the window must fall inside the drain"
        # a few ms of CPU a round trip; the busy loop took 0.4 - 0.5 s of each second
        assert (c1 - c0) / (t1 - t0) < 0.2, f"{c1 - c0:.2f} s of CPU in {t1 - t0:.1f} s for {d1 - d0} tasks"
        wait_for(lambda: done(r) == n, 120, what="the drain to end")
    p.close()
    r.close()
