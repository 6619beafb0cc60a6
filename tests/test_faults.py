"""Fault tests: processes really get SIGKILLed, Redis really goes away and comes back."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import redis

import xq
from xq.keys import queue_keys
from xq.scripts import STAGE_PAYLOAD
from xqrun import XQRun, wait_for
from test_engine import IMPLS, assert_queue_empty, execs, states


@pytest.mark.parametrize("pure", IMPLS)
def test_child_killing_itself_is_retried(redis_url, r, pure):
    p = xq.Producer(redis_url)
    ids = p.enqueue_many("crash_once", list(range(6)))
    doomed = p.enqueue("always_crash", None, max_retries=2)
    fine = p.enqueue_many("count", list(range(50)))
    with XQRun(redis_url, burst=True, pure=pure) as w:
        assert w.wait(90) == 0, w.output()
    for i in ids:
        st = p.status(i)
        assert st["status"] == "done" and st["attempts"] == 2
    st = p.status(doomed)
    assert st["status"] == "dead" and st["attempts"] == 3 and st["reason"] == "lost on the last of 3 attempts"
    assert "exited with code 13" in st["error"]
    assert [h["outcome"] for h in st["history"]] == ["lost"] * 3
    assert states(r, fine) == {"done": 50}
    counts = execs(r)
    assert all(counts[i] == 2 for i in ids) and counts[doomed] == 3
    assert_queue_empty(r)


def test_sigkill_child_mid_task_from_outside(redis_url, r):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, procs=2) as w:
        kids = wait_for(lambda: len(w.children()) == 2 and w.children(), what="2 children")
        tid = p.enqueue("sleep", {"s": 1.5})
        wait_for(lambda: r.lrange("test:started", 0, -1), what="task start")
        victim = psutil.Process(int(r.get("test:running_pid")))
        assert victim.pid in [c.pid for c in kids]
        victim.kill()
        assert p.result(tid, timeout=30) == {"s": 1.5}
        st = p.status(tid)
        assert st["attempts"] == 2 and st["status"] == "done"
        assert f"worker process {victim.pid} was killed by signal 9 (SIGKILL) while running the task" in w.output()
        wait_for(lambda: len(w.children()) == 2 and victim.pid not in [c.pid for c in w.children()],
                 what="respawn")
        assert w.proc.poll() is None  # the supervisor kept running
        assert p.result(p.enqueue("echo", 5), timeout=10) == 5


@pytest.mark.parametrize("pure", IMPLS)
def test_sigkill_supervisor_with_batch_in_flight(redis_url, r, pure):
    p = xq.Producer(redis_url)
    ids = p.enqueue_many("sleep", [{"s": 0.01}] * 600)
    qk = queue_keys("default")
    w = XQRun(redis_url, "--lease", "2", "--prefetch", "8", pure=pure)
    try:
        wait_for(lambda: r.hlen("test:execs") >= 100, timeout=60, what="100 tasks done")
        kids = w.children()
        assert kids
        w.kill()
        held = r.zcard(qk.leases)  # the batch the dead supervisor held
        assert held > 0
        # its children notice within a second (PDEATHSIG) and exit: no orphan runs on
        psutil.wait_procs(kids, timeout=2)
        assert not [c for c in kids if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        w.close()
    before = execs(r)
    with XQRun(redis_url, "--lease", "2", burst=True, pure=pure) as w2:
        assert w2.wait(120) == 0, w2.output()
    assert states(r, ids) == {"done": 600}
    counts = execs(r)
    assert set(counts) == set(ids)
    dups = [i for i, n in counts.items() if n > 1]
    assert all(n <= 2 for n in counts.values())
    # duplicates only among tasks the killed supervisor held at the kill
    assert len(dups) <= held
    assert all(i in before for i in dups)
    assert_queue_empty(r)


@pytest.mark.parametrize("pure", IMPLS)
def test_graceful_sigterm_returns_unstarted_tasks(redis_url, r, pure):
    p = xq.Producer(redis_url)
    ids = p.enqueue_many("sleep", [{"s": 0.6}] * 12)
    qk = queue_keys("default")
    with XQRun(redis_url, "--prefetch", "4", procs=1, pure=pure) as w:
        wait_for(lambda: r.llen("test:started") >= 1, what="first task started")
        w.signal(signal.SIGTERM)
        assert w.wait(30) == 0, w.output()
    started = [x.decode() for x in r.lrange("test:started", 0, -1)]
    assert len(started) == 1
    st = states(r, ids)
    assert st == {"done": 1, "queued": 11}
    # the rest are back at the head, in their original order, their attempt not counted
    assert [x.decode() for x in r.lrange(qk.ready[5], 0, -1)] == [i for i in ids if i not in started]
    assert all(p.status(i)["attempts"] == 0 for i in ids if i not in started)
    assert r.zcard(qk.leases) == 0
    # and a new supervisor finishes them
    with XQRun(redis_url, burst=True, pure=pure) as w2:
        assert w2.wait(60) == 0
    assert states(r, ids) == {"done": 12}
    assert set(execs(r).values()) == {1}


def test_task_longer_than_its_lease_is_not_delivered_twice(redis_url, r):
    # The child is blocked in C (time.sleep) for four leases; its supervisor renews the lease, and
    # another supervisor recovering expired leases every 0.25 s never takes the task.
    p = xq.Producer(redis_url)
    tid = p.enqueue("sleep", {"s": 4.0})
    with XQRun(redis_url, "--lease", "1", procs=1), XQRun(redis_url, "--lease", "1", procs=1):
        assert p.result(tid, timeout=30) == {"s": 4.0}
        assert r.llen("test:started") == 1
    assert execs(r) == {tid: 1}
    assert p.status(tid)["attempts"] == 1


def test_sigterm_while_idle_ends_the_wait_and_its_claim(redis_url, r):
    # An idle supervisor has a CLAIM queued behind its BZPOPMIN.  A stop must end that wait (its claim
    # then runs at once, and whatever it took goes back), so nothing is left leased, and no claim of a
    # departed supervisor fires later on a task enqueued after it exited.  Tasks enqueued as the signal
    # lands are either done or back in the queue, each run at most once.
    p = xq.Producer(redis_url)
    qk = queue_keys("default")
    for round_ in range(5):
        with XQRun(redis_url, procs=1) as w:
            assert p.result(p.enqueue("count", round_), timeout=20) == round_  # up, and idle again
            racing = p.enqueue_many("count", [round_] * 3)
            w.signal(signal.SIGTERM)
            assert w.wait(20) == 0, w.output()
        assert r.zcard(qk.leases) == 0
        st = states(r, racing)
        assert set(st) <= {"done", "queued"} and sum(st.values()) == 3
        queued = {x.decode() for x in r.lrange(qk.ready[5], 0, -1)}
        assert queued == {i for i in racing if p.status(i)["status"] == "queued"}
    assert max(execs(r).values()) == 1
    late = p.enqueue("count", "late")
    time.sleep(0.3)
    assert p.status(late)["status"] == "queued" and r.zcard(qk.leases) == 0


def test_second_signal_stops_hard_and_loses_nothing(redis_url, r):
    p = xq.Producer(redis_url)
    long = p.enqueue("sleep", {"s": 60})
    with XQRun(redis_url, procs=1) as w:
        wait_for(lambda: r.llen("test:started") >= 1, what="long task started")
        w.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert w.proc.poll() is None  # still inside its grace period
        w.signal(signal.SIGINT)
        assert w.wait(15) == 0
    st = p.status(long)
    assert st["status"] == "queued"
    assert r.lrange(queue_keys("default").ready[5], 0, -1) == [long.encode()]


def test_grace_period_expiry_returns_running_task(redis_url, r):
    p = xq.Producer(redis_url)
    long = p.enqueue("sleep", {"s": 60})
    with XQRun(redis_url, "--grace", "1", procs=1) as w:
        wait_for(lambda: r.llen("test:started") >= 1, what="long task started")
        w.signal(signal.SIGTERM)
        assert w.wait(20) == 0
        assert "grace period of 1 s ran out" in w.output()
    assert p.status(long)["status"] == "queued"


def test_redis_down_at_start_then_up(fresh_redis):
    url = fresh_redis.url
    fresh_redis.stop()
    with XQRun(url, procs=1) as w:
        wait_for(lambda: "unreachable" in w.output(), what="unreachable log line")
        assert w.proc.poll() is None
        fresh_redis.start()
        p = xq.Producer(url)
        tid = p.enqueue("echo", "late")
        assert p.result(tid, timeout=30) == "late"


def test_redis_restart_mid_run_loses_nothing(fresh_redis):
    url = fresh_redis.url
    p = xq.Producer(url)
    with XQRun(url, procs=2) as w:
        first = p.enqueue_many("echo", list(range(200)))
        assert p.result(first[-1], timeout=30) == 199
        time.sleep(1.2)  # appendfsync everysec
        fresh_redis.restart()
        p = xq.Producer(url)
        second = p.enqueue_many("echo", list(range(200)))
        assert p.result(second[-1], timeout=60) == 199
        for i in first + second:
            assert p.status(i)["status"] == "done"
        assert w.proc.poll() is None


def test_large_payloads_enqueued_across_a_redis_restart_are_whole(fresh_redis):
    """The same producer, its connection killed by a real restart (scripts gone too), enqueues payloads
    over scripts.STAGE_PAYLOAD: the resend stages them again, every record holds its own bytes and no
    stage is left behind; a worker then runs them all."""
    url, qk = fresh_redis.url, queue_keys("default")
    p = xq.Producer(url)
    p.enqueue("echo", 0)  # connected, scripts loaded
    fresh_redis.restart()
    blobs = [os.urandom(STAGE_PAYLOAD * k) for k in (2, 50, 300)] * 3
    ids = p.enqueue_many("reverse", blobs)
    r = redis.Redis.from_url(url)
    assert [r.hget(qk.task(i), "payload") for i in ids] == blobs
    assert r.keys(qk.stage_prefix.decode() + "*") == []
    with XQRun(url, procs=2, burst=True) as w:
        assert w.wait(60) == 0, w.output()
    assert [p.result(i, timeout=5) for i in ids] == [b[::-1] for b in blobs]


def test_max_tasks_per_child_recycles(redis_url, r):
    p = xq.Producer(redis_url)
    ids = p.enqueue_many("pid", [None] * 40)
    with XQRun(redis_url, "--max-tasks-per-child", "5", procs=1, burst=True) as w:
        assert w.wait(60) == 0, w.output()
    pids = {p.result(i, timeout=5) for i in ids}
    assert len(pids) >= 8
    assert states(r, ids) == {"done": 40}


def test_max_memory_per_child_recycles(redis_url, r):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, "--max-memory-per-child", "100", procs=1) as w:
        first = p.result(p.enqueue("grow", {"mb": 300}), timeout=20)
        wait_for(lambda: "over --max-memory-per-child" in w.output(), timeout=20, what="recycle")
        second = p.result(p.enqueue("pid", None), timeout=20)
        assert first != second
