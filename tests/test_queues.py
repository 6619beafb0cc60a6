"""`xq queues`, `xq queue show` and `xq tasks` (issue 11), end to end: a real `xq run` puts tasks into
every state (running via a slow handler, retrying via a failing one, dead), then the queue is paused so
ready tasks at several priorities, a delayed one and a waiting one (depends_on the running task) stay
put; the inspection must count and list each of them.  Handlers are in tests/apps/basic.py.
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
from helpers import evalsha_calls
from xqrun import TESTS, XQRun, wait_for

pytestmark = pytest.mark.topologies("single", "cluster")


def cli(redis_url, *args):
    env = {**os.environ, "XQ_TEST_REDIS": redis_url}
    return subprocess.run([sys.executable, "-m", "xq.cli", *args, "--redis", redis_url], cwd=TESTS, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def fleet(redis_url, r):
    """A queue with tasks in every listable state; yields (producer, ids by state)."""
    p = xq.Producer(redis_url)
    with XQRun(redis_url, procs=2) as w:
        slow = p.enqueue("sleep", {"s": 20})
        wait_for(lambda: r.lrange("test:started", 0, -1) == [slow.encode()], what="the slow task to start")
        dead = p.enqueue("boom", 1)
        retrying = p.enqueue("boom", 2, max_retries=50)
        wait_for(lambda: p.status(dead)["status"] == "dead", what="the dead task")
        wait_for(lambda: p.status(retrying)["status"] == "retrying", what="the retrying task")
        assert p.pause_queue("default")
        # an attempt running at the pause ends in retrying too; paused, its retry stays in sched
        wait_for(lambda: p.status(retrying)["status"] == "retrying", what="the retrying task, paused")
        ready = {0: p.enqueue_many("count", [1, 2], priority=0), 5: p.enqueue_many("count", [3, 4, 5]),
                 9: [p.enqueue("count", 6, priority=9)]}
        delayed = [p.enqueue("echo", i, delay=600) for i in range(3)]
        waiting = p.enqueue("echo", "after", depends_on=[slow])
        time.sleep(0.05)  # the oldest ready task is at least this old
        yield p, {"running": [slow], "dead": [dead], "retrying": [retrying], "ready": ready,
                  "scheduled": delayed, "waiting": [waiting]}
        w.kill()
    p.close()


def test_queue_counts_every_state_in_one_round_trip(fleet, redis_url, r):
    p, ids = fleet
    calls = lambda: evalsha_calls(r)  # noqa: E731
    with Inspector(redis_url) as i:
        i.queue("default")  # loads the script
        before = calls()
        q = i.queue("default")
        assert calls() == before + 1  # all of it is one EVALSHA
    assert q["paused"] is True and q["paused_since"] > time.time() - 60
    assert q["ready"] == 6 and q["ready_by_priority"] == {"0": 2, "1": 0, "2": 0, "3": 0, "4": 0, "5": 3,
                                                          "6": 0, "7": 0, "8": 0, "9": 1}
    assert (q["scheduled"], q["retrying"], q["running"], q["waiting"], q["dead"]) == (3, 1, 1, 1, 1)
    assert q["sched_split_exact"] and q["waiting_exact"]
    # latency: the head of the priority-0 list, the first enqueued of the ready tasks
    assert q["oldest_ready_id"] == ids["ready"][0][0]
    enq = p.status(ids["ready"][0][0])["enqueued_at"]
    assert 0.05 <= q["latency"] <= time.time() - enq + 1.0
    by = Inspector(redis_url).queue("default", by_name=True)["by_name"]
    assert by["count"]["queued"] == 6 and by["echo"] == {"queued": 0, "scheduled": 3, "retrying": 0,
                                                         "running": 0, "waiting": 1, "dead": 0, "done_1m": 0,
                                                         "failed_1m": 0, "done_1h": 0, "failed_1h": 0}
    assert by["boom"]["dead"] == 1 and by["boom"]["retrying"] == 1 and by["sleep"]["running"] == 1
    assert by["boom"]["failed_1h"] >= 2 and q["failed_1h"] == by["boom"]["failed_1h"]  # the stats history
    assert p.queue("default")["ready"] == 6  # the Producer delegate


def test_queues_cli_table_and_json(fleet, redis_url):
    p, ids = fleet
    p.enqueue("count", None, queue="idle")  # a second queue, not served by the `xq run`: ready 1
    out = cli(redis_url, "queues")
    assert out.returncode == 0, out
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "PAUSED", "READY", "SCHEDULED", "RETRYING", "RUNNING", "WAITING",
                                "DEAD", "LATENCY", "DONE/1M", "FAILED/1M", "DONE/1H", "FAILED/1H"]
    assert lines[1].split()[:8] == ["default", "yes", "6", "3", "1", "1", "1", "1"]
    assert lines[2].split()[:8] == ["idle", "no", "1", "0", "0", "0", "0", "0"]
    assert lines[1].split()[8].endswith("s") and lines[3].startswith("2 queue(s)")
    js = orjson.loads(cli(redis_url, "queues", "--json").stdout)
    assert [q["queue"] for q in js] == ["default", "idle"] and js[0]["dead"] == 1 and js[1]["ready"] == 1
    show = cli(redis_url, "queue", "show", "default", "--by-name")
    assert show.returncode == 0, show
    assert "PAUSED since" in show.stdout and "(by priority 0:2  5:3  9:1)" in show.stdout
    assert "  waiting    1\n" in show.stdout and "  retrying   1\n" in show.stdout
    assert any(line.split() == ["count", "6", "0", "0", "0", "0", "0", "0", "0", "0", "0"]
               for line in show.stdout.splitlines())
    js = orjson.loads(cli(redis_url, "queue", "show", "default", "--json").stdout)
    assert js["running"] == 1 and js["latency"] > 0


def test_tasks_per_state_with_paging(fleet, redis_url):
    p, ids = fleet

    def tasks(*args):
        out = cli(redis_url, "tasks", "default", *args, "--json")
        assert out.returncode == 0, out
        return orjson.loads(out.stdout)

    claim_order = ids["ready"][0] + ids["ready"][5] + ids["ready"][9]
    assert [t["id"] for t in tasks("--state", "queued")["tasks"]] == claim_order
    pages = [tasks("--state", "queued", "--limit", "4", "--offset", str(o))["tasks"] for o in (0, 4, 8)]
    assert [t["id"] for t in pages[0] + pages[1]] == claim_order and pages[2] == []
    assert [t["priority"] for t in pages[0]] == [0, 0, 5, 5]
    sched = tasks("--state", "scheduled")["tasks"]
    assert [t["id"] for t in sched] == ids["scheduled"] and all(t["eta"] > time.time() + 500 for t in sched)
    assert [t["id"] for t in tasks("--state", "scheduled", "--offset", "1", "--limit", "1")["tasks"]] == \
        ids["scheduled"][1:2]
    retrying = tasks("--state", "retrying")["tasks"]
    assert [t["id"] for t in retrying] == ids["retrying"] and retrying[0]["error"].startswith("ValueError: boom 2")
    assert retrying[0]["attempts"] >= 1
    running = tasks("--state", "running")["tasks"]
    assert [(t["id"], t["name"]) for t in running] == [(ids["running"][0], "sleep")]
    assert running[0]["claimed_at"] > time.time() - 60 and running[0]["worker"]
    dead = tasks("--state", "dead")["tasks"]
    assert [t["id"] for t in dead] == ids["dead"] and "boom 1" in dead[0]["error"] and "\n" not in dead[0]["error"]
    waiting = tasks("--state", "waiting")["tasks"]
    assert [(t["id"], t["pending_dependencies"]) for t in waiting] == [(ids["waiting"][0], 1)]
    assert tasks("--state", "queued", "--name", "echo")["tasks"] == []
    assert [t["id"] for t in tasks("--state", "scheduled", "--name", "echo", "--limit", "2")["tasks"]] == \
        ids["scheduled"][:2]
    table = cli(redis_url, "tasks", "default", "--state", "dead")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:6] == \
        ["ID", "NAME", "PRI", "ENQUEUED", "DIED", "ATT"]
    assert ids["dead"][0] in table.stdout and "dead tasks of default: showing 1-1" in table.stdout
    table = cli(redis_url, "tasks", "default", "--state", "waiting")
    assert ids["waiting"][0] in table.stdout and "1 pending" in table.stdout and "no index" in table.stdout
    done = cli(redis_url, "tasks", "default", "--state", "done")  # none finished yet (see test_retention.py)
    assert done.returncode == 0 and "done tasks of default: showing none" in done.stdout


def test_sampled_counts_say_they_are_bounds(redis_url):
    """With more sched or hooked ids than the sample, the split and the waiting walk are lower bounds and
    say so; per-name counts are then a sample."""
    p = xq.Producer(redis_url)
    first = p.enqueue("echo", 0)  # never served: it stays queued, so its dependents wait
    p.enqueue_many("echo", list(range(5)), delay=600)
    p.enqueue("echo", 1, depends_on=[first])
    p.enqueue("echo", 2, depends_on=[p.enqueue("echo", 3)])
    with Inspector(redis_url) as i:
        full = i.queue("default", by_name=True)
        small = i.queue("default", by_name=True, sample=1)
    assert (full["scheduled"], full["waiting"], full["ready"]) == (5, 2, 2)
    assert full["sched_split_exact"] and full["waiting_exact"] and full["by_name_exact"]
    assert full["latency"] >= 0 and full["oldest_ready_id"] == first
    assert not small["sched_split_exact"] and not small["waiting_exact"] and not small["by_name_exact"]
    assert small["scheduled"] + small["retrying"] == 5 and small["waiting"] == 1
    assert small["by_name"]["echo"]["scheduled"] == 1  # the first id of sched only
    fan = p.enqueue("echo", 4)
    p.enqueue_many("echo", list(range(40)), depends_on=[fan])  # 40 dependents of one task
    with Inspector(redis_url) as i:
        full = i.queue("default")
        bounded = i.queue("default", sample=3)  # every hooked id, but the walk stops after 10 x 3 dependents
    assert full["waiting"] == 42 and full["waiting_exact"]
    assert not bounded["waiting_exact"] and 1 <= bounded["waiting"] <= 42
    p.close()


def test_latency_counts_from_when_a_task_became_due(redis_url, r):
    """A replayed dead letter, and a scheduled or retried task once CLAIM moved it to its ready list (the
    record keeps its `due`), have waited since they became due, not since their first enqueue."""
    p = xq.Producer(redis_url)
    gate = p.enqueue("echo", "gate", delay=3600)
    p.cancel(gate)
    dead = p.enqueue_many("echo", [1, 2], depends_on=[gate])  # dead on arrival
    time.sleep(1.5)
    with Inspector(redis_url) as i:
        assert i.queue("default")["latency"] is None  # nothing ready
        p.replay("default", [dead[0]])
        q = i.queue("default")
        assert q["oldest_ready_id"] == dead[0] and q["latency"] < 1.0  # its id is 1.5 s old
        p.replay("default", [dead[1]], to_queue="moved")
        q = i.queue("moved")
        assert q["oldest_ready_id"] == dead[1] and q["latency"] < 1.0
        # a delayed task as CLAIM leaves it when due: queued, in its ready list, its `due` kept
        late = p.enqueue("echo", 3, queue="late", delay=0.3)
        qk = xq.keys.queue_keys("late")
        now_ms = int(r.time()[0]) * 1000
        r.zrem(qk.sched, late)
        r.hset(qk.task(late), mapping={"state": "queued", "due": now_ms - 200, "enq": now_ms - 60_000})
        r.rpush(qk.ready[5], late)
        assert 0.15 <= i.queue("late")["latency"] < 1.5  # 0.2 s since due, though enqueued a minute ago
        r.hset(qk.task(late), "due", "junk")  # a foreign writer's junk: back to the enqueue time
        assert i.queue("late")["latency"] >= 59
