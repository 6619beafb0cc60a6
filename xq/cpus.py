"""How many CPUs this process may use: what `--procs auto` and the media codecs' threads go by.

The CPUs it may run on (its affinity), capped by a CPU quota of its cgroup, if any: a container limited to
2 CPUs on a 64-core host sees 64 in its affinity, and 64 CPU-bound children there would share 2 CPUs'
worth of time (each ~3% of a core, thrashing caches and memory).  cgroup v2 (`cpu.max`: "QUOTA PERIOD" or
"max PERIOD") and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`, -1 for none) are read for the process's
own cgroup and each of its ancestors; the smallest quota wins, rounded up to whole CPUs.
"""

from __future__ import annotations

import math
import os

CGROUP_ROOT = "/sys/fs/cgroup"


def usable_cpus(root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> int:
    """CPUs in this process's affinity, at most its cgroup's CPU quota rounded up; at least 1."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_quota(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_quota(root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The smallest CPU quota (in CPUs) over this process's cgroup and its ancestors, None if none is set
    or nothing can be read."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: one unified hierarchy
            found += _walk(os.path.join(root), path, _v2)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own hierarchy
            for mount in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                base = os.path.join(root, mount)
                if os.path.isdir(base):
                    found += _walk(base, path, _v1)
                    break
    return min(found) if found else None


def _walk(base: str, path: str, read) -> list[float]:
    """The quotas read at base/path and at each ancestor up to base itself."""
    out = []
    parts = [p for p in path.split("/") if p and p != ".."]
    for k in range(len(parts), -1, -1):
        q = read(os.path.join(base, *parts[:k]))
        if q is not None:
            out.append(q)
    return out


def _v2(d: str) -> float | None:
    try:
        with open(os.path.join(d, "cpu.max")) as f:
            quota, _, period = f.read().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or 100000)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1(d: str) -> float | None:
    try:
        with open(os.path.join(d, "cpu.cfs_quota_us")) as f:
            quota = int(f.read().strip())
        with open(os.path.join(d, "cpu.cfs_period_us")) as f:
            period = int(f.read().strip())
        if quota <= 0 or period <= 0:
            return None
        return quota / period
    except (OSError, ValueError):
        return None
