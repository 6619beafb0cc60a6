"""Helpers shared by the benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def private_redis():
    """A redis-server of our own on a free loopback port, without persistence: yields (url, pid)."""
    import redis

    port = _free_port()
    d = tempfile.mkdtemp(prefix="xq-bench-redis-")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis.from_url(url)
    try:
        for _ in range(200):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url, proc.pid
    finally:
        r.close()
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


def flush(r, queues=("default",)) -> None:
    """FLUSHALL, then lift the retention count of queues: the drain benchmarks read every task's record
    (drain_window), which the default policy (10,000 finished per queue) would have trimmed.  What the cut
    costs is measured on its own (bench/retention_cost.py)."""
    from xq.keys import MAX_KEEP, queue_keys

    r.flushall()
    for q in queues:
        r.hset(queue_keys(q).retention, mapping={"keep": MAX_KEEP, "keep_dead": MAX_KEEP})


def xq_run(url: str, *args: str, procs: str = "auto") -> subprocess.Popen:
    """Start the real `xq run bench's app` as a subprocess; $XQ_BENCH_RUN_ARGS adds options to every run
    (e.g. XQ_BENCH_RUN_ARGS=--no-stats, to measure what an option costs)."""
    extra = os.environ.get("XQ_BENCH_RUN_ARGS", "").split()
    return subprocess.Popen([sys.executable, "-m", "xq.cli", "run", "benchapp:app", "--redis", url,
                             "--procs", procs, "--log-level", "warning", *args, *extra], cwd=BENCH)


def thumb_drain(url: str, images: list[bytes], tasks: int, tree: str | None = None) -> subprocess.Popen:
    """Enqueue `tasks` thumbnails of `images` (bench/benchapp.py `thumb`), start `xq run --procs auto --burst`
    of the xq at `tree` (a checkout; None: this one), and wait 1.5 s, past its start-up: its Popen."""
    import xq

    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(tree), env.get("PYTHONPATH", "")])
    xq.Producer(url).enqueue_many("thumb", [images[i % len(images)] for i in range(tasks)])
    sup = subprocess.Popen([sys.executable, "-m", "xq.cli", "run", "benchapp:app", "--redis", url, "--procs", "auto",
                            "--log-level", "error", "--burst"], cwd=BENCH, env=env)
    time.sleep(1.5)
    return sup


def drain_window(r, queue: str, ids) -> tuple[float, float]:
    """(first claim, last finish) in seconds, from the task records (Redis TIME and child clocks)."""
    from xq.keys import queue_keys

    qk = queue_keys(queue)
    first, last = float("inf"), 0.0
    for i in range(0, len(ids), 5000):
        pipe = r.pipeline(transaction=False)
        for tid in ids[i:i + 5000]:
            pipe.hmget(qk.task(tid), "claimed", "fin", "state")
        for claimed, fin, state in pipe.execute():
            assert state == b"done", state
            first = min(first, int(claimed) / 1000)
            last = max(last, int(fin) / 1000)
    return first, last


async def time_requests(label: str, send, r, rounds: int) -> None:
    """Await send() `rounds` times, one after another, and print label with the p50 and p99 time of a
    request and the Redis commands a request ran (INFO commandstats, scripts' own commands included; r's
    stats are reset first).  send() returns an httpx response; a failed one stops the benchmark."""
    r.config_resetstat()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        resp = await send()
        times.append(time.perf_counter() - t0)
        assert resp.status_code < 300, resp.text
    calls = sum(v["calls"] for k, v in r.info("commandstats").items() if k != "cmdstat_config")
    times.sort()
    print(f"  {label:60} p50 {times[len(times) // 2] * 1000:6.2f} ms  "
          f"p99 {times[int(len(times) * 0.99) - 1] * 1000:6.2f} ms  {calls / rounds:5.1f} Redis commands")
