"""Enqueue of large raw payloads, two (or more) checkouts alternated in one run: the wall time of the
enqueue_many call and the CPU Redis spent on it (INFO used_cpu_user + used_cpu_sys, before and after).

    python3 bench/enqueue_large.py TREE [TREE ...] [--tasks 40] [--size 4300000] [--rounds 6]

One private redis-server for the whole run (warmed by a first, uncounted enqueue of the same volume, so
the figures are of a Redis whose memory is already mapped, as a running one's is); each round, for each
tree in turn (the order flips every round): FLUSHALL, then that tree's Producer enqueues --tasks payloads
of --size random bytes with one enqueue_many call in a fresh process (started in an empty directory: with
`python -c` the current directory comes first on sys.path, before PYTHONPATH).  Redis' time is its CPU
(INFO used_cpu_user + used_cpu_sys) over the call.  Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import private_redis  # noqa: E402

ENQ = ("import os, sys, time, xq; n, size = int(sys.argv[2]), int(sys.argv[3])\n"
       "blobs = [os.urandom(size) for _ in range(n)]; p = xq.Producer(sys.argv[1]); p.enqueue('warm', b'')\n"
       "t = time.perf_counter(); p.enqueue_many('thumb', blobs); print(time.perf_counter() - t)")


def redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs="+")
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--size", type=int, default=4_300_000)
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    trees = [os.path.abspath(t) for t in a.trees]
    walls: dict[str, list[float]] = {t: [] for t in trees}
    cpus: dict[str, list[float]] = {t: [] for t in trees}
    empty = tempfile.mkdtemp(prefix="xq-bench-")
    with private_redis() as (url, _pid):
        r = redis.Redis.from_url(url)

        def run(tree: str) -> tuple[float, float]:
            r.flushall()
            c0 = redis_cpu(r)
            out = subprocess.run([sys.executable, "-c", ENQ, url, str(a.tasks), str(a.size)], check=True, cwd=empty,
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": tree}).stdout
            return float(out.split()[-1]), redis_cpu(r) - c0

        run(trees[0])  # warm-up: Redis maps the memory once
        for k in range(a.rounds):
            for tree in (trees if k % 2 == 0 else trees[::-1]):
                wall, cpu = run(tree)
                walls[tree].append(wall)
                cpus[tree].append(cpu)
                print(f"round {k}  {tree:32}  enqueue {wall:.3f} s   Redis CPU {cpu:.3f} s",
                      flush=True)
    mb = a.tasks * a.size / 1e6
    for tree in trees:
        w, c = statistics.median(walls[tree]), statistics.median(cpus[tree])
        print(f"median  {tree:32}  enqueue {w:.3f} s ({mb / w:.0f} MB/s)   Redis CPU {c:.3f} s "
              f"({c / a.tasks * 1e3:.2f} ms a payload)")


if __name__ == "__main__":
    main()
