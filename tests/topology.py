"""Real Redis topologies for tests: a 3-master, 3-replica Cluster and a master + 2 replicas + 3 sentinels
set, every server a redis-server of ours on a free loopback port in a tmp dir, stopped by the PID of the
Popen that started it."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from helpers import free_port, stop_process, wait_until

HOST = "127.0.0.1"


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too, below 55536 as Cluster wants."""
    for _ in range(1000):
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((HOST, port))
                b.bind((HOST, port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


def _client(port: int, timeout: float = 1.0) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 0))


def _ask(port: int, *args, timeout: float = 1.0):
    """One command to the server on port, its raw reply (no redis-py parsing), or None if it does not
    answer (down, starting, refusing)."""
    c = _client(port, timeout)
    try:
        conn = c.connection_pool.get_connection()
        try:
            conn.send_command(*args)
            return conn.read_response()
        finally:
            c.connection_pool.release(conn)
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError):
        return None
    finally:
        c.close()


class Server:
    """One redis-server (or sentinel) process: its port, dir, config lines and Popen."""

    def __init__(self, root: str, port: int, conf: list[str], sentinel: bool = False):
        self.port, self.sentinel = port, sentinel
        self.dir = os.path.join(root, str(port))
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "sentinel.conf" if sentinel else "redis.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join([f"port {port}", f"bind {HOST}", f"dir {self.dir}", "daemonize no",
                               f"logfile {os.path.join(self.dir, 'log')}", *conf]) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = ["redis-server", self.conf] + (["--sentinel"] if self.sentinel else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=self.dir)
        wait_until(lambda: _ask(self.port, "PING"), 10, 0.02, what=f"redis-server on port {self.port} to answer")

    def kill(self) -> None:
        """SIGKILL (a crash: nothing flushed, no goodbye to the cluster)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(os.path.join(self.dir, "log"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


class Cluster:
    """3 masters + 3 replicas (cluster-node-timeout 2000 ms).  url: redis+cluster:// by all six nodes."""

    NODE_TIMEOUT_MS = 2000

    def __init__(self, root: str, masters: int = 3, replicas: int = 1):
        self.root, self.n = root, masters * (1 + replicas)
        self.masters, self.replicas = masters, replicas
        self.servers = [Server(root, cluster_port(), [
            "cluster-enabled yes", "cluster-config-file nodes.conf",
            f"cluster-node-timeout {self.NODE_TIMEOUT_MS}", "appendonly yes", "appendfsync everysec",
            "save ''", "cluster-replica-validity-factor 0"]) for _ in range(self.n)]
        self.started_in = 0.0

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.ports) + "/"

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [(HOST, p) for p in self.ports]

    def start(self) -> "Cluster":
        t0 = time.monotonic()
        for s in self.servers:
            s.start()
        out = subprocess.run(["redis-cli", "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports),
                              "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout}\n{out.stderr}")
        self.wait_healthy(60)
        self.started_in = time.monotonic() - t0
        return self

    def server(self, port: int) -> Server:
        return next(s for s in self.servers if s.port == port)

    def _slots(self, port: int):
        return _ask(port, "CLUSTER", "SLOTS")

    def roles(self) -> dict[int, str]:
        """port -> 'master' / 'slave' of each running node, as it says of itself."""
        out = {}
        for s in self.servers:
            if s.running:
                role = _ask(s.port, "ROLE")
                if role:
                    out[s.port] = role[0].decode()
        return out

    def healthy(self) -> bool:
        """Every running node says cluster_state:ok and agrees on the masters, every master of a slot range
        has a replica that is connected and in sync (master_link_status:up)."""
        running = [s for s in self.servers if s.running]
        for s in running:
            info = _ask(s.port, "CLUSTER", "INFO")
            if not info or b"cluster_state:ok" not in info:
                return False
        views = [self._slots(s.port) for s in running]
        if not views[0] or any(v is None for v in views):
            return False
        owners = {tuple(sorted(r[2][1] for r in v)) for v in views}
        if len(owners) != 1 or len(views[0]) != self.masters:
            return False
        for r in views[0]:
            if len(r) < 2 + 1 + self.replicas:
                return False
            for replica in r[3:]:
                info = _ask(replica[1], "INFO", "replication")
                if not info or b"master_link_status:up" not in info:
                    return False
        return True

    def wait_healthy(self, timeout: float = 60) -> None:
        wait_until(self.healthy, timeout, 0.1, what="the cluster to be ok, every replica in sync")

    def master_of(self, key: str | bytes) -> int:
        """The port of the master that owns key's slot, as the cluster says now."""
        return self.master_of_slot(keyslot(key))

    def master_of_slot(self, slot: int) -> int:
        for s in self.servers:
            if s.running:
                for r in self._slots(s.port) or ():
                    if r[0] <= slot <= r[1]:
                        return r[2][1]
        raise AssertionError(f"no node serves slot {slot}")

    def master_ports(self) -> list[int]:
        return sorted(p for p, role in self.roles().items() if role == "master")

    def kill_master(self, port: int, timeout: float = 30) -> int:
        """SIGKILL the master on port and wait until one of its replicas is promoted and the cluster is ok
        again; returns the new master's port."""
        slot = next(r[0] for r in self._slots(port) if r[2][1] == port)
        self.server(port).kill()

        def promoted():
            try:
                new = self.master_of_slot(slot)
            except AssertionError:
                return None
            if new == port:
                return None
            info = _ask(new, "CLUSTER", "INFO")
            return new if info and b"cluster_state:ok" in info else None
        return wait_until(promoted, timeout, 0.05, what=f"a replica of master {port} to be promoted")

    def restart(self, port: int) -> None:
        """Start the node on port again (it rejoins, as a replica if it was failed over)."""
        self.server(port).start()

    def clean(self) -> None:
        """Empty every master (FLUSHALL; SCRIPT FLUSH on every node), for a test of its own."""
        for p in self.master_ports():
            _ask(p, "FLUSHALL", timeout=10)
        for s in self.servers:
            if s.running:
                _ask(s.port, "SCRIPT", "FLUSH", timeout=10)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


class SentinelSet:
    """A master + 2 replicas, watched by 3 sentinels (quorum 2, down-after 1000 ms, failover-timeout 5000
    ms) under the name MASTER.  url: redis+sentinel:// by the three sentinels."""

    MASTER = "xqmaster"

    def __init__(self, root: str, proxied: bool = False):
        """proxied: each replica replicates through a FaultProxy of its own in front of the master
        (self.proxies, started here), so a test can delay or stall the replication stream; the sentinels
        still watch every server directly. Their failover-timeout is then 120 s: after failover-timeout they
        would "fix" a replica whose master address is not the master's (the proxy's) and bypass the proxy."""
        from faultproxy import FaultProxy

        self.root = root
        ports = [free_port() for _ in range(3)]
        self.proxies = [FaultProxy(HOST, ports[0]).start() for _ in ports[1:]] if proxied else []
        upstream = [p.port for p in self.proxies] or [ports[0]] * 2
        base = ["appendonly yes", "appendfsync everysec", "save ''"]
        self.servers = [Server(root, ports[0], base)] + [
            Server(root, p, base + [f"replicaof {HOST} {up}"]) for p, up in zip(ports[1:], upstream)]
        self.sentinels = [Server(root, free_port(), [
            f"sentinel monitor {self.MASTER} {HOST} {ports[0]} 2",
            f"sentinel down-after-milliseconds {self.MASTER} 1000",
            f"sentinel failover-timeout {self.MASTER} {120000 if proxied else 5000}",
            f"sentinel parallel-syncs {self.MASTER} 2"], sentinel=True) for _ in range(3)]
        self.started_in = 0.0

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"{HOST}:{s.port}" for s in self.sentinels) + f"/{self.MASTER}"

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [(HOST, s.port) for s in self.servers]

    def start(self) -> "SentinelSet":
        t0 = time.monotonic()
        for s in self.servers + self.sentinels:
            s.start()
        self.wait_healthy(60)
        self.started_in = time.monotonic() - t0
        return self

    def announced(self, sentinel: Server) -> int | None:
        addr = _ask(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER)
        return int(addr[1]) if addr else None

    def master_port(self) -> int:
        """The master's port as the sentinels announce it (all running ones agreeing)."""
        ports = {self.announced(s) for s in self.sentinels if s.running}
        assert len(ports) == 1 and None not in ports, f"sentinels disagree: {ports}"
        return ports.pop()

    def healthy(self) -> bool:
        """Every sentinel announces the same master, knows the other sentinels and its two replicas, which
        are in sync."""
        ports = {self.announced(s) for s in self.sentinels if s.running}
        if len(ports) != 1 or None in ports:
            return False
        master = ports.pop()
        for s in self.sentinels:
            info = _ask(s.port, "SENTINEL", "MASTER", self.MASTER)
            if not info:
                return False
            d = info if isinstance(info, dict) else dict(zip(info[::2], info[1::2]))
            if int(d.get(b"num-other-sentinels", 0)) < 2 or int(d.get(b"num-slaves", 0)) < 2:
                return False
        via = {master} | {p.port for p in self.proxies if p.target[1] == master}
        for srv in self.servers:
            if srv.running and srv.port != master:
                info = _ask(srv.port, "INFO", "replication")
                if not info or b"master_link_status:up" not in info or not any(
                        f"master_port:{port}\r".encode() in info for port in via):
                    return False
        return True

    def wait_healthy(self, timeout: float = 60) -> None:
        wait_until(self.healthy, timeout, 0.1, what="the sentinels to agree on the master, replicas in sync")

    def server(self, port: int) -> Server:
        return next(s for s in self.servers if s.port == port)

    def synced(self) -> bool:
        """Has every running replica acknowledged the master's whole replication stream?"""
        master = self.master_port()
        info = _ask(master, "INFO", "replication")
        if not info:
            return False
        fields = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
        offset = fields.get("master_repl_offset")
        acked = [v for k, v in fields.items() if k.startswith("slave") and k[5:].isdigit()]
        running = sum(1 for s in self.servers if s.running) - 1
        return len(acked) == running and all(f"offset={offset}," in v for v in acked)

    def wait_synced(self, timeout: float = 30) -> None:
        wait_until(self.synced, timeout, 0.02, what="every replica to acknowledge the master's writes")

    def kill_master(self, timeout: float = 30) -> int:
        """SIGKILL the master and wait until the sentinels announce a promoted replica that says it is a
        master; returns its port."""
        old = self.master_port()
        self.server(old).kill()
        return self.wait_failover(old, timeout)

    def wait_failover(self, old: int, timeout: float = 30) -> int:
        """Wait until the sentinels announce a master other than old that says it is one; returns its port."""
        def promoted():
            ports = {self.announced(s) for s in self.sentinels}
            if len(ports) != 1 or old in ports or None in ports:
                return None
            new = ports.pop()
            role = _ask(new, "ROLE")
            return new if role and role[0] == b"master" else None
        return wait_until(promoted, timeout, 0.05, what=f"the sentinels to fail over from master {old}")

    def restart(self, port: int) -> None:
        """Start the server on port again (the sentinels make an old master a replica of the new one)."""
        self.server(port).start()

    def clean(self) -> None:
        _ask(self.master_port(), "FLUSHALL", timeout=10)
        for s in self.servers:
            if s.running:
                _ask(s.port, "SCRIPT", "FLUSH", timeout=10)

    def stop(self) -> None:
        for s in self.sentinels + self.servers:
            s.stop()
        for p in self.proxies:
            p.stop()


def keyslot(key: str | bytes) -> int:
    """The Cluster hash slot of key (its {hash tag} if it has one)."""
    from redis.crc import key_slot

    return key_slot(key.encode() if isinstance(key, str) else key)


def queues_on_masters(cluster: Cluster, n: int = 3, prefix: str = "q") -> list[str]:
    """n queue names whose slots are on n different masters."""
    from xq.keys import QueueKeys

    found: dict[int, str] = {}
    for i in range(10000):
        name = f"{prefix}{i}"
        found.setdefault(cluster.master_of(QueueKeys(name).base), name)
        if len(found) >= n:
            return list(found.values())[:n]
    raise AssertionError(f"could not place {n} queues on different masters")
