"""Runs the real `xq run` as a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import psutil

TESTS = os.path.dirname(os.path.abspath(__file__))


class XQRun:
    """One supervisor process running tests/apps/<app>; its log goes to a temp file."""

    def __init__(self, url: str, *args: str, app: str = "apps.basic:app", procs: int = 2, burst: bool = False,
                 queues: str | None = None, pure: bool | None = None, env: dict | None = None,
                 preexec_fn=None, wrap: list[str] | None = None):
        # wrap: a command prefix that execs the rest in place, e.g. `ip netns exec NS` (tests/netns.py)
        cmd = [*(wrap or []), sys.executable, "-m", "xq.cli", "run", app, "--redis", url, "--procs", str(procs), *args]
        if burst:
            cmd.append("--burst")
        if queues:
            cmd += ["--queues", queues]
        e = {**os.environ, "XQ_TEST_REDIS": url, "PYTHONUNBUFFERED": "1"}
        if pure is not None:
            e["XQ_PURE"] = "1" if pure else "0"
        e.update(env or {})
        self.log = tempfile.NamedTemporaryFile(prefix="xq-run-", suffix=".log", delete=False)
        # preexec_fn runs in the new process before exec, e.g. to set an RLIMIT_AS that bounds a test's harm
        self.proc = subprocess.Popen(cmd, cwd=TESTS, env=e, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=preexec_fn)
        self.pid = self.proc.pid

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"xq run did not exit within {timeout} s; log:\n{self.output()}") from None

    def output(self) -> str:
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def children(self) -> list[psutil.Process]:
        try:
            return [c for c in psutil.Process(self.pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the supervisor (by PID) and reap it."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def close(self) -> None:
        kids = self.children()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        for c in kids:  # only processes this run started
            try:
                c.kill()
            except psutil.NoSuchProcess:
                pass
        self.log.close()
        os.unlink(self.log.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wait_for(pred, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    """Poll pred() until truthy (bounded); returns its value or raises AssertionError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
