"""What Producer(replicas=1) costs: throughput and p50/p99 latency of enqueue (one task a call) and
enqueue_many (1,000 tasks a call), replicas=0 vs 1, on a private master + one replica on loopback (no
persistence: only the replication round trip differs).

    PYTHONPATH=. python3 bench/replicas_cost.py [--single N] [--many M]

Bounded by the counts: N single enqueues (default 5,000) and M enqueue_many calls (default 200) per mode.
On loopback a replica's ack is a local round trip; across hosts add the network's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import redis  # noqa: E402

import xq  # noqa: E402
from benchutil import _free_port  # noqa: E402


def _server(port: int, d: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", d, *extra], stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def master_and_replica():
    """A master and its replica (in sync) on free loopback ports; yields the master's URL."""
    ports = [_free_port(), _free_port()]
    dirs = [tempfile.mkdtemp(prefix="xq-bench-repl-") for _ in ports]
    procs = [_server(ports[0], dirs[0]), _server(ports[1], dirs[1], "--replicaof", "127.0.0.1", str(ports[0]))]
    replica = redis.Redis(port=ports[1])
    try:
        for _ in range(200):  # bounded: 10 s
            try:
                if replica.info("replication").get("master_link_status") == "up":
                    break
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError("the replica did not sync within 10 s")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        replica.close()
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(url: str, replicas: int, calls: int, per_call: int) -> tuple[float, float, float]:
    """(tasks/s, p50 ms, p99 ms of one call) of `calls` enqueues of per_call tasks each."""
    payloads = [{"i": i, "pad": "x" * 80} for i in range(per_call)]
    lat = []
    with xq.Producer(url, replicas=replicas, replicas_timeout=5) as p:
        p.enqueue_many("bench", payloads[:10], queue="warm")
        t0 = time.perf_counter()
        for _ in range(calls):
            t = time.perf_counter()
            if per_call == 1:
                p.enqueue("bench", payloads[0])
            else:
                p.enqueue_many("bench", payloads)
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
    return calls * per_call / total, pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--single", type=int, default=5000)
    ap.add_argument("--many", type=int, default=200)
    a = ap.parse_args()
    with master_and_replica() as url:
        r = redis.Redis.from_url(url)
        print(f"{'call':<22}{'replicas':>9}{'tasks/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
        for label, calls, per in (("enqueue", a.single, 1), ("enqueue_many(1000)", a.many, 1000)):
            for replicas in (0, 1):
                r.flushall()
                rate, p50, p99 = measure(url, replicas, calls, per)
                print(f"{label:<22}{replicas:>9}{rate:>12,.0f}{p50:>10.3f}{p99:>10.3f}")
        r.close()


if __name__ == "__main__":
    main()
