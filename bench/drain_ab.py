"""The no-op drain of two (or more) checkouts alternated in one run: a before/after comparison on a noisy
machine.

    python3 bench/drain_ab.py TREE [TREE ...] [--tasks 200000] [--rounds 8]

One private redis-server; each round, for each tree in turn (the order flips every round): FLUSHALL (the
retention count lifted, so every record can be read), enqueue --tasks no-op tasks with that tree's
Producer, run that tree's `xq run benchapp:app --procs auto --burst`, and read the drain window from the
records (first claim -> last finish).  Prints each run (start-up, drain, and the burst exit after the last
task) and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import BENCH, drain_window, flush, private_redis  # noqa: E402

ENQ = ("import sys, xq; p = xq.Producer(sys.argv[1]); n = int(sys.argv[2]); ids = []\n"
       "for i in range(0, n, 10000): ids += p.enqueue_many('noop', [None] * min(10000, n - i))\n"
       "open(sys.argv[3], 'w').write('\\n'.join(ids))")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs="+")
    ap.add_argument("--tasks", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=8)
    a = ap.parse_args()
    trees = [os.path.abspath(t) for t in a.trees]
    rates: dict[str, list[float]] = {t: [] for t in trees}
    with private_redis() as (url, _pid), tempfile.TemporaryDirectory() as tmp:
        r = redis.Redis.from_url(url)
        ids_file = os.path.join(tmp, "ids")
        for rnd in range(a.rounds):
            for t in (trees if rnd % 2 == 0 else trees[::-1]):
                flush(r)
                env = dict(os.environ, PYTHONPATH=t)
                subprocess.run([sys.executable, "-c", ENQ, url, str(a.tasks), ids_file], cwd=BENCH, env=env, check=True)
                with open(ids_file) as f:
                    ids = f.read().split()
                t0 = time.time()
                subprocess.run([sys.executable, "-m", "xq.cli", "run", "benchapp:app", "--redis", url, "--procs",
                                "auto", "--log-level", "error", "--burst"], cwd=BENCH, env=env, check=True)
                t1 = time.time()
                first, last = drain_window(r, "default", ids)
                rates[t].append(len(ids) / (last - first))
                print(f"round {rnd + 1} {t}: start {first - t0:.2f} s, drain {last - first:.2f} s "
                      f"({rates[t][-1]:,.0f} tasks/s), exit {t1 - last:.2f} s after the last task", flush=True)
        r.close()
    for t, v in rates.items():
        print(f"median {t}: {statistics.median(v):,.0f} tasks/s ({min(v):,.0f} - {max(v):,.0f})")


if __name__ == "__main__":
    main()
