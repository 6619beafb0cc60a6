"""Producer.events: the event stream of chosen tasks and queues.  Real redis-server, real `xq run`
(tests/apps/compose.py)."""

from __future__ import annotations

import threading

import pytest

import xq
from xq.keys import queue_keys
from helpers import subscribers
from xqrun import XQRun, wait_for

APP = "apps.compose:app"
QK = queue_keys("default")


pytestmark = pytest.mark.usefixtures("no_event_subscribers")


def drain(stream, limit: int = 1000) -> list[dict]:
    """Every event of a stream that ends by itself, read in a thread joined with a bound, so a stream
    that does not end fails the test instead of hanging it."""
    out: list[dict] = []

    def run():
        for ev in stream:
            out.append(ev)
            if len(out) >= limit:
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), f"the stream did not end; got {out}"
    return out


def test_events_of_a_task_queued_running_done(redis_url, r):
    p = xq.Producer(redis_url)
    stream = p.events(queues="default", timeout=30)  # subscribed (confirmed) when this returns
    assert subscribers(r) == 1
    tid = p.enqueue("step", {"n": 1})
    seen = []
    with XQRun(redis_url, app=APP, procs=1) as w:
        for ev in stream:
            if ev["id"] == tid:
                seen.append(ev)
                if ev["state"] == "done" or len(seen) > 10:
                    break
        assert [e["state"] for e in seen] == ["queued", "running", "done"], (seen, w.output())
    assert all(e["queue"] == "default" and isinstance(e["ts"], int) for e in seen)
    assert seen[1]["attempt"] == 1 and seen[-1].get("result") == {"n": 1}
    del stream  # leaving the loop early closed the generator's own connection
    wait_for(lambda: subscribers(r) == 0, 10, what="the stream's connection to close")


def test_events_filtered_by_ids_and_states(redis_url, r):
    p = xq.Producer(redis_url)
    a, b, c = p.enqueue("step", "a"), p.enqueue("step", "b"), p.enqueue("step", "c")
    stream = p.events(ids=[a, b], states=["done", "running"], timeout=30)  # queue: found from the ids
    got = []
    with XQRun(redis_url, app=APP, procs=1) as w:
        for ev in stream:
            got.append(ev)
            if sum(e["state"] == "done" for e in got) == 2 or len(got) > 10:
                break
        p.result(c, timeout=20)
    assert {e["id"] for e in got} == {a, b}, w.output()
    assert sorted((e["id"], e["state"]) for e in got) == sorted([(a, "running"), (a, "done"), (b, "running"),
                                                                 (b, "done")])
    # only done events, of one id
    stream = p.events(ids=a, states="done", timeout=0.3)
    assert list(stream) == []  # a finished before the call, and without until_done nothing is replayed


def test_until_done_with_a_task_finished_before_the_call(redis_url, r):
    p = xq.Producer(redis_url)
    early, failed = p.enqueue("step", "early"), p.enqueue("fail", "x")
    with XQRun(redis_url, app=APP, procs=1) as w:
        assert p.result(early, timeout=20) == "early", w.output()
        with pytest.raises(xq.TaskFailed):
            p.result(failed, timeout=20)
        # both ended before the call: one synthetic event each, and the stream ends by itself
        evs = drain(p.events(ids=[early, failed], until_done=True))
        assert [(e["id"], e["state"], e["synthetic"]) for e in evs] == [(early, "done", True),
                                                                        (failed, "dead", True)]
        # one ended, one still to run: the synthetic event, then the other's real ones up to its end
        late = p.enqueue("step", {"sleep": 0.2}, delay=0.3)
        evs = drain(p.events(ids=[early, late], until_done=True))
        assert evs[0] == {**evs[0], "id": early, "state": "done", "synthetic": True}
        assert [e["state"] for e in evs[1:]] == ["queued", "running", "done"], evs
        assert all(e["id"] == late and "synthetic" not in e for e in evs[1:])
        # states= filters what is reported, not when the stream ends
        late2 = p.enqueue("step", 2, delay=0.2)
        assert [e["state"] for e in drain(p.events(ids=late2, states="running", until_done=True))] == ["running"]
        # a group: its group_done event ends it
        g = p.group([("step", 1), ("step", 2)])
        evs = drain(p.events(ids=[g], until_done=True))
        assert evs[-1]["id"] == g.id and evs[-1]["state"] == "group_done"
        assert p.result(g, timeout=20) == [1, 2]
        evs = drain(p.events(ids=[g], until_done=True))  # finished already
        assert evs == [{**evs[0], "id": g.id, "state": "group_done", "synthetic": True}]
    p.close()  # result()'s own subscription; the streams closed theirs when they ended
    wait_for(lambda: subscribers(r) == 0, 10, what="the connections to close")


def test_events_timeout_and_bad_input(redis_url, r):
    p = xq.Producer(redis_url)
    tid = p.enqueue("step", 1)
    assert drain(p.events(ids=[tid], until_done=True, timeout=0.3)) == []  # no worker: ends at the timeout
    assert subscribers(r) == 0
    with pytest.raises(xq.ConfigError, match="until_done needs ids"):
        p.events(until_done=True)
    with pytest.raises(xq.ConfigError, match="unknown event state"):
        p.events(states=["finished"])
    with pytest.raises(xq.ConfigError, match="invalid id"):
        p.events(ids=[tid, 5])
    with pytest.raises(xq.ConfigError, match="not among queues"):
        p.events(ids=[tid], queues=["other", "more"], until_done=True)
    with pytest.raises(xq.UnknownTask):
        p.events(ids=["NOSUCHID"], until_done=True)
    with pytest.raises(xq.UnknownTask):  # a queue given, but no such record there: would wait forever
        p.events(ids=["NOSUCHID"], queues="default", until_done=True)
    assert subscribers(r) == 0
