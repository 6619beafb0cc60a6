"""Handlers for the benchmarks."""

import io
import time

import xq

app = xq.App("bench")


@app.task("noop")
def noop(payload):
    return None


@app.task("stamp")
def stamp(payload):
    """Returns the wall-clock time the handler started (same machine as the producer)."""
    return time.time()


_image = None


def thumbnail(data: bytes) -> bytes:
    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    im.thumbnail((128, 128))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=85)
    return out.getvalue()


@app.task("thumb")
def thumb(payload: bytes) -> bytes:
    return thumbnail(payload)


@app.task("noop_retry", max_retries=5, backoff=xq.Backoff(base=0.05, cap=1))
def noop_retry(payload):
    """A no-op with retries configured but never used (bench/test_lifecycle_bench.py)."""
    return None


class Flaky(Exception):
    """The planned failure of a `flaky` task's first attempt."""


@app.task("flaky", max_retries=3, backoff=xq.Backoff(base=0.01, cap=0.05))
def flaky(payload):
    """Fails its first attempt when the payload says so ({"f": 1}), succeeds otherwise."""
    if payload and xq.current().attempt == 1:
        raise Flaky("planned first-attempt failure")
    return None


@app.task("group_size")
def group_size(payload):
    """A group's callback: how many member ids it was handed."""
    return len(payload["ids"])


@app.task("nap")
def nap(payload):
    """Sleeps payload seconds (bench/failover_resume.py: a drain slow enough to be cut mid-way)."""
    time.sleep(payload)
