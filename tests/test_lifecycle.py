"""Task lifecycle end to end: retries and backoff, attempt history, delayed tasks, timeouts, expiry,
cancellation, priorities and weights, events.  Real redis-server, real `xq run` (tests/apps/life.py)."""

from __future__ import annotations

import datetime as dt
import threading
import time

import orjson
import pytest
import xq
from xq.keys import queue_keys
from helpers import client_of
from xqrun import XQRun, wait_for

pytestmark = pytest.mark.topologies("single", "cluster")

APP = "apps.life:app"


def ran(r, what="ran") -> list[str]:
    return [x.decode() for x in r.lrange(f"test:{what}", 0, -1)]


def attempts_of(r, tid, what="ran") -> list[int]:
    return [int(x.split(":")[1]) for x in ran(r, what) if x.split(":")[0] == tid]


class Events:
    """Collects the events of a queue's channel in a thread (subscription confirmed before returning)."""

    def __init__(self, url: str, queue: str = "default"):
        self.client = client_of(url)
        self.ps = self.client.pubsub(ignore_subscribe_messages=False)
        self.ps.subscribe(queue_keys(queue).events)
        wait_for(lambda: (m := self.ps.get_message(timeout=0.1)) and m["type"] == "subscribe", 5, what="subscribe")
        self.events: list[dict] = []
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop:
            m = self.ps.get_message(timeout=0.1)
            if m and m["type"] == "message":
                self.events.extend(orjson.loads(m["data"]))

    def states(self, tid: str) -> list[str]:
        return [e["state"] for e in self.events if e["id"] == tid]

    def close(self):
        self.stop = True
        self.t.join(5)
        self.ps.close()
        self.client.close()


@pytest.fixture
def events(redis_url):
    ev = Events(redis_url)
    yield ev
    ev.close()


# ---------------------------------------------------------------------------------------------- retries
@pytest.mark.parametrize("pure", [pytest.param(False, id="cython"), pytest.param(True, id="pure")])
def test_retries_with_backoff_then_success_and_history(redis_url, r, events, pure):
    p = xq.Producer(redis_url)
    tid = p.enqueue("flaky", {"ok_at": 3})
    with XQRun(redis_url, app=APP, pure=pure) as w:
        assert p.result(tid, timeout=30) == 3, w.output()
    st = p.status(tid)
    assert st["status"] == "done" and st["attempts"] == 3
    h = st["history"]
    assert [a["attempt"] for a in h] == [1, 2, 3]
    assert [a["outcome"] for a in h] == ["failed", "failed", "done"]
    assert h[0]["error"] == "ConnectionError: flaky attempt 1" and "Traceback" in h[0]["traceback"]
    assert all(a["worker"] and a["started_at"] <= a["finished_at"] for a in h)
    # the backoff list [0.05, 0.1]: each retry waited at least its delay after the failure
    assert h[1]["started_at"] - h[0]["finished_at"] >= 0.04
    assert h[2]["started_at"] - h[1]["finished_at"] >= 0.09
    wait_for(lambda: "done" in events.states(tid), 5, what="done event")
    assert events.states(tid) == ["queued", "running", "retrying", "queued", "running", "retrying", "queued",
                                  "running", "done"]
    nxt = [e for e in events.events if e["id"] == tid and e["state"] == "retrying"]
    assert all("next" in e and e["next"] >= e["ts"] for e in nxt)


def test_retrying_status_shows_next_attempt(redis_url, r):
    p = xq.Producer(redis_url)
    tid = p.enqueue("backoff_slow", None)
    with XQRun(redis_url, app=APP):
        st = wait_for(lambda: (s := p.status(tid))["status"] == "retrying" and s, 20, what="retrying")
        assert st["next_attempt_at"] is not None
        assert 2.0 < st["next_attempt_at"] - st["history"][0]["finished_at"] < 4.0
        assert st["error"].startswith("ValueError: first attempt fails")
        assert r.zscore(queue_keys("default").sched, tid) is not None
        st = wait_for(lambda: (s := p.status(tid))["status"] == "dead" and s, 20, what="dead")
    assert st["attempts"] == 2 and st["reason"] == "failed on the last of 2 attempts"
    assert attempts_of(r, tid) == [1, 2]


def test_exhausted_retries_go_to_the_dead_letter_set(redis_url, r, events):
    p = xq.Producer(redis_url)
    tid = p.enqueue("flaky", {"ok_at": 99}, max_retries=1)  # enqueue's max_retries wins over the task's 3
    with XQRun(redis_url, app=APP, burst=True) as w:
        assert w.wait(60) == 0, w.output()
    st = p.status(tid)
    assert st["status"] == "dead" and st["attempts"] == 2 and st["dead_at"]
    assert [t["id"] for t in p.dead_letters("default")] == [tid]
    with pytest.raises(xq.TaskFailed) as ei:
        p.result(tid, timeout=1)
    assert ei.value.state == "dead" and "flaky attempt 2" in ei.value.error
    assert r.ttl(queue_keys("default").task(tid)) == -1  # dead letters do not expire
    wait_for(lambda: "dead" in events.states(tid), 5, what="dead event")
    dead_ev = [e for e in events.events if e["id"] == tid and e["state"] == "dead"][0]
    assert dead_ev["reason"] == "failed on the last of 2 attempts"


def test_retry_request_non_retryable_and_retry_on(redis_url, r):
    p = xq.Producer(redis_url)
    asked = p.enqueue("ask_retry", None)
    gave_up = p.enqueue("give_up", None)
    conn = p.enqueue("picky", "conn")
    other = p.enqueue("picky", "key")
    with XQRun(redis_url, app=APP, burst=True) as w:
        assert w.wait(60) == 0, w.output()
    st = p.status(asked)
    assert st["status"] == "done" and st["attempts"] == 2
    assert st["history"][1]["started_at"] - st["history"][0]["finished_at"] >= 0.19  # Retry(delay=0.2)
    st = p.status(gave_up)
    assert st["status"] == "dead" and st["attempts"] == 1 and st["reason"] == "failed, not retried"
    assert "NonRetryable: this input can never work" in st["error"]
    assert p.status(conn)["status"] == "dead" and p.status(conn)["attempts"] == 4   # ConnectionError: retried
    assert p.status(other)["status"] == "dead" and p.status(other)["attempts"] == 1  # KeyError: not in retry_on


def test_retries_configured_on_a_producer_without_the_app(redis_url, r):
    # max_retries of @app.task reaches the scripts from the child even when the record has none
    p = xq.Producer(redis_url)
    tid = p.enqueue("picky", "conn")
    assert r.hget(queue_keys("default").task(tid), "maxr") is None
    with XQRun(redis_url, app=APP, burst=True) as w:
        assert w.wait(60) == 0, w.output()
    assert attempts_of(r, tid) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------- delays
def test_delayed_and_eta_tasks_are_scheduled_then_run_on_time(redis_url, r, events):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app=APP):
        time.sleep(0.5)  # idle: the supervisor waits on its wake-up marker
        t0 = time.time()
        late = p.enqueue("count", 1, delay=1.5)
        soon = p.enqueue("count", 2, eta=dt.datetime.fromtimestamp(t0 + 0.6))
        st = p.status(late)
        assert st["status"] == "scheduled" and st["eta"] == pytest.approx(t0 + 1.5, abs=0.3)
        assert p.status(soon)["status"] == "scheduled"
        assert p.result(soon, timeout=10) == 2
        assert p.result(late, timeout=10) == 1
    s1, s2 = p.status(soon)["started_at"], p.status(late)["started_at"]
    # an earlier task enqueued after a later one still runs first, on time (the idle supervisor was woken
    # to shorten its sleep)
    assert t0 + 0.55 <= s1 <= t0 + 0.6 + 0.5
    assert t0 + 1.45 <= s2 <= t0 + 1.5 + 0.5
    assert events.states(soon)[:2] == ["scheduled", "queued"]


def test_delay_zero_and_past_eta_run_now_and_bad_timing_is_rejected(redis_url, r):
    p = xq.Producer(redis_url)
    a = p.enqueue("count", 1, delay=0)
    b = p.enqueue("count", 2, eta=time.time() - 5)
    assert p.status(a)["status"] == "queued" and p.status(b)["status"] == "queued"
    with pytest.raises(xq.ConfigError, match="invalid delay -1"):
        p.enqueue("count", 1, delay=-1)
    with pytest.raises(xq.ConfigError, match="in the past"):
        p.enqueue("count", 1, eta=dt.datetime(2001, 1, 1))
    with pytest.raises(xq.ConfigError, match="not both"):
        p.enqueue("count", 1, delay=1, eta=time.time() + 1)
    with pytest.raises(xq.ConfigError, match="invalid priority 10"):
        p.enqueue("count", 1, priority=10)
    with pytest.raises(xq.ConfigError, match="invalid timeout 0"):
        p.enqueue("count", 1, timeout=0)
    with pytest.raises(xq.ConfigError, match="expires .* is in the past"):
        p.enqueue("count", 1, expires=dt.datetime(2001, 1, 1))
    assert r.llen(queue_keys("default").ready[5]) == 2  # the rejected ones enqueued nothing


def test_two_supervisors_move_each_due_task_once(redis_url, r):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app=APP) as a, XQRun(redis_url, app=APP) as b:
        time.sleep(0.5)
        due = time.time() + 1.0
        ids = []
        for k in range(10):
            ids += p.enqueue_many("count", list(range(50)), eta=due + k * 0.05)
        wait_for(lambda: r.hlen("test:execs") == 500, 30, what="500 delayed tasks to run")
        time.sleep(0.3)
        assert a.proc.poll() is None and b.proc.poll() is None
    counts = {k.decode(): int(v) for k, v in r.hgetall("test:execs").items()}
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    assert r.zcard(queue_keys("default").sched) == 0


# ---------------------------------------------------------------------------------------------- timeouts and expiry
def test_timeout_kills_a_child_stuck_in_c_code_and_retries(redis_url, r, events):
    p = xq.Producer(redis_url)
    tid = p.enqueue("spin_c", None)
    fine = p.enqueue("count", 7)
    with XQRun(redis_url, "--kill-grace", "1", app=APP, procs=1) as w:
        st = wait_for(lambda: (s := p.status(tid))["status"] == "dead" and s, 30, what="spin_c to die")
        assert p.result(fine, timeout=10) == 7  # the respawned child goes on
        log = w.output()
    assert st["attempts"] == 2 and st["reason"] == "timed out after 1 s on the last of 2 attempts"
    assert [h["outcome"] for h in st["history"]] == ["timeout", "timeout"]
    assert "ran longer than its timeout of 1 s" in st["error"]
    assert "timeout" in log
    for h in st["history"]:
        assert 0.9 <= h["finished_at"] - h["started_at"] < 5
    assert "retrying" in events.states(tid)


def test_enqueue_timeout_overrides_and_sleep_is_stopped(redis_url, r):
    p = xq.Producer(redis_url)
    tid = p.enqueue("sleep_to", {"s": 60}, timeout=0.5, max_retries=0)
    ok = p.enqueue("sleep_to", {"s": 0.1}, timeout=5)
    with XQRun(redis_url, app=APP, procs=1) as w:
        st = wait_for(lambda: (s := p.status(tid))["status"] == "dead" and s, 30, what="timeout")
        assert p.result(ok, timeout=20) == "slept", w.output()
    assert st["timeout"] == 0.5 and st["history"][0]["outcome"] == "timeout"


def test_expired_tasks_never_run(redis_url, r, events):
    p = xq.Producer(redis_url)
    gone = p.enqueue("count", 1, expires=0.2)
    at = p.enqueue("count", 2, expires=dt.datetime.now() + dt.timedelta(seconds=0.2))
    kept = p.enqueue("count", 3, expires=60)
    assert p.status(gone)["expires_at"] is not None
    time.sleep(0.5)
    with XQRun(redis_url, app=APP, burst=True) as w:
        assert w.wait(60) == 0
    assert p.status(gone)["status"] == "expired" and p.status(at)["status"] == "expired"
    assert p.status(kept)["status"] == "done"
    assert set(r.hgetall("test:execs")) == {kept.encode()}
    with pytest.raises(xq.TaskFailed, match="expired"):
        p.result(gone, timeout=1)
    assert events.states(gone)[-1] == "expired"


# ---------------------------------------------------------------------------------------------- cancellation
def test_cancel_queued_and_scheduled_tasks(redis_url, r, events):
    p = xq.Producer(redis_url)
    queued = p.enqueue("count", 1)
    sched = p.enqueue("count", 2, delay=0.5)
    keep = p.enqueue("count", 3)
    assert p.cancel(queued) == "canceled" and p.cancel(sched) == "canceled"
    assert p.cancel(queued) == "finished"  # canceling twice is a no-op
    with pytest.raises(xq.UnknownTask, match="no task with id"):
        p.cancel("NOSUCHTASKID")
    time.sleep(0.7)
    with XQRun(redis_url, app=APP, burst=True) as w:
        assert w.wait(60) == 0
        log = w.output()
    assert set(r.hgetall("test:execs")) == {keep.encode()}
    assert p.status(queued)["status"] == "canceled" and p.status(sched)["status"] == "canceled"
    assert "stale queue entry" not in log  # a canceled task's list entry is dropped quietly
    assert p.cancel(keep) == "finished"
    assert events.states(queued)[-1] == "canceled"


@pytest.mark.parametrize("pure", [pytest.param(False, id="cython"), pytest.param(True, id="pure")])
def test_cancel_running_task_raises_cancelled_in_the_handler(redis_url, r, events, pure):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app=APP, procs=1, pure=pure) as w:
        tid = p.enqueue("cancellable", None)
        wait_for(lambda: ran(r), 20, what="handler to start")
        assert p.cancel(tid) == "canceling"
        st = wait_for(lambda: (s := p.status(tid))["status"] == "canceled" and s, 20, what="canceled")
        assert ran(r, "cleaned") == [f"{tid}:1"]  # the handler saw xq.Cancelled and cleaned up
        after = p.enqueue("count", 5)
        assert p.result(after, timeout=10) == 5, w.output()
    assert st["history"][-1]["outcome"] == "canceled"
    with pytest.raises(xq.TaskFailed, match="canceled"):
        p.result(tid, timeout=1)
    assert "canceled" in events.states(tid)


def test_cancel_running_task_stuck_in_c_kills_its_child(redis_url, r):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, "--kill-grace", "1", app=APP, procs=1) as w:
        tid = p.enqueue("stubborn", None)
        wait_for(lambda: ran(r), 20, what="handler to start")
        pid_before = [c.pid for c in w.children()]
        assert p.cancel(tid) == "canceling"
        wait_for(lambda: p.status(tid)["status"] == "canceled", 20, what="canceled")
        assert p.result(p.enqueue("count", 1), timeout=20) == 1
        assert [c.pid for c in w.children()] != pid_before  # killed and respawned
    assert attempts_of(r, tid) == [1]  # never retried


def test_cancel_reaches_a_task_on_another_supervisor(redis_url, r):
    # two supervisors of one child each: the two tasks running at once run on different machines, and the
    # producer does not know which; the cancel reaches each through the control channel
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app=APP, procs=1), XQRun(redis_url, app=APP, procs=1):
        tids = p.enqueue_many("cancellable", [None] * 4)
        wait_for(lambda: len(ran(r)) == 2, 20, what="two to start")
        running = [t for t in tids if p.status(t)["status"] == "running" and attempts_of(r, t)]  # handler began
        assert len({p.status(t)["worker"] for t in running}) == 2
        for t in tids:
            assert p.cancel(t) in ("canceling", "canceled")
        for t in tids:
            wait_for(lambda: p.status(t)["status"] == "canceled", 20, what="canceled")
    # every handler that started (the two running at the cancel, and any a child started before its own
    # cancel arrived) saw xq.Cancelled (one interrupted before its "ran" mark was sent shows "cleaned" only)
    assert set(ran(r)) <= set(ran(r, "cleaned"))
    assert set(f"{t}:1" for t in running) <= set(ran(r, "cleaned"))


def test_cancel_of_claimed_but_not_started_task(redis_url, r):
    # one child busy with a long task: the next task is claimed (running in Redis) but waits in the
    # supervisor's buffer or the child's ring; canceled there, it never starts
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app=APP, procs=1):
        first = p.enqueue("sleep_to", {"s": 1.5})
        wait_for(lambda: ran(r), 20, what="first to start")
        waiting = p.enqueue_many("count", [1, 2])
        wait_for(lambda: p.status(waiting[0])["status"] == "running", 10, what="claimed")
        assert p.cancel(waiting[0]) == "canceling"
        wait_for(lambda: p.status(waiting[0])["status"] == "canceled", 10, what="canceled")
        assert p.result(waiting[1], timeout=20) == 2
        assert p.result(first, timeout=20) == "slept"
    assert set(r.hgetall("test:execs")) == {waiting[1].encode()}


# ---------------------------------------------------------------------------------------------- priorities
def test_strict_priority_order_across_a_mixed_backlog(redis_url, r):
    p = xq.Producer(redis_url)
    expected = []
    for prio, name in ((9, None), (5, "normal"), (0, "critical"), (8, "low"), (2, "high")):
        tag = f"p{prio}"
        p.enqueue_many("order", [f"{tag}-{i}" for i in range(20)], priority=name if name else prio)
    for prio in (0, 2, 5, 8, 9):
        expected += [f"p{prio}-{i}" for i in range(20)]
    with XQRun(redis_url, app=APP, procs=1, burst=True) as w:
        assert w.wait(60) == 0
    got = [x.decode() for x in r.lrange("test:order", 0, -1)]
    assert got == expected


def test_queue_order_and_weights(redis_url, r):
    p = xq.Producer(redis_url)
    p.enqueue_many("order", [f"d{i}" for i in range(300)])
    p.enqueue_many("other_order", [f"o{i}" for i in range(300)], queue="other")
    # strict: the first queue drains before the second
    with XQRun(redis_url, app=APP, procs=1, burst=True, queues="other,default") as w:
        assert w.wait(60) == 0
    got = [x.decode() for x in r.lrange("test:order", 0, -1)]
    assert got[:300] == [f"o{i}" for i in range(300)]
    r.delete("test:order")
    n = 3000
    p.enqueue_many("order", [f"d{i}" for i in range(n)])
    p.enqueue_many("other_order", [f"o{i}" for i in range(n)], queue="other")
    # weighted 1:1: every claim takes from both queues, so the first half of the work mixes them instead of
    # draining one first (within one claim's batch the queues run in --queues order, so the mix is per
    # batch, not per task)
    with XQRun(redis_url, app=APP, procs=1, burst=True, queues="other:1,default:1") as w:
        assert w.wait(60) == 0
    got = [x.decode() for x in r.lrange("test:order", 0, -1)]
    n_other = sum(1 for x in got[:n] if x.startswith("o"))
    assert 0.25 * n <= n_other <= 0.75 * n, n_other
    assert sorted(got) == sorted([f"d{i}" for i in range(n)] + [f"o{i}" for i in range(n)])


def test_bad_queue_weights_are_rejected(redis_url):
    import subprocess
    import sys

    from xqrun import TESTS
    for spec, msg in (("a:0,b:1", "invalid weight"), ("a:1,b", "every queue a weight or none"),
                      ("a,a", "listed twice")):
        out = subprocess.run([sys.executable, "-m", "xq.cli", "run", APP, "--redis", redis_url, "--queues", spec],
                             cwd=TESTS, capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and msg in out.stderr, out.stderr


def test_cli_enqueue_with_delay_and_cancel(redis_url, r):
    import subprocess
    import sys

    from xqrun import TESTS

    def xq_cli(*args):
        return subprocess.run([sys.executable, "-m", "xq.cli", *args, "--redis", redis_url], cwd=TESTS,
                              capture_output=True, text=True, timeout=30)

    out = xq_cli("enqueue", "count", "41", "--delay", "30", "--max-retries", "1", "--timeout", "5")
    assert out.returncode == 0, out.stderr
    tid = out.stdout.strip()
    st = xq.Producer(redis_url).status(tid)
    assert st["status"] == "scheduled" and st["timeout"] == 5.0 and st["max_retries"] == 1
    out = xq_cli("cancel", tid)
    assert out.returncode == 0 and out.stdout.strip() == "canceled"
    assert xq_cli("cancel", tid).stdout.strip() == "finished"
    out = xq_cli("cancel", "NOSUCHID")
    assert out.returncode == 1 and "no task with id 'NOSUCHID'" in out.stderr
    out = xq_cli("enqueue", "count", "1", "--delay", "-2")
    assert out.returncode == 2 and "invalid --delay -2" in out.stderr  # a bad option: usage error


def test_processor_class_lifecycle_options():
    app = xq.App()

    @app.task("proc")
    class P(xq.Processor):
        max_retries = 1
        retry_on = (KeyError,)
        backoff = [2, 4]
        timeout = 9
        expires = 60

        def process(self, payload):
            return payload

    spec = app.tasks["proc"]
    assert (spec.max_retries, spec.retry_on, spec.backoff.delays, spec.timeout, spec.expires) == \
        (1, (KeyError,), [2.0, 4.0], 9.0, 60.0)
    with pytest.raises(xq.ConfigError, match="retry_on of task 'x' must be exception classes"):
        app.task("x", retry_on=(int,))(lambda p: p)
    with pytest.raises(xq.ConfigError, match="invalid backoff base -1"):
        app.task("y", backoff=xq.Backoff(base=-1))(lambda p: p)
    with pytest.raises(xq.ConfigError, match="invalid timeout of task 'z'"):
        app.task("z", timeout=-3)(lambda p: p)


def test_backoff_delays():
    b = xq.Backoff(base=1, cap=10, jitter=False)
    assert [b.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    lo = xq.Backoff(base=4, cap=100, rng=lambda: 0.0)
    hi = xq.Backoff(base=4, cap=100, rng=lambda: 0.999999)
    assert lo.delay(3) == 8.0 and hi.delay(3) == pytest.approx(16.0, abs=1e-4)  # equal jitter: [d/2, d]
    assert xq.Delays([1, 5]).delay(1) == 1 and xq.Delays([1, 5]).delay(7) == 5


def test_level_weights_keep_low_levels_from_starving(redis_url, r):
    p = xq.Producer(redis_url)
    p.enqueue_many("order", [f"hi{i}" for i in range(1200)], priority=0)
    p.enqueue_many("order", [f"lo{i}" for i in range(400)], priority=9)
    with XQRun(redis_url, "--level-weights", "3,0,0,0,0,0,0,0,0,1", app=APP, procs=1, burst=True,
               queues="default") as w:
        assert w.wait(60) == 0, w.output()
    got = [x.decode() for x in r.lrange("test:order", 0, -1)]
    # strict order would run every hi first; with weights 3:1 about a quarter of every claim, whatever its
    # size (claims here grow from 2 to hundreds), is lo while both have a backlog: ~400 before the last hi
    last_hi = max(i for i, x in enumerate(got) if x.startswith("hi"))
    n_low = sum(1 for x in got[:last_hi] if x.startswith("lo"))
    assert n_low >= 250, n_low
    assert [x for x in got if x.startswith("hi")] == [f"hi{i}" for i in range(1200)]  # FIFO within a level
    assert [x for x in got if x.startswith("lo")] == [f"lo{i}" for i in range(400)]


def test_bad_level_weights_are_rejected(redis_url):
    import subprocess
    import sys

    from xqrun import TESTS
    for spec in ("1,2,3", "0,0,0,0,0,0,0,0,0,0", "a,1,1,1,1,1,1,1,1,1"):
        out = subprocess.run([sys.executable, "-m", "xq.cli", "run", APP, "--redis", redis_url,
                              "--level-weights", spec], cwd=TESTS, capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and "invalid --level-weights" in out.stderr, out.stderr


def test_scheduled_lists_delayed_and_retrying_tasks_soonest_first(redis_url, r):
    p = xq.Producer(redis_url)
    later = p.enqueue("count", 1, delay=60)
    sooner = p.enqueue("count", 2, delay=30)
    page = p.scheduled("default")
    assert [t["id"] for t in page] == [sooner, later] and {t["status"] for t in page} == {"scheduled"}
    assert [t["id"] for t in p.scheduled("default", offset=1, limit=1)] == [later]
    with pytest.raises(xq.ConfigError, match="invalid limit 0"):
        p.scheduled("default", limit=0)
    assert p.scheduled("nothing-here") == []


# ---------------------------------------------------------------------- expiry, retries and replays together
def test_expiry_limits_the_queue_wait_only_a_started_task_is_retried_past_it(redis_url, r):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app=APP) as w:
        assert p.result(p.enqueue("count", 0), timeout=20) == 0  # up and claiming
        tid = p.enqueue("fail_once_slowly", None, expires=0.3)
        assert p.result(tid, timeout=20) == "second attempt", w.output()
    assert attempts_of(r, tid) == [1, 2]


def test_a_replayed_task_starts_afresh_past_its_old_expiry(redis_url, r):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app=APP) as w:
        assert p.result(p.enqueue("count", 0), timeout=20) == 0  # up and claiming
        tid = p.enqueue("nonretryable", None, expires=0.3)
        wait_for(lambda: p.status(tid)["status"] == "dead", 20, what="dead")
        time.sleep(0.4)  # its expiry has passed
        assert p.replay("default", [tid]) == [tid]
        wait_for(lambda: attempts_of(r, tid) == [1, 2], 20, what="the replay to run: " + w.output())
        wait_for(lambda: p.status(tid)["status"] == "dead", 20, what="dead again")
    st = p.status(tid)
    assert st["replays"] == 1 and st["expires_at"] is None


def test_an_explicit_max_retries_wins_over_the_tasks_own_even_when_it_is_the_default(redis_url, r):
    p = xq.Producer(redis_url)
    tid = p.enqueue("always_fails", None, max_retries=3)  # the task's own is 5
    with XQRun(redis_url, app=APP) as w:
        wait_for(lambda: p.status(tid)["status"] == "dead", 20, what="dead: " + w.output())
    assert attempts_of(r, tid) == [1, 2, 3, 4]
    assert p.status(tid)["max_retries"] == 3


def test_a_failure_reported_by_a_worker_that_lost_the_task_changes_nothing(redis_url, r):
    # worker A's lease ran out and worker B claimed the task; A's late failure report must neither
    # schedule a retry nor drop B's lease
    from xq.broker import Broker
    b = Broker(redis_url)
    qk = queue_keys("default")
    p = xq.Producer(redis_url)
    tid = p.enqueue("count", 1)
    keys, tail = Broker.claim_keys([qk]), Broker.claim_tail([qk])
    tasks = b.run("claim", keys, [1, "worker-B", 30000, 1 << 20, 60, *tail])[0]
    assert tasks[1] == tid.encode()
    b.run("complete", [qk.leases, qk.sched, qk.dead],
          [qk.task_prefix, qk.events, 60, "", "default", "worker-A", tid, 1, "retry", "late", "0,3", 1, 2])
    st = p.status(tid)
    assert st["status"] == "running" and st["worker"] == "worker-B" and st["history"][0]["outcome"] == "running"
    assert b.lease_score(qk, tid) is not None
    b.close()


def test_level_weights_share_even_claims_of_one_task(redis_url, r):
    # a slow handler makes every claim one task long; rounding each level's share up would give every such
    # claim to the highest level and starve the rest
    from xq.broker import Broker
    b = Broker(redis_url)
    qk = queue_keys("default")
    p = xq.Producer(redis_url)
    p.enqueue_many("order", ["hi"] * 300, priority=0)
    p.enqueue_many("order", ["lo"] * 300, priority=9)
    keys, tail = Broker.claim_keys([qk]), Broker.claim_tail([qk], level_weights=[3, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    names = []
    for _ in range(200):
        tasks = b.run("claim", keys, [1, "w", 30000, 1 << 20, 60, *tail])[0]
        names.append(r.hget(qk.task(tasks[1].decode()), "payload"))
        time.sleep(0.001)  # claims in different milliseconds, as a slow handler's are
    assert 25 <= names.count(b'"lo"') <= 75, names.count(b'"lo"')  # a quarter of 200, give or take 4 sd
    b.close()
