"""The Redis client the test handlers record what they did with: $XQ_TEST_REDIS (set by tests/xqrun.py),
one connection per process, made on first use (after the fork); a Cluster or Sentinel URL gives xq's client
of it (a RedisCluster, the Sentinel master's)."""

import os

import redis

_r = None


def r() -> redis.Redis:
    global _r
    if _r is None:
        url = os.environ["XQ_TEST_REDIS"]
        if url.split("://", 1)[0].lower() in ("redis", "rediss", "unix"):
            _r = redis.Redis.from_url(url)
        else:
            from xq.conn import make_client

            _r = make_client(url)
    return _r
