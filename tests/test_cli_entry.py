"""The command line is reachable as `python -m xq` too, for environments whose scripts directory is not on PATH."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_xq_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "xq", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "run" in out.stdout and "web" in out.stdout


def test_the_readmes_main_job_xq_demo_runs_end_to_end(redis_url, r):
    """The README's first command: `xq demo` makes its thumbnails with the built-in processor through a real
    supervisor and exits 0 (here on the test's Redis, with fewer tasks)."""
    out = subprocess.run([sys.executable, "-m", "xq", "demo", "--tasks", "60", "--procs", "2", "--redis", redis_url],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "60 done, 0 dead/expired/canceled, 0 missing" in out.stdout
    assert "JPEG; supervisor exited with code 0" in out.stdout


def test_xq_demo_on_a_redis_that_does_not_answer_says_so_at_once(tmp_path):
    """A --redis that refuses connections used to print the demo's banner, retry for 30 s, then exit 6: now it
    names the URL and the way out at once.  A URL that cannot be a Redis URL is a usage error (2)."""
    from helpers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    out = subprocess.run([sys.executable, "-m", "xq", "demo", "--tasks", "10", "--redis", url],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 6, out.stdout + out.stderr
    assert f"Redis at {url} does not answer" in out.stderr and "without --redis" in out.stderr
    assert "thumbnail tasks" not in out.stdout
    out = subprocess.run([sys.executable, "-m", "xq", "demo", "--redis", "redis://127.0.0.1:notaport/0"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 2 and "invalid Redis URL" in out.stderr, out.stdout + out.stderr
