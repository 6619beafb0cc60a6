"""Handlers for the rate-limit tests: each records its task id and the Redis TIME (ms) it started at, in the
test Redis, outside xq."""

import xq

from .testredis import r

app = xq.App("rates")


def _record():
    s, us = r().time()
    r().rpush("test:starts", f"{xq.current().id} {s * 1000 + us // 1000}")


@app.task("hit")
def hit(payload):
    _record()


@app.task("named_hit", rate_limit="4/s")
def named_hit(payload):
    _record()
