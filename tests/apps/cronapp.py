"""A periodic task on a scaled clock, for the cron end-to-end tests.

The clock is read from the environment the test sets, so every supervisor process agrees on it:
XQ_CRON_ORIGIN (clock seconds at XQ_CRON_REAL_ORIGIN, unix seconds) and XQ_CRON_RATE (clock seconds per
real second; 60 makes `* * * * *` tick once a real second).  Each run RPUSHes its task id to
test:cron:runs and the clock time it ran at to test:cron:clock.
"""

import os
import time


import xq

from .testredis import r

ORIGIN = float(os.environ.get("XQ_CRON_ORIGIN", time.time()))
REAL_ORIGIN = float(os.environ.get("XQ_CRON_REAL_ORIGIN", time.time()))
RATE = float(os.environ.get("XQ_CRON_RATE", "60"))

app = xq.App("cron", clock=xq.ScaledClock(origin=ORIGIN, rate=RATE, real_origin=REAL_ORIGIN))


@app.cron("* * * * *", name="tick")
def tick():
    r().rpush("test:cron:runs", xq.current().id)
    r().rpush("test:cron:clock", repr(app.clock.time()))
