"""The task registry: `app = xq.App()`, `@app.task(...)`, class-based processors."""

from __future__ import annotations

import fnmatch
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from .clock import SystemClock
from .errors import ConfigError
from .flow import parse_rate
from .keys import MAX_MS, MAX_RETRIES, check_name, check_queue, check_result_ttl
from .retry import Backoff, Delays, make_backoff

DEFAULT_QUEUE = "default"
DEFAULT_MAX_RETRIES = 3
ROUTE_OPTIONS = ("queue", "priority", "max_retries", "timeout", "expires", "result_ttl")

log = logging.getLogger("xq")


class Processor:
    """Base for class-based handlers: set `name` (and optionally `queue`), implement `process(payload)`.

    One instance is made per child process; `setup()` runs once there, so expensive state (models,
    codecs) is built once per child, not per task.  It runs when the child starts, before the child takes
    any task, for every Processor whose queue (its own, or its route's) the supervisor serves; a Processor
    of another queue is set up on its first task.  A setup() that raises at start is a boot failure: the
    child exits 3 after logging the Processor and the exception, the tasks it was given go back untouched
    (no attempt counted), and five boot failures in a row halt `xq run` with exit code 3.  (One that raises
    on a first task fails that attempt, which is retried per the task's policy.)  A Processor instance
    passed to register() is set up the same way, once per child.
    """

    name: str = ""
    queue: str = DEFAULT_QUEUE
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_on: tuple | None = None
    backoff = None
    timeout: float | None = None
    expires: float | None = None

    def setup(self) -> None:
        """Called once in each child before the first task."""

    def process(self, payload: Any) -> Any:
        raise NotImplementedError


TASK_OPTIONS = ("name", "queue", "max_retries", "retry_on", "backoff", "timeout", "expires", "rate_limit",
                "result_ttl")
APP_OPTIONS = ("name", "default_queue", "clock", "middleware", "routes")
# Processor class attributes xq reads (besides the methods setup and process)
PROCESSOR_ATTRS = ("name", "queue", "max_retries", "retry_on", "backoff", "timeout", "expires", "rate_limit",
                   "result_ttl")
# Options people reach for that xq spells otherwise (or sets elsewhere) -> what to say
OPTION_HINTS = {
    "retries": "max_retries", "max_retry": "max_retries", "retry": "max_retries", "max_attempts": "max_retries",
    "attempts": "max_retries", "retry_for": "retry_on", "retry_exceptions": "retry_on", "autoretry_for": "retry_on",
    "time_limit": "timeout", "soft_time_limit": "timeout", "ttl": "result_ttl", "expire": "expires",
    "expiry": "expires", "expiration": "expires", "rate": "rate_limit", "ratelimit": "rate_limit",
    "queue_name": "queue", "task_name": "name", "middlewares": "middleware", "route": "routes",
    "default_queues": "default_queue", "unique": "unique_key", "dedup_key": "unique_key", "countdown": "delay",
    "concurrency": "max_concurrency", "job_id": "task_id", "id": "task_id", "job_timeout": "timeout",
    "depends": "depends_on", "result_ttl_s": "result_ttl",
}
NOT_A_TASK_OPTION = {
    "priority": "priority is set per enqueue (Producer.enqueue(priority=...)) or for a name with "
                "app.route(name, priority=...)",
    "delay": "delay is an enqueue option (Producer.enqueue(delay=...))",
    "eta": "eta is an enqueue option (Producer.enqueue(eta=...))",
    "unique_key": "unique_key is an enqueue option (Producer.enqueue(unique_key=...))",
}


def unknown_option(what: str, key: str, allowed, where: str = "") -> ConfigError:
    """A ConfigError for an unknown option key of what, suggesting the option meant (a close match, or a
    known alias) and listing the allowed ones."""
    import difflib

    if key in NOT_A_TASK_OPTION and key not in allowed:
        hint = f": {NOT_A_TASK_OPTION[key]}"
    else:
        meant = OPTION_HINTS.get(key) if OPTION_HINTS.get(key) in allowed else None
        if meant is None:
            close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            meant = close[0] if close else None
        hint = f": did you mean {meant!r}?" if meant else ""
    return ConfigError(f"unknown {what} {key!r}{where}{hint} (allowed: {', '.join(allowed)})")


def check_seconds(what: str, value, *, allow_none: bool = True, positive: bool = True):
    """A number of seconds (> 0, or >= 0 if not positive), or None; ConfigError naming what otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0) \
            or value != value or value == float("inf"):
        raise ConfigError(f"invalid {what} {value!r}: expected a number of seconds "
                          f"{'> 0' if positive else '>= 0'}")
    return float(value)


@dataclass
class TaskSpec:
    """One registered task: its name, default queue, options and handler.

    max_retries: attempts after the first; retry_on: exception types that are retried (others, and
    xq.NonRetryable, kill the task at once); backoff: delays between attempts; timeout: seconds an attempt
    may run before its child is stopped; expires: seconds after enqueue by which it must have started.
    """

    name: str
    queue: str
    handler: Callable[[Any], Any] | None = None
    processor_cls: type | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_on: tuple = (Exception,)
    backoff: Backoff | Delays = field(default_factory=Backoff)
    timeout: float | None = None
    expires: float | None = None
    rate_limit: tuple | None = None    # (starts, period ms) per queue, from "100/s"
    result_ttl: int | None = None      # seconds its finished record is kept, exempt from the count cut
    explicit: frozenset = frozenset()  # route options given at registration: they win over app.route()
    processor_obj: Any = field(default=None, repr=False)  # a registered Processor instance (set up per child)
    _instance: Any = field(default=None, repr=False)

    def resolve(self) -> Callable[[Any], Any]:
        """The callable that runs a payload (sets a processor up once, lazily, if setup_processor has not)."""
        if self._instance is None and (self.processor_cls is not None or self.processor_obj is not None):
            self.setup_processor()
        if self.handler is not None:
            return self.handler
        return self._instance.process

    def setup_processor(self) -> None:
        """Make the processor instance (a class is instantiated) and call its setup(); once per process."""
        if self._instance is not None:
            return
        obj = self.processor_obj if self.processor_obj is not None else self.processor_cls()
        setup = getattr(obj, "setup", None)
        if callable(setup):
            setup()
        self._instance = obj


class ProcessorSetupError(Exception):
    """A processor's setup() raised when a child started (a boot failure)."""


def setup_processors(app: "App", queues) -> int:
    """In a child at start: set up every processor whose queue (route_for) is served; their setup() runs
    before any task.  Raises ProcessorSetupError naming the processor and its exception.  Returns how many."""
    served, n = set(queues), 0
    for name, spec in app.tasks.items():
        if spec.processor_cls is None and spec.processor_obj is None:
            continue
        if app.route_for(name)["queue"] not in served and spec.queue not in served:
            continue
        try:
            spec.setup_processor()
        except Exception as e:
            what = spec.processor_cls or type(spec.processor_obj)
            raise ProcessorSetupError(f"{what.__module__}.{what.__qualname__}.setup() (task {name!r}) raised "
                                      f"{type(e).__name__}: {e}") from e
        n += 1
    return n


class App:
    """A registry of task handlers, imported by `xq run MODULE:APP` in the supervisor and its children."""

    def __init__(self, name: str = "xq", *, default_queue: str = DEFAULT_QUEUE, clock=None, middleware=(),
                 routes=None, **unknown):
        for key in unknown:
            raise unknown_option("xq.App option", key, APP_OPTIONS)
        self.name = name
        self.default_queue = check_queue(default_queue)
        self.tasks: dict[str, TaskSpec] = {}
        self.crons: list = []
        self.clock = clock or SystemClock()
        self.middleware: list = []
        self.routes: list[tuple[str, dict]] = []
        for m in middleware or ():
            self.add_middleware(m)
        if routes is not None:
            items = routes.items() if isinstance(routes, dict) else routes
            for entry in items:
                if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], dict)):
                    raise ConfigError(f"invalid route {entry!r}: routes= takes {{pattern: {{option: value}}}} "
                                      f"or a list of (pattern, options) pairs")
                self.route(entry[0], **entry[1])

    # --- middleware ---
    def add_middleware(self, m) -> None:
        """Append a middleware (an xq.middleware.Middleware instance); hooks run in registration order."""
        from .middleware import check_middleware
        self.middleware.append(check_middleware(m))

    def run_enqueue_hooks(self, name: str, queue: str, ids: list, options: dict) -> None:
        """Call every middleware's on_enqueue (producer side, after a successful enqueue); errors are logged."""
        for m in self.middleware:
            try:
                m.on_enqueue(name, queue, ids, options)
            except Exception:
                log.exception("middleware %s.on_enqueue failed for %d task(s) %s; ignored", type(m).__name__,
                              len(ids), name)

    # --- routing ---
    def route(self, pattern: str, **options) -> None:
        """Default queue and options for task names matching pattern (exact name or fnmatch glob).

        options among queue, priority, max_retries, timeout, expires (seconds after enqueue), result_ttl
        (whole seconds a finished record is kept, exempt from the queue's retention count); routes are
        tried in the order added and the first match wins.  A registered task's own queue and options,
        when given explicitly at registration, take precedence over any route."""
        from .producer import check_priority

        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"invalid route pattern {pattern!r}: expected a task name or an fnmatch glob "
                              f"such as 'image.*'")
        for k in options:
            if k not in ROUTE_OPTIONS:
                raise unknown_option("route option", k, ROUTE_OPTIONS, where=f" for {pattern!r}")
        opts = {}
        for k, v in options.items():
            if v is None:
                continue
            what = f"{k} of route {pattern!r}"
            if k == "queue":
                try:
                    opts[k] = check_queue(v)
                except ConfigError as e:
                    raise ConfigError(f"{what}: {e}") from None
            elif k == "priority":
                try:
                    opts[k] = check_priority(v)
                except ConfigError as e:
                    raise ConfigError(f"{what}: {e}") from None
            elif k == "max_retries":
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ConfigError(f"{what} must be an integer >= 0, got {v!r}")
                if v > MAX_RETRIES:
                    raise ConfigError(f"{what} is {v}; the limit is {MAX_RETRIES}")
                opts[k] = v
            elif k == "result_ttl":
                opts[k] = check_result_ttl(what, v)
            else:
                opts[k] = check_seconds(what, v)
                if opts[k] * 1000 > MAX_MS:
                    raise ConfigError(f"{what} is {int(opts[k] * 1000)} ms; the limit is {MAX_MS} ms")
        self.routes.append((pattern, opts))

    def route_for(self, name: str) -> dict:
        """The defaults for enqueueing task name: always "queue", plus whichever of priority, max_retries,
        timeout, expires a route or the registered task sets (priority as 0..9, seconds as float)."""
        out: dict = {"queue": self.default_queue}
        for pattern, opts in self.routes:
            if pattern == name or fnmatch.fnmatchcase(name, pattern):
                out.update(opts)
                break
        spec = self.tasks.get(name)
        if spec is not None:
            for k in spec.explicit:
                out[k] = getattr(spec, k)
        return out

    def task(self, name: str | None = None, *, queue: str | None = None, max_retries: int | None = None,
             retry_on=None, backoff=None, timeout: float | None = None, expires: float | None = None,
             rate_limit: str | None = None, result_ttl: int | None = None, **unknown):
        """Decorator registering a function (called with the payload) or a Processor-like class.

        max_retries (default 3), retry_on (exception types to retry, default every Exception), backoff
        (xq.Backoff(base, cap, factor, jitter) — the default, exponential with jitter — or a list of delays in
        seconds, the last repeating), timeout (seconds per attempt), expires (seconds after enqueue),
        rate_limit ("100/s", "5/m", "1/h": at most that many starts of this task per period, per queue,
        across all supervisors; tasks over it are deferred to a later period), result_ttl (whole seconds
        its finished record is kept, whatever the queue's retention keeps: see docs/design.md, Retention)."""

        for key in unknown:
            raise unknown_option("task option", key, TASK_OPTIONS)

        def deco(obj):
            self.register(obj, name=name, queue=queue, max_retries=max_retries, retry_on=retry_on,
                          backoff=backoff, timeout=timeout, expires=expires, rate_limit=rate_limit,
                          result_ttl=result_ttl)
            return obj

        if callable(name) and not isinstance(name, str):  # bare @app.task
            fn, name = name, None
            return deco(fn)
        return deco

    def cron(self, expr: str, *, payload: Any = None, name: str | None = None, queue: str | None = None,
             priority: int | str = 5, tz: str | None = None, **task_options):
        """Decorator running a function on a cron schedule, e.g. `@app.cron("*/5 * * * *")`.

        The function takes no arguments, or one (the payload) when payload= is given.  It is also registered
        as a task (task_options as for task()), so it can be enqueued by hand too.  Each tick fires exactly
        once across all supervisors serving its queue; see xq/cron.py for the missed-tick policy."""
        from .cron import CronEntry
        from .producer import check_priority

        for key in task_options:
            if key not in TASK_OPTIONS or key in ("name", "queue"):
                raise unknown_option("@app.cron option", key,
                                     ("payload", "name", "queue", "priority", "tz",
                                      *(o for o in TASK_OPTIONS if o not in ("name", "queue"))))
        has_payload = payload is not None
        prio = check_priority(priority)

        def deco(fn):
            if not callable(fn):
                raise ConfigError(f"@app.cron needs a function, got {fn!r}")
            try:
                params = [p for p in inspect.signature(fn).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
            except (TypeError, ValueError):
                params = []
            if not has_payload and params:
                raise ConfigError(f"cron function {fn.__qualname__} takes {len(params)} argument(s); give it none, "
                                  f"or pass payload=... to @app.cron")
            tname = name or f"{fn.__module__}.{fn.__qualname__}"
            handler = fn if has_payload else (lambda _payload, _fn=fn: _fn())
            spec = self.tasks.get(tname)
            if spec is None:
                spec = self.register(handler, name=tname, queue=queue, **task_options)
            self.crons.append(CronEntry(expr, tname, queue or spec.queue, payload=payload, has_payload=has_payload,
                                        priority=prio, tz=tz))
            return fn

        return deco

    def register(self, obj, *, name: str | None = None, queue: str | None = None,
                 max_retries: int | None = None, retry_on=None, backoff=None, timeout: float | None = None,
                 expires: float | None = None, rate_limit: str | None = None,
                 result_ttl: int | None = None, **unknown) -> TaskSpec:
        """Register a function, a class with `name` and `process()`, or an instance of one.

        Unknown options are refused (ConfigError suggesting the one meant), and so is a processor's public
        class attribute or method that looks like one xq reads but is not (`max_retry = 3`, `retries`,
        `priority`, `def set_up`): see check_processor_attrs."""
        for key in unknown:
            raise unknown_option("task option", key, TASK_OPTIONS)
        if not inspect.isfunction(obj) and callable(getattr(obj, "process", None)):
            check_processor_attrs(obj)
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
                            handler=obj.process, processor_obj=obj,
                            max_retries=max_retries if max_retries is not None
                            else getattr(obj, "max_retries", DEFAULT_MAX_RETRIES))
        elif callable(obj):
            tname = name or f"{obj.__module__}.{obj.__qualname__}"
            spec = TaskSpec(tname, queue or self.default_queue, handler=obj,
                            max_retries=max_retries if max_retries is not None else DEFAULT_MAX_RETRIES)
        else:
            raise ConfigError(f"cannot register {obj!r}: expected a function or a class with process()")
        try:
            check_name(tname)
        except ConfigError as e:
            raise ConfigError(f"cannot register {obj!r}: {e}") from None
        if isinstance(spec.max_retries, bool) or not isinstance(spec.max_retries, int) or spec.max_retries < 0:
            raise ConfigError(f"max_retries of task {tname!r} must be an integer >= 0, got {spec.max_retries!r}")
        if spec.max_retries > MAX_RETRIES:
            raise ConfigError(f"max_retries of task {tname!r} is {spec.max_retries}; the limit is {MAX_RETRIES}")
        for what, secs in (("timeout", timeout), ("expires", expires)):
            if isinstance(secs, (int, float)) and not isinstance(secs, bool) and secs == secs \
                    and secs * 1000 > MAX_MS:
                raise ConfigError(f"{what} of task {tname!r} is {int(secs * 1000)} ms; the limit is {MAX_MS} ms")
        if retry_on is None and not inspect.isfunction(obj):
            retry_on = getattr(obj, "retry_on", None)
        if retry_on is not None:
            types = retry_on if isinstance(retry_on, tuple) else tuple(retry_on) if isinstance(retry_on, list) \
                else (retry_on,)
            if not all(inspect.isclass(t) and issubclass(t, BaseException) for t in types):
                raise ConfigError(f"retry_on of task {tname!r} must be exception classes, got {retry_on!r}")
            spec.retry_on = types
        spec.backoff = make_backoff(backoff if backoff is not None else getattr(obj, "backoff", None))
        spec.timeout = check_seconds(f"timeout of task {tname!r}",
                                     timeout if timeout is not None else getattr(obj, "timeout", None))
        spec.expires = check_seconds(f"expires of task {tname!r}",
                                     expires if expires is not None else getattr(obj, "expires", None))
        if rate_limit is None and not inspect.isfunction(obj):
            rate_limit = getattr(obj, "rate_limit", None)
        if rate_limit is not None:
            spec.rate_limit = parse_rate(f"rate_limit of task {tname!r}", rate_limit)
        if result_ttl is None and not inspect.isfunction(obj):
            result_ttl = getattr(obj, "result_ttl", None)
        if result_ttl is not None:
            spec.result_ttl = check_result_ttl(f"result_ttl of task {tname!r}", result_ttl)
        check_queue(spec.queue)
        given = {"queue": queue, "max_retries": max_retries, "timeout": timeout, "expires": expires,
                 "result_ttl": result_ttl}
        spec.explicit = frozenset(k for k, v in given.items() if v is not None or _declared(obj, k))
        if tname in self.tasks:
            raise ConfigError(f"task name {tname!r} is registered twice")
        self.tasks[tname] = spec
        return spec

    def rate_limits_json(self) -> bytes:
        """Per-task-name rate limits as the CLAIM script takes them: JSON {name: [starts, period ms]}."""
        limits = {n: list(s.rate_limit) for n, s in self.tasks.items() if s.rate_limit}
        return orjson.dumps(limits) if limits else b""

    def max_retries_overrides(self) -> dict[str, int]:
        """Task names whose max_retries is not the default (the retry scripts need them)."""
        return {n: s.max_retries for n, s in self.tasks.items() if s.max_retries != DEFAULT_MAX_RETRIES}

    def queues(self) -> list[str]:
        """Queues that registered tasks and routes send to, default queue first."""
        seen = [self.default_queue]
        for q in [self.route_for(n)["queue"] for n in self.tasks] + [o["queue"] for _, o in self.routes if "queue" in o]:
            if q not in seen:
                seen.append(q)
        return seen


def _declared(obj, attr: str) -> bool:
    """Does a processor class or instance set attr itself (not just inherit Processor's default)?"""
    if inspect.isfunction(obj) or not hasattr(obj, "process"):
        return False
    if not inspect.isclass(obj) and attr in getattr(obj, "__dict__", {}):
        return True
    cls = obj if inspect.isclass(obj) else type(obj)
    return any(attr in vars(c) for c in cls.__mro__ if c not in (Processor, object))


def check_processor_attrs(obj) -> None:
    """ConfigError if a processor class (or instance) sets a public attribute that looks like one xq reads
    but is not: a known alias (`retries`, `max_retry`, `ttl`, ...), a setting xq takes elsewhere
    (`priority`, `delay`), or a name within difflib ratio 0.8 of one (`max_retires`, `queues`,
    `time_out`); a method close to setup or process (`set_up`, `proccess`) likewise.  Private names
    (leading underscore) and unrelated ones (`model_path`) pass."""
    import difflib

    cls = obj if inspect.isclass(obj) else type(obj)
    names = [(k, v) for c in cls.__mro__ if c not in (Processor, object) for k, v in vars(c).items()]
    if not inspect.isclass(obj):
        names += list(getattr(obj, "__dict__", {}).items())
    for key, value in names:
        if key.startswith("_") or key in PROCESSOR_ATTRS or key in ("setup", "process"):
            continue
        if callable(value) or isinstance(value, (staticmethod, classmethod)):
            if inspect.isclass(value):
                continue
            close = difflib.get_close_matches(key.lower(), ["setup", "process"], n=1, cutoff=0.8)
            if close:
                raise ConfigError(f"processor {cls.__qualname__} defines {key}(), which xq never calls: did you "
                                  f"mean {close[0]}()?")
            continue
        if key in NOT_A_TASK_OPTION:
            raise ConfigError(f"processor {cls.__qualname__} sets {key} = {value!r}, which xq does not read: "
                              f"{NOT_A_TASK_OPTION[key]}")
        meant = OPTION_HINTS.get(key) if OPTION_HINTS.get(key) in PROCESSOR_ATTRS else None
        if meant is None:
            close = difflib.get_close_matches(key.lower(), PROCESSOR_ATTRS, n=1, cutoff=0.8)
            meant = close[0] if close else None
        if meant is not None:
            raise ConfigError(f"processor {cls.__qualname__} sets {key} = {value!r}, which xq does not read: "
                              f"did you mean {meant}? (xq reads {', '.join(PROCESSOR_ATTRS)})")
