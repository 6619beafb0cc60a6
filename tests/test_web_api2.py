"""`xq web`'s second API slice (issue 12): dead letters, flush, batch submit, live events (SSE and
WebSocket), the failed-auth rate limit.  Real redis-server; a real `xq run` makes dead letters and the
events; the SSE stream and the WebSocket are read from the real `xq web` (uvicorn, with the `websockets`
library of the web extra; a refused handshake's close code through Starlette's TestClient, since uvicorn
answers it as HTTP 403)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading

import httpx
import orjson
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

import xq
from xq.web import create_app
from xq.web.auth import FailLimiter
from helpers import free_port, stop_process, subscribers
from test_web_api import ADMIN, AS_ADMIN, AS_READ, READ, TOKENS, _serve, client, error_of, run
from xqrun import XQRun, wait_for

pytestmark = pytest.mark.usefixtures("no_event_subscribers")

ADMIN_ENDPOINTS = [("/api/queues/default/dead/replay", {}), ("/api/queues/default/dead/purge", {"all": True}),
                   ("/api/queues/default/flush", {"state": "dead"}),
                   ("/api/tasks/batch", {"name": "echo", "payloads": [1]})]


def bounded(fn, timeout: float = 30):
    """fn() in a thread joined with a bound: a stream that does not deliver fails instead of hanging."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "no answer in time"
    return out.get("v")


def test_admin_endpoints_refuse_no_token_and_read_tokens(redis_url, r):
    async def go():
        async with client(redis_url) as c:
            for path, body in ADMIN_ENDPOINTS:
                error_of(await c.post(path, json=body), 401, "unauthorized")
                error_of(await c.post(path, json=body, headers=AS_READ), 403, "forbidden")
            error_of(await c.get("/api/queues/default/dead"), 401, "unauthorized")
            error_of(await c.get("/api/events"), 401, "unauthorized")
    run(go())
    assert r.keys("*") == []


def test_dead_letters_list_replay_purge_and_flush(redis_url, r):
    with xq.Producer(redis_url) as p:
        ids = p.enqueue_many("boom", list(range(5)), max_retries=0)
        with XQRun(redis_url, procs=1):
            wait_for(lambda: p.dead_count("default") >= 5, 30, what="5 dead tasks")

    async def go():
        async with client(redis_url) as c:
            page = (await c.get("/api/queues/default/dead?offset=1&limit=2", headers=AS_READ)).json()
            assert page["count"] == 5 and [t["id"] for t in page["tasks"]] == ids[1:3]
            assert page["tasks"][0]["status"] == "dead" and "boom" in page["tasks"][0]["error"]
            error_of(await c.get("/api/queues/default/dead?limit=0", headers=AS_READ), 422, "invalid", "limit")
            error_of(await c.get(f"/api/queues/default/dead?offset={10**30}", headers=AS_READ), 422, "invalid", "offset")
            resp = await c.post("/api/queues/default/dead/replay", headers=AS_ADMIN,
                                json={"ids": ids[:2], "priority": "high", "to_queue": "other"})
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"queue": "other", "replayed": ids[:2], "count": 2, "skipped": []}
            resp = await c.post("/api/queues/default/dead/replay", headers=AS_ADMIN, json={"ids": [ids[2], "NOPE"]})
            assert resp.json()["replayed"] == [ids[2]] and resp.json()["skipped"] == ["NOPE"]  # named, not silent
            error_of(await c.post("/api/queues/default/dead/replay", headers=AS_ADMIN, json={"priority": 42}),
                     422, "invalid", "priority")
            error_of(await c.post("/api/queues/default/dead/replay", headers=AS_ADMIN, json={"ids": "x"}),
                     422, "invalid", "ids")
            resp = await c.post("/api/queues/default/dead/purge", headers=AS_ADMIN, json={"ids": [ids[3], "nope"]})
            assert resp.json() == {"queue": "default", "purged": 1, "ids": [ids[3]]}
            error_of(await c.post("/api/queues/default/dead/purge", headers=AS_ADMIN, json={}), 422, "invalid", "ids")
            resp = await c.post("/api/queues/default/dead/purge", headers=AS_ADMIN, json={"all": True})
            assert resp.json() == {"queue": "default", "purged": 1}
            resp = await c.post("/api/queues/default/flush", headers=AS_ADMIN, json={"state": "queued"})
            assert resp.json() == {"queue": "default", "state": "queued", "deleted": 1}  # ids[2], replayed in place
            msg = error_of(await c.post("/api/queues/default/flush", headers=AS_ADMIN, json={"state": "running"}),
                           422, "invalid", "state")
            assert "cancel" in msg
    run(go())
    with xq.Producer(redis_url) as p:
        assert p.dead_count("default") == 0
        assert p.status(ids[0])["queue"] == "other" and p.status(ids[0])["status"] == "queued"
        assert r.exists(f"xq:{{default}}:task:{ids[3]}") == 0


def test_batch_submit_bounds_and_options(redis_url, r, monkeypatch):
    from xq.web import api
    monkeypatch.setattr(api, "MAX_BATCH", 3)

    async def go():
        async with client(redis_url, max_payload=1000) as c:
            resp = await c.post("/api/tasks/batch", headers=AS_ADMIN,
                                json={"name": "echo", "payloads": [1, {"a": 2}, None], "queue": "b", "priority": 2})
            assert resp.status_code == 201, resp.text
            got = resp.json()
            assert got["queue"] == "b" and len(got["ids"]) == 3
            error_of(await c.post("/api/tasks/batch", headers=AS_ADMIN, json={"name": "echo", "payloads": [1] * 4}),
                     413, "too_many", "payloads")
            error_of(await c.post("/api/tasks/batch", headers=AS_ADMIN, json={"name": "echo", "payloads": []}),
                     422, "invalid", "payloads")
            error_of(await c.post("/api/tasks/batch", headers=AS_ADMIN,
                                  json={"name": "echo", "payloads": [1], "task_id": "x"}), 422, "invalid", "task_id")
            error_of(await c.post("/api/tasks/batch", headers=AS_ADMIN,
                                  json={"name": "echo", "payloads": [1], "priority": 99}), 422, "invalid", "priority")
            error_of(await c.post("/api/tasks/batch", headers=AS_ADMIN,
                                  json={"name": "echo", "payloads": ["x" * 2000]}), 413, "payload_too_large")
            return got["ids"]
    ids = run(go())
    assert r.llen("xq:{b}:ready:2") == 3 and r.lrange("xq:{b}:ready:2", 0, -1) == [i.encode() for i in ids]


def test_failed_tokens_are_rate_limited_per_address(redis_url):
    lim = FailLimiter(limit=3, window=60, block=300, max_clients=2)
    for _ in range(3):
        assert lim.blocked_for("a", 0) == 0
        lim.fail("a", 0)
    assert lim.blocked_for("a", 1) == 299
    lim.fail("b", 1)
    lim.fail("c", 1)  # bounded: "a", the oldest, is forgotten
    assert lim.blocked_for("a", 1) == 0 and len(lim._seen) == 2

    async def go():
        async with client(redis_url) as c:
            c._transport.app.state.xq.limiter = FailLimiter(limit=3, window=60, block=300)
            for _ in range(3):
                error_of(await c.get("/api/queues", headers={"Authorization": "Bearer wrong-token"}), 401,
                         "unauthorized")
            resp = await c.get("/api/queues", headers=AS_READ)  # blocked now, even with a good token
            error_of(resp, 429, "too_many_failures")
            assert 299 <= int(resp.headers["retry-after"]) <= 300
            assert ADMIN not in resp.text
    run(go())


async def _raw_sse(app, path: str, until, timeout: float = 20):
    """GET path on the ASGI app by hand (httpx's ASGI transport buffers whole bodies): the body chunks
    until until(chunks) is true, then the client disconnects; returns the chunks once the app has ended."""
    chunks, gone, asked = [], asyncio.Event(), []

    async def receive():
        if not asked:
            asked.append(1)
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(msg):
        if msg["type"] == "http.response.start":
            chunks.append(msg)
        elif msg.get("body"):
            chunks.append(msg["body"])
            if until(chunks):
                gone.set()

    path, _, qs = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": qs.encode(), "root_path": "",
             "headers": [(b"host", b"xq")], "client": ("127.0.0.1", 5000), "server": ("xq", 80)}
    await asyncio.wait_for(app(scope, receive, send), timeout)
    return chunks


def test_sse_heartbeat_and_no_subscription_left_after_a_disconnect(redis_url, r):
    async def go():
        app = create_app(redis_url, tokens=TOKENS)
        app.state.xq.heartbeat = 0.1
        try:
            chunks = await _raw_sse(app, f"/api/events?queue=default&token={READ}",
                                    lambda cs: sum(c == b": heartbeat\n\n" for c in cs) >= 2)
            start = chunks[0]
            assert start["status"] == 200 and (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
            assert chunks[1] == b": subscribed\n\n"
            bad = await _raw_sse(app, "/api/events?states=nope&token=" + READ, lambda cs: True)
            assert bad[0]["status"] == 422 and orjson.loads(bad[1])["error"]["field"] == "states"
        finally:
            await app.state.xq.producer.close()
            app.state.xq.sync.close()
    run(go())
    wait_for(lambda: subscribers(r) == 0, 10, 0.05, "the stream's subscription to close")


def test_events_over_sse_and_websocket_from_a_real_run(redis_url, r):
    proc, base = _serve(redis_url, free_port(), {"XQ_WEB_TOKENS": ",".join(TOKENS)})
    app = create_app(redis_url, tokens=TOKENS)
    try:
        with XQRun(redis_url, procs=1), httpx.Client(base_url=base, timeout=10) as c, TestClient(app) as tc:
            for path, code, words in [("?token=nope", 4401, "Bearer"), ("?states=nope", 4401, "Bearer"),
                                      (f"?states=nope&token={READ}", 4422, "unknown event state")]:
                with pytest.raises(WebSocketDisconnect) as e:  # accepted, then closed with the code
                    with tc.websocket_connect("/api/events/ws" + path) as ws:
                        ws.receive_text()
                assert e.value.code == code and words in e.value.reason
            # the same refusal over a real WebSocket: its close code and reason reach the client (a refusal
            # before accepting reached it as a bare HTTP 403, whatever the error)
            with ws_connect(f"ws{base[4:]}/api/events/ws?token=nope", proxy=None, open_timeout=10) as ws:
                with pytest.raises(ConnectionClosed) as e:
                    ws.recv(timeout=10)
            assert e.value.rcvd.code == 4401 and "Bearer" in e.value.rcvd.reason
            with c.stream("GET", f"/api/events?queue=default&token={READ}") as sse, \
                    ws_connect(f"ws{base[4:]}/api/events/ws?queue=default&states=queued,running,done",
                               additional_headers=AS_READ, proxy=None, open_timeout=10) as ws:
                lines = sse.iter_lines()
                assert bounded(lambda: next(lines)) == ": subscribed"
                wait_for(lambda: subscribers(r) == 2, 10, 0.05, "both streams to subscribe")
                tid = c.post("/api/tasks", headers=AS_ADMIN, json={"name": "echo", "payload": 1}).json()["id"]

                def read_sse():
                    seen = []
                    for line in lines:
                        if line.startswith("data: "):
                            ev = orjson.loads(line[6:])
                            if ev["id"] == tid:
                                seen.append(ev["state"])
                                if ev["state"] == "done":
                                    return seen

                def read_ws():
                    seen = []
                    while "done" not in seen:
                        ev = orjson.loads(ws.recv(timeout=30))
                        assert ev["id"] == tid and ev["queue"] == "default"
                        seen.append(ev["state"])
                    return seen
                assert bounded(read_sse) == ["queued", "running", "done"]
                assert bounded(read_ws) == ["queued", "running", "done"]
                ws.close()
                wait_for(lambda: subscribers(r) == 1, 10, 0.05, "the WebSocket's subscription to close")
                sse.close()
            wait_for(lambda: subscribers(r) == 0, 10, 0.05, "both streams' subscriptions to close")
    finally:
        stop_process(proc)
    out = proc.stdout.read()
    assert ADMIN not in out and READ not in out and "token=***" in out  # the SSE's ?token= is hidden in the access log


@pytest.fixture
def live_app(redis_url):
    """(app, base URL): the app under uvicorn in a thread (so a test can change its module's settings)."""
    import uvicorn

    app = create_app(redis_url, tokens=TOKENS)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    wait_for(lambda: server.started, 20, 0.05, "uvicorn to start")
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    t.join(10)
    assert not t.is_alive(), "uvicorn did not stop"


def _small_window() -> socket.socket:
    """A TCP socket with a small receive buffer: a client that stops reading makes the server's writes
    wait soon (set before connecting, so the window is small from the start)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return s


def test_a_client_that_does_not_read_loses_events_with_a_notice_and_blocks_nobody(live_app, r, monkeypatch):
    from xq.web import api
    monkeypatch.setattr(api, "BACKLOG", 1000)
    _, base = live_app
    port = int(base.rsplit(":", 1)[1])
    n, step, filler = 6000, 500, os.urandom(500).hex()  # ~1 KB an event, incompressible: 6 MB in all
    ids = xq.new_ids(n)
    order = {t: i for i, t in enumerate(ids)}
    slow_sse, ws_sock = _small_window(), _small_window()
    with contextlib.ExitStack() as stack:
        stack.callback(slow_sse.close)
        stack.callback(ws_sock.close)
        slow_sse.connect(("127.0.0.1", port))
        slow_sse.settimeout(30)
        slow_sse.sendall(f"GET /api/events?queue=default&token={READ} HTTP/1.1\r\nHost: xq\r\n\r\n".encode())
        head = b""
        while b": subscribed" not in head:
            head += slow_sse.recv(4096)
        ws_sock.connect(("127.0.0.1", port))
        slow_ws = stack.enter_context(ws_connect(f"ws{base[4:]}/api/events/ws?queue=default&token={READ}",
                                                 sock=ws_sock, proxy=None, compression=None, max_queue=2,
                                                 max_size=None, open_timeout=10))
        with httpx.Client(base_url=base, timeout=30) as c, \
                c.stream("GET", f"/api/events?queue=default&token={READ}") as fast:
            lines = fast.iter_lines()
            assert bounded(lambda: next(lines)) == ": subscribed"
            wait_for(lambda: subscribers(r) == 3, 10, 0.05, "three streams to subscribe")
            got = []

            def read_fast():
                for line in lines:
                    if line.startswith("data: "):
                        got.append(orjson.loads(line[6:]).get("id"))
                        if len(got) == n:
                            return
            reader = threading.Thread(target=read_fast, daemon=True)
            reader.start()
            for i in range(0, n, step):  # a step at a time, each read by the fast client before the next
                for j in range(i, i + step, 50):
                    r.publish("xq:{default}:events", orjson.dumps(
                        [{"id": t, "queue": "default", "state": "done", "ts": 1, "result": filler}
                         for t in ids[j:j + 50]]))
                wait_for(lambda: len(got) >= i + step, 30, 0.01, "the reading client to get every event")
            reader.join(10)
            assert got == ids  # the clients that read nothing did not hold it back

        def read_slow_sse():  # now read: the events held, the notice of what was dropped at the gap, ...
            buf, got, dropped = b"", [], 0
            while len(got) + dropped < n:
                buf += slow_sse.recv(1 << 20)
                *frames, buf = buf.split(b"\n\n")
                for f in frames:
                    if f.startswith(b"event: overflow\ndata: "):
                        dropped += orjson.loads(f[22:])["dropped"]
                    elif b"\ndata: " in f:
                        got.append(orjson.loads(f[f.index(b"\ndata: ") + 7:])["id"])
            return got, dropped

        def read_slow_ws():
            got, dropped = [], 0
            while len(got) + dropped < n:
                msg = orjson.loads(slow_ws.recv(timeout=30))
                if msg.get("overflow"):
                    dropped += msg["dropped"]
                else:
                    got.append(msg["id"])
            return got, dropped

        for read in (read_slow_sse, read_slow_ws):
            got, dropped = bounded(read)
            assert dropped > 0 and len(got) + dropped == n, (read.__name__, len(got), dropped)
            assert sorted(got, key=order.get) == got  # what arrives keeps the published order
    wait_for(lambda: subscribers(r) == 0, 10, 0.05, "the streams' subscriptions to close")


def test_sigterm_stops_xq_web_with_event_streams_open(redis_url, r):
    """An open SSE stream or WebSocket never ends by itself: SIGTERM must still stop `xq web` (uvicorn waits
    for open connections only a bounded grace), and the streams' subscriptions go with it.  The SSE client
    is a plain socket that keeps the connection open, as a browser's EventSource does."""
    proc, base = _serve(redis_url, free_port(), {"XQ_WEB_TOKENS": ",".join(TOKENS)})
    port = int(base.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sse, \
                ws_connect(f"ws{base[4:]}/api/events/ws?queue=default&token={READ}", proxy=None, open_timeout=10):
            sse.sendall(f"GET /api/events?queue=default HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READ}\r\n"
                        f"Accept: text/event-stream\r\n\r\n".encode())
            assert sse.recv(4096).startswith(b"HTTP/1.1 200")
            wait_for(lambda: subscribers(r) == 2, 10, 0.05, "both streams to subscribe")
            proc.terminate()
            wait_for(lambda: proc.poll() is not None, 20, 0.05, "xq web to exit on SIGTERM")
        assert proc.returncode in (0, -signal.SIGTERM), proc.stdout.read()  # uvicorn re-raises the signal
        wait_for(lambda: subscribers(r) == 0, 10, 0.05, "the streams' subscriptions to close")
        out = proc.stdout.read()
        assert READ not in out and "token=***" in out  # the WebSocket's ?token= is hidden in uvicorn's log
    finally:
        stop_process(proc)


def test_event_streams_say_why_they_end_when_redis_goes_away(fresh_redis):
    # An outage longer than the app's retry window ended /api/events with no word (curl exited 0) and
    # the WebSocket with a plain 1000: now an `event: error` frame, and close code 4503 with the reason.
    async def go():
        app = create_app(fresh_redis.url, tokens=TOKENS)
        try:
            def stopped(chunks):  # stop Redis once subscribed; read on until the stream ends
                if chunks[-1] == b": subscribed\n\n":
                    fresh_redis.stop()
                return False
            return await _raw_sse(app, "/api/events?token=" + READ, stopped, timeout=30)
        finally:
            await app.state.xq.producer.close()
            app.state.xq.sync.close()
    chunks = run(go(), timeout=40)
    assert chunks[0]["status"] == 200
    last = chunks[-1]
    assert last.startswith(b"event: error\ndata: "), chunks
    assert orjson.loads(last.split(b"data: ", 1)[1])["error"]["code"] == "redis_unavailable"


def test_a_websocket_stream_closes_with_4503_when_redis_goes_away(fresh_redis):
    app = create_app(fresh_redis.url, tokens=TOKENS)
    with TestClient(app) as tc:
        with tc.websocket_connect(f"/api/events/ws?token={READ}") as ws:
            fresh_redis.stop()
            with pytest.raises(WebSocketDisconnect) as e:
                ws.receive_text()
    assert e.value.code == 4503 and "unreachable" in e.value.reason
