"""`xq web`'s JSON API (issue 12, first slice): auth, endpoints, errors, readiness, the off-loopback refusal.

Real redis-server (conftest fixtures); the app runs in-process through httpx's ASGI transport, except the
end-to-end test, which runs the real `xq web` (uvicorn) and a real `xq run`.  asyncio.run inside sync tests
(no plugin), as tests/test_aio.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys

import httpx
import orjson
import pytest

import xq
from xq.errors import ConfigError
from xq.keys import queue_keys
from xq.web import ROUTES, create_app
from xq.web.auth import load_tokens, match, parse_tokens
from xq.web.openapi import DOCUMENT
from helpers import free_port, stop_process
from xqrun import TESTS, XQRun, wait_for

ADMIN = "adm-0123456789abcdef"
READ = "read-0123456789abcdef"
TOKENS = [f"ops:admin:{ADMIN}", f"viewer:read:{READ}"]
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
AS_READ = {"Authorization": f"Bearer {READ}"}

ADMIN_ENDPOINTS = [("POST", "/api/tasks"), ("POST", "/api/tasks/01ABC/cancel"),
                   ("POST", "/api/queues/default/pause"), ("POST", "/api/queues/default/resume")]
READ_ENDPOINTS = ["/api/queues", "/api/queues/default", "/api/queues/default/tasks?state=queued",
                  "/api/queues/default/history", "/api/tasks/01ABC", "/api/workers", "/api/workers/w1"]


def run(coro, timeout: float = 30):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def client(url: str, **kw):
    app = create_app(url, tokens=kw.pop("tokens", TOKENS), **kw)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://xq") as c:
            yield c
    finally:
        await app.state.xq.producer.close()


def error_of(resp: httpx.Response, status: int, code: str, field: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    err = resp.json()["error"]
    assert err["code"] == code, err
    if field is not None:
        assert err.get("field") == field, err
    return err["message"]


# ---------------------------------------------------------------- auth
def test_every_admin_endpoint_refuses_no_token_a_bad_one_and_a_read_one(redis_url, r):
    async def go():
        async with client(redis_url) as c:
            for method, path in ADMIN_ENDPOINTS:
                body = {"json": {"name": "echo"}}
                resp = await c.request(method, path, **body)
                error_of(resp, 401, "unauthorized")
                assert resp.headers["www-authenticate"].startswith("Bearer")
                error_of(await c.request(method, path, headers={"Authorization": "Bearer nope"}, **body),
                         401, "unauthorized")
                error_of(await c.request(method, path, headers={"Authorization": f"Basic {ADMIN}"}, **body),
                         401, "unauthorized")
                msg = error_of(await c.request(method, path, headers=AS_READ, **body), 403, "forbidden")
                assert "viewer" in msg and READ not in msg
    run(go())
    assert r.keys("*") == []  # nothing enqueued, nothing paused


def test_read_endpoints_need_a_token_and_probes_do_not(redis_url):
    async def go():
        async with client(redis_url) as c:
            for path in READ_ENDPOINTS:
                error_of(await c.get(path), 401, "unauthorized")
                assert (await c.get(path, headers=AS_READ)).status_code in (200, 404)
                assert (await c.get(path, headers=AS_ADMIN)).status_code in (200, 404)
            assert (await c.get("/healthz")).json() == {"status": "ok"}
            assert (await c.get("/readyz")).json() == {"status": "ready"}
            assert (await c.get("/openapi.json")).json()["openapi"].startswith("3.1")
    run(go())


def test_token_specs_are_checked_without_echoing_the_secret(tmp_path):
    assert [(t.name, t.role) for t in parse_tokens(TOKENS, "x")] == [("ops", "admin"), ("viewer", "read")]
    for spec, words in [("a:owner:0123456789abcdefXYZ", "role 'owner'"), ("a:read:SHORTsecret", "shorter"),
                        ("a:read", "name:role:token"), (":read:0123456789abcdefXYZ", "name:role:token")]:
        with pytest.raises(ConfigError, match=words) as e:
            parse_tokens([spec], "XQ_WEB_TOKENS")
        assert "SHORTsecret" not in str(e.value) and "XYZ" not in str(e.value)
    with pytest.raises(ConfigError, match="'a' is used twice"):
        parse_tokens(["a:read:0123456789abcdef1", "a:admin:0123456789abcdef2"], "x")
    f = tmp_path / "tokens"
    f.write_text(f"# ops team\nops:admin:{ADMIN}\n\n")
    assert [t.name for t in load_tokens(str(f), env=f"viewer:read:{READ}")] == ["viewer", "ops"]
    with pytest.raises(ConfigError, match="cannot read the tokens file"):
        load_tokens(str(tmp_path / "missing"), env="")
    tokens = parse_tokens(TOKENS, "x")
    assert match(tokens, f"Bearer {READ}").name == "viewer"
    assert match(tokens, f"bearer  {ADMIN} ").name == "ops"
    assert match(tokens, f"Bearer {ADMIN[:-1]}") is None and match(tokens, None) is None
    with pytest.raises(ConfigError, match="anonymous=True"):
        create_app("redis://127.0.0.1:1/0", tokens=[])


# ---------------------------------------------------------------- endpoints
def test_submit_inspect_cancel_pause_resume(redis_url, r):
    async def go():
        async with client(redis_url) as c:
            resp = await c.post("/api/tasks", headers=AS_ADMIN, json={"name": "echo", "payload": {"n": 1},
                                                                      "priority": "high", "max_retries": 1})
            assert resp.status_code == 201, resp.text
            tid = resp.json()["id"]
            assert resp.json() == {"id": tid, "queue": "default"}
            later = (await c.post("/api/tasks", headers=AS_ADMIN, json={
                "name": "echo", "queue": "jobs", "delay": 600, "timeout": 5.5, "expires": 3600,
                "concurrency_key": "k", "max_concurrency": 2, "rate_key": "r", "rate_limit": "5/s",
                "result_ttl": 60, "unique_key": "u1"})).json()["id"]
            child = (await c.post("/api/tasks", headers=AS_ADMIN, json={
                "name": "echo", "queue": "jobs", "depends_on": [later], "task_id": "my-child"})).json()["id"]
            assert child == "my-child"

            st = (await c.get(f"/api/tasks/{tid}", headers=AS_READ)).json()
            assert (st["id"], st["status"], st["priority"], st["max_retries"]) == (tid, "queued", 2, 1)
            with xq.Producer(redis_url) as p:  # the same view as the library's
                assert {**p.status(tid), "payload": {"n": 1}, "result": None, "result_info": None,
                        "payload_info": {"type": "json", "size": 7, "inline": True,
                                         "href": f"/api/tasks/{tid}/payload?queue=default"}} == st
                assert p.status(later)["status"] == "scheduled"
            assert (await c.get(f"/api/tasks/{child}?queue=jobs", headers=AS_READ)).json()["status"] == "waiting"

            queues = (await c.get("/api/queues", headers=AS_READ)).json()["queues"]
            assert {q["queue"]: q["ready"] + q["scheduled"] for q in queues} == {"default": 1, "jobs": 1}
            one = (await c.get("/api/queues/jobs?by_name=1", headers=AS_READ)).json()
            assert one["scheduled"] == 1 and one["waiting"] == 1
            page = (await c.get("/api/queues/jobs/tasks?state=scheduled&limit=10", headers=AS_READ)).json()
            assert [t["id"] for t in page["tasks"]] == [later]
            hist = (await c.get("/api/queues/default/history?minutes=3", headers=AS_READ)).json()
            assert hist["queue"] == "default" and len(hist["history"]) == 3

            resp = await c.post(f"/api/tasks/{later}/cancel?queue=jobs", headers=AS_ADMIN)
            assert resp.json() == {"id": later, "outcome": "canceled"}

            assert (await c.post("/api/queues/jobs/pause", headers=AS_ADMIN)).json() == \
                {"queue": "jobs", "paused": True, "changed": True}
            assert r.exists(queue_keys("jobs").paused)
            assert (await c.post("/api/queues/jobs/pause", headers=AS_ADMIN)).json()["changed"] is False
            assert (await c.get("/api/queues/jobs", headers=AS_READ)).json()["paused"] is True
            assert (await c.post("/api/queues/jobs/resume", headers=AS_ADMIN)).json()["changed"] is True
            assert not r.exists(queue_keys("jobs").paused)
            assert (await c.get("/api/workers", headers=AS_READ)).json() == {"workers": []}
    run(go())


@pytest.mark.parametrize("body,status,field", [
    ({"payload": 1}, 422, "name"),
    ({"name": 5}, 422, "name"),
    ({"name": "echo", "priority": 42}, 422, "priority"),
    ({"name": "echo", "priority": "urgent"}, 422, "priority"),
    ({"name": "echo", "priority": True}, 422, "priority"),
    ({"name": "echo", "delay": "soon"}, 422, "delay"),
    ({"name": "echo", "delay": -1}, 422, "delay"),
    ({"name": "echo", "max_retries": 1.5}, 422, "max_retries"),
    ({"name": "echo", "max_retries": -1}, 422, "max_retries"),
    ({"name": "echo", "queue": "bad queue"}, 422, "queue"),
    ({"name": "echo", "rate_key": "r", "rate_limit": "fast"}, 422, "rate_limit"),
    ({"name": "echo", "max_concurrency": 2}, 422, None),  # needs a concurrency_key: the message says so
    ({"name": "echo", "depends_on": [1]}, 422, "depends_on"),
    ({"name": "echo", "depends_on": ["no-such-task"]}, 404, None),
    ({"name": "echo", "task_id": "has space"}, 422, "task_id"),
    ({"name": "echo", "result_ttl": 0}, 422, "result_ttl"),
    ({"name": "echo", "pickle": "x"}, 422, "pickle"),
    ([1, 2], 422, "body"),
])
def test_bad_submit_gets_a_4xx_naming_the_field(redis_url, r, body, status, field):
    async def go():
        async with client(redis_url) as c:
            resp = await c.post("/api/tasks", headers=AS_ADMIN, json=body)
            assert resp.status_code == status, resp.text
            err = resp.json()["error"]
            if field is not None:
                assert err["field"] == field, err
                assert field in err["message"] or field.replace("_", " ") in err["message"], err
            else:
                assert err["message"]
    run(go())
    assert r.keys("xq:{default}:*") == []


def test_bad_json_oversized_payload_and_bad_query_params(redis_url):
    async def go():
        async with client(redis_url, max_payload=1000) as c:
            error_of(await c.post("/api/tasks", headers=AS_ADMIN, content=b"{nope"), 400, "bad_json", "body")
            error_of(await c.post("/api/tasks", headers=AS_ADMIN, json={"name": "echo", "payload": "x" * 2000}),
                     413, "payload_too_large", "payload")
            for path, field in [("/api/queues/default/tasks", "state"),
                                ("/api/queues/default/tasks?state=bogus", "state"),
                                ("/api/queues/default/tasks?state=queued&offset=-1", "offset"),
                                ("/api/queues/default/tasks?state=queued&limit=x", "limit"),
                                ("/api/queues/default/tasks?state=queued&limit=100000", "limit"),
                                ("/api/queues/default/history?minutes=0", "minutes"),
                                ("/api/queues?by_name=maybe", "by_name"),
                                ("/api/queues/bad%20name", "queue"),
                                ("/api/tasks/01ABC?queue=bad%20name", "queue")]:
                error_of(await c.get(path, headers=AS_READ), 422, "invalid", field)
            error_of(await c.post("/api/queues/bad%20name/pause", headers=AS_ADMIN), 422, "invalid", "queue")
    run(go())


def test_unknown_ids_are_404_with_the_message(redis_url):
    async def go():
        async with client(redis_url) as c:
            msg = error_of(await c.get("/api/tasks/01NOSUCH", headers=AS_READ), 404, "not_found")
            assert "01NOSUCH" in msg
            error_of(await c.get("/api/tasks/01NOSUCH?queue=jobs", headers=AS_READ), 404, "not_found")
            error_of(await c.post("/api/tasks/01NOSUCH/cancel?queue=default", headers=AS_ADMIN), 404, "not_found")
            assert "w-1" in error_of(await c.get("/api/workers/w-1", headers=AS_READ), 404, "not_found")
            error_of(await c.get("/api/nothing", headers=AS_READ), 404, "not_found")
    run(go())


def test_a_bug_is_a_logged_json_500_and_the_app_mounts_under_a_prefix(redis_url, caplog):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    async def broken():
        raise RuntimeError("a bug")

    async def go():
        inner = create_app(redis_url, tokens=TOKENS)
        inner.state.xq.inspector.workers = broken
        outer = Starlette(routes=[Mount("/xq", app=inner)])
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://x") as c:
                assert "RuntimeError" in error_of(await c.get("/xq/api/workers", headers=AS_READ), 500, "internal")
                assert (await c.get("/xq/api/queues", headers=AS_READ)).json() == {"queues": []}
                error_of(await c.get("/xq/api/queues"), 401, "unauthorized")
        finally:
            await inner.state.xq.producer.close()
    run(go())
    assert "GET /xq/api/workers failed" in caplog.text and "a bug" in caplog.text


def test_redis_down_is_503_on_readyz_and_the_api(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def go():
        async with client(url, retry_for=0) as c:
            assert (await c.get("/healthz")).status_code == 200  # the process is alive
            assert "127.0.0.1" in error_of(await c.get("/readyz"), 503, "redis_unavailable")
            error_of(await c.get("/api/queues", headers=AS_READ), 503, "redis_unavailable")
            error_of(await c.post("/api/tasks", headers=AS_ADMIN, json={"name": "echo"}), 503, "redis_unavailable")
    run(go())


def test_openapi_document_lists_every_route_with_its_methods_and_security():
    paths = DOCUMENT["paths"]
    assert DOCUMENT["openapi"].startswith("3.1")
    assert DOCUMENT["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    routes = {}
    for route in ROUTES:
        routes[route.path] = {m.lower() for m in route.methods if m != "HEAD"}
    assert set(paths) == set(routes)
    for path, methods in routes.items():
        assert set(paths[path]) == methods, path
        for m, op in paths[path].items():
            probe = path in ("/healthz", "/readyz", "/openapi.json")
            assert ("security" in op and op["security"] == []) == probe, (path, m)
            for name in op.get("parameters", []):
                assert name.get("$ref") or name["in"] in ("path", "query")
            assert "200" in op["responses"] or "201" in op["responses"]
    orjson.dumps(DOCUMENT)  # JSON-serialisable as served


# ---------------------------------------------------------------- the command
def _web(url: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    e = {**os.environ, "XQ_WEB_TOKENS": "", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "xq.cli", "web", "--redis", url, *args], cwd=TESTS, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_off_loopback_without_tokens_refuses_to_start(redis_url):
    proc = _web(redis_url, "--host", "0.0.0.0", "--port", str(free_port()))
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2, out
    assert "refusing to serve on 0.0.0.0 without tokens" in out and "XQ_WEB_TOKENS" in out
    proc = _web(redis_url, "--port", str(free_port()), env={"XQ_WEB_TOKENS": "a:root:0123456789abcdefSECRET"})
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "role 'root'" in out and "SECRET" not in out, out


def _serve(url: str, port: int, env: dict):
    proc = _web(url, "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            assert proc.poll() is None, proc.stdout.read()
            return False
    wait_for(up, 20, 0.05, "xq web to answer")
    return proc, base


def test_end_to_end_submit_run_and_read_the_result(redis_url):
    port = free_port()
    proc, base = _serve(redis_url, port, {"XQ_WEB_TOKENS": ",".join(TOKENS)})
    try:
        with XQRun(redis_url, procs=1) as sup, httpx.Client(base_url=base, timeout=10) as c:
            resp = c.post("/api/tasks", headers=AS_ADMIN, json={"name": "echo", "payload": {"hello": [1, 2]}})
            assert resp.status_code == 201, resp.text
            tid = resp.json()["id"]
            st = wait_for(lambda: (lambda s: s if s["status"] == "done" else None)(
                c.get(f"/api/tasks/{tid}", headers=AS_READ).json()), 30, 0.05, "the task to be done")
            assert st["result"] == {"hello": [1, 2]} and st["attempts"] == 1
            with xq.Producer(redis_url) as p:  # a bytes result is not inlined: its info links its download
                raw = p.enqueue("reverse", b"abc\xff")
                p.result(raw, timeout=30)
            got = c.get(f"/api/tasks/{raw}", headers=AS_READ).json()
            assert got["result"] is None and got["result_info"] == {
                "type": "bytes", "size": 4, "inline": False, "href": f"/api/tasks/{raw}/result?queue=default"}
            assert c.get(got["result_info"]["href"], headers=AS_READ).content == b"\xffcba"
            workers = c.get("/api/workers", headers=AS_READ).json()["workers"]
            assert len(workers) == 1
            assert c.get(f"/api/workers/{workers[0]['id']}", headers=AS_READ).json()["id"] == workers[0]["id"]
            assert c.post("/api/tasks", json={"name": "echo"}).status_code == 401
            assert sup.proc.poll() is None
    finally:
        stop_process(proc)
    out = proc.stdout.read()
    assert "ops (admin), viewer (read)" in out and ADMIN not in out and READ not in out


def test_loopback_without_tokens_serves_anyone_and_says_so(redis_url):
    proc, base = _serve(redis_url, free_port(), {})
    try:
        assert httpx.get(f"{base}/api/queues", timeout=10).json() == {"queues": []}
    finally:
        stop_process(proc)
    assert "no tokens: every request on 127.0.0.1 is allowed as admin" in proc.stdout.read()


def test_without_the_web_extra_xq_web_says_which_to_install(tmp_path, redis_url):
    """A `starlette` that cannot be imported (shadowed on PYTHONPATH) stands in for a missing extra."""
    (tmp_path / "starlette").mkdir()
    (tmp_path / "starlette" / "__init__.py").write_text("raise ImportError('no starlette here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "xq.cli", "web", "--redis", redis_url, "--port", str(free_port())],
                         cwd=TESTS, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "xq web needs the optional extra: pip install 'xq-queue[web]'" in out.stderr
