"""A running supervisor whose Redis connections are cut: it neither exits nor drops what it holds."""

from __future__ import annotations

import time

import pytest
import redis

import xq
from xq.keys import queue_keys
from xqrun import XQRun, wait_for
from test_engine import IMPLS


@pytest.mark.parametrize("pure", IMPLS)
def test_supervisor_rides_out_random_cuts_and_keeps_its_results(fault_proxy, pure):
    # Cuts land anywhere: mid CLAIM, mid COMPLETE, in the idle wait, while reading the control channel.
    # Every failure reaches the one outage handler; results held meanwhile are sent after the reconnect.
    r = redis.Redis.from_url(fault_proxy.redis.url)
    p = xq.Producer(fault_proxy.redis.url)  # the producer talks to Redis directly: only the supervisor is cut
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
