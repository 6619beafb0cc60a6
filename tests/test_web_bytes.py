"""`xq web` and raw bytes (issue 12): a bytes payload submitted over HTTP (application/octet-stream, the options
as query parameters), payload and result downloads (/api/tasks/{id}/payload, /result; the dashboard's
/tasks/{id}/payload, /result behind its session cookie), the task view marking what it does not inline.
Real redis-server; a real `xq run` (tests/apps/basic.py: reverse returns bytes); the app in-process through
Starlette's TestClient."""

from __future__ import annotations

import contextlib

import pytest
from starlette.testclient import TestClient

import xq
from xq.inspect import PREVIEW, Inspector
from xq.keys import queue_keys
from xq.web import create_app
from test_web_api import ADMIN, AS_ADMIN, AS_READ, READ, TOKENS, error_of
from xqrun import XQRun, wait_for

OCTETS = {"Content-Type": "application/octet-stream"}
EVERY_BYTE = bytes(range(256)) * 3


@contextlib.contextmanager
def web(url: str, **kw):
    with TestClient(create_app(url, tokens=TOKENS, **kw), base_url="http://xq") as c:
        yield c


def submit_bytes(c, body: bytes, query: str, headers=AS_ADMIN):
    return c.post(f"/api/tasks?{query}", content=body, headers={**headers, **OCTETS})


def done(c, tid: str) -> dict:
    return wait_for(lambda: (lambda v: v if v["status"] == "done" else None)(
        c.get(f"/api/tasks/{tid}", headers=AS_READ).json()), 30, 0.05, f"task {tid} to be done")


def test_submit_bytes_run_and_download_the_result_byte_exact(redis_url):
    with web(redis_url) as c, XQRun(redis_url, procs=1, queues="bin") as sup:
        resp = submit_bytes(c, EVERY_BYTE, "name=reverse&queue=bin&priority=high&max_retries=0&timeout=30")
        assert resp.status_code == 201, resp.text
        tid = resp.json()["id"]
        assert resp.json() == {"id": tid, "queue": "bin"}
        view = done(c, tid)
        assert (view["priority"], view["max_retries"], view["timeout"]) == (2, 0, 30.0)
        href = f"/api/tasks/{tid}/result?queue=bin"
        assert view["result"] is None and view["result_info"] == {
            "type": "bytes", "size": len(EVERY_BYTE), "inline": False, "href": href}
        assert view["payload"] is None and view["payload_info"] == {
            "type": "bytes", "size": len(EVERY_BYTE), "inline": False, "href": f"/api/tasks/{tid}/payload?queue=bin"}

        got = c.get(href, headers=AS_READ)
        assert got.status_code == 200 and got.content == EVERY_BYTE[::-1]
        assert got.headers["content-type"] == "application/octet-stream"
        assert got.headers["content-disposition"] == f'attachment; filename="{tid}.result"'
        assert got.headers["content-length"] == str(len(EVERY_BYTE))
        assert c.get(f"/api/tasks/{tid}/result", headers=AS_READ).content == EVERY_BYTE[::-1]  # queue looked up
        pl = c.get(f"/api/tasks/{tid}/payload", headers=AS_READ)
        assert pl.content == EVERY_BYTE and pl.headers["content-disposition"] == f'attachment; filename="{tid}.payload"'
        with xq.Producer(redis_url) as p:  # the library sees the bytes the browser sent
            assert p.result(tid, timeout=5, queue="bin") == EVERY_BYTE[::-1]
        empty = submit_bytes(c, b"", "name=reverse&queue=bin").json()["id"]
        done(c, empty)
        assert c.get(f"/api/tasks/{empty}/result", headers=AS_READ).content == b""
        assert sup.proc.poll() is None


def test_json_payload_and_result_come_as_json_and_a_large_one_is_not_inlined(redis_url):
    big = {"s": "x" * PREVIEW}
    with web(redis_url) as c, XQRun(redis_url, procs=1, queues="js"):
        small = c.post("/api/tasks", headers=AS_ADMIN, json={"name": "echo", "queue": "js", "payload": [1, "é"]})
        large = c.post("/api/tasks", headers=AS_ADMIN, json={"name": "echo", "queue": "js", "payload": big})
        v = done(c, small.json()["id"])
        assert v["payload"] == v["result"] == [1, "é"]
        assert v["result_info"]["type"] == "json" and v["result_info"]["inline"]
        got = c.get(v["result_info"]["href"], headers=AS_READ)
        assert got.headers["content-type"] == "application/json" and "content-disposition" not in got.headers
        assert got.json() == [1, "é"]
        assert c.get(v["payload_info"]["href"], headers=AS_READ).json() == [1, "é"]

        v = done(c, large.json()["id"])
        assert v["payload"] is None and v["result"] is None
        for info in (v["payload_info"], v["result_info"]):
            assert (info["type"], info["inline"]) == ("json", False) and info["size"] > PREVIEW
            assert c.get(info["href"], headers=AS_READ).json() == big


def test_a_result_not_ready_no_result_and_unknown_tasks(redis_url):
    with web(redis_url) as c:  # no worker: the tasks stay queued
        tid = submit_bytes(c, b"\x00\x01", "name=reverse&queue=idle").json()["id"]
        assert "queued" in error_of(c.get(f"/api/tasks/{tid}/result", headers=AS_READ), 409, "not_ready")
        assert c.get(f"/api/tasks/{tid}", headers=AS_READ).json()["result_info"] is None
        assert c.get(f"/api/tasks/{tid}/payload", headers=AS_READ).content == b"\x00\x01"
        assert c.post(f"/api/tasks/{tid}/cancel", headers=AS_ADMIN).json()["outcome"] == "canceled"
        assert "canceled" in error_of(c.get(f"/api/tasks/{tid}/result?queue=idle", headers=AS_READ), 404,
                                      "no_result")
        for what in ("payload", "result"):
            error_of(c.get(f"/api/tasks/01NOSUCHTASK0000000000000/{what}", headers=AS_READ), 404, "not_found")
            error_of(c.get(f"/api/tasks/01NOSUCHTASK0000000000000/{what}?queue=idle", headers=AS_READ), 404,
                     "not_found")
        error_of(c.get(f"/api/tasks/{tid}/payload?queue=bad%20queue", headers=AS_READ), 422, "invalid", "queue")


def test_a_read_token_downloads_no_token_cannot_and_only_admin_submits(redis_url):
    with web(redis_url) as c:
        tid = submit_bytes(c, b"abc", "name=reverse").json()["id"]
        for path in (f"/api/tasks/{tid}/payload", f"/api/tasks/{tid}"):
            assert c.get(path, headers=AS_READ).status_code == 200
            error_of(c.get(path), 401, "unauthorized")
            error_of(c.get(path, headers={"Authorization": "Bearer wrong-0123456789abcdef"}), 401, "unauthorized")
        error_of(submit_bytes(c, b"abc", "name=reverse", headers=AS_READ), 403, "forbidden")
        error_of(submit_bytes(c, b"abc", "name=reverse", headers={}), 401, "unauthorized")


def test_bytes_submit_validates_its_query_and_the_producers_max_payload(redis_url):
    with web(redis_url, max_payload=1000) as c:
        assert submit_bytes(c, b"x" * 1000, "name=reverse").status_code == 201
        msg = error_of(submit_bytes(c, b"x" * 1001, "name=reverse"), 413, "payload_too_large", "payload")
        assert "max_payload=1000" in msg
        error_of(submit_bytes(c, b"x", "queue=q"), 422, "invalid", "name")
        error_of(submit_bytes(c, b"x", "name=reverse&payload=1"), 422, "invalid", "payload")
        error_of(submit_bytes(c, b"x", "name=reverse&nope=1"), 422, "invalid", "nope")
        error_of(submit_bytes(c, b"x", "name=reverse&max_retries=two"), 422, "invalid", "max_retries")
        error_of(submit_bytes(c, b"x", "name=reverse&delay=soon"), 422, "invalid", "delay")
        error_of(submit_bytes(c, b"x", "name=reverse&delay=inf"), 422, "invalid", "delay")
        error_of(submit_bytes(c, b"x", "name=reverse&priority=99"), 422, "invalid", "priority")
        error_of(submit_bytes(c, b"x", "name=reverse&queue=a%20b"), 422, "invalid", "queue")
        later = submit_bytes(c, b"x", "name=reverse&queue=d&delay=600").json()["id"]
        kid = submit_bytes(c, b"y", f"name=reverse&queue=d&depends_on={later}&task_id=kid-1").json()["id"]
        assert kid == "kid-1"
        v = c.get("/api/tasks/kid-1?queue=d", headers=AS_READ).json()
        assert (v["status"], v["depends_on"]) == ("waiting", [later])


@pytest.mark.parametrize("token", [READ, ADMIN])
def test_the_dashboard_task_page_shows_bytes_by_size_with_a_download(redis_url, token):
    with web(redis_url) as c, XQRun(redis_url, procs=1, queues="ui"):
        tid = submit_bytes(c, b"\xfe\xff", "name=reverse&queue=ui").json()["id"]
        jid = c.post("/api/tasks", headers=AS_ADMIN, json={"name": "echo", "queue": "ui", "payload": {"k": 1}}
                     ).json()["id"]
        done(c, tid), done(c, jid)
        r = c.get(f"/tasks/{tid}/result?queue=ui", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert c.post("/login", data={"token": token}, follow_redirects=False).status_code == 303

        page = c.get(f"/tasks/{tid}").text
        assert "2 bytes (raw bytes)" in page
        assert f'id="payload-download" href="/tasks/{tid}/payload?queue=ui"' in page
        assert f'id="result-download" href="/tasks/{tid}/result?queue=ui"' in page
        got = c.get(f"/tasks/{tid}/result?queue=ui")
        assert got.content == b"\xff\xfe" and got.headers["content-type"] == "application/octet-stream"
        assert c.get(f"/tasks/{tid}/payload").content == b"\xfe\xff"

        page = c.get(f"/tasks/{jid}").text
        assert "download" not in page and "&#x27;k&#x27;" not in page and "&quot;k&quot;: 1" in page
        r = c.get("/tasks/01NOSUCHTASK0000000000000/result")
        assert r.status_code == 404 and "text/html" in r.headers["content-type"]


def test_inspector_task_leaves_out_a_payload_over_the_preview(redis_url, r):
    with xq.Producer(redis_url) as p, Inspector(redis_url) as insp:
        big = p.enqueue("echo", {"s": "x" * 1000}, queue="i")
        raw = p.enqueue("reverse", b"ab", queue="i")
        rec, cut = insp.broker.task_brief(queue_keys("i"), big, 100)
        assert b"payload" not in rec and cut == {"payload": 1008} and rec[b"name"] == b"echo"
        v = insp.task("i", big, preview=100)
        assert v == {**p.status(big, queue="i"), "payload": None, "result": None, "result_info": None,
                     "payload_info": {"type": "json", "size": 1008, "inline": False}}
        assert insp.task("i", big)["payload"] == {"s": "x" * 1000}
        assert insp.task("i", raw)["payload_info"] == {"type": "bytes", "size": 2, "inline": False}
        assert insp.task("i", "01NOSUCHTASK0000000000000") is None
        r.hset(queue_keys("i").task(big), "payload", b"{not json")
        v = insp.task("i", big)
        assert v["payload"] is None and not v["payload_info"]["inline"]
        assert any(m.startswith("payload: not JSON") for m in v["malformed"])


def test_image_and_video_bytes_download_with_their_own_type_and_extension(redis_url):
    """A thumbnail's result downloaded as application/octet-stream named <id>.result: a browser could not
    show it.  Bytes whose first bytes show a format the media processors use come with its type and
    extension; anything else stays application/octet-stream."""
    import io

    from PIL import Image

    from xq.web.api import sniff

    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(jpeg, "JPEG")
    with web(redis_url) as c, XQRun(redis_url, procs=1, queues="img"):
        tid = submit_bytes(c, jpeg.getvalue(), "name=echo&queue=img").json()["id"]
        done(c, tid)
        got = c.get(f"/api/tasks/{tid}/result", headers=AS_READ)
        assert got.content == jpeg.getvalue() and got.headers["content-type"] == "image/jpeg"
        assert got.headers["content-disposition"] == f'attachment; filename="{tid}.result.jpg"'
    assert sniff(b"\x89PNG\r\n\x1a\n....") == ("image/png", ".png")
    assert sniff(b"RIFF\x10\x00\x00\x00WEBPVP8 ") == ("image/webp", ".webp")
    assert sniff(b"\x00\x00\x00\x1cftypavif") == ("image/avif", ".avif")
    assert sniff(b"\x00\x00\x00\x20ftypisom") == ("video/mp4", ".mp4")
    assert sniff(b"GIF89a\x01\x00") == ("image/gif", ".gif")
    assert sniff(b"\xff\xfe") == sniff(b"") == ("application/octet-stream", "")
