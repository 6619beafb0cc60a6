"""Network faults end to end: the real `xq run` and real producers behind a FaultProxy (tests/faultproxy.py)
that cuts, refuses, stalls and delays their connections, CLIENT KILL storms, a refused password, Redis
SIGKILLed and restarted.  State is always checked on a direct connection to the real server, never through
the proxy.  These are the acceptance tests of "one Redis connection layer that survives any network fault".
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time

import orjson
import pytest
import redis

import xq
from helpers import free_port, keep_every_record, stop_process
from test_engine import assert_queue_empty, execs, states
from xq.keys import queue_keys
from xq.scripts import INLINE_PAYLOAD, STAGE_PAYLOAD
from xqrun import TESTS, XQRun, wait_for

QK = queue_keys("default")
RECORDS = QK.task_prefix + "*"  # xq:{default}:t:*


# ------------------------------------------------------------------------------------------------- helpers
def records(r: redis.Redis) -> set[str]:
    """Ids of every task record of the default queue, read on the real server."""
    n = len(QK.task_prefix)
    return {k.decode()[n:] for k in r.scan_iter(match=RECORDS, count=10_000)}


def all_done(r: redis.Redis, ids) -> bool:
    return states(r, ids) == {"done": len(ids)}


def outcomes(r: redis.Redis, ids) -> dict[str, tuple[str, object]]:
    """id -> (state, decoded JSON result) for every id, pipelined."""
    out = {}
    ids = list(ids)
    for i in range(0, len(ids), 5000):
        pipe = r.pipeline(transaction=False)
        for tid in ids[i:i + 5000]:
            pipe.hmget(QK.task(tid), "state", "result")
        for tid, (state, result) in zip(ids[i:i + 5000], pipe.execute()):
            out[tid] = ((state or b"missing").decode(), orjson.loads(result) if result else None)
    return out


def alive(w: XQRun) -> None:
    """Fail, with the log's tail, if the supervisor has exited."""
    if w.proc.poll() is not None:
        raise AssertionError(f"the supervisor exited with code {w.proc.returncode}; log tail:\n{w.output()[-6000:]}")


def wait_all_done(r: redis.Redis, ids, w: XQRun, timeout: float, after: str, since: float | None = None) -> float:
    """Wait until every id is done, at most timeout s from `since` (a time.monotonic(); default now), failing
    at once if the supervisor exits; returns the seconds from `since` until all were done."""
    t0 = time.monotonic() if since is None else since
    ids = list(ids)
    for _ in range(int(timeout / 0.2) + 2):  # bounded in count and time
        alive(w)
        if all_done(r, ids):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(0.2)
    raise AssertionError(f"not every task done {timeout} s {after}: {states(r, ids)}, leases "
                         f"{r.zcard(QK.leases)}, ready {ready_len(r)}; log tail:\n{w.output()[-6000:]}")


def ready_len(r: redis.Redis) -> int:
    return sum(r.llen(k) for k in QK.ready)


def direct(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10)


# ------------------------------------------------------------------------------ a. random cuts for 60 s
LEASE = 3
CUT_FOR = 60.0


def test_random_cuts_while_draining_and_enqueueing(fault_proxy):
    """Cuts at random (mean 0.5 s) for 60 s while a producer enqueues and `xq run` drains through the proxy:
    the supervisor survives, every enqueued task is done soon after, none lost, none enqueued twice."""
    proxy = fault_proxy
    real = direct(proxy.redis.url)
    keep_every_record(proxy.redis.url)  # every task's record is checked at the end
    returned: list[str] = []               # ids enqueue_many returned
    lost_calls: list[tuple[list, list, range]] = []  # (stored, unknown, serials) of each ConnectionLost
    errors: list[BaseException] = []
    stop = threading.Event()

    def produce():
        rng = random.Random(7)
        serial = 0
        try:
            with xq.Producer(proxy.url()) as p:
                for _ in range(2000):  # bounded; ends when the cuts do
                    if stop.is_set():
                        return
                    n = rng.randint(50, 200)
                    serials = range(serial, serial + n)
                    serial += n
                    if rng.random() < 0.2:
                        # half of them over scripts.INLINE_PAYLOAD: read by the supervisor's HGET after the claim
                        pad = "x" * (INLINE_PAYLOAD + 100) if rng.random() < 0.5 else ""
                        name, payloads = "sleep", [{"s": 0.002, "k": k, "pad": pad} for k in serials]
                    else:
                        name, payloads = "count", list(serials)
                    call_ids = xq.new_ids(n)  # so the call can be repeated without duplicates
                    for _attempt in range(5):  # the producer retried for retry_for already; repeat the call
                        try:
                            returned.extend(p.enqueue_many(name, payloads, ids=call_ids))
                            break
                        except xq.ConnectionLost as e:
                            lost_calls.append((list(e.stored), list(e.unknown), serials))
                    else:
                        raise AssertionError(f"enqueue_many of {n} tasks lost its connection 5 times in a row")
                    stop.wait(rng.uniform(0.1, 0.4))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    with XQRun(proxy.url(), "--lease", str(LEASE), procs=2, env={"XQ_TEST_REDIS": proxy.redis.url}) as w:
        with xq.Producer(proxy.url()) as p0:
            up = p0.enqueue("echo", "up")
            assert p0.result(up, timeout=30) == "up", w.output()
        t0 = time.monotonic()
        proxy.cut_randomly(mean_interval=0.5, duration=CUT_FOR)
        producer = threading.Thread(target=produce, name="netfault-producer", daemon=True)
        producer.start()
        try:
            for _ in range(int((CUT_FOR + 10) / 0.5)):  # until the cuts end; fail at once if `xq run` exits
                if not proxy.cutting:
                    break
                alive(w)
                time.sleep(0.5)
            else:
                raise AssertionError(f"cut_randomly did not end {CUT_FOR + 10} s after it started")
        finally:
            proxy.stop_cutting()
            stop.set()
        cuts_end = time.monotonic()
        producer.join(timeout=60)
        assert not producer.is_alive(), "the producer did not finish its last call within 60 s of the cuts"
        assert not errors, f"producer failed: {errors[0]!r}"
        alive(w)

        stored = {i for s, _, _ in lost_calls for i in s}
        unknown = {i for _, u, _ in lost_calls for i in u}
        must_exist = set(returned) | stored
        have = records(real) - {up}  # no enqueue is running any more: this is every task there will be
        assert must_exist <= have, f"{len(must_exist - have)} enqueued tasks lost"
        # every task reaches done within 2 leases (+ slack) of the cuts' end
        recovered = wait_all_done(real, have, w, 2 * LEASE + 10, "after the cuts ended", since=cuts_end)
        alive(w)
        log = w.output()

    # nothing lost, nothing stuck
    assert records(real) - {up} == have
    assert_queue_empty(real)
    # no duplicate enqueues: every record is one the producer was given back (repeated calls reuse their
    # ids, so an internal resend or a repeated call never makes a second record) ...
    assert have == set(returned), f"{len(have - set(returned))} records the producer never saw"
    assert unknown <= have and stored <= have
    # ... and no payload is stored under two ids
    by_serial: dict[int, list[str]] = {}
    for tid, (state, result) in outcomes(real, have).items():
        assert state == "done", (tid, state)
        by_serial.setdefault(result["k"] if isinstance(result, dict) else result, []).append(tid)
    twice = {k: v for k, v in by_serial.items() if len(v) > 1}
    assert not twice, f"{len(twice)} payloads enqueued twice, e.g. {list(twice.items())[:3]}"
    # every task ran; runs beyond the first are the at-least-once cost of lost completions
    counts = execs(real)
    assert set(counts) >= have
    dup_runs = sum(n - 1 for n in counts.values())
    refused = sum(1 for line in log.splitlines()  # completions refused for a lost lease, not connections
                  if "refused" in line and not re.search(r"connection ?refused|RedisRefused", line, re.I))
    assert "Too many connections" not in log
    print(f"\nrandom cuts for {CUT_FOR:.0f} s (mean 0.5 s): {proxy.cuts} connections cut, {proxy.accepted} "
          f"accepted; {len(have)} tasks enqueued in {cuts_end - t0:.0f} s, "
          f"{len(lost_calls)} enqueue calls raised ConnectionLost; duplicate runs {dup_runs} "
          f"({sum(1 for n in counts.values() if n > 1)} tasks), completions refused (log lines) {refused}; "
          f"all done {recovered:.1f} s after the cuts ended")


# ------------------------------------------------------------------------------- b. CLIENT KILL storm
def test_client_kill_storm(fresh_redis):
    """CLIENT KILL of every normal and pubsub connection every 0.2 s for 30 s while `xq run` drains: no
    stall (redis-py's pool used to run out after ~100 dropped connections: "Too many connections")."""
    url = fresh_redis.url
    real = direct(url)
    keep_every_record(url)  # every task's record is checked at the end
    killer = redis.Redis.from_url(url, single_connection_client=True)  # SKIPME yes spares this one
    returned: list[str] = []
    lost = 0
    errors: list[BaseException] = []
    stop = threading.Event()

    def produce():
        nonlocal lost
        try:
            with xq.Producer(url) as p:
                for b in range(1000):  # bounded; ends with the storm
                    if stop.is_set():
                        return
                    for _attempt in range(5):
                        try:
                            returned.extend(p.enqueue_many("count", [b] * 100))
                            break
                        except xq.ConnectionLost:
                            lost += 1
                    stop.wait(0.1)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    with XQRun(url, procs=2) as w:
        with xq.Producer(url) as p0:
            assert p0.result(p0.enqueue("echo", "up"), timeout=30) == "up", w.output()
        producer = threading.Thread(target=produce, name="netfault-producer", daemon=True)
        producer.start()
        killed = 0
        end = time.monotonic() + 30
        try:
            for _ in range(200):  # every 0.2 s for 30 s
                if time.monotonic() >= end:
                    break
                killed += killer.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                killed += killer.execute_command("CLIENT", "KILL", "TYPE", "pubsub", "SKIPME", "yes")
                time.sleep(0.2)
        finally:
            stop.set()
            killer.close()
        producer.join(timeout=60)
        assert not producer.is_alive() and not errors, errors
        alive(w)
        wait_all_done(real, returned, w, 30, "after the storm")
        alive(w)
        log = w.output()
        assert killed > 500, f"only {killed} connections killed; log tail:\n{log[-6000:]}"
    assert "Too many connections" not in log
    assert_queue_empty(real)
    print(f"\nCLIENT KILL storm: {killed} connections killed in 30 s; {len(returned)} tasks all done, "
          f"{lost} enqueue calls raised ConnectionLost")


# --------------------------------------------------------------------- c. refused password, unreachable
@pytest.fixture
def auth_redis(tmp_path):
    """A redis-server of our own with requirepass secret: yields its port; stopped by PID."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not on PATH", pytrace=False)
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "secret",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c = redis.Redis(port=port, password="secret", socket_connect_timeout=0.5)
        wait_for(lambda: _pings(c), timeout=10, what="the requirepass redis-server to answer")
        c.close()
        yield port
    finally:
        stop_process(proc)


def _pings(c: redis.Redis) -> bool:
    try:
        return bool(c.ping())
    except redis.ConnectionError:
        return False


def xq_cli(*args: str, timeout: float, env: dict | None = None) -> tuple[int, str]:
    """Run `xq ARGS` (cwd tests/, so apps.* imports); (exit code, stdout + stderr). Fails past timeout s."""
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    e.pop("XQ_REDIS_URL", None)
    try:
        done = subprocess.run([sys.executable, "-m", "xq.cli", *args], cwd=TESTS, env=e, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as ex:
        raise AssertionError(f"`xq {' '.join(args)}` did not exit within {timeout} s; output:\n"
                             f"{(ex.output or b'').decode(errors='replace')}") from None
    return done.returncode, done.stdout.decode(errors="replace")


def the_error_line(out: str, names: str, says: str) -> str:
    """The one line of out that names `names` and matches regex `says` (a start-up banner may name the URL
    too); no traceback anywhere."""
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if names in ln and re.search(says, ln, re.I)]
    assert len(lines) == 1, f"expected one line naming {names!r} and saying {says!r}, got:\n{out}"
    return lines[0]


BAD_PW = "hunter2-not-it"


def test_wrong_password_exits_5_with_one_masked_line(auth_redis):
    url = f"redis://:{BAD_PW}@127.0.0.1:{auth_redis}/0"
    code, out = xq_cli("run", "apps.basic:app", "--redis", url, "--procs", "1", "--burst", timeout=5)
    assert code == 5, out
    the_error_line(out, f"redis://:***@127.0.0.1:{auth_redis}/0", r"auth")
    assert BAD_PW not in out


def test_no_password_exits_5_noauth(auth_redis):
    url = f"redis://127.0.0.1:{auth_redis}/0"
    code, out = xq_cli("run", "apps.basic:app", "--redis", url, "--procs", "1", "--burst", timeout=5)
    assert code == 5, out
    the_error_line(out, url, r"auth")


def test_enqueue_with_wrong_password_exits_5(auth_redis):
    url = f"redis://:{BAD_PW}@127.0.0.1:{auth_redis}/0"
    code, out = xq_cli("enqueue", "echo", "1", "--redis", url, timeout=10)
    assert code == 5, out
    the_error_line(out, f"redis://:***@127.0.0.1:{auth_redis}/0", r"auth")
    assert BAD_PW not in out


def test_enqueue_to_nobody_exits_6_after_bounded_retries():
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, out = xq_cli("enqueue", "echo", "1", "--redis", url, timeout=35, env={"XQ_RETRY_FOR": "2"})
    assert code == 6, out
    the_error_line(out, url, r".")


def test_run_with_bad_url_exits_2():
    url = "redis://127.0.0.1:6999999/0"
    code, out = xq_cli("run", "apps.basic:app", "--redis", url, "--procs", "1", "--burst", timeout=10)
    assert code == 2, out
    the_error_line(out, "6999999", r".")


# --------------------------------------------------------------- d. SIGKILL Redis, restart with AOF
def test_redis_sigkill_mid_drain_with_appendfsync_always_loses_nothing(fresh_redis):
    """appendfsync always: whatever Redis acknowledged survives its SIGKILL; `xq run` reconnects and
    finishes every task."""
    url = fresh_redis.url
    real = direct(url)
    # EmbeddedRedis starts with appendfsync everysec; switch this server to always (set again after the
    # restart: a CONFIG SET is not written anywhere the restarted server reads)
    real.config_set("appendfsync", "always")
    with xq.Producer(url) as p:
        ids = p.enqueue_many("sleep", [{"s": 0.002}] * 2000)
    with XQRun(url, procs=2) as w:
        wait_for(lambda: real.hlen("test:execs") >= 300, timeout=60, what="300 tasks done")
        done_before = states(real, ids).get("done", 0)
        fresh_redis.kill()
        fresh_redis.start()  # same port, same data dir: loads the AOF
        real = direct(url)
        real.config_set("appendfsync", "always")
        assert real.config_get("appendonly")["appendonly"] == "yes"
        # everything acknowledged before the kill is still there
        assert len(records(real)) == 2000
        assert states(real, ids).get("done", 0) >= done_before
        wait_all_done(real, ids, w, 90, "after the restart")
        alive(w)
    assert set(execs(real)) >= set(ids)
    assert_queue_empty(real)


# ---------------------------------------------------------------- e. producer retry without duplicates
N_E = 5000


def test_enqueue_cut_in_flight_never_duplicates(fault_proxy):
    """enqueue_many of 5,000 tasks with its connection cut mid-flight: before the request arrives, after
    Redis stored it but before the reply came back, at a random moment, and with Redis out of reach past
    retry_for (ConnectionLost).  Retries never store anything twice."""
    proxy = fault_proxy
    real = direct(proxy.redis.url)
    known: set[str] = set()   # every id the producer was told about (returned, stored, unknown)
    modes = ["reply-lost", "request-held", "random", "refused"] * 5
    seen = {m: 0 for m in modes}
    raised = 0
    proxy.delay(0.001)  # every chunk a little late, so a random cut lands inside the call more often
    with xq.Producer(proxy.url(), retry_for=1.0) as p:
        known |= set(p.enqueue_many("echo", list(range(N_E))))  # connected; a clean call's duration:
        t0 = time.monotonic()
        known |= set(p.enqueue_many("echo", list(range(N_E))))
        took = time.monotonic() - t0
        for rep, mode in enumerate(modes):
            # every 50th payload over scripts.STAGE_PAYLOAD: staged in a MULTI/EXEC before its ENQUEUE
            payloads = [{"rep": rep, "i": i, "pad": "x" * (STAGE_PAYLOAD + 10) if i % 50 == 0 else ""}
                        for i in range(N_E)]
            # a call on a live connection first: a reconnection's handshake (CLIENT SETINFO) waits for its
            # reply, so a producer that reconnected under stall("down") would send nothing
            known.add(p.enqueue("echo", rep))
            before = len(records(real))
            result: dict = {}

            def call():
                try:
                    result["ids"] = p.enqueue_many("echo", payloads)
                except BaseException as e:  # noqa: BLE001 - examined below
                    result["error"] = e

            if mode in ("reply-lost", "refused"):
                proxy.stall("down")
            elif mode == "request-held":
                proxy.stall("up")
            t = threading.Thread(target=call, daemon=True)
            t.start()
            if mode in ("reply-lost", "refused"):
                # let Redis store some or all of it (it is sent in chunks), then cut before any reply
                goal = before + random.choice([1000, N_E])
                wait_for(lambda: ready_len(real) >= goal, timeout=10, what=f"rep {rep} ({mode}): {goal - before} tasks stored")
            elif mode == "request-held":
                time.sleep(0.05)
            else:
                time.sleep(random.uniform(0, took * 1.5))
            if mode == "refused":
                proxy.refuse(True)  # cuts, and keeps the producer out past its retry_for
                t.join(timeout=15)
                proxy.refuse(False)
            else:
                proxy.cut()
            proxy.resume()
            t.join(timeout=30)
            assert not t.is_alive(), f"rep {rep} ({mode}): enqueue_many still running 30 s after the cut"
            err = result.get("error")
            if err is not None:
                assert isinstance(err, xq.ConnectionLost), f"rep {rep} ({mode}): {err!r}"
                assert isinstance(err.stored, list) and isinstance(err.unknown, list)
                assert not set(err.stored) & set(err.unknown)
                assert set(err.stored) <= records(real), f"rep {rep}: ids reported stored are not"
                raised += 1
                known |= set(err.stored) | set(err.unknown)
                result["ids"] = p.enqueue_many("echo", payloads)  # the same call again, now reachable
            ids = result["ids"]
            assert len(ids) == N_E == len(set(ids)) and not set(ids) & known, f"rep {rep} ({mode})"
            known |= set(ids)
            have = records(real)
            assert set(ids) <= have, f"rep {rep} ({mode}): {len(set(ids) - have)} returned ids not stored"
            assert have <= known, f"rep {rep} ({mode}): {len(have - known)} records no call told about"
            # each record's id is in the ready list once: no retry pushed an id twice
            queued = ready_len(real)
            assert queued == len(have), f"rep {rep} ({mode}): {queued} queued, {len(have)} records"
            seen[mode] += 1
    assert raised >= 1, "no call raised ConnectionLost, though Redis was refused past retry_for"
    # a stage whose ENQUEUE never ran (the call gave up) is left only with its expiry
    stages = list(real.scan_iter(match=QK.stage_prefix.decode() + "*"))
    assert all(real.pttl(k) > 0 for k in stages), [(k, real.pttl(k)) for k in stages if real.pttl(k) <= 0]
    print(f"\nenqueue_many of {N_E} cut in flight {len(modes)} times ({seen}): {proxy.cuts} connections cut, "
          f"{raised} calls raised ConnectionLost and were re-sent; {len(records(real))} records, none twice")


# -------------------------------------------------------------------------- f. result() through cuts
def test_result_through_cuts(fault_proxy):
    proxy = fault_proxy
    with XQRun(proxy.redis.url, procs=1) as w:  # the supervisor talks to Redis directly; the producer does not
        with xq.Producer(proxy.url()) as p:
            assert p.result(p.enqueue("echo", "up"), timeout=30) == "up", w.output()
            tid = p.enqueue("sleep", {"s": 2.0})

            def cut_twice():
                time.sleep(0.5)
                proxy.cut()
                time.sleep(0.7)
                proxy.cut()

            cutter = threading.Thread(target=cut_twice, daemon=True)
            cutter.start()
            assert p.result(tid, timeout=20) == {"s": 2.0}
            cutter.join(timeout=5)
            assert proxy.cuts >= 2
        alive(w)


def test_result_of_a_task_that_finished_while_unreachable(fault_proxy):
    """The completion event is published while the producer cannot reach Redis at all: result() must
    still find the result once it is back (by reading the state after it subscribes again)."""
    proxy = fault_proxy
    with XQRun(proxy.redis.url, procs=1) as w:
        with xq.Producer(proxy.url()) as p:
            assert p.result(p.enqueue("echo", "up"), timeout=30) == "up", w.output()
            tid = p.enqueue("sleep", {"s": 1.0})

            def outage():
                time.sleep(0.3)
                proxy.refuse(True)  # cuts, and refuses every reconnection until the task is done
                time.sleep(2.5)
                proxy.refuse(False)

            t = threading.Thread(target=outage, daemon=True)
            t.start()
            assert p.result(tid, timeout=20) == {"s": 1.0}
            t.join(timeout=5)
            assert proxy.cuts >= 1 and proxy.refused >= 1
        alive(w)


# --------------------------------------------------------------------------------------------- g. stall
def test_stall_while_idle(fault_proxy):
    proxy = fault_proxy
    real_url = proxy.redis.url
    with XQRun(proxy.url(), procs=1, env={"XQ_TEST_REDIS": real_url}) as w:
        with xq.Producer(proxy.url()) as p, xq.Producer(real_url) as pd:
            assert p.result(p.enqueue("echo", "up"), timeout=30) == "up", w.output()
            time.sleep(0.5)  # idle, in its blocking wait
            proxy.stall()
            during = pd.enqueue("count", "during")  # directly on the real server
            time.sleep(3)
            proxy.resume()
            after = p.enqueue("count", "after")
            assert p.result(after, timeout=30) == "after", w.output()[-5000:]
            assert pd.result(during, timeout=30) == "during", w.output()[-5000:]
        alive(w)
