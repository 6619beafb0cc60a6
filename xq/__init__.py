"""xq: a fast, crash-safe distributed task queue on Redis for CPU-heavy work."""

from . import middleware
from .app import App, Processor
from .clock import ScaledClock, SystemClock
from .context import TaskContext, current
from .errors import (Cancelled, ConfigError, ConnectionLost, NonRetryable, PayloadTooLarge, ResultTimeout, Retry, TaskFailed,
                     RedisRefused, TaskTimeout, UnknownTask, XQError)
from .producer import Group, Producer
from .retry import Backoff, Delays

__all__ = ["App", "Processor", "Producer", "TaskContext", "current", "XQError", "ConfigError",
           "PayloadTooLarge", "TaskFailed", "UnknownTask", "ResultTimeout", "Retry", "NonRetryable", "Cancelled",
           "TaskTimeout", "ConnectionLost", "RedisRefused", "Group", "Backoff", "Delays", "ScaledClock", "SystemClock", "AsyncProducer"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # lazily, so that workers (which never need it) do not import redis.asyncio
    if name == "AsyncProducer":
        from .aio import AsyncProducer
        return AsyncProducer
    raise AttributeError(f"module 'xq' has no attribute {name!r}")
