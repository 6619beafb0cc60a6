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
