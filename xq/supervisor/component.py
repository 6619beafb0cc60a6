"""What every part of the supervisor's event loop offers the loop (see xq/supervisor/__init__.py)."""

from __future__ import annotations

import math


class Component:
    """One part of the supervisor with state of its own.  The loop asks each, every turn:

    - step(now): its local work (no Redis);
    - sync(now): its Redis work, run only while Redis is reachable; the one call through which a Redis
      failure (xq.conn.OUTAGE) reaches the loop, which alone handles it (Supervisor._redis);
    - fds() before sleeping: file descriptors whose readiness needs a turn; polled(ready) after;
    - deadline(): the monotonic time it next needs a turn (math.inf: none), asked after fds();
    - outage() / reconnected(): Redis went away (its connections are dropped) / answers again.
    """

    def step(self, now: float) -> None:
        pass

    def sync(self, now: float) -> None:
        pass

    def fds(self) -> list[int]:
        return []

    def polled(self, ready: set[int]) -> None:
        pass

    def deadline(self) -> float:
        return math.inf

    def outage(self) -> None:
        pass

    def reconnected(self) -> None:
        pass
