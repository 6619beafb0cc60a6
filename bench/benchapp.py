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
