"""Enqueue no-op tasks into 3 queues on a 3-master Redis Cluster vs on one Redis: one enqueue_many per
queue (one after the other) and one enqueue_batch for all three (every master's chunks written before any
reply is read).

    PYTHONPATH=. python3 bench/cluster_enqueue.py --tasks 100000 --rounds 2

Both topologies are redis-servers of ours on loopback (tests/topology.py: the Cluster without replicas,
the single Redis with the same config: appendonly yes, everysec), on this same machine: on 2 cores the
producer and 3 masters compete for the CPU, so the ratio mainly shows the overhead of the Cluster path,
not what 3 hosts would do (there each master would have a core of its own).  Each round empties the
servers, then times enqueueing `--tasks` tasks a queue, the topologies and the two calls alternated.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(BENCH, "..", "tests"))

import redis  # noqa: E402

import xq  # noqa: E402

from topology import HOST, Cluster, Server, cluster_port, queues_on_masters  # noqa: E402


def one_round(url: str, nodes: list[redis.Redis], queues: list[str], n: int, how: str) -> float:
    """tasks/s of enqueueing n no-op tasks into each queue, `how`: "many" or "batch"."""
    for node in nodes:
        node.flushall()
    with xq.Producer(url) as p:
        p.enqueue_batch([("noop", None, {"queue": q}) for q in queues])  # connections made, scripts loaded
        payloads = [None] * n
        tasks = [("noop", None, {"queue": q}) for q in queues for _ in range(n)]  # made before the clock starts
        t0 = time.perf_counter()
        if how == "many":
            for q in queues:
                p.enqueue_many("noop", payloads, queue=q)
        else:
            p.enqueue_batch(tasks)
        took = time.perf_counter() - t0
        got = [p.queue(q)["ready"] for q in queues]
    assert got == [n + 1] * len(queues), got
    return len(queues) * n / took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100000, help="tasks a queue")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="xq-bench-cenq-")
    cluster = Cluster(os.path.join(root, "c"), masters=3, replicas=0)
    single = Server(os.path.join(root, "s"), cluster_port(), ["appendonly yes", "appendfsync everysec", "save ''"])
    try:
        cluster.start()
        single.start()
        queues = queues_on_masters(cluster, 3, prefix="e")
        cnodes = [redis.Redis(host=HOST, port=port) for port in cluster.master_ports()]
        snodes = [redis.Redis(host=HOST, port=single.port)]
        surl = f"redis://{HOST}:{single.port}/0"
        rates: dict[tuple[str, str], list[float]] = {}
        for r in range(a.rounds):  # alternated, so the VM's drift hits all alike
            for how in ("many", "batch"):
                for name, url, nodes in (("single", surl, snodes), ("cluster", cluster.url, cnodes)):
                    rate = one_round(url, nodes, queues, a.tasks, how)
                    rates.setdefault((name, how), []).append(rate)
                    print(f"round {r + 1} {name:8} enqueue_{how:5}: {rate:9,.0f} tasks/s", flush=True)
        for how in ("many", "batch"):
            s, c = statistics.median(rates["single", how]), statistics.median(rates["cluster", how])
            print(f"median enqueue_{how}: single {s:,.0f} tasks/s, cluster {c:,.0f} tasks/s, cluster/single "
                  f"{c / s:.2f} (min-max single {min(rates['single', how]):,.0f}-{max(rates['single', how]):,.0f}, "
                  f"cluster {min(rates['cluster', how]):,.0f}-{max(rates['cluster', how]):,.0f})")
    finally:
        cluster.stop()
        single.stop()


if __name__ == "__main__":
    main()
