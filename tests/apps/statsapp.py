"""Handlers for tests/test_stats.py: two task names, one that fails, retries or crashes as its payload says."""

import os

import xq

app = xq.App("stats")


@app.task("ok")
def ok(payload):
    return payload


@app.task("flaky", max_retries=1, backoff=[0])
def flaky(payload):
    """payload "once": fails its first attempt; "always": every attempt (dead after 2); "crash": its child
    dies in the first attempt (a lost attempt); anything else: done."""
    if xq.current().attempt == 1 and payload == "crash":
        os._exit(13)
    if payload == "always" or (payload == "once" and xq.current().attempt == 1):
        raise ValueError(f"flaky {payload}")
    return payload
