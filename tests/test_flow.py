"""Flow control end to end: unique tasks, dependencies, groups and callbacks, per-key concurrency, rate
limits.  Real redis-server, real `xq run` (tests/apps/compose.py), two supervisors where it matters."""

from __future__ import annotations

import time

import orjson
import pytest

import xq
from xq.keys import queue_keys
from test_ratelimit import busiest_window
from xqrun import XQRun, wait_for

pytestmark = pytest.mark.topologies("single", "cluster")

APP = "apps.compose:app"
QK = queue_keys("default")


def order(r) -> list[str]:
    return [x.decode() for x in r.lrange("test:order", 0, -1)]


def done(p, tid) -> bool:
    return p.status(tid)["status"] == "done"


# ------------------------------------------------------------------------------------------ unique tasks
def test_unique_key_returns_the_pending_task_until_it_ends(redis_url, r):
    p = xq.Producer(redis_url)
    first = p.enqueue("step", 1, unique_key="resize:42")
    assert p.enqueue("step", 2, unique_key="resize:42") == first
    other = p.enqueue("step", 3, unique_key="resize:43")
    assert other != first
    assert p.status(first)["unique_key"] == "resize:42"
    with XQRun(redis_url, app=APP, procs=1) as w:
        assert p.result(first, timeout=20) == 1, w.output()
        # ended: the key is free again, and a new task takes it
        again = p.enqueue("step", 4, unique_key="resize:42")
        assert again != first
        assert p.result(again, timeout=20) == 4
    assert order(r).count(first) == 1 and not r.exists(QK.unique("resize:42"))


def test_unique_key_is_held_while_scheduled_and_released_by_its_ttl_or_a_cancel(redis_url, r):
    p = xq.Producer(redis_url)
    a = p.enqueue("step", 1, delay=60, unique_key="k", unique_ttl=0.3)
    assert p.enqueue("step", 1, unique_key="k") == a
    time.sleep(0.4)  # the TTL bounds the key even though the task has not ended
    b = p.enqueue("step", 1, delay=60, unique_key="k")
    assert b != a
    assert p.enqueue("step", 1, unique_key="k") == b
    assert p.cancel(b) == "canceled"
    assert p.enqueue("step", 1, unique_key="k") not in (a, b)


def test_unique_key_bad_input(redis_url):
    p = xq.Producer(redis_url)
    with pytest.raises(xq.ConfigError, match="unique_key applies to one task"):
        p.enqueue_many("step", [1, 2], unique_key="k")
    with pytest.raises(xq.ConfigError, match="unique_ttl given without unique_key"):
        p.enqueue("step", 1, unique_ttl=5)
    with pytest.raises(xq.ConfigError, match="invalid unique_ttl"):
        p.enqueue("step", 1, unique_key="k", unique_ttl=0)
    with pytest.raises(xq.ConfigError, match="invalid unique_key"):
        p.enqueue("step", 1, unique_key="")


# ------------------------------------------------------------------------------------------ dependencies
def test_dependency_chain_runs_in_order(redis_url, r):
    p = xq.Producer(redis_url)
    a = p.enqueue("step", {"sleep": 0.3})
    b = p.enqueue("step", "b", depends_on=[a])
    c = p.enqueue("step", "c", depends_on=b)
    assert p.status(b)["status"] == "waiting" and p.status(b)["depends_on"] == [a]
    assert p.status(c)["pending_dependencies"] == 1
    with XQRun(redis_url, app=APP, procs=2) as w:
        assert p.result(c, timeout=20) == "c", w.output()
    assert order(r) == [a, b, c]
    # a dependency that is already done does not hold a new task back
    d = p.enqueue("step", "d", depends_on=[a, c])
    assert p.status(d)["status"] == "queued"


def test_failed_dependency_fails_the_chain_with_a_reason_naming_it(redis_url, r):
    p = xq.Producer(redis_url)
    a = p.enqueue("fail", "a")
    b = p.enqueue("step", "b", depends_on=[a])
    c = p.enqueue("step", "c", depends_on=[b])
    runs = p.enqueue("step", "runs anyway", depends_on=[a], on_dependency_failure="run")
    with XQRun(redis_url, app=APP, procs=1) as w:
        assert p.result(runs, timeout=20) == "runs anyway", w.output()
        wait_for(lambda: p.status(c)["status"] == "dead", 10, what="c to die")
    assert p.status(a)["status"] == "dead"
    assert p.status(b)["reason"] == f"dependency {a} ended dead"
    assert p.status(c)["reason"] == f"dependency {b} ended dead"
    assert {t["id"] for t in p.dead_letters()} == {a, b, c}
    assert order(r) == [runs]
    # a task enqueued after its dependency died is dead at once
    late = p.enqueue("step", "late", depends_on=[a])
    assert p.status(late)["status"] == "dead" and a in p.status(late)["reason"]


def test_canceling_a_waiting_task_fails_its_dependents(redis_url):
    p = xq.Producer(redis_url)
    a = p.enqueue("step", "a", delay=60)
    b = p.enqueue("step", "b", depends_on=[a])
    c = p.enqueue("step", "c", depends_on=[b])
    assert p.cancel(b) == "canceled"
    assert p.status(c)["status"] == "dead" and p.status(c)["reason"] == f"dependency {b} ended canceled"
    assert p.status(a)["status"] == "scheduled"


def test_dependency_bad_input(redis_url):
    p = xq.Producer(redis_url)
    with pytest.raises(xq.UnknownTask, match="NOSUCHID"):
        p.enqueue("step", 1, depends_on=["NOSUCHID"])
    other = p.enqueue("step", 1, queue="other")
    with pytest.raises(xq.ConfigError, match="can only depend on tasks of its own queue"):
        p.enqueue("step", 1, depends_on=[other])
    with pytest.raises(xq.ConfigError, match="on_dependency_failure"):
        p.enqueue("step", 1, depends_on=[other], on_dependency_failure="ignore")
    # nothing was enqueued by the refused calls
    assert p.broker.client.llen(QK.ready[5]) == 0


# ------------------------------------------------------------------------------------------ groups
def test_group_of_10000_fires_its_callback_exactly_once_across_two_supervisors(redis_url, r):
    p = xq.Producer(redis_url)
    n = 10_000
    g = p.group([("stamp", i) for i in range(n)], then=("collect", {"tag": "done"}))
    assert len(g.ids) == n and len(set(g.ids)) == n and g.callback
    assert p.status(g.callback)["status"] == "waiting"
    with XQRun(redis_url, app=APP, procs=1), XQRun(redis_url, app=APP, procs=1):
        assert p.result(g.callback, timeout=120) == n
        time.sleep(0.5)  # a second firing would come right after the first
    calls = [orjson.loads(x) for x in r.lrange("test:callback", 0, -1)]
    assert len(calls) == 1
    assert calls[0]["group"] == g.id and calls[0]["ids"] == g.ids
    assert calls[0]["statuses"] == ["done"] * n and calls[0]["payload"] == {"tag": "done"}
    assert r.llen("test:starts") == n
    st = p.group_status(g)
    assert st["finished"] and st["left"] == 0 and st["total"] == n


def test_group_result_and_a_failing_member(redis_url, r):
    p = xq.Producer(redis_url)
    ok = p.group([("step", 1), ("step", 2), ("step", 3, {"priority": "high"})])
    bad = p.group([("step", 1), ("fail", "x")], then=("collect", None))
    with XQRun(redis_url, app=APP, procs=2) as w:
        assert p.result(ok, timeout=20) == [1, 2, 3], w.output()
        with pytest.raises(xq.TaskFailed, match="fails on purpose"):
            p.result(bad, timeout=20)
        p.result(bad.callback, timeout=20)
    call = orjson.loads(r.lrange("test:callback", 0, -1)[0])
    assert call["statuses"] == ["done", "dead"] and call["payload"] is None


def test_group_bad_input(redis_url):
    p = xq.Producer(redis_url)
    with pytest.raises(xq.ConfigError, match="at least one task"):
        p.group([])
    with pytest.raises(xq.ConfigError, match="member #1"):
        p.group([("step", 1), "step"])
    with pytest.raises(xq.ConfigError, match="goes to queue 'other'"):
        p.group([("step", 1), ("step", 2, {"queue": "other"})])


# ------------------------------------------------------------------------------------------ concurrency
def test_max_concurrency_holds_across_two_supervisors_while_other_keys_flow(redis_url, r):
    p = xq.Producer(redis_url)
    capped = p.enqueue_many("slot", [{"key": "user:1", "sleep": 0.05}] * 50, concurrency_key="user:1",
                            max_concurrency=3)
    free = p.enqueue_many("slot", [{"key": "free", "sleep": 0.0}] * 20)
    with XQRun(redis_url, app=APP, procs=2), XQRun(redis_url, app=APP, procs=2):
        wait_for(lambda: all(done(p, t) for t in free), 30, what="the other key's tasks")
        # the capped key's backlog did not hold the others back: some of it was still to run
        assert r.llen("test:seen:user:1") < 50
        wait_for(lambda: all(done(p, t) for t in capped), 60, what="the capped tasks")
    seen = [int(x) for x in r.lrange("test:seen:user:1", 0, -1)]
    assert len(seen) == 50 and max(seen) <= 3
    assert max(seen) >= 2  # they did run side by side (4 children)
    assert r.zcard(QK.slots("user:1")) == 0 and r.llen(QK.parked("user:1")) == 0


def test_a_sigkilled_holders_slot_comes_back_after_its_lease(redis_url, r):
    p = xq.Producer(redis_url)
    first = p.enqueue("hold", 60, concurrency_key="gpu", max_concurrency=1, max_retries=0)
    w = XQRun(redis_url, "--lease", "1", app=APP, procs=1)
    try:
        wait_for(lambda: order(r) == [first], 20, what="the holder to start")
        second = p.enqueue("step", "second", concurrency_key="gpu", max_concurrency=1)
        w.kill()  # the supervisor, and with it (PDEATHSIG) its child
    finally:
        w.close()
    assert r.zcard(QK.slots("gpu")) == 1  # the dead holder's token, until its lease runs out
    with XQRun(redis_url, "--lease", "1", app=APP, procs=2):
        # the lease runs out, the lost attempt (its last) frees the slot, and the parked task runs
        assert p.result(second, timeout=30) == "second"
    st = p.status(first)
    assert st["status"] == "dead" and st["history"][-1]["outcome"] == "lost"
    assert order(r) == [first, second]
    assert r.zcard(QK.slots("gpu")) == 0


def test_concurrency_bad_input(redis_url):
    p = xq.Producer(redis_url)
    with pytest.raises(xq.ConfigError, match="invalid max_concurrency 0"):
        p.enqueue("step", 1, concurrency_key="k", max_concurrency=0)
    with pytest.raises(xq.ConfigError, match="together"):
        p.enqueue("step", 1, concurrency_key="k")


# ------------------------------------------------------------------------------------------ rate limits
def _claims_ms(r, ids) -> list[int]:
    """The instants (Redis TIME, ms) the tasks were claimed, i.e. started, in order."""
    return sorted(int(r.hget(QK.task(t), "claimed")) for t in ids)


def test_rate_limit_per_key_holds_per_period_and_defers_the_rest(redis_url, r):
    p = xq.Producer(redis_url)
    ids = p.enqueue_many("stamp", [None] * 12, rate_key="api", rate_limit="4/s")
    other = p.enqueue_many("stamp", [None] * 5)
    with XQRun(redis_url, app=APP, procs=2), XQRun(redis_url, app=APP, procs=1):
        wait_for(lambda: all(done(p, t) for t in other), 10, what="unlimited tasks")
        assert not all(done(p, t) for t in ids)  # deferred, not run, not failed
        assert any(p.status(t)["status"] == "scheduled" for t in ids)
        wait_for(lambda: all(done(p, t) for t in ids), 30, what="the rate-limited tasks")
    starts = _claims_ms(r, ids)
    assert busiest_window(starts, 1000) <= 4, starts  # in any window of a second, not only fixed ones
    assert starts[-1] - starts[0] >= 2000  # 12 starts at 4/s: the 9th is two periods after the first
    assert all(p.status(t)["attempts"] == 1 for t in ids)


def test_rate_limit_per_task_name(redis_url, r):
    p = xq.Producer(redis_url)
    ids = p.enqueue_many("named_rate", [None] * 10)
    with XQRun(redis_url, app=APP, procs=2):
        wait_for(lambda: all(done(p, t) for t in ids), 30, what="the rate-limited tasks")
    starts = _claims_ms(r, ids)
    assert busiest_window(starts, 1000) <= 4, starts
    assert starts[-1] - starts[0] >= 2000


def test_rate_limit_bad_input(redis_url):
    p = xq.Producer(redis_url)
    for bad, what in (("0/s", "at least 1"), ("5/d", "expected N/s"), ("fast", "expected N/s")):
        with pytest.raises(xq.ConfigError, match=what):
            p.enqueue("step", 1, rate_key="k", rate_limit=bad)
    app = xq.App()
    with pytest.raises(xq.ConfigError, match="rate_limit of task 'x'"):
        app.task("x", rate_limit="0/m")(lambda p: p)


# ------------------------------------------------------------------------------------------ the CLI
def _cli(redis_url, *args):
    import os
    import subprocess
    import sys

    from xqrun import TESTS
    return subprocess.run([sys.executable, "-m", "xq.cli", *args, "--redis", redis_url], cwd=TESTS,
                          env={**os.environ, "XQ_TEST_REDIS": redis_url}, capture_output=True, text=True,
                          timeout=60)


def test_cli_enqueue_with_flow_options_and_events_until_done(redis_url, r):
    p = xq.Producer(redis_url)
    a = _cli(redis_url, "enqueue", "step", '"a"', "--unique-key", "one").stdout.strip()
    assert _cli(redis_url, "enqueue", "step", '"again"', "--unique-key", "one").stdout.strip() == a
    b = _cli(redis_url, "enqueue", "step", '"b"', "--depends-on", a, "--concurrency-key", "k",
             "--max-concurrency", "1").stdout.strip()
    assert p.status(b)["status"] == "waiting" and p.status(b)["limits"] == {"ck": "k", "cm": 1}
    bad = _cli(redis_url, "enqueue", "step", "1", "--rate-key", "k", "--rate-limit", "0/s")
    assert bad.returncode == 2 and "invalid --rate-limit '0/s'" in bad.stderr  # a bad option: usage error
    with XQRun(redis_url, app=APP, procs=1):
        out = _cli(redis_url, "events", "--id", a, "--id", b, "--until-done", "--timeout", "30")
    assert out.returncode == 0, out.stderr
    seen = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert {e["id"] for e in seen if e["state"] == "done"} == {a, b}
