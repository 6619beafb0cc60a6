"""`xq` command line: a thin click layer over the library.

Exit codes (every command; `xq run` adds 1, 3, 4 and 7):
    0  success; for `xq run`: stopped (burst finished, or SIGTERM/SIGINT, graceful or hard)
    1  an error the command reports (unknown task, task failed, ...); for `xq run`: internal error
    2  usage error: bad option, malformed Redis URL
    3  `xq run`: children failed to boot repeatedly; the supervisor halted instead of respawning forever
    4  `xq run`: MODULE:APP could not be imported, or is not an xq.App
    5  Redis refused us: authentication failed (wrong or missing password or user), missing ACL
       permission, no such database.  `xq run` checks this at start; once running it logs and retries.
    6  Redis unreachable: still down after the retries (commands retry for $XQ_RETRY_FOR seconds,
       default 30; `xq run --burst` waits as long at start, `xq run` without --burst waits forever)
    7  `xq run`: the Redis server would lose tasks (a maxmemory-policy that evicts keys; --allow-eviction
       overrides) or is older than 7.0 (see xq/servercheck.py)
Expected failures print one line naming the URL (password masked) and the reason, never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import time
import traceback

import click
import orjson

from .app import App
from .errors import ConfigError, ConnectionLost, RedisRefused, XQError

EXIT_USAGE = 2
EXIT_REDIS_REFUSED = 5
EXIT_REDIS_UNREACHABLE = 6
EXIT_REDIS_UNSAFE = 7

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


class XQGroup(click.Group):
    """The `xq` group: the failures every command can meet become one line and a documented exit code."""

    def invoke(self, ctx):
        try:
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


def _procs(value: str) -> int:
    if value == "auto":
        return len(os.sched_getaffinity(0))
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise click.BadParameter(f"{value!r}: expected a positive integer or 'auto'", param_hint="--procs")
    return n


@click.group(cls=XQGroup)
@click.version_option(package_name="xq")
def main() -> None:
    """xq: a fast, crash-safe task queue on Redis for CPU-heavy work."""


@main.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option("--procs", default="auto", show_default=True, help="child processes: a number or 'auto' (usable cores)")
@click.option("--queues", default=None,
              help="comma-separated queues, highest priority first [default: the app's]; with weights, e.g. "
                   "critical:6,default:3,low:1, each claim shares its batch between them in those proportions")
@click.option("--redis", "url", default=None, help="Redis URL [default: $XQ_REDIS_URL, else redis://127.0.0.1:6379/0]")
@click.option("--burst", is_flag=True, help="exit 0 once the queues are empty and nothing is running")
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
                   "the 'metrics' extra: pip install 'xq[metrics]')")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def run(app_ref, procs, queues, url, burst, lease, result_ttl, max_payload, grace, max_tasks_per_child,
        max_memory_per_child, memory_limit_per_child, prefetch, retain_memory, level_weights, kill_grace,
        allow_eviction, heartbeat, metrics_port, log_level) -> None:
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
        qs, weights = parse_queues(queues) if queues else (app.queues(), None)
        lweights = parse_level_weights(level_weights) if level_weights else None
        broker = Broker(url)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None
    checked = _check_redis(broker, burst, allow_eviction)
    cfg = Config(queues=qs, procs=n, burst=burst, lease=lease, result_ttl=result_ttl, max_payload=max_payload,
                 grace=grace, max_tasks_per_child=max_tasks_per_child,
                 max_memory_per_child=max_memory_per_child * 1024 * 1024,
                 memory_limit_per_child=memory_limit_per_child * 1024 * 1024, prefetch=prefetch,
                 retain_memory=retain_memory, weights=weights, level_weights=lweights, kill_grace=kill_grace,
                 check_server=not checked, allow_eviction=allow_eviction, heartbeat=heartbeat,
                 metrics_port=metrics_port)
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


def _check_redis(broker, burst: bool, allow_eviction: bool = False) -> bool:
    """Before any child starts: a Redis that refuses us halts `xq run` (exit 5), as retrying cannot fix
    it; one that would lose tasks (an evicting maxmemory-policy, see xq/servercheck.py) too (exit 7).  An
    unreachable one is waited for: forever (the supervisor's own backoff, children up), or with --burst
    (a CI job) for the producers' retry window, then exit 6.  False: not reached, so not checked yet (the
    supervisor checks at its first connect)."""
    from .conn import Backoff
    from .producer import retry_window
    from .servercheck import RedisUnsafe, check_server

    deadline = time.monotonic() + retry_window(None)
    backoff = Backoff(0.1, 2.0)
    while True:
        try:
            broker.ping()
            check_server(broker.client, broker.url, allow_eviction=allow_eviction)
            return True
        except RedisUnsafe as e:
            _fail(EXIT_REDIS_UNSAFE, str(e))
        except ConnectionLost as e:
            if not burst:
                return False  # the supervisor reports it, keeps trying, and checks the server once it answers
            if time.monotonic() >= deadline:
                raise ConnectionLost(f"{e}; --burst gave up after {retry_window(None):g} s "
                                     f"($XQ_RETRY_FOR)", url=e.url) from None
            time.sleep(backoff.next())


@main.command()
@click.argument("name")
@click.argument("payload", default="null")
@click.option("--queue", default=None, help="queue [default: default]")
@click.option("--priority", default="5", help="0 (highest) .. 9, or critical/high/normal/low")
@click.option("--delay", type=float, default=None, help="seconds before it is due (status scheduled until then)")
@click.option("--eta", type=float, default=None, help="unix time at which it is due")
@click.option("--expires", type=float, default=None, help="seconds from now by which it must have started")
@click.option("--timeout", type=float, default=None, help="seconds an attempt may run")
@click.option("--max-retries", type=int, default=None, help="attempts after the first")
@click.option("--unique-key", default=None, help="while a task with this key has not ended, print its id instead")
@click.option("--unique-ttl", type=float, default=None, help="seconds the unique key is held at most")
@click.option("--depends-on", multiple=True, metavar="ID", help="wait until this task is done (repeatable)")
@click.option("--concurrency-key", default=None, help="at most --max-concurrency tasks with this key run at once")
@click.option("--max-concurrency", type=int, default=None)
@click.option("--rate-key", default=None, help="at most --rate-limit starts of tasks with this key")
@click.option("--rate-limit", default=None, metavar="N/s|N/m|N/h")
@click.option("--redis", "url", default=None, help="Redis URL")
def enqueue(name, payload, queue, priority, delay, eta, expires, timeout, max_retries, unique_key, unique_ttl,
            depends_on, concurrency_key, max_concurrency, rate_key, rate_limit, url) -> None:
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
                             max_concurrency=max_concurrency, rate_key=rate_key, rate_limit=rate_limit))


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
@click.option("--timeout", type=click.FloatRange(min=0.0), default=None, help="stop after this many seconds")
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
    line = (f"{cut(t['id'])}  {died}  {cut(t['name'])}  attempts={cut(t['attempts'], 20)}  "
            f"{cut(t['reason'])}: {cut(err, 100)}")
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
@click.option("--redis", "url", default=None, help="Redis URL")
def dlq_replay(queue, task_ids, priority, to_queue, url) -> None:
    """Replay dead tasks of QUEUE: the TASK_IDS given, or all of them."""
    prio = None if priority is None else (int(priority) if priority.isdigit() else priority)
    with _producer(url) as p:
        done = p.replay(queue, list(task_ids) or None, priority=prio, to_queue=to_queue)
    skipped = len(task_ids) - len(done) if task_ids else 0
    click.echo(f"replayed {len(done)} task(s) into {to_queue or queue}"
               + (f"; {skipped} id(s) were not in the dead-letter set" if skipped else ""))


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


# ---------------------------------------------------------------- queues and tasks
QUEUE_HEADER = ["QUEUE", "PAUSED", "READY", "SCHEDULED", "RETRYING", "RUNNING", "WAITING", "DEAD", "LATENCY"]


def _latency(s) -> str:
    if not isinstance(s, (int, float)):
        return "-"
    return f"{s:.1f}s" if s < 60 else _duration(s)


def _queue_row(q: dict) -> list[str]:
    def n(key, exact=True):
        return str(q[key]) + ("" if exact else "+")
    return [q["queue"], "yes" if q["paused"] else "no", n("ready"), n("scheduled"),
            n("retrying", q["sched_split_exact"]), n("running"), n("waiting", q["waiting_exact"]), n("dead"),
            _latency(q["latency"])]


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
    if by_name:
        rows = [[cut(n, 60), *(str(c[s]) for s in c)] for n, c in sorted(q["by_name"].items())]
        click.echo("")
        click.echo(_table(["NAME", "QUEUED", "SCHEDULED", "RETRYING", "RUNNING", "WAITING", "DEAD"], rows))
        if not q["by_name_exact"]:
            click.echo("(a sample: the first 200 ids of each list and set)")


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
    deadline first; dead oldest first; waiting oldest enqueued first.  done/expired/canceled are not
    indexed yet (exit 2)."""
    from .inspect import NotIndexed
    from .records import cut

    with _inspector(url) as i:
        try:
            page = i.tasks(queue_name, state, name=name, offset=offset, limit=limit)
        except NotIndexed as e:
            _fail(EXIT_USAGE, str(e))
    if as_json:
        click.echo(_dump(page))
        return
    col = {"scheduled": "DUE", "retrying": "NEXT", "running": "STARTED", "dead": "DIED"}.get(state)
    rows = []
    for t in page["tasks"]:
        when = {"scheduled": t["eta"], "retrying": t["next_attempt_at"], "running": t["started_at"] or t["claimed_at"],
                "dead": t["dead_at"]}.get(state)
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
    """Print a task's record as JSON."""
    with _producer(url) as p:
        click.echo(_dump(p.status(task_id, queue=queue)))


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
