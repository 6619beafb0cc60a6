"""`xq.current()`: the running task's context, inside a handler."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .errors import ConfigError

PROGRESS_MESSAGE_MAX = 1000  # characters; longer messages are cut, so a progress frame stays small


def check_progress(pct, message) -> tuple[int | float, str | None]:
    """(pct, message) validated for TaskContext.progress; ConfigError naming the bad value otherwise."""
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not math.isfinite(pct) or not 0 <= pct <= 100:
        raise ConfigError(f"invalid progress {pct!r}: expected a percentage, a number from 0 to 100")
    if message is not None and not isinstance(message, str):
        raise ConfigError(f"invalid progress message {message!r}: expected a string or None")
    if message is not None and len(message) > PROGRESS_MESSAGE_MAX:
        message = message[:PROGRESS_MESSAGE_MAX]
    return pct, message


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler may know about the task it runs."""

    id: str
    name: str
    queue: str
    attempt: int
    _report: Callable | None = field(default=None, repr=False, compare=False)

    def progress(self, pct: int | float, message: str | None = None) -> None:
        """Report progress (0..100, optional message): stored on the task record and published as an event."""
        pct, message = check_progress(pct, message)
        if self._report is not None:  # None outside a worker (a handler called directly): nothing to send
            self._report(pct, message)


_current: TaskContext | None = None


def current() -> TaskContext:
    """The context of the task running in this process; RuntimeError outside a handler."""
    if _current is None:
        raise RuntimeError("xq.current() called outside a running task")
    return _current


def _set(ctx: TaskContext | None) -> None:
    global _current
    _current = ctx
