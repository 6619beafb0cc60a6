"""Handlers for the model-based test (tests/test_model.py): what a task does is driven by its payload.

payload: {"mode": "ok" | "fail" | "retry", "s": seconds to sleep first, "ok_at": the first attempt that
succeeds (mode "retry")}.  Each start is counted in Redis (`model:execs`, outside xq), with what the record
said about a cancel at that moment (`model:late`: `cxl:start` ms of starts after a cancel request was recorded)."""

import time

import xq

from .testredis import r

app = xq.App("model")


@app.task("m", max_retries=10, backoff=[0.05])
def m(payload):
    c = xq.current()
    now = int(time.time() * 1000)
    r().hincrby("model:execs", c.id, 1)
    cxl = r().hget(f"xq:{{{c.queue}}}:t:{c.id}", "cxl")
    if cxl is not None:
        r().hset("model:late", f"{c.id}:{c.attempt}", f"{int(cxl)}:{now}")
    s = payload.get("s", 0)
    if s:
        time.sleep(s)
    mode = payload.get("mode", "ok")
    if mode == "fail":
        raise RuntimeError(f"model: fails by design (attempt {c.attempt})")
    if mode == "retry" and c.attempt < payload.get("ok_at", 2):
        raise RuntimeError(f"model: fails until attempt {payload.get('ok_at', 2)} (attempt {c.attempt})")
    return {"attempt": c.attempt}
