"""A Redis reached by its socket file (unix:///path/redis.sock), the URL form conn.py documents: producers
(sync and asyncio), `xq run`, results and the inspection commands all work over it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
import redis

import xq
from xq.keys import queue_keys
from xqrun import TESTS, XQRun, wait_for


@pytest.fixture
def unix_url(tmp_path):
    """A private redis-server listening only on a socket file (no TCP port at all)."""
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    url = f"unix://{sock}"
    try:
        c = redis.Redis.from_url(url)
        wait_for(lambda: os.path.exists(sock) and _pings(c), 10, what="redis-server on its socket file")
        c.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _pings(c) -> bool:
    try:
        return c.ping()
    except redis.ConnectionError:
        return False


def test_producers_supervisor_and_results_over_a_socket_file(unix_url):
    r = redis.Redis.from_url(unix_url)
    p = xq.Producer(unix_url)
    one = p.enqueue("echo", {"n": 1})
    big = b"x" * 100_000  # staged outside ENQUEUE's script (a plain HSET first)
    many = p.enqueue_many("reverse", [big, b"abc"])

    async def produce():
        ap = xq.AsyncProducer(unix_url)
        try:
            return await ap.enqueue("echo", {"n": 2})
        finally:
            await ap.close()

    other = asyncio.run(produce())
    run = XQRun(unix_url, burst=True)
    assert run.wait(60) == 0, run.output()
    assert p.result(one, timeout=5) == {"n": 1}
    assert p.result(other, timeout=5) == {"n": 2}
    assert p.result(many[0], timeout=5) == big[::-1]
    assert p.result(many[1], timeout=5) == b"cba"
    qk = queue_keys("default")
    assert not r.keys(qk.stage_prefix + b"*"), "a staged payload was left behind"
    p.close()
    r.close()


@pytest.mark.parametrize("args", [["queues", "--json"], ["workers", "--json"], ["stats", "default", "--json"]])
def test_inspection_commands_over_a_socket_file(unix_url, args):
    xq.Producer(unix_url).enqueue("echo", 1)
    out = subprocess.run([sys.executable, "-m", "xq.cli", *args, "--redis", unix_url], cwd=TESTS,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    json.loads(out.stdout)


def test_a_running_supervisor_serves_new_tasks_over_a_socket_file(unix_url):
    with XQRun(unix_url) as run:
        p = xq.Producer(unix_url)

        def workers():
            out = subprocess.run([sys.executable, "-m", "xq.cli", "workers", "--json", "--redis", unix_url],
                                 cwd=TESTS, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        assert wait_for(lambda: [w for w in workers() if w.get("pid") == run.pid], 20, what="the worker registry")
        tid = p.enqueue("echo", "late")  # the idle supervisor's claim wait wakes for it
        assert p.result(tid, timeout=20) == "late"
        p.close()
