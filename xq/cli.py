"""`xq` command line: a thin click layer over the library.

Exit codes of `xq run`:
    0  stopped: burst finished, or SIGTERM/SIGINT (graceful or, after a second signal, hard)
    1  internal error
    2  usage error: bad option, malformed Redis URL
    3  children failed to boot repeatedly; the supervisor halted instead of respawning forever
    4  MODULE:APP could not be imported, or is not an xq.App
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback

import click
import orjson

from .app import App
from .errors import ConfigError, XQError

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


@click.group()
@click.version_option(package_name="xq")
def main() -> None:
    """xq: a fast, crash-safe task queue on Redis for CPU-heavy work."""


@main.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option("--procs", default="auto", show_default=True, help="child processes: a number or 'auto' (usable cores)")
@click.option("--queues", default=None, help="comma-separated queues, highest priority first [default: the app's]")
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
              help="recycle a child whose RSS exceeds this many MiB")
@click.option("--prefetch", type=click.IntRange(min=0), default=1, show_default=True,
              help="tasks claimed ahead per child, beyond those queued in its ring")
@click.option("--retain-memory/--no-retain-memory", default=True, show_default=True,
              help="children keep memory a task freed for the next task instead of returning it to the OS "
                   "(glibc; much faster for handlers with big buffers, RSS stays at the handler's peak)")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def run(app_ref, procs, queues, url, burst, lease, result_ttl, max_payload, grace, max_tasks_per_child,
        max_memory_per_child, prefetch, retain_memory, log_level) -> None:
    """Run a supervisor and its child processes for MODULE:APP."""
    from .broker import DEFAULT_URL, Broker
    from .keys import check_queue
    from .supervisor import Config, Supervisor

    _setup_logging(log_level)
    n = _procs(procs)
    url = url or os.environ.get("XQ_REDIS_URL") or DEFAULT_URL
    app = load_app(app_ref)
    try:
        qs = [check_queue(q.strip()) for q in queues.split(",")] if queues else app.queues()
        broker = Broker(url)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None
    cfg = Config(queues=qs, procs=n, burst=burst, lease=lease, result_ttl=result_ttl, max_payload=max_payload,
                 grace=grace, max_tasks_per_child=max_tasks_per_child,
                 max_memory_per_child=max_memory_per_child * 1024 * 1024, prefetch=prefetch,
                 retain_memory=retain_memory)
    try:
        code = Supervisor(app, broker, cfg).run()
    except Exception:
        log.exception("supervisor crashed")
        code = 1
    sys.exit(code)


@main.command()
@click.argument("name")
@click.argument("payload", default="null")
@click.option("--queue", default=None, help="queue [default: default]")
@click.option("--priority", default="5", help="0 (highest) .. 9, or critical/high/normal/low")
@click.option("--redis", "url", default=None, help="Redis URL")
def enqueue(name, payload, queue, priority, url) -> None:
    """Enqueue task NAME with a JSON PAYLOAD; prints the task id."""
    from .producer import Producer

    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="PAYLOAD") from None
    prio = int(priority) if priority.isdigit() else priority
    try:
        with Producer(url) as p:
            click.echo(p.enqueue(name, value, queue=queue, priority=prio))
    except XQError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("task_id")
@click.option("--queue", default=None)
@click.option("--redis", "url", default=None, help="Redis URL")
def status(task_id, queue, url) -> None:
    """Print a task's record as JSON."""
    from .producer import Producer

    try:
        with Producer(url) as p:
            click.echo(orjson.dumps(p.status(task_id, queue=queue), option=orjson.OPT_INDENT_2).decode())
    except XQError as e:
        raise click.ClickException(str(e)) from None


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
