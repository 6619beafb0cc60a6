"""Handlers for the partition tests (tests/test_partitions.py): short sleeps, each run counted in Redis."""

import time

import xq

from .testredis import r

app = xq.App("tests")


@app.task("work")
def work(payload):
    """Sleep payload["ms"], count this run in the hash test:runs (id -> runs), return the payload's number and
    the attempt.  The count is a side effect outside xq: at least once per task, twice for a task recovered
    from a partitioned supervisor whose child ran it anyway (xq runs tasks at least once)."""
    time.sleep(payload["ms"] / 1000)
    c = xq.current()
    r().hincrby("test:runs", c.id, 1)
    return {"i": payload["i"], "attempt": c.attempt}
