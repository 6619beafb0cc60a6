"""What one `xq top` refresh (xq.top.snapshot) costs: wall time in this process and Redis time, for Q queues.

    python3 bench/top_snapshot.py [QUEUES] [TASKS_PER_QUEUE]

It starts a private redis-server on a free port (xq.embedded) and stops it at the end.  Redis time and
commands are from INFO commandstats, which counts the commands a script runs as well as the script.
"""

from __future__ import annotations

import statistics
import sys
import time

import redis

import xq
from xq.embedded import EmbeddedRedis
from xq.inspect import Inspector
from xq.top import snapshot

ROUNDS = 200  # bounded: 200 refreshes


def main() -> None:
    nq = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    with EmbeddedRedis() as server:
        measure(server.url, nq, per)


def measure(url: str, nq: int, per: int) -> None:
    r = redis.Redis.from_url(url)
    with xq.Producer(url) as p:
        for k in range(nq):
            p.enqueue_many("n", list(range(per)), queue=f"q{k}")
            p.enqueue_many("d", list(range(per // 10)), queue=f"q{k}", delay=600)
    with Inspector(url, retry_for=0) as insp:
        snapshot(insp, detail_queue="q0")  # scripts loaded, connections open
        r.config_resetstat()
        times = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            snapshot(insp, detail_queue="q0")
            times.append(time.perf_counter() - t0)
    stats = r.info("commandstats")
    calls = sum(v["calls"] for v in stats.values())
    usec = sum(v["usec"] for v in stats.values())
    print(f"{nq} queues x {per} ready + {per // 10} scheduled, {ROUNDS} refreshes: "
          f"median {statistics.median(times) * 1000:.2f} ms wall per refresh, "
          f"{calls / ROUNDS:.0f} Redis commands (with those inside scripts) and {usec / ROUNDS:.0f} us of "
          f"Redis time per refresh")
    r.close()


if __name__ == "__main__":
    main()
