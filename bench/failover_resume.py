"""A failover's time to resume: from the SIGKILL of the master a running `xq run` drains to the first task
CLAIMED on the master that replaces it, on a Redis Cluster (3 masters + 3 replicas, cluster-node-timeout
2000 ms: the master of the drained queue's slot is killed, its replica promoted) and on a Sentinel set
(master + 2 replicas + 3 sentinels, down-after-milliseconds 1000).

    PYTHONPATH=. python3 bench/failover_resume.py --runs 3

Each run: enqueue --tasks `nap` tasks of --nap s into one queue, start `xq run benchapp:app` on it (a
subprocess), wait until it has finished some, SIGKILL the master, then poll (every 10 ms, at most 60 s)
the servers: `promoted` is when the topology names a new master (CLUSTER SLOTS / the sentinels), `claimed`
the `claimed` time (the server's clock, the same machine) of the first task claimed after the kill, read
from the task records on the new master.  kill -> promoted is Redis' detection and election; promoted ->
claimed is xq's part (the supervisor's reconnect backoff, its slot map or master re-discovery).
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
sys.path.insert(0, os.path.join(BENCH, "..", "tests"))

import redis  # noqa: E402

import xq  # noqa: E402
from xq.keys import QueueKeys  # noqa: E402

from topology import HOST, Cluster, SentinelSet, _ask, keyslot, queues_on_masters  # noqa: E402


def first_claim_after(port: int, queue: str, ids: list[str], kill_ms: int) -> int | None:
    """The earliest `claimed` ms >= kill_ms among the records of ids on the server on port, or None."""
    node = redis.Redis(host=HOST, port=port, socket_timeout=2)
    try:
        pipe = node.pipeline(transaction=False)
        for tid in ids:
            pipe.hget(QueueKeys(queue).task(tid), "claimed")
        late = [int(c) for c in pipe.execute() if c is not None and int(c) >= kill_ms]
        return min(late) if late else None
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return None
    finally:
        node.close()


def wait_for(what: str, check, timeout: float = 60.0, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = check()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError(f"no {what} within {timeout:g} s")


def one_run(topo, kind: str, queue: str, n: int, nap: float, procs: str, log_level: str) -> tuple[float, float]:
    """(kill -> promoted s, promoted -> first claim s) of one failover mid-drain."""
    with xq.Producer(topo.url) as p:
        ids = p.enqueue_many("nap", [nap] * n, queue=queue)
        time.sleep(1.0)  # appendfsync everysec and asynchronous replication: let the replicas have them
        run = subprocess.Popen([sys.executable, "-m", "xq.cli", "run", "benchapp:app", "--redis", topo.url,
                                "--procs", procs, "--queues", queue, "--log-level", log_level], cwd=BENCH)
        try:
            wait_for("tasks done", lambda: p.status(ids[9], queue=queue)["status"] == "done", 30, 0.05)
            if kind == "cluster":
                slot = keyslot(QueueKeys(queue).base)
                old = topo.master_of_slot(slot)
            else:
                old = topo.master_port()
            topo.server(old).kill()
            t_kill = time.time()
            kill_ms = int(t_kill * 1000)  # a claim replicated from the old master is older

            def promoted():
                if kind == "cluster":
                    for s in topo.servers:
                        if s.running:
                            slots = _ask(s.port, "CLUSTER", "SLOTS", timeout=0.2) or ()
                            for r in slots:
                                if r[0] <= slot <= r[1] and r[2][1] != old:
                                    return r[2][1]
                    return None
                ports = {topo.announced(s) for s in topo.sentinels}
                return ports.pop() if len(ports) == 1 and None not in ports and old not in ports else None
            new = wait_for("promotion", promoted)
            t_promoted = time.time()
            claimed = wait_for("claim on the new master", lambda: first_claim_after(new, queue, ids, kill_ms), 60, 0.02)
            t_claim = claimed / 1000
            if log_level != "error":  # to line up with the supervisor's log
                print(f"kill {stamp(t_kill)}, promoted {stamp(t_promoted)}, first claim {stamp(t_claim)}")
        finally:
            run.terminate()
            run.wait(timeout=60)
    topo.restart(old)
    topo.wait_healthy(60)
    topo.clean()
    return t_promoted - t_kill, max(0.0, t_claim - t_promoted)


def stamp(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f",{int(t * 1000) % 1000:03d}"


def report(kind: str, runs: list[tuple[float, float]]) -> None:
    for label, vals in (("kill -> promoted", [a for a, _ in runs]), ("promoted -> first claim", [b for _, b in runs]),
                        ("kill -> first claim", [a + b for a, b in runs])):
        print(f"{kind:8} {label:24}: min {min(vals):6.2f} s, median {statistics.median(vals):6.2f} s, "
              f"max {max(vals):6.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--nap", type=float, default=0.05, help="seconds each task sleeps")
    ap.add_argument("--procs", default="2")
    ap.add_argument("--only", choices=("cluster", "sentinel"))
    ap.add_argument("--log-level", default="error", help="of xq run; warning: its reconnects, lined up with ours")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="xq-bench-failover-")
    for kind in ("cluster", "sentinel"):
        if a.only and kind != a.only:
            continue
        topo = Cluster(os.path.join(root, "c")) if kind == "cluster" else SentinelSet(os.path.join(root, "s"))
        try:
            topo.start()
            queue = queues_on_masters(topo, 1, prefix="f")[0] if kind == "cluster" else "f"
            runs = []
            for r in range(a.runs):
                runs.append(one_run(topo, kind, queue, a.tasks, a.nap, a.procs, a.log_level))
                print(f"run {r + 1} {kind:8}: kill -> promoted {runs[-1][0]:.2f} s, promoted -> first claim "
                      f"{runs[-1][1]:.2f} s", flush=True)
            report(kind, runs)
        finally:
            topo.stop()


if __name__ == "__main__":
    main()
