"""The hot path: the same test bodies against the Cython module and its pure-Python twin."""

from __future__ import annotations

import hashlib
import mmap
import os
import random

import hiredis
import pytest

from xq import _fast, _pyfast
from xq.errors import PayloadTooLarge

IMPLS = {"cython": _fast, "python": _pyfast}


@pytest.fixture(params=list(IMPLS))
def impl(request):
    assert IMPLS[request.param].IMPLEMENTATION == request.param
    return IMPLS[request.param]


def make_ring(mod, capacity=4096, reader_mod=None):
    m = mmap.mmap(-1, mod.Ring.size_for(capacity))
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    w = mod.Ring(m, efd)
    w.reset()
    return w, (reader_mod or mod).Ring(m, efd), efd


def test_task_head_round_trip(impl):
    h = impl.encode_task_head(2**63 + 5, 7, b"b", 3, b"01ABC", b"image.thumbnail")
    assert impl.decode_task_head(h) == (2**63 + 5, 7, b"b", 3, b"01ABC", b"image.thumbnail")
    with pytest.raises(ValueError, match="too short"):
        impl.decode_task_head(h[:10])
    with pytest.raises(ValueError, match="does not match"):
        impl.decode_task_head(h + b"x")


def test_result_head_round_trip(impl):
    h = impl.encode_result_head(9, impl.ST_FAILED, b"j", 1.25, 2.5, b"ValueError: bad")
    assert impl.decode_result_head(h) == (9, impl.ST_FAILED, b"j", 1.25, 2.5, b"ValueError: bad")
    with pytest.raises(ValueError):
        impl.decode_result_head(h[:-1])


def test_heads_are_byte_identical_across_implementations():
    args = (12, 3, b"j", 1, b"ID", b"name")
    assert _fast.encode_task_head(*args) == _pyfast.encode_task_head(*args)
    args = (12, 1, b"b", 1.5, 2.5, b"err")
    assert _fast.encode_result_head(*args) == _pyfast.encode_result_head(*args)


def test_small_messages_and_wrap_around(impl):
    w, r, _ = make_ring(impl)
    rnd = random.Random(3)
    sent, got = [], []
    for _ in range(20_000):
        h, b = os.urandom(rnd.randrange(0, 30)), os.urandom(rnd.randrange(0, 900))
        if w.write(h, b) == 0:
            got += r.read_many(1000)
            assert w.write(h, b) == w.message_size(h, b)
        sent.append((h, b))
    got += r.read_many(10**6)
    assert got == sent
    assert r.read() is None and r.empty()


@pytest.mark.parametrize("writer,reader", [("cython", "python"), ("python", "cython")])
def test_implementations_share_the_ring_format(writer, reader):
    w, r, _ = make_ring(IMPLS[writer], reader_mod=IMPLS[reader])
    rnd = random.Random(5)
    sent, got = [], []
    for _ in range(5000):
        msg = (os.urandom(rnd.randrange(0, 20)), os.urandom(rnd.choice([0, 10, 700, 5000])))
        off, size = 0, w.message_size(*msg)
        while off < size:
            off = w.write(*msg, off)
            got += r.read_many(100)
        sent.append(msg)
    got += r.read_many(10**6)
    assert got == sent


def test_small_message_is_all_or_nothing(impl):
    w, r, _ = make_ring(impl)
    n = 0
    while w.write(b"h", b"x" * 500):
        n += 1
    assert 0 < n < 9 and w.free() < 520
    assert w.write(b"h", b"x" * 500) == 0  # nothing half-written
    assert len(r.read_many(100)) == n


def test_message_larger_than_the_ring_streams_through_another_process(impl):
    w, r, efd = make_ring(impl, capacity=65536)
    blob = os.urandom(3 * 1024 * 1024 + 7)
    pid = os.fork()
    if pid == 0:  # reader
        try:
            deadline = 0
            while deadline < 2000:
                m = r.read()
                if m is not None:
                    ok = m[0] == b"hd" and hashlib.sha256(m[1]).digest() == hashlib.sha256(blob).digest()
                    os._exit(0 if ok else 1)
                if not r.wait(0.05):
                    deadline += 1
            os._exit(2)
        except BaseException:
            os._exit(3)
    off, size = 0, w.message_size(b"hd", blob)
    for _ in range(1_000_000):
        off = w.write(b"hd", blob, off)
        if off == size:
            break
        os.sched_yield()
    assert off == size
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_arm_sees_pending_data(impl):
    w, r, _ = make_ring(impl)
    assert r.arm() is True
    r.disarm()
    w.write(b"a", b"b")
    assert r.arm() is False
    r.disarm()


def test_sleeping_consumer_is_woken_by_write(impl):
    w, r, _ = make_ring(impl)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        woke = r.wait(30.0)  # the writer comes long before this timeout
        os.write(wfd, b"1" if woke and r.read() == (b"wake", b"up") else b"0")
        os._exit(0)
    os.close(wfd)
    for _ in range(200):  # let the child reach its sleep
        os.sched_yield()
    w.write(b"wake", b"up")
    assert os.read(rfd, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(rfd)


def test_ids_unique_sortable_and_fork_safe(impl):
    ids = impl.new_ids(100_000)
    assert len(set(ids)) == 100_000 and all(len(i) == 26 for i in ids)
    assert ids == sorted(ids)
    later = impl.new_ids(1)[0]
    assert later > ids[-1]
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(wfd, impl.new_ids(1)[0])
        os._exit(0)
    os.close(wfd)
    child_id = os.read(rfd, 26)
    os.waitpid(pid, 0)
    assert child_id[10:16] != later[10:16]  # another process, other random bits


def test_encode_payloads(impl):
    data, ct = impl.encode_payloads([b"\x00raw", bytearray(b"ba"), {"a": [1, 2]}, None, "s"])
    assert data == [b"\x00raw", b"ba", b'{"a":[1,2]}', b"null", b'"s"']
    assert ct == [b"b", b"b", b"j", b"j", b"j"]
    with pytest.raises(TypeError, match="payload #1 of type object cannot be serialized"):
        impl.encode_payloads([1, object()])


def test_pack_command_is_valid_resp(impl):
    cmd = impl.pack_command([b"SET", "k\u00e9", 5, 1.5, b""])
    assert cmd == b"*5\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$1\r\n5\r\n$3\r\n1.5\r\n$0\r\n\r\n"
    reader = hiredis.Reader()
    reader.feed(cmd)
    assert reader.gets() == [b"SET", b"k\xc3\xa9", b"5", b"1.5", b""]


def test_pack_enqueue(impl):
    cmd, n = impl.pack_enqueue(b"sha", ["k1", "k2"], ["pre", 5, b""], [b"i1", b"i2"], [b"raw", {"x": 1}], 0, 100)
    reader = hiredis.Reader()
    reader.feed(cmd)
    assert n == 1 and reader.gets() == [b"EVALSHA", b"sha", b"2", b"k1", b"k2", b"pre", b"5", b"",
                                        b"i1", b"raw", b"b", b"i2", b'{"x":1}', b"j"]
    assert (cmd, n) == _pyfast.pack_enqueue(b"sha", ["k1", "k2"], ["pre", 5, b""], [b"i1", b"i2"],
                                            [b"raw", {"x": 1}], 0, 100)


def test_pack_enqueue_stages_payloads_over_the_limit(impl):
    """Payloads over `inline` bytes go first, as HSET stage+id payload data and PEXPIRE in one MULTI/EXEC,
    and the EVALSHA carries (id, '', ct+'+') for them (scripts.ENQUEUE, ARGV[13..])."""
    args = (b"sha", ["k1"], ["pre"], [b"i1", b"i2", b"i3"], [b"x" * 6, b"y" * 5, {"z": "zz"}], 0, 100,
            b"st:", 5, 60000)
    cmd, n = impl.pack_enqueue(*args)
    reader = hiredis.Reader()
    reader.feed(cmd)
    got = []
    while (x := reader.gets()) is not False:
        got.append(x)
    assert n == 7 == len(got)
    assert got == [[b"MULTI"],
                   [b"HSET", b"st:i1", b"payload", b"x" * 6], [b"PEXPIRE", b"st:i1", b"60000"],
                   [b"HSET", b"st:i3", b"payload", b'{"z":"zz"}'], [b"PEXPIRE", b"st:i3", b"60000"],
                   [b"EXEC"],
                   [b"EVALSHA", b"sha", b"1", b"k1", b"pre", b"i1", b"", b"b+", b"i2", b"y" * 5, b"b",
                    b"i3", b"", b"j+"]]
    assert (cmd, n) == _pyfast.pack_enqueue(*args)
    with pytest.raises(PayloadTooLarge, match="payload #11 is 8 bytes, over max_payload=5"):
        impl.pack_enqueue(b"sha", [], [], [b"a", b"b"], [b"1", b"12345678"], 10, 5)
    with pytest.raises(TypeError, match="payload #10"):
        impl.pack_enqueue(b"sha", [], [], [b"a"], [object()], 10, 5)


def test_write_many_stops_at_what_does_not_fit(impl):
    w, r, _ = make_ring(impl)
    msgs = [(b"h%d" % i, b"x" * 300) for i in range(20)]
    n = w.write_many(msgs)
    assert 0 < n < 20
    got = r.read_many(100)
    assert got == msgs[:n]
    assert w.write_many(msgs, n) > 0
    big = [(b"", b"y" * w.max_chunk)]
    assert w.write_many(big) == 0  # larger than a chunk: write() streams it


# --- the supervisor loops: same results from both implementations ---

def claim_reply(n, payload=b"p"):
    out = []
    for i in range(n):
        out += [i % 2, b"id%d" % i, b"noop", payload, b"j", 1, b""]
    return out


def test_inflight_record_has_named_fields_and_a_timeout_from_the_claim(impl):
    from collections import deque

    inflight = {}
    impl.take_claimed([1, b"id", b"resize", b"{}", b"b", 3, b"2500"], inflight, deque(), 0)
    assert fields(inflight[1]) == (1, b"id", b"resize", b"{}", b"b", 3, 2500)
    t = impl.InFlight(0, b"x", b"n", b"p", b"j", 2)
    assert fields(t) == (0, b"x", b"n", b"p", b"j", 2, 0) and "attempt=2" in repr(t)


def fields(t):
    return (t.qidx, t.id, t.name, t.payload, t.ct, t.attempt, t.timeout_ms)


def test_take_claimed_and_fill_ring(impl):
    from collections import deque

    inflight, buffer, unacked = {}, deque(), deque()
    assert impl.take_claimed(claim_reply(5), inflight, buffer, 10) == 15
    assert list(buffer) == [11, 12, 13, 14, 15]
    assert all(type(t) is impl.InFlight for t in inflight.values())
    assert fields(inflight[11]) == (0, b"id0", b"noop", b"p", b"j", 1, 0) and inflight[12].qidx == 1
    w, r, _ = make_ring(impl)
    assert impl.fill_ring(w, buffer, inflight, unacked, 3) == (3, 0)        # room exhausted
    assert list(unacked) == [11, 12, 13] and list(buffer) == [14, 15]
    msgs = r.read_many(10)
    heads = [impl.decode_task_head(h) for h, _ in msgs]
    assert [h[0] for h in heads] == [11, 12, 13]
    assert heads[1] == (12, 1, b"j", 1, b"id1", b"noop") and msgs[1][1] == b"p"
    assert impl.fill_ring(w, buffer, inflight, unacked, 10) == (2, 0)       # buffer exhausted
    assert not buffer


def test_fill_ring_stops_when_out_of_bytes_or_at_a_large_message(impl):
    from collections import deque

    w, r, _ = make_ring(impl)
    inflight, buffer, unacked = {}, deque(), deque()
    impl.take_claimed(claim_reply(40, b"x" * 300), inflight, buffer, 0)
    written, why = impl.fill_ring(w, buffer, inflight, unacked, 40)
    assert 0 < written < 40 and why == 1 and len(buffer) == 40 - written
    r.read_many(100)
    big = {}
    impl.take_claimed(claim_reply(1, b"y" * w.max_chunk), big, deque(), 0)
    buf2 = deque([1])
    assert impl.fill_ring(w, buf2, big, deque(), 5) == (0, 2) and list(buf2) == [1]  # caller streams it


def test_drain_results_and_build_event(impl):
    from collections import deque

    w, r, _ = make_ring(impl)
    F = impl.InFlight
    inflight = {1: F(0, b"a", b"n", b"", b"j", 1), 2: F(1, b"b", b"n", b"", b"j", 1), 3: F(0, b"c", b"n", b"", b"j", 2),
                4: F(0, b"d", b"n", b"", b"j", 1), 5: F(1, b"e", b"n", b"", b"j", 1)}
    unacked = deque([1, 2, 3, 4, 5])
    w.write(impl.encode_result_head(2, impl.ST_FAILED, b"j", 1.0, 1.5, b"boom"), b"")
    w.write(impl.encode_result_head(1, impl.ST_DONE, b"b", 2.0, 2.25, b""), b"res")
    w.write(impl.encode_result_head(9, impl.ST_DONE, b"j", 2.0, 2.5, b""), b"unknown seq: ignored")
    w.write(impl.encode_result_head(4, impl.ST_RETRY, b"j", 3.0, 3.5, b"again"), b"1500,3")
    w.write(impl.encode_result_head(5, impl.ST_CANCELED, b"j", 4.0, 4.25, b"stop"), b"")
    completions = {}
    n, busy = impl.drain_results(r, inflight, completions, unacked, 100)
    assert (n, busy) == (5, 1.5)
    assert list(unacked) == [3] and list(inflight) == [3]
    # the attempt travels with each task: COMPLETE records it only if this worker still holds that attempt
    assert completions == {0: [b"a", 1, b"done", b"res", b"b", 2000, 2250,
                               b"d", 1, b"retry", b"again", b"1500,3", 3000, 3500],
                           1: [b"b", 1, b"failed", b"boom", b"", 1000, 1500,
                               b"e", 1, b"canceled", b"stop", b"", 4000, 4250]}
    ev = impl.build_event(b"q", completions[0] + [b"c", 2, b"failed", b"", b"", 0, 0], 123)
    assert ev == _pyfast.build_event(b"q", completions[0] + [b"c", 2, b"failed", b"", b"", 0, 0], 123)
    import orjson

    # only done tasks: the script publishes the others, as only it knows the state they lead to
    assert orjson.loads(ev) == [{"id": "a", "queue": "q", "state": "done", "ts": 123}]
    assert impl.build_event(b"q", completions[1], 123) == b""


def test_drain_results_counts_done_tasks_per_queue_and_name_for_the_stats_history(impl):
    from collections import deque

    w, r, _ = make_ring(impl)
    F = impl.InFlight
    inflight = {1: F(0, b"a", b"x", b"", b"j", 1), 2: F(0, b"b", b"x", b"", b"j", 1), 3: F(0, b"c", b"y", b"", b"j", 1),
                4: F(1, b"d", b"x", b"", b"j", 1), 5: F(0, b"e", b"x", b"", b"j", 1)}
    w.write(impl.encode_result_head(1, impl.ST_DONE, b"j", 1.0, 1.5, b""), b"1")
    w.write(impl.encode_result_head(2, impl.ST_DONE, b"j", 2.0, 2.25, b""), b"1")
    w.write(impl.encode_result_head(3, impl.ST_DONE, b"j", 2.0, 3.0, b""), b"1")
    w.write(impl.encode_result_head(4, impl.ST_DONE, b"j", 2.0, 2.125, b""), b"1")
    w.write(impl.encode_result_head(5, impl.ST_FAILED, b"j", 2.0, 9.0, b"boom"), b"")  # failures: counted in Redis
    stats = {0: {b"x": [1, 1.0]}}  # what an earlier drain of this step left
    assert impl.drain_results(r, inflight, {}, deque([1, 2, 3, 4, 5]), 100, None, stats) == (5, 8.875)
    assert stats == {0: {b"x": [3, 1.75], b"y": [1, 1.0]}, 1: {b"x": [1, 0.125]}}


def test_done_event_carries_a_small_json_result(impl):
    items = [b"a", 1, b"done", b'{"k":[1,2]}', b"j", 0, 0,
             b"b", 1, b"done", b"[" + b"1," * impl.EVENT_RESULT_MAX + b"1]", b"j", 0, 0,   # too large: read it
             b"c", 2, b"done", b"raw", b"b", 0, 0,                                          # bytes: read it
             b"d", 1, b"failed", b"boom", b"j", 0, 0]
    import orjson

    ev = orjson.loads(impl.build_event(b"q", items, 5))
    assert ev[0] == {"id": "a", "queue": "q", "state": "done", "ts": 5, "result": {"k": [1, 2]}}
    assert [("result" in e) for e in ev] == [True, False, False]  # and no event for d: not done
    assert impl.build_event(b"q", items, 5) == _pyfast.build_event(b"q", items, 5)


def test_missing_extension_falls_back_to_the_twin_and_says_so_once(redis_url):
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        "sys.modules['xq._fast'] = None  # as if the extension had never been built\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s %(levelname)s %(message)s')\n"
        "import xq, xq._impl, xq.supervisor, xq.child, xq.producer\n"
        "print(xq._impl.IMPLEMENTATION)\n"
        f"print(len(xq.Producer({redis_url!r}).enqueue_many('noop', [1, b'2'])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "XQ_PURE"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["python", "2"]
    assert out.stderr.count("xq WARNING xq._fast extension not built; running the slow pure-Python path") == 1


def test_progress_frames_keep_the_task_in_flight_and_the_last_one_wins(impl):
    from collections import deque

    w, r, _ = make_ring(impl)
    inflight = {1: impl.InFlight(0, b"a", b"n", b"", b"j", 1), 2: impl.InFlight(1, b"b", b"n", b"", b"j", 1)}
    unacked = deque([1, 2])
    w.write(impl.encode_result_head(1, impl.ST_PROGRESS, b"j", 1.0, 1.0, b'"progress":10'), b'{"pct":10}')
    w.write(impl.encode_result_head(1, impl.ST_PROGRESS, b"j", 2.0, 2.0, b'"progress":20'), b'{"pct":20}')
    w.write(impl.encode_result_head(7, impl.ST_PROGRESS, b"j", 2.0, 2.0, b'"progress":1'), b"unknown: dropped")
    w.write(impl.encode_result_head(2, impl.ST_PROGRESS, b"j", 3.0, 3.0, b'"progress":5'), b'{"pct":5}')
    w.write(impl.encode_result_head(2, impl.ST_DONE, b"j", 3.0, 3.5, b""), b"1")
    completions, progress = {}, {}
    assert impl.drain_results(r, inflight, completions, unacked, 100, progress) == (1, 0.5)
    assert list(unacked) == [1] and list(inflight) == [1]
    assert progress == {1: (0, b"a", b'{"pct":20}', b'"progress":20', 2000), 2: (1, b"b", b'{"pct":5}', b'"progress":5', 3000)}
    assert completions == {1: [b"b", 1, b"done", b"1", b"j", 3000, 3500]}
    w.write(impl.encode_result_head(1, impl.ST_PROGRESS, b"j", 1.0, 1.0, b""), b"")
    assert impl.drain_results(r, inflight, {}, unacked, 100) == (0, 0.0)  # no progress dict: dropped
    assert list(inflight) == [1]


def test_disarm_without_a_wake_up_skips_the_read_and_a_late_one_wakes_once(impl):
    """disarm(readable=False), the supervisor's call when poll() did not report the eventfd: no read.  A
    wake-up written after poll() returned is then left in the eventfd; it makes the next poll() return at
    once (one spurious wake-up, consumed by that disarm), and the one after sleeps again."""
    import select

    w, r, efd = make_ring(impl)

    def readable(timeout_ms: int) -> bool:
        p = select.poll()
        p.register(efd, select.POLLIN)
        return bool(p.poll(timeout_ms))

    assert r.arm() is True
    assert not readable(0)
    r.disarm(False)                       # woken by something else: nothing to consume
    assert not readable(0)
    assert r.arm() is True
    w.write(b"h", b"b")                   # the writer sees the reader asleep and writes the eventfd ...
    r.disarm(False)                       # ... after the reader's poll() returned for another fd
    assert r.read() == (b"h", b"b")
    assert r.arm() is True                # empty again: the reader may sleep
    assert readable(1000)                 # the late wake-up: at once
    r.disarm(True)                        # consumed
    assert r.arm() is True
    assert not readable(50)               # and the next sleep is a real one
    r.disarm(False)
