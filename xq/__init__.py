"""xq: a fast, crash-safe distributed task queue on Redis for CPU-heavy work."""

from .app import App, Processor
from .clock import ScaledClock, SystemClock
from .context import TaskContext, current
from .errors import (Cancelled, ConfigError, NonRetryable, PayloadTooLarge, ResultTimeout, Retry, TaskFailed,
                     TaskTimeout, UnknownTask, XQError)
from .producer import Producer
from .retry import Backoff, Delays

__all__ = ["App", "Processor", "Producer", "TaskContext", "current", "XQError", "ConfigError",
           "PayloadTooLarge", "TaskFailed", "UnknownTask", "ResultTimeout", "Retry", "NonRetryable", "Cancelled",
           "TaskTimeout", "Backoff", "Delays", "ScaledClock", "SystemClock"]
__version__ = "0.1.0"
