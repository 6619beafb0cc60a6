"""xq.embedded: the private redis-server and the URL resolution rule, against real redis-server processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest
import redis

from helpers import TESTS, free_port, load_embedded, wait_until

embedded = load_embedded()
EmbeddedRedis = embedded.EmbeddedRedis
EmbeddedRedisError = embedded.EmbeddedRedisError


def ping(url: str) -> bool:
    c = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(c.ping())
    finally:
        c.close()


def gone(pid: int, create_time: float) -> bool:
    """The process that had this PID is gone (a reused PID with another start time does not count)."""
    try:
        p = psutil.Process(pid)
        return p.create_time() != create_time or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def proc_of(server) -> tuple[int, float]:
    p = psutil.Process(server.pid)
    assert "redis-server" in p.name() or "redis-server" in " ".join(p.cmdline())
    return server.pid, p.create_time()


def test_start_stop_leaves_no_process_and_removes_own_temp_dir():
    server = EmbeddedRedis().start()
    try:
        pid, ct = proc_of(server)
        data_dir = server.data_dir
        assert os.path.isdir(data_dir) and os.path.basename(data_dir).startswith("xq-redis-")
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert ping(server.url)
        c = redis.Redis.from_url(server.url)
        try:
            assert c.config_get("appendonly") == {"appendonly": "yes"}
            assert c.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert c.config_get("save") == {"save": ""}
            assert c.config_get("bind") == {"bind": "127.0.0.1"}
        finally:
            c.close()
    finally:
        server.stop()
    assert gone(pid, ct), "redis-server still running after stop()"
    assert not server.running and server.pid is None
    assert not os.path.exists(data_dir), "stop() left our temp dir behind"
    server.stop()  # idempotent


def test_context_manager_and_given_dir_is_kept(tmp_path):
    with EmbeddedRedis(data_dir=tmp_path) as server:
        pid, ct = proc_of(server)
        assert server.data_dir == str(tmp_path)
        assert ping(server.url)
    assert gone(pid, ct)
    assert (tmp_path / "redis.log").exists(), "a data dir we were given must not be removed"


def test_given_port_is_used(tmp_path):
    port = free_port()
    with EmbeddedRedis(port=port, data_dir=tmp_path) as server:
        assert server.port == port and server.url == f"redis://127.0.0.1:{port}/0"
        assert ping(server.url)


def test_aof_data_survives_restart(tmp_path):
    with EmbeddedRedis(data_dir=tmp_path) as server:
        port, old = server.port, proc_of(server)
        c = redis.Redis.from_url(server.url)
        c.set("k", "v")
        c.rpush("l", *range(100))
        c.close()
        server.restart()  # no wait: SHUTDOWN flushes the AOF
        assert server.port == port and gone(*old)
        c = redis.Redis.from_url(server.url)
        try:
            assert c.get("k") == b"v"
            assert c.llen("l") == 100
        finally:
            c.close()


def test_kill_then_start_recovers_aof_data():
    server = EmbeddedRedis().start()  # an own temp dir: kill() must keep it, stop() removes it
    try:
        c = redis.Redis.from_url(server.url)
        c.set("survivor", "yes")
        c.close()
        time.sleep(1.2)  # appendfsync everysec
        pid, ct = proc_of(server)
        server.kill()
        assert gone(pid, ct), "kill() left redis-server running"
        assert not server.running
        with pytest.raises(redis.ConnectionError):
            ping(server.url)
        assert os.path.isdir(server.data_dir)
        server.start()
        c = redis.Redis.from_url(server.url)
        try:
            assert c.get("survivor") == b"yes"
        finally:
            c.close()
    finally:
        server.stop()


def test_startup_failure_raises_with_log_tail(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = EmbeddedRedis(port=port, data_dir=tmp_path)
        with pytest.raises(EmbeddedRedisError) as ei:
            server.start()
    msg = str(ei.value)
    assert f"port {port}" in msg and "Address already in use" in msg, msg
    assert not server.running


def test_missing_redis_server_on_path(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    server = EmbeddedRedis()
    with pytest.raises(EmbeddedRedisError) as ei:
        server.start()
    msg = str(ei.value)
    assert "redis-server not found" in msg and "XQ_REDIS_URL" in msg and "--redis" in msg, msg
    assert isinstance(ei.value, RuntimeError)
    assert server.data_dir is None, "a failed start must not leave a temp dir behind"


def _no_probe(url):
    raise AssertionError(f"resolve_url probed {url} although a URL was given")


class _NoStart:
    def __init__(self, *a, **k):
        raise AssertionError("resolve_url started a redis-server although a URL was given")


def test_resolve_url_explicit_url_is_returned_untouched(monkeypatch):
    monkeypatch.setenv("XQ_REDIS_URL", "redis://10.0.0.1:1/3")
    monkeypatch.setattr(embedded, "_answers", _no_probe)
    monkeypatch.setattr(embedded, "EmbeddedRedis", _NoStart)
    kids = {p.pid for p in psutil.Process().children()}
    url = "redis://user:pw@example.invalid:7777/5"
    assert embedded.resolve_url(url) == (url, None)
    assert {p.pid for p in psutil.Process().children()} == kids


def test_resolve_url_env_var(monkeypatch):
    monkeypatch.setenv("XQ_REDIS_URL", "redis://example.invalid:7777/2")
    monkeypatch.setattr(embedded, "_answers", _no_probe)
    monkeypatch.setattr(embedded, "EmbeddedRedis", _NoStart)
    assert embedded.resolve_url(None) == ("redis://example.invalid:7777/2", None)


def test_resolve_url_uses_default_when_it_answers(monkeypatch, redis_url):
    monkeypatch.delenv("XQ_REDIS_URL", raising=False)
    monkeypatch.setattr(embedded, "DEFAULT_URL", redis_url)
    monkeypatch.setattr(embedded, "EmbeddedRedis", _NoStart)
    assert embedded.resolve_url(None) == (redis_url, None)


def test_resolve_url_falls_back_to_private_server(monkeypatch):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    monkeypatch.delenv("XQ_REDIS_URL", raising=False)
    monkeypatch.setattr(embedded, "DEFAULT_URL", dead)
    logged: list[str] = []
    t0 = time.monotonic()
    url, server = embedded.resolve_url(None, log=logged.append)
    try:
        assert isinstance(server, embedded.EmbeddedRedis)
        assert time.monotonic() - t0 < 10
        assert url == server.url != dead
        assert ping(url)
        data_dir = server.data_dir
        pid, ct = proc_of(server)
        assert logged == [f"no Redis answered at {dead}; started a private redis-server on port {server.port} "
                          f"(AOF on, data in {data_dir})"]
    finally:
        server.stop()
    assert gone(pid, ct)
    assert not os.path.exists(data_dir), "stopping the private server must remove its temp dir"


def test_resolve_url_fallback_keeps_given_data_dir_and_logs_to_xq_logger(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("XQ_REDIS_URL", raising=False)
    monkeypatch.setattr(embedded, "DEFAULT_URL", f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level("INFO", logger="xq"):
        url, server = embedded.resolve_url(None, data_dir=tmp_path)
    try:
        assert server.data_dir == str(tmp_path)
        assert ping(url)
    finally:
        server.stop()
    assert any("started a private redis-server" in r.getMessage() and r.name == "xq" for r in caplog.records)
    assert tmp_path.is_dir() and (tmp_path / "redis.log").exists()


def test_resolve_url_fallback_without_redis_server(monkeypatch, tmp_path):
    monkeypatch.delenv("XQ_REDIS_URL", raising=False)
    monkeypatch.setattr(embedded, "DEFAULT_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedRedisError, match="redis-server not found on PATH"):
        embedded.resolve_url(None)


def test_atexit_stops_a_forgotten_server():
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from helpers import load_embedded;"
            "s = load_embedded().EmbeddedRedis().start();"
            "print(s.pid, s.data_dir, flush=True)")  # exits without stop()
    out = subprocess.run([sys.executable, "-c", code, TESTS], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    pid_s, data_dir = out.stdout.split()
    pid = int(pid_s)
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
               timeout=10, what=f"forgotten redis-server pid {pid} to exit")
    assert not os.path.exists(data_dir)
