"""Handlers for the progress and middleware tests; each records what it did in Redis, outside xq."""

import time

import xq
from xq.middleware import Middleware

from .testredis import r


class Recorder(Middleware):
    """Records every hook call as `<tag>:<hook>:<task name>` in the test Redis list test:mw."""

    def __init__(self, tag: str):
        self.tag = tag

    def _rec(self, hook, ctx):
        r().rpush("test:mw", f"{self.tag}:{hook}:{ctx.name}")

    def before_task(self, ctx, payload):
        self._rec("before", ctx)

    def after_task(self, ctx, result):
        self._rec("after", ctx)

    def on_error(self, ctx, exc):
        self._rec(f"error({type(exc).__name__})", ctx)


app = xq.App("flow", middleware=[Recorder("outer")])
app.add_middleware(Recorder("inner"))


def _wait_key(key: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not r().exists(key):
        if time.monotonic() > deadline:
            raise TimeoutError(f"test never set {key}")
        time.sleep(0.01)


@app.task("steps")
def steps(payload):
    """Reports progress 3 times, each after the test set test:go:<n>."""
    ctx = xq.current()
    for n, (pct, msg) in enumerate([(10, "started"), (50.5, "half way"), (100, None)]):
        _wait_key(f"test:go:{n}")
        ctx.progress(pct, msg)
    return "ok"


@app.task("spin")
def spin(payload):
    """Calls progress() in a tight loop; the last value must win."""
    ctx = xq.current()
    for i in range(payload["n"]):
        ctx.progress(i * 100 / (payload["n"] - 1), f"step {i}")
    return payload["n"]


@app.task("ok")
def ok(payload):
    return payload


@app.task("boom", max_retries=0)
def boom(payload):
    raise ValueError("boom")


@app.task("progress_then_fail_once", max_retries=1, backoff=[0.01])
def progress_then_fail_once(payload):
    """Reports progress and fails on its first attempt; the second succeeds without reporting."""
    if xq.current().attempt == 1:
        xq.current().progress(40, "first attempt")
        raise ConnectionError("first attempt fails")
    return xq.current().attempt
