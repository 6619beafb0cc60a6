"""Middleware hooks and progress reporting in the child's Runner (no Redis: the Runner is the child's core)."""

from __future__ import annotations

import logging
import mmap
import os

import orjson
import pytest

import xq
from xq._impl import fast
from xq.child import Runner
from xq.middleware import LoggingMiddleware, MetricsMiddleware, Middleware


class Rec(Middleware):
    def __init__(self, tag, calls, fail=None):
        self.tag, self.calls, self.fail = tag, calls, fail

    def _hook(self, hook, detail):
        self.calls.append((self.tag, hook, detail))
        if self.fail == hook:
            raise RuntimeError(f"{self.tag} broke in {hook}")

    def before_task(self, ctx, payload):
        self._hook("before", payload)

    def after_task(self, ctx, result):
        self._hook("after", result)

    def on_error(self, ctx, exc):
        self._hook("error", type(exc).__name__)

    def on_enqueue(self, name, queue, ids, options):
        self._hook("enqueue", (name, queue, tuple(ids), options))


def head(seq, name, tid=b"01TASK"):
    return fast.encode_task_head(seq, 1, b"j", 0, tid, name)


def make_app(*mws):
    app = xq.App(middleware=list(mws))

    @app.task("ok")
    def ok(p):
        return p * 2

    @app.task("bad", retry_on=(KeyError,))
    def bad(p):
        raise ValueError("nope")

    @app.task("again")
    def again(p):
        raise xq.Retry(delay=1)

    return app


def test_hooks_run_in_order_and_after_hooks_in_reverse():
    calls = []
    app = make_app(Rec("a", calls))
    app.add_middleware(Rec("b", calls))
    r = Runner(app, ["default"])
    seq, status, rct, body, err = r.run(head(1, b"ok"), b"21")
    assert (status, body) == (fast.ST_DONE, b"42")
    assert calls == [("a", "before", 21), ("b", "before", 21), ("b", "after", 42), ("a", "after", 42)]
    calls.clear()
    assert r.run(head(2, b"bad"), b"1")[1] == fast.ST_FAILED
    assert calls == [("a", "before", 1), ("b", "before", 1), ("b", "error", "ValueError"), ("a", "error", "ValueError")]
    calls.clear()
    assert r.run(head(3, b"again"), b"1")[1] == fast.ST_RETRY
    assert calls[-2:] == [("b", "error", "Retry"), ("a", "error", "Retry")]


def test_a_failing_before_hook_fails_the_attempt_naming_the_middleware_and_skips_the_handler():
    calls = []
    app = make_app(Rec("a", calls), Rec("b", calls, fail="before"), Rec("c", calls))
    ran = []
    app.tasks["ok"].handler = lambda p: ran.append(p)
    seq, status, rct, body, err = Runner(app, ["default"]).run(head(1, b"ok"), b"1")
    assert status == fast.ST_RETRY  # the task's retry policy applies to the hook's error
    assert err.startswith(b"middleware Rec.before_task failed: RuntimeError: b broke in before")
    assert ran == []
    # only the hooks that were entered unwind
    assert calls == [("a", "before", 1), ("b", "before", 1), ("a", "error", "RuntimeError")]


def test_failing_after_and_error_hooks_are_logged_and_do_not_change_the_outcome(caplog):
    calls = []
    app = make_app(Rec("a", calls, fail="after"), Rec("b", calls, fail="error"))
    r = Runner(app, ["default"])
    with caplog.at_level(logging.ERROR, logger="xq"):
        assert r.run(head(1, b"ok"), b"2")[1:4] == (fast.ST_DONE, b"j", b"4")
        assert r.run(head(2, b"bad"), b"2")[1] == fast.ST_FAILED
    assert "middleware Rec.after_task failed" in caplog.text and "middleware Rec.on_error failed" in caplog.text


def test_enqueue_hooks_run_in_order_and_errors_are_logged(caplog):
    calls = []
    app = make_app(Rec("a", calls, fail="enqueue"), Rec("b", calls))
    with caplog.at_level(logging.ERROR, logger="xq"):
        app.run_enqueue_hooks("ok", "default", ["id1", "id2"], {"priority": 2})
    assert [c[0] for c in calls] == ["a", "b"] and calls[1][2] == ("ok", "default", ("id1", "id2"), {"priority": 2})
    assert "Rec.on_enqueue failed" in caplog.text


def test_bad_middleware_is_a_config_error():
    with pytest.raises(xq.ConfigError, match="is a class"):
        xq.App(middleware=[LoggingMiddleware])
    with pytest.raises(xq.ConfigError, match="invalid middleware 'x'"):
        xq.App().add_middleware("x")


def test_builtin_logging_and_metrics_use_the_same_hooks(caplog):
    metrics = MetricsMiddleware()
    app = make_app(LoggingMiddleware(), metrics)
    r = Runner(app, ["default"])
    with caplog.at_level(logging.INFO, logger="xq"):
        r.run(head(1, b"ok"), b"1")
        r.run(head(2, b"ok"), b"2")
        r.run(head(3, b"bad"), b"3")
    app.run_enqueue_hooks("ok", "default", ["a", "b", "c"], {})
    snap = metrics.snapshot()
    assert {k: snap["ok"][k] for k in ("started", "succeeded", "failed", "enqueued")} == \
        {"started": 2, "succeeded": 2, "failed": 0, "enqueued": 3}
    assert {k: snap["bad"][k] for k in ("started", "succeeded", "failed")} == {"started": 1, "succeeded": 0, "failed": 1}
    assert snap["ok"]["max_seconds"] <= snap["ok"]["total_seconds"]
    assert "task 01TASK (ok) attempt 1 started" in caplog.text and "(ok) done in" in caplog.text
    assert "(bad) failed after" in caplog.text and "ValueError: nope" in caplog.text


def test_prometheus_export_needs_its_package():
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        with pytest.raises(xq.ConfigError, match="prometheus_client"):
            MetricsMiddleware(prometheus=True)
    else:
        import prometheus_client as pc
        reg = pc.CollectorRegistry()
        m = MetricsMiddleware(prometheus=True, registry=reg)
        m.on_enqueue("t", "default", ["a"], {})
        assert reg.get_sample_value("xq_tasks_enqueued_total", {"task": "t"}) == 1


# ---------------------------------------------------------------------------------------------- progress
def test_progress_validation_names_the_bad_value():
    ctx = xq.TaskContext("id", "n", "default", 1)
    ctx.progress(0)
    ctx.progress(100.0, "done")  # outside a worker: validated, nothing sent
    for bad in (-1, 100.5, float("nan"), True, "50", None):
        with pytest.raises(xq.ConfigError, match=f"invalid progress {bad!r}"):
            ctx.progress(bad)
    with pytest.raises(xq.ConfigError, match="invalid progress message 5"):
        ctx.progress(5, 5)


def test_progress_frames_precede_the_result_and_a_tight_loop_is_throttled():
    m = mmap.mmap(-1, fast.Ring.size_for(1 << 16))
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    ring = fast.Ring(m, efd)
    ring.reset()
    app = xq.App()

    @app.task("spin")
    def spin(n):
        for i in range(n):
            xq.current().progress(i * 100 / (n - 1), "x" * 2000 if i == n - 1 else f"step {i}")
        return n

    r = Runner(app, ["default"], outring=ring)
    seq, status, rct, body, err = r.run(head(7, b"spin"), b"5000")
    assert status == fast.ST_DONE
    frames = ring.read_many(10000)
    assert 1 <= len(frames) < 100
    heads = [fast.decode_result_head(h) for h, _ in frames]
    assert all(h[0] == 7 and h[1] == fast.ST_PROGRESS for h in heads)
    last = orjson.loads(frames[-1][1])
    assert last["pct"] == 100.0 and last["msg"] == "x" * 1000  # messages are cut to 1000 characters
    assert orjson.loads(b"{" + heads[-1][5] + b"}") == {"progress": 100.0, "message": "x" * 1000}
    os.close(efd)


# ---------------------------------------------------------------- registration refuses look-alike hooks
@pytest.mark.parametrize("method,hook", [
    ("before", "before_task"), ("after", "after_task"), ("error", "on_error"), ("on_task", "before_task"),
    ("before_tsak", "before_task"), ("onerror", "on_error"), ("after_task_", "after_task"),
    ("on_failure", "on_error"), ("on_success", "after_task"), ("enqueue", "on_enqueue"),
    ("on_enqueued", "on_enqueue"),
])
def test_a_method_that_looks_like_a_hook_is_refused_naming_the_hook(method, hook):
    cls = type("Typo", (Middleware,), {method: lambda self, *a: None})
    with pytest.raises(xq.ConfigError, match=rf"Typo defines {method}\(\).*did you mean {hook}\("):
        xq.App(middleware=[cls()])
    app = xq.App()
    with pytest.raises(xq.ConfigError, match=rf"did you mean {hook}\("):
        app.add_middleware(cls())
    assert app.middleware == []


def test_private_helpers_and_unrelated_public_methods_are_accepted():
    class Fine(Middleware):
        def _before(self):
            pass

        def snapshot(self):
            return {}

        def report(self, x):
            return x

        def before_task(self, ctx, payload):
            self._before()

    app = xq.App(middleware=[Fine(), LoggingMiddleware(), MetricsMiddleware()])
    assert len(app.middleware) == 3


def test_a_look_alike_inherited_from_a_user_base_is_refused_too():
    class Base(Middleware):
        def after(self, ctx, result):
            pass

    class Sub(Base):
        pass

    with pytest.raises(xq.ConfigError, match=r"after\(\).*after_task"):
        xq.App(middleware=[Sub()])


def test_a_hook_with_the_wrong_signature_is_refused():
    class Short(Middleware):
        def before_task(self, ctx):
            pass

    with pytest.raises(xq.ConfigError, match=r"Short.before_task\(ctx\) cannot be called as before_task\(ctx, payload\)"):
        xq.App(middleware=[Short()])

    class Loose(Middleware):
        def on_enqueue(self, *args, **kwargs):
            pass

        def on_error(self, ctx, exc, extra=None):
            pass

    xq.App(middleware=[Loose()])
