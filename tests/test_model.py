"""A model-based test (Hypothesis RuleBasedStateMachine) of xq against a real redis-server (AOF on,
appendfsync always) and real `xq run` supervisors (tests/apps/model.py).

Rules enqueue tasks (plain, delayed, unique, with dependencies, with a concurrency key) whose payload says
whether the handler succeeds, fails or fails until an attempt, and bursts of quick tasks behind a slow one;
cancel; replay a dead task; SIGKILL a child; cancel a claimed task, then SIGKILL its supervisor's children;
SIGKILL a supervisor and start another; restart Redis (SIGKILL, then start on its AOF); pause a supervisor
(SIGSTOP) past its lease so another recovers its tasks; or let time pass.  Handlers record their starts in
Redis, so a start after a cancel the supervisor could have heard of is caught too.  After every step the invariants
are checked on one atomic snapshot of Redis (a Lua script), and at the end every task must be final and
agree with the model.

Defaults: XQ_MODEL_EXAMPLES=12 examples of at most XQ_MODEL_STEPS=20 steps, no shrinking
(XQ_MODEL_SHRINK=1 enables it).  The numbers run are printed (pytest -s shows them).
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field

import redis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from conftest import EmbeddedRedis, _require_redis_server
from xqrun import XQRun, wait_for

import xq

EXAMPLES = int(os.environ.get("XQ_MODEL_EXAMPLES", "12"))
STEPS = int(os.environ.get("XQ_MODEL_STEPS", "20"))
SHRINK = os.environ.get("XQ_MODEL_SHRINK", "") == "1"
LEASE = 1.0
SUPERVISORS = 2
FINAL = {"done", "dead", "expired", "canceled"}
LIMITS = {"c1": 1, "c2": 2}           # concurrency key -> max_concurrency (one limit per key)
UNIQUE = ["u1", "u2"]
LATE_MS = 500                         # a handler starting this long after its cancel was recorded is a bug,
                                      # unless a fault (a pause, a Redis restart) kept the news from its supervisor
ACTIONS = ["enqueue"] * 5 + ["cancel"] * 2 + ["fault"] * 3 + ["replay", "wait"]
Q = "default"
BASE = "xq:{default}:"

# One atomic snapshot of everything the invariants look at.  KEYS: none; ARGV[1]: the queue's base,
# ARGV[2..]: the ids the model accepted.
SNAPSHOT = """
local base = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local recs = {}
for i = 2, #ARGV do
  recs[#recs + 1] = redis.call('HMGET', base .. 't:' .. ARGV[i], 'state', 'fin', 'uk', 'lim', 'att', 'reason',
                               'deps', 'cxl', 'replays')
end
local ready = {}
for p = 0, 9 do ready[#ready + 1] = redis.call('LRANGE', base .. 'ready:' .. p, 0, -1) end
local parked, slots = {}, {}
for _, k in ipairs({'c1', 'c2'}) do
  parked[#parked + 1] = redis.call('LRANGE', base .. 'cw:' .. k, 0, -1)
  slots[#slots + 1] = redis.call('ZRANGE', base .. 'c:' .. k, 0, -1, 'WITHSCORES')
end
local uniq = {}
for _, k in ipairs({'u1', 'u2'}) do uniq[#uniq + 1] = redis.call('GET', base .. 'u:' .. k) or '' end
return {now, recs, ready, redis.call('ZRANGE', base .. 'sched', 0, -1),
        redis.call('ZRANGE', base .. 'leases', 0, -1, 'WITHSCORES'), redis.call('ZRANGE', base .. 'dead', 0, -1),
        parked, slots, uniq}
"""


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def _pairs(flat):
    return {_s(flat[i]): float(flat[i + 1]) for i in range(0, len(flat), 2)}


class Harness:
    """What outlives one example: the redis-server, the supervisors, a client and a producer; and counts."""

    def __init__(self, data_dir):
        self.redis = EmbeddedRedis(data_dir=data_dir)
        self.redis.start()
        self.url = self.redis.url
        self.always()
        self.r = redis.Redis.from_url(self.url, socket_timeout=10)
        self.producer = xq.Producer(self.url, result_ttl=0, retry_for=20)
        self.sups: list[XQRun] = []
        self.retired: list[XQRun] = []
        self.examples = self.steps = self.tasks = 0
        self.counts: dict[str, int] = {}
        self.findings: list[str] = []
        self.blind: list[tuple] = []            # (from, to) ms: supervisors could not hear of cancels

    def blind_during(self, t0: int, t1: int) -> bool:
        return any(a <= t1 and t0 <= b for a, b in self.blind)

    def always(self):
        c = redis.Redis.from_url(self.url, socket_timeout=10)
        try:
            c.config_set("appendfsync", "always")
        finally:
            c.close()

    def start_supervisor(self) -> XQRun:
        s = XQRun(self.url, "--lease", str(LEASE), "--result-ttl", "0", "--kill-grace", "0.5", "--grace", "2",
                  app="apps.model:app", procs=2, queues=Q, env={"XQ_TEST_REDIS": self.url})
        self.sups.append(s)
        return s

    def ensure_supervisors(self):
        for s in [s for s in self.sups if s.proc.poll() is not None]:
            self.sups.remove(s)
            self.retired.append(s)
        while len(self.sups) < SUPERVISORS:
            self.start_supervisor()
        for s in self.sups:
            wait_for(lambda: len(s.children()) >= 2, 30, what=f"supervisor {s.pid}'s children\n{s.output()}")

    def count(self, what: str):
        self.counts[what] = self.counts.get(what, 0) + 1

    def close(self):
        self.producer.close()
        self.r.close()
        for s in self.sups + self.retired:
            s.close()
        self.redis.stop()


H: Harness | None = None


@dataclass
class Task:
    id: str
    mode: str                      # ok | fail | retry
    maxr: int
    ok_at: int = 1
    uk: str | None = None
    ck: str | None = None
    deps: list = field(default_factory=list)
    cancel: str | None = None      # what Producer.cancel answered, the first time it changed something
    execs_at_cancel: int = 0
    replays: int = 0


def pick(data, seq):
    """One element of seq (None if empty).  The draw is the same whatever seq holds: seq depends on what
    the real system did (which tasks ended, which children live), and Hypothesis needs draws that do not."""
    i = data.draw(st.integers(0, 1 << 16))
    return seq[i % len(seq)] if seq else None


class XQModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        H.ensure_supervisors()
        H.r.flushall()
        H.examples += 1
        self.tasks: dict[str, Task] = {}
        self.final_seen: dict[str, tuple] = {}     # id -> (state, fin) when first seen final
        self.dead_ids: list[str] = []
        self.history: list[str] = []               # actions so far, for failure messages

    # ------------------------------------------------------------------ enqueue
    def _accept(self, t: Task):
        self.tasks[t.id] = t
        H.tasks += 1

    # One rule picks the action, by fixed weights: with separate rules Hypothesis' swarm testing switches
    # whole rules off per example, and a dozen examples left some (cancel, enqueue) barely exercised.
    @rule(data=st.data(), action=st.sampled_from(ACTIONS))
    def act(self, data, action):
        getattr(self, action)(data)

    def enqueue(self, data):
        kind = data.draw(st.sampled_from(["plain", "plain", "unique", "dependent", "limited", "burst"]))
        self.history.append(f"enqueue {kind}")
        if kind == "plain":
            self.enqueue_plain(**data.draw(st.fixed_dictionaries(dict(
                mode=st.sampled_from(["ok", "ok", "fail", "retry"]), s=st.sampled_from([0, 0.05, 0.3, 1.0]),
                delay=st.sampled_from([None, None, 0.2, 1.0]), maxr=st.integers(0, 2), pri=st.integers(0, 9)))))
        elif kind == "unique":
            self.enqueue_unique(data.draw(st.sampled_from(UNIQUE)), data.draw(st.sampled_from([0.05, 0.5])))
        elif kind == "dependent":
            self.enqueue_dependent(data, data.draw(st.sampled_from(["ok", "fail"])))
        elif kind == "burst":
            # quick tasks (the ring depth grows past one), then a slow task and quick ones behind it: they
            # wait in a child's ring, where a cancel, then the child's death, may find them
            quick = H.producer.enqueue_many("m", [{"mode": "ok", "s": 0}] * 20, queue=Q, max_retries=10)
            ids = H.producer.enqueue_many("m", [{"mode": "ok", "s": 1.5}] + [{"mode": "ok", "s": 0}] * 6,
                                          queue=Q, max_retries=10)
            for tid in quick + ids:
                self._accept(Task(tid, "ok", 10))
            H.count("enqueue burst")
            if data.draw(st.booleans()):
                time.sleep(0.2)
                self.cancel_then_kill(data)
        elif kind == "limited":
            self.enqueue_limited(data.draw(st.sampled_from(sorted(LIMITS))), data.draw(st.sampled_from([0.05, 0.4])),
                                 data.draw(st.integers(1, 3)))

    def enqueue_plain(self, mode, s, delay, maxr, pri):
        if mode != "fail":
            maxr = 10
        payload = {"mode": mode, "s": s, "ok_at": 2}
        tid = H.producer.enqueue("m", payload, queue=Q, priority=pri, max_retries=maxr, delay=delay)
        self._accept(Task(tid, mode, maxr, ok_at=2 if mode == "retry" else 1))
        H.count("enqueue" if delay is None else "enqueue delayed")

    def enqueue_unique(self, key, s):
        tid = H.producer.enqueue("m", {"mode": "ok", "s": s}, queue=Q, max_retries=10, unique_key=key)
        if tid in self.tasks:
            assert self.tasks[tid].uk == key, f"unique key {key} answered with {tid}, which holds {self.tasks[tid].uk}"
            H.count("enqueue unique (deduplicated)")
        else:
            self._accept(Task(tid, "ok", 10, uk=key))
            H.count("enqueue unique")

    def enqueue_dependent(self, data, mode):
        ids = sorted(self.tasks)
        deps = sorted({pick(data, ids) for _ in range(data.draw(st.integers(1, 2)))} - {None})
        if not deps:
            return
        maxr = 10 if mode == "ok" else 0
        tid = H.producer.enqueue_many("m", [{"mode": mode, "s": 0.05}], queue=Q, max_retries=maxr,
                                      depends_on=deps)[0]
        self._accept(Task(tid, mode, maxr, deps=deps))
        H.count("enqueue dependent")

    def enqueue_limited(self, key, s, n):
        ids = H.producer.enqueue_many("m", [{"mode": "ok", "s": s}] * n, queue=Q, max_retries=10,
                                      concurrency_key=key, max_concurrency=LIMITS[key])
        for tid in ids:
            self._accept(Task(tid, "ok", 10, ck=key))
        H.count("enqueue limited")

    # ------------------------------------------------------------------ cancel, replay
    def cancel(self, data):
        open_ = sorted(tid for tid in self.tasks if tid not in self.final_seen)
        tid = pick(data, open_ or sorted(self.tasks))
        if tid is None:
            return
        t = self.tasks[tid]
        outcome = H.producer.cancel(t.id, queue=Q)
        self.history.append(f"cancel {tid} -> {outcome}")
        H.count(f"cancel -> {outcome}")
        if outcome != "finished" and t.cancel is None:
            t.cancel = outcome
            t.execs_at_cancel = int(H.r.hget("model:execs", t.id) or 0)

    def replay(self, data):
        tid = pick(data, self.dead_ids)
        if tid is None:
            return
        self.history.append(f"replay {tid}")
        assert H.producer.replay(Q, [tid]) == [tid], f"replay of dead task {tid} did not replay it"
        self.dead_ids.remove(tid)
        self.final_seen.pop(tid, None)
        self.tasks[tid].replays += 1
        H.count("replay")

    # ------------------------------------------------------------------ faults
    def fault(self, data):
        kind = data.draw(st.sampled_from(["child", "child", "supervisor", "redis", "pause", "cancel_kill"]))
        self.history.append(f"fault {kind}")
        if kind == "child":
            self.kill_child(data)
        elif kind == "supervisor":
            self.kill_supervisor(data)
        elif kind == "redis":
            self.restart_redis()
        elif kind == "cancel_kill":
            self.cancel_then_kill(data)
        else:
            self.pause_supervisor(data)

    def kill_child(self, data):
        sup = pick(data, H.sups)
        kid = pick(data, sup.children())
        if kid is not None:
            os.kill(kid.pid, signal.SIGKILL)
            H.count("SIGKILL child")

    def cancel_then_kill(self, data):
        """Cancel a task claimed but not started (maybe waiting in a child's ring), then SIGKILL the
        children of the supervisor holding it: it must not run anyway."""
        claimed = []
        for tid in sorted(self.tasks):
            if tid not in self.final_seen and not H.r.hexists("model:execs", tid):
                if H.r.hget(BASE + "t:" + tid, "state") == b"running":
                    claimed.append(tid)
        tid = pick(data, claimed)
        if tid is None:
            return
        worker = H.r.hget(BASE + "t:" + tid, "worker")
        outcome = H.producer.cancel(tid, queue=Q)
        self.history.append(f"cancel {tid} -> {outcome}")
        H.count(f"cancel -> {outcome}")
        t = self.tasks[tid]
        if outcome == "finished" or t.cancel is not None:
            return
        t.cancel = outcome
        t.execs_at_cancel = int(H.r.hget("model:execs", tid) or 0)
        time.sleep(LATE_MS / 1000 + 0.1)  # the supervisor has heard of the cancel by now
        pid = int(worker.split(b":")[-2]) if worker else -1
        for sup in H.sups:
            if sup.pid == pid:
                for kid in sup.children():
                    kid.kill()
                H.count("cancel a claimed task, then SIGKILL its supervisor's children")

    def kill_supervisor(self, data):
        sup = pick(data, H.sups)
        sup.kill()
        H.sups.remove(sup)
        H.retired.append(sup)
        H.start_supervisor()
        H.count("SIGKILL supervisor")

    def restart_redis(self):
        t0 = int(time.time() * 1000)
        H.redis.kill()
        H.redis.start()
        H.always()
        # cancels published meanwhile are lost; RENEW (every lease/6) reports them once reconnected
        H.blind.append((t0, int(time.time() * 1000) + 2000))
        H.count("restart redis")

    def pause_supervisor(self, data):
        """Stop a supervisor (not its children) for longer than its lease: its tasks are recovered and
        maybe run elsewhere, and its late reports must be refused."""
        sup = pick(data, H.sups)
        t0 = int(time.time() * 1000)
        sup.signal(signal.SIGSTOP)
        try:
            time.sleep(LEASE + 0.6)
        finally:
            sup.signal(signal.SIGCONT)
        H.blind.append((t0, int(time.time() * 1000) + 1000))
        H.count("pause supervisor past its lease")

    def wait(self, data):
        s = data.draw(st.sampled_from([0.1, 0.5]))
        self.history.append(f"wait {s}")
        time.sleep(s)

    # ------------------------------------------------------------------ invariants
    def snapshot(self):
        ids = list(self.tasks)
        for attempt in range(100):  # Redis may be starting after a restart rule
            try:
                return ids, H.r.eval(SNAPSHOT, 0, BASE, *ids)
            except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                time.sleep(0.1)
        raise AssertionError("Redis did not answer for 10 s")

    @invariant()
    def redis_agrees(self):
        H.steps += 1
        try:
            self.check(*self.snapshot())
        except AssertionError as e:
            raise AssertionError(f"{e}\nafter: {'; '.join(self.history)}") from None

    def check(self, ids, snap):
        now, recs, ready, sched, leases, dead, parked, slots, uniq = snap
        where: dict[str, list] = {}
        for p, lst in enumerate(ready):
            for i in lst:
                where.setdefault(_s(i), []).append(f"ready:{p}")
        for k, lst in zip(["c1", "c2"], parked):
            for i in lst:
                where.setdefault(_s(i), []).append(f"cw:{k}")
        sched = {_s(i) for i in sched}
        leases = _pairs(leases)
        dead = {_s(i) for i in dead}
        states = {}
        for tid, rec in zip(ids, recs):
            state, fin, uk, lim, att, reason, deps, cxl, replays = (_s(v) for v in rec)
            states[tid] = (state, lim)
            lists = where.get(tid, [])
            places = lists + [n for n, s in (("sched", sched), ("leases", leases), ("dead", dead)) if tid in s]
            msg = f"task {tid} ({self.tasks[tid]}) is {state!r} and in {places}"
            assert state is not None, f"task {tid} accepted but its record is gone ({places})"
            assert len(lists) <= 1, f"{msg}: more than one ready/parked list entry"
            if state == "queued":
                assert places == lists and len(lists) == 1, f"{msg}: a queued task is in exactly one list"
            elif state in ("scheduled", "retrying"):
                assert places == ["sched"], f"{msg}: expected in sched only"
            elif state == "running":
                assert places == ["leases"], f"{msg}: expected in leases only"
            elif state == "waiting":
                assert places == [], f"{msg}: a waiting task is in no list"
            elif state == "dead":
                assert places == ["dead"], f"{msg}: expected in the dead-letter set only"
            elif state == "canceled":
                # a task canceled while queued keeps its list entry until a claim drops it
                assert all(p.startswith(("ready:", "cw:")) for p in places), f"{msg}"
            elif state == "done":
                assert places == [], f"{msg}: a done task is in no list"
            else:
                raise AssertionError(f"{msg}: unexpected state")
            if state in FINAL:
                seen = self.final_seen.get(tid)
                if seen is None:
                    self.final_seen[tid] = (state, fin)
                    if state == "dead":
                        self.dead_ids.append(tid)
                else:
                    assert seen == (state, fin), (f"task {tid} was final {seen} and is now {(state, fin)} "
                                                  f"without a replay")
            elif tid in self.final_seen:
                raise AssertionError(f"task {tid} was final {self.final_seen[tid]} and is now {state!r} "
                                     f"without a replay")
        # concurrency keys never over their limit: slots held, and running holders whose lease is live
        for k, flat in zip(["c1", "c2"], slots):
            held = _pairs(flat)
            assert len(held) <= LIMITS[k], f"concurrency key {k}: {len(held)} slots held, limit {LIMITS[k]}"
            live = [tid for tid, (state, lim) in states.items()
                    if state == "running" and lim and json.loads(lim).get("ck") == k and leases.get(tid, 0) > now]
            assert len(live) <= LIMITS[k], f"concurrency key {k}: {live} running with live leases, limit {LIMITS[k]}"
        # a unique key is held by the one unfinished task that has it
        for k, holder in zip(UNIQUE, uniq):
            holder = _s(holder)
            open_ = [tid for tid, t in self.tasks.items() if t.uk == k and states[tid][0] not in FINAL]
            assert len(open_) <= 1, f"unique key {k}: several unfinished tasks {open_}"
            if holder:
                assert holder in self.tasks and states[holder][0] not in FINAL, \
                    f"unique key {k} held by {holder}, which is {states.get(holder)}"

    # ------------------------------------------------------------------ the end
    def teardown(self):
        try:
            self._final()
        except AssertionError as e:
            raise AssertionError(f"{e}\nafter: {'; '.join(self.history)}") from None
        finally:
            H.ensure_supervisors()

    def _final(self):
        if not self.tasks:
            return
        deadline = time.monotonic() + 60
        while True:
            ids, snap = self.snapshot()
            self.check(ids, snap)
            recs = {tid: [_s(v) for v in rec] for tid, rec in zip(ids, snap[1])}
            if all(r[0] in FINAL for r in recs.values()):
                break
            if time.monotonic() > deadline:
                left = {tid: r[0] for tid, r in recs.items() if r[0] not in FINAL}
                logs = "\n".join(s.output()[-3000:] for s in H.sups)
                raise AssertionError(f"not final after 60 s: {left}\n{logs}")
            H.ensure_supervisors()
            time.sleep(0.1)
        execs = {_s(k): int(v) for k, v in H.r.hgetall("model:execs").items()}
        late = {_s(k): [int(x) for x in _s(v).split(":")] for k, v in H.r.hgetall("model:late").items()}
        for key, (cxl, start) in late.items():
            H.count("handler started after its cancel was recorded")
            if start - cxl > LATE_MS:
                if H.blind_during(cxl, start):
                    H.count("... late, after a fault hid the cancel")
                else:
                    raise AssertionError(f"task attempt {key} started {start - cxl} ms after its cancel was "
                                         f"recorded, with its supervisor able to hear of it")
        for tid, t in self.tasks.items():
            state, fin, uk, lim, att, reason, deps, cxl, replays = recs[tid]
            what = f"task {tid} {t} ended {state!r} (reason {reason!r}, attempts {att}, runs {execs.get(tid, 0)})"
            H.count(f"final {state}")
            if t.cancel == "canceled":
                assert state == "canceled", what
                assert execs.get(tid, 0) == t.execs_at_cancel, f"{what}: ran after it was canceled"
                continue
            if state == "canceled":
                assert t.cancel == "canceling" or reason is None and any(
                    recs[d][0] != "done" for d in t.deps), f"{what}: nobody canceled it"
                continue
            if state == "done":
                assert t.mode != "fail", f"{what}: a failing handler cannot end done"
                if not all(recs[d][0] == "done" for d in t.deps):
                    # replay puts a task that died of its dependency back to work all the same: the
                    # operator's call (REPLAY does not look at dependencies)
                    assert t.replays, f"{what}: ran though a dependency did not succeed"
                    H.count("done after a replay though a dependency failed")
                assert execs.get(tid, 0) >= 1, f"{what}: done without running"
                assert int(att) >= t.ok_at, f"{what}: done before the attempt that succeeds"
            elif state == "dead":
                if reason.startswith("dependency "):
                    dep, ended = reason.split()[1], reason.split()[-1]
                    assert dep in t.deps and ended != "done" and recs[dep][0] != "done", what
                    H.count("dead: a dependency failed")
                elif t.mode == "fail":
                    assert reason.endswith(f"of {t.maxr + 1} attempts"), what
                else:
                    # a handler that succeeds dies only when faults used up its attempts
                    assert not reason.startswith("failed"), what
                    H.findings.append(f"{what}: attempts used up by faults")
            else:
                raise AssertionError(what)


def test_model(tmp_path):
    global H
    _require_redis_server()
    H = Harness(tmp_path / "redis")
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if SHRINK else [])
    t0 = time.monotonic()
    try:
        run_state_machine_as_test(XQModel, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, phases=phases, database=None,
            suppress_health_check=list(HealthCheck), print_blob=True))
    finally:
        took = time.monotonic() - t0
        print(f"\nmodel: {H.examples} examples, {H.steps} steps (invariant checks), {H.tasks} tasks, "
              f"{took:.1f} s")
        for k in sorted(H.counts):
            print(f"  {k}: {H.counts[k]}")
        for f in H.findings:
            print(f"  note: {f}")
        H.close()
        H = None
