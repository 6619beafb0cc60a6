"""The cost of `xq run --metrics-port`: a no-op drain with metrics off and on, alternated in one run.

    PYTHONPATH=$PWD python3 bench/metrics_cost.py [N] [ROUNDS] [PROCS] [SCRAPE_EVERY_S (0: no scraper)]

Each round enqueues N no-op tasks, then runs `xq run --burst` over them and takes the drain window from the
task records (first claim to last finish).  A scraper hits /metrics every 0.5 s while metrics are on, as
Prometheus would (more often than its usual 15 s)."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import redis  # noqa: E402

import xq  # noqa: E402
from benchutil import _free_port, drain_window, flush, private_redis, xq_run  # noqa: E402


def scrape_until(port: int, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
        except OSError:
            pass


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    procs = sys.argv[3] if len(sys.argv) > 3 else "2"
    every = float(sys.argv[4]) if len(sys.argv) > 4 else 0.5
    res: dict[str, list[float]] = {"off": [], "on": []}
    with private_redis() as (url, _):
        r = redis.Redis.from_url(url)
        for i in range(rounds * 2):
            mode = "off" if i % 2 == 0 else "on"
            flush(r)
            with xq.Producer(url) as p:
                ids = p.enqueue_many("noop", [None] * n, queue="default")
            args = ["--burst", "--queues", "default"]
            stop = threading.Event()
            if mode == "on":
                port = _free_port()
                args += ["--metrics-port", str(port)]
                if every > 0:
                    threading.Thread(target=scrape_until, args=(port, stop, every), daemon=True).start()
            proc = xq_run(url, *args, procs=procs)
            assert proc.wait(timeout=600) == 0
            stop.set()
            first, last = drain_window(r, "default", ids)
            res[mode].append(n / (last - first))
            print(f"round {i + 1} metrics {mode:3}: {res[mode][-1]:,.0f} tasks/s", flush=True)
        r.close()
    off, on = statistics.median(res["off"]), statistics.median(res["on"])
    print(f"median: off {off:,.0f} tasks/s, on {on:,.0f} tasks/s ({(on - off) / off * 100:+.1f}%)")


if __name__ == "__main__":
    main()
