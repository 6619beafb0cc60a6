"""Fencing: COMPLETE, RELEASE and RENEW act only for the worker that holds a task, at the attempt it claimed.

Script-level tests call the scripts through the Broker with a wrong worker or a wrong attempt; the end-to-end
test stops a real supervisor past its lease, lets another one run the task again, and resumes the first.
"""

from __future__ import annotations

import signal
import time

import orjson
import pytest

import xq
from xq.broker import Broker, Refused
from xq.keys import queue_keys
from xqrun import XQRun, wait_for
from test_engine import IMPLS

QK = queue_keys("default")


@pytest.fixture
def b(redis_url):
    broker = Broker(redis_url)
    yield broker
    broker.close()


def claim(b, worker, lease_ms=30000):
    """Claim one task as worker; returns (id, attempt)."""
    tasks = b.run("claim", Broker.claim_keys([QK]), [1, worker, lease_ms, 1 << 20, 60, *Broker.claim_tail([QK])])[0]
    return tasks[1], tasks[5]


def complete(b, worker, items):
    written, refused = b.run("complete", [QK.leases, QK.sched, QK.dead],
                             [QK.task_prefix, QK.events, 60, "", "default", worker, *items])
    return written, refused


def recover(b):
    """Let worker A's lease run out and recover it as any supervisor would (RELEASE expired)."""
    time.sleep(0.01)
    b.release(QK, "expired", [], error="recovered by test", ttl=60)


def test_complete_of_a_stale_attempt_is_refused_and_the_newer_one_stands(b, r, redis_url):
    tid = xq.Producer(redis_url).enqueue("count", 1).encode()
    assert claim(b, "A", lease_ms=1) == (tid, 1)
    recover(b)                                           # A stalled past its lease
    assert claim(b, "B") == (tid, 2)
    done = [tid, 1, "done", b'"late"', "j", 1, 2]
    assert complete(b, "A", done) == (0, [tid, b"1", b"running", b"B", b"2"])
    rec = r.hgetall(QK.task(tid.decode()))
    assert rec[b"state"] == b"running" and rec[b"worker"] == b"B" and b"result" not in rec
    assert r.zscore(QK.leases, tid) is not None          # B's lease is B's
    assert complete(b, "B", [tid, 2, "done", b'"ok"', "j", 3, 4]) == (1, [])
    assert complete(b, "A", done) == (0, [tid, b"1", b"done", b"B", b"2"])   # done by B: still refused
    rec = r.hgetall(QK.task(tid.decode()))
    assert rec[b"result"] == b'"ok"' and rec[b"fin"] == b"4"
    assert r.zscore(QK.leases, tid) is None


def test_same_worker_reclaiming_its_task_fences_on_the_attempt(b, r, redis_url):
    tid = xq.Producer(redis_url).enqueue("count", 1).encode()
    claim(b, "A", lease_ms=1)
    recover(b)
    assert claim(b, "A") == (tid, 2)                     # the same worker, a new attempt
    assert complete(b, "A", [tid, 1, "failed", "late boom", "", 1, 2]) == (0, [tid, b"1", b"running", b"A", b"2"])
    rec = r.hgetall(QK.task(tid.decode()))
    assert rec[b"state"] == b"running" and rec[b"error"].startswith(b"lease expired")  # the recovery's, not ours
    assert [h["outcome"] for h in orjson.loads(rec[b"hist"])] == ["lost"]   # only the recovery's entry
    assert complete(b, "A", [tid, 2, "done", b"1", "j", 3, 4]) == (1, [])


def test_a_replayed_task_never_repeats_a_fencing_token(b, r, redis_url):
    """Found by the model test: REPLAY used to reset the attempt to 0, so worker A, stalled past its lease
    while the task died elsewhere and was replayed, could claim it again as (A, 1) and have the stale
    attempt 1's result taken for the new one's.  Attempt numbers now go on across replays; the retry
    budget starts afresh."""
    p = xq.Producer(redis_url)
    tid = p.enqueue("count", 1, max_retries=1).encode()
    claim(b, "A", lease_ms=1)
    recover(b)                                           # A stalled: attempt 1 lost, retried
    r.zadd(QK.sched, {tid: 0})                           # due now
    assert claim(b, "B", lease_ms=1) == (tid, 2)
    recover(b)                                           # lost again: the budget of 2 attempts is spent
    assert r.hget(QK.task(tid.decode()), "state") == b"dead"
    assert p.replay("default", [tid.decode()]) == [tid.decode()]
    assert claim(b, "A") == (tid, 3)                     # not (A, 1) again
    assert complete(b, "A", [tid, 1, "done", b'"stale"', "j", 1, 2]) == (0, [tid, b"1", b"running", b"A", b"3"])
    # the replayed task has its full budget again: a failure of attempt 3 is retried, of attempt 4 is final
    assert complete(b, "A", [tid, 3, "retry", b"0,1", "boom", 3, 4]) == (1, [])
    assert r.hget(QK.task(tid.decode()), "state") == b"retrying"
    r.zadd(QK.sched, {tid: 0})
    assert claim(b, "A") == (tid, 4)
    assert complete(b, "A", [tid, 4, "retry", b"0,1", "boom", 5, 6]) == (1, [])
    st = p.status(tid.decode())
    assert st["status"] == "dead" and st["reason"] == "failed on the last of 2 attempts", st
    assert [h["attempt"] for h in st["history"]] == [1, 2, 3, 4]


def test_complete_of_a_missing_record_is_refused_and_not_recreated(b, r, redis_url):
    written, refused = complete(b, "A", [b"NOPE", 1, "done", b"1", "j", 1, 2])
    assert written == 0 and refused == [b"NOPE", b"1", b"", b"", b""]
    assert not r.exists(QK.task("NOPE"))


def test_release_of_a_stale_attempt_or_by_another_worker_is_refused(b, r, redis_url):
    tid = xq.Producer(redis_url).enqueue("count", 1).encode()
    claim(b, "A", lease_ms=1)
    recover(b)
    claim(b, "B")
    for worker, att in (("A", 1), ("A", 2), ("B", 1)):  # stale holder, wrong holder, wrong attempt
        requeued, dead, refused = b.release(QK, "lost", [(tid, att)], holder=worker, error="x", ttl=60)
        assert (requeued, dead) == ([], [])
        assert refused == [Refused(tid, att, b"running", b"B", 2)]
    requeued, _, refused = b.release(QK, "return", [(tid, 2)], holder="A", ttl=60)
    assert requeued == [] and refused[0].worker == b"B"
    rec = r.hgetall(QK.task(tid.decode()))
    assert rec[b"state"] == b"running" and rec[b"att"] == b"2" and r.zscore(QK.leases, tid) is not None
    assert b.release(QK, "return", [(tid, 2)], holder="B", ttl=60)[:2] == ([tid], [])  # the holder may


def test_renew_extends_only_the_held_attempt(b, r, redis_url):
    tid = xq.Producer(redis_url).enqueue("count", 1).encode()
    claim(b, "A", lease_ms=1)
    recover(b)
    claim(b, "A", lease_ms=5000)
    before = r.zscore(QK.leases, tid)
    assert b.renew(QK, "A", 600000, [(tid, 1)]) == ([tid], [])      # attempt 1 is not held any more
    assert b.renew(QK, "B", 600000, [(tid, 2)]) == ([tid], [])      # nor by B
    assert r.zscore(QK.leases, tid) == before
    assert b.renew(QK, "A", 600000, [(tid, 2)]) == ([], [])
    assert r.zscore(QK.leases, tid) > before


@pytest.mark.parametrize("pure", IMPLS)
def test_a_late_result_from_a_stopped_supervisor_is_refused_and_logged(redis_url, r, pure):
    # A runs the task; A's supervisor is stopped (SIGSTOP: its child keeps running, PDEATHSIG fires only on
    # death) past its 1 s lease; B recovers and finishes it; A resumes with attempt 1's result.  (A's idle
    # wait, queued in Redis before the stop, may take the recovered task first as attempt 2, whose lease then
    # runs out too: B finishes attempt n >= 2 either way.)
    p = xq.Producer(redis_url)
    with XQRun(redis_url, "--lease", "1", procs=1, pure=pure) as a:
        wait_for(lambda: len(a.children()) == 1, what="A's child")
        tid = p.enqueue("sleep_attempt", {"s": 2.5})
        wait_for(lambda: r.lrange("test:started", 0, -1), what="attempt 1 to start: " + a.output())
        assert p.status(tid)["attempts"] == 1
        a.signal(signal.SIGSTOP)
        try:
            with XQRun(redis_url, "--lease", "1", procs=1, pure=pure) as b:
                wait_for(lambda: p.status(tid)["status"] == "done", 30, what="B to finish it: " + b.output())
                st = p.status(tid)
                n = st["attempts"]
                assert n >= 2 and st["worker"] == worker_of(b) != worker_of(a), b.output()
                fin_b = r.hget(QK.task(tid), "fin")
                time.sleep(1.0)  # A's child has finished attempt 1 by now: its result waits in the ring
        finally:
            a.signal(signal.SIGCONT)
        worker_a = worker_of(a)
        wait_for(lambda: f"result of task {tid} attempt 1 refused" in a.output(), 20,
                 what="A's refusal in its log: " + a.output())
        line = next(x for x in a.output().splitlines() if f"attempt 1 refused" in x)
        assert f"the task is now done (attempt {n})" in line, line
    st = p.status(tid)
    assert st["status"] == "done" and st["attempts"] == n and p.result(tid, timeout=5) == {"attempt": n}
    assert r.hget(QK.task(tid), "fin") == fin_b  # the late attempts' times did not overwrite attempt n's
    hist = st["history"]
    assert [h["outcome"] for h in hist] == ["lost"] * (n - 1) + ["done"], hist
    assert [h["attempt"] for h in hist] == list(range(1, n + 1)) and hist[0]["worker"] == worker_a
    assert hist[-1]["worker"] == st["worker"]
    assert r.zcard(QK.leases) == 0


def worker_of(run) -> str:
    """The worker id a supervisor logs in its start line ("xq supervisor <id>: ...")."""
    out = wait_for(lambda: "xq supervisor " in run.output() and run.output(), what="the start line")
    return out.split("xq supervisor ", 1)[1].split(": ", 1)[0]
