"""xq: a fast, crash-safe distributed task queue on Redis for CPU-heavy work."""

from .app import App, Processor
from .context import TaskContext, current
from .errors import ConfigError, PayloadTooLarge, ResultTimeout, TaskFailed, UnknownTask, XQError
from .producer import Producer

__all__ = ["App", "Processor", "Producer", "TaskContext", "current", "XQError", "ConfigError",
           "PayloadTooLarge", "TaskFailed", "UnknownTask", "ResultTimeout"]
__version__ = "0.1.0"
