"""The command line is reachable as `python -m xq` too, for environments whose scripts directory is not on PATH."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_xq_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "xq", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "run" in out.stdout and "web" in out.stdout
