"""`xq demo`: the README's main job, end to end on a real Redis and a real supervisor: thumbnails of generated
JPEGs by the built-in image processor (xq.media, media.image.thumbnail)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import click
import orjson


EXIT_REDIS_UNREACHABLE = 6  # as xq run's


def _unreachable(url: str) -> int:
    """0 if the Redis the user named answers; else say why at once (the producer would retry for its retry
    window, 30 s, before giving up: a long silence for a first try) and return the exit code: 2 for a bad
    URL, EXIT_REDIS_UNREACHABLE for a Redis that does not answer."""
    from .conn import make_client, redacted
    from .errors import ConfigError

    try:
        client = make_client(url, socket_timeout=3, socket_connect_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
        return 0
    except ConfigError as e:
        click.echo(f"xq demo: {e}", err=True)
        return 2
    except Exception as e:  # noqa: BLE001 - any failure to reach it is reported the same way
        click.echo(f"xq demo: Redis at {redacted(url)} does not answer ({type(e).__name__}: {e}); start it, or run "
                   f"xq demo without --redis and $XQ_REDIS_URL: it then uses a local Redis or starts a private "
                   f"redis-server", err=True)
    return EXIT_REDIS_UNREACHABLE


def run_demo(*, tasks: int, procs: str, url: str | None, data_dir: str | None) -> int:
    try:
        import PIL  # noqa: F401
    except ImportError:
        click.echo("xq demo needs Pillow: pip install 'xq-queue[images]'", err=True)
        return 1
    from .conn import redacted
    from .embedded import resolve_url
    from .examples.thumbs import make_images
    from .keys import queue_keys
    from .producer import TERMINAL, Producer

    url, private = resolve_url(url, data_dir=data_dir, log=lambda m: click.echo(f"xq demo: {m}"))
    code = _unreachable(url) if private is None else 0
    if code:
        return code
    try:
        producer = Producer(url)
        queue = "demo"
        images = make_images(24)
        click.echo(f"xq demo: {tasks} thumbnail tasks of 640x480 JPEGs ({sum(map(len, images)) // len(images) // 1024}"
                   f" KiB each, sent as raw bytes) on {redacted(url)}")
        t0 = time.perf_counter()
        ids = producer.enqueue_many("media.image.thumbnail", [images[i % len(images)] for i in range(tasks)], queue=queue)
        t_enq = time.perf_counter() - t0
        click.echo(f"xq demo: enqueued {len(ids)} tasks in {t_enq * 1000:.0f} ms ({len(ids) / t_enq:,.0f}/s)")
        pubsub = producer.broker.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(queue_keys(queue).events)
        want = set(ids)
        cmd = [sys.executable, "-m", "xq.cli", "run", "xq.media:app", "--procs", procs,
               "--queues", queue, "--redis", url, "--burst", "--result-ttl", "3600", "--log-level", "warning"]
        t1 = time.perf_counter()
        sup = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        done = failed = 0
        last = t1
        with click.progressbar(length=len(ids), label="thumbnails", show_pos=True) as bar:
            while want and sup.poll() is None:
                msg = pubsub.get_message(timeout=0.5)
                if not msg:
                    continue
                step = 0
                for ev in orjson.loads(msg["data"]):
                    if ev["id"] in want and ev["state"] in TERMINAL:
                        want.discard(ev["id"])
                        step += 1
                        if ev["state"] == "done":
                            done += 1
                        else:
                            failed += 1
                if step:
                    last = time.perf_counter()
                    bar.update(step)
        elapsed = last - t1
        code = sup.wait(timeout=120)
        pubsub.close()
        thumb = producer.result(ids[0], timeout=10)
        click.echo(f"xq demo: {done} done, {failed} dead/expired/canceled, {len(want)} missing in {elapsed:.2f} s: "
                   f"{done / elapsed:,.0f} thumbnails/s with --procs {procs}; first thumbnail is a "
                   f"{len(thumb)}-byte JPEG; supervisor exited with code {code}")
        producer.close()
        return 0 if (code == 0 and not want and not failed) else 1
    finally:
        if private is not None:
            private.stop()
            click.echo("xq demo: stopped the private redis-server")
