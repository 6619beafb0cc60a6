"""A fuzz test of the wire protocol (issue 10): records with random field values (Hypothesis strategies over
the fields of docs/protocol.md: wrong types, huge, empty, non-UTF-8, missing) written raw, as a foreign
producer would (HSET + RPUSH + ZADD wake in one MULTI), beside good tasks, to ONE running `xq run` per hot
path.  After every example: the supervisor still runs, every good task is `done`, and every fuzzed one is
final: `done` if its values happened to be valid, else dead (or expired, canceled) with an error that
names the field.

XQ_FUZZ_EXAMPLES (default 100) sets the examples per hot path; the counts run are printed."""

from __future__ import annotations

import itertools
import os
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import xq
from xq.keys import queue_keys
from xqrun import XQRun

IMPLS = [pytest.param(False, id="cython"), pytest.param(True, id="pure")]
QK = queue_keys("default")
FINAL = {b"done", b"dead", b"expired", b"canceled"}
EXAMPLES = int(os.environ.get("XQ_FUZZ_EXAMPLES", "100"))
# what an error of a bad record must mention: the field, or the check that names it
NAMED = ("field ", "payload", "task name", "content type", "expired before it started")

_serial = itertools.count()

junk_text = st.one_of(
    st.just(b""),
    st.binary(max_size=40),                                           # any bytes, non-UTF-8 included
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"-1", b"0", b"1e309", b"nan", b"inf", b"-inf", b"0x10", b" 5 ", b"99999999999999999999",
                     b"3.5", b"null", b"[]", b"{}", b'"x"', b"\x00", b"\xff\xfe"]),
    st.integers(min_value=-2 ** 70, max_value=2 ** 70).map(lambda n: str(n).encode()),
    st.integers(min_value=60_000, max_value=200_000).map(lambda n: b"z" * n),  # huge
)


def field(good):
    """A field: missing (None), its good value, or junk."""
    return st.one_of(st.none(), st.just(good), junk_text)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
lim_dict = st.fixed_dictionaries({}, optional={
    "ck": st.one_of(st.text(min_size=1, max_size=10), json_value, st.just("k" * 300)),
    "cm": st.one_of(st.integers(1, 5), json_value, st.just(10 ** 12)),
    "rk": st.one_of(st.text(min_size=1, max_size=10), json_value),
    "rn": st.one_of(st.integers(1, 5), json_value),
    "rp": st.one_of(st.integers(1, 1000), json_value, st.just(10 ** 15)),
})

fields = {
    "id": st.one_of(st.just("ok"), st.just("ok"),
                    st.sampled_from(["huge", "utf8junk", "space", "quote", "long129"])),
    "name": st.one_of(st.just(b"echo"), st.just(b"echo"), field(b"echo"),
                      st.sampled_from([b"m" * 70000, b"e" * 201, b"ec\nho", b"\xff\xfe", b"no.such.task"])),
    "payload": st.one_of(st.just(b'"x"'), field(b'{"a":1}')),
    "ct": field(b"j") | st.just(b"b"),
    "state": st.one_of(st.just(b"queued"), st.just(b"queued"), st.none(), st.sampled_from([b"", b"QUEUED", b"bogus"])),
    "pri": field(b"5"),
    "maxr": field(b"0"),
    "due": field(b"1700000000000"),
    "exp": field(b"99999999999999"),
    "to": st.one_of(st.none(), junk_text, st.integers(2000, 60000).map(lambda n: str(n).encode())),
    "enq": field(b"1700000000000"),
    "att": field(b"0"),
    "lim": st.one_of(st.none(), junk_text, lim_dict.map(lambda d: d)),
    "uk": field(b"u"), "deps": field(b"[]"), "npend": field(b"0"), "df": field(b"run"), "hd": field(b"1"),
    "grp": field(b"g"), "hist": field(b"[]"), "cxl": st.none(), "progress": field(b"{}"),
    # written as a delayed task (state scheduled, ZADD to sched, due now) instead of RPUSH: CLAIM then
    # moves it to the ready list of its pri first
    "delayed": st.booleans(),
}
GOOD = {"id": "ok", "name": b"echo", "payload": b'"x"', "ct": b"j", "state": b"queued", "pri": b"5"}
# a good record with one field fuzzed (most are), or every field fuzzed at once
one_bad = st.sampled_from(sorted(fields)).flatmap(lambda k: fields[k].map(lambda v: {**GOOD, k: v}))
record = st.one_of(one_bad, one_bad, st.fixed_dictionaries(fields))


def make_id(kind: str) -> bytes:
    n = next(_serial)
    return {"ok": b"FZ%dOK" % n, "huge": b"H%d" % n + b"I" * 70000, "utf8junk": b"\xff\xfe%d" % n,
            "space": b"sp ace%d" % n, "quote": b'q"uo\\te%d' % n, "long129": b"L%d" % n + b"x" * 128}[kind]


def write(r, rec: dict) -> bytes:
    import orjson

    tid = make_id(rec["id"])
    fields = {}
    delayed = rec.get("delayed")
    for k, v in rec.items():
        if k in ("id", "delayed") or v is None:
            continue
        if k == "state" and delayed and v == b"queued":
            v = b"scheduled"
        if k == "lim" and isinstance(v, dict):
            # a unique key per record: a valid rate limit shared by records could defer one for its period
            v = dict(v)
            for key in ("ck", "rk"):
                if isinstance(v.get(key), str) and 0 < len(v[key]) <= 10:
                    v[key] = v[key] + tid[:20].decode(errors="replace")
            v = orjson.dumps(v)
        fields[k] = v
    key = QK.task_prefix.encode() + tid
    with r.pipeline(transaction=True) as pipe:
        if fields:
            pipe.hset(key, mapping=fields)
        if delayed:
            pipe.zadd(QK.sched, {tid: int(time.time() * 1000) - 1000})
        else:
            pipe.rpush(QK.ready[5], tid)
        pipe.zadd(QK.wake, {"1": 0})
        pipe.execute()
    return tid


def state_of(r, tid: bytes):
    return r.hmget(QK.task_prefix.encode() + tid, "state", "reason", "error")


@pytest.mark.parametrize("pure", IMPLS)
def test_fuzzed_records_fail_alone_and_never_stop_the_supervisor(redis_url, r, pure):
    p = xq.Producer(redis_url)
    r.sadd("xq:queues", "default")
    ran = {"examples": 0, "records": 0, "dead": 0, "done": 0, "other": 0, "gone": 0}
    with XQRun(redis_url, procs=2, pure=pure) as w:

        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(record, min_size=1, max_size=4))
        def one(records):
            ids = [write(r, rec) for rec in records]
            good = p.enqueue_many("echo", ["g1", "g2"])
            deadline = time.monotonic() + 30
            while True:
                assert w.proc.poll() is None, f"the supervisor exited; log:\n{w.output()[-5000:]}"
                states = [state_of(r, t) for t in ids]
                goods = [r.hget(QK.task(g), "state") for g in good]
                # a record with no field at all is no record: its entry is dropped (logged), nothing to end
                pending = [i for i, s in enumerate(states) if s[0] not in FINAL
                           and r.exists(QK.task_prefix.encode() + ids[i])]
                if not pending and all(g == b"done" for g in goods):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"not final after 30 s: {[(records[i], states[i]) for i in pending]}; goods {goods}; "
                        f"log tail:\n{w.output()[-3000:]}")
                time.sleep(0.02)
            for rec, tid, (state, reason, error) in zip(records, ids, states):
                ran["records"] += 1
                if state is None:
                    ran["gone"] += 1
                    continue
                if state == b"done":
                    ran["done"] += 1
                    continue
                ran["dead" if state == b"dead" else "other"] += 1
                text = (reason or b"").decode(errors="replace") + " " + (error or b"").decode(errors="replace")
                assert state != b"canceled" or rec.get("cxl") is not None, (rec, state, text)
                assert any(n in text for n in NAMED), (tid[:80], state, text[:300])
            ran["examples"] += 1

        one()
        assert w.proc.poll() is None
        log = w.output()
    print(f"\nprotocol fuzz ({'pure' if pure else 'cython'}): {ran}")
    assert "Traceback" not in log, log[-5000:]
    assert "claim failed" not in log, log[-5000:]
    p.close()
