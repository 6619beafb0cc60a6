"""Handlers for the memory-limit tests (tests/test_memory_limit.py).

`hog` allocates without bound, in touched chunks, until something stops it: the test runs `xq run` under
an RLIMIT_AS so that a supervisor that fails to stop it ends in MemoryError instead of eating the machine.
With $XQ_TEST_BALLAST_MB set, importing this app makes that many MiB resident in the supervisor, which its
forked children inherit: children over a hard limit before they run anything.
"""

import os
import time

import xq

app = xq.App("tests")

if os.environ.get("XQ_TEST_BALLAST_MB"):
    _ballast = b"\x01" * (int(os.environ["XQ_TEST_BALLAST_MB"]) << 20)


@app.task("hog")
def hog(payload):
    step = payload.get("step_mb", 4) << 20
    pause = payload.get("pause", 0.002)
    held = []
    for _ in range(payload.get("max_steps", 2048)):  # 8 GiB at the default step: bounded, but never reached
        held.append(b"\x01" * step)                   # b"\x01" * n writes every page: resident at once
        time.sleep(pause)
    return len(held)


@app.task("use")
def use(payload):
    """Holds payload['mb'] MiB resident for a moment, then returns its pid."""
    block = b"\x01" * (payload.get("mb", 0) << 20)
    time.sleep(payload.get("s", 0))
    del block
    return os.getpid()


_leaked = []


@app.task("leak")
def leak(payload):
    """Keeps payload['mb'] MiB resident after it returns (a leak), and returns its pid."""
    _leaked.append(b"\x01" * (payload["mb"] << 20))
    return os.getpid()


@app.task("stubborn_hog")
def stubborn_hog(payload):
    """Ignores SIGTERM (as a handler stuck in a C library that blocks it might), waits, then allocates."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(payload.get("s", 1.5))
    return hog(payload)
