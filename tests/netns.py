"""Hosts on a private network, made of Linux network namespaces, for partition tests.

    NAME r      the Redis "host": bridge `xqbr` at 10.77.X.1/24, redis-server bound to that address only
    NAME a, b.. one namespace per supervisor host: `eth0` at 10.77.X.(10+i)/24, a veth whose other end is a
                port of `xqbr`
    (root)      the test process: veth NAME h at 10.77.X.254/24, also a port of `xqbr`, so the test's producer
                and its checks reach Redis directly, with no helper process inside a namespace

NAME is xq<pid>n<k> (unique to the test process and the instance); X is picked so that no route of the root
namespace is in 10.77.X.0/24.  No namespace has a default route, so traffic stays on these links.

cut(host) installs the `blackhole` qdisc on both ends of that host's veth (its eth0 and its bridge port):
every packet either way vanishes without an error, as in a real network partition, so the supervisor sees
timeouts, never a reset or an "unreachable" error; heal(host) removes both.  Not `ip link set down` (the
route goes with the link: the kernel answers ENETUNREACH at once) nor `netem loss 100%` (sch_netem is a
module some kernels lack; sch_blackhole is built into every kernel with tc).

Limits: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2 (`ip`, `tc`): Hosts.start() fails with a
clear message otherwise.  close() (also run at exit) stops only the processes it started, by PID, and
deletes every namespace and link it made; a veth goes with its namespace.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile

import redis

from helpers import stop_process, wait_until
from xqrun import XQRun

_serial = itertools.count()


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `ip ARGS`; when it fails and check is set, raise RuntimeError with its stderr."""
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({p.returncode}): {p.stderr.strip()}")
    return p


def missing_requirements() -> str | None:
    """Why this machine cannot make the namespaces, or None."""
    if os.geteuid() != 0:
        return "the partition tests need root (they create network namespaces); .ci/run runs them as root"
    for tool in ("ip", "tc", "redis-server"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH (apt-get install iproute2 redis-server; .ci/run installs them)"
    return None


def _free_subnet() -> int:
    """X such that the root namespace has no route in 10.77.X.0/24, starting from one derived from the pid."""
    start = os.getpid() % 250
    for i in range(250):
        x = (start + i) % 250 + 1
        if not ip("-4", "route", "show", "root", f"10.77.{x}.0/24").stdout.strip():
            return x
    raise RuntimeError("no free 10.77.X.0/24 subnet in the root namespace")


def _duration(text: str) -> float:
    """Seconds of an `ss` timer such as 340ms, 3.2sec, 1min4sec."""
    total = 0.0
    for n, unit in re.findall(r"([\d.]+)(ms|sec|min)", text):
        total += float(n) * {"ms": 0.001, "sec": 1.0, "min": 60.0}[unit]
    return total


class Hosts:
    """A Redis namespace and one namespace per supervisor host, joined by a bridge (see the module doc)."""

    def __init__(self, hosts=("a", "b", "c"), port: int = 16380):
        self.name = f"xq{os.getpid()}n{next(_serial)}"
        self.hosts = list(hosts)
        self.port = port
        self.redis_ns = self.name + "r"
        self.ns = {h: self.name + h for h in self.hosts}
        self.runs: list[XQRun] = []
        self.redis: subprocess.Popen | None = None
        self.made: list[str] = []    # namespaces made, deleted by close()
        self.root_link: str | None = None
        self.dir = tempfile.mkdtemp(prefix=self.name + "-")
        self.subnet = 0
        atexit.register(self.close)

    @property
    def addr(self) -> str:
        return f"10.77.{self.subnet}.1"

    @property
    def url(self) -> str:
        return f"redis://{self.addr}:{self.port}/0"

    def start(self) -> "Hosts":
        why = missing_requirements()
        if why:
            raise RuntimeError(why)
        try:
            self._make()
            self._start_redis()
        except BaseException:
            self.close()
            raise
        return self

    def _make(self) -> None:
        self.subnet = x = _free_subnet()
        r = self.redis_ns
        self._netns(r)
        ip("-n", r, "link", "add", "xqbr", "type", "bridge")
        ip("-n", r, "addr", "add", f"{self.addr}/24", "dev", "xqbr")
        ip("-n", r, "link", "set", "xqbr", "up")
        for i, h in enumerate(self.hosts):
            ns, port = self.ns[h], self.name + h
            self._netns(ns)
            ip("link", "add", port, "type", "veth", "peer", "name", port + "x")
            ip("link", "set", port, "netns", r)
            ip("link", "set", port + "x", "netns", ns)
            ip("-n", r, "link", "set", port, "master", "xqbr", "up")
            ip("-n", ns, "link", "set", port + "x", "name", "eth0")
            ip("-n", ns, "addr", "add", f"10.77.{x}.{10 + i}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        self.root_link = link = self.name + "h"
        ip("link", "add", link, "type", "veth", "peer", "name", link + "x")
        ip("link", "set", link + "x", "netns", r)
        ip("-n", r, "link", "set", link + "x", "master", "xqbr", "up")
        ip("addr", "add", f"10.77.{x}.254/24", "dev", link)
        ip("link", "set", link, "up")

    def _netns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.made.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def _start_redis(self) -> None:
        self.redis_log = open(os.path.join(self.dir, "redis.log"), "wb")
        # `ip netns exec` execs the command in place (no fork): the Popen's PID is redis-server's
        self.redis = subprocess.Popen(
            ["ip", "netns", "exec", self.redis_ns, "redis-server", "--port", str(self.port), "--bind", self.addr,
             "--save", "", "--appendonly", "yes", "--dir", self.dir, "--protected-mode", "no"],
            stdout=self.redis_log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)

        def up():
            if self.redis.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.redis.returncode}): {self.redis_tail()}")
            try:
                return client.ping()
            except redis.ConnectionError:
                return False
        try:
            wait_until(up, 20, 0.05, what=f"redis-server in {self.redis_ns} at {self.url}")
        finally:
            client.close()

    def redis_tail(self) -> str:
        with open(os.path.join(self.dir, "redis.log"), "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    def xq_run(self, host: str, *args, **kw) -> XQRun:
        """A real `xq run` in host's namespace (stopped by close(), by PID, if the test has not)."""
        kw.setdefault("env", {})
        run = XQRun(self.url, *args, wrap=["ip", "netns", "exec", self.ns[host]], **kw)
        self.runs.append(run)
        return run

    def _ends(self, host: str):
        if host not in self.ns:
            raise ValueError(f"no host {host!r}: the hosts are {', '.join(self.hosts)}")
        return ((self.ns[host], "eth0"), (self.redis_ns, self.name + host))

    def cut(self, host: str) -> None:
        """Partition host from the bridge: every packet to or from it vanishes (no error, no reset)."""
        for ns, dev in self._ends(host):
            ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "blackhole")

    def heal(self, host: str) -> None:
        """Undo cut(host): packets flow again; TCP's retransmissions deliver what was sent meanwhile."""
        for ns, dev in self._ends(host):
            ip("netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root")

    def retransmits(self, host: str) -> list[float]:
        """Seconds until the next retransmission of every established TCP connection between host and Redis
        that has unacknowledged data (both ends: `ss -tnoi`'s `timer:(on,...)`), e.g. while it is cut."""
        addr = f"10.77.{self.subnet}.{10 + self.hosts.index(host)}"
        out = []
        for ns in (self.ns[host], self.redis_ns):
            p = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tnoH", "state", "established"],
                               capture_output=True, text=True, timeout=10, check=True)
            for line in p.stdout.splitlines():
                if f"{addr}:" in line and f"{self.addr}:{self.port}" in line:
                    m = re.search(r"timer:\(on,([^,]+),", line)
                    if m:
                        out.append(_duration(m.group(1)))
        return out

    def close(self) -> None:
        """Stop what this object started (by PID) and delete its namespaces and links; safe to call twice."""
        atexit.unregister(self.close)
        errors = []
        for run in self.runs:
            try:
                run.close()
            except Exception as e:  # keep cleaning up
                errors.append(f"xq run {run.pid}: {e!r}")
        self.runs = []
        if self.redis is not None:
            stop_process(self.redis)
            self.redis = None
            self.redis_log.close()
        for ns in reversed(self.made):  # a namespace takes its links with it
            p = ip("netns", "del", ns, check=False)
            if p.returncode:
                errors.append(f"ip netns del {ns}: {p.stderr.strip()}")
        self.made = []
        if self.root_link is not None:  # gone with its peer in the Redis namespace, unless that failed
            if ip("link", "show", self.root_link, check=False).returncode == 0:
                ip("link", "del", self.root_link, check=False)
            self.root_link = None
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            print("netns: cleanup problems: " + "; ".join(errors), file=sys.stderr)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

