"""Enqueue cost of the two producer flavours: Producer and AsyncProducer, one task a call and 100,000 a call.

    PYTHONPATH=. python3 bench/enqueue_flavours.py [--calls 3000] [--many 100000] [--rounds 5]

Starts its own redis-server (no persistence).  Prints the best of `rounds` for each figure, in us per task:
the part Python and the round trip take on the producer's side (the server is local and idle otherwise).
Run it against two checkouts alternately (PYTHONPATH=/path/to/one, then the other) to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import xq  # noqa: E402
from benchutil import private_redis  # noqa: E402


def sync_round(p, r, calls: int, many: int) -> tuple[float, float]:
    r.flushall()
    t0 = time.perf_counter()
    for i in range(calls):
        p.enqueue("noop", i)
    t1 = time.perf_counter()
    r.flushall()
    payloads = [{"i": i} for i in range(many)]
    t2 = time.perf_counter()
    p.enqueue_many("noop", payloads)
    t3 = time.perf_counter()
    return (t1 - t0) / calls * 1e6, (t3 - t2) / many * 1e6


async def async_round(ap, r, calls: int, many: int) -> tuple[float, float]:
    r.flushall()
    t0 = time.perf_counter()
    for i in range(calls):
        await ap.enqueue("noop", i)
    t1 = time.perf_counter()
    r.flushall()
    payloads = [{"i": i} for i in range(many)]
    t2 = time.perf_counter()
    await ap.enqueue_many("noop", payloads)
    t3 = time.perf_counter()
    return (t1 - t0) / calls * 1e6, (t3 - t2) / many * 1e6


def main() -> None:
    ap_ = argparse.ArgumentParser()
    ap_.add_argument("--calls", type=int, default=3000)
    ap_.add_argument("--many", type=int, default=100_000)
    ap_.add_argument("--rounds", type=int, default=5)
    a = ap_.parse_args()
    with private_redis() as (url, _pid):
        r = redis.Redis.from_url(url)
        with xq.Producer(url) as p:
            sync = [sync_round(p, r, a.calls, a.many) for _ in range(a.rounds)]

        async def arounds():
            async with xq.AsyncProducer(url) as ap:
                return [await async_round(ap, r, a.calls, a.many) for _ in range(a.rounds)]
        aio = asyncio.run(arounds())
    print(f"xq from {os.path.dirname(xq.__file__)}")
    for label, rounds in (("Producer     ", sync), ("AsyncProducer", aio)):
        print(f"{label} enqueue {min(x[0] for x in rounds):7.1f} us/task   "
              f"enqueue_many {min(x[1] for x in rounds):5.2f} us/task")


if __name__ == "__main__":
    main()
