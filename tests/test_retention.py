"""Retention (issue 11): the capped per-queue index of finished ids and the policy that bounds memory, end
to end.  A small cap is set on a queue and a real `xq run` drains more tasks than it keeps; only the newest
records and index entries remain, a trimmed task's status() says so, a task with its own result_ttl
survives the count, and the finished listings read the index.  Handlers are in tests/apps/basic.py.
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
from xq.keys import DEFAULT_KEEP, queue_keys
from xqrun import TESTS, XQRun, wait_for

pytestmark = pytest.mark.topologies("single", "cluster")

Q = "ret"


def cli(redis_url, *args):
    env = {**os.environ, "XQ_TEST_REDIS": redis_url}
    return subprocess.run([sys.executable, "-m", "xq.cli", *args, "--redis", redis_url], cwd=TESTS, env=env,
                          capture_output=True, text=True, timeout=60)


def drain(redis_url, r, ids, *args):
    """Run a burst supervisor over queue Q until every id has finished (or been trimmed)."""
    with XQRun(redis_url, *args, procs=2, burst=True, queues=Q) as w:
        assert w.wait(60) == 0, w.output()
    qk = queue_keys(Q)
    assert r.zcard(qk.leases) == 0 and not any(r.llen(k) for k in qk.ready)


@pytest.fixture
def p(redis_url):
    with xq.Producer(redis_url) as prod:
        yield prod


def test_count_cap_keeps_only_the_newest_records_and_entries(p, redis_url, r):
    p.set_retention(Q, keep=50)
    ids = []
    for _ in range(3):  # several claim/complete rounds, so the cut runs more than once
        ids += p.enqueue_many("echo", list(range(100)), queue=Q)
    kept_long = p.enqueue("echo", "mine", queue=Q, result_ttl=7 * 86400)
    drain(redis_url, r, ids)
    qk = queue_keys(Q)
    index = [i.decode() for i in r.zrange(qk.finished("done"), 0, -1)]
    assert len(index) == 50
    live = [i for i in ids + [kept_long] if r.exists(qk.task(i))]
    # the records left are exactly the indexed ones, plus the one that asked for its own result ttl
    assert sorted(live) == sorted(set(index) | {kept_long})
    # the newest by finish: every remaining id finished no earlier than every removed one
    removed = [i for i in ids if i not in set(index)]
    assert len(removed) >= 250
    assert p.status(kept_long)["status"] == "done"
    assert p.result(kept_long, timeout=5) == "mine"
    assert 7 * 86400 - 60 < r.ttl(qk.task(kept_long)) <= 7 * 86400
    plain = [i for i in index if i != kept_long]
    assert all(0 < r.ttl(qk.task(i)) <= 86400 for i in plain[-3:])  # the supervisor's --result-ttl

    # a removed record: status(), result() and `xq status` say trimmed, not unknown
    gone = removed[0]
    for call in (lambda: p.status(gone), lambda: p.status(gone, queue=Q), lambda: p.result(gone, timeout=1)):
        with pytest.raises(xq.TaskTrimmed, match=f"{gone}.*trimmed.*queue 'ret'.*keeps the last 50") as e:
            call()
        assert e.value.queue == Q
        assert isinstance(e.value, xq.UnknownTask)  # callers catching UnknownTask keep working
    out = cli(redis_url, "status", gone)
    assert out.returncode == 1 and "trimmed" in out.stderr, out.stderr
    # an id never enqueued (newer than the watermark) is still unknown; the watermark allows 1 s of clock
    # skew, and a burst run now exits right after its last task: the id is made past that second
    time.sleep(1.2)
    with pytest.raises(xq.UnknownTask) as e:
        p.status(xq.new_ids(1)[0], queue=Q)
    assert not isinstance(e.value, xq.TaskTrimmed)
    ret = p.retention(Q)
    assert ret["trimmed"] >= 250 and ret["indexed"]["done"] == 50 and ret["keep"] == 50


def test_async_producer_says_trimmed(p, redis_url, r):
    import asyncio

    p.set_retention(Q, keep=5)
    ids = p.enqueue_many("echo", list(range(40)), queue=Q)
    drain(redis_url, r, ids)
    gone = [i for i in ids if not r.exists(queue_keys(Q).task(i))][0]

    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            with pytest.raises(xq.TaskTrimmed):
                await ap.status(gone)
            with pytest.raises(xq.TaskTrimmed):
                await ap.result(gone, timeout=1, queue=Q)
    asyncio.run(main())


def test_group_result_past_the_cap_says_trimmed(p, redis_url, r):
    p.set_retention(Q, keep=3)
    g = p.group([("echo", i) for i in range(8)], queue=Q)
    drain(redis_url, r, g.ids)
    with pytest.raises(xq.TaskTrimmed, match="keeps the last 3"):
        p.result(g, timeout=5)
    # members that ask for their own result ttl outlive the count
    g = p.group([("echo", i, {"result_ttl": 600}) for i in range(8)], queue=Q)
    drain(redis_url, r, g.ids)
    assert p.result(g, timeout=5) == list(range(8))


def test_finished_listings_newest_first_with_paging(p, redis_url, r):
    p.set_retention(Q, keep=1000)
    first = p.enqueue_many("echo", list(range(5)), queue=Q)
    drain(redis_url, r, first)
    time.sleep(0.01)
    second = p.enqueue_many("count", list(range(5)), queue=Q)
    drain(redis_url, r, second)
    with Inspector(redis_url) as i:
        page = i.tasks(Q, "done", limit=3)
        assert [t["status"] for t in page["tasks"]] == ["done"] * 3
        assert {t["id"] for t in page["tasks"]} <= set(second)
        whole = [t["id"] for t in i.tasks(Q, "done", limit=100)["tasks"]]
        assert len(whole) == 10 and set(whole[:5]) == set(second) and set(whole[5:]) == set(first)
        paged = [t["id"] for off in range(0, 10, 3) for t in i.tasks(Q, "done", offset=off, limit=3)["tasks"]]
        assert paged == whole
        named = i.tasks(Q, "done", name="echo", limit=2, offset=1)["tasks"]
        assert [t["id"] for t in named] == [x for x in whole if x in first][1:3]
        # newest first by the index (Redis time of the script that finished them); finished_at is the
        # record's own time, taken by the child, so tasks finished by one COMPLETE may differ in it
        assert whole == [x.decode() for x in r.zrevrange(queue_keys(Q).finished("done"), 0, -1)]
        ts = [t["finished_at"] for t in i.tasks(Q, "done", limit=100)["tasks"]]
        assert all(isinstance(x, float) for x in ts) and min(ts[:5]) >= max(ts[5:])
    out = cli(redis_url, "tasks", Q, "--state", "done", "--limit", "4")
    assert out.returncode == 0, out.stderr
    assert "FINISHED" in out.stdout and "showing 1-4" in out.stdout
    assert sum(tid in out.stdout for tid in whole[:4]) == 4
    js = orjson.loads(cli(redis_url, "tasks", Q, "--state", "done", "--json", "--offset", "8").stdout)
    assert [t["id"] for t in js["tasks"]] == whole[8:]


def test_canceled_and_expired_are_indexed(p, redis_url, r):
    canceled = p.enqueue("echo", 1, queue=Q, delay=600)
    assert p.cancel(canceled) == "canceled"
    expired = p.enqueue("echo", 2, queue=Q, expires=0.05)
    time.sleep(0.2)
    ok = p.enqueue("echo", 3, queue=Q)
    drain(redis_url, r, [expired, ok])
    qk = queue_keys(Q)
    assert r.zrange(qk.finished("canceled"), 0, -1) == [canceled.encode()]
    assert r.zrange(qk.finished("expired"), 0, -1) == [expired.encode()]
    assert r.zrange(qk.finished("done"), 0, -1) == [ok.encode()]
    with Inspector(redis_url) as i:
        assert [t["id"] for t in i.tasks(Q, "canceled")["tasks"]] == [canceled]
        assert [t["id"] for t in i.tasks(Q, "expired")["tasks"]] == [expired]


def test_dead_letters_are_capped(p, redis_url, r):
    p.set_retention(Q, keep_dead=3)
    ids = p.enqueue_many("boom", list(range(10)), queue=Q)
    drain(redis_url, r, ids)
    qk = queue_keys(Q)
    left = [i.decode() for i in r.zrange(qk.dead, 0, -1)]
    assert len(left) == 3
    assert sorted(i for i in ids if r.exists(qk.task(i))) == sorted(left)
    assert p.dead_count(Q) == 3


def test_age_cut_removes_old_records(p, redis_url, r):
    p.set_retention(Q, max_age=1)
    old = p.enqueue_many("echo", list(range(5)), queue=Q)
    drain(redis_url, r, old)
    time.sleep(1.2)
    new = p.enqueue_many("echo", list(range(5)), queue=Q)
    drain(redis_url, r, new)
    qk = queue_keys(Q)
    assert sorted(i.decode() for i in r.zrange(qk.finished("done"), 0, -1)) == sorted(new)
    assert not any(r.exists(qk.task(i)) for i in old)
    with pytest.raises(xq.TaskTrimmed, match="at most 1 s"):
        p.status(old[0])


def test_policy_cli_shows_sets_and_refuses_bad_values(redis_url, r):
    out = cli(redis_url, "queue", "retention", Q)
    assert out.returncode == 0, out.stderr
    assert f"keep       {DEFAULT_KEEP} finished per state  (default)" in out.stdout
    assert "max-age    the result ttl  (default)" in out.stdout
    out = cli(redis_url, "queue", "retention", Q, "--keep", "500", "--max-age", "3600", "--keep-dead", "20")
    assert out.returncode == 0, out.stderr
    assert "keep       500 finished per state\n" in out.stdout and "max-age    3600 s\n" in out.stdout
    assert r.hgetall(queue_keys(Q).retention) == {b"keep": b"500", b"max_age": b"3600", b"keep_dead": b"20"}
    js = orjson.loads(cli(redis_url, "queue", "retention", Q, "--max-age", "0", "--json").stdout)
    assert js["max_age"] is None and js["keep"] == 500 and js["defaults"] == ["max_age"]
    for args, msg in ((["--keep", "0"], "invalid --keep 0: expected an integer >= 1"),
                      (["--keep-dead", "-5"], "invalid --keep-dead -5"),
                      (["--max-age", str(10 ** 12)], "--max-age is 1000000000000; the limit is")):
        out = cli(redis_url, "queue", "retention", Q, *args)
        assert out.returncode == 2 and msg in out.stderr, (args, out.stderr)
    out = cli(redis_url, "queue", "retention", "bad name!")
    assert out.returncode == 2 and "invalid queue name" in out.stderr
    out = cli(redis_url, "queue", "retention", Q, "--reset")
    assert out.returncode == 0 and r.hgetall(queue_keys(Q).retention) == {}


def test_result_ttl_option_is_checked(p):
    for bad in (0, -1, 1.5, "60", True):
        with pytest.raises(xq.ConfigError, match="result_ttl"):
            p.enqueue("echo", 1, queue=Q, result_ttl=bad)
    with pytest.raises(xq.ConfigError, match="result_ttl of task"):
        xq.App().task("t", result_ttl=0)(lambda x: x)
    app = xq.App()
    app.task("t", result_ttl=600)(lambda x: x)
    app.route("r.*", result_ttl=30)
    assert app.route_for("t")["result_ttl"] == 600 and app.route_for("r.x")["result_ttl"] == 30
    with xq.Producer(p.url, app=app) as pa:
        tid = pa.enqueue("t", 1, queue=Q)
        assert pa.broker.client.hget(queue_keys(Q).task(tid), "rttl") == b"600"


def test_enqueue_cli_result_ttl(redis_url, r):
    out = cli(redis_url, "enqueue", "echo", "1", "--queue", Q, "--result-ttl", "120")
    assert out.returncode == 0, out.stderr
    assert r.hget(queue_keys(Q).task(out.stdout.strip()), "rttl") == b"120"
    out = cli(redis_url, "enqueue", "echo", "1", "--queue", Q, "--result-ttl", "0")
    assert out.returncode == 2 and "invalid --result-ttl 0" in out.stderr, out.stderr
