"""Handlers for the end-to-end tests: each counts its executions in Redis, outside xq."""

import os
import signal
import time


import xq

from .testredis import r

app = xq.App("tests")


def count() -> None:
    r().hincrby("test:execs", xq.current().id, 1)
    r().rpush("test:order", xq.current().id)


@app.task("count")
def count_task(payload):
    count()
    return payload


@app.task("echo")
def echo(payload):
    return payload


@app.task("reverse")
def reverse(payload: bytes) -> bytes:
    return payload[::-1]


@app.task("ctx")
def ctx(payload):
    c = xq.current()
    return {"id": c.id, "name": c.name, "queue": c.queue, "attempt": c.attempt}


@app.task("sleep")
def sleep(payload):
    r().rpush("test:started", xq.current().id)
    r().set("test:running_pid", os.getpid())
    time.sleep(payload["s"])
    count()
    return payload


@app.task("sleep_attempt")
def sleep_attempt(payload):
    """Like sleep, but its result names the attempt that produced it."""
    sleep(payload)
    return {"attempt": xq.current().attempt}


@app.task("boom", max_retries=0)
def boom(payload):
    raise ValueError(f"boom {payload}")


@app.task("unserializable")
def unserializable(payload):
    return {1, 2, 3}


@app.task("crash_once")
def crash_once(payload):
    """SIGKILLs its own child on the first attempt, succeeds on the next."""
    count()
    if xq.current().attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@app.task("always_crash")
def always_crash(payload):
    count()
    os._exit(13)


@app.task("pid")
def pid(payload):
    return os.getpid()


@app.task("grow")
def grow(payload):
    global _hog
    _hog = bytearray(payload["mb"] * 1024 * 1024)
    return os.getpid()


@app.task("other", queue="other")
def other(payload):
    count()
    return "other"


@app.task("thumb", queue="default")
class Thumb(xq.Processor):
    def setup(self):
        self.prefix = b"T:"

    def process(self, payload):
        return self.prefix + payload[:4]


@app.task("mem.kept")
def mem_kept(payload):
    """Allocates and frees 24 MiB in 1 MiB blocks; returns how many MiB of it the process still holds."""
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = rss()
    blocks = [b"x" * (1 << 20) for _ in range(24)]
    del blocks
    return (rss() - before) / (1 << 20)
