"""Periodic tasks: CronEntry and @app.cron units, then the real `xq run` on a scaled clock (tests/apps/cronapp.py).

The end-to-end tests give every supervisor the same ScaledClock through the environment; its `* * * * *`
entry then ticks every 60/rate real seconds.  What fired is read from the supervisors' logs ("fired tick T as
task ID"), what ran from Redis (the handler RPUSHes its task id), the last tick fired from xq:{default}:cron.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import signal
import time

import pytest

import xq
from xq.cron import CronEntry
from xq.keys import queue_keys
from xqrun import XQRun, wait_for

UTC = dt.timezone.utc


def ts(*args) -> float:
    return dt.datetime(*args, tzinfo=UTC).timestamp()


# --------------------------------------------------------------------------------------------- CronEntry


def test_next_after_and_last_at_or_before():
    e = CronEntry("*/5 * * * *", "t", "default")
    assert e.next_after(ts(2024, 1, 1, 0, 3)) == ts(2024, 1, 1, 0, 5)
    assert e.next_after(ts(2024, 1, 1, 0, 5)) == ts(2024, 1, 1, 0, 10)  # strictly after
    assert e.next_after(ts(2024, 1, 1, 0, 5) - 0.001) == ts(2024, 1, 1, 0, 5)
    assert e.next_after(ts(2024, 1, 1, 0, 5) + 0.5) == ts(2024, 1, 1, 0, 10)
    assert e.next_after(ts(2024, 12, 31, 23, 59)) == ts(2025, 1, 1)
    assert e.last_at_or_before(ts(2024, 1, 1, 0, 5)) == ts(2024, 1, 1, 0, 5)  # at: the tick itself
    assert e.last_at_or_before(ts(2024, 1, 1, 0, 7)) == ts(2024, 1, 1, 0, 5)
    assert e.last_at_or_before(ts(2024, 1, 1, 0, 5) + 0.5) == ts(2024, 1, 1, 0, 5)
    assert e.last_at_or_before(ts(2024, 1, 1, 0, 5) - 0.001) == ts(2024, 1, 1, 0, 0)
    assert e.last_at_or_before(ts(2025, 1, 1, 0, 2)) == ts(2025, 1, 1)


def test_ticks_between():
    e = CronEntry("*/5 * * * *", "t", "default")
    assert e.ticks_between(ts(2024, 1, 1), ts(2024, 1, 1, 0, 20)) == 4  # (00:00, 00:20]: 05 10 15 20
    assert e.ticks_between(ts(2024, 1, 1), ts(2024, 1, 1, 0, 19, 59)) == 3
    assert e.ticks_between(ts(2024, 1, 1), ts(2024, 1, 1)) == 0
    assert e.ticks_between(ts(2024, 1, 1, 0, 1), ts(2024, 1, 1, 0, 4)) == 0
    assert e.ticks_between(ts(2024, 1, 1), ts(2024, 1, 2)) == 288
    assert e.ticks_between(ts(2024, 1, 1), ts(2024, 3, 1)) == 10_000  # counting stops at 10,000
    hourly = CronEntry("0 * * * *", "t", "default")
    assert hourly.ticks_between(ts(2024, 1, 1, 0, 30), ts(2024, 1, 1, 3, 0)) == 3


def test_six_field_expressions_count_seconds():
    e = CronEntry("* * * * * */10", "t", "default")  # every 10 seconds: seconds is the 6th field
    assert e.next_after(ts(2024, 1, 1, 0, 0, 3)) == ts(2024, 1, 1, 0, 0, 10)
    assert e.next_after(ts(2024, 1, 1, 0, 0, 50)) == ts(2024, 1, 1, 0, 1, 0)
    assert e.last_at_or_before(ts(2024, 1, 1, 0, 0, 13)) == ts(2024, 1, 1, 0, 0, 10)
    assert e.ticks_between(ts(2024, 1, 1), ts(2024, 1, 1, 0, 1)) == 6
    every = CronEntry("* * * * * *", "t", "default")
    assert every.next_after(ts(2024, 1, 1) + 0.25) == ts(2024, 1, 1, 0, 0, 1)
    assert every.ticks_between(ts(2024, 1, 1), ts(2024, 1, 1, 0, 0, 30)) == 30


@pytest.mark.parametrize("expr", ["61 * * * *", "* * *", "not a cron line", "", "* * * * * * * *"])
def test_invalid_expression_is_a_config_error_naming_it(expr):
    with pytest.raises(xq.ConfigError, match=re.escape(f"invalid cron expression {expr!r} for task 'report'")):
        CronEntry(expr, "report", "default")


def test_invalid_expression_type():
    with pytest.raises(xq.ConfigError, match="invalid cron expression None"):
        CronEntry(None, "report", "default")


def test_time_zone():
    e = CronEntry("0 9 * * *", "t", "default", tz="America/New_York")
    assert e.next_after(ts(2024, 1, 1)) == ts(2024, 1, 1, 14)   # 09:00 EST = 14:00 UTC
    assert e.next_after(ts(2024, 7, 1)) == ts(2024, 7, 1, 13)   # 09:00 EDT = 13:00 UTC
    assert e.last_at_or_before(ts(2024, 1, 2, 13)) == ts(2024, 1, 1, 14)
    assert e.key == "t|0 9 * * *|America/New_York"
    utc = CronEntry("0 9 * * *", "t", "default")
    assert utc.next_after(ts(2024, 1, 1)) == ts(2024, 1, 1, 9)  # UTC unless a zone is named
    assert utc.key == "t|0 9 * * *"
    with pytest.raises(xq.ConfigError, match="unknown time zone 'Mars/Olympus' for cron task 't'"):
        CronEntry("0 9 * * *", "t", "default", tz="Mars/Olympus")


def test_scaled_clock(monkeypatch):
    c = xq.ScaledClock(origin=1000.0, rate=60, real_origin=500.0)
    monkeypatch.setattr(xq.clock.time, "time", lambda: 502.5)
    assert c.time() == 1000.0 + 2.5 * 60
    assert xq.ScaledClock(origin=7.0, rate=1.0, real_origin=502.5).time() == 7.0
    with pytest.raises(ValueError, match="clock rate must be > 0"):
        xq.ScaledClock(origin=0, rate=0)


# ------------------------------------------------------------------------------------------- @app.cron


def test_app_cron_function_with_an_argument_needs_payload():
    app = xq.App()
    with pytest.raises(xq.ConfigError, match=r"cron function .*report takes 1 argument\(s\); give it none, "
                                             r"or pass payload=\.\.\. to @app\.cron"):
        @app.cron("* * * * *")
        def report(day):
            return day
    assert app.crons == []


def test_app_cron_payload_is_passed_to_a_one_argument_function():
    app = xq.App()

    @app.cron("*/5 * * * *", payload={"size": 3}, name="resize", queue="images", priority="high")
    def resize(p):
        return {"got": p}

    (e,) = app.crons
    assert (e.expr, e.task, e.queue, e.priority, e.payload, e.has_payload) == \
        ("*/5 * * * *", "resize", "images", 2, {"size": 3}, True)
    assert e.key == "resize|*/5 * * * *"
    spec = app.tasks["resize"]
    assert spec.queue == "images"
    assert spec.resolve()({"size": 3}) == {"got": {"size": 3}}  # the task's handler passes the payload on
    assert resize(1) == {"got": 1}  # the decorator returns the function itself


def test_app_cron_without_payload_calls_with_no_arguments():
    app = xq.App()
    calls = []

    @app.cron("0 * * * *")
    def hourly():
        calls.append("ran")
        return "ok"

    @app.cron("0 0 * * *", tz="Europe/Paris", max_retries=0)
    def nightly(verbose=False):  # only optional parameters: fine without a payload
        return verbose

    name = f"{hourly.__module__}.{hourly.__qualname__}"
    assert [c.task for c in app.crons] == [name, f"{nightly.__module__}.{nightly.__qualname__}"]
    assert app.crons[0].queue == "default" and app.crons[0].payload is None and not app.crons[0].has_payload
    assert app.tasks[name].resolve()(None) == "ok" and calls == ["ran"]
    assert app.tasks[app.crons[1].task].max_retries == 0
    assert app.crons[1].key.endswith("|Europe/Paris")


def test_app_cron_rejects_bad_options():
    app = xq.App()
    with pytest.raises(xq.ConfigError, match=re.escape("invalid cron expression '* * *' for task 'bad'")):
        app.cron("* * *", name="bad")(lambda: None)
    with pytest.raises(xq.ConfigError, match="invalid priority 12"):
        app.cron("* * * * *", priority=12)
    with pytest.raises(xq.ConfigError, match="unknown time zone 'Nowhere/Land'"):
        app.cron("* * * * *", name="tz", tz="Nowhere/Land")(lambda: None)
    assert app.crons == []


# ---------------------------------------------------------------------------------------- end to end

APP = "apps.cronapp:app"
KEY = "tick|* * * * *"
RUNS = "test:cron:runs"
BASE = 1_800_000_000.0  # a whole minute (2027-01-15T08:00:00Z)
FIRED = re.compile(r"cron tick\|\* \* \* \* \*: fired tick (\S+) as task (\S+)")
MISSED = re.compile(r"cron tick\|\* \* \* \* \*: (\d+) tick\(s\) since (\S+) were missed \(no supervisor ran\); "
                    r"firing once for (\S+)")


def clock_env(clock: xq.ScaledClock) -> dict:
    return {"XQ_CRON_ORIGIN": repr(clock.origin), "XQ_CRON_REAL_ORIGIN": repr(clock.real_origin),
            "XQ_CRON_RATE": repr(clock.rate)}


def iso(s: str) -> float:
    return float(calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ")))


def fired(log: str) -> list[tuple[float, str]]:
    """(tick, task id) of every "fired tick" line of a supervisor log, in order."""
    return [(iso(t), tid) for t, tid in FIRED.findall(log)]


def last_tick(t: float) -> float:
    return (t // 60) * 60


def runs(r) -> list[str]:
    return [x.decode() for x in r.lrange(RUNS, 0, -1)]


def cron_hash(r) -> float | None:
    v = r.hget(queue_keys("default").cron, KEY)
    return None if v is None else int(v) / 1000.0


def stop(*ws: XQRun) -> list[str]:
    """SIGTERM the supervisors (by PID), wait for them to exit 0; returns their logs."""
    for w in ws:
        w.signal(signal.SIGTERM)
    logs = []
    for w in ws:
        code = w.wait(30)
        logs.append(w.output())
        assert code == 0, logs[-1]
    return logs


def test_two_supervisors_fire_each_tick_exactly_once(redis_url, r):
    # rate 60: a scaled minute per real second
    clock = xq.ScaledClock(origin=BASE + 30, rate=60, real_origin=time.time())
    env = clock_env(clock)
    started = clock.time()
    with XQRun(redis_url, app=APP, procs=1, env=env) as w1, XQRun(redis_url, app=APP, procs=1, env=env) as w2:
        wait_for(lambda: r.llen(RUNS) >= 6, timeout=60, what="6 cron runs")
        stopping = clock.time()
        log1, log2 = stop(w1, w2)
        stopped = clock.time()
    f1, f2 = fired(log1), fired(log2)
    allf = sorted(f1 + f2)
    ticks = [t for t, _ in allf]
    assert len(ticks) >= 6, (log1, log2)
    assert len(set(ticks)) == len(ticks), f"a tick fired twice:\n{log1}\n{log2}"
    assert all(b - a == 60 for a, b in zip(ticks, ticks[1:])), f"a tick was skipped: {ticks}"
    assert ticks[0] > started and ticks[-1] <= stopped  # no past tick fired on the first-ever start
    # every tick from the first one fired up to the stop fired (the last may have come as the stop arrived)
    assert ticks[-1] >= last_tick(stopping) - 60, (ticks, stopping)
    assert cron_hash(r) == ticks[-1]
    assert "were missed" not in log1 + log2
    # each fired task ran once, or is still queued (fired as the supervisors stopped)
    done = runs(r)
    ids = [tid for _, tid in allf]
    assert len(set(ids)) == len(ids) and len(set(done)) == len(done)
    queued = {x.decode() for x in r.lrange(queue_keys("default").ready[5], 0, -1)}
    assert set(done) <= set(ids) and set(ids) - set(done) <= queued and len(done) >= len(ids) - 1
    # each run happened at or after the tick it belongs to (on the shared clock)
    tick_of = {tid: t for t, tid in allf}
    ran_at = [float(x) for x in r.lrange("test:cron:clock", 0, -1)]
    assert all(at >= tick_of[tid] for tid, at in zip(done, ran_at))


def test_first_start_does_not_fire_for_past_ticks(redis_url, r):
    # rate 15: a tick every 4 real seconds; the clock starts 15 s (1 real s) past a tick
    clock = xq.ScaledClock(origin=BASE + 15, rate=15, real_origin=time.time())
    at_start = clock.time()
    with XQRun(redis_url, app=APP, procs=1, env=clock_env(clock)) as w:
        first_seen = wait_for(lambda: cron_hash(r), timeout=30, what="the cron entry's record")
        wait_for(lambda: FIRED.search(w.output()), timeout=30, what="the first tick to fire")
        wait_for(lambda: r.llen(RUNS) >= 1, timeout=30, what="the first cron run")
        (log,) = stop(w)
    (t0, tid0), *_ = fired(log)
    assert t0 > at_start, f"fired tick {t0} from before the supervisor started ({at_start}):\n{log}"
    assert t0 == last_tick(at_start) + 60 or t0 == first_seen + 60, log  # the first tick after the start
    assert first_seen >= last_tick(at_start)  # the record starts at the latest past tick, or the first fired
    assert "were missed" not in log
    assert runs(r)[0] == tid0


def test_restart_fires_one_catch_up_for_missed_ticks(redis_url, r):
    clock = xq.ScaledClock(origin=BASE + 30, rate=60, real_origin=time.time())
    with XQRun(redis_url, app=APP, procs=1, env=clock_env(clock)) as w1:
        wait_for(lambda: r.llen(RUNS) >= 2, timeout=30, what="2 cron runs")
        (log1,) = stop(w1)
    f1 = fired(log1)
    last = cron_hash(r)
    assert last == f1[-1][0] and len(f1) >= 2
    time.sleep(0.2)
    assert cron_hash(r) == last  # nothing fires while no supervisor runs

    # Downtime of 4 ticks and a bit: the restarted supervisor's clock reads 3 s past the tick 4 minutes after
    # the last one fired, and runs at 12x (a tick every 5 real seconds), so it starts well inside that tick.
    later = xq.ScaledClock(origin=last + 4 * 60 + 3, rate=12, real_origin=time.time())
    restart = later.time()
    with XQRun(redis_url, app=APP, procs=1, env=clock_env(later)) as w2:
        wait_for(lambda: "xq supervisor" in w2.output(), timeout=30, what="the supervisor to start")
        up = (later.time() - restart) / later.rate  # real seconds it took (for the messages below)
        wait_for(lambda: MISSED.search(w2.output()), timeout=30, what="the missed-ticks log line")
        wait_for(lambda: len(fired(w2.output())) >= 2, timeout=30, what="a regular tick after the catch-up")
        f2 = fired(w2.output())
        wait_for(lambda: {tid for _, tid in f1 + f2} <= set(runs(r)), timeout=30, what="the fired tasks to run")
        (log2,) = stop(w2)

    missed = MISSED.findall(log2)
    assert len(missed) == 1, log2
    n, since, for_tick = int(missed[0][0]), iso(missed[0][1]), iso(missed[0][2])
    assert since == last, log2
    # at the start, once, for the most recent missed tick (the one at or before the start)
    assert for_tick == last + 4 * 60, \
        f"expected one catch-up at start for tick {last + 240} (started {up:.1f} s after the clock):\n{log2}"
    assert n == 3, log2  # the 3 ticks before it were skipped, and the log says so
    (t0, tid0), (t1, _) = f2[:2]
    assert t0 == for_tick and t1 == for_tick + 60, log2  # then the schedule goes on as usual
    ticks = [t for t, _ in f1 + f2]
    assert not [t for t in ticks if last < t < for_tick], "a missed tick fired on its own"
    assert len(set(ticks)) == len(ticks)
    done = runs(r)
    assert tid0 in done and len(done) == len(set(done))
