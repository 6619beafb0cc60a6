"""Handlers that never write to Redis themselves (for tests where Redis refuses writes): each notes its
run in the file named by $XQ_TEST_NAPS, one line per execution."""

import os
import time

import xq

app = xq.App("naps")


@app.task("nap")
def nap(payload):
    time.sleep(payload["s"])
    with open(os.environ["XQ_TEST_NAPS"], "a") as f:
        f.write(xq.current().id + "\n")
    return payload["v"]
