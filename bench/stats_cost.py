"""The cost of the stats history on the no-op drain: `xq run --no-stats` and the default, alternated.

    PYTHONPATH=$PWD python3 bench/stats_cost.py [N] [ROUNDS] [PROCS]

Each round enqueues N no-op tasks (one task name: the stats add one BITFIELD for it and one for the queue
to each pipeline step), runs `xq run --burst` over them and takes the drain window from the task records
(first claim to last finish), Redis' time in BITFIELD (commandstats), and the supervisor's own CPU time
per task (user + system, sampled every 20 ms until it exits: less at the mercy of other load than the
rate).  The machine is shared and noisy: every round is printed, then the medians."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil  # noqa: E402
import redis  # noqa: E402

import xq  # noqa: E402
from benchutil import drain_window, private_redis, xq_run  # noqa: E402


def cpu_until_exit(pid: int, out: list) -> None:
    """The last CPU time (user + system, s) seen of process pid, polled until it is gone."""
    try:
        p = psutil.Process(pid)
        while True:
            t = p.cpu_times()
            out[:] = [t.user + t.system]
            time.sleep(0.02)
    except psutil.Error:
        pass


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    procs = sys.argv[3] if len(sys.argv) > 3 else "2"
    res: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    with private_redis() as (url, _):
        r = redis.Redis.from_url(url)
        for i in range(rounds * 2):
            mode = "off" if i % 2 == 0 else "on"
            r.flushall()
            with xq.Producer(url) as p:
                ids = p.enqueue_many("noop", [None] * n)
            r.config_resetstat()
            proc = xq_run(url, "--burst", *(["--no-stats"] if mode == "off" else []), procs=procs)
            seen: list = []
            poll = threading.Thread(target=cpu_until_exit, args=(proc.pid, seen), daemon=True)
            poll.start()
            assert proc.wait(timeout=600) == 0
            poll.join()
            first, last = drain_window(r, "default", ids)
            res[mode].append(len(ids) / (last - first))
            cpu[mode].append(seen[0] / len(ids) * 1e6 if seen else float("nan"))
            cs = r.info("commandstats")
            bf = cs.get("cmdstat_bitfield", {})
            print(f"round {i + 1} stats {mode:3}: {res[mode][-1]:,.0f} tasks/s, supervisor CPU "
                  f"{cpu[mode][-1]:.2f} us/task; in Redis: BITFIELD {bf.get('calls', 0)} calls "
                  f"{bf.get('usec', 0) / len(ids):.3f} us/task, EVALSHA "
                  f"{cs.get('cmdstat_evalsha', {}).get('usec', 0) / len(ids):.2f} us/task", flush=True)
        r.close()
    off, on = statistics.median(res["off"]), statistics.median(res["on"])
    print(f"median: --no-stats {off:,.0f} tasks/s, stats on {on:,.0f} tasks/s ({(on - off) / off * 100:+.1f}%)")
    c_off, c_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(f"median supervisor CPU: --no-stats {c_off:.2f} us/task, stats on {c_on:.2f} us/task "
          f"({(c_on - c_off) / c_off * 100:+.1f}%)")


if __name__ == "__main__":
    main()
