"""Bulk operations (issue 11): replay into another queue in pipelined chunks, `xq queue flush` and
`xq queue delete`, against a real redis-server, and a real `xq run` where a supervisor is involved.

Dead letters are made the quick way a producer can: tasks enqueued depending on a canceled task are born
dead (scripts.ENQUEUE), thousands in one call.  Handlers are in tests/apps/basic.py.
"""

from __future__ import annotations

import time

import orjson
import pytest
from click.testing import CliRunner

import xq
from xq.cli import main
from xq.inspect import Inspector
from xq.keys import queue_keys
from xqrun import XQRun, wait_for


def born_dead(p: xq.Producer, name: str, payloads, queue: str = "src", **kw) -> list[str]:
    """Tasks that are dead on arrival: they depend on a task canceled before they were enqueued."""
    gate = p.enqueue("echo", "gate", queue=queue, delay=3600)
    assert p.cancel(gate, queue=queue) == "canceled"
    return p.enqueue_many(name, payloads, queue=queue, depends_on=[gate], **kw)


def queue_keys_left(r, queue: str) -> list[bytes]:
    return list(r.scan_iter(match=f"xq:{{{queue}}}:*", count=1000))


def ready_ids(r, queue: str) -> list[bytes]:
    qk = queue_keys(queue)
    return [i for key in qk.ready for i in r.lrange(key, 0, -1)]


# ------------------------------------------------------------------------------ replay into another queue
def test_replay_to_another_queue_moves_every_task_with_its_options(redis_url, r):
    p = xq.Producer(redis_url)
    js = born_dead(p, "echo", [{"i": i} for i in range(2500)], priority=3, max_retries=7, timeout=9,
                   result_ttl=600)
    raw = born_dead(p, "reverse", [b"\x00\xff%d" % i for i in range(700)], priority=8)
    assert p.dead_count("src") == 3200
    seen = []
    moved = p.replay("src", to_queue="dst", chunk=400, progress=lambda done, total: seen.append((done, total)))
    assert sorted(moved) == sorted(js + raw)
    assert p.dead_count("src") == 0
    assert not any(r.exists(queue_keys("src").task(i)) for i in js[::50] + raw[::50])  # originals removed
    dst = queue_keys("dst")
    assert r.llen(dst.ready[3]) == 2500 and r.llen(dst.ready[8]) == 700  # each exactly once, in order
    assert r.lrange(dst.ready[3], 0, -1) == [i.encode() for i in js]
    st = p.status(js[42], queue="dst")
    assert (st["status"], st["name"], st["priority"], st["max_retries"], st["timeout"], st["attempts"]) == \
        ("queued", "echo", 3, 7, 9.0, 0)
    assert orjson.loads(r.hget(dst.task(js[42]), "payload")) == {"i": 42}
    assert r.hget(dst.task(js[42]), "rttl") == b"600" and r.hget(dst.task(raw[5]), "rttl") is None
    assert r.hget(dst.task(raw[5]), "payload") == b"\x00\xff5" and r.hget(dst.task(raw[5]), "ct") == b"b"
    assert seen[-1] == (3200, 3200) and len(seen) >= 2  # 400 a chunk, 4 chunks a round trip
    assert "dst" in Inspector(redis_url).broker.queues()
    # a supervisor serving only dst runs the copies
    with XQRun(redis_url, queues="dst", burst=True, procs=1) as w:
        assert w.wait(60) == 0, w.output()
    assert p.result(js[0], timeout=5, queue="dst") == {"i": 0}
    assert p.result(raw[1], timeout=5, queue="dst") == b"1\xff\x00"
    p.close()


def test_replay_some_ids_at_a_new_priority(redis_url, r):
    p = xq.Producer(redis_url)
    ids = born_dead(p, "echo", list(range(30)))
    assert p.replay("src", ids[:10] + ["NOT-DEAD"], to_queue="dst", priority="critical", chunk=3) == ids[:10]
    assert r.lrange(queue_keys("dst").ready[0], 0, -1) == [i.encode() for i in ids[:10]]
    assert p.dead_count("src") == 20
    seen = []  # into itself: in place, 7 a call, 4 calls a round trip
    assert sorted(p.replay("src", to_queue="src", chunk=7, progress=lambda d, t: seen.append((d, t)))) == \
        sorted(ids[10:])
    assert p.dead_count("src") == 0 and seen == [(20, 20)]
    assert r.lrange(queue_keys("src").ready[5], 0, -1) == [i.encode() for i in ids[10:]]
    p.close()


def test_a_move_cut_after_the_copy_duplicates_and_a_rerun_finishes_it(redis_url, r):
    """Copy first, remove after: a crash between the two leaves tasks in both queues, never in neither; a
    second replay copies nothing twice and removes the originals."""
    p = xq.Producer(redis_url)
    ids = born_dead(p, "echo", list(range(1200)))
    real = p.broker.pack_remove_dead
    calls = []

    def crash(*a, **kw):
        calls.append(1)
        raise RuntimeError("killed between the copy and the remove")

    p.broker.pack_remove_dead = crash
    with pytest.raises(RuntimeError, match="killed"):
        p.replay("src", to_queue="dst", chunk=500)
    p.broker.pack_remove_dead = real
    dst = queue_keys("dst")
    copied = r.lrange(dst.ready[5], 0, -1)
    assert len(copied) == 1200 and p.dead_count("src") == 1200  # the first round's copies: both queues hold them
    assert sorted(p.replay("src", to_queue="dst", chunk=500)) == sorted(ids)
    assert r.lrange(dst.ready[5], 0, -1) == [i.encode() for i in ids]  # each once
    assert p.dead_count("src") == 0 and not r.exists(queue_keys("src").task(ids[0]))
    p.close()


def test_an_outage_at_the_remove_retries_the_round(redis_url, r):
    """ConnectionLost between the copy and the remove: replay() retries the round (within retry_for): the
    re-read finds the originals, IMPORT skips the copies the target has, and the remove goes through."""
    p = xq.Producer(redis_url, retry_for=5)
    ids = born_dead(p, "echo", list(range(50)))
    real, cut = p.broker.exchange, []

    def exchange(commands):
        if not cut and commands and b"remove" in commands[0]:
            cut.append(1)
            raise xq.ConnectionLost("cut for the test", url=redis_url)
        return real(commands)

    p.broker.exchange = exchange
    assert sorted(p.replay("src", to_queue="dst", chunk=20)) == sorted(ids) and cut
    assert r.lrange(queue_keys("dst").ready[5], 0, -1) == [i.encode() for i in ids]
    assert p.dead_count("src") == 0
    p.close()


def test_a_stale_dead_entry_is_dropped_and_a_nameless_one_stays(redis_url, r):
    p = xq.Producer(redis_url)
    ids = born_dead(p, "echo", list(range(20)))
    src = queue_keys("src")
    r.delete(src.task(ids[0]))                    # purged meanwhile: a stale entry
    r.hset(src.task(ids[1]), "state", "queued")   # not dead: its live record must not be dropped
    r.hdel(src.task(ids[2]), "name")              # nothing to enqueue a copy as
    moved = p.replay("src", to_queue="dst", chunk=5)
    assert sorted(moved) == sorted(ids[3:])
    assert r.zrange(src.dead, 0, -1) == [ids[2].encode()]
    assert r.hget(src.task(ids[1]), "state") == b"queued"
    p.close()


def test_every_bulk_script_touches_one_queue_only(redis_url, r):
    """Redis Cluster: each call of DEAD_READ, IMPORT, REPLAY, FLUSH and PURGE keeps to one queue's slot."""
    from test_hash_tags import check_script_keys, monitored

    p = xq.Producer(redis_url)
    p.pause_queue("src")
    with monitored(redis_url) as lines:
        ids = born_dead(p, "echo", list(range(30)))
        first = p.enqueue("echo", 1, queue="src", unique_key="k")
        p.enqueue("echo", 2, queue="src", depends_on=[first])
        p.group([("echo", 3)], queue="src", then=("echo", "cb"))
        p.enqueue_many("echo", [4, 5], queue="src", delay=600)
        assert len(p.replay("src", ids[:5], to_queue="dst", chunk=2)) == 5
        assert len(p.replay("src", to_queue="dst", chunk=7)) == 25
        assert p.flush("src", "queued") == 2 and p.flush("src", "scheduled") == 2
        assert p.flush("src", "dead") == 1 and p.flush("dst", "queued") == 30
        time.sleep(0.2)  # the last lines reach the monitor
    seen, checked = check_script_keys(lines)
    assert seen > 15 and checked > 100, (seen, checked)
    p.close()


# ------------------------------------------------------------------------------------------- flush
@pytest.fixture
def mixed(redis_url, r):
    """Queue q with tasks in every state a flush distinguishes: one running (a slow handler), retrying
    and dead (failing ones), then paused: queued at three levels, scheduled, waiting."""
    p = xq.Producer(redis_url)
    with XQRun(redis_url, procs=2, queues="q") as w:
        slow = p.enqueue("sleep", {"s": 30}, queue="q")
        wait_for(lambda: r.lrange("test:started", 0, -1) == [slow.encode()], what="the slow task to start")
        dead = p.enqueue_many("boom", [1, 2], queue="q")
        wait_for(lambda: p.dead_count("q") == 2, what="the dead tasks")
        retrying = [p.enqueue("boom", 3, queue="q", max_retries=50)]
        wait_for(lambda: {p.status(i)["status"] for i in retrying} == {"retrying"}, what="retrying tasks")
        assert p.pause_queue("q")
        wait_for(lambda: {p.status(i)["status"] for i in retrying} == {"retrying"}, what="retrying, paused")
        queued = p.enqueue_many("count", list(range(1500)), queue="q", priority=0) + \
            p.enqueue_many("count", list(range(1500)), queue="q") + [p.enqueue("count", 1, queue="q", priority=9)]
        scheduled = p.enqueue_many("echo", list(range(1000)), queue="q", delay=600)
        waiting = p.enqueue("echo", "after", queue="q", depends_on=[slow])
        yield p, {"running": [slow], "dead": dead, "retrying": retrying, "queued": queued,
                  "scheduled": scheduled, "waiting": [waiting]}
        w.kill()
    p.close()


def counts(p) -> dict:
    q = p.queue("q")
    return {s: q[s] for s in ("ready", "scheduled", "retrying", "running", "waiting", "dead")}


def test_flush_each_state_removes_exactly_those_tasks(mixed, r):
    p, ids = mixed
    before = counts(p)
    assert before == {"ready": 3001, "scheduled": 1000, "retrying": 1, "running": 1, "waiting": 1, "dead": 2}
    seen = []
    assert p.flush("q", "retrying", chunk=100) == 1
    assert counts(p) == {**before, "retrying": 0}
    assert p.flush("q", "scheduled", chunk=100, progress=lambda d, t: seen.append((d, t))) == 1000
    assert counts(p) == {**before, "retrying": 0, "scheduled": 0}
    assert seen[-1] == (1000, 1000) and len(seen) >= 5
    assert p.flush("q", "queued", chunk=400) == 3001
    assert counts(p) == {**before, "retrying": 0, "scheduled": 0, "ready": 0}
    assert p.flush("q", "dead", chunk=1) == 2
    assert counts(p) == {**before, "retrying": 0, "scheduled": 0, "ready": 0, "dead": 0}
    gone = ids["retrying"] + ids["scheduled"] + ids["queued"] + ids["dead"]
    assert not any(r.exists(queue_keys("q").task(i)) for i in gone[::50])
    for s in ("running", "waiting"):  # never flushed, and left alone
        assert p.status(ids[s][0])["status"] == s
        with pytest.raises(xq.ConfigError, match=f"cannot flush state '{s}'"):
            p.flush("q", s)
    assert p.flush("q", "queued") == 0  # nothing left: a no-op


def test_flush_settles_unique_keys_groups_and_dependents(redis_url, r):
    p = xq.Producer(redis_url)
    p.pause_queue("f")
    u = p.enqueue("echo", 1, queue="f", unique_key="k")
    assert p.enqueue("echo", 2, queue="f", unique_key="k") == u  # held
    first = p.enqueue("echo", 3, queue="f")
    after = p.enqueue("echo", 4, queue="f", depends_on=[first])
    g = p.group([("echo", 5), ("echo", 6)], queue="f", then=("echo", "cb"))
    assert p.flush("f", "queued") == 4  # u, first and the two members (the callback is queued by their end)
    assert p.enqueue("echo", 7, queue="f", unique_key="k") != u  # the key was released
    st = p.status(after, queue="f")
    assert st["status"] == "dead" and f"dependency {first} ended flushed" in st["reason"]
    gs = p.group_status(g)
    assert gs["finished"] and gs["left"] == 0
    assert r.hgetall(queue_keys("f").group_outcomes(g.id)) == {i.encode(): b"flushed" for i in g.ids}
    assert p.status(gs["callback"], queue="f")["status"] == "queued"  # the group finished: its callback is ready
    p.close()


def test_flush_cli_asks_first(redis_url, r):
    p = xq.Producer(redis_url)
    p.enqueue_many("echo", list(range(10)), queue="c")
    p.enqueue_many("echo", list(range(3)), queue="c", delay=600)
    runner = CliRunner()
    out = runner.invoke(main, ["queue", "flush", "c", "--state", "queued", "--redis", redis_url], input="n\n")
    assert out.exit_code == 1 and "delete 10 queued task(s) of queue c? [y/N]" in out.output
    assert p.queue("c")["ready"] == 10
    out = runner.invoke(main, ["queue", "flush", "c", "--state", "queued", "--yes", "--json", "--redis", redis_url])
    assert out.exit_code == 0, out.output
    assert orjson.loads(out.output) == {"queue": "c", "state": "queued", "deleted": 10}
    out = runner.invoke(main, ["queue", "flush", "c", "--state", "scheduled", "--progress", "--redis", redis_url],
                        input="y\n")
    assert out.exit_code == 0 and "looked at 3/3 (100%)" in out.output and "flushed 3 scheduled" in out.output
    assert p.queue("c")["scheduled"] == 0
    p.close()


def test_bad_names_get_clear_errors(redis_url):
    p = xq.Producer(redis_url)
    with pytest.raises(xq.ConfigError, match="invalid queue name 'a b'"):
        p.flush("a b", "queued")
    with pytest.raises(xq.ConfigError, match="cannot flush state 'bogus': expected one of queued, scheduled"):
        p.flush("q", "bogus")
    with pytest.raises(xq.ConfigError, match="invalid queue name 'x/y'"):
        p.replay("q", to_queue="x/y")
    with pytest.raises(xq.ConfigError, match="invalid queue name ''"):
        p.delete_queue("")
    with pytest.raises(xq.ConfigError, match="chunk"):
        p.flush("q", "queued", chunk=0)
    out = CliRunner().invoke(main, ["queue", "flush", "q", "--state", "bogus", "--redis", redis_url])
    assert out.exit_code == 2 and "'bogus' is not one of" in out.output
    out = CliRunner().invoke(main, ["queue", "flush", "q", "--state", "running", "--redis", redis_url])
    assert out.exit_code == 2 and "running tasks are never flushed" in out.output
    out = CliRunner().invoke(main, ["queue", "delete", "nosuch", "--yes", "--redis", redis_url])
    assert out.exit_code == 1 and "no queue 'nosuch'" in out.output
    p.close()


# ------------------------------------------------------------------------------------------ delete
def test_delete_removes_every_key_of_the_queue_after_confirmation(redis_url, r):
    p = xq.Producer(redis_url)
    born_dead(p, "echo", list(range(300)), queue="gone")
    p.enqueue_many("echo", list(range(3000)), queue="gone")
    p.enqueue_many("echo", list(range(100)), queue="gone", delay=600, unique_key=None)
    p.enqueue("echo", 1, queue="gone", unique_key="u")
    p.group([("echo", 1), ("echo", 2)], queue="gone")
    p.pause_queue("gone")
    kept = p.enqueue_many("echo", [1, 2], queue="stays")
    assert len(queue_keys_left(r, "gone")) > 3400
    runner = CliRunner()
    out = runner.invoke(main, ["queue", "delete", "gone", "--redis", redis_url], input="n\n")
    assert out.exit_code == 1 and "delete queue gone with 3003 queued, 100 scheduled/retrying" in out.output
    assert "Aborted" in out.output and len(queue_keys_left(r, "gone")) > 3400
    out = runner.invoke(main, ["queue", "delete", "gone", "--progress", "--redis", redis_url], input="y\n")
    assert out.exit_code == 0, out.output
    assert "keys deleted" in out.output and "deleted queue gone:" in out.output
    assert queue_keys_left(r, "gone") == [] and b"gone" not in r.smembers("xq:queues")
    assert ready_ids(r, "stays") == [i.encode() for i in kept]  # another queue is untouched
    # the API, with --json's counts
    p.enqueue_many("echo", list(range(10)), queue="gone")
    seen = []
    res = p.delete_queue("gone", progress=lambda d, t: seen.append((d, t)))
    assert res == {"queue": "gone", "keys": 12, "running": 0, "workers": [], "tasks": 10}  # 10 + 10 ready: ready:5, wake
    assert seen and seen[-1] == (12, None) and queue_keys_left(r, "gone") == []
    p.close()


def test_delete_while_a_supervisor_serves_the_queue(redis_url, r):
    """A running task's record is deleted under it: its result is refused, the supervisor goes on, and
    serves the queue again when tasks come back."""
    p = xq.Producer(redis_url)
    with XQRun(redis_url, procs=1, queues="live") as w:
        slow = p.enqueue("sleep", {"s": 2}, queue="live")
        wait_for(lambda: r.lrange("test:started", 0, -1) == [slow.encode()], what="the slow task to start")
        p.enqueue_many("echo", list(range(50)), queue="live", delay=600)
        wait_for(lambda: any("live" in wk.get("queues", ()) for wk in p.workers()), what="the registry")
        out = CliRunner().invoke(main, ["queue", "delete", "live", "--yes", "--json", "--redis", redis_url])
        assert out.exit_code == 0, out.output
        assert "warning: 1 live supervisor(s) serve live" in out.output and "results are refused" in out.output
        res = orjson.loads(out.output[out.output.index("{"):])
        assert res["running"] == 1 and res["tasks"] == 51 and len(res["workers"]) == 1
        wait_for(lambda: r.hget("test:execs", slow) == b"1", what="the running task to finish")  # it ran to its end
        again = p.enqueue("echo", "back", queue="live")
        assert p.result(again, timeout=20, queue="live") == "back"  # the supervisor serves on
        assert w.proc.poll() is None
        with pytest.raises(xq.UnknownTask):
            p.status(slow, queue="live")  # its refused result did not re-create the record
        log = w.output()
        assert "Traceback" not in log and slow in log  # the refusal is logged, naming the task
    p.close()
