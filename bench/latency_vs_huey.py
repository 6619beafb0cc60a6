"""Idle enqueue->handler latency, xq against Huey, side by side in one run.

    python3 bench/latency_vs_huey.py [--samples 1000] [--rounds 3] [--max-seconds 300] [--also LABEL=PATH]

One private redis-server (no persistence); `xq run benchapp:app --procs 2` and `huey_consumer
hueyapp.huey -k process -w 2` both run on it for the whole run, each idle while the other is measured.
Rounds alternate xq, Huey, xq, Huey, ... so both see the same background load.  A sample: wait a random
2-6 ms (the workers go idle), enqueue one task, wait for its result; the handler returns time.time() at
its start.  start = handler start - enqueue call, result = the result in hand - enqueue call (xq's
result(), Huey's get(blocking=True) with notify_result).  Prints p50/p90/p99 per round and over all
rounds, per system.  Needs the `bench` extra (huey).  On a shared machine the tails move with the load of
the other processes: compare the systems within one run, not across runs.  --also LABEL=PATH adds the
xq found at PATH (a checkout, put first on PYTHONPATH of its `xq run`), on a Redis database of its own, to
the rotation: a before/after comparison in the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import xq  # noqa: E402
from benchutil import BENCH, flush, private_redis, xq_run  # noqa: E402


def xq_run_from(url: str, path: str) -> subprocess.Popen:
    """xq_run with the xq of the checkout at path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([path, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "xq.cli", "run", "benchapp:app", "--redis", url, "--procs", "2",
                             "--log-level", "error"], cwd=BENCH, env=env)


def huey_run(url: str) -> subprocess.Popen:
    exe = shutil.which("huey_consumer")
    if exe is None:
        sys.exit("huey_consumer not found: pip install 'xq-queue[bench]'")
    env = dict(os.environ, XQ_BENCH_HUEY_URL=url)
    return subprocess.Popen([exe, "hueyapp.huey", "-k", "process", "-w", "2", "-q", "-C"], cwd=BENCH, env=env,
                            stdout=subprocess.DEVNULL)


def q(xs: list[float], f: float) -> float:
    """The f quantile of sorted xs, in ms."""
    return xs[min(len(xs) - 1, int(len(xs) * f))] * 1000


def measure(enqueue_wait, n: int, deadline: float) -> tuple[list[float], list[float]]:
    """n samples (fewer if the deadline passes) of (start, result) latency, in seconds."""
    starts, results = [], []
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        time.sleep(random.uniform(0.002, 0.006))
        t0 = time.time()
        started = enqueue_wait()
        t1 = time.time()
        starts.append(started - t0)
        results.append(t1 - t0)
    return starts, results


def line(label: str, starts: list[float], results: list[float]) -> str:
    s, r = sorted(starts), sorted(results)
    return (f"  {label:12} n={len(s):5}  start p50 {q(s, .5):6.3f}  p90 {q(s, .9):6.3f}  p99 {q(s, .99):6.3f} ms"
            f"   result p50 {q(r, .5):6.3f}  p90 {q(r, .9):6.3f}  p99 {q(r, .99):6.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1000, help="samples per round (default 1000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per system (default 3)")
    ap.add_argument("--max-seconds", type=float, default=300, help="stop measuring after this long (default 300)")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=PATH",
                    help="also measure the xq of the checkout at PATH (repeatable)")
    args = ap.parse_args()
    also = [spec.partition("=") for spec in args.also]
    for spec, (label, sep, path) in zip(args.also, also):
        if not sep or not os.path.isdir(os.path.join(path, "xq")):
            sys.exit(f"--also {spec!r}: expected LABEL=PATH, PATH a checkout with an xq package")
    deadline = time.monotonic() + args.max_seconds
    with private_redis() as (url, _pid):
        r = redis.Redis.from_url(url)
        flush(r)
        os.environ["XQ_BENCH_HUEY_URL"] = url
        from hueyapp import stamp

        p = xq.Producer(url)
        procs = [xq_run(url, procs="2"), huey_run(url)]
        systems = {"xq": lambda: p.result(p.enqueue("stamp", None), timeout=10)}
        for db, (label, _, path) in enumerate(also, 1):  # each on a database of its own: no shared queue
            dburl = url.rsplit("/", 1)[0] + f"/{db}"
            flush(redis.Redis.from_url(dburl))
            procs.append(xq_run_from(dburl, os.path.abspath(path)))
            systems[label] = (lambda pp: lambda: pp.result(pp.enqueue("stamp", None), timeout=10))(xq.Producer(dburl))
        systems["huey"] = lambda: stamp()(blocking=True, timeout=10)
        try:
            for f in systems.values():  # all up and idle; warm-up
                for _ in range(50):
                    f()
            got = {name: ([], []) for name in systems}
            for k in range(args.rounds):
                for name, f in systems.items():
                    s, res = measure(f, args.samples, deadline)
                    got[name][0].extend(s)
                    got[name][1].extend(res)
                    if s:
                        print(line(f"{name} round {k + 1}", s, res), flush=True)
            print("all rounds:")
            for name, (s, res) in got.items():
                print(line(name, s, res))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            r.close()


if __name__ == "__main__":
    main()
