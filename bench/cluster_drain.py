"""The no-op drain of 3 queues by one `xq run --burst` on a 3-master Redis Cluster vs on one Redis.

    PYTHONPATH=. python3 bench/cluster_drain.py --tasks 30000 --rounds 2

Both topologies are redis-servers of ours on loopback (tests/topology.py: the Cluster without replicas,
the single Redis with the same config: appendonly yes, everysec), on this same machine: on 2 cores, 3
masters + the supervisor + its children compete for the CPU, so the ratio mainly shows the overhead of
the Cluster path (a CLAIM per queue, a write per master each step), not what 3 hosts would do.  Each round
enqueues `--tasks` no-op tasks in each queue, then times the drain from the first claim to the last finish
(the task records' claimed/fin times).  Claims: the number of distinct (queue, claimed ms) pairs, a lower
bound on the CLAIM calls (two claims of one queue in one ms count once), so tasks per claim is an upper
bound; a round trip (a step) carries one CLAIM per queue it asks from.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(BENCH, "..", "tests"))

import redis  # noqa: E402

import xq  # noqa: E402
from xq.keys import MAX_KEEP, QueueKeys  # noqa: E402

from topology import HOST, Cluster, Server, cluster_port, queues_on_masters  # noqa: E402


def records(node: redis.Redis, queue: str, ids) -> tuple[float, float, set]:
    """(first claim s, last finish s, the distinct claimed ms) of ids, from their records on node."""
    qk = QueueKeys(queue)
    first, last, claims = float("inf"), 0.0, set()
    for i in range(0, len(ids), 5000):
        pipe = node.pipeline(transaction=False)
        for tid in ids[i:i + 5000]:
            pipe.hmget(qk.task(tid), "claimed", "fin", "state")
        for claimed, fin, state in pipe.execute():
            assert state == b"done", state
            claims.add(int(claimed))
            first = min(first, int(claimed) / 1000)
            last = max(last, int(fin) / 1000)
    return first, last, claims


def drain(url: str, nodes: dict[str, redis.Redis], queues: list[str], n: int, procs: str) -> tuple[float, int]:
    """One round: (tasks/s of the drain, claims counted)."""
    for node in {id(c): c for c in nodes.values()}.values():
        node.flushall()
    with xq.Producer(url) as p:
        for q in queues:  # keep every record: the drain window is read from them
            p.broker.client.hset(QueueKeys(q).retention, mapping={"keep": MAX_KEEP, "keep_dead": MAX_KEEP})
        ids = {q: [i for _ in range(n // 10000) for i in p.enqueue_many("noop", [None] * 10000, queue=q)]
               for q in queues}
    subprocess.run([sys.executable, "-m", "xq.cli", "run", "benchapp:app", "--redis", url, "--procs", procs,
                    "--queues", ",".join(queues), "--burst", "--log-level", "error"], cwd=BENCH, check=True,
                   timeout=600)
    first, last, claims = float("inf"), 0.0, 0
    for q in queues:
        f, la, c = records(nodes[q], q, ids[q])
        first, last, claims = min(first, f), max(last, la), claims + len(c)
    return len(queues) * n / (last - first), claims


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=30000, help="tasks a queue (a multiple of 10,000)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--procs", default="auto")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="xq-bench-cluster-")
    cluster = Cluster(os.path.join(root, "c"), masters=3, replicas=0)
    single = Server(os.path.join(root, "s"), cluster_port(), ["appendonly yes", "appendfsync everysec", "save ''"])
    try:
        cluster.start()
        single.start()
        queues = queues_on_masters(cluster, 3, prefix="b")
        cnodes = {q: redis.Redis(host=HOST, port=cluster.master_of(QueueKeys(q).base)) for q in queues}
        snode = redis.Redis(host=HOST, port=single.port)
        surl = f"redis://{HOST}:{single.port}/0"
        rates: dict[str, list[float]] = {"single": [], "cluster": []}
        for r in range(a.rounds):  # alternated, so the VM's drift hits both alike
            for name, url, nodes in (("single", surl, {q: snode for q in queues}), ("cluster", cluster.url, cnodes)):
                t0 = time.monotonic()
                rate, claims = drain(url, nodes, queues, a.tasks, a.procs)
                rates[name].append(rate)
                print(f"round {r + 1} {name:8}: {rate:9,.0f} tasks/s, {claims:6d} claims, "
                      f"{3 * a.tasks / claims:6.1f} tasks a claim (round {time.monotonic() - t0:.1f} s)", flush=True)
        s, c = statistics.median(rates["single"]), statistics.median(rates["cluster"])
        print(f"median: single {s:,.0f} tasks/s, cluster {c:,.0f} tasks/s, cluster/single {c / s:.2f}")
    finally:
        cluster.stop()
        single.stop()


if __name__ == "__main__":
    main()
