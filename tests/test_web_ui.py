"""The dashboard of `xq web` (issue 12) in Debian's Chromium, driven by Playwright's Python client.

A real redis-server (conftest), a real uvicorn serving create_app on a free port (in a thread), and a real
`xq run` of tests/apps/observe.py.  Every wait is explicit and bounded (Playwright's expect timeouts, or
helpers.wait_until).  Screenshots go to $XQ_SCREENSHOTS (docs/img to refresh the README's) or a tmp dir.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import pytest
import uvicorn

import xq
from xq.inspect import Inspector
from xq.web import create_app, pages
from helpers import free_port, wait_until
from xqrun import XQRun

from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ADMIN = "adm-0123456789abcdef"
READ = "read-0123456789abcdef"
TOKENS = [f"ops:admin:{ADMIN}", f"viewer:read:{READ}"]
APP = "apps.observe:app"
WAIT = 15_000  # ms: the longest any one expectation waits
expect.set_options(timeout=WAIT)  # expect()'s own default is 5 s, whatever the context's default timeout


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def web(redis_url, monkeypatch):
    """The base URL of a real uvicorn serving the app, stopped after the test.  The pages' fallback poll is
    set to 10 minutes, so anything live within a test came through the event stream."""
    monkeypatch.setattr(pages, "FALLBACK", 600.0)
    with serve(redis_url) as base:
        yield base


@contextlib.contextmanager
def serve(redis_url: str):
    port = free_port()
    app = create_app(redis_url, tokens=TOKENS, secret="test-secret")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    wait_until(lambda: server.started, 10, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1000, "height": 700})
    ctx.set_default_timeout(WAIT)
    p = ctx.new_page()
    try:
        yield p
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return os.environ.get("XQ_SCREENSHOTS") or str(tmp_path_factory.mktemp("shots"))


def login(page, base: str, token: str = ADMIN, path: str = "/"):
    page.goto(base + path)
    page.fill("input[name=token]", token)
    page.click("button:has-text('Log in')")
    expect(page).to_have_url(base + path)


def test_refused_without_a_token_and_a_wrong_one_stays_on_login(web, page, shots):
    page.goto(web + "/")
    expect(page).to_have_url(web + "/login?next=/")
    page.fill("input[name=token]", "wrong-token-0123456789")
    page.click("button:has-text('Log in')")
    expect(page.locator("#login-error")).to_have_text("Wrong token.")
    assert page.url.startswith(web + "/login")
    page.screenshot(path=os.path.join(shots, "login.png"))
    page.fill("input[name=token]", ADMIN)
    page.click("button:has-text('Log in')")
    expect(page).to_have_url(web + "/")
    cookie = next(c for c in page.context.cookies() if c["name"] == "xq_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert ADMIN not in cookie["value"]


def live_fetches(page) -> list[str]:
    """The URLs of the page's requests to /ui/live/..., appended as they are made."""
    seen: list[str] = []
    page.on("request", lambda req: seen.append(req.url) if "/ui/live/" in req.url else None)
    return seen


def test_a_queue_fills_and_drains_live_from_events_without_polling(web, page, redis_url, shots):
    with xq.Producer(redis_url) as p:
        p.enqueue("ok", {}, queue="live")  # the queue exists when the page opens: its events are followed
        login(page, web)
        fetches = live_fetches(page)
        page.evaluate("window.__same_page = true")
        ready = page.locator("tr[data-queue=live] td.ready")
        expect(ready).to_have_text("1")
        time.sleep(3)  # idle: no events, so no refresh (the old dashboard polled every 1.5 s)
        assert len(fetches) <= 1, fetches  # (one if the stream was reopened: a refresh after a reconnect)
        p.enqueue_many("ok", [{"i": i} for i in range(29)], queue="live")
        expect(ready).to_have_text("30")  # from the queued events (the fallback poll is 10 minutes off)
        p.enqueue_many("ok", [{"i": i} for i in range(2000)], queue="live")
        expect(ready).to_have_text("2030")
        start = time.monotonic()
        fetches.clear()
        with XQRun(redis_url, app=APP, procs=1, queues="live"):
            expect(ready).to_have_text("0")
            elapsed = time.monotonic() - start
            # thousands of running/done events, refreshes at most one per 0.75 s (+1 pending, +1 in flight)
            assert 1 <= len(fetches) <= elapsed / 0.75 + 2, (len(fetches), elapsed)
            expect(page.locator("#live-workers")).to_contain_text("live")
            assert page.evaluate("window.__same_page") is True  # updated in place, never reloaded
            page.screenshot(path=os.path.join(shots, "overview.png"), full_page=True)


def test_a_new_queue_is_followed_after_a_refresh(web, page, redis_url):
    with xq.Producer(redis_url) as p:
        p.enqueue("ok", {}, queue="first")
        login(page, web)
        expect(page.locator("tr[data-queue=first] td.ready")).to_have_text("1")
        p.enqueue("ok", {}, queue="second")  # not followed yet: nothing moves
        p.enqueue("ok", {}, queue="first")  # an event: the refresh shows the new queue and follows it
        expect(page.locator("tr[data-queue=second] td.ready")).to_have_text("1")
        src = page.locator("[data-live]").get_attribute("data-events")
        assert "second" not in src  # the attribute is the first URL; the script reopened the stream
        for i in range(3):
            p.enqueue("ok", {}, queue="second")
            expect(page.locator("tr[data-queue=second] td.ready")).to_have_text(str(2 + i))


def test_a_task_page_shows_its_progress_bar_move(web, page, redis_url, r, shots, monkeypatch):
    login(page, web)
    with xq.Producer(redis_url) as p, XQRun(redis_url, app=APP, procs=1, queues="prog"):
        tid = p.enqueue("steps", {"job": "resize", "sizes": [64, 128]}, queue="prog")
        page.goto(f"{web}/tasks/{tid}")
        expect(page.locator("pre")).to_contain_text('"job": "resize"')  # the payload, pretty-printed
        page.evaluate("window.__same_page = true")
        r.set("test:go:0", 1)
        expect(page.locator("#progress")).to_have_attribute("value", "10")
        expect(page.locator("#status")).to_have_text("running")
        r.set("test:go:1", 1)
        expect(page.locator("#progress")).to_have_attribute("value", "50.5")
        expect(page.locator("#live-progress")).to_contain_text("half way")
        expect(page.locator("#live-attempts")).to_contain_text("attempt 1")
        assert page.evaluate("window.__same_page") is True
        page.screenshot(path=os.path.join(shots, "task.png"), full_page=True)
        # the worker is busy with the task, waiting for test:go:2: its heartbeat says so, which sends no
        # event, so the workers page shows it through its fallback poll
        monkeypatch.setattr(pages, "FALLBACK", 1.0)
        page.goto(web + "/workers")
        expect(page.locator("#workers tbody tr")).to_have_count(1)
        expect(page.locator("#workers")).to_contain_text("1/1")
        expect(page.locator("#workers a")).to_have_text("steps")
        page.screenshot(path=os.path.join(shots, "workers.png"), full_page=True)
        page.goto(f"{web}/tasks/{tid}")
        expect(page.locator("#live-outcome")).to_contain_text("none yet")
        r.set("test:go:2", 1)
        expect(page.locator("#progress")).to_have_attribute("value", "100")
        wait_until(lambda: p.status(tid)["status"] == "done", 10, what="the task to finish")
        # it ended while the page was open: its result shows without a reload (it used to say "none yet")
        expect(page.locator("#status")).to_have_text("done")
        expect(page.locator("#live-outcome pre")).to_have_text('"ok"')


def test_a_task_page_without_progress_shows_no_bar_and_says_why_a_result_is_missing(web, page, redis_url, shots):
    """A task that never reports progress showed an empty bar at 0% (finished or dead, it looked stuck), and a
    dead task's result said "none yet" as if one were coming; the overview showed a latency of 0s for a queue
    with nothing ready (the API says null).  No page logs a console error (the favicon request was a 404)."""
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    with xq.Producer(redis_url) as p:
        ok = p.enqueue("ok", {"v": 1}, queue="plain")
        bad = p.enqueue("boom", {}, queue="plain")
        XQRun(redis_url, app=APP, procs=1, queues="plain", burst=True).wait(30)
        login(page, web, path=f"/tasks/{ok}")
        expect(page.locator("#status")).to_have_text("done")
        expect(page.locator("#progress-box")).to_be_hidden()
        expect(page.locator("#live-outcome pre")).to_contain_text('"v": 1')
        page.goto(f"{web}/tasks/{bad}")
        expect(page.locator("#status")).to_have_text("dead")
        expect(page.locator("#progress-box")).to_be_hidden()
        expect(page.locator("#live-outcome")).to_contain_text("none: the task failed")
        expect(page.locator("#live-outcome pre.err")).to_contain_text("ValueError: boom")
        page.screenshot(path=os.path.join(shots, "task-dead.png"), full_page=True)
        page.goto(web + "/")
        expect(page.locator("tr[data-queue=plain] td.latency")).to_have_text("-")
    assert errors == [], errors


def test_the_queue_page_charts_done_and_failed_per_minute_and_updates_live(web, page, redis_url, shots):
    with xq.Producer(redis_url) as p:
        p.enqueue_many("ok", [{"i": i} for i in range(12)], queue="ch")
        p.enqueue_many("boom", [{"i": i} for i in range(3)], queue="ch")
        XQRun(redis_url, app=APP, procs=1, queues="ch", burst=True).wait(30)
        with Inspector(redis_url) as insp:  # the busiest minutes (the run may straddle a minute's end)
            hist = insp.history("ch", minutes=60)
        peak_done, peak_failed = max(h["done"] for h in hist), max(h["failed"] for h in hist)
        login(page, web, path="/queues/ch")
        chart = page.locator("svg#chart")
        expect(chart.locator("polyline.done")).to_have_count(1)
        expect(chart.locator("polyline.failed")).to_have_count(1)
        assert len(chart.locator("polyline.done").get_attribute("points").split()) == 60  # one point a minute
        expect(page.locator("#sum-done")).to_have_text("12")
        expect(page.locator("#sum-failed")).to_have_text("3")
        expect(chart.locator("text.top")).to_have_text(str(peak_done))  # the scale's top: the busiest minute
        expect(chart).to_contain_text("-1 h")
        page.screenshot(path=os.path.join(shots, "queue-chart.png"), full_page=True)
        page.goto(web + "/")  # the overview's sparkline: done and failed on one scale
        spark = page.locator("tr[data-queue=ch] svg.spark")
        expect(spark.locator("polyline.done")).to_have_count(1)
        expect(spark.locator("polyline.failed")).to_have_count(1)
        expect(spark).to_have_attribute("aria-label", f"per minute: done max {peak_done}, failed max {peak_failed}")
        page.goto(web + "/queues/ch")
        page.click(".spans a:has-text('24 h')")
        expect(page).to_have_url(web + "/queues/ch?state=queued&minutes=1440")
        expect(chart).to_contain_text("-24 h")
        assert len(chart.locator("polyline.failed").get_attribute("points").split()) == 1440
        expect(page.locator("#sum-done")).to_have_text("12")
        # live: the counts and the chart follow the queue's events
        p.enqueue_many("ok", [{"i": i} for i in range(5)], queue="ch")
        expect(page.locator("#live-counts b.ready")).to_have_text("5")
        XQRun(redis_url, app=APP, procs=1, queues="ch", burst=True).wait(30)
        expect(page.locator("#sum-done")).to_have_text("17")
        expect(page.locator("#live-counts b.ready")).to_have_text("0")
        resp = page.request.get(web + "/queues/ch?minutes=7")
        assert resp.status == 422 and "60, 360, 1440" in resp.text()


def test_unknown_dashboard_paths_answer_an_html_404_and_the_api_json(web, page):
    login(page, web)
    for path in ("/nope", "/queues/x/nope", "/tasks/01NOSUCHTASK0000000000000", "/static/nope.js"):
        resp = page.goto(web + path)
        assert resp.status == 404, path
        assert resp.headers["content-type"].startswith("text/html"), path
        expect(page.locator("h1")).to_have_text("Not found")
        expect(page.locator("nav")).to_contain_text("Overview")  # in the layout, logged in
    resp = page.request.post(web + "/workers", form={"x": "1"})
    assert resp.status == 405 and "GET" in resp.headers["allow"] and "<nav>" in resp.text()
    for path in ("/api/nope", "/api/queues/x/nope"):
        resp = page.request.get(web + path, headers={"Authorization": f"Bearer {READ}"})
        assert resp.status == 404 and resp.json()["error"]["code"] == "not_found", path
    page.context.clear_cookies()  # the event stream needs a session (the pages' own open it with theirs)
    resp = page.request.get(web + "/ui/events")
    assert resp.status == 401 and resp.json()["error"]["code"] == "unauthorized"
    resp = page.goto(web + "/nope")
    assert resp.status == 404 and page.locator("nav").count() == 0  # no session: no nav


def test_pages_fit_a_narrow_screen(web, browser, redis_url, shots):
    ctx = browser.new_context(viewport={"width": 375, "height": 700})
    ctx.set_default_timeout(WAIT)
    pg = ctx.new_page()
    try:
        with xq.Producer(redis_url) as p:
            tid = p.enqueue("boom", {"a-long-payload-key": "x" * 300}, queue="a-rather-long-queue-name")
            XQRun(redis_url, app=APP, procs=1, queues="a-rather-long-queue-name", burst=True).wait(30)
            login(pg, web)
            for path in ("/", "/workers", "/queues/a-rather-long-queue-name",
                         "/queues/a-rather-long-queue-name/dead", f"/tasks/{tid}", "/nope"):
                pg.goto(web + path)
                assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), path
                if path.startswith("/queues/") and not path.endswith("/dead"):
                    pg.screenshot(path=os.path.join(shots, "queue-narrow.png"), full_page=True)
    finally:
        ctx.close()


def test_replay_a_dead_task_and_purge_the_rest_from_the_dead_letter_page(web, page, redis_url, shots):
    with xq.Producer(redis_url) as p:
        tid, other = p.enqueue("boom", {"n": 1}, queue="dq"), p.enqueue("boom", {"n": 2}, queue="dq")
        XQRun(redis_url, app=APP, procs=1, queues="dq", burst=True).wait(30)
        assert p.status(tid)["status"] == p.status(other)["status"] == "dead"
        login(page, web, path="/queues/dq/dead")
        expect(page.locator("#dead tbody tr")).to_have_count(2)
        page.screenshot(path=os.path.join(shots, "dead.png"), full_page=True)
        page.check(f"input[name=id][value='{tid}']")
        page.fill("input[name=priority]", "0")
        dialogs = []
        page.once("dialog", lambda d: (dialogs.append(d.message), d.accept()))
        page.click("#replay")
        expect(page.locator("#dead tbody tr")).to_have_count(1)
        assert dialogs == ["Replay the selected tasks?"]
        view = p.status(tid)
        assert view["status"] == "queued" and view["replays"] == 1 and view["priority"] == 0
        page.once("dialog", lambda d: d.dismiss())  # said no: nothing purged
        page.click("#purge")
        expect(page.locator("#dead")).to_contain_text(other)
        assert p.dead_count("dq") == 1
        page.once("dialog", lambda d: d.accept())
        page.click("#purge")
        expect(page.locator("#dead")).to_contain_text("no dead tasks")
        assert p.dead_count("dq") == 0


def test_pause_a_queue_and_posts_without_csrf_or_admin_are_refused(web, page, browser, redis_url, shots):
    with xq.Producer(redis_url) as p, Inspector(redis_url) as insp:
        for i in range(3):
            p.enqueue("ok", {"i": i}, queue="pq")
        login(page, web, path="/queues/pq")
        # a POST without the CSRF token, with the session cookie: refused, nothing changes
        resp = page.request.post(f"{web}/queues/pq/pause", form={"x": "1"}, max_redirects=0)
        assert resp.status == 403 and "CSRF" in resp.text()
        assert not insp.paused("pq")
        page.click("#pause")
        expect(page.locator("#paused")).to_have_text("paused")
        assert insp.paused("pq")
        page.screenshot(path=os.path.join(shots, "queue.png"), full_page=True)
        # a read token sees the page without the buttons and is refused the write even with a good CSRF token
        ctx = browser.new_context()
        ctx.set_default_timeout(WAIT)
        reader = ctx.new_page()
        try:
            login(reader, web, READ, path="/queues/pq")
            expect(reader.locator("#paused")).to_have_text("paused")
            assert reader.locator("#resume").count() == 0
            csrf = reader.locator("input[name=csrf]").first.get_attribute("value")
            resp = reader.request.post(f"{web}/queues/pq/resume", form={"csrf": csrf}, max_redirects=0)
            assert resp.status == 403
            assert insp.paused("pq")
        finally:
            ctx.close()


# ---------------------------------------------------------------- sessions, in-process (no browser)
def test_a_session_cookie_is_signed_expires_and_holds_no_token():
    from xq.web.session import Sessions
    s = Sessions("k1")
    cookie = s.issue("ops", "admin", now=1000.0)
    got = s.read(cookie, now=1001.0)
    assert got["name"] == "ops" and got["role"] == "admin"
    assert s.read(cookie, now=1000.0 + 13 * 3600) is None  # expired
    assert Sessions("k2").read(cookie, now=1001.0) is None  # another key
    body, _, mac = cookie.partition(".")
    forged = body.replace(body[5], "A" if body[5] != "A" else "B", 1) + "." + mac
    assert s.read(forged, now=1001.0) is None
    for bad in (None, "", "x", "x.y", "!!.??"):
        assert s.read(bad) is None
    assert s.csrf_ok(got, s.csrf(got)) and not s.csrf_ok(got, None) and not s.csrf_ok(got, "nope")
    other = s.read(s.issue("ops", "admin", now=1000.0), now=1001.0)
    assert s.csrf(other) != s.csrf(got)  # tied to the session


def test_failed_logins_are_limited_per_address_and_forgotten_in_bounds(monkeypatch):
    from xq.web import session
    s = session.Sessions("k")
    for _ in range(session.FAIL_MAX):
        assert not s.blocked("1.2.3.4", now=100.0)
        s.failed("1.2.3.4", now=100.0)
    assert s.blocked("1.2.3.4", now=100.0) and not s.blocked("5.6.7.8", now=100.0)
    assert not s.blocked("1.2.3.4", now=100.0 + session.FAIL_WINDOW)
    monkeypatch.setattr(session, "FAIL_ADDRS", 3)
    for i in range(10):
        s.failed(f"10.0.0.{i}", now=100.0)
    assert len(s.fails) == 3


def test_login_over_https_sets_a_secure_cookie_and_the_limit_answers_429(redis_url):
    import asyncio

    import httpx

    async def go():
        app = create_app(redis_url, tokens=TOKENS, secret="s")
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://xq") as c:
                r = await c.post("/login", data={"token": ADMIN})
                assert r.status_code == 303
                cookie = r.headers["set-cookie"]
                assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
                assert ADMIN not in cookie
                r = await c.post("/login", data={"token": ADMIN, "next": "/\\evil.example"})
                assert r.headers["location"] == "/"  # never off to another host
                r = await c.post("/queues/q/pause", data={"csrf": "x" * (2 * 1024 * 1024)})
                assert r.status_code == 422 and "over" in r.text  # a huge form: refused, not a 500
                for _ in range(5):
                    assert (await c.post("/login", data={"token": "wrong-0123456789abcdef"})).status_code == 401
                r = await c.post("/login", data={"token": ADMIN})
                assert r.status_code == 429 and "Too many" in r.text
        finally:
            await app.state.xq.producer.close()
    # in a thread of its own: Playwright's sync API keeps an event loop running in this one
    errors = []
    t = threading.Thread(target=lambda: _capture(errors, lambda: asyncio.run(asyncio.wait_for(go(), 20))))
    t.start()
    t.join(30)
    assert not t.is_alive() and not errors, errors


def _capture(errors: list, fn) -> None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - handed to the test's thread
        errors.append(e)


def test_inspector_payload_shows_json_bytes_and_large_payloads_by_size(redis_url):
    from xq.inspect import PREVIEW
    with xq.Producer(redis_url) as p, Inspector(redis_url) as insp:
        j = p.enqueue("ok", {"a": [1, 2]}, queue="pl")
        b = p.enqueue("ok", b"\x00\x01\x02", queue="pl")
        big = p.enqueue("ok", "x" * (PREVIEW + 10), queue="pl")
        assert insp.payload("pl", j) == {"size": 11, "bytes": False, "json": {"a": [1, 2]}, "malformed": None}
        assert insp.payload("pl", b) == {"size": 3, "bytes": True, "json": None, "malformed": None}
        got = insp.payload("pl", big)
        assert got["json"] is None and got["size"] == PREVIEW + 12 and not got["bytes"]
        assert insp.payload("pl", "01NOSUCHTASK0000000000000") is None


def test_pages_say_redis_is_unavailable_instead_of_a_server_error(fresh_redis, page, shots):
    # Every page and live part answered a bare "Internal Server Error" (500) while Redis was down, its
    # traceback in the log; the API said 503 redis_unavailable.  Now the page says so, with a 503.
    with serve(fresh_redis.url) as base:
        login(page, base, READ)
        fresh_redis.stop()
        for path in ("/", "/queues/default", "/workers"):
            resp = page.goto(base + path)
            assert resp.status == 503, (path, resp.status)
            expect(page.locator("#redis-error")).to_contain_text("unreachable")
        page.screenshot(path=os.path.join(shots, "redis-unavailable.png"))
        resp = page.request.get(base + "/ui/live/overview")
        assert resp.status == 503
