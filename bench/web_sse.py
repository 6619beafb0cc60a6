"""Does `xq web`'s SSE stream keep up with a 20,000 tasks/s drain?  Events delivered per second per client,
events lost, lag from publish to delivery, and the CPU of the `xq web` process.

    python3 bench/web_sse.py [drain|synthetic|both] [CLIENTS,...] [RATE]     (default: both 1,4 20000)

Everything is real and in its own process: a private redis-server, `xq web` (uvicorn; its CPU is user+sys
of that process over the window, from psutil), the SSE clients (raw sockets: GET /api/events?queue=default,
counting `data:` lines, so a client's own cost stays small) and a witness subscribed to the queue's event
channel in Redis, which counts what was published.

- drain: TASKS no-op tasks are enqueued (before anyone subscribes: no `queued` events), then the real
  `xq run --procs 2 --burst` drains them, publishing a `running` and a `done` event per task.
  The drain rate is what 2 cores give with the server and clients on them too.
- synthetic: a publisher sends events in the real format on the real channel (`running` then `done` per
  task id, BATCH events per PUBLISH; a full-speed drain publishes ~1,000 a message, and fewer, larger
  messages cost the server less) at a fixed RATE for SECONDS: the stream's capacity independent of how
  fast this machine drains.

Lag: each client parses the last event of each read and compares its `ts` (ms, Redis or publisher clock,
same machine) with its receive time: p50/p99 over those samples.  Bounded: TASKS tasks, SECONDS of
publishing, and a deadline on every wait.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

import orjson
import psutil
import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchutil import BENCH, _free_port, flush, private_redis, xq_run  # noqa: E402

TASKS = 200_000      # drain: tasks
RATE = 20_000        # synthetic: tasks/s (two events each: running, done) unless given
SECONDS = 10         # synthetic: seconds of publishing
BATCH = 100          # synthetic: events per PUBLISH
DEADLINE = 180       # seconds any one run may take
QUEUE = "default"


def _percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def sse_client(port: int, ready, stop, out) -> None:
    """Read the SSE stream until stop is set; put (events, first, last receive time, lag samples in ms)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /api/events?queue={QUEUE} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode())
    s.settimeout(0.2)
    buf, n, first, last, lags, tail = b"", 0, 0.0, 0.0, [], b""
    while b": subscribed" not in buf:
        try:
            buf += s.recv(65536)
        except TimeoutError:
            pass
    ready.set()
    while not stop.is_set():
        try:
            chunk = s.recv(1 << 20)
        except TimeoutError:
            continue
        if not chunk:
            break
        now = time.time()
        k = (tail + chunk).count(b"\ndata: ")
        if k:
            n += k
            first = first or now
            last = now
            i = chunk.rfind(b"\ndata: ")
            j = chunk.find(b"\n", i + 7)
            if i >= 0 and j > 0:
                lags.append(now * 1000 - orjson.loads(chunk[i + 7:j])["ts"])
        tail = chunk[-6:]
    s.close()
    out.put((n, first, last, lags))


def witness(port: int, channel: bytes, ready, stop, out) -> None:
    """Count the events published on channel (raw RESP: `"state":` occurrences) and the messages."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel))
    s.settimeout(0.2)
    buf = b""
    while b":1\r\n" not in buf:
        buf += s.recv(4096)
    ready.set()
    n, msgs, first, last, tail = 0, 0, 0.0, 0.0, b""
    while not stop.is_set():
        try:
            chunk = s.recv(1 << 20)
        except TimeoutError:
            continue
        data = tail + chunk  # what lies wholly in tail was counted with the chunk before
        k = data.count(b'"state":') - tail.count(b'"state":')
        msgs += data.count(b"$7\r\nmessage\r\n") - tail.count(b"$7\r\nmessage\r\n")
        if k:
            n += k
            first = first or time.time()
            last = time.time()
        tail = chunk[-16:]
    out.put((n, msgs, first, last))


def publisher(port: int, channel: bytes, rate: int, seconds: float, batch: int, out) -> None:
    """PUBLISH running+done events for rate tasks/s for seconds, batch events a message, paced by the clock."""
    import xq

    r = redis.Redis(port=port)
    per_s = rate * 2 // batch  # messages a second
    t0, sent = time.monotonic(), 0
    total = int(per_s * seconds)
    while sent < total:
        due = t0 + sent / per_s
        if (d := due - time.monotonic()) > 0:
            time.sleep(d)
        ts = int(time.time() * 1000)
        events = []
        for tid in xq.new_ids(batch // 2):
            events.append({"id": tid, "queue": QUEUE, "state": "running", "ts": ts, "attempt": 1, "worker": "bench"})
            events.append({"id": tid, "queue": QUEUE, "state": "done", "ts": ts, "result": None})
        r.publish(channel, orjson.dumps(events))
        sent += 1
    out.put((total * batch, time.monotonic() - t0))


def xq_web(url: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "XQ_WEB_TOKENS": ""}  # loopback without tokens: anonymous
    proc = subprocess.Popen([sys.executable, "-m", "xq.cli", "web", "--redis", url, "--port", str(port)],
                            env=env, cwd=BENCH, stdout=subprocess.DEVNULL)  # uvicorn's access log; errors on stderr
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None, "xq web exited"
            time.sleep(0.05)
    raise RuntimeError("xq web did not start")


def run(mode: str, clients: int, rate: int) -> None:
    from xq.keys import queue_keys

    ctx = mp.get_context("spawn")
    channel = queue_keys(QUEUE).events.encode()
    with private_redis() as (url, _):
        rport = int(url.rsplit(":", 1)[1].split("/")[0])
        r = redis.Redis.from_url(url)
        flush(r)
        ids = []
        if mode == "drain":
            import xq
            with xq.Producer(url) as p:
                for i in range(0, TASKS, 10_000):
                    ids += p.enqueue_many("noop", [None] * min(10_000, TASKS - i))
        wport = _free_port()
        web = xq_web(url, wport)
        stop, out, wout = ctx.Event(), ctx.Queue(), ctx.Queue()
        procs, worker = [], None
        try:
            readies = []
            for _ in range(clients):
                ready = ctx.Event()
                procs.append(ctx.Process(target=sse_client, args=(wport, ready, stop, out)))
                readies.append(ready)
            ready = ctx.Event()
            procs.append(ctx.Process(target=witness, args=(rport, channel, ready, stop, wout)))
            readies.append(ready)
            for pr in procs:
                pr.start()
            for ready in readies:
                assert ready.wait(30), "a client did not subscribe"
            ps = psutil.Process(web.pid)
            cpu0, t0 = ps.cpu_times(), time.monotonic()
            if mode == "drain":
                worker = xq_run(url, "--burst", "--result-ttl", "600", procs="2")
                assert worker.wait(timeout=DEADLINE) == 0
                label = f"drain of {TASKS:,} no-op tasks, xq run --procs 2"
            else:
                pout = ctx.Queue()
                pub = ctx.Process(target=publisher, args=(rport, channel, rate, SECONDS, BATCH, pout))
                pub.start()
                total, took = pout.get(timeout=DEADLINE)
                pub.join()
                label = f"synthetic {rate:,} tasks/s ({rate * 2:,} events/s) for {SECONDS} s, {BATCH} events/PUBLISH"
            time.sleep(2)  # let the stream catch up (what is still behind after 2 s counts as lag or loss)
            cpu1, wall = ps.cpu_times(), time.monotonic() - t0 - 2
            stop.set()
            pub_n, msgs, pf, pl = wout.get(timeout=30)
            got = [out.get(timeout=30) for _ in range(clients)]
        finally:
            stop.set()
            for pr in procs:
                pr.join(10)
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait(10)
            web.terminate()
            try:
                web.wait(10)
            except subprocess.TimeoutExpired:
                print("  xq web did not stop within 10 s of SIGTERM: killed", file=sys.stderr)
                web.kill()
                web.wait(10)
            r.close()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    span = max(pl - pf, 1e-9)
    print(f"{label}, {clients} SSE client(s):")
    print(f"  published {pub_n:,} events in {msgs:,} messages ({pub_n / max(msgs, 1):.0f}/message), "
          f"{pub_n / span:,.0f} events/s ({pub_n / span / 2:,.0f} tasks/s) over {span:.2f} s")
    for i, (n, f, last, lags) in enumerate(got):
        rate = n / max(last - f, 1e-9) if n else 0
        print(f"  client {i}: delivered {n:,} ({rate:,.0f} events/s), lost {pub_n - n:,}, "
              f"lag p50 {_percentile(lags, .5):,.0f} ms p99 {_percentile(lags, .99):,.0f} ms "
              f"({len(lags):,} samples)")
    print(f"  xq web CPU: {cpu:.2f} s over {wall:.2f} s = {cpu / wall * 100:.0f}% of one core "
          f"({cpu / max(pub_n, 1) * 1e6:.1f} µs an event published)")


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "both"
    counts = [int(c) for c in (sys.argv[2] if len(sys.argv) > 2 else "1,4").split(",")]
    rate = int(sys.argv[3]) if len(sys.argv) > 3 else RATE
    for m in (["drain", "synthetic"] if mode == "both" else [mode]):
        for c in counts:
            run(m, c, rate)


if __name__ == "__main__":
    main()
