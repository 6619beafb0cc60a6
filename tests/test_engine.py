"""End to end: the real `xq run` against a real redis-server; Redis state is checked directly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import xq
from xq.keys import queue_keys
from xqrun import TESTS, XQRun, wait_for

pytestmark = pytest.mark.topologies("single", "cluster")
ALL_THREE = pytest.mark.topologies("single", "cluster", "sentinel")  # the basic drain, results and status

IMPLS = [pytest.param(False, id="cython"), pytest.param(True, id="pure")]


def execs(r) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall("test:execs").items()}


def states(r, ids, queue="default") -> dict[str, int]:
    qk = queue_keys(queue)
    pipe = r.pipeline(transaction=False)
    for i in ids:
        pipe.hget(qk.task(i), "state")
    out: dict[str, int] = {}
    for s in pipe.execute():
        out[(s or b"missing").decode()] = out.get((s or b"missing").decode(), 0) + 1
    return out


def assert_queue_empty(r, queue="default"):
    qk = queue_keys(queue)
    assert sum(r.llen(k) for k in qk.ready) == 0
    assert r.zcard(qk.leases) == 0


@pytest.fixture
def n_drain(topology) -> int:
    """Tasks in the big drain: 10,000 on one Redis, 2,000 on a Cluster or Sentinel set (the same one-queue,
    one-slot drain through the same scripts, only slower there)."""
    return 10_000 if topology == "single" else 2_000


@ALL_THREE
@pytest.mark.parametrize("pure", IMPLS)
def test_10k_tasks_each_done_exactly_once(redis_url, r, pure, n_drain):
    p = xq.Producer(redis_url)
    ids = p.enqueue_many("count", list(range(n_drain)))
    assert len(set(ids)) == n_drain
    with XQRun(redis_url, burst=True, pure=pure) as w:
        assert w.wait(120) == 0, w.output()
    assert states(r, ids) == {"done": n_drain}
    counts = execs(r)
    assert len(counts) == n_drain and set(counts.values()) == {1}
    assert_queue_empty(r)
    assert p.result(ids[1234], timeout=5) == 1234


@ALL_THREE
def test_results_status_context_and_processor(redis_url, r):
    p = xq.Producer(redis_url)
    with XQRun(redis_url) as w:
        a = p.enqueue("echo", {"a": [1, 2], "b": "x"})
        assert p.result(a, timeout=20) == {"a": [1, 2], "b": "x"}
        b = p.enqueue("reverse", b"\x00\x01binary\xff")
        assert p.result(b, timeout=20) == b"\xffyranib\x01\x00"
        c = p.enqueue("ctx", None, queue="default")
        assert p.result(c, timeout=20) == {"id": c, "name": "ctx", "queue": "default", "attempt": 1}
        d = p.enqueue("thumb", b"abcdefgh")
        assert p.result(d, timeout=20) == b"T:abcd"
        big = {"big": "x" * 2000}  # over the size a completion event carries inline: read from the record
        assert p.result(p.enqueue("echo", big), timeout=20) == big
        st = p.status(a)
        assert st["status"] == "done" and st["attempts"] == 1 and st["error"] is None
        assert st["enqueued_at"] <= st["claimed_at"] and st["started_at"] <= st["finished_at"]
        assert st["worker"] and st["name"] == "echo" and st["queue"] == "default"
        # status from a producer that did not enqueue it: found through the queue index
        assert xq.Producer(redis_url).status(a)["status"] == "done"
    assert w.proc.returncode == 0


@ALL_THREE
def test_status_moves_queued_running_done(redis_url, r):
    p = xq.Producer(redis_url)
    tid = p.enqueue("sleep", {"s": 1.0})
    st = p.status(tid)
    assert st["status"] == "queued" and st["attempts"] == 0 and st["worker"] is None
    with XQRun(redis_url, procs=1) as w:
        wait_for(lambda: r.llen("test:started") >= 1, what="task started")
        st = p.status(tid)
        assert st["status"] == "running" and st["attempts"] == 1
        assert st["worker"] and st["claimed_at"] >= st["enqueued_at"] and st["finished_at"] is None
        # a running task has a start time (it was null until the outcome: the claim's time stands for it)
        assert st["started_at"] == st["claimed_at"] == st["history"][-1]["started_at"]
        assert p.result(tid, timeout=20) == {"s": 1.0}
        done = p.status(tid)
        assert done["status"] == "done" and done["claimed_at"] <= done["started_at"] <= done["finished_at"]
    assert w.proc.returncode == 0


def test_idle_supervisor_starts_new_task_and_result_waits(redis_url, r):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, procs=1) as w:
        first = p.enqueue("echo", 1)
        assert p.result(first, timeout=20) == 1
        # idle now (blocked on the wake marker); a new task is picked up at once
        for i in range(20):
            assert p.result(p.enqueue("echo", i), timeout=10) == i
        assert w.proc.poll() is None


@pytest.mark.parametrize("retain", [True, False], ids=["retain-memory", "no-retain-memory"])
def test_children_retain_freed_memory_unless_told_not_to(redis_url, r, retain):
    # Kept memory spares big-buffer handlers a page fault per page per task; --no-retain-memory gives
    # freed memory back to the OS at once (glibc's default behaviour).
    p = xq.Producer(redis_url)
    with XQRun(redis_url, *([] if retain else ["--no-retain-memory"]), procs=1):
        kept = p.result(p.enqueue("mem.kept", None), timeout=20)
    assert kept >= 20 if retain else kept <= 4


@ALL_THREE
def test_handler_error_fails_only_that_task(redis_url, r):
    p = xq.Producer(redis_url)
    bad = p.enqueue("boom", 7)
    good = p.enqueue_many("echo", [1, 2, 3])
    with XQRun(redis_url, burst=True) as w:
        assert w.wait(60) == 0
        # one log line for the failed attempt, as Celery and RQ log them; no guess at whether a retry follows
        # (the record's max_retries decides, in Redis): here none does
        assert f"task {bad} (boom) attempt 1 failed: ValueError: boom 7" in w.output(), w.output()
    st = p.status(bad)
    assert st["status"] == "dead" and "ValueError: boom 7" in st["error"] and st["attempts"] == 1
    assert st["reason"] == "failed on the last of 1 attempts"
    assert [h["outcome"] for h in st["history"]] == ["failed"] and st["history"][0]["error"] == "ValueError: boom 7"
    with pytest.raises(xq.TaskFailed, match="boom 7"):
        p.result(bad, timeout=5)
    assert states(r, good) == {"done": 3}


def test_unknown_name_unserializable_result_and_malformed_payload(redis_url, r):
    p = xq.Producer(redis_url)
    unknown = p.enqueue("no.such.task", {})
    unser = p.enqueue("unserializable", None)
    # a foreign producer writes a payload that is not JSON
    qk = queue_keys("default")
    r.hset(qk.task("MALFORMED1"), mapping={"name": "echo", "queue": "default", "payload": b"{not json",
                                           "ct": "j", "state": "queued", "pri": 5, "maxr": 3, "att": 0})
    r.rpush(qk.ready[5], "MALFORMED1")
    # an id with no record at all, and one whose record is already finished
    r.rpush(qk.ready[5], "NORECORD1")
    ok = p.enqueue("echo", "fine")
    with XQRun(redis_url, burst=True) as w:
        assert w.wait(60) == 0
        log = w.output()
    # none of these can succeed on a retry: dead at once, in the dead-letter set
    assert "unknown task name 'no.such.task'" in p.status(unknown)["error"]
    assert "cannot be serialized to JSON" in p.status(unser)["error"]
    st = p.status("MALFORMED1", queue="default")
    assert st["status"] == "dead" and "malformed JSON payload" in st["error"] and st["attempts"] == 1
    assert st["reason"] == "failed, not retried"
    assert {t["id"] for t in p.dead_letters("default")} == {unknown, unser, "MALFORMED1"}
    assert "NORECORD1" in log and "no task record" in log
    assert p.result(ok, timeout=5) == "fine"
    assert_queue_empty(r)


def test_oversized_payload(redis_url, r):
    p = xq.Producer(redis_url, max_payload=1000)
    with pytest.raises(xq.PayloadTooLarge, match="payload #1 is 2000 bytes, over max_payload=1000"):
        p.enqueue_many("echo", [b"x", b"y" * 2000])
    assert r.llen(queue_keys("default").ready[5]) == 0  # nothing of that batch was enqueued
    big = xq.Producer(redis_url).enqueue("reverse", b"z" * 5000)
    small = xq.Producer(redis_url).enqueue("reverse", b"ab")
    with XQRun(redis_url, "--max-payload", "4096", burst=True) as w:
        assert w.wait(60) == 0
    st = p.status(big)
    assert st["status"] == "dead" and "payload of 5000 bytes exceeds max_payload of 4096 bytes" in st["error"]
    assert st["reason"] == "payload too large, not retried"
    assert p.result(small, timeout=5) == b"ba"


def test_large_payload_streams_through_ring(redis_url, r):
    p = xq.Producer(redis_url)
    blob = os.urandom(5 * 1024 * 1024 + 13)  # larger than a ring
    with XQRun(redis_url, procs=1) as w:
        tid = p.enqueue("reverse", blob)
        assert p.result(tid, timeout=60) == blob[::-1]


def test_bad_input_errors():
    with pytest.raises(xq.ConfigError, match="invalid Redis URL 'http://x'"):
        xq.Producer("http://x")
    p = xq.Producer("redis://127.0.0.1:1/0")
    with pytest.raises(xq.ConfigError, match="invalid queue name 'a b'"):
        p.enqueue("echo", 1, queue="a b")
    with pytest.raises(xq.ConfigError, match="invalid priority 11"):
        p.enqueue("echo", 1, priority=11)
    with pytest.raises(xq.ConfigError, match="unknown enqueue option"):
        p.enqueue("echo", 1, colour="red")
    with pytest.raises(TypeError):
        p.enqueue("echo", object())


def test_cli_bad_url_and_import_failure(redis_url):
    env = {**os.environ, "XQ_TEST_REDIS": redis_url}
    out = subprocess.run([sys.executable, "-m", "xq.cli", "run", "apps.basic:app", "--redis", "http://nope"],
                         cwd=TESTS, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "invalid Redis URL 'http://nope'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "xq.cli", "run", "apps.broken:app", "--redis", redis_url],
                         cwd=TESTS, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 4 and "cannot import module 'apps.broken'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "xq.cli", "run", "apps.basic:nothing", "--redis", redis_url],
                         cwd=TESTS, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 4 and "is not an xq.App" in out.stderr


@ALL_THREE
def test_priorities_and_queue_order(redis_url, r):
    p = xq.Producer(redis_url)
    low = p.enqueue_many("count", ["low"] * 5, priority="low")
    high = p.enqueue_many("count", ["high"] * 5, priority=0)
    other = p.enqueue_many("other", [1, 2], queue="other")
    with XQRun(redis_url, procs=1, burst=True, queues="other,default") as w:
        assert w.wait(60) == 0
    assert [x.decode() for x in r.lrange("test:order", 0, -1)] == other + high + low


def test_redis_cli_producer_per_protocol(request, topology, redis_url, r):
    """A producer with no xq at all, following docs/protocol.md (on a Cluster, redis-cli -c at the master of
    {default}'s slot: the MULTI is all {default} keys, the SADD after it is redirected)."""
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    script = doc.split("redis-cli <<'EOF'\n", 1)[1].split("EOF\n", 1)[0]
    task_id = script.split("xq:{default}:t:", 1)[1].split()[0]
    assert set(task_id) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ"), "the example id must use the id alphabet"
    if topology == "cluster":
        args = ["-c", "-p", str(request.getfixturevalue("cluster").master_of("{default}"))]
    else:
        args = ["-p", str(request.getfixturevalue("redis_server").port)]
    out = subprocess.run(["redis-cli", *args], input=script, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    with XQRun(redis_url, burst=True) as w:
        assert w.wait(60) == 0
    p = xq.Producer(redis_url)
    assert p.result(task_id, timeout=5) == {"from": "redis-cli"}


def test_no_shared_memory_left_behind(redis_url):
    before = set(os.listdir("/dev/shm"))
    p = xq.Producer(redis_url)
    p.enqueue_many("echo", list(range(100)))
    with XQRun(redis_url) as w:
        wait_for(lambda: len(w.children()) == 2, what="children")
        w.kill()  # SIGKILL: nothing gets to clean up
    assert set(os.listdir("/dev/shm")) - before == set()


def test_burst_exits_without_waiting_out_an_idle_wait(redis_url, r):
    """--burst: once the last task ends, the claim that finds the queues drained goes out at once; it used
    to sit behind one or two idle waits (BZPOPMIN, 1 s each), so every burst run ended >= 2 s after its
    last task."""
    p = xq.Producer(redis_url)
    ids = p.enqueue_many("sleep", [{"s": 0.2}, {"s": 0.5}, {"s": 0.05}])
    with XQRun(redis_url, procs=2, burst=True) as w:
        assert w.wait(60) == 0, w.output()
        ended = time.time()
    last = max(int(r.hget(queue_keys("default").task(t), "fin")) for t in ids) / 1000
    assert states(r, ids) == {"done": 3}
    assert ended - last < 1.5, f"exited {ended - last:.2f} s after the last task"
