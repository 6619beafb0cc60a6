"""`xq run` checks the Redis server at start (xq/servercheck.py): an evicting maxmemory-policy refuses to
start (exit 7) unless --allow-eviction; persistence off warns once; CONFIG denied or renamed warns that
the check could not be made.  Real redis-servers, real `xq run` (tests/apps/basic.py)."""

from __future__ import annotations

import logging
import shutil
import subprocess

import pytest
import redis

import xq
from conftest import EmbeddedRedis
from helpers import free_port, stop_process
from xq.keys import queue_keys
from xq.servercheck import RedisUnsafe, check_server
from xqrun import XQRun, wait_for

QK = queue_keys("default")
EVICTING = ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu", "volatile-random",
            "volatile-ttl"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A redis-server of this module's own (AOF on, as the other fixtures'), its settings changed per test."""
    s = EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis-servercheck"))
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def c(server):
    client = redis.Redis.from_url(server.url)
    client.flushall()
    try:
        yield client
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("appendonly", "yes")
        client.config_set("save", "")
        client.acl_deluser("xqcheck")
        client.close()


@pytest.mark.parametrize("policy", ["noeviction", *EVICTING])
def test_each_policy(server, c, policy, caplog):
    c.config_set("maxmemory-policy", policy)
    caplog.set_level(logging.WARNING, logger="xq")
    if policy == "noeviction":
        assert check_server(c, server.url) == []
        assert not caplog.records
        return
    with pytest.raises(RedisUnsafe) as ei:
        check_server(c, server.url)
    msg = str(ei.value)
    assert f"maxmemory-policy {policy}" in msg and "evicts keys" in msg and "task records" in msg, msg
    assert "noeviction" in msg and "--allow-eviction" in msg, msg
    warnings = check_server(c, server.url, allow_eviction=True)
    assert len(warnings) == 1 and policy in warnings[0] and "--allow-eviction" in warnings[0], warnings


def test_xq_run_refuses_an_evicting_redis_with_exit_7(server, c):
    c.config_set("maxmemory-policy", "allkeys-lru")
    with xq.Producer(server.url) as p:
        tid = p.enqueue("count", 1)
    with XQRun(server.url, burst=True) as w:
        code = w.wait(30)
        out = w.output()
    assert code == 7, out
    assert "maxmemory-policy allkeys-lru" in out and "--allow-eviction" in out, out
    assert "Traceback" not in out and "children" not in out, out  # refused before any child started
    assert c.hget(QK.task(tid), "state") == b"queued"


def test_allow_eviction_runs_with_a_warning(server, c):
    c.config_set("maxmemory-policy", "volatile-lru")
    with xq.Producer(server.url) as p:
        tid = p.enqueue("count", 1)
    with XQRun(server.url, "--allow-eviction", burst=True) as w:
        code = w.wait(60)
        out = w.output()
    assert code == 0, out
    assert out.count("maxmemory-policy volatile-lru") == 1 and "running anyway" in out, out
    assert c.hget(QK.task(tid), "state") == b"done"
    assert "persistence off" not in out, out  # AOF is on


def test_persistence_off_warns_once(server, c, caplog):
    c.config_set("appendonly", "no")
    c.config_set("save", "")
    with xq.Producer(server.url) as p:
        ids = p.enqueue_many("count", [1, 2, 3])
    with XQRun(server.url, burst=True) as w:
        code = w.wait(60)
        out = w.output()
    assert code == 0, out
    assert out.count("persistence off") == 1, out
    assert "restarts" in out and "queued" in out and "lost" in out and "appendonly yes" in out, out
    assert [c.hget(QK.task(i), "state") for i in ids] == [b"done"] * 3
    c.config_set("save", "3600 1")  # RDB snapshots alone count as persistence
    assert check_server(c, server.url) == []


def test_config_denied_by_acl_warns_and_goes_on(server, c):
    c.execute_command("ACL", "SETUSER", "xqcheck", "on", ">pw", "~*", "&*", "+@all", "-config")
    c.config_set("maxmemory-policy", "allkeys-lru")  # not seen by a user who may not look
    url = f"redis://xqcheck:pw@127.0.0.1:{server.port}/0"
    with xq.Producer(url) as p:
        tid = p.enqueue("count", 1)
    with XQRun(url, burst=True) as w:
        code = w.wait(60)
        out = w.output()
    assert code == 0, out
    assert out.count("could not check") == 1 and "CONFIG GET (NoPermissionError" in out, out
    assert ":pw@" not in out, out  # the password is masked
    assert c.hget(QK.task(tid), "state") == b"done"


@pytest.fixture
def renamed_config(tmp_path):
    """A redis-server of our own with CONFIG renamed away (as managed Redis services do); stopped by PID."""
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                             "--rename-command", "CONFIG", "", "--appendonly", "yes", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        wait_for(lambda: _pings(client), timeout=10, what="the redis-server without CONFIG to answer")
        yield client, f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        stop_process(proc)


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def test_config_renamed_warns_and_goes_on(renamed_config, caplog):
    client, url = renamed_config
    caplog.set_level(logging.WARNING, logger="xq")
    warnings = check_server(client, url)
    assert len(warnings) == 1, warnings
    assert "could not check" in warnings[0] and "CONFIG GET" in warnings[0] and "unknown command" in warnings[0]
    assert [r.getMessage() for r in caplog.records] == warnings


def test_a_redis_down_at_start_is_checked_when_it_answers(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with XQRun(url) as w:  # not --burst: waits for Redis
        wait_for(lambda: "unreachable" in w.output(), 20, what="the supervisor to find Redis down")
        proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                                 "--maxmemory-policy", "allkeys-lfu", "--save", "", "--dir", str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            code = w.wait(30)
            out = w.output()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert code == 7, out
    assert "maxmemory-policy allkeys-lfu" in out and "--allow-eviction" in out and "Traceback" not in out, out
