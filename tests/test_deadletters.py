"""Retries, the dead-letter set, replay and purge, end to end: the real `xq run` against a real redis-server.

Handlers are in tests/apps/lifecycle.py; each attempt records "<attempt>:<queue>" in Redis, outside xq.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import orjson
import pytest

import xq
from xq.keys import queue_keys
from xqrun import TESTS, XQRun, wait_for

pytestmark = pytest.mark.topologies("single", "cluster")

APP = "apps.lifecycle:app"
FLAG = "test:flag"


def attempts_seen(r, task_id) -> list[str]:
    """What the handler recorded, one "<attempt>:<queue>" per attempt."""
    return [x.decode() for x in r.lrange(f"test:attempts:{task_id}", 0, -1)]


def wait_status(p, task_id, status, queue=None, timeout=30):
    return wait_for(lambda: (st := p.status(task_id, queue=queue))["status"] == status and st,
                    timeout=timeout, what=f"task {task_id} to be {status}")


def make_dead(redis_url, p, name, payloads, queue="default") -> list[str]:
    """Enqueue the tasks, run a supervisor until all of them are dead, stop it; returns their ids."""
    ids = p.enqueue_many(name, payloads, queue=queue)
    with XQRun(redis_url, app=APP, queues=queue) as w:
        wait_for(lambda: p.dead_count(queue) >= len(ids), timeout=30, what=f"{len(ids)} dead tasks")
    assert w.proc.returncode == 0, w.proc.returncode
    assert {p.status(i)["status"] for i in ids} == {"dead"}
    return ids


def nowhere_but_dead(r, task_id, queue="default"):
    """The task is in the dead-letter set only: in no ready list, not leased, not scheduled."""
    qk = queue_keys(queue)
    assert r.zscore(qk.dead, task_id) is not None
    assert r.zscore(qk.leases, task_id) is None and r.zscore(qk.sched, task_id) is None
    assert all(task_id.encode() not in r.lrange(k, 0, -1) for k in qk.ready)


def cli(redis_url, *args, input=None):
    env = {**os.environ, "XQ_TEST_REDIS": redis_url}
    return subprocess.run([sys.executable, "-m", "xq.cli", *args, "--redis", redis_url], cwd=TESTS, env=env,
                          capture_output=True, text=True, timeout=60, input=input)


# ---------------------------------------------------------------------------------------------- retries


def test_exhausted_retries_dead_with_reason_error_and_history(redis_url, r):
    p = xq.Producer(redis_url)
    tid = p.enqueue("fail_fast", "x")
    with XQRun(redis_url, app=APP) as w:
        st = wait_status(p, tid, "dead")
        worker_prefix = f"{socket.gethostname()}:{w.pid}:"
    assert attempts_seen(r, tid) == ["1:default", "2:default", "3:default"]  # max_retries=2: 3 attempts
    assert st["attempts"] == 3
    assert st["reason"] == "failed on the last of 3 attempts"
    assert st["error"].startswith("ValueError: fail_fast x attempt 3\n") and "Traceback" in st["error"]
    assert st["dead_at"] is not None and st["finished_at"] is not None and st["next_attempt_at"] is None
    assert st["worker"].startswith(worker_prefix)
    hist = st["history"]
    assert [h["attempt"] for h in hist] == [1, 2, 3]
    assert [h["outcome"] for h in hist] == ["failed"] * 3
    for n, h in enumerate(hist, 1):
        assert h["error"] == f"ValueError: fail_fast x attempt {n}"  # the first line only
        assert h["traceback"].startswith("Traceback (most recent call last)")
        assert "lifecycle.py" in h["traceback"] and 'raise ValueError(f"fail_fast' in h["traceback"]
        assert h["worker"].startswith(worker_prefix)
        assert h["started_at"] <= h["finished_at"]
    for a, b in zip(hist, hist[1:]):
        assert a["finished_at"] <= b["started_at"]
    nowhere_but_dead(r, tid)
    assert [t["id"] for t in p.dead_letters("default")] == [tid]
    assert p.dead_count("default") == 1
    with pytest.raises(xq.TaskFailed, match="fail_fast x attempt 3") as e:
        p.result(tid, timeout=5)
    assert e.value.state == "dead"


def test_status_reports_the_max_retries_the_task_ran_with(redis_url, r):
    # Enqueued by a producer that does not know the app: the handler's max_retries=2 applied (3 attempts),
    # and status() must say so rather than the global default of 3.
    p = xq.Producer(redis_url)
    tid = p.enqueue("fail_fast", "m")
    with XQRun(redis_url, app=APP):
        st = wait_status(p, tid, "dead")
    assert st["attempts"] == 3 and st["reason"] == "failed on the last of 3 attempts"
    assert st["max_retries"] == 2


def test_nonretryable_and_retry_on(redis_url, r):
    p = xq.Producer(redis_url)
    fatal = p.enqueue("fatal", "f")                  # max_retries=3, raises xq.NonRetryable
    transient = p.enqueue("picky", "transient")      # retry_on=(Transient,): retried until out of attempts
    other = p.enqueue("picky", "k")                  # KeyError: not in retry_on, not retried
    with XQRun(redis_url, app=APP):
        for tid in (fatal, transient, other):
            wait_status(p, tid, "dead")
    st = p.status(fatal)
    assert st["attempts"] == 1 and st["reason"] == "failed, not retried"
    assert st["error"].startswith("NonRetryable: bad input f")
    assert attempts_seen(r, fatal) == ["1:default"]
    st = p.status(transient)
    assert st["attempts"] == 4 and st["reason"] == "failed on the last of 4 attempts"
    assert [h["error"] for h in st["history"]] == ["Transient: try again"] * 4
    assert attempts_seen(r, transient) == ["1:default", "2:default", "3:default", "4:default"]
    st = p.status(other)
    assert st["attempts"] == 1 and st["reason"] == "failed, not retried"
    assert st["error"].startswith("KeyError: 'k'")
    assert attempts_seen(r, other) == ["1:default"]
    assert {t["id"] for t in p.dead_letters("default")} == {fatal, transient, other}


def test_retry_with_delay(redis_url, r):
    p = xq.Producer(redis_url)
    # The task's backoff is 600 s: only the delay given to xq.Retry can bring the second attempt soon.
    tid = p.enqueue("retry_later", {"delay": 1.0})
    always = p.enqueue("retry_later", {"delay": 0.05, "always": True})
    with XQRun(redis_url, app=APP):
        st = wait_status(p, tid, "retrying", timeout=20)
        assert st["attempts"] == 1 and st["next_attempt_at"] is not None
        assert st["history"][0]["error"] == "Retry: retry requested in 1.0 s"
        assert st["next_attempt_at"] >= st["history"][0]["finished_at"] + 0.9
        assert p.result(tid, timeout=30) == 2
        st_always = wait_status(p, always, "dead")
    st = p.status(tid)
    assert st["status"] == "done" and st["attempts"] == 2
    assert [h["outcome"] for h in st["history"]] == ["failed", "done"]
    assert st["history"][1]["started_at"] >= st["history"][0]["finished_at"] + 0.9
    # a Retry counts as a failed attempt: once max_retries (3) are used up the task is dead
    assert st_always["attempts"] == 4 and st_always["reason"] == "failed on the last of 4 attempts"
    assert attempts_seen(r, always) == ["1:default", "2:default", "3:default", "4:default"]
    assert p.dead_count() == 1
    # done: the failed attempt's error is in the history, not the error of the task
    assert st["error"] is None


# -------------------------------------------------------------------------------------- dead-letter set


def test_dead_letters_paging_and_count(redis_url, r):
    p = xq.Producer(redis_url)
    ids = make_dead(redis_url, p, "fatal", [f"p{i}" for i in range(5)])
    assert p.dead_count("default") == 5 and p.dead_count("other") == 0
    pages = [p.dead_letters("default", offset=o, limit=2) for o in (0, 2, 4, 6)]
    assert [len(pg) for pg in pages] == [2, 2, 1, 0]
    listed = [t["id"] for pg in pages for t in pg]
    assert sorted(listed) == sorted(ids)
    # oldest first: the order of the dead-letter set
    assert listed == [i.decode() for i in r.zrange(queue_keys("default").dead, 0, -1)]
    dead_at = [t["dead_at"] for pg in pages for t in pg]
    assert dead_at == sorted(dead_at)
    for t in [t for pg in pages for t in pg]:
        assert t["status"] == "dead" and t["name"] == "fatal" and t["queue"] == "default"
        assert t["reason"] == "failed, not retried" and t["history"][0]["outcome"] == "failed"
    assert p.dead_letters("default", offset=1, limit=100) == pages[0][1:] + pages[1] + pages[2]
    assert p.dead_letters("other") == []
    with pytest.raises(xq.ConfigError, match="invalid offset -1"):
        p.dead_letters("default", offset=-1)
    with pytest.raises(xq.ConfigError, match="invalid limit 0"):
        p.dead_letters("default", limit=0)
    with pytest.raises(xq.ConfigError, match="invalid queue name 'a b'"):
        p.dead_letters("a b")
    with pytest.raises(xq.ConfigError, match="invalid queue name 'a b'"):
        p.dead_count("a b")


def test_replay_by_ids_then_all_and_they_succeed(redis_url, r):
    p = xq.Producer(redis_url)
    a, b, c = make_dead(redis_url, p, "needs_flag", ["a", "b", "c"])
    r.set(FLAG, 1)  # now the handler succeeds
    qk = queue_keys("default")

    assert p.replay("default", [a, "NOT-A-DEAD-ID"]) == [a]
    st = p.status(a)
    # a fresh retry budget, but attempt numbers go on (a fencing token never repeats; see test_fencing)
    assert st["status"] == "queued" and st["attempts"] == 1 and st["replays"] == 1
    assert st["dead_at"] is None and st["reason"] is None and st["worker"] is None
    assert r.zscore(qk.dead, a) is None and a.encode() in r.lrange(qk.ready[5], 0, -1)
    assert p.dead_count() == 2
    assert p.replay("default", [a]) == []  # not dead any more: skipped

    with XQRun(redis_url, app=APP):
        assert p.result(a, timeout=30) == {"ok": "a", "queue": "default", "attempt": 2}
        assert sorted(p.replay("default")) == sorted([b, c])  # ids=None: all of them, while one runs
        assert p.dead_count() == 0 and p.dead_letters("default") == []
        assert p.result(b, timeout=30)["ok"] == "b"
        assert p.result(c, timeout=30)["ok"] == "c"
    for tid in (a, b, c):
        st = p.status(tid)
        assert st["status"] == "done" and st["attempts"] == 2 and st["replays"] == 1
        # the failed attempt before the replay is kept in the history
        assert [(h["attempt"], h["outcome"]) for h in st["history"]] == [(1, "failed"), (2, "done")]
        assert st["history"][0]["error"].startswith("RuntimeError: flag not set")
        assert attempts_seen(r, tid) == ["1:default", "2:default"]
    assert p.replay("default") == []
    # done: the error of the attempt before the replay is in the history, not the error of the task
    assert [p.status(tid)["error"] for tid in (a, b, c)] == [None, None, None]


def test_replay_with_new_priority(redis_url, r):
    p = xq.Producer(redis_url)
    hi, zero, keep = make_dead(redis_url, p, "needs_flag", ["hi", "zero", "keep"])
    qk = queue_keys("default")
    with pytest.raises(xq.ConfigError, match="invalid priority 11"):
        p.replay("default", [hi], priority=11)
    assert p.dead_count() == 3  # a bad priority replays nothing
    assert p.replay("default", [hi], priority="high") == [hi]
    assert p.replay("default", [zero], priority=0) == [zero]
    assert p.replay("default", [keep]) == [keep]
    assert p.status(hi)["priority"] == 2 and p.status(zero)["priority"] == 0 and p.status(keep)["priority"] == 5
    assert r.lrange(qk.ready[2], 0, -1) == [hi.encode()]
    assert r.lrange(qk.ready[0], 0, -1) == [zero.encode()]
    assert r.lrange(qk.ready[5], 0, -1) == [keep.encode()]
    r.set(FLAG, 1)
    with XQRun(redis_url, app=APP, procs=1, burst=True) as w:
        assert w.wait(60) == 0, w.output()
    assert {p.status(i)["status"] for i in (hi, zero, keep)} == {"done"}
    for i in (hi, zero, keep):
        assert attempts_seen(r, i) == ["1:default", "2:default"]
    # one child, claimed in priority order: 0, then 2 ("high"), then 5
    started = [p.status(i)["started_at"] for i in (zero, hi, keep)]
    assert started == sorted(started)


def test_replay_to_another_queue_runs_there(redis_url, r):
    p = xq.Producer(redis_url)
    a, b = make_dead(redis_url, p, "needs_flag", ["a", "b"])
    r.set(FLAG, 1)
    with pytest.raises(xq.ConfigError, match="invalid queue name 'x y'"):
        p.replay("default", to_queue="x y")
    assert sorted(p.replay("default", to_queue="other", priority="high")) == sorted([a, b])
    assert p.dead_count("default") == 0
    for tid in (a, b):
        with pytest.raises(xq.UnknownTask):
            p.status(tid, queue="default")  # moved: the original record is gone
        st = p.status(tid, queue="other")
        assert st["status"] == "queued" and st["priority"] == 2 and st["name"] == "needs_flag"
        # as a replay in place (issue 15, defect 7): the history and the attempt numbers go along, and
        # the replay is counted
        assert st["attempts"] == 1 and st["replays"] == 1, st
        assert [(h["attempt"], h["outcome"]) for h in st["history"]] == [(1, "failed")], st["history"]
        assert st["history"][0]["error"].startswith("RuntimeError: flag not set")
    assert sorted(r.lrange(queue_keys("other").ready[2], 0, -1)) == sorted([a.encode(), b.encode()])
    # a supervisor serving only "other" runs them there
    with XQRun(redis_url, app=APP, queues="other"):
        assert p.result(a, timeout=30, queue="other") == {"ok": "a", "queue": "other", "attempt": 2}
        assert p.result(b, timeout=30, queue="other") == {"ok": "b", "queue": "other", "attempt": 2}
    for tid in (a, b):
        assert attempts_seen(r, tid) == ["1:default", "2:other"]
        st = xq.Producer(redis_url).status(tid)
        assert st["queue"] == "other"  # found through the queue index
        assert st["status"] == "done" and st["attempts"] == 2 and st["replays"] == 1
        assert [(h["attempt"], h["outcome"]) for h in st["history"]] == [(1, "failed"), (2, "done")]
    assert p.dead_count("other") == 0


def test_purge_dead_and_empty_set_noops(redis_url, r):
    p = xq.Producer(redis_url)
    # an empty dead-letter set: replay and purge do nothing
    assert p.replay("default") == [] and p.replay("default", ["NOPE"]) == []
    assert p.replay("default", to_queue="other") == []
    assert p.purge_dead("default") == 0
    assert p.dead_count("default") == 0 and p.dead_letters("default") == []

    ids = make_dead(redis_url, p, "fatal", ["x", "y", "z"])
    done = p.enqueue("ok", 1)
    with XQRun(redis_url, app=APP):
        assert p.result(done, timeout=30) == 1
    assert p.purge_dead("default") == 3
    assert p.dead_count("default") == 0 and p.dead_letters("default") == []
    assert r.exists(queue_keys("default").dead) == 0
    for tid in ids:
        assert r.exists(queue_keys("default").task(tid)) == 0
        with pytest.raises(xq.UnknownTask):
            p.status(tid, queue="default")
    assert p.status(done)["status"] == "done"  # only dead tasks are purged
    assert p.purge_dead("default") == 0
    assert p.replay("default") == [] and p.replay("default", ids) == []
    with pytest.raises(xq.ConfigError, match="invalid queue name"):
        p.purge_dead("no/such")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_dlq(redis_url, r):
    p = xq.Producer(redis_url)
    a, b, c, d = make_dead(redis_url, p, "needs_flag", ["a", "b", "c", "d"])
    done = p.enqueue("ok", 1)
    with XQRun(redis_url, app=APP):
        assert p.result(done, timeout=30) == 1
    dead_order = [i.decode() for i in r.zrange(queue_keys("default").dead, 0, -1)]

    out = cli(redis_url, "dlq", "ls", "default")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "4 dead task(s) in default; showing 1-4"
    assert [ln.split()[0] for ln in lines[1:]] == dead_order
    for ln in lines[1:]:
        assert "  needs_flag  attempts=1  failed on the last of 1 attempts: RuntimeError: flag not set for " in ln

    out = cli(redis_url, "dlq", "ls", "default", "--offset", "1", "--limit", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "4 dead task(s) in default; showing 2-3"
    assert [ln.split()[0] for ln in lines[1:]] == dead_order[1:3]

    out = cli(redis_url, "dlq", "ls", "default", "--json")
    assert out.returncode == 0, out.stderr
    js = orjson.loads(out.stdout)
    assert js["total"] == 4 and js["offset"] == 0 and [t["id"] for t in js["tasks"]] == dead_order

    out = cli(redis_url, "dlq", "ls", "other")
    assert out.returncode == 0 and out.stdout.splitlines() == ["0 dead task(s) in other; showing 0-0"]

    out = cli(redis_url, "dlq", "show", "default", a)
    assert out.returncode == 0, out.stderr
    st = orjson.loads(out.stdout)
    assert st["id"] == a and st["status"] == "dead" and st["reason"] == "failed on the last of 1 attempts"
    assert [h["outcome"] for h in st["history"]] == ["failed"]
    assert st["history"][0]["error"] == "RuntimeError: flag not set for a"
    assert "Traceback" in st["history"][0]["traceback"]

    # bad input: clear messages, non-zero exits, nothing changed
    out = cli(redis_url, "dlq", "show", "default", done)
    assert out.returncode != 0 and f"task {done} in default is done, not dead" in out.stderr
    out = cli(redis_url, "dlq", "show", "default", "NO-SUCH-ID")
    assert out.returncode != 0 and "no task with id 'NO-SUCH-ID' in queue 'default'" in out.stderr
    for cmd in (["ls", "bad queue"], ["show", "bad queue", a], ["replay", "bad queue"],
                ["purge", "bad queue", "--yes"]):
        out = cli(redis_url, "dlq", *cmd)
        assert out.returncode != 0 and "invalid queue name 'bad queue'" in out.stderr, (cmd, out.stderr)
        assert "Traceback" not in out.stderr
    out = cli(redis_url, "dlq", "replay", "default", "--to-queue", "x y")
    assert out.returncode != 0 and "invalid queue name 'x y'" in out.stderr
    out = cli(redis_url, "dlq", "replay", "default", "--priority", "11")
    assert out.returncode != 0 and "invalid --priority 11" in out.stderr
    out = cli(redis_url, "dlq", "replay", "default", "--priority", "urgent")
    assert out.returncode != 0 and "invalid --priority 'urgent'" in out.stderr
    assert p.dead_count("default") == 4

    # replay by id (one id not dead)
    out = cli(redis_url, "dlq", "replay", "default", a, "NO-SUCH-ID")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "replayed 1 task(s) into default; 1 id(s) were not in the dead-letter set: NO-SUCH-ID"
    assert p.status(a)["status"] == "queued" and p.dead_count("default") == 3

    # replay into another queue at a new priority
    out = cli(redis_url, "dlq", "replay", "default", b, c, "--priority", "high", "--to-queue", "other")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "replayed 2 task(s) into other"
    for tid in (b, c):
        st = p.status(tid, queue="other")
        assert st["status"] == "queued" and st["priority"] == 2
        assert r.exists(queue_keys("default").task(tid)) == 0
    assert p.dead_count("default") == 1

    # purge asks first; "n" keeps everything
    out = cli(redis_url, "dlq", "purge", "default", input="n\n")
    assert out.returncode != 0 and "delete 1 dead task(s) of default?" in out.stdout
    assert p.dead_count("default") == 1 and p.status(d)["status"] == "dead"
    out = cli(redis_url, "dlq", "purge", "default", "--yes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "purged 1 dead task(s) from default"
    assert p.dead_count("default") == 0 and r.exists(queue_keys("default").task(d)) == 0

    # an empty set: both are no-ops
    out = cli(redis_url, "dlq", "replay", "default")
    assert out.returncode == 0 and out.stdout.strip() == "replayed 0 task(s) into default"
    out = cli(redis_url, "dlq", "purge", "default", "--yes")
    assert out.returncode == 0 and out.stdout.strip() == "purged 0 dead task(s) from default"
    out = cli(redis_url, "dlq", "purge", "default")  # nothing to delete: no question asked
    assert out.returncode == 0 and out.stdout.strip() == "purged 0 dead task(s) from default"

    # the replayed tasks now succeed, each in the queue it was replayed into
    r.set(FLAG, 1)
    with XQRun(redis_url, app=APP, queues="default,other"):
        # attempt numbers go on across a replay
        assert p.result(a, timeout=30, queue="default") == {"ok": "a", "queue": "default", "attempt": 2}
        assert p.result(b, timeout=30, queue="other") == {"ok": "b", "queue": "other", "attempt": 2}
        assert p.result(c, timeout=30, queue="other") == {"ok": "c", "queue": "other", "attempt": 2}
    assert attempts_seen(r, d) == ["1:default"]  # purged: never ran again
