"""`--procs auto` counts the CPUs a process may use: its affinity capped by its cgroup's CPU quota
(xq/cpus.py).  The parser is checked against cgroup v1 and v2 trees written to a temp dir, the CPU count
seen as a 64-core host's; then a real `xq run --procs auto` in a real cgroup with a 1-CPU quota."""

from __future__ import annotations

import os

import pytest

from xq import cpus
from xqrun import XQRun, wait_for

HOST = set(range(64))


@pytest.fixture
def host64(monkeypatch):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: HOST)


def tree(tmp_path, files: dict[str, str], proc_cgroup: str) -> tuple[str, str]:
    for rel, text in files.items():
        p = tmp_path / "fs" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (tmp_path / "fs").mkdir(exist_ok=True)
    pc = tmp_path / "cgroup"
    pc.write_text(proc_cgroup)
    return str(tmp_path / "fs"), str(pc)


@pytest.mark.parametrize("files, proc_cgroup, want", [
    # v2: the container's own cgroup
    ({"cpu.max": "800000 100000\n"}, "0::/\n", 8),
    ({"cpu.max": "250000 100000\n"}, "0::/\n", 3),                        # 2.5 CPUs: rounded up
    ({"cpu.max": "max 100000\n"}, "0::/\n", 64),                          # no quota
    ({"cpu.max": "50000 100000\n"}, "0::/\n", 1),                         # half a CPU: still one child
    # v2, nested: the smallest quota on the way up wins
    ({"cpu.max": "max 100000\n", "k8s/pod1/cpu.max": "400000 100000\n",
      "k8s/pod1/ctr/cpu.max": "max 100000\n"}, "0::/k8s/pod1/ctr\n", 4),
    # v1, cpu and cpuacct mounted together; the host path of /proc/self/cgroup absent inside the container
    ({"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/docker/0123abcd\n1:name=systemd:/\n", 2),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/\n", 64),
    ({"cpu/xq/cpu.cfs_quota_us": "300000\n", "cpu/xq/cpu.cfs_period_us": "100000\n",
      "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/xq\n", 3),
    # nothing to read, or garbage: the affinity alone
    ({}, "0::/\n", 64),
    ({"cpu.max": "lots\n"}, "0::/\n", 64),
    ({"cpu/cpu.cfs_quota_us": "x\n"}, "3:cpu:/\n", 64),
])
def test_usable_cpus_caps_the_affinity_by_the_cgroup_quota(tmp_path, host64, files, proc_cgroup, want):
    root, pc = tree(tmp_path, files, proc_cgroup)
    assert cpus.usable_cpus(root, pc) == want


def test_no_proc_cgroup_means_the_affinity(tmp_path, host64):
    assert cpus.usable_cpus(str(tmp_path), str(tmp_path / "missing")) == 64


def _limited_cgroup() -> tuple[str, str] | None:
    """A new cgroup with a quota of one CPU: (dir, file to write a pid to), on v1's cpu hierarchy or on
    v2 where the cpu controller can be enabled; None where this machine lets us make neither."""
    name = f"xq-test-{os.getpid()}"
    v1 = "/sys/fs/cgroup/cpu"
    if os.path.isfile(os.path.join(v1, "cpu.cfs_quota_us")):
        d = os.path.join(v1, name)
        try:
            os.mkdir(d)
            with open(os.path.join(d, "cpu.cfs_period_us"), "w") as f:
                f.write("100000")
            with open(os.path.join(d, "cpu.cfs_quota_us"), "w") as f:
                f.write("100000")
            return d, os.path.join(d, "cgroup.procs")
        except OSError:
            return None
    v2 = "/sys/fs/cgroup"
    try:
        with open(os.path.join(v2, "cgroup.controllers")) as f:
            if "cpu" not in f.read().split():
                return None
        with open(os.path.join(v2, "cgroup.subtree_control"), "w") as f:
            f.write("+cpu")
        d = os.path.join(v2, name)
        os.mkdir(d)
        with open(os.path.join(d, "cpu.max"), "w") as f:
            f.write("100000 100000")
        return d, os.path.join(d, "cgroup.procs")
    except OSError:
        return None


def test_xq_run_procs_auto_starts_one_child_per_usable_cpu(redis_url):
    """In a cgroup limited to one CPU (where this machine lets the test make one), `--procs auto` starts
    one child; elsewhere, as many as usable_cpus() counts for this process."""
    made = _limited_cgroup()
    try:
        if made is not None:
            d, procs_file = made

            def enter():
                with open(procs_file, "w") as f:
                    f.write(str(os.getpid()))
            want = 1
        else:
            enter, want = None, cpus.usable_cpus()
        with XQRun(redis_url, procs="auto", preexec_fn=enter) as w:
            wait_for(lambda: " children, queues " in w.output(), 20, what="the start line")
            assert f": {want} children, queues " in w.output(), w.output()  # what auto came to
            wait_for(lambda: len(w.children()) >= want, 20, what=f"{want} children")
            assert len(w.children()) == want, w.output()
    finally:
        if made is not None:
            wait_for(lambda: _rmdir(made[0]), 10, what="the test cgroup removed")


def _rmdir(d: str) -> bool:
    try:
        os.rmdir(d)
        return True
    except OSError:
        return False
