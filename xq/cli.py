"""`xq` command line: a thin click layer over the library.

Exit codes (every command; `xq run` adds 1, 3, 4 and 7):
    0  success; for `xq run`: stopped (burst finished, or SIGTERM/SIGINT, graceful or hard)
    1  an error the command reports (unknown task, task failed, ...); for `xq run`: internal error
    2  usage error: bad option (the message names the flag, never a Python argument of the library),
       malformed Redis URL, a missing optional extra (`xq top` without textual,
       `xq web` without starlette/uvicorn), `xq web` off loopback without tokens
    3  `xq run`: children failed to boot repeatedly (the app failed to load in them, or a Processor.setup()
       raised); the supervisor halted instead of respawning forever, returning the tasks they were given
    4  `xq run`: MODULE:APP could not be imported, or is not an xq.App
    5  Redis refused us: authentication failed (wrong or missing password or user), missing ACL
       permission, no such database.  `xq run` checks this at start; once running it logs and retries.
    6  Redis unreachable: still down after the retries (commands retry for $XQ_RETRY_FOR seconds,
       default 30; `xq run` gives up once Redis has not answered for --connect-timeout seconds, at start
       or in an outage: with --burst that defaults to $XQ_RETRY_FOR, without it `xq run` retries forever)
    7  `xq run`: the Redis server would lose tasks (a maxmemory-policy that evicts keys; --allow-eviction
       overrides) or is older than 7.0 (see xq/servercheck.py)
Expected failures print one line naming the URL (password masked) and the reason, never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import time
import traceback

import click
import orjson

from . import __version__
from .app import App
from .cpus import usable_cpus
from .errors import ConfigError, ConnectionLost, RedisRefused, XQError

EXIT_USAGE = 2
EXIT_REDIS_REFUSED = 5
EXIT_REDIS_UNREACHABLE = 6
EXIT_REDIS_UNSAFE = 7
STATUS_PREVIEW = 4096       # bytes of a JSON payload or result `xq status` prints in full
SOCKET_TIMEOUT = 30.0      # seconds: the supervisor's Redis socket timeout at most (Broker's default)
MIN_SOCKET_TIMEOUT = 5.0   # ... and the least --lease or --connect-timeout brings it down to

log = logging.getLogger("xq")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s xq[%(process)d] %(message)s")


def load_app(ref: str) -> App:
    """Import MODULE:APP with the current directory on sys.path (as gunicorn and uvicorn do)."""
    module, _, attr = ref.partition(":")
    attr = attr or "app"
    if not module:
        raise click.UsageError(f"invalid app reference {ref!r}: expected MODULE:APP, e.g. myproject.tasks:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(module)
    except BaseException as e:  # noqa: BLE001 - any failure at import is the same halt
        traceback.print_exc()
        click.echo(f"xq: cannot import module {module!r} of {ref!r}: {type(e).__name__}: {e}", err=True)
        sys.exit(4)
    app = getattr(mod, attr, None)
    if not isinstance(app, App):
        click.echo(f"xq: {ref!r} is not an xq.App (module {module!r} has {attr}={app!r})", err=True)
        sys.exit(4)
    return app


def parse_queues(spec: str) -> tuple[list[str], list[int] | None]:
    """'a,b' -> strict order; 'a:3,b:1' -> weights (every queue then needs one)."""
    from .keys import check_queue

    names, weights = [], []
    for part in spec.split(","):
        name, sep, w = part.strip().partition(":")
        names.append(check_queue(name.strip()))
        if sep:
            if not w.strip().isdigit() or int(w) < 1:
                raise ConfigError(f"invalid weight {w!r} for queue {name!r}: expected an integer >= 1")
            weights.append(int(w))
    if len(set(names)) != len(names):
        raise ConfigError(f"queue listed twice in {spec!r}")
    if weights and len(weights) != len(names):
        raise ConfigError(f"give every queue a weight or none: {spec!r}")
    return names, weights or None


@contextlib.contextmanager
def _producer(url: str | None):
    """A Producer for a CLI command; an xq error becomes a clean one-line message with exit code 1 (those
    with codes of their own pass on to XQGroup)."""
    from .producer import Producer

    try:
        with Producer(url) as p:
            yield p
    except (ConfigError, ConnectionLost, RedisRefused):
        raise
    except XQError as e:
        raise click.ClickException(str(e)) from None


def _fail(code: int, message: str) -> None:
    click.echo(f"xq: {message}", err=True)
    sys.exit(code)


def flagify(message: str, command: click.Command) -> str:
    """A library error message in the words of the command line: the Python arguments it names (`ids=`,
    `until_done`, `invalid keep 0`) become the command's flags (`--id`, `--until-done`, `invalid --keep 0`)."""
    flags = {}
    for p in command.params:
        if isinstance(p, click.Option) and p.name:
            longs = [o for o in p.opts if o.startswith("--")]
            flags[p.name] = max(longs or p.opts, key=len)
    if not flags:
        return message
    sub = lambda m: flags.get(m[1], m[0])  # noqa: E731
    message = re.sub(r"(?<![\w(.-])([a-z][a-z_]*)=(?![\w'\".(])", sub, message)       # kwarg style: ids=
    message = re.sub(r"(?<![\w(.-])([a-z]+(?:_[a-z]+)+)\b(?![=(.])", sub, message)   # bare: until_done
    message = re.sub(r"^(invalid )([a-z]+)\b", lambda m: m[1] + flags.get(m[2], m[2]), message)  # invalid keep 0
    return message


class XQCommand(click.Command):
    """An `xq` command: a ConfigError from the library (a usage error) names the command's flags, not the
    library's Python arguments; XQGroup turns it into exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            message = flagify(str(e), self)
            if message == str(e):
                raise
            raise ConfigError(f"{message} (see '{ctx.command_path} --help')") from None


# Environment variables xq reads; one set whose name is close to these (XQ_REDIS_ULR) is a usage error.
ENV_VARS = ("XQ_REDIS_URL", "XQ_RETRY_FOR", "XQ_PURE", "XQ_MEDIA_THREADS", "XQ_WEB_TOKENS", "XQ_WEB_SECRET")


def check_env(environ=None) -> None:
    """ConfigError for a set XQ_* variable that xq does not read but whose name is within difflib ratio 0.8
    of one it does (a typo silently ignored would, say, send `xq run` to the default Redis URL).  Other
    XQ_* names (a project's own) pass."""
    import difflib

    for key in sorted(os.environ if environ is None else environ):
        if key.startswith("XQ_") and key not in ENV_VARS:
            close = difflib.get_close_matches(key, ENV_VARS, n=1, cutoff=0.8)
            if close:
                raise ConfigError(f"environment variable {key} is not one xq reads: did you mean {close[0]}? "
                                  f"(xq reads {', '.join(ENV_VARS)})")


class XQGroup(click.Group):
    """The `xq` group: the failures every command can meet become one line and a documented exit code."""

    command_class = XQCommand
    group_class = type  # sub-groups (xq dlq, xq queue, ...) are XQGroups too

    def invoke(self, ctx):
        try:
            if ctx.parent is None:
                check_env()
            return super().invoke(ctx)
        except RedisRefused as e:
            _fail(EXIT_REDIS_REFUSED, str(e))
        except ConnectionLost as e:
            _fail(EXIT_REDIS_UNREACHABLE, str(e))
        except ConfigError as e:
            _fail(EXIT_USAGE, str(e))


def parse_level_weights(spec: str) -> list[int]:
    """'16,8,...' -> ten integers >= 0 (levels 0..9), at least one > 0."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 10 or not all(p.isdigit() for p in parts) or not any(int(p) for p in parts):
        raise ConfigError(f"invalid --level-weights {spec!r}: expected ten integers >= 0 for levels 0..9, "
                          f"not all 0, e.g. 16,8,8,4,4,2,2,1,1,1")
    return [int(p) for p in parts]


class FiniteFloat(click.ParamType):
    """A float that is a number: not nan, not inf (the library's checks then say what range it needs)."""

    name = "float"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            f = value
        else:
            try:
                f = float(value)
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        if f != f or f in (float("inf"), float("-inf")):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return f


FINITE = FiniteFloat()


def _procs(value: str) -> int:
    if value == "auto":
        return usable_cpus()  # its affinity, capped by a container's CPU quota
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise click.BadParameter(f"{value!r}: expected a positive integer or 'auto'", param_hint="--procs")
    return n


@click.group(cls=XQGroup)
@click.version_option(version=__version__, prog_name="xq")  # not package metadata: the distribution is xq-queue
def main() -> None:
    """xq: a fast, crash-safe task queue on Redis for CPU-heavy work."""


def supervisor_socket_timeout(lease: float, connect_timeout: float | None) -> float:
    """The supervisor's Redis socket timeout: how long one call may wait for its reply before the
    supervisor calls Redis unreachable, drops its connections and connects again.

    A third of the lease: a call stuck on a connection that a network cut ate is otherwise resent only by
    TCP's retransmissions, which back off to minutes, so after a cut shorter than the lease the reply could
    come after the lease ran out (another supervisor then recovers the task and it runs twice); a new
    connection renews it in time.  Within --connect-timeout, so that one bounds a stalled Redis (accepts,
    never answers) too.  Never under 5 s, well above the claims' 1 s blocking wait."""
    t = min(SOCKET_TIMEOUT, lease / 3)
    if connect_timeout is not None:
        t = min(t, connect_timeout)
    return max(MIN_SOCKET_TIMEOUT, t)


@main.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option("--procs", default="auto", show_default=True,
              help="child processes: a number or 'auto' (usable CPUs: the affinity, capped by a cgroup CPU quota)")
@click.option("--queues", default=None,
              help="comma-separated queues, highest priority first [default: the app's]; with weights, e.g. "
                   "critical:6,default:3,low:1, each claim shares its batch between them in those proportions")
@click.option("--redis", "url", default=None, help="Redis URL [default: $XQ_REDIS_URL, else redis://127.0.0.1:6379/0]")
@click.option("--burst", is_flag=True, help="exit 0 once the queues are empty and nothing is running")
@click.option("--connect-timeout", type=click.FloatRange(min=0.0, min_open=True), default=None, metavar="SECONDS",
              help="give up with exit code 6 once Redis has not answered for this long, at start or during an "
                   "outage [default: with --burst $XQ_RETRY_FOR, else 30; without --burst: never, retry forever]")
@click.option("--lease", type=click.FloatRange(min=1.0), default=30.0, show_default=True,
              help="seconds a claim holds a task before another supervisor may recover it (renewed while running)")
@click.option("--result-ttl", type=click.IntRange(min=0), default=86400, show_default=True,
              help="seconds finished task records and results are kept (0 = forever)")
@click.option("--max-payload", type=click.IntRange(min=1), default=32 * 1024 * 1024, show_default=True,
              help="bytes; a larger payload fails its task")
@click.option("--grace", type=click.FloatRange(min=0.0), default=30.0, show_default=True,
              help="seconds running tasks get to finish after SIGTERM/SIGINT")
@click.option("--max-tasks-per-child", type=click.IntRange(min=0), default=0, help="recycle a child after N tasks")
@click.option("--max-memory-per-child", type=click.IntRange(min=0), default=0,
              help="soft limit: recycle a child whose RSS exceeds this many MiB after its current task")
@click.option("--memory-limit-per-child", type=click.IntRange(min=0), default=0,
              help="hard limit: kill a child whose RSS exceeds this many MiB at once, even mid-task (the "
                   "attempt ends with outcome 'memory' and is retried or dead like any failure)")
@click.option("--prefetch", type=click.IntRange(min=0), default=1, show_default=True,
              help="tasks claimed ahead per child, beyond those queued in its ring")
@click.option("--retain-memory/--no-retain-memory", default=True, show_default=True,
              help="children keep memory a task freed for the next task instead of returning it to the OS "
                   "(glibc; much faster for handlers with big buffers, RSS stays at the handler's peak)")
@click.option("--level-weights", default=None, metavar="W0,...,W9",
              help="share each claim between priority levels 0..9 in these proportions (levels with weight 0 "
                   "only get what is left), e.g. 16,8,8,4,4,2,2,1,1,1, instead of the strict default where a "
                   "busy level starves lower ones")
@click.option("--kill-grace", type=click.FloatRange(min=0.0), default=5.0, show_default=True,
              help="seconds a timed-out (SIGTERM) or canceled (xq.Cancelled) child gets before SIGKILL")
@click.option("--allow-eviction", is_flag=True,
              help="start even though Redis' maxmemory-policy evicts keys (which silently deletes task records "
                   "when Redis is full); without it `xq run` refuses to start (exit 7)")
@click.option("--heartbeat", type=click.FloatRange(min=0.0), default=5.0, show_default=True,
              help="seconds between this worker's registry heartbeats (`xq workers`); it drops out 3 beats after "
                   "dying; 0 = off: the worker stays out of the registry")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=0, show_default=True,
              help="serve Prometheus /metrics and the /healthz, /readyz probes on this port (0 = off; needs "
                   "the 'metrics' extra: pip install 'xq-queue[metrics]')")
@click.option("--stats/--no-stats", default=True, show_default=True,
              help="write the per-minute stats history (`xq stats`); --no-stats only to measure its cost")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def run(app_ref, procs, queues, url, burst, connect_timeout, lease, result_ttl, max_payload, grace, max_tasks_per_child,
        max_memory_per_child, memory_limit_per_child, prefetch, retain_memory, level_weights, kill_grace,
        allow_eviction, heartbeat, metrics_port, stats, log_level) -> None:
    """Run a supervisor and its child processes for MODULE:APP."""
    from .broker import DEFAULT_URL, Broker
    from .supervisor import Config, Supervisor, check_memory_limits

    _setup_logging(log_level)
    if 0 < heartbeat < 0.1:
        raise click.BadParameter(f"{heartbeat:g} s is too short: use 0 (off) or at least 0.1", param_hint="--heartbeat")
    if metrics_port:
        from .supervisor.metrics import require_client

        try:
            require_client()
        except ConfigError as e:
            raise click.BadParameter(str(e), param_hint="--metrics-port") from None
    n = _procs(procs)
    check_memory_limits(max_memory_per_child * 1048576, memory_limit_per_child * 1048576)
    url = url or os.environ.get("XQ_REDIS_URL") or DEFAULT_URL
    app = load_app(app_ref)
    try:
        qs, weights = parse_queues(queues) if queues is not None else (app.queues(), None)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--queues") from None
    try:
        lweights = parse_level_weights(level_weights) if level_weights is not None else None
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--level-weights") from None
    try:
        if connect_timeout is None and burst:
            from .producer import retry_window

            connect_timeout = retry_window(None)
        broker = _first_broker(url, supervisor_socket_timeout(lease, connect_timeout), connect_timeout)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--redis") from None
    checked = _check_redis(broker, connect_timeout, allow_eviction)
    cfg = Config(queues=qs, procs=n, burst=burst, connect_timeout=connect_timeout, lease=lease, result_ttl=result_ttl, max_payload=max_payload,
                 grace=grace, max_tasks_per_child=max_tasks_per_child,
                 max_memory_per_child=max_memory_per_child * 1024 * 1024,
                 memory_limit_per_child=memory_limit_per_child * 1024 * 1024, prefetch=prefetch,
                 retain_memory=retain_memory, weights=weights, level_weights=lweights, kill_grace=kill_grace,
                 check_server=not checked, allow_eviction=allow_eviction, heartbeat=heartbeat,
                 metrics_port=metrics_port, stats=stats)
    try:
        sup = Supervisor(app, broker, cfg)
    except ConfigError as e:  # --metrics-port taken
        raise click.BadParameter(str(e), param_hint="--metrics-port") from None
    except Exception:
        log.exception("supervisor crashed")
        sys.exit(1)
    try:
        code = sup.run()
    except Exception:
        log.exception("supervisor crashed")
        code = 1
    sys.exit(code)


def _first_broker(url: str, socket_timeout: float, connect_timeout: float | None):
    """The supervisor's Broker.  On a Cluster its client reads the slot map as it is made, so a Cluster whose
    seeds do not answer yet is waited for here, as one Redis is by the supervisor: forever without a connect
    timeout, else for connect_timeout seconds (then ConnectionLost: exit 6)."""
    from .broker import Broker
    from .conn import Backoff

    deadline = None if connect_timeout is None else time.monotonic() + connect_timeout
    backoff, said = Backoff(0.1, 2.0), False
    while True:
        try:
            return Broker(url, socket_timeout=socket_timeout)
        except ConnectionLost as e:
            if deadline is not None and time.monotonic() >= deadline:
                raise ConnectionLost(f"{e}; gave up after --connect-timeout {connect_timeout:g} s", url=e.url) from None
            if not said:
                log.error("%s; waiting for it (--connect-timeout: %s)", e,
                          "none, retrying forever" if deadline is None else f"{connect_timeout:g} s")
                said = True
            pause = backoff.next()
            time.sleep(pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic())))


def _check_redis(broker, connect_timeout: float | None, allow_eviction: bool = False) -> bool:
    """Before any child starts: a Redis that refuses us halts `xq run` (exit 5), as retrying cannot fix
    it; one that would lose tasks (an evicting maxmemory-policy, see xq/servercheck.py) too (exit 7).  An
    unreachable one is waited for: forever without a connect timeout (the supervisor's own backoff,
    children up), else for connect_timeout seconds (--connect-timeout; with --burst, a CI job, it defaults
    to the producers' retry window), then exit 6.  False: not reached, so not checked yet (the supervisor
    checks at its first connect)."""
    from .conn import Backoff
    from .servercheck import RedisUnsafe, check_server

    deadline = time.monotonic() + (connect_timeout or 0.0)
    backoff = Backoff(0.1, 2.0)
    while True:
        try:
            broker.ping()
            check_server(broker.client, broker.url, allow_eviction=allow_eviction)
            return True
        except RedisUnsafe as e:
            _fail(EXIT_REDIS_UNSAFE, str(e))
        except ConnectionLost as e:
            if connect_timeout is None:
                return False  # the supervisor reports it, keeps trying, and checks the server once it answers
            if time.monotonic() >= deadline:
                raise ConnectionLost(f"{e}; gave up after --connect-timeout {connect_timeout:g} s (with --burst "
                                     f"the default is $XQ_RETRY_FOR, 30 s)", url=e.url) from None
            time.sleep(min(backoff.next(), max(0.0, deadline - time.monotonic())))


@main.command()
@click.argument("name")
@click.argument("payload", default="null")
@click.option("--queue", default=None, help="queue [default: default]")
@click.option("--priority", default="5", help="0 (highest) .. 9, or critical/high/normal/low")
@click.option("--delay", type=FINITE, default=None, help="seconds before it is due (status scheduled until then)")
@click.option("--eta", type=FINITE, default=None, help="unix time at which it is due")
@click.option("--expires", type=FINITE, default=None, help="seconds from now by which it must have started")
@click.option("--timeout", type=FINITE, default=None, help="seconds an attempt may run")
@click.option("--max-retries", type=int, default=None, help="attempts after the first")
@click.option("--unique-key", default=None, help="while a task with this key has not ended, print its id instead")
@click.option("--unique-ttl", type=FINITE, default=None, help="seconds the unique key is held at most")
@click.option("--depends-on", multiple=True, metavar="ID", help="wait until this task is done (repeatable)")
@click.option("--concurrency-key", default=None, help="at most --max-concurrency tasks with this key run at once")
@click.option("--max-concurrency", type=int, default=None)
@click.option("--rate-key", default=None, help="at most --rate-limit starts of tasks with this key")
@click.option("--rate-limit", default=None, metavar="N/s|N/m|N/h")
@click.option("--result-ttl", type=int, default=None,
              help="seconds its finished record is kept, whatever the queue's retention count")
@click.option("--redis", "url", default=None, help="Redis URL")
def enqueue(name, payload, queue, priority, delay, eta, expires, timeout, max_retries, unique_key, unique_ttl,
            depends_on, concurrency_key, max_concurrency, rate_key, rate_limit, result_ttl, url) -> None:
    """Enqueue task NAME with a JSON PAYLOAD; prints the task id."""
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="PAYLOAD") from None
    prio = int(priority) if priority.isdigit() else priority
    with _producer(url) as p:
        click.echo(p.enqueue(name, value, queue=queue, priority=prio, delay=delay, eta=eta, expires=expires,
                             timeout=timeout, max_retries=max_retries, unique_key=unique_key, unique_ttl=unique_ttl,
                             depends_on=list(depends_on) or None, concurrency_key=concurrency_key,
                             max_concurrency=max_concurrency, rate_key=rate_key, rate_limit=rate_limit,
                             result_ttl=result_ttl))


@main.command()
@click.argument("task_id")
@click.option("--queue", default=None)
@click.option("--redis", "url", default=None, help="Redis URL")
def cancel(task_id, queue, url) -> None:
    """Cancel a task: prints canceled (it never runs), canceling (running: being interrupted) or finished."""
    with _producer(url) as p:
        click.echo(p.cancel(task_id, queue=queue))


@main.command()
@click.argument("queues", nargs=-1)
@click.option("--id", "ids", multiple=True, metavar="ID", help="only this task's events (repeatable)")
@click.option("--state", "states", multiple=True, help="only events in this state (repeatable)")
@click.option("--timeout", type=click.FloatRange(min=0.0, max=1e9), default=None, help="stop after this many seconds")
@click.option("--until-done", is_flag=True, help="with --id: stop once every one of them has ended")
@click.option("--redis", "url", default=None, help="Redis URL")
def events(queues, ids, states, timeout, until_done, url) -> None:
    """Print the events of QUEUES (default: those of --id, else default) as JSON lines, as they happen."""
    with _producer(url) as p:
        stream = p.events(ids=list(ids) or None, queues=list(queues) or None, states=list(states) or None,
                          timeout=timeout, until_done=until_done)
        for ev in stream:
            click.echo(orjson.dumps(ev).decode())


# ---------------------------------------------------------------- worker registry
def _inspector(url: str | None):
    from .inspect import Inspector

    return Inspector(url)


def _mib(n) -> str:
    return f"{n / 1048576:.0f}M" if isinstance(n, (int, float)) else "?"


def _duration(s) -> str:
    if not isinstance(s, (int, float)):
        return "?"
    s = int(max(0, s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def _worker_row(w: dict, now: float) -> list[str]:
    from .records import cut

    tasks = w.get("tasks") if isinstance(w.get("tasks"), list) else []
    names = ",".join(sorted({str(t.get("name")) for t in tasks if isinstance(t, dict)}))
    queues = w.get("queues")
    rss = w.get("rss") if isinstance(w.get("rss"), dict) else {}
    started = w.get("started")
    return [cut(str(w.get("id")), 60), cut(str(w.get("host", "?")), 30), str(w.get("pid", "?")),
            cut(",".join(map(str, queues)) if isinstance(queues, list) else "?", 40),
            f"{w.get('busy', '?')}/{w.get('procs', '?')}", str(w.get("done", "?")), str(w.get("failed", "?")),
            _mib(rss.get("total")), _duration(now - started if isinstance(started, (int, float)) else None),
            _duration(w.get("age")), str(w.get("state", "?")), str(w.get("impl", "?")), cut(names, 40) or "-"]


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the full records as JSON")
@click.option("--redis", "url", default=None, help="Redis URL")
def workers(as_json, url) -> None:
    """List the live supervisors (the worker registry), newest heartbeat first."""
    with _inspector(url) as i:
        ws = i.workers()
    if as_json:
        click.echo(_dump(ws))
        return
    now = time.time()
    header = ["ID", "HOST", "PID", "QUEUES", "BUSY", "DONE", "FAILED", "RSS", "UP", "BEAT", "STATE", "IMPL",
              "RUNNING"]
    click.echo(_table(header, [_worker_row(w, now) for w in ws]))
    click.echo(f"{len(ws)} worker(s)")


@main.group()
def worker() -> None:
    """Show one supervisor of the worker registry."""


@worker.command("show")
@click.argument("worker_id")
@click.option("--redis", "url", default=None, help="Redis URL")
def worker_show(worker_id, url) -> None:
    """Print one live supervisor's registry record, with the tasks it runs now, as JSON."""
    with _inspector(url) as i:
        w = i.worker(worker_id)
    if w is None:
        raise click.ClickException(f"no live worker {worker_id!r} (unknown, stopped, or its heartbeat expired)")
    click.echo(_dump(w))


@main.group()
def dlq() -> None:
    """Inspect and replay the dead-letter set of a queue."""


def _dump(obj) -> str:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode()


@dlq.command("ls")
@click.argument("queue")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the full records as JSON")
@click.option("--redis", "url", default=None, help="Redis URL")
def dlq_ls(queue, offset, limit, as_json, url) -> None:
    """List dead tasks of QUEUE, oldest first, one page at a time."""
    with _producer(url) as p:
        total = p.dead_count(queue)
        page = p.dead_letters(queue, offset=offset, limit=limit)
    if as_json:
        click.echo(_dump({"total": total, "offset": offset, "tasks": page}))
        return
    click.echo(f"{total} dead task(s) in {queue}; showing {offset + 1 if page else 0}-{offset + len(page)}")
    for t in page:
        click.echo(_dead_line(t))


def _dead_line(t: dict) -> str:
    """One line of `xq dlq ls`: every value cut at 200 characters (a malformed record may hold anything),
    then what is malformed in the record, if anything."""
    from .records import cut

    dead_at = t["dead_at"]
    died = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dead_at)) \
        if isinstance(dead_at, float) else cut(dead_at or "?", 30)
    err = t["error"].splitlines()[0] if t["error"] and t["error"].strip() else ""
    why = cut(t["reason"]) if not err or err == t["reason"] else f"{cut(t['reason'])}: {cut(err, 100)}"
    line = f"{cut(t['id'])}  {died}  {cut(t['name'])}  attempts={cut(t['attempts'], 20)}  {why}"
    notes = list(t.get("malformed") or [])
    if t.get("truncated"):
        notes.append("truncated: " + ", ".join(f"{k} ({n} bytes)" for k, n in t["truncated"].items()))
    if notes:
        line += f"  [malformed: {cut('; '.join(notes))}]" if t.get("malformed") else f"  [{cut('; '.join(notes))}]"
    return line


@dlq.command("show")
@click.argument("queue")
@click.argument("task_id")
@click.option("--redis", "url", default=None, help="Redis URL")
def dlq_show(queue, task_id, url) -> None:
    """Print one dead task's record, with its attempt history, as JSON."""
    with _producer(url) as p:
        st = p.status(task_id, queue=queue)
    if st["status"] != "dead":
        raise click.ClickException(f"task {task_id} in {queue} is {st['status']}, not dead")
    click.echo(_dump(st))


@dlq.command("replay")
@click.argument("queue")
@click.argument("task_ids", nargs=-1)
@click.option("--priority", default=None, help="new priority: 0..9 or critical/high/normal/low")
@click.option("--to-queue", default=None, help="replay into this queue instead")
@click.option("--progress/--no-progress", default=None, help="show progress on stderr [default: if a terminal]")
@click.option("--redis", "url", default=None, help="Redis URL")
def dlq_replay(queue, task_ids, priority, to_queue, progress, url) -> None:
    """Replay dead tasks of QUEUE: the TASK_IDS given, or all of them."""
    prio = None if priority is None else (int(priority) if priority.isdigit() else priority)
    with _producer(url) as p, _Progress("replayed", progress) as bar:
        done = p.replay(queue, list(task_ids) or None, priority=prio, to_queue=to_queue, progress=bar)
    replayed = set(done)
    skipped = [t for t in dict.fromkeys(task_ids) if t not in replayed]
    # ids given that were not replayed are named (a replay is idempotent: run again, the ids replayed the
    # first time are among them, which is not an error)
    shown = ", ".join(skipped[:20]) + (f" and {len(skipped) - 20} more" if len(skipped) > 20 else "")
    click.echo(f"replayed {len(done)} task(s) into {to_queue or queue}"
               + (f"; {len(skipped)} id(s) were not in the dead-letter set: {shown}" if skipped else ""))


@dlq.command("purge")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option("--redis", "url", default=None, help="Redis URL")
def dlq_purge(queue, yes, url) -> None:
    """Delete every dead task of QUEUE."""
    with _producer(url) as p:
        n = p.dead_count(queue)
        if n and not yes:
            click.confirm(f"delete {n} dead task(s) of {queue}?", abort=True)
        click.echo(f"purged {p.purge_dead(queue)} dead task(s) from {queue}")


@main.group()
def queue() -> None:
    """Inspect and steer one queue."""


@queue.command("pause")
@click.argument("name")
@click.option("--redis", "url", default=None, help="Redis URL")
def queue_pause(name, url) -> None:
    """Pause queue NAME: supervisors stop claiming from it (running tasks finish) until `xq queue resume`."""
    with _producer(url) as p:
        changed = p.pause_queue(name)
    click.echo(f"paused queue {name}" if changed else f"queue {name} was already paused")


@queue.command("resume")
@click.argument("name")
@click.option("--redis", "url", default=None, help="Redis URL")
def queue_resume(name, url) -> None:
    """Resume queue NAME: supervisors claim from it again at once."""
    with _producer(url) as p:
        changed = p.resume_queue(name)
    click.echo(f"resumed queue {name}" if changed else f"queue {name} was not paused")


@queue.command("retention")
@click.argument("name")
@click.option("--keep", type=int, default=None, help="finished records kept per final state (done, canceled, expired)")
@click.option("--max-age", type=int, default=None, help="seconds a finished record is kept at most (0: the result ttl)")
@click.option("--keep-dead", type=int, default=None, help="dead letters kept")
@click.option("--reset", is_flag=True, help="put every field back to its default first")
@click.option("--json", "as_json", is_flag=True, help="print the policy as JSON")
@click.option("--redis", "url", default=None, help="Redis URL")
def queue_retention(name, keep, max_age, keep_dead, reset, as_json, url) -> None:
    """Show or set queue NAME's retention policy: how many finished records (per final state) and dead
    letters it keeps, and for how long.  Without options: show it."""
    with _inspector(url) as i:
        if keep is None and max_age is None and keep_dead is None and not reset:
            r = i.retention(name)
        else:
            r = i.set_retention(name, keep=keep, max_age=max_age, keep_dead=keep_dead, reset=reset)
    if as_json:
        click.echo(_dump(r))
        return
    d = set(r["defaults"])
    tag = lambda k: "  (default)" if k in d else ""  # noqa: E731
    n = r["indexed"]
    click.echo(f"retention of queue {name}")
    click.echo(f"  keep       {r['keep']} finished per state{tag('keep')}")
    click.echo(f"  max-age    {str(r['max_age']) + ' s' if r['max_age'] else 'the result ttl'}{tag('max_age')}")
    click.echo(f"  keep-dead  {r['keep_dead']} dead letters{tag('keep_dead')}")
    click.echo(f"  indexed    done {n['done']}, canceled {n['canceled']}, expired {n['expired']}, dead {n['dead']}")
    click.echo(f"  trimmed    {r['trimmed']} record(s)" + (f", the newest finished {_when(r['trimmed_newest'])}"
                                                       if r["trimmed_newest"] else ""))
# ---------------------------------------------------------------- bulk operations (flush, delete)
class _Progress:
    """progress(done, total) of a bulk operation as one counter line on stderr, redrawn at most 10 times
    a second; shown when asked (--progress), else when stderr is a terminal."""

    def __init__(self, label: str, enabled: bool | None):
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = self.last = time.monotonic()
        self.seen = None  # the last (done, total) reported

    def __call__(self, done: int, total: int | None) -> None:
        self.seen = (done, total)
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.1:
            self.last = now
            self._draw(done, total, now)

    def _draw(self, done: int, total: int | None, now: float) -> None:
        rate = done / max(now - self.t0, 1e-6)
        of = f"/{total} ({100 * done // max(total, 1)}%)" if total is not None else ""
        click.echo(f"\r{self.label} {done}{of}, {rate:,.0f}/s ", nl=False, err=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.enabled and self.seen:
            self._draw(*self.seen, time.monotonic())
            click.echo("", err=True)


@queue.command("flush")
@click.argument("name")
@click.option("--state", required=True, type=click.Choice(["queued", "scheduled", "retrying", "dead", "running",
                                                             "waiting"]),
              help="the state of the tasks to delete (running and waiting ones are refused)")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option("--json", "as_json", is_flag=True, help="print the count as JSON")
@click.option("--progress/--no-progress", default=None, help="show progress on stderr [default: if a terminal]")
@click.option("--redis", "url", default=None, help="Redis URL")
def queue_flush(name, state, yes, as_json, progress, url) -> None:
    """Delete every task of queue NAME in one state: queued, scheduled, retrying or dead.  Running tasks
    are never flushed (cancel them); what a flushed task's end sets off (its unique key, group, dependents)
    happens as for a canceled one."""
    with _producer(url) as p:
        if state in ("running", "waiting"):
            p.flush(name, state)  # refused, with the reason
        q = p.queue(name)
        n = {"queued": q["ready"], "dead": q["dead"]}.get(state, q["scheduled"] + q["retrying"])
        if n and not yes:
            what = f"{n} {state}" if state in ("queued", "dead") else f"the {state} tasks among {n} scheduled+retrying"
            click.confirm(f"delete {what} task(s) of queue {name}?", abort=True)
        with _Progress("looked at", False if as_json else progress) as bar:
            deleted = p.flush(name, state, progress=bar)
    if as_json:
        click.echo(_dump({"queue": name, "state": state, "deleted": deleted}))
    else:
        click.echo(f"flushed {deleted} {state} task(s) from {name}")


@queue.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option("--json", "as_json", is_flag=True, help="print the counts as JSON")
@click.option("--progress/--no-progress", default=None, help="show progress on stderr [default: if a terminal]")
@click.option("--redis", "url", default=None, help="Redis URL")
def queue_delete(name, yes, as_json, progress, url) -> None:
    """Delete queue NAME: every key of it (its tasks in every state, records, flow-control keys) and its
    entry in the list of queues.  Stop the supervisors serving it first: their running tasks' results
    are refused (logged), and a live supervisor or producer may re-create some of its keys."""
    with _producer(url) as p:
        q = p.queue(name)
        listed = name in p.broker.queues()
        tasks = q["ready"] + q["scheduled"] + q["retrying"] + q["running"] + q["dead"]
        if not listed and not tasks:
            raise click.ClickException(f"no queue {name!r}: it is not in xq:queues and holds no tasks")
        serving = [w["id"] for w in p.workers() if name in (w.get("queues") or ())]
        if serving:
            click.echo(f"warning: {len(serving)} live supervisor(s) serve {name}: {', '.join(serving[:5])}"
                       f"{' ...' if len(serving) > 5 else ''}; their {q['running']} running task(s) finish but "
                       f"their results are refused; stop them or take {name} out of their --queues", err=True)
        if not yes:
            click.confirm(f"delete queue {name} with {q['ready']} queued, {q['scheduled'] + q['retrying']} "
                          f"scheduled/retrying, {q['running']} running, {q['waiting']} waiting and {q['dead']} "
                          f"dead task(s) (and its finished records)?", abort=True)
        with _Progress("keys deleted", False if as_json else progress) as bar:
            out = p.delete_queue(name, progress=bar)
    if as_json:
        click.echo(_dump(out))
    else:
        click.echo(f"deleted queue {name}: {out['keys']} key(s)")


# ---------------------------------------------------------------- queues and tasks
QUEUE_HEADER = ["QUEUE", "PAUSED", "READY", "SCHEDULED", "RETRYING", "RUNNING", "WAITING", "DEAD", "LATENCY",
                "DONE/1M", "FAILED/1M", "DONE/1H", "FAILED/1H"]


def _latency(s) -> str:
    if not isinstance(s, (int, float)):
        return "-"
    return f"{s:.1f}s" if s < 60 else _duration(s)


def _queue_row(q: dict) -> list[str]:
    def n(key, exact=True):
        return str(q[key]) + ("" if exact else "+")
    return [q["queue"], "yes" if q["paused"] else "no", n("ready"), n("scheduled"),
            n("retrying", q["sched_split_exact"]), n("running"), n("waiting", q["waiting_exact"]), n("dead"),
            _latency(q["latency"]), n("done_1m"), n("failed_1m"), n("done_1h"), n("failed_1h")]


@main.command()
@click.option("--by-name", is_flag=True, help="also count per task name (a sample of the first 200 ids per list)")
@click.option("--json", "as_json", is_flag=True, help="print the counts as JSON")
@click.option("--redis", "url", default=None, help="Redis URL")
def queues(by_name, as_json, url) -> None:
    """List every queue with its counts per state and its latency (age of the oldest ready task)."""
    with _inspector(url) as i:
        qs = i.queues(by_name=by_name)
    if as_json:
        click.echo(_dump(qs))
        return
    click.echo(_table(QUEUE_HEADER, [_queue_row(q) for q in qs]))
    click.echo(f"{len(qs)} queue(s); a count ending in + is a lower bound (see `xq queue show`)")


@queue.command("show")
@click.argument("name")
@click.option("--by-name", is_flag=True, help="also count per task name (a sample of the first 200 ids per list)")
@click.option("--json", "as_json", is_flag=True, help="print the counts as JSON")
@click.option("--redis", "url", default=None, help="Redis URL")
def queue_show(name, by_name, as_json, url) -> None:
    """Show queue NAME: ready per priority level, scheduled, retrying, running, waiting, dead, latency."""
    from .records import cut

    with _inspector(url) as i:
        q = i.queue(name, by_name=by_name)
    if as_json:
        click.echo(_dump(q))
        return
    since = q["paused_since"]
    click.echo(f"queue {q['queue']}" + (f"  PAUSED since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
                                        if q["paused"] and since else "  PAUSED" if q["paused"] else ""))
    click.echo(f"  latency    {_latency(q['latency'])}" + (f"  (oldest ready: {q['oldest_ready_id']})"
                                                            if q["oldest_ready_id"] else ""))
    levels = "  ".join(f"{p}:{n}" for p, n in q["ready_by_priority"].items() if n)
    click.echo(f"  ready      {q['ready']}" + (f"  (by priority {levels})" if levels else ""))
    click.echo(f"  scheduled  {q['scheduled']}")
    click.echo(f"  retrying   {q['retrying']}" + ("" if q["sched_split_exact"] else
                                                   "+  (lower bound: only the 200 soonest due were looked at)"))
    click.echo(f"  running    {q['running']}")
    click.echo(f"  waiting    {q['waiting']}" + ("" if q["waiting_exact"] else
                                                 "+  (lower bound: found through a sample of the hooked set)"))
    click.echo(f"  dead       {q['dead']}")
    click.echo(f"  done       {q['done_1m']} in the last minute, {q['done_1h']} in the last hour")
    click.echo(f"  failed     {q['failed_1m']} in the last minute, {q['failed_1h']} in the last hour")
    if by_name:
        cols = ["queued", "scheduled", "retrying", "running", "waiting", "dead", "done_1m", "failed_1m",
                "done_1h", "failed_1h"]
        rows = [[cut(n, 60), *(str(c[s]) for s in cols)] for n, c in sorted(q["by_name"].items())]
        click.echo("")
        click.echo(_table(["NAME", "QUEUED", "SCHEDULED", "RETRYING", "RUNNING", "WAITING", "DEAD", "DONE/1M",
                           "FAILED/1M", "DONE/1H", "FAILED/1H"], rows))
        if not q["by_name_exact"]:
            click.echo("(a sample: the first 200 ids of each list and set)")


@main.command()
@click.argument("queue_name", metavar="QUEUE")
@click.option("--name", default=None, help="only this task name [default: the whole queue]")
@click.option("--minutes", type=click.IntRange(min=1, max=1500), default=60, show_default=True,
              help="minutes back, ending with the current one (history is kept 24 h)")
@click.option("--all", "show_all", is_flag=True, help="also print the minutes with nothing")
@click.option("--json", "as_json", is_flag=True, help="print every minute as JSON")
@click.option("--redis", "url", default=None, help="Redis URL")
def stats(queue_name, name, minutes, show_all, as_json, url) -> None:
    """Per-minute history of QUEUE: tasks done, attempts failed (retried or dead), run time."""
    with _inspector(url) as i:
        rows = i.history(queue_name, name=name, minutes=minutes)
    if as_json:
        click.echo(_dump(rows))
        return
    shown = [r for r in rows if show_all or r["done"] or r["failed"]]
    table = [[time.strftime("%Y-%m-%d %H:%M", time.localtime(r["minute"])), str(r["done"]), str(r["failed"]),
              str(r["retried"]), str(r["dead"]), f"{r['runtime']:.3f}",
              f"{r['runtime'] / (r['done'] + r['failed']) * 1000:.3f}" if r["done"] + r["failed"] else "-"]
             for r in shown]
    if table:
        click.echo(_table(["MINUTE", "DONE", "FAILED", "RETRIED", "DEAD", "RUNTIME_S", "AVG_MS"], table))
    done, failed = sum(r["done"] for r in rows), sum(r["failed"] for r in rows)
    what = f"queue {queue_name}" + (f", task {name}" if name else "")
    click.echo(f"{what}: {done} done, {failed} failed in the last {minutes} minute(s)"
               + ("" if show_all or len(shown) == len(rows) else f"; {len(rows) - len(shown)} empty minute(s) "
                  f"not shown (--all)"))


TASK_STATES = ["queued", "scheduled", "retrying", "running", "waiting", "dead", "done", "expired", "canceled"]


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "-"


@main.command()
@click.argument("queue_name", metavar="QUEUE")
@click.option("--state", required=True, type=click.Choice(TASK_STATES))
@click.option("--name", default=None, help="only tasks with this name")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON")
@click.option("--redis", "url", default=None, help="Redis URL")
def tasks(queue_name, state, name, offset, limit, as_json, url) -> None:
    """List the tasks of QUEUE in one state, one page at a time.  Order: queued in claim order (priority 0
    first, oldest first within a level); scheduled and retrying soonest due first; running soonest lease
    deadline first; dead oldest first; waiting oldest enqueued first; done, expired and canceled newest
    finished first (as many as the queue's retention keeps: see `xq queue retention`)."""
    from .records import cut

    with _inspector(url) as i:
        page = i.tasks(queue_name, state, name=name, offset=offset, limit=limit)
    if as_json:
        click.echo(_dump(page))
        return
    col = {"scheduled": "DUE", "retrying": "NEXT", "running": "STARTED", "dead": "DIED", "done": "FINISHED",
           "expired": "FINISHED", "canceled": "FINISHED"}.get(state)
    rows = []
    for t in page["tasks"]:
        when = {"scheduled": t["eta"], "retrying": t["next_attempt_at"], "running": t["started_at"] or t["claimed_at"],
                "dead": t["dead_at"]}.get(state, t.get("finished_at"))
        note = f"{t['pending_dependencies']} pending" if state == "waiting" else (t["error"] or t["reason"] or "")
        if t.get("malformed"):
            note += f"  [malformed: {'; '.join(t['malformed'])}]"
        rows.append([cut(t["id"], 60), cut(t["name"], 40), str(t["priority"]), _when(t["enqueued_at"]),
                     *([_when(when)] if col else []), str(t["attempts"]), cut(note, 100)])
    click.echo(_table(["ID", "NAME", "PRI", "ENQUEUED", *([col] if col else []), "ATT",
                       "DEPENDENCIES" if state == "waiting" else "ERROR"], rows))
    shown = f"{offset + 1}-{offset + len(rows)}" if rows else "none"
    click.echo(f"{state} tasks of {queue_name}: showing {shown}"
               + ("" if page["complete"] else " (stopped after looking at 10000 ids: there may be more)"))
    if state == "waiting":
        click.echo("(waiting tasks have no index of their own: found through the tasks they wait for)")


@main.command()
@click.argument("task_id")
@click.option("--queue", default=None)
@click.option("--redis", "url", default=None, help="Redis URL")
def status(task_id, queue, url) -> None:
    """Print a task's record as JSON, with its payload and result: the JSON itself up to 4 KiB, else (and for
    raw bytes) their type and size in payload_info / result_info (`xq web` downloads them whole)."""
    with _producer(url) as p:
        st = p.status(task_id, queue=queue)  # finds the queue, or says the task is unknown
    with _inspector(url) as insp:
        view = insp.task(st["queue"], task_id, preview=STATUS_PREVIEW)  # the same view, with those fields
    click.echo(_dump(view if view is not None else st))


@main.command()
@click.option("--redis", "url", default=None, help="Redis URL [default: $XQ_REDIS_URL, else redis://127.0.0.1:6379/0]")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="seconds between refreshes")
def top(url, interval) -> None:
    """A live terminal dashboard of the queues and workers (keys: q quit, tab switch view, p pause, ? help)."""
    try:
        import textual  # noqa: F401 - only to tell a missing optional extra from any other failure
    except ImportError:
        _fail(EXIT_USAGE, "xq top needs the optional extra: pip install 'xq-queue[top]'")
    from .top import run as run_top

    run_top(url, interval)  # a malformed URL fails here, before the screen is taken (exit 2)


@main.command()
@click.option("--redis", "url", default=None, help="Redis URL [default: $XQ_REDIS_URL, else redis://127.0.0.1:6379/0]")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8080, show_default=True)
@click.option("--tokens-file", default=None, type=click.Path(dir_okay=False),
              help="file of tokens, one name:role:token a line (role: read or admin); adds to $XQ_WEB_TOKENS")
def web(url, host, port, tokens_file) -> None:
    """Serve the HTTP JSON API (/api/..., /openapi.json, /healthz, /readyz); needs tokens off loopback."""
    try:
        import starlette  # noqa: F401 - only to tell a missing optional extra from any other failure
        import uvicorn  # noqa: F401
    except ImportError:
        _fail(EXIT_USAGE, "xq web needs the optional extra: pip install 'xq-queue[web]'")
    from .web import serve

    serve(url, host=host, port=port, tokens_file=tokens_file)  # ConfigError (no tokens off loopback): exit 2


@main.command()
@click.option("--tasks", type=click.IntRange(min=1), default=3000, show_default=True, help="thumbnails to make")
@click.option("--procs", default="auto", show_default=True)
@click.option("--redis", "url", default=None, help="Redis URL [default: $XQ_REDIS_URL, a local one, or a private one]")
@click.option("--data-dir", default=None, help="directory for a private redis-server's data")
def demo(tasks, procs, url, data_dir) -> None:
    """The main job: make thumbnails of generated images with a real supervisor, print throughput."""
    from .demo import run_demo

    _setup_logging("warning")
    sys.exit(run_demo(tasks=tasks, procs=procs, url=url, data_dir=data_dir))


if __name__ == "__main__":
    main()
