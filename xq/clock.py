"""Clocks for time-dependent schedules (periodic tasks).  `App(clock=...)` injects one, so tests can run a
schedule faster than real time; every supervisor of an app must use the same clock.  A clock is any object
with `time()` (unix seconds on that clock) and `rate` (clock seconds per real second).

Leases, due times of delayed and retrying tasks and expiry use Redis' own clock (TIME inside scripts), so
supervisors on machines with skewed clocks still agree on them; only the cron schedule reads this clock.
"""

from __future__ import annotations

import time


class SystemClock:
    """Wall-clock time (unix seconds)."""

    rate = 1.0  # clock seconds per real second

    def time(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class ScaledClock:
    """A clock that reads `origin` at real unix time `real_origin` and runs `rate` times as fast as real
    time: e.g. ScaledClock(origin=T, real_origin=T, rate=60) makes every real second a minute, so a
    `* * * * *` schedule ticks once a second.  Processes that share the same three numbers agree."""

    def __init__(self, origin: float, rate: float = 1.0, real_origin: float | None = None):
        if rate <= 0:
            raise ValueError(f"clock rate must be > 0, got {rate!r}")
        self.origin = float(origin)
        self.rate = float(rate)
        self.real_origin = float(time.time() if real_origin is None else real_origin)

    def time(self) -> float:
        return self.origin + (time.time() - self.real_origin) * self.rate

    def __repr__(self) -> str:
        return f"ScaledClock(origin={self.origin}, rate={self.rate}, real_origin={self.real_origin})"
