"""Handlers for the lifecycle tests (retries, delays, timeouts, cancellation); each records what it did in
Redis, outside xq."""

import hashlib
import time


import xq

from .testredis import r

app = xq.App("life")


def mark(what: str) -> None:
    c = xq.current()
    r().rpush(f"test:{what}", f"{c.id}:{c.attempt}")


@app.task("count")
def count(payload):
    mark("ran")
    r().hincrby("test:execs", xq.current().id, 1)
    return payload


@app.task("flaky", max_retries=3, backoff=[0.05, 0.1])
def flaky(payload):
    """Fails until attempt payload['ok_at']."""
    mark("ran")
    if xq.current().attempt < payload["ok_at"]:
        raise ConnectionError(f"flaky attempt {xq.current().attempt}")
    return xq.current().attempt


@app.task("backoff_slow", max_retries=1, backoff=xq.Backoff(base=3.0, jitter=False))
def backoff_slow(payload):
    mark("ran")
    raise ValueError("first attempt fails; the retry comes 3 s later")


@app.task("ask_retry", max_retries=2)
def ask_retry(payload):
    mark("ran")
    if xq.current().attempt == 1:
        raise xq.Retry(delay=0.2)
    return "second time lucky"


@app.task("picky", max_retries=3, retry_on=(ConnectionError,), backoff=[0.01])
def picky(payload):
    mark("ran")
    if payload == "conn":
        raise ConnectionError("retried")
    raise KeyError("not retried")


@app.task("give_up", max_retries=5, backoff=[0.01])
def give_up(payload):
    mark("ran")
    raise xq.NonRetryable("this input can never work")


@app.task("spin_c", timeout=1.0, max_retries=1, backoff=[0.01])
def spin_c(payload):
    """Busy in C code for far longer than its timeout (pbkdf2 never returns to the interpreter)."""
    mark("ran")
    hashlib.pbkdf2_hmac("sha256", b"x", b"salt", 200_000_000)
    return "finished?"


@app.task("sleep_to")
def sleep_to(payload):
    mark("ran")
    time.sleep(payload["s"])
    return "slept"


@app.task("cancellable")
def cancellable(payload):
    # xq.Cancelled may arrive at any bytecode once the handler runs, mark() included: inside the try, a
    # cancel during it is still cleaned up after
    try:
        mark("ran")
        for _ in range(600):
            time.sleep(0.05)
    except xq.Cancelled:
        mark("cleaned")
        raise
    return "not canceled"


@app.task("stubborn")
def stubborn(payload):
    """Ignores cancellation: busy in C, then swallows xq.Cancelled."""
    mark("ran")
    while True:
        try:
            hashlib.pbkdf2_hmac("sha256", b"x", b"salt", 5_000_000)
        except BaseException:
            pass


@app.task("order")
def order(payload):
    r().rpush("test:order", payload)
    return payload


@app.task("other_order", queue="other")
def other_order(payload):
    r().rpush("test:order", payload)
    return payload


@app.task("fail_once_slowly", max_retries=1, backoff=[0.6])
def fail_once_slowly(payload):
    mark("ran")
    if xq.current().attempt == 1:
        raise ConnectionError("first attempt fails; the retry comes 0.6 s later")
    return "second attempt"


@app.task("nonretryable", max_retries=0)
def nonretryable(payload):
    mark("ran")
    raise xq.NonRetryable("never works")


@app.task("always_fails", max_retries=5, backoff=[0.01])
def always_fails(payload):
    mark("ran")
    raise ValueError("fails every time")
