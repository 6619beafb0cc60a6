"""Progress and middleware end to end: real redis-server, real `xq run` (tests/apps/observe.py)."""

from __future__ import annotations

import orjson
import pytest

import xq
from test_lifecycle import Events
from xq.keys import queue_keys
from xqrun import XQRun, wait_for

APP = "apps.observe:app"
PURE = [pytest.param(False, id="cython"), pytest.param(True, id="pure")]


@pytest.fixture
def events(redis_url):
    ev = Events(redis_url)
    yield ev
    ev.close()


def _progress(r, tid):
    raw = r.hget(queue_keys("default").task(tid), "progress")
    return orjson.loads(raw) if raw else None


@pytest.mark.parametrize("pure", PURE)
def test_progress_is_stored_on_the_record_and_published(redis_url, r, events, pure):
    p = xq.Producer(redis_url)
    tid = p.enqueue("steps", None)
    with XQRun(redis_url, app=APP, procs=1, pure=pure) as w:
        wait_for(lambda: p.status(tid)["status"] == "running", 20, what="running")
        assert _progress(r, tid) is None
        for n, (pct, msg) in enumerate([(10, "started"), (50.5, "half way"), (100, None)]):
            # the handler reports within ms of the previous report: the throttled value must still arrive
            r.set(f"test:go:{n}", 1)
            rec = wait_for(lambda: (x := _progress(r, tid)) and x["pct"] == pct and x, 10,
                           what=f"progress {pct}")
            assert rec["msg"] == msg and isinstance(rec["ts"], int), w.output()
            ev = wait_for(lambda: [e for e in events.events if e["id"] == tid and e["state"] == "progress"
                                   and e["progress"] == pct], 5, what=f"progress event {pct}")
            assert ev[0] == {"id": tid, "queue": "default", "state": "progress", "ts": rec["ts"],
                             "progress": pct, "message": msg}
        assert p.result(tid, timeout=20) == "ok"
    wait_for(lambda: "done" in events.states(tid), 5, what="done event")
    # each report once, in order, all before the final state; the record keeps the last one
    assert events.states(tid) == ["queued", "running", "progress", "progress", "progress", "done"]
    assert _progress(r, tid)["pct"] == 100


@pytest.mark.parametrize("pure", PURE)
def test_progress_in_a_tight_loop_is_coalesced_and_the_last_value_wins(redis_url, r, events, pure):
    p = xq.Producer(redis_url)
    tid = p.enqueue("spin", {"n": 20000})
    with XQRun(redis_url, app=APP, procs=1, pure=pure):
        assert p.result(tid, timeout=30) == 20000
    wait_for(lambda: "done" in events.states(tid), 5, what="done event")
    rec = _progress(r, tid)
    assert rec["pct"] == 100.0 and rec["msg"] == "step 19999"
    prog = [e for e in events.events if e["id"] == tid and e["state"] == "progress"]
    assert prog and prog[-1]["progress"] == 100.0
    assert len(prog) < 2000  # throttled in the child: nowhere near one frame per call
    assert [e["progress"] for e in prog] == sorted(e["progress"] for e in prog)


@pytest.mark.parametrize("pure", PURE)
def test_middleware_hooks_run_in_the_child_around_each_task(redis_url, r, pure):
    p = xq.Producer(redis_url)
    ok, bad = p.enqueue("ok", 1), p.enqueue("boom", 2)
    with XQRun(redis_url, app=APP, procs=1, pure=pure) as w:
        assert p.result(ok, timeout=20) == 1
        with pytest.raises(xq.TaskFailed):
            p.result(bad, timeout=20)
        calls = [x.decode() for x in r.lrange("test:mw", 0, -1)]
        assert calls == ["outer:before:ok", "inner:before:ok", "inner:after:ok", "outer:after:ok",
                         "outer:before:boom", "inner:before:boom", "inner:error(ValueError):boom",
                         "outer:error(ValueError):boom"], w.output()


def test_a_retry_clears_the_failed_attempts_progress(redis_url, r):
    p = xq.Producer(redis_url)
    tid = p.enqueue("progress_then_fail_once", None)
    with XQRun(redis_url, app=APP, procs=1) as w:
        assert p.result(tid, timeout=20) == 2, w.output()
    st = p.status(tid)
    assert [h["outcome"] for h in st["history"]] == ["failed", "done"] and st["progress"] is None
