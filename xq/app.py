"""The task registry: `app = xq.App()`, `@app.task(...)`, class-based processors."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ConfigError
from .keys import check_queue

DEFAULT_QUEUE = "default"
DEFAULT_MAX_RETRIES = 3


class Processor:
    """Base for class-based handlers: set `name` (and optionally `queue`), implement `process(payload)`.

    One instance is made per child process, on first use; `setup()` runs once there, so expensive
    state (models, codecs) is built once per child, not per task.
    """

    name: str = ""
    queue: str = DEFAULT_QUEUE
    max_retries: int = DEFAULT_MAX_RETRIES

    def setup(self) -> None:
        """Called once in each child before the first task."""

    def process(self, payload: Any) -> Any:
        raise NotImplementedError


@dataclass
class TaskSpec:
    """One registered task: its name, default queue, options and handler."""

    name: str
    queue: str
    handler: Callable[[Any], Any] | None = None
    processor_cls: type | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    _instance: Any = field(default=None, repr=False)

    def resolve(self) -> Callable[[Any], Any]:
        """The callable that runs a payload (instantiates a processor class once, lazily)."""
        if self.handler is not None:
            return self.handler
        if self._instance is None:
            obj = self.processor_cls()
            obj.setup()
            self._instance = obj
        return self._instance.process


class App:
    """A registry of task handlers, imported by `xq run MODULE:APP` in the supervisor and its children."""

    def __init__(self, name: str = "xq", *, default_queue: str = DEFAULT_QUEUE):
        self.name = name
        self.default_queue = check_queue(default_queue)
        self.tasks: dict[str, TaskSpec] = {}

    def task(self, name: str | None = None, *, queue: str | None = None,
             max_retries: int = DEFAULT_MAX_RETRIES):
        """Decorator registering a function (called with the payload) or a Processor-like class."""

        def deco(obj):
            self.register(obj, name=name, queue=queue, max_retries=max_retries)
            return obj

        if callable(name) and not isinstance(name, str):  # bare @app.task
            fn, name = name, None
            return deco(fn)
        return deco

    def register(self, obj, *, name: str | None = None, queue: str | None = None,
                 max_retries: int | None = None) -> TaskSpec:
        """Register a function, a class with `name` and `process()`, or an instance of one."""
        if inspect.isclass(obj):
            if not callable(getattr(obj, "process", None)):
                raise ConfigError(f"processor class {obj.__qualname__} has no process(payload) method")
            tname = name or getattr(obj, "name", "") or f"{obj.__module__}.{obj.__qualname__}"
            spec = TaskSpec(tname, queue or getattr(obj, "queue", None) or self.default_queue,
                            processor_cls=obj,
                            max_retries=max_retries if max_retries is not None
                            else getattr(obj, "max_retries", DEFAULT_MAX_RETRIES))
        elif callable(getattr(obj, "process", None)) and not inspect.isfunction(obj):
            tname = name or getattr(obj, "name", "") or type(obj).__qualname__
            spec = TaskSpec(tname, queue or getattr(obj, "queue", None) or self.default_queue,
                            handler=obj.process,
                            max_retries=max_retries if max_retries is not None else DEFAULT_MAX_RETRIES)
        elif callable(obj):
            tname = name or f"{obj.__module__}.{obj.__qualname__}"
            spec = TaskSpec(tname, queue or self.default_queue, handler=obj,
                            max_retries=max_retries if max_retries is not None else DEFAULT_MAX_RETRIES)
        else:
            raise ConfigError(f"cannot register {obj!r}: expected a function or a class with process()")
        if not isinstance(spec.max_retries, int) or spec.max_retries < 0:
            raise ConfigError(f"max_retries of task {tname!r} must be an integer >= 0, got {spec.max_retries!r}")
        check_queue(spec.queue)
        if tname in self.tasks:
            raise ConfigError(f"task name {tname!r} is registered twice")
        self.tasks[tname] = spec
        return spec

    def queues(self) -> list[str]:
        """Queues that registered tasks route to, default queue first."""
        seen = [self.default_queue]
        for spec in self.tasks.values():
            if spec.queue not in seen:
                seen.append(spec.queue)
        return seen
