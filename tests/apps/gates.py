"""Handlers for the dispatch tests: a task held open until the test lets it go, and quick ones; each
returns the pid of the child that ran it."""

import os
import time

import xq

from .testredis import r

app = xq.App("gates")


@app.task("gate")
def gate(payload):
    """Runs until the test pushes to test:gate, at most payload["s"] seconds (1 s waits: redis-py's socket
    timeout would end a longer BLPOP with an error)."""
    r().rpush("test:started", xq.current().id)
    for _ in range(int(payload["s"])):
        if r().blpop("test:gate", timeout=1):
            break
    return os.getpid()


@app.task("nap")
def nap(payload):
    r().rpush("test:started", xq.current().id)
    time.sleep(payload["s"])
    return os.getpid()


@app.task("quick")
def quick(payload):
    return os.getpid()
