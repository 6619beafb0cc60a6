"""Pausing and resuming a queue (issue 11), end to end: real `xq run` supervisors against a real redis-server.

A paused queue has the key xq:{Q}:paused; CLAIM reads it and skips the queue, so every supervisor honours a
pause at its next claim.  Handlers are in tests/apps/basic.py ("count" records each run in test:execs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pytest

import xq
from xq.inspect import Inspector
from xq.keys import queue_keys
from helpers import evalsha_calls
from xqrun import TESTS, XQRun, wait_for

pytestmark = pytest.mark.topologies("single", "cluster")


def cli(redis_url, *args, env=None):
    env = {**os.environ, "XQ_TEST_REDIS": redis_url, **(env or {})}
    return subprocess.run([sys.executable, "-m", "xq.cli", *args, "--redis", redis_url], cwd=TESTS, env=env,
                          capture_output=True, text=True, timeout=60)


def execs(r, ids) -> int:
    return sum(int(r.hget("test:execs", i) or 0) for i in ids)


def states(p, ids, queue="default") -> set[str]:
    return {p.status(i, queue=queue)["status"] for i in ids}


def claim_calls(r) -> int:
    """EVALSHA calls Redis (every Cluster master) has served so far (CLAIM is one per claim round)."""
    return evalsha_calls(r)


def workers_seen(p, ids, queue) -> set[str]:
    return {p.status(i, queue=queue)["worker"].rsplit(":", 1)[0] for i in ids}


def test_paused_queue_holds_new_tasks_while_others_flow_and_the_running_task_finishes(redis_url, r):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, queues="default,other", procs=2) as w:
        slow = p.enqueue("sleep", {"s": 1.0})
        wait_for(lambda: r.lrange("test:started", 0, -1) == [slow.encode()], what="the slow task to start")
        out = cli(redis_url, "queue", "pause", "default")
        assert out.returncode == 0 and out.stdout == "paused queue default\n", out
        held = p.enqueue_many("count", [1, 2, 3])  # default comes first in --queues: claims would take these
        flowing = p.enqueue_many("count", [4, 5, 6], queue="other")
        wait_for(lambda: states(p, flowing, "other") == {"done"}, what="the other queue's tasks")
        assert p.result(slow, timeout=20) == {"s": 1.0}  # the task running at the pause finished
        # every claim since the pause skipped default: its tasks are still queued, never run
        assert states(p, held) == {"queued"} and execs(r, held) == 0
        assert p.paused("default") and not p.paused("other")
        out = cli(redis_url, "queue", "resume", "default")
        assert out.returncode == 0 and out.stdout == "resumed queue default\n", out
        wait_for(lambda: states(p, held) == {"done"}, what="the held tasks after resume")
        assert execs(r, held) == 3
    assert w.proc.returncode == 0


def test_two_supervisors_honour_a_pause_that_survives_a_restart(redis_url, r):
    p = xq.Producer(redis_url)
    a = XQRun(redis_url, queues="default,other", procs=1)
    b = XQRun(redis_url, queues="default,other", procs=1)
    try:
        # both supervisors are up and claiming: quick tasks on `other` until each has run some
        seen: list[str] = []
        for _ in range(30):
            seen += p.enqueue_many("sleep", [{"s": 0.05}] * 4, queue="other")
            wait_for(lambda: states(p, seen, "other") == {"done"}, what="other's tasks")
            if len(workers_seen(p, seen, "other")) == 2:
                break
        assert len(workers_seen(p, seen, "other")) == 2
        assert p.pause_queue("default") is True
        assert p.pause_queue("default") is False  # paused already
        held = p.enqueue_many("count", list(range(5)))
        calls = claim_calls(r)
        time.sleep(2.5)  # past the idle wait's 1 s timeout twice: both supervisors have claimed since
        assert states(p, held) == {"queued"} and execs(r, held) == 0
        # the held tasks do not keep waking the idle supervisors (no wake marker re-set for a paused queue):
        # a few claims a second each, not a spin
        assert claim_calls(r) - calls < 60, claim_calls(r) - calls
        # restart one supervisor: the pause lives in Redis
        a.close()
        a = XQRun(redis_url, queues="default,other", procs=1)
        more = p.enqueue_many("count", [7, 8], queue="other")
        wait_for(lambda: states(p, more, "other") == {"done"}, what="other's tasks after the restart")
        time.sleep(1.5)
        assert states(p, held) == {"queued"} and execs(r, held) == 0 and p.paused("default")
        assert p.resume_queue("default") is True
        assert p.resume_queue("default") is False  # not paused any more
        wait_for(lambda: states(p, held) == {"done"}, what="the held tasks after resume")
        assert execs(r, held) == 5
    finally:
        a.close()
        b.close()


def test_burst_exits_when_only_a_paused_queues_tasks_remain_and_its_due_tasks_stay_scheduled(redis_url, r):
    p = xq.Producer(redis_url)
    qk = queue_keys("default")
    assert p.pause_queue("default")
    ready = p.enqueue_many("count", [1, 2])
    later = p.enqueue("count", 3, delay=0.2)
    time.sleep(0.3)  # the scheduled task is due now
    with XQRun(redis_url, burst=True) as w:
        assert w.wait(30) == 0  # nothing claimable: burst ends instead of waiting for a resume
    assert states(p, ready) == {"queued"} and execs(r, ready + [later]) == 0
    # a due scheduled task of a paused queue stays in sched (it is moved to ready after the resume)
    assert p.status(later)["status"] == "scheduled" and r.zscore(qk.sched, later) is not None
    assert p.resume_queue("default")
    with XQRun(redis_url, burst=True) as w:
        assert w.wait(30) == 0
    assert states(p, ready + [later]) == {"done"} and execs(r, ready + [later]) == 3


def test_cli_pause_and_resume_outputs_exit_codes_and_events(redis_url, r):
    ps = r.pubsub()
    ps.subscribe(queue_keys("mail").events)
    assert ps.get_message(timeout=5)["type"] == "subscribe"
    out = cli(redis_url, "queue", "pause", "mail")
    assert (out.returncode, out.stdout, out.stderr) == (0, "paused queue mail\n", "")
    out = cli(redis_url, "queue", "pause", "mail")
    assert (out.returncode, out.stdout) == (0, "queue mail was already paused\n")
    with Inspector(redis_url) as insp:
        assert insp.paused("mail")
        since = insp.paused_since("mail")
        assert since is not None and abs(since - time.time()) < 60
    assert "mail" in xq.Producer(redis_url).broker.queues()  # listed with the other queues
    out = cli(redis_url, "queue", "resume", "mail")
    assert (out.returncode, out.stdout) == (0, "resumed queue mail\n")
    out = cli(redis_url, "queue", "resume", "mail")
    assert (out.returncode, out.stdout) == (0, "queue mail was not paused\n")
    assert not Inspector(redis_url).paused("mail")
    assert r.zscore(queue_keys("mail").wake, "1") == 0  # the resume wakes idle supervisors
    events = []
    for _ in range(50):
        m = ps.get_message(timeout=0.1)
        if m and m["type"] == "message":
            events += orjson.loads(m["data"])
        if len(events) == 2:
            break
    assert [(e["queue"], e["state"]) for e in events] == [("mail", "paused"), ("mail", "resumed")]
    assert all(isinstance(e["ts"], int) and "id" not in e for e in events)
    ps.close()
    out = cli(redis_url, "queue", "pause", "bad name")
    assert out.returncode == 2 and "invalid queue name 'bad name'" in out.stderr, out
    out = cli("redis://127.0.0.1:1/0", "queue", "pause", "mail", env={"XQ_RETRY_FOR": "0"})  # no one on port 1
    assert out.returncode == 6, out


def test_weighted_claims_skip_a_paused_queue_and_give_its_share_to_the_others(redis_url, r):
    p = xq.Producer(redis_url)
    assert p.pause_queue("default")
    held = p.enqueue_many("count", list(range(20)))
    flowing = p.enqueue_many("count", list(range(20)), queue="other")
    with XQRun(redis_url, burst=True, queues="default:9,other:1") as w:
        assert w.wait(30) == 0
    assert states(p, flowing, "other") == {"done"} and execs(r, flowing) == 20
    assert states(p, held) == {"queued"} and execs(r, held) == 0
