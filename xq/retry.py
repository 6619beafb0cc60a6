"""Retry delays: exponential backoff with jitter (the default), or an explicit list of delays."""

from __future__ import annotations

import random
from typing import Callable, Sequence

from .errors import ConfigError


class Backoff:
    """Delay before attempt n+1 after attempt n failed: min(cap, base * factor**(n-1)) seconds, then, with
    jitter, a uniform pick in [delay/2, delay] ("equal jitter": retries of tasks that failed together
    spread out, and no retry comes sooner than half the nominal delay)."""

    __slots__ = ("base", "cap", "factor", "jitter", "_random")

    def __init__(self, base: float = 1.0, cap: float = 3600.0, factor: float = 2.0, jitter: bool = True,
                 *, rng: Callable[[], float] = random.random):
        for what, v, low in (("base", base, 0.0), ("cap", cap, 0.0), ("factor", factor, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low:
                raise ConfigError(f"invalid backoff {what} {v!r}: expected a number >= {low:g}")
        self.base, self.cap, self.factor, self.jitter = float(base), float(cap), float(factor), bool(jitter)
        self._random = rng

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 = the first)."""
        d = min(self.cap, self.base * self.factor ** max(0, min(attempt - 1, 64)))
        if self.jitter:
            d = d / 2 + self._random() * d / 2
        return d

    def __repr__(self) -> str:
        return f"Backoff(base={self.base:g}, cap={self.cap:g}, factor={self.factor:g}, jitter={self.jitter})"


class Delays:
    """An explicit list of delays: after attempt n, delays[n-1]; the last one repeats."""

    __slots__ = ("delays",)

    def __init__(self, delays: Sequence[float]):
        delays = list(delays)
        if not delays or any(isinstance(d, bool) or not isinstance(d, (int, float)) or d < 0 for d in delays):
            raise ConfigError(f"invalid retry delays {delays!r}: expected a non-empty list of seconds >= 0")
        self.delays = [float(d) for d in delays]

    def delay(self, attempt: int) -> float:
        return self.delays[min(max(attempt, 1), len(self.delays)) - 1]

    def __repr__(self) -> str:
        return f"Delays({self.delays!r})"


def make_backoff(value) -> Backoff | Delays:
    """None -> the default Backoff(); a Backoff or Delays as is; a list of seconds -> Delays; a number ->
    that constant delay."""
    if value is None:
        return Backoff()
    if isinstance(value, (Backoff, Delays)):
        return value
    if isinstance(value, (list, tuple)):
        return Delays(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Delays([value])
    raise ConfigError(f"invalid backoff {value!r}: expected xq.Backoff(...), a list of delays in seconds, "
                      f"or a number of seconds")
