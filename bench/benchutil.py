"""Helpers shared by the benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))


def xq_run(url: str, *args: str, procs: str = "auto") -> subprocess.Popen:
    """Start the real `xq run bench's app` as a subprocess."""
    return subprocess.Popen([sys.executable, "-m", "xq.cli", "run", "benchapp:app", "--redis", url,
                             "--procs", procs, "--log-level", "warning", *args], cwd=BENCH)


def drain_window(r, queue: str, ids) -> tuple[float, float]:
    """(first claim, last finish) in seconds, from the task records (Redis TIME and child clocks)."""
    from xq.keys import queue_keys

    qk = queue_keys(queue)
    first, last = float("inf"), 0.0
    for i in range(0, len(ids), 5000):
        pipe = r.pipeline(transaction=False)
        for tid in ids[i:i + 5000]:
            pipe.hmget(qk.task(tid), "claimed", "fin", "state")
        for claimed, fin, state in pipe.execute():
            assert state == b"done", state
            first = min(first, int(claimed) / 1000)
            last = max(last, int(fin) / 1000)
    return first, last
