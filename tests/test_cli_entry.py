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
