"""xq: a fast, crash-safe distributed task queue on Redis for CPU-heavy work."""

from . import middleware
from .app import App, Processor
from .clock import ScaledClock, SystemClock
from .context import TaskContext, current
from .errors import (Cancelled, ConfigError, ConnectionLost, MalformedRecord, NonRetryable, NotReplicated,
                     PayloadTooLarge, ResultTimeout, Retry, TaskFailed, TaskTrimmed, RedisFull, RedisRefused, TaskTimeout, UnknownTask, XQError)
from .producer import Group, Producer
from .retry import Backoff, Delays


def new_ids(n: int) -> list[str]:
    """n new task ids (26 characters, time-sortable, unique across machines), to pass as ids= and so make
    a retried enqueue_many safe."""
    from ._impl import fast

    return [i.decode() for i in fast.new_ids(n)]

__all__ = ["App", "Processor", "Producer", "TaskContext", "current", "XQError", "ConfigError",
           "PayloadTooLarge", "TaskFailed", "UnknownTask", "TaskTrimmed", "ResultTimeout", "MalformedRecord", "Retry", "NonRetryable", "Cancelled",
           "TaskTimeout", "ConnectionLost", "RedisRefused", "RedisFull", "NotReplicated", "Group", "Backoff", "Delays", "ScaledClock", "SystemClock", "AsyncProducer", "new_ids"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # lazily, so that workers (which never need it) do not import redis.asyncio
    if name == "AsyncProducer":
        from .aio import AsyncProducer
        return AsyncProducer
    raise AttributeError(f"module 'xq' has no attribute {name!r}")
