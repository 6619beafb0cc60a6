"""--memory-limit-per-child, the hard memory limit: a child whose RSS passes it while running a task is
killed within half a second, the attempt ends with outcome `memory`, and the task is retried or dead like
any failure; the supervisor goes on.  Every `xq run` here runs under an RLIMIT_AS, so that a supervisor
that fails to stop a handler growing without bound ends that handler in MemoryError, not the machine."""

from __future__ import annotations

import re
import resource

import pytest

import xq
from test_engine import IMPLS
from xqrun import XQRun, wait_for

APP = "apps.memory:app"
LIMIT_MB = 150
AS_LIMIT = 3 << 30   # address space of `xq run` and its children: the harm a failing test can do


def bounded_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run(url, *args, **kw) -> XQRun:
    return XQRun(url, *args, app=APP, preexec_fn=bounded_address_space, **kw)


@pytest.mark.parametrize("pure", IMPLS)
def test_a_child_over_the_hard_limit_is_killed_mid_task_and_the_task_retried_then_dead(redis_url, pure):
    p = xq.Producer(redis_url)
    hog = p.enqueue("hog", {}, max_retries=1)
    with run(redis_url, "--memory-limit-per-child", str(LIMIT_MB), procs=2, pure=pure) as w:
        good = [p.enqueue("use", {"mb": 20, "s": 0.05}) for _ in range(10)]
        st = wait_for(lambda: (s := p.status(hog))["status"] == "dead" and s, 60, what="the hog to be dead")
        for g in good:
            assert isinstance(p.result(g, timeout=30), int), w.output()
        # the children were respawned and still work
        assert isinstance(p.result(p.enqueue("use", {"mb": 1}), timeout=30), int), w.output()
        assert w.proc.poll() is None, w.output()
        log = w.output()
    assert st["attempts"] == 2, st
    assert st["reason"] == "memory on the last of 2 attempts", st
    assert [h["outcome"] for h in st["history"]] == ["memory", "memory"], st["history"]
    for n, h in enumerate(st["history"], 1):
        m = re.fullmatch(rf"MemoryLimitExceeded: attempt {n} reached an RSS of (\d+) MiB, "
                         rf"over --memory-limit-per-child={LIMIT_MB} MiB", h["error"])
        assert m, h["error"]
        # killed at about the limit: one 0.1 s check of growth past it, far below the 3 GiB the hog would reach
        assert LIMIT_MB < int(m[1]) < LIMIT_MB + 150, h["error"]
        assert h["finished_at"] - h["started_at"] < 30
    assert "MemoryError" not in log
    assert "MemoryLimitExceeded" in log


def test_tasks_under_the_hard_limit_are_untouched(redis_url):
    p = xq.Producer(redis_url)
    ids = [p.enqueue("use", {"mb": 60}) for _ in range(6)]
    with run(redis_url, "--memory-limit-per-child", str(LIMIT_MB), procs=1, burst=True) as w:
        assert w.wait(60) == 0, w.output()
    pids = {p.result(i, timeout=5) for i in ids}
    assert len(pids) == 1  # one child ran them all: nothing was killed or recycled
    for i in ids:
        assert p.status(i)["status"] == "done"


def test_children_over_the_hard_limit_before_any_task_are_boot_failures(redis_url):
    with run(redis_url, "--memory-limit-per-child", "100", procs=1, env={"XQ_TEST_BALLAST_MB": "150"}) as w:
        code = w.wait(60)
        log = w.output()
    assert code == 3, log
    assert "before it ran a task, over --memory-limit-per-child=100 MiB" in log, log
    assert "failed to boot" in log, log


def test_a_hard_limit_not_above_the_soft_one_is_a_usage_error(redis_url):
    with run(redis_url, "--max-memory-per-child", "200", "--memory-limit-per-child", "200", procs=1) as w:
        code = w.wait(30)
        log = w.output()
    assert code == 2, log
    assert "--memory-limit-per-child=200 MiB must be above --max-memory-per-child=200 MiB" in log, log


def test_the_soft_limit_recycles_after_the_task_and_the_hard_one_kills_during_it(redis_url):
    p = xq.Producer(redis_url)
    with run(redis_url, "--max-memory-per-child", "60", "--memory-limit-per-child", str(LIMIT_MB), procs=1) as w:
        # 80 MiB kept after the task: over the soft limit at its next check, under the hard one
        first = p.result(p.enqueue("leak", {"mb": 80}), timeout=30)
        wait_for(lambda: "over --max-memory-per-child=60 MiB" in w.output(), 20, what="the soft limit's recycle")
        second = p.result(p.enqueue("use", {"mb": 1}), timeout=30)
        assert first != second  # recycled after its task, which was done
        hog = p.enqueue("hog", {}, max_retries=0)
        st = wait_for(lambda: (s := p.status(hog))["status"] == "dead" and s, 30, what="the hog to be dead")
        assert w.proc.poll() is None, w.output()
    assert st["reason"] == "memory on the last of 1 attempts", st
    assert [h["outcome"] for h in st["history"]] == ["memory"]


def test_a_timed_out_child_that_passes_the_hard_limit_in_its_kill_grace_is_killed_at_once(redis_url):
    p = xq.Producer(redis_url)
    tid = p.enqueue("stubborn_hog", {"s": 1.5}, timeout=0.5, max_retries=0)
    with run(redis_url, "--memory-limit-per-child", str(LIMIT_MB), "--kill-grace", "600", procs=1) as w:
        # SIGTERM at 0.5 s is ignored; without the hard limit the SIGKILL would wait for the 600 s grace
        st = wait_for(lambda: (s := p.status(tid))["status"] == "dead" and s, 60, what="the task to be dead")
        assert isinstance(p.result(p.enqueue("use", {"mb": 1}), timeout=30), int), w.output()
        log = w.output()
    assert [h["outcome"] for h in st["history"]] == ["timeout"], st  # why it was stopped first
    assert "ran longer than its timeout of 0.5 s" in st["error"]
    assert f"over --memory-limit-per-child={LIMIT_MB} MiB; killing it" in log, log
