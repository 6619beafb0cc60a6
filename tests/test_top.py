"""`xq top`: the snapshot function against a real `xq run`, and the real dashboard in a tmux terminal."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

import xq
from xq.inspect import Inspector
from xq.top import HISTORY_MINUTES, QUEUE_COLUMNS, queue_detail, queue_rows, snapshot, sparkline, worker_detail, worker_rows
from xqrun import TESTS, XQRun, wait_for

pytestmark = pytest.mark.topologies("single", "cluster")

ROOT = os.path.dirname(TESTS)


# ---------------------------------------------------------------- the snapshot, no terminal
def test_snapshot_shows_queues_workers_and_running_tasks(redis_url, r):
    with xq.Producer(redis_url) as p, Inspector(redis_url) as insp:
        slow = p.enqueue("sleep", {"s": 20})
        p.enqueue_many("count", [1, 2, 3], queue="other", priority=1)
        snap = snapshot(insp, detail_queue="default")
        assert [q["queue"] for q in snap["queues"]] == ["default", "other"]
        other = snap["queues"][1]
        assert (other["ready"], other["ready_by_priority"]["1"], other["running"]) == (3, 3, 0)
        assert snap["queues"][0]["throughput"] == [0] * HISTORY_MINUTES  # nothing ran in the last 30 minutes
        assert snap["workers"] == []
        assert snap["detail"]["by_name"]["sleep"]["queued"] == 1

        with XQRun(redis_url, "--heartbeat", "0.2", procs=2, queues="default") as w:
            wait_for(lambda: r.lrange("test:started", 0, -1) == [slow.encode()], what="the slow task to start")

            def running_slow():
                s = snapshot(insp, detail_queue="default")
                ws = s["workers"]
                return s if ws and any(t["id"] == slow for t in ws[0].get("tasks", [])) else None

            snap = wait_for(running_slow, what="the worker's record to show the slow task")
            (worker,) = snap["workers"]
            assert (worker["host"], worker["pid"]) == (socket.gethostname(), w.pid)
            default = snap["queues"][0]
            assert (default["ready"], default["running"]) == (0, 1)
            assert snap["detail"]["by_name"]["sleep"]["running"] == 1

            # what the screen shows for it
            (key, cells), = worker_rows(snap)
            assert key == worker["id"] and cells[:2] == [socket.gethostname(), str(w.pid)]
            assert cells[3] == "1/2" and cells[-1] == "sleep"
            text = worker_detail(worker, time.time())
            assert slow in text and "sleep" in text and "default" in text
            rows = dict(queue_rows(snap))
            assert rows["other"][:4] == ["other", "no", "3", "0"]
            assert "sleep" in queue_detail(snap["detail"])
            w.kill()


def test_snapshot_throughput_after_a_real_drain(redis_url):
    """The drained tasks show in the sparkline and DONE 1m (from the stats history, Inspector.history)."""
    with xq.Producer(redis_url) as p, Inspector(redis_url) as insp:
        p.enqueue_many("count", list(range(5)))
        with XQRun(redis_url, burst=True) as w:
            assert w.wait() == 0
        (q,) = snapshot(insp)["queues"]
        (_key, cells), = queue_rows({"queues": [q]})
        assert (q["ready"], q["running"]) == (0, 0)
        assert sum(q["throughput"]) == 5 and q["done_1m"] == 5 and cells[-2] == "5"
        assert "█" in cells[-3]  # the busiest minute gets the full bar



def test_sparkline_scales_to_its_maximum():
    assert sparkline([], width=5) == "     "
    assert sparkline([0, 0, 0], width=3) == "▁▁▁"
    assert sparkline([0, 1, 7, 100], width=4) == "▁▂▂█"  # a non-zero minute never looks idle
    assert sparkline(list(range(50)), width=10) == sparkline(list(range(40, 50)), width=10)


def test_top_without_textual_says_which_extra_to_install(tmp_path, redis_url):
    """A `textual` that cannot be imported (shadowed on PYTHONPATH) stands in for a missing extra."""
    (tmp_path / "textual").mkdir()
    (tmp_path / "textual" / "__init__.py").write_text("raise ImportError('no textual here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "xq.cli", "top", "--redis", redis_url], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "xq top needs the optional extra: pip install 'xq-queue[top]'" in out.stderr


# ---------------------------------------------------------------- the real terminal (tmux)
class Tmux:
    """One `xq top` in a detached tmux session on a private server socket (-L), 160x45."""

    def __init__(self, url: str, *args: str):
        if shutil.which("tmux") is None:
            pytest.fail("tmux is not on PATH: the xq top tests need it (apt-get install tmux, or run .ci/run)",
                        pytrace=False)
        self.socket = f"xqtop-{uuid.uuid4().hex[:10]}"
        self.name = "top"
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        # -u: pytest's environment has COLUMNS=80 LINES=24, which would override the pane's real size
        cmd = ["env", "-u", "COLUMNS", "-u", "LINES", *(f"{k}={v}" for k, v in env.items()),
               sys.executable, "-m", "xq.cli", "top", "--redis", url, *args]
        self.tmux("new-session", "-d", "-s", self.name, "-x", "160", "-y", "45", shlex.join(cmd))
        # keep the pane after its process ends, so a test can tell "exited" from "never started"
        self.tmux("set-option", "-t", self.name, "remain-on-exit", "on")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def dead(self) -> bool:
        return self.tmux("list-panes", "-t", self.name, "-F", "#{pane_dead}").strip() == "1"

    def wait_screen(self, pred, what: str, timeout: float = 20.0) -> str:
        """Poll the screen until pred(screen) (bounded); on timeout, fail showing the last screen."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; screen:\n{s}")
            time.sleep(0.1)

    def close(self) -> None:
        # only our own server: the private socket holds just this session
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def top_in_tmux():
    started = []

    def start(url, *args):
        t = Tmux(url, *args)
        started.append(t)
        return t

    yield start
    for t in started:
        t.close()


def row_cells(screen: str, first: str) -> list[str] | None:
    """The cells of the table row on the screen whose first cell is `first`, or None."""
    for line in screen.splitlines():
        cells = line.split()
        if cells and cells[0] == first and len(cells) >= 7:
            return cells
    return None


def queue_cells(screen: str, queue: str) -> list[str] | None:
    """A queue's row: QUEUE, PAUSED, READY, RUNNING, SCHED, RETRY, DEAD, ..."""
    return row_cells(screen, queue)


def test_top_in_a_terminal_follows_a_drain_switches_views_pauses_and_quits(redis_url, r, top_in_tmux):
    n = 40
    with xq.Producer(redis_url) as p, Inspector(redis_url) as insp:
        p.enqueue_many("count", list(range(n)))
        p.enqueue_many("count", [1, 2], queue="other")
        top = top_in_tmux(redis_url, "--interval", "0.3")
        screen = top.wait_screen(lambda s: queue_cells(s, "default") and queue_cells(s, "other"),
                                 "both queues on the screen")
        assert QUEUE_COLUMNS[0] in screen and "READY" in screen
        assert queue_cells(screen, "default")[1:3] == ["no", str(n)]
        assert queue_cells(screen, "other")[1:3] == ["no", "2"]
        top.wait_screen(lambda s: "queue default" in s and "count" in s, "the detail pane of the first row")

        with XQRun(redis_url, "--heartbeat", "0.2", procs=2, queues="default") as w:
            top.wait_screen(lambda s: (queue_cells(s, "default") or [None] * 3)[2] == "0",
                            "the drain to show ready 0 for default")
            wait_for(lambda: r.hlen("test:execs") == n, what="every task to run")

            top.keys("2")  # workers view: this supervisor's host and pid, and what it has done
            screen = top.wait_screen(lambda s: (row_cells(s, socket.gethostname()) or [None] * 5)[1:5:3]
                                     == [str(w.pid), str(n)], "the worker's row: host, pid and done count")
            assert "[workers]" in screen and "HOST" in screen
            assert "worker " in screen and "idle" in screen  # its detail pane: no task running now

            top.keys("Tab")  # back to the queues view
            top.wait_screen(lambda s: "[queues]" in s, "the queues view")
            top.keys("Down")  # select "other", then pause it
            top.wait_screen(lambda s: "queue other" in s, "the detail pane of other")
            top.keys("p")
            wait_for(lambda: insp.paused("other"), 10, what="p to pause the selected queue in Redis")
            assert not insp.paused("default")
            top.wait_screen(lambda s: (queue_cells(s, "other") or [None] * 2)[1] == "PAUSED"
                            and "paused queue other" in s, "the paused queue on the screen")
            top.keys("p")
            wait_for(lambda: not insp.paused("other"), 10, what="p again to resume it")
            w.kill()

        top.keys("q")
        wait_for(top.dead, 10, what="q to end the xq top process")


def test_top_says_redis_is_unreachable_and_recovers(fresh_redis, top_in_tmux):
    with xq.Producer(fresh_redis.url) as p:
        p.enqueue("count", 1, queue="back")
    top = top_in_tmux(fresh_redis.url, "--interval", "0.3")
    top.wait_screen(lambda s: queue_cells(s, "back"), "the queue on the screen")
    fresh_redis.stop()
    screen = top.wait_screen(lambda s: "Redis unreachable: " in s, "the status line to say Redis is away")
    assert "Traceback" not in screen
    fresh_redis.start()  # same port, same data dir: the AOF brings the queue back
    top.wait_screen(lambda s: "Redis unreachable" not in s and queue_cells(s, "back"), "the screen to recover")
    assert not top.dead()


def test_top_keys_in_textual_pilot(redis_url):
    """Textual's own driver, for what the terminal test does not press: enter (detail) and ? (help)."""
    from xq.top import app_class

    with xq.Producer(redis_url) as p:
        p.enqueue("count", 1, queue="solo")

    async def drive():
        app = app_class()(redis_url, 0.2)
        async with app.run_test(size=(160, 45)) as pilot:
            for _ in range(200):  # bounded: 10 s
                if app.snap is not None and app.snap["detail"] is not None:
                    break
                await pilot.pause(0.05)
            assert [q["queue"] for q in app.snap["queues"]] == ["solo"]
            assert app.selected["queues"] == "solo" and app.snap["detail"]["by_name"]["count"]["queued"] == 1
            detail, help_ = app.query_one("#detail"), app.query_one("#help")
            assert detail.display and not help_.display
            await pilot.press("enter")
            assert not detail.display
            await pilot.press("enter")
            assert detail.display
            await pilot.press("question_mark")
            assert help_.display
            await pilot.press("2")
            assert app.view == "workers" and app.query_one("#workers").display
            await pilot.press("p")  # not in the queues view: says so, pauses nothing
            assert "switch to the queues view" in app.note
            await pilot.press("q")
        return app

    asyncio.run(drive())
    with Inspector(redis_url) as insp:
        assert not insp.paused("solo")
