"""`xq run --metrics-port`: Prometheus /metrics and the /healthz, /readyz probes of a real supervisor
(xq/supervisor/metrics.py), scraped over HTTP and parsed with prometheus-client's own parser."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

import xq
from xqrun import TESTS, XQRun, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:  # not listening yet
        return 0, str(e)


def _scrape(port: int) -> dict:
    """{(sample name, sorted labels): value} of one scrape."""
    code, text = _get(port, "/metrics")
    assert code == 200, text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _v(m: dict, metric: str, **labels) -> float | None:
    return m.get((metric, tuple(sorted(labels.items()))))


def test_metrics_count_the_tasks_run_and_probes_answer(redis_url):
    port = _free_port()
    with XQRun(redis_url, "--metrics-port", str(port), procs=2, queues="default") as run, \
            xq.Producer(redis_url) as p:
        wait_for(lambda: _get(port, "/readyz")[0] == 200, 20, what="/readyz 200")
        assert _get(port, "/healthz")[0] == 200
        ok = p.enqueue_many("echo", list(range(30)), queue="default")
        bad = p.enqueue_many("boom", list(range(4)), queue="default")
        crash = p.enqueue("crash_once", 1, queue="default")  # attempt 1 kills its child: a 'lost' RELEASE
        assert [p.result(i, timeout=30) for i in ok] == list(range(30))
        assert p.result(crash, timeout=30) == "survived"

        def counted():
            m = _scrape(port)
            return m if _v(m, "xq_tasks_total", queue="default", name="echo", outcome="done") == 30 and \
                _v(m, "xq_tasks_total", queue="default", name="boom", outcome="failed") == 4 and \
                _v(m, "xq_tasks_total", queue="default", name="crash_once", outcome="done") == 1 else None

        m = wait_for(counted, 20, interval=0.2, what="counters to reach 30 done + 4 failed")
        assert len(bad) == 4
        assert _v(m, "xq_tasks_total", queue="default", name="crash_once", outcome="lost") == 1
        assert not [k for k in m if k[0] == "xq_tasks_total" and dict(k[1])["name"] not in ("echo", "boom", "crash_once")]
        assert _v(m, "xq_task_run_seconds_count", queue="default", name="echo") == 30
        assert _v(m, "xq_task_run_seconds_count", queue="default", name="boom") == 4
        assert _v(m, "xq_task_wait_seconds_count", queue="default", name="echo") == 30  # first attempts, xq ids
        assert _v(m, "xq_task_run_seconds_bucket", queue="default", name="echo", le="+Inf") == 30
        assert _v(m, "xq_claim_batch_size_sum") == 36  # each attempt claimed once
        assert _v(m, "xq_claim_batch_size_count") >= 1
        assert _v(m, "xq_children", state="total") == 2
        assert _v(m, "xq_children_configured") == 2
        assert _v(m, "xq_up") == 1
        assert _v(m, "xq_redis_errors_total") == 0
        # the depth timer runs at start: the queue's gauges exist; drained now, nothing ready or running
        for state in ("ready", "scheduled", "running", "dead"):
            assert _v(m, "xq_queue_depth", queue="default", state=state) is not None, state
        assert _v(m, "xq_queue_latency_seconds", queue="default") is not None
        assert _get(port, "/healthz")[0] == 200
        assert _get(port, "/nope")[0] == 404
        # every series the Grafana dashboard queries is served
        with open(os.path.join(TESTS, "..", "docs", "grafana-xq.json")) as f:
            used = set(re.findall(r"\bxq_[a-z_]+", f.read())) - {"xq_overview"}
        served = {k[0] for k in m}
        assert used and used <= served, used - served


def test_queue_depth_and_latency_of_a_waiting_queue(redis_url):
    # Tasks enqueued to a queue nobody else drains, while the only child is busy: the timer sees them.
    port = _free_port()
    with xq.Producer(redis_url) as p:
        p.enqueue("sleep", {"s": 3.0}, queue="default")
        p.enqueue_many("echo", list(range(5)), queue="default")
        with XQRun(redis_url, "--metrics-port", str(port), "--prefetch", "0", procs=1, queues="default"):
            wait_for(lambda: _get(port, "/readyz")[0] == 200, 20, what="/readyz 200")
            m = wait_for(lambda: (m := _scrape(port)) and (_v(m, "xq_queue_depth", queue="default", state="ready")
                                                           or 0) >= 1 and m, 20, interval=0.2, what="depth read")
            assert _v(m, "xq_queue_depth", queue="default", state="running") >= 1
            assert _v(m, "xq_queue_latency_seconds", queue="default") > 0


def test_readyz_flips_while_redis_is_away(fault_proxy):
    port = _free_port()
    with XQRun(fault_proxy.url(), "--metrics-port", str(port), procs=1, queues="default") as run, \
            xq.Producer(fault_proxy.redis.url) as p:
        wait_for(lambda: _get(port, "/readyz")[0] == 200, 20, what="/readyz 200")
        fault_proxy.refuse(True)
        code, text = wait_for(lambda: (r := _get(port, "/readyz"))[0] == 503 and r, 15, interval=0.1,
                              what="/readyz 503 while Redis is away")
        assert "redis unreachable" in text
        assert _get(port, "/healthz")[0] == 200  # the loop keeps turning: alive, only not ready
        fault_proxy.refuse(False)
        wait_for(lambda: _get(port, "/readyz")[0] == 200, 20, interval=0.1, what="/readyz 200 again")
        assert p.result(p.enqueue("echo", 5, queue="default"), timeout=20) == 5
        m = _scrape(port)
        assert _v(m, "xq_redis_errors_total") >= 1
        assert _v(m, "xq_redis_reconnects_total") >= 1
        assert run.proc.poll() is None


def test_metrics_port_in_use_is_a_clear_error(redis_url):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 0))
        s.listen()
        out = subprocess.run([sys.executable, "-m", "xq.cli", "run", "apps.basic:app", "--redis", redis_url,
                              "--procs", "1", "--metrics-port", str(s.getsockname()[1])], cwd=TESTS,
                             capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert "cannot listen" in out.stderr


def test_metrics_port_without_prometheus_client_is_a_clear_error(redis_url, tmp_path):
    hide = tmp_path / "prometheus_client"
    hide.mkdir()
    (hide / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "xq.cli", "run", "apps.basic:app", "--redis", redis_url,
                          "--procs", "1", "--metrics-port", str(_free_port())], cwd=TESTS, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert "pip install 'xq-queue[metrics]'" in out.stderr


def test_results_redis_refused_are_not_counted_as_done(fault_proxy):
    # Redis came back empty after an outage (its data lost): the results the supervisor kept meanwhile are
    # refused (their records are gone) and were counted as done all the same, in the metrics and in the
    # worker's own counts that `xq workers` shows.
    import redis as redis_

    real = fault_proxy.redis.url
    r = redis_.Redis.from_url(real)
    port = _free_port()
    p = xq.Producer(real)
    try:
        with XQRun(fault_proxy.url(), "--metrics-port", str(port), procs=2, env={"XQ_TEST_REDIS": real}) as run:
            wait_for(lambda: _get(port, "/readyz")[0] == 200, 20, what="/readyz 200")
            ids = p.enqueue_many("sleep", [{"s": 1.0}] * 2)
            wait_for(lambda: r.llen("test:started") == 2, 20, what="both tasks to start: " + run.output())
            fault_proxy.refuse(True)
            r.flushall()  # as a Redis restarted without its data
            time.sleep(1.5)  # both end meanwhile: their results are kept
            fault_proxy.refuse(False)
            wait_for(lambda: run.output().count("its record is gone") == 2, 20, what="the refusals: " + run.output())
            assert p.result(p.enqueue("echo", 7), timeout=20) == 7
            wait_for(lambda: _v(_scrape(port), "xq_tasks_total", queue="default", name="echo", outcome="done") == 1,
                     10, what="the echo counted")
            m = _scrape(port)
            assert _v(m, "xq_tasks_total", queue="default", name="sleep", outcome="done") in (None, 0), m
            assert all(p.status(i)["status"] != "done" for i in ids if _exists(p, i))
    finally:
        p.close()
        r.close()


def _exists(p, tid) -> bool:
    try:
        p.status(tid)
        return True
    except xq.UnknownTask:
        return False
