"""The Huey side of bench/latency_vs_huey.py: the same handler as benchapp's `stamp`, on RedisHuey.

$XQ_BENCH_HUEY_URL names the Redis; results are announced by BLPOP (notify_result), so that
`get(blocking=True)` wakes on the result instead of polling with backoff."""

import os
import time

from huey import RedisHuey

huey = RedisHuey("xqlat", url=os.environ["XQ_BENCH_HUEY_URL"], notify_result=True)


@huey.task()
def stamp():
    """Returns the wall-clock time the handler started (same machine as the producer)."""
    return time.time()
