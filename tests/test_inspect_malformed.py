"""Inspection never crashes (issue 10, defect 2): records written by a careless or hostile producer (see
docs/protocol.md), with a bad priority, names and ids that are not UTF-8, missing fields, huge fields or
JSON that does not parse, are shown by every inspection API and CLI command: raw fields escaped, and a
"malformed" note saying what is wrong.  Records are written straight into a real redis-server, as such a
producer would; the timeout reason is checked end to end with a real `xq run`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import orjson
import pytest

import xq
from xq.keys import QUEUES, queue_keys
from xqrun import TESTS, XQRun, wait_for

pytestmark = pytest.mark.topologies("single", "cluster")

QK = queue_keys("default")
GOOD = "01HZZZZZZZZZZZZZZZZZZZZZZA"  # a well-formed id
DEAD_AT = 1_700_000_000_000


def cli(redis_url, *args):
    env = {**os.environ, "XQ_TEST_REDIS": redis_url}
    return subprocess.run([sys.executable, "-m", "xq.cli", *args, "--redis", redis_url], cwd=TESTS, env=env,
                          capture_output=True, text=True, timeout=60)


def put(r, task_id, fields: dict, *, dead: int | None = DEAD_AT, sched: int | None = None, queue="default"):
    """Write a task record by hand (as a foreign producer would), in the dead or scheduled set."""
    qk = queue_keys(queue)
    tid = task_id if isinstance(task_id, bytes) else task_id.encode()
    r.sadd(QUEUES, queue)
    r.hset(qk.task_prefix.encode() + tid, mapping=fields)
    if dead is not None:
        r.zadd(qk.dead, {tid: dead})
    if sched is not None:
        r.zadd(qk.sched, {tid: sched})


def dead_record(**over) -> dict:
    rec = {"state": "dead", "name": "job", "payload": "null", "pri": "5", "att": "1", "maxr": "0",
           "enq": "1699999990000", "fin": str(DEAD_AT), "dead": str(DEAD_AT), "reason": "failed on the last of 1 attempts",
           "error": "RuntimeError: boom"}
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not None}


def notes(st) -> str:
    return " | ".join(st["malformed"])


# ------------------------------------------------------------------------------------------ bad priority
def test_status_of_a_record_with_a_non_numeric_priority(redis_url, r):
    put(r, GOOD, dead_record(pri="abc"))
    with xq.Producer(redis_url) as p:
        st = p.status(GOOD)
        assert st["status"] == "dead" and st["name"] == "job"
        assert st["priority"] == "abc"
        assert "pri: 'abc' is not an integer" in notes(st)
        [row] = p.dead_letters()
        assert row["priority"] == "abc" and row["malformed"] == st["malformed"]

    out = cli(redis_url, "status", GOOD)
    assert out.returncode == 0, out.stderr
    js = orjson.loads(out.stdout)
    assert js["priority"] == "abc" and "pri: 'abc' is not an integer" in js["malformed"]


def test_good_record_has_no_malformed_note(redis_url, r):
    with xq.Producer(redis_url) as p:
        tid = p.enqueue("job", {"a": 1}, delay=60)
        st = p.status(tid)
        assert st["malformed"] == [] and "truncated" not in st and st["priority"] == 5
        [row] = p.scheduled()
        assert row["id"] == tid and row["malformed"] == []


# ------------------------------------------------------------------------------------------ not UTF-8
def test_non_utf8_name_in_status_dead_letters_and_cli(redis_url, r):
    put(r, GOOD, dead_record(name=b"job\xff\xfe", error=b"Err: \xc3("))
    with xq.Producer(redis_url) as p:
        st = p.status(GOOD)
        assert st["name"] == "job\\xff\\xfe" and st["error"] == "Err: \\xc3("
        assert "name: not UTF-8" in notes(st) and "error: not UTF-8" in notes(st)
        [row] = p.dead_letters()
        assert row["name"] == "job\\xff\\xfe"

    out = cli(redis_url, "dlq", "ls", "default")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "1 dead task(s) in default; showing 1-1"
    assert "job\\xff\\xfe" in lines[1] and "[malformed: name: not UTF-8" in lines[1]
    out = cli(redis_url, "dlq", "ls", "default", "--json")
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout)["tasks"][0]["name"] == "job\\xff\\xfe"
    out = cli(redis_url, "dlq", "show", "default", GOOD)
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout)["name"] == "job\\xff\\xfe"


def test_non_utf8_id_in_the_dead_and_scheduled_sets(redis_url, r):
    bad = b"\xff\xfebad-id"
    put(r, bad, dead_record(), dead=DEAD_AT - 1)
    put(r, GOOD, dead_record())
    put(r, b"sched\xff", {"state": "scheduled", "name": "job", "due": "1999999999000", "pri": "zz"},
        dead=None, sched=1_999_999_999_000)
    with xq.Producer(redis_url) as p:
        rows = p.dead_letters()
        assert [t["id"] for t in rows] == ["\\xff\\xfebad-id", GOOD]
        assert "id: not UTF-8" in notes(rows[0]) and rows[1]["malformed"] == []
        [s] = p.scheduled()
        assert s["id"] == "sched\\xff" and s["status"] == "scheduled" and s["eta"] == 1_999_999_999.0
        assert "id: not UTF-8" in notes(s) and "pri: 'zz' is not an integer" in notes(s)
    out = cli(redis_url, "dlq", "ls", "default")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].startswith("\\xff\\xfebad-id  ")
    # the id as listed finds the record
    out = cli(redis_url, "dlq", "show", "default", "\\xff\\xfebad-id")
    assert out.returncode == 0, out.stderr
    st = orjson.loads(out.stdout)
    assert st["id"] == "\\xff\\xfebad-id" and st["status"] == "dead" and "id: not UTF-8" in notes(st)


# ------------------------------------------------------------------------------------------ missing fields
def test_records_missing_fields(redis_url, r):
    put(r, GOOD, {"payload": "1"})  # no state, no name, nothing else
    put(r, "01HZZZZZZZZZZZZZZZZZZZZZZB", {"state": "dead"})
    with xq.Producer(redis_url) as p:
        st = p.status(GOOD)
        assert st["status"] == "" and st["name"] == "" and st["attempts"] == 0
        assert "state: missing" in notes(st) and "name: missing" in notes(st)
        rows = p.dead_letters()
        assert len(rows) == 2 and rows[1]["status"] == "dead" and rows[1]["dead_at"] is None
    out = cli(redis_url, "dlq", "ls", "default")
    assert out.returncode == 0, out.stderr
    assert "[malformed: state: missing; name: missing]" in out.stdout
    # an id in the set whose record is gone is skipped, as before
    r.zadd(QK.dead, {"01HZZZZZZZZZZZZZZZZZZZZZZC": DEAD_AT + 5})
    with xq.Producer(redis_url) as p:
        assert len(p.dead_letters()) == 2


# ------------------------------------------------------------------------------------------ bad JSON, bad numbers
def test_bad_json_and_bad_numbers_in_a_record(redis_url, r):
    put(r, GOOD, dead_record(hist=b"[{not json", deps=b"\xff", lim="{", progress="[1,", att="two",
                             fin="soon", dead="yesterday", to="1.5s", maxr="-"))
    tid2 = "01HZZZZZZZZZZZZZZZZZZZZZZB"
    put(r, tid2, dead_record(hist=orjson.dumps([1, {"n": 1, "start": "x", "end": 5000, "outcome": "failed"}])))
    with xq.Producer(redis_url) as p:
        st = p.status(GOOD)
        assert st["history"] == [] and st["depends_on"] == "\\xff" and st["limits"] == "{"
        assert st["attempts"] == "two" and st["finished_at"] == "soon" and st["timeout"] == "1.5s"
        assert st["max_retries"] == "-"
        for field in ("hist", "deps", "lim", "progress", "att", "fin", "dead", "to", "maxr"):
            assert any(m.startswith(field + ":") for m in st["malformed"]), (field, st["malformed"])
        st2 = p.status(tid2)
        assert st2["history"][0]["finished_at"] == 5.0 and st2["history"][0]["started_at"] == "x"
        assert "hist: an entry 1 is not an object" in notes(st2)
    out = cli(redis_url, "dlq", "ls", "default")
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[1]
    assert "  yesterday  job  attempts=two  " in line and "[malformed: " in line


def test_result_that_is_not_json_raises_a_clear_error(redis_url, r):
    put(r, GOOD, {"state": "done", "name": "job", "result": b"{\xff", "att": "1"}, dead=None)
    with xq.Producer(redis_url) as p:
        with pytest.raises(xq.XQError, match=f"task {GOOD}: its result is not JSON") as e:
            p.result(GOOD, timeout=5)
        assert isinstance(e.value, ValueError)
        assert p.status(GOOD)["status"] == "done"


def test_failed_task_with_non_utf8_error_raises_task_failed(redis_url, r):
    put(r, GOOD, dead_record(error=b"bad \xff"))
    with xq.Producer(redis_url) as p:
        with pytest.raises(xq.TaskFailed, match=r"bad \\xff"):
            p.result(GOOD, timeout=5)


def test_group_status_with_malformed_counts(redis_url, r):
    r.hset(QK.group("g1"), mapping={"total": "many", "left": "0", "sealed": "1", "cb": b"\xff"})
    with xq.Producer(redis_url) as p:
        g = p.group_status("g1")
        assert g["total"] == "many" and g["left"] == 0 and g["callback"] == "\\xff"
        assert "total: 'many' is not an integer" in g["malformed"]


def test_async_status_and_result_of_malformed_records(redis_url, r):
    put(r, GOOD, dead_record(pri="abc", name=b"n\xff"))
    done = "01HZZZZZZZZZZZZZZZZZZZZZZB"
    put(r, done, {"state": "done", "name": "job", "result": b"not json"}, dead=None)

    async def main():
        async with xq.AsyncProducer(redis_url) as p:
            st = await p.status(GOOD)
            assert st["priority"] == "abc" and st["name"] == "n\\xff" and st["malformed"]
            with pytest.raises(xq.XQError, match="its result is not JSON"):
                await p.result(done, timeout=5)

    asyncio.run(main())


def test_events_until_done_with_a_malformed_state_and_fin(redis_url, r):
    put(r, GOOD, dead_record(fin="later"))
    with xq.Producer(redis_url) as p:
        [ev] = list(p.events(GOOD, until_done=True, timeout=5))
        assert ev["id"] == GOOD and ev["state"] == "dead" and ev["synthetic"] and isinstance(ev["ts"], int)


# ------------------------------------------------------------------------------------------ huge fields
def test_huge_fields_are_cut_in_listings(redis_url, r):
    """A 40 MiB payload is not shipped by a listing at all; a 3 MiB error is cut at 1 MiB and marked."""
    big_err = b"E" * (3 << 20)
    put(r, GOOD, dead_record(payload=b"[" + b"1," * (20 << 20) + b"1]", error=big_err))
    hist = orjson.dumps([{"n": 1, "outcome": "failed", "error": "x" * 1000}] * 2000)
    put(r, "01HZZZZZZZZZZZZZZZZZZZZZZB", dead_record(hist=hist))
    with xq.Producer(redis_url) as p:
        row, row2 = p.dead_letters()
        assert len(row["error"]) == 1 << 20 and row["truncated"] == {"error": 3 << 20}
        assert row["malformed"] == []
        # a JSON field cut by the listing is named in "truncated", not called malformed
        assert row2["truncated"] == {"hist": len(hist)} and row2["malformed"] == [] and row2["history"] == []
        assert len(p.status(row2["id"])["history"]) == 2000
        st = p.status(GOOD)  # one task's status is read whole
        assert len(st["error"]) == 3 << 20 and "truncated" not in st
    out = cli(redis_url, "dlq", "ls", "default")
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[1]
    assert len(line) < 1000 and f"[truncated: error ({3 << 20} bytes)]" in line


def test_dlq_ls_cuts_long_values(redis_url, r):
    put(r, GOOD, dead_record(name="n" * 5000, reason="r" * 1000))
    out = cli(redis_url, "dlq", "ls", "default")
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[1]
    assert "n" * 200 + "... [4800 more chars]" in line and "r" * 200 + "... [800 more chars]" in line
    assert len(line) < 800


# ------------------------------------------------------------------------------------------ replay
def test_replay_of_malformed_dead_tasks(redis_url, r):
    other = "01HZZZZZZZZZZZZZZZZZZZZZZB"
    put(r, GOOD, dead_record(pri="abc", maxr="x", to="soon"))
    put(r, other, dead_record(pri="42"))
    with xq.Producer(redis_url) as p:
        assert p.replay("default", [GOOD], to_queue="elsewhere") == [GOOD]
        st = p.status(GOOD, queue="elsewhere")
        assert st["status"] == "queued" and st["priority"] == 5 and st["max_retries"] == 3
        assert st["timeout"] is None and st["malformed"] == []
        assert r.lrange(queue_keys("elsewhere").ready[5], 0, -1) == [GOOD.encode()]
        # in place: a priority outside 0..9 takes the default
        assert p.replay("default", [other]) == [other]
        assert r.lrange(QK.ready[5], 0, -1) == [other.encode()]
        assert p.status(other)["status"] == "queued"


def test_replay_all_with_a_non_utf8_id_in_the_dead_set(redis_url, r):
    bad = b"\xffid"
    put(r, bad, dead_record(), dead=DEAD_AT - 1)
    put(r, GOOD, dead_record())
    with xq.Producer(redis_url) as p:
        assert p.replay("default") == ["\\xffid", GOOD]
        assert r.lrange(QK.ready[5], 0, -1) == [bad, GOOD.encode()]
        assert r.hget(QK.task_prefix.encode() + bad, "state") == b"queued"
    # one id to another queue, given as dlq ls shows it
    r.delete(*QK.ready)
    r.hset(QK.task_prefix.encode() + bad, "state", "dead")
    r.zadd(QK.dead, {bad: DEAD_AT})
    out = cli(redis_url, "dlq", "replay", "default", "\\xffid", "--to-queue", "elsewhere")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "replayed 1 task(s) into elsewhere"
    assert r.lrange(queue_keys("elsewhere").ready[5], 0, -1) == [bad] and r.zcard(QK.dead) == 0


# ------------------------------------------------------------------------------------------ timeout reason
def test_timed_out_last_attempt_says_so_in_the_reason(redis_url, r):
    p = xq.Producer(redis_url)
    tid = p.enqueue("sleep_to", {"s": 60}, timeout=0.5, max_retries=1)
    with XQRun(redis_url, "--kill-grace", "1", app="apps.life:app", procs=1) as w:
        st = wait_for(lambda: (s := p.status(tid))["status"] == "dead" and s, 40, what="the timeout")
        assert w.proc.poll() is None
    assert st["reason"] == "timed out after 0.5 s on the last of 2 attempts", st
    assert [h["outcome"] for h in st["history"]] == ["timeout", "timeout"]
    p.close()


def test_dlq_ls_says_a_reason_once_when_the_error_repeats_it(redis_url, r):
    """An invalid record's reason and error are the same text: the line printed it twice, joined by ': '."""
    why = "invalid record: field name is missing"
    put(r, "SAMEWHY1", dead_record(reason=why, error=why))
    put(r, "OTHERWHY", dead_record())
    out = cli(redis_url, "dlq", "ls", "default")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert lines["SAMEWHY1"].count(why) == 1 and lines["SAMEWHY1"].endswith(why)
    assert lines["OTHERWHY"].endswith("failed on the last of 1 attempts: RuntimeError: boom")


def test_xq_status_shows_the_payload_and_result_or_their_type_and_size(redis_url, r):
    """`xq status` printed the record without its payload or result, not even their size: a JSON result
    (a probe's, say) could not be seen from the command line at all.  Now the JSON itself up to 4 KiB, and
    for raw bytes or a larger JSON their type and size."""
    with xq.Producer(redis_url) as p:
        small = p.enqueue("echo", {"a": 1})
        raw = p.enqueue("reverse", b"\x00\x01" * 3000)
        big = p.enqueue("echo", {"blob": "x" * 10_000})
        XQRun(redis_url, burst=True).wait(60)
    for tid, payload, result, info in [
        (small, {"a": 1}, {"a": 1}, ("json", 7, "json", 7)),
        (raw, None, None, ("bytes", 6000, "bytes", 6000)),
        (big, None, None, ("json", 10_011, "json", 10_011)),
    ]:
        out = cli(redis_url, "status", tid)
        assert out.returncode == 0, out.stderr
        st = orjson.loads(out.stdout)
        assert st["status"] == "done" and st["payload"] == payload and st["result"] == result, st
        got = (st["payload_info"]["type"], st["payload_info"]["size"], st["result_info"]["type"],
               st["result_info"]["size"])
        assert got == info, (tid, got)
