"""The embedded default: a private `redis-server` that xq starts when no Redis was named or found.

`EmbeddedRedis` runs redis-server from PATH on a loopback port with AOF on (appendfsync everysec, no RDB
snapshots), so what was acknowledged more than about a second ago survives a crash or a restart of the
server. `resolve_url()` is the rule every entry point uses: an explicit URL, else $XQ_REDIS_URL, else a
Redis answering at DEFAULT_URL, else a private server (which the caller must stop).

This module imports nothing from the rest of xq, so it works (and its tests run) on its own.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

DEFAULT_URL = "redis://127.0.0.1:6379/0"
HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
NOT_FOUND = ("redis-server not found on PATH: install it (e.g. apt-get install redis-server) "
             "or point xq at a server with --redis URL / $XQ_REDIS_URL")

log = logging.getLogger("xq")

_running: set["EmbeddedRedis"] = set()  # started and not yet stopped: the atexit safety net stops these


class EmbeddedRedisError(RuntimeError):
    """A private redis-server could not be found, started or reached; the message carries its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _client(url: str | None = None, *, port: int | None = None, timeout: float = 0.5) -> redis.Redis:
    """A one-shot client without redis-py's default retries (they would add seconds of backoff to every probe
    of a port where nothing listens, and to SHUTDOWN, whose dropped connection is the expected answer)."""
    kw = dict(socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    if url is not None:
        return redis.Redis.from_url(url, **kw)
    return redis.Redis(host=HOST, port=port, **kw)


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class EmbeddedRedis:
    """A private redis-server on 127.0.0.1 with AOF on; data in `data_dir` (a fresh temp dir if not given).

    The port is fixed at construction (a free one unless given), so `url` is known before `start()` and stays
    the same across `stop()`/`start()`/`restart()`/`kill()`. A temp dir this object created is removed by
    `stop()` (not by `restart()` or `kill()`); with a given `data_dir`, the data stays across stop/start.
    """

    def __init__(self, port: int | None = None, data_dir: str | os.PathLike | None = None):
        self._auto_port = port is None
        self._port = int(port) if port is not None else free_port()
        self._own_dir = data_dir is None
        # our own temp dir is made at start() (so a failed or never-made start leaves nothing behind)
        self._data_dir: str | None = os.fspath(data_dir) if data_dir is not None else None
        self._proc: subprocess.Popen | None = None
        self._started_once = False

    # -- properties -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self._port}/0"

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def data_dir(self) -> str | None:
        """The data directory (None before the first start() when it is to be a fresh temp dir)."""
        return self._data_dir

    @property
    def log_path(self) -> str | None:
        return os.path.join(self._data_dir, "redis.log") if self._data_dir else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of redis.log and of the server's own stdout/stderr (startup errors land there)."""
        if not self._data_dir:
            return "(no log output)"
        parts = [_tail(self.log_path, lines), _tail(os.path.join(self._data_dir, "redis.out"), lines)]
        return "\n".join(p for p in parts if p) or "(no log output)"

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> "EmbeddedRedis":
        """Start redis-server and wait (at most 10 s) until it answers PING with its AOF loaded."""
        if self.running:
            return self
        exe = shutil.which("redis-server")
        if exe is None:
            raise EmbeddedRedisError(NOT_FOUND)
        if self._data_dir is None:
            self._data_dir = tempfile.mkdtemp(prefix="xq-redis-")
        os.makedirs(self._data_dir, exist_ok=True)
        for attempt in range(3):
            try:
                self._spawn(exe)
                break
            except EmbeddedRedisError:
                # The port picked at construction was taken by someone else in the meantime: pick another,
                # but only before the first successful start (afterwards the URL is known to the caller).
                if (self._auto_port and not self._started_once and attempt < 2
                        and "Address already in use" in self.log_tail(50)):
                    self._port = free_port()
                    continue
                raise
        self._started_once = True
        _running.add(self)
        return self

    def _spawn(self, exe: str) -> None:
        cmd = [exe, "--port", str(self._port), "--bind", HOST, "--protected-mode", "yes",
               "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
               "--dir", self._data_dir, "--daemonize", "no", "--logfile", self.log_path]
        with open(os.path.join(self._data_dir, "redis.out"), "ab") as out:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          close_fds=True)
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        client = _client(port=self._port)
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    code = self._proc.returncode
                    self._proc = None
                    raise EmbeddedRedisError(
                        f"redis-server on port {self._port} exited with code {code} during startup "
                        f"(data dir {self._data_dir}); log tail:\n{self.log_tail()}")
                try:
                    if client.ping():
                        return
                except (redis.RedisError, OSError) as e:  # not listening yet, or still loading the AOF
                    last = e
                time.sleep(0.02)
        finally:
            client.close()
        self._kill_proc()
        raise EmbeddedRedisError(
            f"redis-server on port {self._port} did not answer PING within {START_TIMEOUT:.0f} s "
            f"(last error: {last}; data dir {self._data_dir}); log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        """SHUTDOWN (flushes the AOF), wait at most 10 s, then SIGKILL by PID; remove the temp dir if ours."""
        self._stop_process()
        if self._own_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None  # a later start() makes a fresh one

    def _stop_process(self) -> None:
        _running.discard(self)
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            client = _client(port=self._port, timeout=2)
            try:
                client.shutdown()
            except (redis.RedisError, OSError):
                pass  # the connection drops as the server exits; a real failure shows up as the wait timing out
            finally:
                client.close()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("redis-server (pid %d) did not exit within %.0f s of SHUTDOWN; killing it",
                            proc.pid, STOP_TIMEOUT)
        self._kill_proc()

    def _kill_proc(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error("redis-server (pid %d) did not die after SIGKILL", proc.pid)

    def kill(self) -> None:
        """SIGKILL the server by PID (a crash, for fault tests); data stays, `start()` recovers from the AOF.
        (It stays registered for the atexit safety net, which still removes a temp dir of ours.)"""
        self._kill_proc()

    def restart(self) -> "EmbeddedRedis":
        """Stop (clean SHUTDOWN) and start again on the same port and data dir; AOF data survives."""
        self._stop_process()
        return self.start()

    # -- context manager --------------------------------------------------------------------------------------
    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<EmbeddedRedis {self.url} {state} dir={self._data_dir}>"


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def _answers(url: str) -> bool:
    client = _client(url)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False
    finally:
        client.close()


def resolve_url(url: str | None, *, data_dir: str | os.PathLike | None = None,
                log: Callable[[str], object] | None = None) -> tuple[str, EmbeddedRedis | None]:
    """The Redis to use: `url`, else $XQ_REDIS_URL, else DEFAULT_URL if a Redis answers there, else a private
    redis-server (started here; returned so the caller can stop it)."""
    if url:
        return url, None
    env = os.environ.get("XQ_REDIS_URL")
    if env:
        return env, None
    if _answers(DEFAULT_URL):
        return DEFAULT_URL, None
    server = EmbeddedRedis(data_dir=data_dir).start()
    msg = (f"no Redis answered at {DEFAULT_URL}; started a private redis-server on port {server.port} "
           f"(AOF on, data in {server.data_dir})")
    if log is not None:
        log(msg)
    else:
        logging.getLogger("xq").warning(msg)
    return server.url, server
