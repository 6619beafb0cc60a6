"""A Processor.setup() that raises is a boot failure: `xq run` halts with exit code 3, naming the processor
and the exception, and the tasks it claimed go back untouched (real `xq run`, tests/apps/setupfail.py)."""

from __future__ import annotations

import pytest

import xq
from xq.app import setup_processors
from xqrun import XQRun


def test_failing_setup_halts_xq_run_with_exit_3_and_the_task_stays_queued(redis_url):
    with xq.Producer(redis_url) as p:
        tid = p.enqueue("thumb", {"img": 1}, queue="setupq")
        run = XQRun(redis_url, app="apps.setupfail:app", procs=2, queues="setupq")
        try:
            code = run.wait(60)
            out = run.output()
        finally:
            run.close()
        assert code == 3, out
        assert "apps.setupfail.Thumbnailer.setup() (task 'thumb') raised FileNotFoundError: model.bin is missing" \
            in out, out
        assert "failed to boot 5 times in a row" in out and "exit code 3" in out, out
        assert "should not be set up" not in out, out
        st = p.status(tid, queue="setupq")
        assert st["status"] == "queued", st
        assert st["attempts"] == 0, st
        assert p.queue("setupq")["ready"] == 1


def test_setup_runs_at_start_only_for_served_queues_and_once():
    calls = []
    app = xq.App()

    @app.task("a", queue="qa")
    class A(xq.Processor):
        def setup(self):
            calls.append("a")

        def process(self, payload):
            return payload

    @app.task("b", queue="qb")
    class B(xq.Processor):
        def setup(self):
            calls.append("b")

        def process(self, payload):
            return payload

    assert setup_processors(app, ["qa"]) == 1
    assert calls == ["a"]
    app.tasks["a"].resolve()(1)
    assert calls == ["a"]  # not again
    assert app.tasks["b"].resolve()(2) == 2  # another queue's processor: set up on first use
    assert calls == ["a", "b"]


def test_a_registered_processor_instance_is_set_up_too():
    calls = []

    class P(xq.Processor):
        name = "p"
        max_retries = 7

        def setup(self):
            calls.append("setup")

        def process(self, payload):
            return payload

    app = xq.App()
    app.register(P())
    assert app.tasks["p"].max_retries == 7
    assert setup_processors(app, ["default"]) == 1
    assert calls == ["setup"]
    assert app.tasks["p"].resolve()(3) == 3 and calls == ["setup"]
