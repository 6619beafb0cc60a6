"""What the finished index and the retention cut cost a no-op drain: `xq run --burst` over N tasks, with the
code of two trees alternated in one run (e.g. the commit before retention and this one).

    git archive 9c1f61c | tar -x -C /tmp/base && (cd /tmp/base && python3 setup.py build_ext --inplace -q)
    PYTHONPATH=. python3 bench/retention_cost.py /tmp/base . --tasks 200000 --rounds 3

Each round flushes a private Redis, enqueues the tasks (with that tree's code) and times the burst run from
its start to its exit (startup included, the same for both; the records are trimmed, so the drain window
cannot be read from them).  With the default policy the cut is active after the first 10,000 tasks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import BENCH, private_redis  # noqa: E402

ENQ = "import sys, xq; p = xq.Producer(sys.argv[1]); [p.enqueue_many('noop', [None] * 10000) for _ in range({n})]"


def drain(url: str, tree: str, n: int, procs: str) -> float:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    subprocess.run([sys.executable, "-c", ENQ.format(n=n // 10000), url], env=env, cwd=BENCH, check=True,
                   timeout=300)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "xq.cli", "run", "benchapp:app", "--redis", url, "--procs", procs,
                    "--burst", "--log-level", "error"], env=env, cwd=BENCH, check=True, timeout=300)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs=2)
    ap.add_argument("--tasks", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--procs", default="2")
    a = ap.parse_args()
    import redis

    rates: dict[str, list[float]] = {t: [] for t in a.trees}
    with private_redis() as (url, _pid):
        r = redis.Redis.from_url(url)
        for k in range(a.rounds):
            for tree in (a.trees if k % 2 == 0 else a.trees[::-1]):
                r.flushall()
                s = drain(url, tree, a.tasks, a.procs)
                rates[tree].append(a.tasks / s)
                print(f"round {k + 1} {tree}: {a.tasks / s:,.0f} tasks/s ({s:.1f} s); "
                      f"used_memory after {r.info('memory')['used_memory'] / 2**20:.1f} MiB", flush=True)
        r.close()
    m = {t: statistics.median(v) for t, v in rates.items()}
    print("medians: " + ", ".join(f"{t}: {v:,.0f} tasks/s" for t, v in m.items())
          + f"; ratio {m[a.trees[1]] / m[a.trees[0]]:.3f}")


if __name__ == "__main__":
    main()
