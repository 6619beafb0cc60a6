"""Limits stated and enforced at both ends (issue 10): a producer refuses a field over its limit before
writing anything, naming the field and both sizes; a supervisor that meets one in a record written by
someone else (per docs/protocol.md) fails that task alone, dead with a reason naming the field, and goes on.
Real redis-server, real `xq run`, under both hot paths."""

from __future__ import annotations

import asyncio

import pytest

import xq
from xq.errors import ConfigError
from xq.keys import MAX_ID, MAX_NAME, check_record, queue_keys
from xqrun import XQRun, wait_for

IMPLS = [pytest.param(False, id="cython"), pytest.param(True, id="pure")]
QK = queue_keys("default")
FINAL = (b"done", b"dead", b"expired", b"canceled")


def written(r) -> list:
    return sorted(k for k in r.keys("*") if not k.startswith(b"xq:queues"))


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "m" * 70000}, "task name is 70000 bytes; the limit is 200 bytes"),
    ({"name": "é" * 101}, "task name is 202 bytes; the limit is 200 bytes"),
    ({"name": "bad\nname"}, "control characters"),
    ({"max_retries": 5000}, "max_retries is 5000; the limit is 1000"),
    ({"timeout": 1e12}, "timeout is 1000000000000000 ms; the limit is 99999999999999 ms"),
    ({"delay": 1e12}, "delay is 1000000000000000 ms; the limit is 99999999999999 ms"),
    ({"concurrency_key": "k" * 300, "max_concurrency": 2}, "concurrency_key is 300 bytes; the limit is 200 bytes"),
    ({"concurrency_key": "k", "max_concurrency": 10 ** 10}, "max_concurrency is 10000000000; the limit is 1000000000"),
    ({"rate_key": "r" * 201, "rate_limit": "5/s"}, "rate_key is 201 bytes; the limit is 200 bytes"),
    ({"rate_key": "r", "rate_limit": "2000000000/s"}, "starts per period is 2000000000; the limit is 1000000000"),
    ({"unique_key": "u" * 250}, "unique_key is 250 bytes; the limit is 200 bytes"),
    ({"task_id": "i" * 129}, "1-128 characters"),
    ({"queue": "q" * 101}, "1-100 characters"),
])
def test_producer_refuses_a_field_over_its_limit_and_writes_nothing(redis_url, r, kwargs, message):
    kwargs = dict(kwargs)
    name = kwargs.pop("name", "echo")
    p = xq.Producer(redis_url)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        p.enqueue(name, {"x": 1}, **kwargs)
    assert written(r) == []
    p.close()


def test_async_producer_refuses_the_same(redis_url, r):
    async def main():
        async with xq.AsyncProducer(redis_url) as ap:
            with pytest.raises(ConfigError, match="task name is 70000 bytes; the limit is 200 bytes"):
                await ap.enqueue("m" * 70000, 1)
            with pytest.raises(ConfigError, match="max_retries is 1001; the limit is 1000"):
                await ap.enqueue_many("echo", [1, 2], max_retries=1001)
    asyncio.run(asyncio.wait_for(main(), 30))
    assert written(r) == []


def test_group_app_task_and_route_refuse_before_writing(redis_url, r):
    p = xq.Producer(redis_url)
    with pytest.raises(ConfigError, match="group member #1: task name is 300 bytes; the limit is 200 bytes"):
        p.group([("echo", 1), ("n" * 300, 2)])
    with pytest.raises(ConfigError, match="task name is 70000 bytes; the limit is 200 bytes"):
        p.group([("echo", 1)], then=("m" * 70000, None))
    assert written(r) == []  # the group was not even opened
    app = xq.App()
    with pytest.raises(ConfigError, match="task name is 201 bytes; the limit is 200 bytes"):
        app.task("t" * 201)(lambda payload: None)
    with pytest.raises(ConfigError, match="max_retries of task 'x' is 2000; the limit is 1000"):
        app.task("x", max_retries=2000)(lambda payload: None)
    with pytest.raises(ConfigError, match="is 1001; the limit is 1000"):
        app.route("img.*", max_retries=1001)
    p.close()


def test_check_record_names_the_field():
    assert check_record(b"A1", b"echo", b"j", 1, b"") is None
    assert check_record(b"A1", b"echo", b"b", 3, b"5000") is None
    assert "field id" in check_record(b"x" * 70000, b"echo", b"j", 1, b"")
    assert "70000 bytes; the limit is 128" in check_record(b"x" * 70000, b"echo", b"j", 1, b"")
    assert "field id" in check_record(b"a b", b"echo", b"j", 1, b"")
    assert "field name" in check_record(b"A1", b"m" * 70000, b"j", 1, b"")
    assert "70000 bytes; the limit is 200" in check_record(b"A1", b"m" * 70000, b"j", 1, b"")
    assert "field name" in check_record(b"A1", b"\xff\xfe", b"j", 1, b"")
    assert "field name" in check_record(b"A1", b"a\x00b", b"j", 1, b"")
    assert "field ct" in check_record(b"A1", b"echo", b"", 1, b"")
    assert "field att" in check_record(b"A1", b"echo", b"j", 70000, b"")
    assert "field to" in check_record(b"A1", b"echo", b"j", 1, b"abc")
    assert "field to" in check_record(b"A1", b"echo", b"j", 1, b"1" * 30)


def raw_task(r, tid: str | bytes, **fields) -> None:
    """A record and its queue entry written per docs/protocol.md, as a foreign producer would."""
    rec = {"name": "echo", "payload": b'"x"', "ct": "j", "state": "queued", "pri": "5", **fields}
    rec = {k: v for k, v in rec.items() if v is not None}
    tid = tid.encode() if isinstance(tid, str) else tid
    key = QK.task_prefix.encode() + tid
    with r.pipeline(transaction=True) as pipe:
        if rec:
            pipe.hset(key, mapping=rec)
        pipe.rpush(QK.ready[5], tid)
        pipe.zadd(QK.wake, {"1": 0})
        pipe.execute()
    r.sadd("xq:queues", "default")


def final_state(r, tid) -> tuple:
    key = QK.task_prefix.encode() + (tid.encode() if isinstance(tid, str) else tid)
    st, reason, err = r.hmget(key, "state", "reason", "error")
    return st, (reason or b"").decode(errors="replace"), (err or b"").decode(errors="replace")


@pytest.mark.parametrize("pure", IMPLS)
def test_oversized_name_and_id_fail_alone_and_the_supervisor_goes_on(redis_url, r, pure):
    p = xq.Producer(redis_url)
    long_id = "I" * 70000
    with XQRun(redis_url, procs=2, pure=pure) as w:
        # an idle supervisor first, so the claim batch holds the bad tasks and their good neighbours together
        wait_for(lambda: len(w.children()) >= 2 or w.proc.poll() is not None, 20, what="the supervisor to start")
        with r.pipeline(transaction=True) as pipe:
            pipe.hset(QK.task("LONGNAME1"), mapping={"name": "m" * 70000, "payload": b'"x"', "ct": "j",
                                                     "state": "queued", "pri": "5"})
            pipe.rpush(QK.ready[5], "LONGNAME1")
            pipe.hset(QK.task_prefix + long_id, mapping={"name": "echo", "payload": b'"x"', "ct": "j",
                                                         "state": "queued", "pri": "5"})
            pipe.rpush(QK.ready[5], long_id)
            pipe.execute()
        good = p.enqueue_many("echo", list(range(5)))
        wait_for(lambda: all(final_state(r, t)[0] in FINAL for t in ("LONGNAME1", long_id, *good)), 30,
                 what="the bad tasks to end")
        assert w.proc.poll() is None, w.output()  # the supervisor is still running
        log = w.output()
    assert [final_state(r, g)[0] for g in good] == [b"done"] * 5
    st, reason, _err = final_state(r, "LONGNAME1")
    assert st == b"dead" and "field name" in reason and f"limit is {MAX_NAME} bytes" in reason, (reason, log)
    st, reason, _err = final_state(r, long_id)
    assert st == b"dead" and "field id" in reason and f"limit is {MAX_ID}" in reason, (reason, log)
    assert r.zcard(QK.leases) == 0
    assert "Traceback" not in log, log
    p.close()


@pytest.mark.parametrize("pure", IMPLS)
def test_malformed_fields_fail_alone_in_the_scripts(redis_url, r, pure):
    """Fields the Lua scripts read (lim, exp, att, pri) and missing ones: no value may raise a script error
    (a script error aborts the claim after its pops, losing the batch)."""
    p = xq.Producer(redis_url)
    bad = {
        "BADLIM1": ({"lim": "{not json"}, "field lim"),
        "BADLIM2": ({"lim": '{"ck":"k","cm":"many"}'}, "field lim"),
        "BADLIM3": ({"lim": '{"rk":"k","rn":5,"rp":0}'}, "field lim"),
        "BADEXP1": ({"exp": "soon"}, "field exp"),
        "BADATT1": ({"att": "lots"}, "field att"),
        "BADTO1": ({"to": "forever"}, "field to"),
        "BADCT1": ({"ct": ""}, "field ct"),
        "NONAME1": ({"name": None}, "field name"),
        "NOSTATE1": ({"state": None}, "field state"),
    }
    for tid, (fields, _why) in bad.items():
        raw_task(r, tid, **fields)
    raw_task(r, "BADPRI1", pri="12")  # pri is only where it goes back to: it still runs
    good = p.enqueue_many("echo", list(range(5)))
    with XQRun(redis_url, procs=2, pure=pure) as w:
        wait_for(lambda: all(final_state(r, t)[0] in FINAL for t in [*bad, "BADPRI1", *good]), 40,
                 what="every task to end")
        assert w.proc.poll() is None, w.output()
        log = w.output()
    for tid, (_fields, why) in bad.items():
        st, reason, _err = final_state(r, tid)
        assert st == b"dead" and why in reason, (tid, st, reason, log)
    assert final_state(r, "BADPRI1")[0] == b"done"
    assert [final_state(r, g)[0] for g in good] == [b"done"] * 5
    assert "claim failed" not in log and "Traceback" not in log, log
    p.close()


@pytest.mark.parametrize("pure", IMPLS)
def test_a_child_fails_the_task_of_a_frame_it_cannot_read(pure):
    """A frame whose id or name is not UTF-8, or whose lengths do not match, fails that task (seq kept),
    instead of raising out of the child's loop (which would kill the child and lose the attempt)."""
    import importlib

    from xq.child import Runner

    fast = importlib.import_module("xq._pyfast" if pure else "xq._fast")
    app = xq.App()

    @app.task("t")
    def t(payload):
        return payload

    runner = Runner(app, ["default"])
    seq, status, _rct, _body, error = runner.run(fast.encode_task_head(9, 1, b"j", 0, b"\xff\xfe", b"t"), b"1")
    assert (seq, status) == (9, fast.ST_FAILED) and b"malformed task frame" in error
    head = fast.encode_task_head(11, 1, b"j", 0, b"id", b"t")
    seq, status, _rct, _body, error = runner.run(head + b"extra", b"1")
    assert (seq, status) == (11, fast.ST_FAILED) and b"malformed task frame" in error
    seq, status, _rct, _body, error = runner.run(fast.encode_task_head(12, 1, b"j", 5, b"id", b"t"), b"1")
    assert (seq, status) == (12, fast.ST_FAILED) and b"queue index" in error
    assert runner.run(fast.encode_task_head(13, 1, b"j", 0, b"id", b"t"), b"1")[1] == fast.ST_DONE


@pytest.mark.parametrize("pure", IMPLS)
def test_encode_task_head_names_the_size_instead_of_crashing(pure):
    import importlib

    fast = importlib.import_module("xq._pyfast" if pure else "xq._fast")
    with pytest.raises(ValueError, match="task id of 70000 bytes is too large for a task head"):
        fast.encode_task_head(1, 1, b"j", 0, b"i" * 70000, b"t")
    with pytest.raises(ValueError, match="task name of 70000 bytes is too large for a task head"):
        fast.encode_task_head(1, 1, b"j", 0, b"i", b"n" * 70000)
    with pytest.raises(ValueError, match="attempt 70000 does not fit a task head"):
        fast.encode_task_head(1, 70000, b"j", 0, b"i", b"n")


def test_screen_claimed_flags_every_record_check_record_refuses_in_both_hot_paths():
    """The cheap pass (C) may flag more than check_record refuses, never less; the pure twin flags exactly."""
    import xq._fast as cf
    import xq._pyfast as pf

    rows = [(b"A1", b"echo", b"j", 1, b""), (b"x" * 129, b"echo", b"j", 1, b""), (b"a b", b"echo", b"j", 1, b""),
            (b"A1", b"", b"j", 1, b""), (b"A1", b"n" * 201, b"b", 1, b""), (b"A1", "é".encode(), b"j", 1, b""),
            (b"A1", b"\xff", b"j", 1, b""), (b"A1", b"a\tb", b"j", 1, b""), (b"A1", b"echo", b"x", 1, b""),
            (b"A1", b"echo", b"jj", 1, b""), (b"A1", b"echo", b"j", 0, b""), (b"A1", b"echo", b"j", 65536, b""),
            (b"A1", b"echo", b"j", 2, b"1500"), (b"A1", b"echo", b"j", 2, b"-1"), (b"A1", b"echo", b"j", 2, b"9" * 15),
            (b"A1", b"echo", b"j", 2, b"x")]
    tasks = [v for row in rows for v in (0, row[0], row[1], b"{}", row[2], row[3], row[4])]
    refused = [i * 7 for i, row in enumerate(rows) if check_record(*row) is not None]
    assert pf.screen_claimed(tasks) == refused
    assert set(refused) <= set(cf.screen_claimed(tasks))
    assert cf.screen_claimed(tasks[:7]) is None and pf.screen_claimed(tasks[:7]) is None


@pytest.mark.parametrize("pure", IMPLS)
def test_malformed_delayed_records_fail_alone(redis_url, r, pure):
    """Delayed tasks written raw (state scheduled, ZADD to sched): a pri out of 0..9 once made CLAIM RPUSH
    to another key (a script error on every claim); a state that is no task state left it nowhere."""
    import time as _time

    p = xq.Producer(redis_url)
    due = int(_time.time() * 1000) - 1000
    cases = {"DPRI12": {"state": "scheduled", "pri": "12"}, "DPRIX": {"state": "scheduled", "pri": "-3"},
             "DNOSTATE": {"state": None}, "DBOGUS": {"state": "later"}}
    for tid, fields in cases.items():
        rec = {"name": "echo", "payload": b'"x"', "ct": "j", "pri": "5", **fields}
        r.hset(QK.task(tid), mapping={k: v for k, v in rec.items() if v is not None})
        r.zadd(QK.sched, {tid: due})
    r.zadd(QK.wake, {"1": 0})
    good = p.enqueue_many("echo", list(range(3)))
    with XQRun(redis_url, procs=1, pure=pure) as w:
        wait_for(lambda: all(final_state(r, t)[0] in FINAL for t in [*cases, *good]), 30, what="every task to end")
        assert w.proc.poll() is None, w.output()
        log = w.output()
    assert final_state(r, "DPRI12")[0] == b"done" and final_state(r, "DPRIX")[0] == b"done", log
    for tid in ("DNOSTATE", "DBOGUS"):
        st, reason, _err = final_state(r, tid)
        assert st == b"dead" and "field state" in reason, (tid, st, reason)
    assert [final_state(r, g)[0] for g in good] == [b"done"] * 3
    assert "claim failed" not in log, log
    p.close()


def test_a_max_retries_over_the_limit_in_a_record_counts_as_the_limit(redis_url, r):
    """maxr is producer-written: a record saying 10^11 retries gets at most 1000 (the limit), not 10^11."""
    raw_task(r, "MAXR1", name="boom", maxr="99999999999", att="1000")
    with XQRun(redis_url, procs=1) as w:
        wait_for(lambda: final_state(r, "MAXR1")[0] in FINAL or r.hget(QK.task("MAXR1"), "state") == b"retrying",
                 30, what="the attempt to end")
        log = w.output()
    st, reason, _err = final_state(r, "MAXR1")
    assert st == b"dead" and reason == "failed on the last of 1001 attempts", (st, reason, log)


def test_a_task_canceled_by_a_foreign_producers_own_hset_is_finished_like_cancel_finishes_it(redis_url, r):
    """docs/protocol.md lets a producer cancel a task not yet running by setting `state canceled` on its
    record.  The supervisor that pops it used to drop the id only: the record never expired, was in no
    index and no event told a waiter.  It now finishes it as the CANCEL script does."""
    raw_task(r, "HANDCXL1", uk=None)
    r.hset(QK.task("HANDCXL1"), "state", "canceled")
    p = xq.Producer(redis_url)
    events = r.pubsub(ignore_subscribe_messages=True)
    events.subscribe(QK.events)
    with XQRun(redis_url, procs=1) as w:
        after = p.enqueue("echo", "next")  # the claim that pops the canceled id pops this one too
        assert p.result(after, timeout=20) == "next", w.output()
        key = QK.task("HANDCXL1")
        assert r.hget(key, "state") == b"canceled" and r.hget(key, "fin")
        assert 0 < r.ttl(key) <= 86400
        assert r.zscore(QK.finished("canceled"), "HANDCXL1") is not None
        assert p.status("HANDCXL1")["status"] == "canceled"
        seen = []
        for _ in range(100):  # bounded: up to 5 s
            m = events.get_message(timeout=0.05)
            if m and b"HANDCXL1" in m["data"]:
                seen.append(m["data"])
                break
        events.close()
        assert seen and b"canceled" in seen[0], "no canceled event was published"
    p.close()
