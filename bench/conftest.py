"""Benchmark fixtures: a private redis-server (no persistence, so the disk is not what we measure)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def bench_redis():
    """A fresh redis-server for each benchmark, so none inherits another's data or memory state (run right
    after the CPU benchmark on a shared server, idle start latency p50 read 0.46 ms instead of 0.37 ms)."""
    port = _free_port()
    d = tempfile.mkdtemp(prefix="xq-bench-redis-")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rdb(bench_redis):
    r = redis.Redis.from_url(bench_redis)
    r.flushall()
    yield r
    r.close()
