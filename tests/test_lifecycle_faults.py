"""Lifecycle under faults: supervisors SIGKILLed with scheduled, retrying, timed and canceled tasks in
hand, and Redis restarted with scheduled tasks and a control subscription outstanding."""

from __future__ import annotations

import signal
import time

import xq
from xq.keys import queue_keys
from xqrun import XQRun, wait_for
from test_lifecycle import APP, attempts_of, ran


def test_sigkill_supervisor_with_scheduled_and_retrying_tasks(redis_url, r):
    p = xq.Producer(redis_url)
    qk = queue_keys("default")
    delayed = p.enqueue_many("count", list(range(20)), delay=1.0)
    flaky = p.enqueue_many("flaky", [{"ok_at": 3}] * 5)
    w = XQRun(redis_url, "--lease", "2", app=APP)
    try:
        wait_for(lambda: all(len(attempts_of(r, t)) >= 1 for t in flaky), 20, what="first attempts")
        w.kill()  # with retries scheduled and delayed tasks not yet due
    finally:
        w.close()
    assert r.zcard(qk.sched) > 0
    with XQRun(redis_url, "--lease", "2", app=APP, burst=True) as w2:
        assert w2.wait(60) == 0, w2.output()
    for t in delayed:
        assert p.status(t)["status"] == "done"
    counts = {k.decode(): int(v) for k, v in r.hgetall("test:execs").items()}
    assert set(counts) == set(delayed) and set(counts.values()) == {1}
    for t in flaky:
        st = p.status(t)
        # attempts count on across the crash: at most one lost to the kill
        assert st["status"] == "done" and st["attempts"] in (3, 4), st
    assert r.zcard(qk.sched) == 0 and r.zcard(qk.leases) == 0


def test_cancel_requested_then_supervisor_killed_ends_canceled(redis_url, r):
    # the cancel request is recorded in Redis: the lease recovery of a dead supervisor ends the task
    # canceled instead of running it again
    p = xq.Producer(redis_url)
    w = XQRun(redis_url, "--lease", "2", app=APP, procs=1)
    try:
        tid = p.enqueue("stubborn", None)
        wait_for(lambda: ran(r), 20, what="handler to start")
        w.signal(signal.SIGSTOP)  #: the supervisor cannot act on the cancel
        assert p.cancel(tid) == "canceling"
        w.kill()
    finally:
        w.close()
    with XQRun(redis_url, "--lease", "2", app=APP, procs=1, burst=True) as w2:
        assert w2.wait(60) == 0, w2.output()
    st = p.status(tid)
    assert st["status"] == "canceled" and "canceled (requested while it ran" in st["error"]
    assert attempts_of(r, tid) == [1]


def test_redis_restart_keeps_scheduled_tasks_and_cancel_channel(fresh_redis):
    url = fresh_redis.url
    p = xq.Producer(url)
    with XQRun(url, app=APP, procs=1) as w:
        delayed = p.enqueue_many("count", [1, 2, 3], delay=2.5)
        time.sleep(1.2)  # appendfsync everysec
        fresh_redis.restart()
        p = xq.Producer(url)
        for t in delayed:
            assert p.result(t, timeout=30) in (1, 2, 3), w.output()
        # the supervisor subscribed to the control channel again: a running task can be canceled
        tid = p.enqueue("cancellable", None)
        wait_for(lambda: p.status(tid)["status"] == "running", 20, what="running")
        time.sleep(0.3)
        assert p.cancel(tid) == "canceling"
        wait_for(lambda: p.status(tid)["status"] == "canceled", 20, what="canceled after the restart")


def test_task_canceled_in_a_dead_childs_ring_stays_canceled(redis_url, r):
    # Found by tests/test_model.py's predecessor: a task waiting in a child's ring behind a long one is
    # canceled (the child is told to skip it), then the child dies.  The task went back to the local buffer,
    # was handed to the respawned child, which had never heard of the cancel, and ran.
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app=APP, procs=1) as w:
        warm = p.enqueue_many("count", list(range(200)))  # quick tasks: the ring depth grows past one
        wait_for(lambda: r.hlen("test:execs") == len(warm), 20, what="warm-up tasks")
        r.delete("test:execs", "test:ran")
        first, queued = p.enqueue_many("sleep_to", [{"s": 3}]), p.enqueue_many("count", ["behind"])
        first, queued = first[0], queued[0]
        wait_for(lambda: ran(r), 20, what="the long task to start")
        wait_for(lambda: p.status(queued)["status"] == "running", 10, what="the next task claimed")
        assert p.cancel(queued) == "canceling"
        time.sleep(0.3)  # the supervisor reads the control channel and marks the task in the child's ring
        kids = w.children()
        assert len(kids) == 1
        kids[0].kill()
        wait_for(lambda: p.status(queued)["status"] in ("canceled", "done"), 20, what="the canceled task to end")
        assert p.status(queued)["status"] == "canceled", (p.status(queued), w.output())
        assert r.hget("test:execs", queued) is None, "the canceled task ran"
        wait_for(lambda: p.status(first)["status"] == "done", 20, what="the lost long task to run again")
