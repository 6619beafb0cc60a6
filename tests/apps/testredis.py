"""The Redis client the test handlers record what they did with: $XQ_TEST_REDIS (set by tests/xqrun.py),
one connection per process, made on first use (after the fork)."""

import os

import redis

_r = None


def r() -> redis.Redis:
    global _r
    if _r is None:
        _r = redis.Redis.from_url(os.environ["XQ_TEST_REDIS"])
    return _r
