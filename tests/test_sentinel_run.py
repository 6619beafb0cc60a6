"""`xq run` on a Sentinel set (redis+sentinel://): supervisors drain, then follow a failover (the master
SIGKILLed mid-drain) to the promoted replica and finish every task there.  The handlers count their runs in
a plain Redis of their own (the session server), which no failover touches."""

from __future__ import annotations

import time

import redis

import xq
from xq.keys import queue_keys
from xqrun import XQRun, wait_for

TASKS = 300


def _states(node: redis.Redis, qk, ids) -> dict[bytes, int]:
    pipe = node.pipeline(transaction=False)
    for i in ids:
        pipe.hget(qk.task(i), "state")
    out: dict[bytes, int] = {}
    for s in pipe.execute():
        out[s] = out.get(s, 0) + 1
    return out


def test_xq_run_drains_on_sentinel_and_follows_a_failover(sentinel, redis_url):
    counts = redis.Redis.from_url(redis_url)
    qk = queue_keys("default")
    env = {"XQ_TEST_REDIS": redis_url}
    with xq.Producer(sentinel.url, retry_for=30) as p:
        # a drain on the Sentinel set, as on one Redis
        with XQRun(sentinel.url, "--lease", "3", app="apps.partition:app", procs=2, burst=True, env=env) as w:
            first = p.enqueue_many("work", [{"i": i, "ms": 1} for i in range(50)])
            assert w.wait(60) == 0, w.output()
        master = redis.Redis(port=sentinel.master_port())
        assert _states(master, qk, first) == {b"done": 50}
        master.close()

        # the master SIGKILLed mid-drain: both supervisors follow the sentinels to the promoted replica
        ids = p.enqueue_many("work", [{"i": i, "ms": 20} for i in range(TASKS)])
        sentinel.wait_synced()  # every task on the replicas: what this test counts is the supervisors' part
        old = sentinel.master_port()
        runs = [XQRun(sentinel.url, "--lease", "3", app="apps.partition:app", procs=2, env=env) for _ in range(2)]
        try:
            wait_for(lambda: counts.hlen("test:runs") >= TASKS // 4, 30, what="a quarter of the tasks run")
            killed = time.monotonic()
            new = sentinel.kill_master()
            promoted = time.monotonic()
            node = redis.Redis(port=new)
            done_then = node.zcard(qk.finished("done"))
            wait_for(lambda: node.zcard(qk.finished("done")) > done_then, 30, 0.005,
                     what="a task completed on the new master")
            resumed = time.monotonic()
            print(f"\nfailover: promoted {promoted - killed:.2f} s after the kill, first completion on the new "
                  f"master {resumed - killed:.2f} s after it ({resumed - promoted:.2f} s after the promotion)")
            wait_for(lambda: _states(node, qk, ids) == {b"done": TASKS}, 90, 0.2,
                     what="every task done on the new master: " + runs[0].output())
            assert all(counts.hexists("test:runs", i) for i in ids)
            for w in runs:
                assert w.proc.poll() is None, w.output()
                assert "Traceback" not in w.output(), w.output()
            node.close()
        finally:
            for w in runs:
                w.close()
            sentinel.restart(old)
            sentinel.wait_healthy(60)
    counts.close()

