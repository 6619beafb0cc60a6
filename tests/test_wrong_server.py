"""A URL that reaches a Redis xq cannot write to the way the URL says: a replica, a Cluster node given as
redis://, a single Redis given as redis+cluster://, a master refusing writes for want of replicas
(min-replicas-to-write).  Each gets one clear line naming the problem and what to do, never a retry loop
that logs "unreachable" and "reachable again" in turn, nor a traceback."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis

import xq
from xqrun import XQRun, wait_for

TESTS = __file__.rsplit("/", 1)[0]


def xq_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xq.cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=TESTS)


def replica_url(sentinel) -> str:
    master = sentinel.master_port()
    port = next(s.port for s in sentinel.servers if s.running and s.port != master)
    return f"redis://127.0.0.1:{port}/0"


def test_xq_run_on_a_replica_says_so_once_and_honours_the_connect_timeout(sentinel):
    url = replica_url(sentinel)
    t0 = time.monotonic()
    w = XQRun(url, "--connect-timeout", "3", app="apps.basic:app", procs=1, burst=True)
    code = w.wait(30)
    took = time.monotonic() - t0
    log = w.output()
    assert code == 6, log
    assert "read-only replica" in log and "redis+sentinel://" in log, log
    assert log.count("read-only replica") <= 2 and "reachable again" not in log, log  # no flip-flop flood
    assert "Traceback" not in log
    assert took < 25, (took, log)


def test_enqueue_on_a_replica_names_it(sentinel):
    p = xq.Producer(replica_url(sentinel), retry_for=0.5)
    with pytest.raises(xq.ConnectionLost, match="read-only replica.*master"):
        p.enqueue("echo", {})
    p.close()


def test_a_cluster_node_given_as_redis_url_is_refused_at_once(cluster):
    from topology import queues_on_masters
    from xq.keys import QueueKeys

    node = cluster.master_ports()[0]
    url = f"redis://127.0.0.1:{node}/0"
    elsewhere = next(q for q in queues_on_masters(cluster) if cluster.master_of(QueueKeys(q).base) != node)
    t0 = time.monotonic()
    out = xq_cli("queue", "pause", elsewhere, "--redis", url)  # its keys are on another master: MOVED
    assert out.returncode == 5, out
    assert "redis+cluster://" in out.stderr and "Traceback" not in out.stderr, out.stderr
    w = XQRun(url, app="apps.basic:app", procs=1, burst=True)
    assert w.wait(30) == 5, w.output()
    assert "redis+cluster://" in w.output() and "Traceback" not in w.output(), w.output()
    assert time.monotonic() - t0 < 25
    p = xq.Producer(url, retry_for=5)
    with pytest.raises(xq.RedisRefused, match="redis\\+cluster://"):
        p.enqueue_many("echo", [{"i": i} for i in range(20)], queue=elsewhere)
    p.close()


def test_a_single_redis_given_as_a_cluster_url_is_a_usage_error(redis_server):
    url = f"redis+cluster://127.0.0.1:{redis_server.port}/"
    out = xq_cli("queues", "--redis", url)
    assert out.returncode == 2, out
    assert "not a Redis Cluster" in out.stderr and "redis://" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(xq.ConfigError, match="not a Redis Cluster"):
        xq.Producer(url)


def test_a_master_short_of_replicas_is_waited_for_not_a_crash(fresh_redis):
    r = redis.Redis.from_url(fresh_redis.url)
    r.config_set("min-replicas-to-write", 1)  # no replica at all: every write is refused (NOREPLICAS)
    p = xq.Producer(fresh_redis.url, retry_for=0.5)
    with pytest.raises(xq.ConnectionLost, match="NOREPLICAS"):
        p.enqueue("echo", {})
    w = XQRun(fresh_redis.url, app="apps.basic:app", procs=1)
    try:
        wait_for(lambda: "NOREPLICAS" in w.output(), 20, what="the supervisor to name the refusal: " + w.output())
        time.sleep(1.5)
        assert w.proc.poll() is None and "Traceback" not in w.output(), w.output()
        assert w.output().count("NOREPLICAS") == 1, w.output()
        r.config_set("min-replicas-to-write", 0)
        ids = p.enqueue_many("echo", [{"i": i} for i in range(10)])
        wait_for(lambda: all(p.status(i)["status"] == "done" for i in ids), 30, what="the tasks: " + w.output())
    finally:
        w.close()
        p.close()
        r.close()
