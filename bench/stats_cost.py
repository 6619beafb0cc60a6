"""The cost of the stats history on the no-op drain: `xq run --no-stats` and the default, alternated.

    PYTHONPATH=$PWD python3 bench/stats_cost.py [N] [ROUNDS] [PROCS]

Each round enqueues N no-op tasks (one task name: the stats add one BITFIELD for it and one for the queue
to each pipeline step), runs `xq run --burst` over them and takes the drain window from the task records
(first claim to last finish).  The machine is shared and noisy: every round is printed, then the medians."""

from __future__ import annotations

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import redis  # noqa: E402

import xq  # noqa: E402
from benchutil import drain_window, private_redis, xq_run  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    procs = sys.argv[3] if len(sys.argv) > 3 else "2"
    res: dict[str, list[float]] = {"off": [], "on": []}
    with private_redis() as (url, _):
        r = redis.Redis.from_url(url)
        for i in range(rounds * 2):
            mode = "off" if i % 2 == 0 else "on"
            r.flushall()
            with xq.Producer(url) as p:
                ids = p.enqueue_many("noop", [None] * n)
            proc = xq_run(url, "--burst", *(["--no-stats"] if mode == "off" else []), procs=procs)
            assert proc.wait(timeout=600) == 0
            first, last = drain_window(r, "default", ids)
            res[mode].append(len(ids) / (last - first))
            print(f"round {i + 1} stats {mode:3}: {res[mode][-1]:,.0f} tasks/s", flush=True)
        r.close()
    off, on = statistics.median(res["off"]), statistics.median(res["on"])
    print(f"median: --no-stats {off:,.0f} tasks/s, stats on {on:,.0f} tasks/s ({(on - off) / off * 100:+.1f}%)")


if __name__ == "__main__":
    main()
