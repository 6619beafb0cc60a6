"""`xq run --burst` gives up on a Redis that does not answer after a bounded connect timeout (exit 6), at
start and in an outage mid-run; `xq run` without --burst keeps retrying.  Real `xq run` subprocesses,
a port where nothing listens and tests/faultproxy.py (refuse, stall)."""

from __future__ import annotations

import time

import pytest

import xq
from helpers import free_port, wait_until
from xqrun import XQRun


def _exit6(run: XQRun, timeout: float = 60) -> str:
    try:
        code = run.wait(timeout)
        out = run.output()
    finally:
        run.close()
    assert code == 6, out
    return out


def test_burst_gives_up_after_connect_timeout_when_nothing_listens():
    run = XQRun(f"redis://127.0.0.1:{free_port()}/0", "--connect-timeout", "1", burst=True, procs=1)
    out = _exit6(run)
    assert "unreachable" in out and "gave up after --connect-timeout 1 s" in out, out
    assert "Traceback" not in out, out


def test_burst_gives_up_when_a_proxy_refuses_every_connection(fault_proxy):
    fault_proxy.refuse()
    run = XQRun(fault_proxy.url(), "--connect-timeout", "1", burst=True, procs=1)
    out = _exit6(run)
    assert "gave up after --connect-timeout 1 s" in out, out


def test_burst_gives_up_when_a_proxy_accepts_but_never_answers(fault_proxy):
    fault_proxy.stall()
    run = XQRun(fault_proxy.url(), "--connect-timeout", "1", burst=True, procs=1)
    out = _exit6(run)
    assert "gave up after --connect-timeout 1 s" in out, out
    fault_proxy.resume()


def test_an_explicit_connect_timeout_bounds_xq_run_without_burst_too():
    run = XQRun(f"redis://127.0.0.1:{free_port()}/0", "--connect-timeout", "1", procs=1)
    out = _exit6(run)
    assert "gave up after --connect-timeout 1 s" in out, out


def test_burst_defaults_to_the_retry_window_of_xq_retry_for():
    run = XQRun(f"redis://127.0.0.1:{free_port()}/0", burst=True, procs=1, env={"XQ_RETRY_FOR": "1"})
    out = _exit6(run)
    assert "gave up after --connect-timeout 1 s" in out, out


def test_burst_gives_up_when_redis_stalls_mid_run(fault_proxy, tmp_path):
    with xq.Producer(fault_proxy.redis.url) as p:
        tid = p.enqueue("nap", {"s": 30, "v": 1})
        run = XQRun(fault_proxy.url(), "--connect-timeout", "2", app="apps.naps:app", burst=True, procs=1,
                    env={"XQ_TEST_NAPS": str(tmp_path / "naps")})
        try:
            wait_until(lambda: p.status(tid)["status"] == "running", 30, what="the nap to start")
            fault_proxy.stall()
        except BaseException:
            run.close()
            raise
        out = _exit6(run)
        assert "has not answered for" in out and "--connect-timeout 2" in out, out
        fault_proxy.resume()
        assert p.status(tid)["status"] == "running"  # its lease expires and any supervisor recovers it


def test_without_burst_xq_run_keeps_retrying():
    run = XQRun(f"redis://127.0.0.1:{free_port()}/0", procs=1, env={"XQ_RETRY_FOR": "0.5"})
    try:
        time.sleep(4)
        assert run.proc.poll() is None, run.output()
    finally:
        run.close()


def test_xq_run_waits_for_a_cluster_whose_seeds_do_not_answer_yet():
    # The Cluster client reads the slot map as it is made: a Cluster not up yet made `xq run` exit 6 at
    # once, where one Redis not up yet is waited for (forever, or --connect-timeout).
    from helpers import free_port

    url = f"redis+cluster://127.0.0.1:{free_port()}/"
    w = XQRun(url, procs=1)
    try:
        time.sleep(3)
        assert w.proc.poll() is None, w.output()
        assert w.output().count("waiting for it") == 1 and "Traceback" not in w.output(), w.output()
    finally:
        w.close()
    t0 = time.monotonic()
    w = XQRun(url, "--connect-timeout", "2", procs=1)
    assert w.wait(30) == 6, w.output()
    assert time.monotonic() - t0 >= 2 and "gave up after --connect-timeout 2 s" in w.output(), w.output()
