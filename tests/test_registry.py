"""The worker registry end to end: real redis-server, real `xq run` supervisors (xq/supervisor/registry.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import orjson
import pytest

import xq
from xq.inspect import Inspector
from xq.keys import WORKERS, worker_key
from xqrun import TESTS, XQRun, wait_for

pytestmark = pytest.mark.topologies("single", "cluster")

BEAT = "0.3"  # seconds: the record's TTL is 3 beats, so a dead worker is gone within ~1 s


def _by_pid(i: Inspector, pid: int) -> dict | None:
    return next((w for w in i.workers() if w.get("pid") == pid), None)


def _cli(redis_url, *args, check=True):
    env = {**os.environ}
    out = subprocess.run([sys.executable, "-m", "xq.cli", *args, "--redis", redis_url], cwd=TESTS, env=env,
                         capture_output=True, text=True, timeout=30)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_two_supervisors_register_with_their_fields(redis_url):
    before = time.time()
    with XQRun(redis_url, "--heartbeat", BEAT, procs=2, queues="default", pure=False) as a, \
            XQRun(redis_url, "--heartbeat", BEAT, procs=1, queues="other,default", pure=True) as b, \
            Inspector(redis_url) as i:
        wait_for(lambda: (x := _by_pid(i, a.pid)) and x["children"] == 2 and _by_pid(i, b.pid), 20,
                 what="both workers registered")
        ws = {w["pid"]: w for w in i.workers()}
        assert set(ws) == {a.pid, b.pid}
        wa, wb = ws[a.pid], ws[b.pid]
        assert wa["queues"] == ["default"] and wb["queues"] == ["other", "default"]
        assert (wa["procs"], wb["procs"]) == (2, 1)
        assert (wa["impl"], wb["impl"]) == ("cython", "python")
        for w, run in ((wa, a), (wb, b)):
            assert w["host"] == socket.gethostname()
            assert w["version"] == xq.__version__
            assert w["id"].startswith(f"{socket.gethostname()}:{run.pid}:")
            assert w["state"] == "running" and w["busy"] == 0 and w["tasks"] == []
            assert before - 1 <= w["started"] <= w["heartbeat"] <= time.time() + 1
            assert 0 <= w["age"] < 5
            assert w["heartbeat_interval"] == float(BEAT) and abs(w["ttl"] - 3 * float(BEAT)) < 0.002
            assert (w["done"], w["failed"]) == (0, 0)
            assert w["rss"]["supervisor"] > 1 << 20 and w["rss"]["children"] > 1 << 20
            assert w["rss"]["total"] == w["rss"]["supervisor"] + w["rss"]["children"]
            assert i.worker(w["id"])["pid"] == run.pid
        # the heartbeat moves on
        hb = wa["heartbeat"]
        wait_for(lambda: i.worker(wa["id"])["heartbeat"] > hb, 10, what="a newer heartbeat")
        # Producer returns the same data
        with xq.Producer(redis_url) as p:
            assert {w["pid"] for w in p.workers()} == {a.pid, b.pid}
            assert p.worker(wb["id"])["queues"] == ["other", "default"]


def test_current_tasks_and_counts(redis_url, r):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, "--heartbeat", BEAT, procs=2, queues="default") as run, Inspector(redis_url) as i:
        w = wait_for(lambda: _by_pid(i, run.pid), 20, what="registered")
        t0 = time.time()
        tid = p.enqueue("sleep", {"s": 2.5})
        w = wait_for(lambda: (x := i.worker(w["id"])) and x["tasks"] and x, 10, what="the task shown running")
        assert w["busy"] == 1
        [cur] = w["tasks"]
        assert cur["id"] == tid and cur["name"] == "sleep" and cur["queue"] == "default"
        assert cur["attempt"] == 1 and cur["pid"] in {c.pid for c in run.children()}
        claimed = p.status(tid)["claimed_at"]  # started_at is written with the result
        assert claimed - 0.05 <= cur["started"] < claimed + 1.0 and t0 - 0.5 <= cur["started"] <= time.time()
        p.result(tid, timeout=20)
        w = wait_for(lambda: (x := i.worker(w["id"])) and x["done"] == 1 and x, 10, what="done counted")
        assert w["tasks"] == [] and w["busy"] == 0 and w["failed"] == 0
        ids = p.enqueue_many("echo", [{"n": n} for n in range(20)])
        bad = p.enqueue("boom", 1)
        for t in ids:
            p.result(t, timeout=20)
        wait_for(lambda: i.worker(w["id"])["done"] == 21 and i.worker(w["id"])["failed"] == 1, 10,
                 what="21 done and 1 failed counted")
        assert p.status(bad)["status"] == "dead"
    p.close()


def test_clean_stop_removes_the_worker_at_once(redis_url, r):
    # a long heartbeat: only the clean stop can remove the record within the test
    with XQRun(redis_url, "--heartbeat", "30", procs=1, queues="default") as run, Inspector(redis_url) as i:
        w = wait_for(lambda: _by_pid(i, run.pid), 20, what="registered")
        assert r.pttl(worker_key(w["id"])) > 60_000
        run.signal(signal.SIGTERM)
        assert run.wait(20) == 0
        assert i.workers() == [] and i.worker(w["id"]) is None
        assert not r.exists(worker_key(w["id"])) and r.zscore(WORKERS, w["id"]) is None


def test_killed_worker_disappears_within_its_ttl(redis_url, r):
    with XQRun(redis_url, "--heartbeat", BEAT, procs=1, queues="default") as dead, \
            XQRun(redis_url, "--heartbeat", BEAT, procs=1, queues="default") as alive, Inspector(redis_url) as i:
        wd = wait_for(lambda: _by_pid(i, dead.pid), 20, what="registered")
        wait_for(lambda: _by_pid(i, alive.pid), 20, what="registered")
        dead.kill()
        killed = time.monotonic()
        assert i.worker(wd["id"]) is not None  # listed until its record expires
        wait_for(lambda: _by_pid(i, dead.pid) is None, 10, what="the killed worker gone")
        assert time.monotonic() - killed < 3 * float(BEAT) + 2.0
        assert i.worker(wd["id"]) is None
        # the live one stays listed across several of the dead one's TTLs
        for _ in range(3):
            time.sleep(3 * float(BEAT))
            assert [w["pid"] for w in i.workers()] == [alive.pid]



def test_heartbeat_0_keeps_the_worker_out_of_the_registry(redis_url, r):
    # --heartbeat 0: the registry is off (for one, to measure its cost); the worker runs tasks as ever
    with XQRun(redis_url, "--heartbeat", "0", procs=1, queues="default") as off, \
            XQRun(redis_url, "--heartbeat", BEAT, procs=1, queues="other") as on, \
            Inspector(redis_url) as i, xq.Producer(redis_url) as p:
        wait_for(lambda: _by_pid(i, on.pid), 20, what="the other worker registered")
        assert p.result(p.enqueue("echo", 7, queue="default"), timeout=20) == 7
        for _ in range(3):  # across several of the other's beats
            time.sleep(float(BEAT))
            assert [w["pid"] for w in i.workers()] == [on.pid]
        off.signal(signal.SIGTERM)
        assert off.wait(20) == 0
    assert r.zcard(WORKERS) == 0
    bad = _cli(redis_url, "run", "apps.basic:app", "--heartbeat", "0.05", check=False)
    assert bad.returncode == 2 and "--heartbeat" in bad.stderr and "0.05 s is too short" in bad.stderr

def test_cli_workers_table_json_and_show(redis_url):
    with XQRun(redis_url, "--heartbeat", BEAT, procs=2, queues="default,other") as run, \
            Inspector(redis_url) as i:
        w = wait_for(lambda: _by_pid(i, run.pid), 20, what="registered")
        p = xq.Producer(redis_url)
        tid = p.enqueue("sleep", {"s": 2.5})
        wait_for(lambda: i.worker(w["id"])["tasks"], 10, what="the task running")
        out = _cli(redis_url, "workers").stdout.splitlines()
        assert out[0].split() == ["ID", "HOST", "PID", "QUEUES", "BUSY", "DONE", "FAILED", "RSS", "UP", "BEAT",
                                  "STATE", "IMPL", "RUNNING"]
        row = out[1].split()
        assert row[:5] == [w["id"], socket.gethostname(), str(run.pid), "default,other", "1/2"]
        assert row[10:] == ["running", "cython", "sleep"]
        assert out[-1] == "1 worker(s)"
        [j] = orjson.loads(_cli(redis_url, "workers", "--json").stdout)
        assert j["id"] == w["id"] and j["tasks"][0]["id"] == tid
        shown = orjson.loads(_cli(redis_url, "worker", "show", w["id"]).stdout)
        assert shown["pid"] == run.pid and shown["queues"] == ["default", "other"]
        missing = _cli(redis_url, "worker", "show", "nope:1:abc", check=False)
        assert missing.returncode == 1 and "no live worker 'nope:1:abc'" in missing.stderr
        p.result(tid, timeout=20)
        p.close()
    out = _cli(redis_url, "workers").stdout.splitlines()
    assert out[-1] == "0 worker(s)" and len(out) == 2
    assert orjson.loads(_cli(redis_url, "workers", "--json").stdout) == []


def test_heartbeat_rides_out_an_outage(fault_proxy):
    # Redis unreachable for many beats: the supervisor neither crashes nor logs per beat; its record
    # expires meanwhile and is written again at the first turn after the reconnect.
    url = fault_proxy.redis.url
    with XQRun(fault_proxy.url(), "--heartbeat", "0.2", procs=1, queues="default") as run, \
            Inspector(url) as i, xq.Producer(url) as p:
        w = wait_for(lambda: _by_pid(i, run.pid), 20, what="registered")
        fault_proxy.refuse(True)
        wait_for(lambda: i.worker(w["id"]) is None, 10, what="the record to expire during the outage")
        time.sleep(1.0)  # five more beats without Redis
        fault_proxy.refuse(False)
        w2 = wait_for(lambda: i.worker(w["id"]), 15, what="the worker registered again")
        assert w2["started"] == w["started"] and w2["pid"] == run.pid
        assert p.result(p.enqueue("echo", 7), timeout=20) == 7
        wait_for(lambda: i.worker(w["id"])["done"] == 1, 10, what="the task counted")
        assert run.proc.poll() is None
        out = run.output()
        assert out.count("unreachable") == 1 and "reachable again" in out, out
        assert "Traceback" not in out and "heartbeat" not in out.lower(), out
