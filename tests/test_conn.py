"""The connection layer (xq.conn) and the broker's guard, against real redis-servers and the fault proxy."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time

import pytest
import redis

import xq
from xq import conn
from xq.broker import Broker
from xq.keys import queue_keys


# --- what a failure means -------------------------------------------------------------------------------
@pytest.mark.parametrize("exc, kind", [
    (redis.ConnectionError("Error 111 connecting"), "network"),
    (redis.TimeoutError("Timeout reading"), "network"),
    (redis.exceptions.BusyLoadingError("Redis is loading"), "network"),
    (redis.ReadOnlyError("You can't write against a read only replica."), "network"),
    (redis.exceptions.MaxConnectionsError("Too many connections"), "network"),
    (ConnectionResetError(errno.ECONNRESET, "reset"), "network"),
    (OSError(errno.EHOSTUNREACH, "no route"), "network"),
    (redis.AuthenticationError("invalid username-password pair"), "refused"),
    (redis.ResponseError("DB index is out of range"), "refused"),
    (redis.ResponseError("NOPERM this user has no permissions"), "refused"),
    (redis.ResponseError("WRONGTYPE Operation against a key"), None),
    (OSError(errno.EBADF, "bad file descriptor"), None),   # our bug, not the network's
    (PermissionError(errno.EACCES, "denied"), None),
    (ValueError("x"), None),
])
def test_classify(exc, kind):
    assert conn.classify(exc) == kind


def test_translate_masks_the_password_and_names_the_url():
    url = "redis://:hunter2@10.0.0.1:6379/0"
    lost = conn.translate(redis.ConnectionError("Error 111"), url)
    assert isinstance(lost, xq.ConnectionLost) and isinstance(lost, xq.XQError) and isinstance(lost, ConnectionError)
    assert "hunter2" not in str(lost) and ":***@10.0.0.1" in str(lost) and "unreachable" in str(lost)
    refused = conn.translate(redis.AuthenticationError("invalid username-password pair"), url)
    assert isinstance(refused, xq.RedisRefused) and "authentication failed" in str(refused)
    bug = ValueError("x")
    assert conn.translate(bug, url) is bug


@pytest.mark.parametrize("url, says", [
    ("http://x:1/0", "scheme 'http'"),
    ("redis://127.0.0.1:99999/0", "Port out of range"),
    ("redis://127.0.0.1:6379/abc", "database 'abc'"),
    ("redis:///0", "no host"),
])
def test_bad_urls_are_config_errors(url, says):
    with pytest.raises(xq.ConfigError, match=says):
        xq.Producer(url)
    with pytest.raises(xq.ConfigError, match="expected redis://"):
        conn.check_url("")


def test_backoff_is_capped_jittered_and_resets():
    b = conn.Backoff(0.1, 1.0)
    delays = [b.next() for _ in range(20)]
    assert all(0.1 <= d <= 1.0 for d in delays)
    assert len({round(d, 6) for d in delays[5:]}) > 1  # jitter: not lockstep
    b.reset()
    assert b.next() <= 0.2


def test_health_logs_each_change_once(caplog):
    h = conn.Health("supervisor", "redis://:pw@127.0.0.1:1/0")
    with caplog.at_level(logging.INFO, logger="xq"):
        for _ in range(50):
            h.down(xq.ConnectionLost("Redis at x unreachable"), retry_in=0.1)
        h.down(xq.RedisRefused("Redis at x refused us"), retry_in=0.1)  # the reason changed: said once more
        h.down(xq.RedisRefused("Redis at x refused us"), retry_in=0.1)
        h.up()
        h.up()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "unreachable" in lines[0] and "refuses us" in lines[1] and "reachable again" in lines[2]
    assert all("pw" not in line for line in lines)


# --- defect 1: dropped connections never use up the pool --------------------------------------------------
def test_dropped_connections_never_exhaust_the_pool(redis_url, r):
    """~150 server-side kills of every connection of a producer and of a broker's dedicated ones: each
    call after a kill reconnects; none fails with "Too many connections"."""
    p = xq.Producer(redis_url)
    b = Broker(redis_url)
    b.load_scripts()
    try:
        qk = queue_keys("default")
        for i in range(150):
            assert p.enqueue("echo", i)
            for attempt in range(2):  # a killed connection fails once (its owner's cue to reconnect), never twice
                try:
                    b.send_packed(b"*1\r\n$4\r\nPING\r\n")
                    assert b.read_reply() in (b"PONG", "PONG", True)
                    break
                except xq.ConnectionLost as e:
                    assert attempt == 0 and "Too many connections" not in str(e)
            r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert r.llen(qk.ready[5]) == 150
        assert b.client.connection_pool._created_connections <= 2
    finally:
        p.close()
        b.close()


# --- defect 5: a producer's resend never duplicates ------------------------------------------------------
def test_enqueue_resent_after_a_lost_reply_stores_each_task_once(redis_url, r):
    """Send a batch, lose the replies (as a cut connection does), send it again: nothing twice."""
    from xq.producer import prepare_enqueue

    b = Broker(redis_url)
    b.load_scripts()
    prep = prepare_enqueue(None, b, 100, 1 << 20, "echo", list(range(250)), unique_key=None)
    for _ in range(2):
        for cmd in prep.commands:
            b.send_packed(cmd)
        b.reset()  # the replies are never read
    time.sleep(0.2)
    for cmd in prep.commands:
        b.send_packed(cmd)
    assert [b.read_reply() for _ in prep.commands] == [0, 0, 0]  # all there already: nothing new
    qk = queue_keys("default")
    assert r.llen(qk.ready[5]) == 250
    assert len(set(r.lrange(qk.ready[5], 0, -1))) == 250
    b.close()


def test_group_resent_after_a_lost_reply_is_one_group(redis_url, r):
    b = Broker(redis_url)
    b.load_scripts()
    qk = queue_keys("default")
    b.group(qk, "open", "G1")
    b.group(qk, "open", "G1")  # the resend of an open whose reply was lost
    p = xq.Producer(redis_url)
    p.enqueue_many("echo", [1, 2], _group="G1")
    b.group(qk, "seal", "G1", callback_id="CB1", name="echo", payload=b"[]")
    b.group(qk, "seal", "G1", callback_id="CB1", name="echo", payload=b"[]")
    assert r.hget(qk.group("G1"), "total") == b"2" and r.hget(qk.group("G1"), "left") == b"2"
    with pytest.raises(redis.ResponseError, match="is not open"):
        b.group(qk, "seal", "G1", callback_id="OTHER", name="echo", payload=b"[]")  # not ours: refused
    p.close()
    b.close()


def test_unique_key_of_a_resent_enqueue_is_not_left_held(redis_url, r):
    p = xq.Producer(redis_url)
    from xq.producer import prepare_enqueue

    prep = prepare_enqueue(None, p.broker, 100, 1 << 20, "echo", [1], unique_key="u1")
    p.broker.load_scripts()
    p.broker.send_packed(prep.commands[0])
    assert p.broker.read_reply() == 1
    qk = queue_keys("default")
    r.delete(qk.unique("u1"))  # as if the task had ended meanwhile, releasing its key
    p.broker.send_packed(prep.commands[0])  # the resend
    assert p.broker.read_reply() == 0
    assert not r.exists(qk.unique("u1"))
    p.close()


def test_producer_gives_up_after_retry_for_with_what_it_knows():
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    p = xq.Producer(url, retry_for=0.5)
    t0 = time.monotonic()
    with pytest.raises(xq.ConnectionLost) as ei:
        p.enqueue_many("echo", list(range(2500)))
    assert time.monotonic() - t0 < 5
    e = ei.value
    assert e.stored == [] and e.unknown == [] and "2500 not sent" in str(e) and url in str(e)
    p.close()


def test_producer_rides_out_a_short_outage(fault_proxy):
    r = redis.Redis.from_url(fault_proxy.redis.url)
    p = xq.Producer(fault_proxy.url(), retry_for=20)
    p.enqueue("echo", 0)
    fault_proxy.refuse(True)
    threading.Timer(1.0, fault_proxy.refuse, args=(False,)).start()
    ids = p.enqueue_many("echo", list(range(3000)))  # retried until the proxy lets it through
    assert len(set(ids)) == 3000
    assert r.llen(queue_keys("default").ready[5]) == 3001
    p.close()
    r.close()


def test_result_waits_through_cuts(fault_proxy):
    """A result() wait whose Pub/Sub connection is cut subscribes again and reads the record, so a
    completion published during the gap is not missed."""
    r = redis.Redis.from_url(fault_proxy.redis.url)
    p = xq.Producer(fault_proxy.url(), retry_for=20)
    tid = p.enqueue("echo", 7)
    key = queue_keys("default").task(tid)

    def finish():
        time.sleep(0.5)
        fault_proxy.cut()
        r.hset(key, mapping={"state": "done", "result": b"7"})  # while the waiter is cut off
        time.sleep(0.5)
        fault_proxy.cut()

    threading.Thread(target=finish, daemon=True).start()
    assert p.result(tid, timeout=20) == 7
    p.close()
    r.close()


def test_async_result_waiters_share_one_connection_and_survive_cuts(fault_proxy):
    r = redis.Redis.from_url(fault_proxy.redis.url)
    qk = queue_keys("default")

    async def main():
        async with xq.AsyncProducer(fault_proxy.url(), retry_for=20) as p:
            ids = await p.enqueue_many("echo", list(range(20)))
            waits = [asyncio.ensure_future(p.result(t, timeout=20)) for t in ids]
            await asyncio.sleep(0.5)
            assert r.pubsub_numsub(qk.events)[0][1] == 1  # twenty waiters, one subscription
            fault_proxy.cut()
            for i, t in enumerate(ids):  # finish them, half during a second cut
                if i == 10:
                    fault_proxy.cut()
                r.hset(qk.task(t), mapping={"state": "done", "result": str(i).encode()})
                r.publish(qk.events, f'[{{"id":"{t}","queue":"default","state":"done","ts":1,"result":{i}}}]')
            return await asyncio.gather(*waits)

    assert asyncio.run(main()) == list(range(20))
    r.close()


def _closed_port() -> int:
    from helpers import free_port

    return free_port()


def test_password_rotated_under_a_running_supervisor_is_reported_and_retried(fresh_redis):
    """After start, a refused AUTH (the password was rotated) is logged as such, once, and retried: the
    supervisor neither exits nor spins; once the password is right again, queued work is done."""
    from xqrun import XQRun, wait_for

    r = redis.Redis.from_url(fresh_redis.url)
    p = xq.Producer(fresh_redis.url)
    try:
        with XQRun(fresh_redis.url, procs=1) as w:
            assert p.result(p.enqueue("echo", 1), timeout=20) == 1
            r.config_set("requirepass", "rotated")  # connections already open stay authenticated...
            r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # ...until they are cut
            r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            wait_for(lambda: "refuses us" in w.output(), timeout=20, what="the refusal in the log")
            time.sleep(2.0)
            assert w.proc.poll() is None
            assert w.output().count("refuses us") == 1, w.output()
            tid = xq.Producer(fresh_redis.url.replace("redis://", "redis://:rotated@")).enqueue("echo", 2)
            r.config_set("requirepass", "")
            assert p.result(tid, timeout=30) == 2
            assert "reachable again" in w.output()
    finally:
        r.config_set("requirepass", "")
        p.close()
        r.close()


def _finish(r, tid: str, value: int) -> None:
    qk = queue_keys("default")
    r.hset(qk.task(tid), mapping={"state": "done", "result": str(value).encode(), "fin": "1"})
    r.publish(qk.events, f'[{{"id":"{tid}","queue":"default","state":"done","ts":1}}]')


def test_event_streams_follow_tasks_through_cuts(fault_proxy):
    """events(until_done) of sync and asyncio producers: a task that ends while the stream is cut off
    still gets its (synthetic) final event, and the stream ends."""
    r = redis.Redis.from_url(fault_proxy.redis.url)
    p = xq.Producer(fault_proxy.url(), retry_for=20)
    a, b = p.enqueue_many("echo", [1, 2])
    stream = p.events(ids=[a, b], until_done=True, timeout=30)

    def work():
        time.sleep(0.3)
        _finish(r, a, 1)
        time.sleep(0.3)
        fault_proxy.refuse(True)   # cut off...
        _finish(r, b, 2)           # ...while b ends
        time.sleep(0.5)
        fault_proxy.refuse(False)

    threading.Thread(target=work, daemon=True).start()
    seen = {(ev["id"], ev["state"]) for ev in stream}
    assert {(a, "done"), (b, "done")} <= seen
    p.close()

    async def aio():
        async with xq.AsyncProducer(fault_proxy.url(), retry_for=20) as ap:
            c, d = await ap.enqueue_many("echo", [3, 4])
            got = []
            async with ap.events(ids=[c, d], until_done=True, timeout=30) as st:
                threading.Timer(0.3, lambda: (_finish(r, c, 3), fault_proxy.cut(), _finish(r, d, 4))).start()
                async for ev in st:
                    got.append((ev["id"], ev["state"]))
            return c, d, got

    c, d, got = asyncio.run(aio())
    assert {(c, "done"), (d, "done")} <= set(got)
    r.close()


def test_a_call_that_raised_connection_lost_can_be_repeated_with_its_ids(fault_proxy):
    r = redis.Redis.from_url(fault_proxy.redis.url)
    p = xq.Producer(fault_proxy.url(), retry_for=0.5, socket_timeout=2)
    p.enqueue("echo", 0)
    ids = xq.new_ids(3000)
    fault_proxy.stall("down")  # Redis stores what arrives; the replies never come back
    with pytest.raises(xq.ConnectionLost) as ei:
        p.enqueue_many("echo", list(range(3000)), ids=ids)
    fault_proxy.resume()
    fault_proxy.cut()
    assert set(ei.value.stored) | set(ei.value.unknown) <= set(ids)
    assert p.enqueue_many("echo", list(range(3000)), ids=ids) == ids  # the repeat: nothing twice
    assert r.llen(queue_keys("default").ready[5]) == 3001
    assert p.enqueue("echo", 1, task_id="order-17") == "order-17"
    with pytest.raises(xq.ConfigError, match="invalid task id"):
        p.enqueue("echo", 1, task_id="has space")
    p.close()
    r.close()


def test_reply_ready_never_waits_for_a_reply(redis_url):
    """The supervisor asks reply_ready() between other work: with a reply outstanding but not arrived, it
    answers False at once (a socket with a timeout would otherwise wait for data up to that timeout), then
    True once the reply is there, and read_reply() returns it."""
    from xq._impl import fast
    from xq.broker import Broker

    b = Broker(redis_url)  # socket timeout 30 s, as the supervisor's
    b.send_packed(fast.pack_command([b"BLPOP", b"xq-test:never", b"1"]))  # replies (nil) after 1 s
    t0 = time.monotonic()
    assert b.reply_ready() is False
    assert time.monotonic() - t0 < 0.5  # it did not wait for the reply (due in 1 s)
    for _ in range(300):  # bounded: up to 3 s
        if b.reply_ready():
            break
        time.sleep(0.01)
    assert b.read_reply() is None
    b.send_packed(fast.pack_command([b"PING"]) * 3)
    got = []
    for _ in range(300):
        if b.reply_ready():
            got.append(b.read_reply())
            if len(got) == 3:
                break
        else:
            time.sleep(0.01)
    assert got == [b"PONG"] * 3
    assert b.reply_ready() is False
    b.reset()


def test_raw_sends_larger_than_the_socket_takes_at_once_arrive_whole(redis_url, r):
    """The supervisor's raw path: a command far larger than the socket's buffer (its writes are partial)
    arrives whole, and the replies of large pipelined commands, read as they come, are all there and in
    order."""
    from xq._impl import fast

    b = Broker(redis_url)
    b.send_packed(fast.pack_command([b"PING"]))  # connects
    assert b.read_reply() == b"PONG"
    big = bytes(range(256)) * (24 * 4096)  # 24 MiB
    b.send_packed(fast.pack_command([b"SET", b"xq-test:big", big]) + fast.pack_command([b"STRLEN", b"xq-test:big"]))
    assert b.read_reply() == b"OK"
    assert b.read_reply() == len(big)
    assert r.get("xq-test:big") == big
    b.send_packed(b"".join(fast.pack_command([b"GETRANGE", b"xq-test:big", i * 1000, i * 1000 + 999_999])
                           for i in range(20)))
    got = []
    for _ in range(1000):  # bounded: up to 10 s
        while len(got) < 20 and b.reply_ready():
            got.append(b.read_reply())
        if len(got) == 20:
            break
        time.sleep(0.01)
    assert got == [big[i * 1000:i * 1000 + 1_000_000] for i in range(20)]
    assert b.reply_ready() is False
    b.reset()


def test_a_raw_send_to_a_cut_connection_is_a_connection_error(fault_proxy):
    """A write to a connection the network cut is an outage the caller sees (one of conn.OUTAGE, what the
    supervisor's loop backs off and reconnects on), not a hang and not a silent loss."""
    from xq._impl import fast

    b = Broker(fault_proxy.url())
    b.send_packed(fast.pack_command([b"PING"]))
    assert b.read_reply() == b"PONG"
    fault_proxy.cut()
    with pytest.raises(conn.OUTAGE):
        for _ in range(50):  # a reset reaches the client within a few writes
            b.send_packed(fast.pack_command([b"SET", b"xq-test:k", b"x" * 1_000_000]))
            time.sleep(0.02)
    b.reset()


def test_the_sentinels_answer_moves_to_a_promoted_master_and_not_back_on_a_minority():
    # During a failover one sentinel names the promoted replica first; the others catch up seconds later,
    # while the old master still says it is a master.  Follow the first; do not go back on the others.
    from xq.conn import _choose

    a, b = ("10.0.0.1", 6379), ("10.0.0.2", 6379)
    masters = {a, b}.__contains__  # both say ROLE master during the window
    assert _choose([a, a, a], None, masters) == a
    assert _choose([b, a, a], a, masters) == b                 # the leader names the promoted one: follow
    assert _choose([b, a, a], b, masters, previous=a) == b     # the others still name the old one: stay
    assert _choose([a, a, a], b, masters, previous=a) == a     # ... unless all name it again (a new failover)
    assert _choose([b, a, a], a, {a}.__contains__) == a        # a named address that is no master: ignored
    assert _choose([], a, masters) is None
