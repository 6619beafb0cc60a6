"""Middleware: hooks around each task run (in the child) and after each enqueue (in the producer).

Register with `xq.App(middleware=[...])` or `app.add_middleware(m)`.  before_task hooks run in registration
order, after_task / on_error in reverse (a stack: the first registered wraps all the others).  Error policy:
a before_task that raises fails that attempt (the handler does not run; the task's retry policy applies to
the hook's exception and the recorded error names the middleware); an exception from after_task, on_error or
on_enqueue is logged on the `xq` logger and ignored, so an observer can never change a task's outcome or
lose an enqueued task.  Hooks run in every child (and producer) process: state such as MetricsMiddleware's
counters is per process.

Misspelled hooks are refused: a hook that is never called fails silently, so registration
(`App(middleware=...)`, `app.add_middleware`) raises xq.ConfigError naming the right hook when a subclass
defines a public method that looks like a hook but is not one.  The rule: a public method (no leading
underscore) whose name is a known alias of a hook (`before`, `after`, `error`, `on_task`, `on_success`,
`on_failure`, `enqueue`, ... see HOOK_ALIASES) or close to a hook name (difflib ratio >= 0.8:
`before_tsak`, `onerror`, `after_task_`).  Private helpers (`_took`) and unrelated public methods
(`snapshot`) are fine.  A hook whose signature cannot take the arguments xq passes (ctx, payload;
ctx, result; ctx, exc; name, queue, ids, options) is refused too.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("xq")


class Middleware:
    """Base class with no-op hooks; override the ones you need."""

    def before_task(self, ctx, payload: Any) -> None:
        """In the child, before the handler runs (ctx is xq.current())."""

    def after_task(self, ctx, result: Any) -> None:
        """In the child, after the handler returned result."""

    def on_error(self, ctx, exc: BaseException) -> None:
        """In the child, after the handler raised exc (also xq.Retry and xq.Cancelled)."""

    def on_enqueue(self, name: str, queue: str, ids: list, options: dict) -> None:
        """In the producer, after ids of task name were accepted into queue (options as given to enqueue)."""


HOOKS = {"before_task": ("ctx", "payload"), "after_task": ("ctx", "result"), "on_error": ("ctx", "exc"),
         "on_enqueue": ("name", "queue", "ids", "options")}
# Names people reach for (other task queues' hook names, the README's old wording) -> the real hook.
HOOK_ALIASES = {
    "before": "before_task", "pre_task": "before_task", "on_task": "before_task", "on_start": "before_task",
    "on_task_start": "before_task", "task_started": "before_task", "before_run": "before_task",
    "on_before_task": "before_task", "pre_run": "before_task", "on_prerun": "before_task",
    "after": "after_task", "post_task": "after_task", "on_success": "after_task", "on_done": "after_task",
    "on_finish": "after_task", "on_complete": "after_task", "after_run": "after_task", "success": "after_task",
    "on_after_task": "after_task", "on_task_done": "after_task", "on_postrun": "after_task",
    "error": "on_error", "on_failure": "on_error", "on_fail": "on_error", "failure": "on_error",
    "on_exception": "on_error", "exception": "on_error", "after_error": "on_error", "task_error": "on_error",
    "on_task_error": "on_error", "on_retry": "on_error",
    "enqueue": "on_enqueue", "on_enqueued": "on_enqueue", "after_enqueue": "on_enqueue",
    "before_enqueue": "on_enqueue", "enqueued": "on_enqueue", "on_publish": "on_enqueue",
}
CLOSE_CUTOFF = 0.8


def hook_for(name: str) -> str | None:
    """The hook a public method named name looks like (see the module docstring), or None."""
    import difflib

    if name in HOOKS or name.startswith("_"):
        return None
    key = name.lower()
    if key in HOOK_ALIASES:
        return HOOK_ALIASES[key]
    close = difflib.get_close_matches(key, list(HOOKS), n=1, cutoff=CLOSE_CUTOFF)
    return close[0] if close else None


def check_middleware(m) -> Middleware:
    """m if it is a Middleware instance whose hooks xq will call, else ConfigError naming the problem."""
    import inspect

    from .errors import ConfigError

    if isinstance(m, type) and issubclass(m, Middleware):
        raise ConfigError(f"middleware {m.__qualname__} is a class: pass an instance, e.g. {m.__qualname__}()")
    if not isinstance(m, Middleware):
        raise ConfigError(f"invalid middleware {m!r}: expected an instance of xq.middleware.Middleware")
    cls = type(m)
    for klass in cls.__mro__:
        if klass is Middleware or klass is object:
            break
        for attr, value in vars(klass).items():
            if not callable(value) and not isinstance(value, (staticmethod, classmethod)):
                continue
            hook = hook_for(attr)
            if hook is not None and attr not in vars(Middleware):
                raise ConfigError(
                    f"middleware {cls.__qualname__} defines {attr}(), which is not a hook and would never be "
                    f"called: did you mean {hook}({', '.join(HOOKS[hook])})? The hooks are "
                    f"{', '.join(HOOKS)} (rename a helper with a leading underscore)")
    for hook, params in HOOKS.items():
        fn = getattr(m, hook, None)
        if not callable(fn):
            raise ConfigError(f"middleware {cls.__qualname__}.{hook} is not callable: {fn!r}")
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            continue  # a builtin or C callable: nothing to check
        try:
            sig.bind(*params)
        except TypeError as e:
            raise ConfigError(f"middleware {cls.__qualname__}.{hook}{sig} cannot be called as {hook}"
                              f"({', '.join(params)}): {e}") from None
    return m


class LoggingMiddleware(Middleware):
    """Logs each task's start and finish (with its duration, or its error) on the `xq` logger."""

    def __init__(self, level: int = logging.INFO, logger: logging.Logger | None = None):
        self.level = level
        self.log = logger or log
        self._t0: dict[str, float] = {}

    def before_task(self, ctx, payload):
        self._t0[ctx.id] = time.perf_counter()
        self.log.log(self.level, "task %s (%s) attempt %d started", ctx.id, ctx.name, ctx.attempt)

    def _took(self, ctx) -> float:
        t0 = self._t0.pop(ctx.id, None)
        return (time.perf_counter() - t0) * 1000 if t0 is not None else 0.0

    def after_task(self, ctx, result):
        self.log.log(self.level, "task %s (%s) done in %.1f ms", ctx.id, ctx.name, self._took(ctx))

    def on_error(self, ctx, exc):
        self.log.log(max(self.level, logging.WARNING), "task %s (%s) failed after %.1f ms: %s: %s", ctx.id,
                     ctx.name, self._took(ctx), type(exc).__name__, exc)

    def on_enqueue(self, name, queue, ids, options):
        self.log.log(self.level, "enqueued %d task(s) %s on queue %s", len(ids), name, queue)


class MetricsMiddleware(Middleware):
    """Per task name counters (started, succeeded, failed, enqueued) and total/max duration; `.snapshot()`.

    With prometheus=True (needs the optional prometheus_client package) the same figures are also exported
    as prometheus_client metrics: xq_tasks_started_total, xq_tasks_succeeded_total, xq_tasks_failed_total,
    xq_tasks_enqueued_total (label task) and the histogram xq_task_duration_seconds."""

    def __init__(self, prometheus: bool = False, registry=None):
        self._lock = threading.Lock()
        self._stats: dict[str, dict[str, float]] = {}
        self._t0: dict[str, float] = {}
        self._prom = None
        if prometheus:
            try:
                import prometheus_client as pc
            except ImportError:
                from .errors import ConfigError
                raise ConfigError("MetricsMiddleware(prometheus=True) needs prometheus_client: "
                                  "pip install prometheus_client") from None
            kw = {"registry": registry} if registry is not None else {}
            self._prom = {
                "started": pc.Counter("xq_tasks_started", "Task attempts started", ["task"], **kw),
                "succeeded": pc.Counter("xq_tasks_succeeded", "Task attempts that returned", ["task"], **kw),
                "failed": pc.Counter("xq_tasks_failed", "Task attempts that raised", ["task"], **kw),
                "enqueued": pc.Counter("xq_tasks_enqueued", "Tasks enqueued", ["task"], **kw),
                "duration": pc.Histogram("xq_task_duration_seconds", "Task attempt run time", ["task"], **kw),
            }

    def _entry(self, name: str) -> dict[str, float]:
        s = self._stats.get(name)
        if s is None:
            s = self._stats[name] = {"started": 0, "succeeded": 0, "failed": 0, "enqueued": 0,
                                     "total_seconds": 0.0, "max_seconds": 0.0}
        return s

    def _count(self, name: str, what: str, n: int = 1) -> None:
        with self._lock:
            self._entry(name)[what] += n
        if self._prom is not None:
            self._prom[what].labels(task=name).inc(n)

    def _finish(self, ctx, what: str) -> None:
        t0 = self._t0.pop(ctx.id, None)
        took = time.perf_counter() - t0 if t0 is not None else 0.0
        with self._lock:
            s = self._entry(ctx.name)
            s[what] += 1
            s["total_seconds"] += took
            s["max_seconds"] = max(s["max_seconds"], took)
        if self._prom is not None:
            self._prom[what].labels(task=ctx.name).inc()
            self._prom["duration"].labels(task=ctx.name).observe(took)

    def before_task(self, ctx, payload):
        self._t0[ctx.id] = time.perf_counter()
        self._count(ctx.name, "started")

    def after_task(self, ctx, result):
        self._finish(ctx, "succeeded")

    def on_error(self, ctx, exc):
        self._finish(ctx, "failed")

    def on_enqueue(self, name, queue, ids, options):
        self._count(name, "enqueued", len(ids))

    def snapshot(self) -> dict[str, dict[str, float]]:
        """A copy of the counters: {task name: {started, succeeded, failed, enqueued, total_seconds, max_seconds}}."""
        with self._lock:
            return {n: dict(s) for n, s in self._stats.items()}
