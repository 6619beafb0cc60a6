"""End to end: how the supervisor spreads tasks over its children's rings (the real `xq run`)."""

from __future__ import annotations

import time

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
