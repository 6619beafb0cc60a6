"""The per-minute stats history (issue 11, "Stats history"), end to end: a real `xq run --burst` drains
tasks of two names (tests/apps/statsapp.py), some failing once, some dead, some whose child crashes (the
RELEASE path), and the history must count each exactly, per name and for the queue; `xq stats` prints it;
`--no-stats` writes nothing.  The minute arithmetic is tested at explicit times, without sleeping."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pytest

import xq
from xq import stats
from xq.broker import Broker
from xq.errors import ConfigError
from xq.inspect import Inspector
from xq.keys import queue_keys
from helpers import keys_of
from xqrun import TESTS, XQRun

pytestmark = pytest.mark.topologies("single", "cluster")

QK = queue_keys("default")
N_OK, N_ONCE, N_ALWAYS, N_CRASH = 30, 10, 5, 2


def cli(redis_url, *args):
    env = {**os.environ, "XQ_TEST_REDIS": redis_url}
    return subprocess.run([sys.executable, "-m", "xq.cli", *args, "--redis", redis_url], cwd=TESTS, env=env,
                          capture_output=True, text=True, timeout=60)


def drain(redis_url, *args, pure=None):
    with xq.Producer(redis_url) as p:
        p.enqueue_many("ok", list(range(N_OK)))
        p.enqueue_many("flaky", ["once"] * N_ONCE + ["always"] * N_ALWAYS + ["crash"] * N_CRASH + ["fine"])
    with XQRun(redis_url, *args, app="apps.statsapp:app", procs=2, burst=True, pure=pure) as w:
        assert w.wait(60) == 0, w.output()


def totals(rows):
    return {k: sum(r[k] for r in rows) for k in ("done", "failed", "retried", "dead")}


@pytest.mark.parametrize("pure", [False, True], ids=["cython", "pure"])
def test_drain_counts_exactly_per_name_and_queue(redis_url, r, pure):
    drain(redis_url, pure=pure)
    with Inspector(redis_url) as i:
        # 5 minutes back: the drain may have crossed a minute boundary, the sums are exact all the same
        before = time.time()
        ok = i.history("default", name="ok", minutes=5)
        flaky = i.history("default", name="flaky", minutes=5)
        whole = i.history("default", minutes=5)
        after = time.time()
        assert totals(ok) == {"done": N_OK, "failed": 0, "retried": 0, "dead": 0}
        # once: one retried attempt then done; always (max_retries=1): retried then dead; crash: a lost
        # attempt (RELEASE), retried at once, then done; "fine": done
        assert totals(flaky) == {"done": N_ONCE + N_CRASH + 1, "failed": N_ONCE + 2 * N_ALWAYS + N_CRASH,
                                 "retried": N_ONCE + N_ALWAYS + N_CRASH, "dead": N_ALWAYS}
        assert totals(whole) == {k: totals(ok)[k] + totals(flaky)[k] for k in totals(ok)}
        assert sum(m["runtime"] for m in whole) > 0
        assert abs(sum(m["runtime"] for m in whole) - sum(m["runtime"] for m in ok + flaky)) < 1e-3
        assert i.history_names("default") == ["flaky", "ok"]
    with xq.Producer(redis_url) as p:  # the delegate
        assert totals(p.history(name="ok", minutes=5))["done"] == N_OK
    with Inspector(redis_url) as i:
        # the shape of the contract: oldest first, one per minute, the last one the current minute
        assert len(whole) == 5 and [m["minute"] for m in whole] == sorted(m["minute"] for m in whole)
        assert whole[-1]["minute"] in (int(before // 60) * 60, int(after // 60) * 60)
        assert set(whole[0]) >= {"minute", "done", "failed", "retried", "runtime"}
        q = i.queue("default", by_name=True)
        # rolling windows: all of it within the last hour; within the last minute unless a minute passed
        assert (q["done_1h"], q["failed_1h"]) == (N_OK + N_ONCE + N_CRASH + 1, N_ONCE + 2 * N_ALWAYS + N_CRASH)
        assert 0 < q["done_1m"] <= q["done_1h"]
        assert q["by_name"]["ok"]["done_1h"] == N_OK and q["by_name"]["flaky"]["failed_1h"] == 22
        assert q["by_name"]["ok"]["queued"] == 0
    # every key written expires (25 h), the names index included
    keys = keys_of(r, "xq:{default}:st*")
    assert len(keys) >= 4  # queue + 2 names (per hour touched) + the names index
    for k in keys:
        assert 0 < r.ttl(k) <= stats.TTL, k
        if r.type(k) == b"string":  # written by the supervisor and by the scripts alike: full length at once
            assert r.strlen(k) == 60 * stats.RECORD


def test_stats_cli_table_json_and_queue_views(redis_url):
    drain(redis_url)
    out = cli(redis_url, "stats", "default", "--minutes", "5")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["MINUTE", "DONE", "FAILED", "RETRIED", "DEAD", "RUNTIME_S", "AVG_MS"]
    rows = [ln.split() for ln in lines[1:-1]]
    assert 1 <= len(rows) <= 2  # empty minutes are skipped
    assert sum(int(row[2]) for row in rows) == N_OK + N_ONCE + N_CRASH + 1
    assert lines[-1].startswith(f"queue default: {N_OK + N_ONCE + N_CRASH + 1} done, 22 failed in the last 5")
    out = cli(redis_url, "stats", "default", "--name", "ok", "--minutes", "3", "--all", "--json")
    rows = orjson.loads(out.stdout)
    assert len(rows) == 3 and sum(m["done"] for m in rows) == N_OK
    out = cli(redis_url, "stats", "default", "--minutes", "3", "--all")
    assert len(out.stdout.splitlines()) == 1 + 3 + 1  # every minute shown
    out = cli(redis_url, "stats", "no such queue")
    assert out.returncode != 0 and "invalid queue name" in out.stderr
    out = cli(redis_url, "stats", "default", "--minutes", "2000")
    assert out.returncode != 0 and "2000" in out.stderr
    out = cli(redis_url, "queues")
    assert out.stdout.splitlines()[0].split()[-4:] == ["DONE/1M", "FAILED/1M", "DONE/1H", "FAILED/1H"]
    assert out.stdout.splitlines()[1].split()[-2:] == [str(N_OK + N_ONCE + N_CRASH + 1), "22"]
    out = cli(redis_url, "queue", "show", "default", "--by-name")
    assert f"{N_OK + N_ONCE + N_CRASH + 1} in the last hour" in out.stdout
    ok_row = next(ln.split() for ln in out.stdout.splitlines() if ln.startswith("ok "))
    assert ok_row[-2:] == [str(N_OK), "0"]


def test_no_stats_writes_nothing(redis_url, r):
    drain(redis_url, "--no-stats")
    assert keys_of(r, "xq:{default}:st*") == []
    with Inspector(redis_url) as i:
        assert totals(i.history("default", minutes=5)) == {"done": 0, "failed": 0, "retried": 0, "dead": 0}
        assert i.queue("default")["done_1h"] == 0


def test_minute_boundaries_at_explicit_times(redis_url, r):
    """Writes the way the supervisor does (Broker.pack_stats) and the scripts do, at chosen instants: the
    last second of an hour and the first of the next land in different keys and records."""
    b = Broker(redis_url)
    t0 = 1_800_000_000 // 3600 * 3600 + 3600  # an hour's start
    seen = set()

    def fresh(key):
        if key in seen:
            return False
        seen.add(key)
        return True

    for at, rows in (((t0 - 1) * 1000, {b"a": [3, 0.5]}), (t0 * 1000, {b"a": [1, 0.25], b"b": [2, 1.0]}),
                     ((t0 + 61) * 1000 + 999, {b"b": [5, 0.001]})):
        packed, n = b.pack_stats(QK, at, rows, fresh)
        b.at("default").send_packed(packed)  # the raw path, to the master of the queue's slot on a Cluster
        replies = [b.at("default").read_reply() for _ in range(n)]
        assert not [x for x in replies if isinstance(x, Exception)]
    assert stats.locate((t0 - 1) * 1000) == (t0 // 3600 - 1, 59 * stats.RECORD_BITS)
    # made at full length at the first write (stats.SIZE_OP), not grown (and over-allocated) minute by minute
    assert r.strlen(QK.stats(t0 // 3600, "b")) == 60 * stats.RECORD
    assert r.memory_usage(QK.stats(t0 // 3600, "b"), samples=0) < 1500
    with Inspector(redis_url) as i:
        got = i.history("default", minutes=4, now=t0 + 61.5)
        assert [m["minute"] for m in got] == [t0 - 120, t0 - 60, t0, t0 + 60]
        assert [(m["done"], m["runtime"]) for m in got] == [(0, 0), (3, 0.5), (3, 1.25), (5, 0.001)]
        got = i.history("default", name="b", minutes=2, now=t0 + 60)
        assert [(m["done"], m["runtime"]) for m in got] == [(2, 1.0), (5, 0.001)]
        assert i.history("default", name="a", minutes=1, now=t0 + 3600 * 30) == [
            {"minute": t0 + 3600 * 30, "done": 0, "failed": 0, "retried": 0, "dead": 0, "runtime": 0.0}]
        assert i.history_names("default", now=t0) == ["a", "b"]
        assert i.history_names("default", now=t0 + 3600 * 26) == []  # gone quiet 25 h ago
        with pytest.raises(ConfigError, match="minutes"):
            i.history("default", minutes=0)
        with pytest.raises(ConfigError, match="task name"):
            i.history("default", name="")
    # EXPIRE and the names index come once per key per writer (seen), not with every write
    packed, n = b.pack_stats(QK, t0 * 1000, {b"a": [1, 0.1]}, fresh)
    assert n == 2 and packed.count(b"BITFIELD") == 2
    b.close()


def test_rolling_windows_are_estimated_from_whole_minutes():
    m = [stats.Minute(60 * k, 10 * k, 1, 0, 0.0) for k in range(62)]  # minute k: 10k done, 1 failed
    # at 15 s into the current minute (61): all of it, plus 3/4 of the minute before
    assert stats.rolling(m, 61 * 60 + 15, 1) == (610 + round(600 * 0.75), 1 + round(0.75))
    assert stats.rolling(m, 61 * 60, 60) == (sum(10 * k for k in range(2, 62)) + 10, 61)


def test_lease_expired_attempts_count_as_failed_and_stale_reports_count_nothing(redis_url, r):
    """RELEASE 'expired' (a supervisor lost) counts a retried then a dead attempt; a late COMPLETE of the
    recovered attempt is refused by the fence before anything is counted."""
    b = Broker(redis_url)
    with xq.Producer(redis_url) as p:
        tid = p.enqueue("job", 1, max_retries=1).encode()
    claim = lambda: b.run("claim", Broker.claim_keys([QK]),  # noqa: E731
                          [1, "A", 1, 1 << 20, 60, *Broker.claim_tail([QK])])[0]
    for want in ("retrying", "dead"):
        assert claim()[1] == tid
        time.sleep(0.01)  # the 1 ms lease runs out
        b.release(QK, "expired", [], error="recovered by test", ttl=60, stats=True)
        state = r.hget(QK.task(tid.decode()), "state").decode()
        if state == "queued":  # retried at once (delay 0): back in its list
            state = "retrying"
        assert state == want
    late = b.run("complete", [QK.leases, QK.sched, QK.dead, QK.stats_names],
                 [QK.task_prefix, QK.events, 60, "", "default", "A", tid, 2, "failed", "boom", "", 1, 2])
    assert late[0] == 0 and late[1]  # refused
    with Inspector(redis_url) as i:
        for name in ("job", None):
            assert totals(i.history("default", name=name, minutes=2)) == {"done": 0, "failed": 2, "retried": 1,
                                                                          "dead": 1}
    b.close()
