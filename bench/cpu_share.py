"""Where the cores go while `xq run --procs auto` drains CPU-bound thumbnails: the children's share is the
efficiency by accounting (what is not theirs is Redis, the supervisor, other processes or idle).

    python3 bench/cpu_share.py [--tasks 4800] [--rounds 3] [--also LABEL=PATH]

Needs `perf` (Debian's linux-perf) and root or perf_event_paranoid <= 0.  Each run: a private redis-server,
--tasks thumbnails of 55 KB JPEGs (bench/benchapp.py `thumb`, ~5 ms each) enqueued, `xq run --burst`, and
`perf record -e cpu-clock -a` over the whole machine while it drains; the shares are taken over the middle
60% of the recording (no start-up, no tail).  Unlike tasks/s over an in-process baseline, these shares do
not move with the VM's speed from minute to minute.  --also LABEL=PATH alternates the xq found at PATH (a
checkout) with this one, round by round: a before/after comparison in the same run.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from collections import Counter

import psutil
import redis

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

from benchutil import flush, private_redis, thumb_drain  # noqa: E402


def one_run(tree: str | None, tasks: int, images: list[bytes]) -> dict[str, float]:
    with private_redis() as (url, redis_pid), tempfile.TemporaryDirectory() as tmp:
        r = redis.Redis.from_url(url)
        flush(r)
        sup = thumb_drain(url, images, tasks, tree)
        kids = {c.pid for c in psutil.Process(sup.pid).children()}
        data = os.path.join(tmp, "perf.data")
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1000", "-a", "-o", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sup.wait(timeout=600)
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
        out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "pid", "-g", "none",
                              "--stdio", "--time", "20%-80%"], capture_output=True, text=True).stdout
        r.close()
    share: Counter = Counter()
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\d+):", line)
        if not m:
            continue
        pct, pid = float(m.group(1)), int(m.group(2))
        what = ("supervisor" if pid == sup.pid else "Redis" if pid == redis_pid else "idle" if pid == 0
                else "children" if pid in kids else "other")
        share[what] += pct
    return dict(share)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=4800)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=PATH")
    a = ap.parse_args()
    from xq.examples.thumbs import make_images

    images = make_images(8, size=(1200, 900))
    trees = [("this", None)] + [tuple(x.split("=", 1)) for x in a.also]
    got: dict[str, list[dict]] = {label: [] for label, _ in trees}
    for rnd in range(a.rounds):
        for label, tree in (trees if rnd % 2 == 0 else trees[::-1]):
            s = one_run(tree, a.tasks, images)
            got[label].append(s)
            print(f"round {rnd + 1} {label:<8} " + "  ".join(f"{k} {s.get(k, 0):5.1f}%" for k in
                                                            ("children", "supervisor", "Redis", "other", "idle")),
                  flush=True)
    print("medians:")
    for label, runs in got.items():
        print(f"  {label:<8} " + "  ".join(f"{k} {statistics.median(r.get(k, 0) for r in runs):5.1f}%"
                                           for k in ("children", "supervisor", "Redis", "other", "idle")))


if __name__ == "__main__":
    main()
