"""Hosts and partitions: Redis on one network namespace, supervisors on others (tests/netns.py), one
supervisor's link cut mid-drain for longer than its lease, or for less (then it keeps its tasks).

The cut supervisor's tasks are recovered by the others once their leases run out; when its link comes back,
its late results are refused by the fencing of COMPLETE (tests/test_fencing.py) and nothing is lost or
recorded twice: every task ends done exactly once (one record and result, of its last attempt; one done
event; the attempts before it in its history as lost).  The handlers' own side effect (a run counter) may
happen twice for a recovered task: xq runs tasks at least once, and only the tasks the cut supervisor held
may run twice.

Needs root and iproute2 (.ci/run runs as root and installs iproute2); nothing is skipped.
"""

from __future__ import annotations

import threading
import time

import orjson
import pytest
import redis

import xq
from xq.keys import queue_keys
from netns import Hosts, missing_requirements
from xqrun import wait_for

QK = queue_keys("default")
LEASE = 2.0
CUT = 5.0      # seconds the link is down: longer than the lease, so the others recover its tasks
N = 900
APP = "apps.partition:app"


@pytest.fixture
def hosts():
    why = missing_requirements()
    if why:
        pytest.fail(why, pytrace=False)
    with Hosts(("a", "b", "c")) as h:
        yield h


class DoneEvents:
    """Counts the done events of the default queue, per task id, from a subscription made before any task
    runs (a thread of its own; stopped by close())."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url)
        self.ps = self.client.pubsub(ignore_subscribe_messages=True)
        self.ps.subscribe(QK.events)
        self.counts: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            msg = self.ps.get_message(timeout=0.2)
            if msg is None:
                continue
            evs = orjson.loads(msg["data"])
            for e in evs if isinstance(evs, list) else [evs]:
                if e.get("state") == "done":
                    self.counts[e["id"]] = self.counts.get(e["id"], 0) + 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.ps.close()
        self.client.close()


def worker_of(run) -> str:
    """The worker id a supervisor logs in its start line ("xq supervisor <id>: ...")."""
    out = wait_for(lambda: "xq supervisor " in run.output() and run.output(), what="the start line")
    return out.split("xq supervisor ", 1)[1].split(": ", 1)[0]


def records(r, ids) -> dict[str, dict]:
    with r.pipeline(transaction=False) as p:
        for i in ids:
            p.hgetall(QK.task(i))
        return {i: {k.decode(): v for k, v in rec.items()} for i, rec in zip(ids, p.execute())}


def held_by(r, worker: str) -> dict[str, int]:
    """The tasks running under worker now: id -> attempt."""
    ids = [i.decode() for i in r.zrange(QK.leases, 0, -1)]
    return {i: int(rec["att"]) for i, rec in records(r, ids).items()
            if rec.get("state") == b"running" and rec.get("worker", b"").decode() == worker}


def refused_ids(log: str) -> set[str]:
    """Tasks whose result this supervisor logged as refused (leases.log_refused)."""
    return {line.split("result of task ", 1)[1].split(" ", 1)[0] for line in log.splitlines()
            if "result of task " in line and " refused: " in line}


@pytest.mark.parametrize("socket_timeout", [30.0, 1.0], ids=["stall", "outage"])
def test_a_cut_supervisors_tasks_are_recovered_and_its_late_results_refused(hosts, socket_timeout):
    # stall: a 30 s socket timeout (in its URL) outlasts the cut: the cut supervisor's loop waits in a RENEW
    # and TCP's retransmissions deliver its late results after the heal.  outage: a 1 s socket timeout
    # (in its URL) makes it declare Redis unreachable, drop its connections and send its results again on
    # new ones after the heal.  Either way they must be refused.
    r = redis.Redis.from_url(hosts.url)
    p = xq.Producer(hosts.url)
    ids = p.enqueue_many("work", [{"i": i, "ms": 20 + i * 7 % 31} for i in range(N)])
    events = DoneEvents(hosts.url)
    try:
        env = {"XQ_TEST_REDIS": hosts.url}  # the handlers' counter: the plain URL
        args = ["--lease", str(LEASE), "--redis"]
        url_c = hosts.url + f"?socket_timeout={socket_timeout}"
        a, b = (hosts.xq_run(h, *args, hosts.url, app=APP, procs=1, env=env) for h in "ab")
        c = hosts.xq_run("c", *args, url_c, app=APP, procs=1, env=env)
        wa, wb, wc = (worker_of(x) for x in (a, b, c))
        done = lambda: r.zcard(QK.finished("done"))  # noqa: E731

        # mid-drain, with tasks running under c: cut c's link
        wait_for(lambda: done() >= N // 8 and held_by(r, wc), 30, what="c to hold tasks mid-drain: " + c.output())
        hosts.cut("c")
        t_cut = time.monotonic()
        held = held_by(r, wc)  # what Redis says c holds once it is cut off
        assert held, "c held nothing at the cut (it finished its tasks in between); log:\n" + c.output()
        done_at_cut = done()

        # a and b recover c's tasks once their leases run out (within the cut) and go on draining
        def recovered():
            now = records(r, list(held))
            return all(rec.get("worker", b"").decode() != wc or rec["state"] != b"running" for rec in now.values())
        wait_for(recovered, CUT - 0.5, what="a or b to recover c's tasks: " + a.output()[-2000:])
        t_recovered = time.monotonic() - t_cut
        time.sleep(max(0.0, CUT - (time.monotonic() - t_cut)))
        assert c.proc.poll() is None, "c exited during the cut:\n" + c.output()
        done_during = done() - done_at_cut
        assert done_during > 0
        hosts.heal("c")
        healed_ms = int(time.time() * 1000)

        wait_for(lambda: done() == N, 60, what=f"the drain to finish ({done()}/{N})")
        # c's late results for the tasks it held are refused, once its connection works again
        wait_for(lambda: refused_ids(c.output()) & set(held), 20, what="c to log refused results:\n" + c.output())
        # c resumes claiming after the heal
        wait_for(lambda: any(rec.get("worker", b"").decode() == wc and int(rec.get("fin", 0)) > healed_ms
                             for rec in records(r, ids).values()), 20, what="c to finish tasks after the heal")
        time.sleep(0.5)  # let any last late report arrive before the final count
    finally:
        events.close()

    # nothing lost, nothing recorded twice
    recs = records(r, ids)
    assert [i for i, rec in recs.items() if rec.get("state") != b"done"] == []
    assert r.zcard(QK.finished("done")) == N and r.zcard(QK.dead) == 0 and r.zcard(QK.leases) == 0
    assert all(r.llen(k) == 0 for k in QK.ready)
    for n, i in enumerate(ids):
        rec = recs[i]
        att = int(rec["att"])
        hist = orjson.loads(rec["hist"]) if "hist" in rec else []
        assert [(h["n"], h["outcome"]) for h in hist] == [(k, "lost") for k in range(1, att)], (i, hist)
        assert orjson.loads(rec["result"]) == {"i": n, "attempt": att}, (i, rec)
    assert events.counts == dict.fromkeys(ids, 1)
    # side effects: every task ran, and only those c held may have run twice
    runs = {k.decode(): int(v) for k, v in r.hgetall("test:runs").items()}
    assert set(runs) == set(ids)
    twice = {i for i, n in runs.items() if n > 1}
    assert twice <= set(held), (twice, held)

    refused = refused_ids(c.output())
    assert refused and refused <= set(held), (refused, held)
    recovered_logged = sum(int(line.split("recovered ", 1)[1].split(" ", 1)[0])
                           for x in (a, b) for line in x.output().splitlines() if "with expired leases" in line)
    assert recovered_logged >= len(held)
    for x in (a, b, c):
        assert x.proc.poll() is None and "Traceback" not in x.output(), x.output()
    print(f"\npartition (socket timeout {socket_timeout:g} s): N={N}, c held "
          f"{len(held)} at the cut, recovered by a/b {recovered_logged} (within {t_recovered:.1f} s), "
          f"done during the {CUT:.0f} s cut {done_during}, c's results refused {len(refused)}, "
          f"side effects run twice {len(twice)}, hosts a/b/c {wa} {wb} {wc}")


def test_a_cut_supervisor_keeps_running_and_resumes_after_the_heal(hosts):
    # A 1 s socket timeout (in its URL) shorter than the cut: the supervisor finds Redis unreachable, logs
    # it once, keeps its children, and logs the way back once the link returns; then it claims new work.
    r = redis.Redis.from_url(hosts.url)
    p = xq.Producer(hosts.url)
    a = hosts.xq_run("a", "--lease", str(LEASE), "--redis", hosts.url + "?socket_timeout=1", app=APP, procs=2,
                     env={"XQ_TEST_REDIS": hosts.url})
    before = p.enqueue_many("work", [{"i": i, "ms": 1} for i in range(20)])
    wait_for(lambda: r.zcard(QK.finished("done")) == 20, 30, what="the first tasks: " + a.output())
    kids = {k.pid for k in a.children()}
    assert len(kids) == 2
    hosts.cut("a")
    t_cut = time.monotonic()
    wait_for(lambda: "unreachable" in a.output(), CUT, what="a to find Redis unreachable: " + a.output())
    t_down = time.monotonic() - t_cut
    time.sleep(max(0.0, CUT - (time.monotonic() - t_cut)))
    assert a.proc.poll() is None and {k.pid for k in a.children()} == kids, a.output()
    hosts.heal("a")
    t_heal = time.monotonic()
    wait_for(lambda: "is reachable again" in a.output(), 20, what="a to reconnect: " + a.output())
    t_up = time.monotonic() - t_heal
    after = p.enqueue_many("work", [{"i": i, "ms": 1} for i in range(20, 40)])
    wait_for(lambda: r.zcard(QK.finished("done")) == 40, 30, what="the tasks after the heal: " + a.output())
    recs = records(r, before + after)
    assert {rec["state"] for rec in recs.values()} == {b"done"} and r.zcard(QK.dead) == 0
    log = a.output()
    assert log.count("unreachable") == 1 and log.count("is reachable again") == 1, log
    assert a.proc.poll() is None and {k.pid for k in a.children()} == kids and "Traceback" not in log, log
    print(f"\ncut supervisor: outage logged {t_down:.1f} s after the cut, reconnected {t_up:.1f} s after the heal")


def test_a_cut_shorter_than_the_lease_keeps_the_tasks_of_the_cut_supervisor(hosts):
    # A cut supervisor's stuck call (a RENEW, a recovery) is only resent by TCP's retransmissions, which back
    # off exponentially: after a cut of some seconds the next one may come long after the link is back.  The
    # supervisor's socket timeout is a third of its lease, so it gives up on the stuck connection, and renews
    # its leases on a new one once the link is back, before they run out.  The heal is timed for the
    # worst case: when every established connection of a's still has its next retransmission after the
    # lease's expiry (a 30 s socket timeout then waited for it, and b recovered the task: it ran twice).
    lease = 12.0
    r = redis.Redis.from_url(hosts.url)
    env = {"XQ_TEST_REDIS": hosts.url}
    a = hosts.xq_run("a", "--lease", str(lease), app=APP, procs=1, env=env)
    wa = worker_of(a)
    (tid,) = xq.Producer(hosts.url).enqueue_many("work", [{"i": 0, "ms": 20000}])
    wait_for(lambda: held_by(r, wa) == {tid: 1}, 20, what="a to run the long task: " + a.output())
    b = hosts.xq_run("b", "--lease", str(lease), app=APP, procs=1, env=env)
    worker_of(b)

    def redis_ms() -> int:
        s, us = r.time()
        return s * 1000 + us // 1000
    # cut right after a renewal: the lease then runs out `lease` seconds after the cut
    score = r.zscore(QK.leases, tid)
    wait_for(lambda: r.zscore(QK.leases, tid) != score, lease, 0.005, what="a renewal of the lease")
    hosts.cut("a")
    t_cut = time.monotonic()
    expires = t_cut + (r.zscore(QK.leases, tid) - redis_ms()) / 1000  # local clock
    time.sleep(max(0.0, expires - 5.0 - time.monotonic()))
    while time.monotonic() < expires - 3.0:  # heal when no stuck connection would be resent before expiry
        if all(time.monotonic() + t > expires + 2.0 for t in hosts.retransmits("a")):
            break
        time.sleep(0.05)
    hosts.heal("a")
    t_heal = time.monotonic() - t_cut

    wait_for(lambda: r.hget(QK.task(tid), "state") == b"done", 40, what="the long task to finish: " + a.output())
    rec = records(r, [tid])[tid]
    log_a, log_b = a.output(), b.output()
    assert int(rec["att"]) == 1 and rec["worker"].decode() == wa, (rec, log_a, log_b)
    assert "lease was lost" not in log_a and "expired leases" not in log_b, (log_a, log_b)
    assert r.hget("test:runs", tid) == b"1"
    for x in (a, b):
        assert x.proc.poll() is None and "Traceback" not in x.output(), x.output()
    print(f"\ncut of {t_heal:.1f} s with a lease of {lease:.0f} s: the lease kept, the task ran once")
