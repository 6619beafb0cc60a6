"""Periodic tasks: `@app.cron("*/5 * * * *")`.

Expressions are parsed by croniter (5 fields, or 6 with seconds last, e.g. `* * * * * */10`), in UTC unless
the entry names a time zone.  Firing is exactly once per tick across every supervisor that serves the
entry's queue: the CRON script records the last tick fired in `xq:{Q}:cron` and enqueues only for a later
tick.  Missed ticks (no supervisor running, Redis unreachable) are coalesced: at the next chance the most
recent missed tick fires once, and the log says how many were skipped.  An entry seen for the first time
starts with the next tick.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .errors import ConfigError

_MAX_COUNT = 10_000


def _croniter():
    try:
        from croniter import croniter
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError("periodic tasks need croniter: pip install 'xq-queue[cron]'") from None
    return croniter


class CronEntry:
    """One periodic schedule of one task."""

    def __init__(self, expr: str, task: str, queue: str, *, payload: Any = None, has_payload: bool = False,
                 priority: int = 5, tz: str | None = None):
        croniter = _croniter()
        if not isinstance(expr, str) or not croniter.is_valid(expr):
            raise ConfigError(f"invalid cron expression {expr!r} for task {task!r}: expected 5 fields "
                              f"(minute hour day month weekday) or 6 (plus seconds), e.g. '*/5 * * * *'")
        if tz is None:
            self.tz = dt.timezone.utc
        else:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
            try:
                self.tz = ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(f"unknown time zone {tz!r} for cron task {task!r}") from None
        self.expr = expr
        self.task = task
        self.queue = queue
        self.payload = payload
        self.has_payload = has_payload
        self.priority = priority
        self.key = f"{task}|{expr}" + (f"|{tz}" if tz else "")

    def _it(self, t: float):
        return _croniter()(self.expr, dt.datetime.fromtimestamp(t, self.tz))

    def next_after(self, t: float) -> float:
        """The first tick strictly after unix time t."""
        return self._it(t).get_next(dt.datetime).timestamp()

    def last_at_or_before(self, t: float) -> float:
        """The latest tick at or before unix time t."""
        prev = self._it(t).get_prev(dt.datetime).timestamp()
        nxt = self._it(prev).get_next(dt.datetime).timestamp()
        return nxt if nxt <= t else prev

    def ticks_between(self, after: float, upto: float) -> int:
        """How many ticks lie in (after, upto] (counted up to 10,000)."""
        n, it = 0, self._it(after)
        while n < _MAX_COUNT:
            if it.get_next(dt.datetime).timestamp() > upto:
                break
            n += 1
        return n

    def __repr__(self) -> str:
        return f"CronEntry({self.expr!r}, task={self.task!r}, queue={self.queue!r})"
