"""`xq.current()`: the running task's context, inside a handler."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler may know about the task it runs."""

    id: str
    name: str
    queue: str
    attempt: int


_current: TaskContext | None = None


def current() -> TaskContext:
    """The context of the task running in this process; RuntimeError outside a handler."""
    if _current is None:
        raise RuntimeError("xq.current() called outside a running task")
    return _current


def _set(ctx: TaskContext | None) -> None:
    global _current
    _current = ctx
