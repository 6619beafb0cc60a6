"""The supervisor's own CPU and wake-ups per task while `xq run --procs auto` drains CPU-bound thumbnails,
for one checkout or several alternated round by round (a before/after comparison on a noisy machine).

    python3 bench/supervisor_cpu.py [TREE ...] [--tasks 6000] [--rounds 3]

Needs `perf` (Debian's linux-perf) and root or perf_event_paranoid <= 0.  Each run: a private redis-server,
--tasks 55 KB JPEG thumbnails (bench/benchapp.py `thumb`) enqueued, `xq run --burst` of the tree (default:
this checkout), and from 1.5 s in (past its start-up) to its exit `perf stat -i` of the supervisor process
alone (-i: not its children): task-clock and poll() calls, over the tasks finished meanwhile.  Each poll()
is one sleep of its loop, so poll() a task is how often it wakes.  bench/cpu_share.py shows the same
process as a share of the cores; this counts it directly.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys

import redis

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

from benchutil import flush, private_redis, thumb_drain  # noqa: E402


def one_run(tree: str | None, tasks: int, images: list[bytes]) -> tuple[float, float]:
    from xq.keys import queue_keys

    done = queue_keys("default").finished("done")
    with private_redis() as (url, _):
        r = redis.Redis.from_url(url)
        flush(r)
        sup = thumb_drain(url, images, tasks, tree)
        first = r.zcard(done)
        perf = subprocess.Popen(["perf", "stat", "-i", "-x,", "-e", "task-clock,syscalls:sys_enter_poll", "-p",
                                 str(sup.pid)], stderr=subprocess.PIPE, text=True)
        sup.wait(timeout=600)
        perf.send_signal(signal.SIGINT)
        err = perf.communicate(timeout=60)[1]
        n = tasks - first
        r.close()
    got = {}
    for line in err.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].replace(".", "", 1).isdigit():
            got[f[2]] = float(f[0])
    return got["task-clock"] * 1000 / n, got["syscalls:sys_enter_poll"] / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs="*", default=["."])
    ap.add_argument("--tasks", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    from xq.examples.thumbs import make_images

    images = make_images(8, size=(1200, 900))
    got: dict[str, list[tuple[float, float]]] = {t: [] for t in a.trees}
    for rnd in range(a.rounds):
        for tree in (a.trees if rnd % 2 == 0 else a.trees[::-1]):
            us, polls = one_run(tree, a.tasks, images)
            got[tree].append((us, polls))
            print(f"round {rnd + 1} {tree}: supervisor {us:.1f} us of CPU a task, {polls:.2f} poll() a task",
                  flush=True)
    for tree, runs in got.items():
        print(f"median {tree}: {statistics.median(x[0] for x in runs):.1f} us, "
              f"{statistics.median(x[1] for x in runs):.2f} poll() a task")


if __name__ == "__main__":
    main()
