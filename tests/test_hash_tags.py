"""Every key a script touches carries the queue's `{Q}` hash tag (so a queue's scripts can run on a Redis
Cluster node): a lifecycle scenario runs under MONITOR, and each command a script issued is checked against
the keys the script was called with."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from urllib.parse import urlparse

import xq
from xqrun import XQRun, wait_for
from test_lifecycle import APP, ran

TAG = re.compile(rb"^xq:(\{[^}]*\})")
ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')


def _monitor(url: str, lines: list, stop: threading.Event, ready: threading.Event) -> None:
    """Raw MONITOR lines: `+<time> [<db> <client>] "CMD" "arg" ...`; a script's commands say `lua`."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(b"MONITOR\r\n")
        buf = b""
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                data = sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                break
            buf += data
            *done, buf = buf.split(b"\r\n")
            for line in done:
                if line == b"+OK":
                    ready.set()
                elif line.startswith(b"+"):
                    lines.append(line)


@contextlib.contextmanager
def monitored(url: str):
    """MONITOR the server while the block runs; yields the list its lines are collected into."""
    lines: list = []
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=_monitor, args=(url, lines, stop, ready), daemon=True)
    t.start()
    assert ready.wait(5)
    try:
        yield lines
    finally:
        stop.set()
        t.join(5)


def check_script_keys(lines: list) -> tuple[int, int]:
    """Check every script call in MONITOR lines: its KEYS share one hash tag, and each key its commands
    touch has that tag.  Returns (scripts seen, keys checked)."""
    scripts_seen, current, checked = 0, None, 0
    for line in lines:
        client = line.split(b"]", 1)[0]
        args = ARG.findall(line)
        if client.endswith(b" lua"):
            assert current is not None, line
            for a in args[1:]:
                m = TAG.match(a)
                if m:
                    assert m.group(1) == current, (line, current)
                    checked += 1
                elif a.startswith(b"xq:"):
                    raise AssertionError(f"a script touched {a!r}, which has no hash tag: {line!r}")
        elif args and args[0].upper() in (b"EVALSHA", b"EVAL"):
            scripts_seen += 1
            nkeys = int(args[2])
            tags = {TAG.match(k).group(1) for k in args[3:3 + nkeys]}
            assert len(tags) == 1, line
            current = tags.pop()
    return scripts_seen, checked


def test_every_key_a_script_touches_shares_the_queue_tag(redis_url, r):
    p = xq.Producer(redis_url)
    with monitored(redis_url) as lines:
        with XQRun(redis_url, "--lease", "1", "--kill-grace", "0.5", app=APP, procs=1, queues="default") as w:
            ok = p.enqueue("flaky", {"ok_at": 2})                     # ENQUEUE, CLAIM, COMPLETE retry+done
            late = p.enqueue("count", 1, delay=0.3)                   # scheduled, moved by CLAIM
            dead = p.enqueue("give_up", None)                         # dead
            timed = p.enqueue("sleep_to", {"s": 30}, timeout=0.3, max_retries=0)  # RELEASE lost/timeout
            assert p.result(ok, timeout=20) == 2 and p.result(late, timeout=20) == 1, w.output()
            wait_for(lambda: p.status(timed)["status"] == "dead", 20, what="timeout")
            running = p.enqueue("cancellable", None)
            wait_for(lambda: f"{running}:1" in ran(r), 20, what="cancellable to start")
            time.sleep(1.0)                                           # RENEW at lease/6
            assert p.cancel(running) == "canceling"                   # CANCEL
            wait_for(lambda: p.status(running)["status"] == "canceled", 20, what="canceled")
            assert p.replay("default", [dead]) == [dead]              # REPLAY
            wait_for(lambda: p.status(dead)["status"] == "dead" and p.status(dead)["replays"] == 1, 20,
                     what="dead again")
            assert p.purge_dead("default") == 2                       # PURGE
    scripts_seen, checked = check_script_keys(lines)
    assert scripts_seen > 10 and checked > 50, (scripts_seen, checked)
