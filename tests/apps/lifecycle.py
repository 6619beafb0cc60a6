"""Handlers for the retry and dead-letter tests: each records its attempts in Redis, outside xq.

Every attempt RPUSHes "<attempt>:<queue>" to test:attempts:<task id>.  Backoffs are tiny so the tests stay
fast; `retry_later` has a long backoff on purpose, so only the delay the handler asks for can make it quick.
"""

import xq

from .testredis import r

app = xq.App("lifecycle")
FLAG = "test:flag"


def record() -> xq.TaskContext:
    c = xq.current()
    r().rpush(f"test:attempts:{c.id}", f"{c.attempt}:{c.queue}")
    return c


class Transient(Exception):
    """The only error type `picky` retries."""


@app.task("fail_fast", max_retries=2, backoff=[0.01])
def fail_fast(payload):
    c = record()
    raise ValueError(f"fail_fast {payload} attempt {c.attempt}")


@app.task("needs_flag", max_retries=0)
def needs_flag(payload):
    """Fails until the test sets the Redis key test:flag (then a replay succeeds)."""
    c = record()
    if not r().exists(FLAG):
        raise RuntimeError(f"flag not set for {payload}")
    return {"ok": payload, "queue": c.queue, "attempt": c.attempt}


@app.task("fatal", max_retries=3, backoff=[0.01])
def fatal(payload):
    record()
    raise xq.NonRetryable(f"bad input {payload}")


@app.task("picky", max_retries=3, backoff=[0.01], retry_on=(Transient,))
def picky(payload):
    record()
    if payload == "transient":
        raise Transient("try again")
    raise KeyError(payload)


@app.task("retry_later", max_retries=3, backoff=[600])
def retry_later(payload):
    """Asks for a retry in payload["delay"] s on the first attempt (every attempt if payload["always"])."""
    c = record()
    if c.attempt == 1 or payload.get("always"):
        raise xq.Retry(delay=payload["delay"])
    return c.attempt


@app.task("ok")
def ok(payload):
    record()
    return payload
