"""Redis memory over a long no-op drain through a real `xq run`: flat once the retention cap is reached.

A producer keeps a bounded backlog (at most --backlog ready tasks) topped up in batches of 10,000 no-op
tasks while `xq run` drains them; every --every seconds the script samples Redis used_memory, the key
count, the done index's size and the records trimmed so far.  Stops after --tasks tasks or --seconds,
whichever comes first, then waits (at most 60 s) for the backlog to drain.

    PYTHONPATH=. python3 bench/retention_memory.py --tasks 1000000 --seconds 300
    PYTHONPATH=. python3 bench/retention_memory.py --tasks 300000 --keep 1000000000   # keep-everything, to compare

--keep sets the queue's retention (default: the default policy, 10,000 per state).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import xq  # noqa: E402
from benchutil import private_redis, xq_run  # noqa: E402
from xq.inspect import Inspector  # noqa: E402
from xq.keys import queue_keys  # noqa: E402

BATCH = 10000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--backlog", type=int, default=50_000)
    ap.add_argument("--procs", default="2")
    ap.add_argument("--keep", type=int, default=None, help="the queue's retention keep (default: the default)")
    a = ap.parse_args()
    assert a.seconds <= 600, "keep it bounded: at most 10 minutes"
    with private_redis() as (url, _pid):
        r = redis.Redis.from_url(url)
        qk = queue_keys("default")
        p = xq.Producer(url)
        insp = Inspector(url)
        if a.keep:
            insp.set_retention("default", keep=a.keep)
        base = r.info("memory")["used_memory"]
        proc = xq_run(url, procs=a.procs)
        sent, t0, last = 0, time.monotonic(), -a.every
        print(f"baseline used_memory {base / 2**20:.1f} MiB; policy {insp.retention('default')['keep']} per state")
        print(f"{'t s':>6} {'enqueued':>9} {'finished':>9} {'rate/s':>8} {'used MiB':>9} {'keys':>8} "
              f"{'done idx':>8} {'trimmed':>9}")
        prev_fin, prev_t = 0, 0.0
        try:
            while True:
                now = time.monotonic() - t0
                if now - last >= a.every:
                    last = now
                    ret = insp.retention("default")
                    fin = ret["trimmed"] + ret["indexed"]["done"]
                    rate = (fin - prev_fin) / max(now - prev_t, 1e-9)
                    prev_fin, prev_t = fin, now
                    print(f"{now:6.0f} {sent:9d} {fin:9d} {rate:8.0f} {r.info('memory')['used_memory'] / 2**20:9.1f} "
                          f"{r.dbsize():8d} {ret['indexed']['done']:8d} {ret['trimmed']:9d}", flush=True)
                if sent >= a.tasks or now >= a.seconds:
                    break
                if sum(r.llen(k) for k in qk.ready) < a.backlog:
                    n = min(BATCH, a.tasks - sent)
                    p.enqueue_many("noop", [None] * n)
                    sent += n
                else:
                    time.sleep(0.05)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (sum(r.llen(k) for k in qk.ready) or r.zcard(qk.leases)):
                time.sleep(0.5)
            ret = insp.retention("default")
            used = r.info("memory")["used_memory"]
            print(f"end: {sent} enqueued, {ret['trimmed'] + ret['indexed']['done']} finished in "
                  f"{time.monotonic() - t0:.0f} s; used_memory {used / 2**20:.1f} MiB "
                  f"({(used - base) / 2**20:.1f} MiB over the baseline), {r.dbsize()} keys, "
                  f"done index {ret['indexed']['done']}, trimmed {ret['trimmed']}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            p.close()
            insp.close()
            r.close()


if __name__ == "__main__":
    main()
