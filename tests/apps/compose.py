"""Handlers for the flow-control tests (unique keys, dependencies, groups, concurrency, rate limits); each
records what it did in the test Redis, outside xq."""

import time

import orjson

import xq

from .testredis import r

app = xq.App("compose")


@app.task("step")
def step(payload):
    r().rpush("test:order", xq.current().id)
    if isinstance(payload, dict) and payload.get("sleep"):
        time.sleep(payload["sleep"])
    return payload


@app.task("fail", max_retries=0)
def fail(payload):
    raise xq.NonRetryable(f"fails on purpose: {payload}")


@app.task("slot")
def slot(payload):
    """Records how many tasks of its key run at once, from inside the handler."""
    key = f"test:running:{payload['key']}"
    n = r().incr(key)
    r().rpush(f"test:seen:{payload['key']}", n)
    try:
        time.sleep(payload.get("sleep", 0.05))
    finally:
        r().decr(key)
    r().rpush("test:finished", payload["key"])
    return n


@app.task("hold")
def hold(payload):
    r().rpush("test:order", xq.current().id)
    time.sleep(payload)


@app.task("collect")
def collect(payload):
    r().rpush("test:callback", orjson.dumps(payload))
    return len(payload["ids"])


@app.task("stamp")
def stamp(payload):
    r().rpush("test:starts", xq.current().id)


@app.task("named_rate", rate_limit="4/s")
def named_rate(payload):
    r().rpush("test:starts", xq.current().id)
