"""Reusable test helpers: free ports, bounded waits, and the xq.embedded module."""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from types import ModuleType

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float, interval: float = 0.01, what: str | None = None):
    """Poll pred() until it is truthy, at most `timeout` seconds; return its value or raise AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or getattr(pred, '__name__', pred)}")
        time.sleep(interval)


def load_embedded() -> ModuleType:
    """`xq.embedded`, imported normally. If the `xq` package itself does not import (another part of it is
    broken or half-written), load xq/embedded.py by path instead: it depends on nothing else in xq, so the
    Redis fixtures (and tests/test_embedded.py) still work; the tests that need the rest of xq fail on their own.
    """
    try:
        return importlib.import_module("xq.embedded")
    except ImportError as e:
        if getattr(e, "name", None) == "xq.embedded":
            raise
        name = "_xq_embedded_by_path"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "xq", "embedded.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        print(f"tests: `import xq` failed ({e!r}); loaded xq/embedded.py by path", file=sys.stderr)
        return mod


def client_of(url: str):
    """A redis-py client (bytes replies) of the Redis, Cluster or Sentinel set url names, to check state with."""
    import redis

    if url.split("://", 1)[0].lower() in ("redis", "rediss", "unix"):
        return redis.Redis.from_url(url)
    from xq.conn import make_client

    return make_client(url)


def evalsha_calls(r) -> int:
    """EVALSHA calls served so far by r's server, or by all of a Cluster's masters together (INFO
    commandstats)."""
    from redis.cluster import RedisCluster

    if isinstance(r, RedisCluster):
        infos = list(r.info("commandstats", target_nodes=RedisCluster.PRIMARIES).values())
    else:
        infos = [r.info("commandstats")]
    return sum(int(i.get("cmdstat_evalsha", {}).get("calls", 0)) for i in infos)


def keys_of(r, pattern: str) -> list[bytes]:
    """KEYS pattern of r's server, or of every Cluster master (RedisCluster.keys asks one node)."""
    from redis.cluster import RedisCluster

    if isinstance(r, RedisCluster):
        return r.keys(pattern, target_nodes=RedisCluster.PRIMARIES)
    return r.keys(pattern)


def subscribers(r, channel: str = "xq:{default}:events") -> int:
    """How many clients are subscribed to channel (default: the default queue's events)."""
    return r.pubsub_numsub(channel)[0][1]


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a server a test started itself (by its Popen): SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def keep_every_record(url: str, queue: str = "default") -> None:
    """Lift the queue's retention caps (default: the newest 10,000 finished records and dead letters), for
    a test that checks the record of every one of more tasks than that at its end."""
    import xq

    with xq.Producer(url) as p:
        p.set_retention(queue, keep=10**9, keep_dead=10**9)
