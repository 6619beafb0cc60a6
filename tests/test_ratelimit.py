"""Exact rate limits: at most N starts in ANY window of the period (a sliding log in the CLAIM script), across
all supervisors; tasks over the limit are deferred to the earliest instant they may start.  Real
redis-server, real `xq run` (tests/apps/rates.py), two supervisors.

A start is the claim: the record's `claimed` field, Redis TIME (ms) of the CLAIM that started the task, the
instant the limiter decides on.  The handlers also record Redis TIME when they run; that follows the claim by
the delivery to a child, which varies, so the window check is made on the claims."""

from __future__ import annotations

import time
from collections import Counter

import orjson

import xq
from xq import scripts
from xq.broker import Broker
from xq.keys import queue_keys
from xqrun import XQRun, wait_for

APP = "apps.rates:app"
QK = queue_keys("default")


def claims_ms(r, ids) -> list[int]:
    return sorted(int(r.hget(QK.task(t), "claimed")) for t in ids)


def busiest_window(starts: list[int], period_ms: int) -> int:
    """The most starts any window [s, s + period) holds, over every s (sliding, not fixed windows)."""
    starts = sorted(starts)
    best, lo = 0, 0
    for hi, t in enumerate(starts):
        while t - starts[lo] >= period_ms:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_busiest_window_checks_every_window():
    assert busiest_window([0, 999, 1000, 1998], 1000) == 3  # [999, 1999): no fixed window holds 3
    assert busiest_window([0, 999, 1999], 1000) == 2             # 999 and 1999 are a full period apart
    assert busiest_window([0, 1, 2, 1000, 1001], 1000) == 3
    assert busiest_window([500, 900, 1100, 1400], 1000) == 4
    assert busiest_window([], 1000) == 0


class Deferrals:
    """Counts, per task id, the `scheduled` events CLAIM published (one per deferral by a rate limit)."""

    def __init__(self, r):
        self.ps = r.pubsub(ignore_subscribe_messages=True)
        self.ps.subscribe(QK.events)
        wait_for(lambda: r.pubsub_numsub(QK.events)[0][1] >= 1, 10, what="the events subscription")
        self.count: Counter = Counter()

    def drain(self) -> Counter:
        deadline, quiet = time.monotonic() + 10, 0
        while time.monotonic() < deadline and quiet < 3:  # (the subscribe confirmation also reads as None)
            m = self.ps.get_message(timeout=0.2)
            quiet = quiet + 1 if m is None else 0
            if m is None:
                continue
            for ev in orjson.loads(m["data"]):
                if ev["state"] == "scheduled":
                    self.count[ev["id"]] += 1
        self.ps.close()
        return self.count


def run_all(redis_url, r, ids, timeout=60):
    p = xq.Producer(redis_url)
    with XQRun(redis_url, app=APP, procs=2), XQRun(redis_url, app=APP, procs=2):
        wait_for(lambda: all(p.status(t)["status"] == "done" for t in ids), timeout,
                 what="the rate-limited tasks")
    assert all(p.status(t)["attempts"] == 1 for t in ids)  # deferred, never failed or retried
    ran = Counter(x.split()[0].decode() for x in r.lrange("test:starts", 0, -1))
    assert all(ran[t] == 1 for t in ids)


def test_per_key_limit_holds_in_every_window_across_two_supervisors(redis_url, r):
    # defect 4: with fixed windows, 5 start at once and 5 more at the next window's edge, < 1 s later
    p = xq.Producer(redis_url)
    d = Deferrals(r)
    ids = p.enqueue_many("hit", [None] * 20, rate_key="api", rate_limit="5/s")
    free = p.enqueue_many("hit", [None] * 5)
    run_all(redis_url, r, ids + free)
    starts = claims_ms(r, ids)
    assert busiest_window(starts, 1000) <= 5, starts
    assert starts[-1] - starts[0] >= 3000  # 20 starts at 5/s: at least 3 periods after the first
    deferred = d.drain()
    assert sum(deferred[t] > 0 for t in ids) == 15  # each task over the limit was deferred, none spun on
    assert max(deferred[t] for t in ids) <= 2, deferred  # to the instant it may start: at most a re-deferral
    assert not any(deferred[t] for t in free)
    assert not r.exists(QK.rate_plan("api"))  # every promise was taken up
    wait_for(lambda: not r.exists(QK.rate_log("api")), 5, what="the start log to expire a period on")


def test_per_name_and_per_key_limits_together(redis_url, r):
    p = xq.Producer(redis_url)
    d = Deferrals(r)
    plain = p.enqueue_many("named_hit", [None] * 8)                             # name limit 4/s
    keyed = p.enqueue_many("named_hit", [None] * 6, rate_key="slow", rate_limit="2/s")  # and key limit 2/s
    run_all(redis_url, r, plain + keyed)
    assert busiest_window(claims_ms(r, plain + keyed), 1000) <= 4
    assert busiest_window(claims_ms(r, keyed), 1000) <= 2
    deferred = d.drain()
    assert max(deferred.values()) <= 3, deferred


def _claim(r, want=100):
    """One CLAIM of the default queue, as a supervisor sends it: returns (claimed ids, now)."""
    keys = Broker.claim_keys([QK])
    tail = Broker.claim_tail([QK])
    out = r.eval(scripts.CLAIM, len(keys), *keys, want, "w1", 60_000, 1 << 20, 0, *tail)
    tasks = out[0]
    return [tasks[i + 1].decode() for i in range(0, len(tasks), 7)], int(out[4])


def test_a_burst_is_deferred_to_the_earliest_instants_spread_one_ms_apart(redis_url, r):
    p = xq.Producer(redis_url)
    ids = p.enqueue_many("hit", [None] * 12, rate_key="api", rate_limit="4/s")
    got, now = _claim(r)
    assert got == ids[:4]
    due = {t: int(r.hget(QK.task(t), "due")) - now for t in ids[4:]}
    assert [due[t] for t in ids[4:]] == [1000, 1001, 1002, 1003, 2000, 2001, 2002, 2003]
    assert all(r.hget(QK.task(t), "state") == b"scheduled" for t in ids[4:])
    assert {k.decode(): int(v) - now for k, v in r.zrange(QK.rate_plan("api"), 0, -1, withscores=True)} == due
    assert r.zcard(QK.rate_log("api")) == 4 and 10_000 < r.pttl(QK.rate_plan("api")) <= 22_003
    # a task arriving later goes after every promise made, not into the first window with room
    late = p.enqueue("hit", None, rate_key="api", rate_limit="4/s")
    got, _ = _claim(r)
    assert got == [] and int(r.hget(QK.task(late), "due")) - now == 3000
    # another key is not held back by this one
    other = p.enqueue("hit", None, rate_key="other", rate_limit="4/s")
    assert _claim(r)[0] == [other]


def test_a_deferred_task_claimed_late_keeps_its_place(redis_url, r):
    # its promise was at or before now, but the starts before it ran late: it goes to the instant the
    # window frees, not behind every later promise, and the window is never overfull
    p = xq.Producer(redis_url)
    tid = p.enqueue("hit", None, rate_key="api", rate_limit="2/s")
    sec, us = r.time()
    now = sec * 1000 + us // 1000
    r.zadd(QK.rate_log("api"), {"a:1": now - 300, "b:1": now - 200})
    r.zadd(QK.rate_plan("api"), {tid: now - 400, "later1": now + 5000, "later2": now + 5001})
    got, t = _claim(r)
    assert got == []
    assert int(r.hget(QK.task(tid), "due")) == now - 300 + 1000  # when a:1 leaves the window
    assert r.zscore(QK.rate_plan("api"), tid) == now - 400  # its place in line, ahead of later promises
    # at that instant it goes first: a task promised later waits while it is in line
    other = p.enqueue("hit", None, rate_key="api", rate_limit="2/s")
    assert _claim(r)[0] == [] and int(r.hget(QK.task(other), "due")) > now + 5001


def test_tasks_giving_one_key_different_limits_each_get_their_own(redis_url, r):
    # not a sensible set-up, but each task is held to the limit it was enqueued with, in one claim too
    p = xq.Producer(redis_url)
    two = p.enqueue_many("hit", [None] * 3, rate_key="api", rate_limit="2/s")
    four = p.enqueue_many("hit", [None] * 3, rate_key="api", rate_limit="4/s")
    got, now = _claim(r)
    assert got == two[:2] + four[:2]
    assert int(r.hget(QK.task(two[2]), "due")) - now == 1000 and int(r.hget(QK.task(four[2]), "due")) > now
