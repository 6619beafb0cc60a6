"""ACL credentials and TLS end to end on real servers: an ACL user on the session Cluster and Sentinel set
(redis[s]+cluster://user:pw@..., redis+sentinel://user:pw@.../MASTER), and a TLS redis-server of the test's
own (rediss://...?ssl_ca_certs=...): producers enqueue, a real `xq run --burst` drains, the Inspector counts.
The ACL user is removed from every node at the end, so other tests see the servers as before."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

import xq
from xq.inspect import Inspector
from helpers import free_port, stop_process, wait_until
from topology import HOST, _ask, queues_on_masters
from xqrun import XQRun

USER, PW = "xqapp", "s3cret-pw"
ACL = ["ACL", "SETUSER", USER, "on", f">{PW}", "~xq:*", "&xq:*", "+@all"]


def _acl_on(ports: list[int]):
    for p in ports:
        assert _ask(p, *ACL, timeout=5) == b"OK", f"ACL SETUSER on port {p}"


def _acl_off(ports: list[int]):
    for p in ports:
        _ask(p, "ACL", "DELUSER", USER, timeout=5)


def _with_user(url: str, pw: str = PW) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{USER}:{pw}@{rest}"


def _drain_and_count(url: str, queues: list[str], env: dict, n: int = 20) -> None:
    """Enqueue n tasks into each queue over url, drain them with `xq run --burst` and check the counts."""
    with xq.Producer(url) as p:
        ids = {q: p.enqueue_many("count", list(range(n)), queue=q) for q in queues}
    with XQRun(url, burst=True, queues=",".join(queues), env=env) as w:
        assert w.wait(60) == 0, w.output()
    with Inspector(url) as i:
        for q in queues:
            c = i.queue(q)
            assert (c["ready"], c["running"], c["dead"]) == (0, 0, 0), c
    with xq.Producer(url) as p:
        assert {p.status(t)["status"] for q in queues for t in ids[q]} == {"done"}


def _refused(url: str) -> None:
    """A wrong password in url gets a clear xq error, sync and asyncio, that does not show it."""
    with pytest.raises((xq.RedisRefused, xq.ConfigError)) as e:
        with xq.Producer(url, retry_for=0) as p:
            p.enqueue("count", 1, queue="q")
    msgs = [str(e.value)]

    async def enqueue():
        async with xq.AsyncProducer(url, retry_for=0) as p:
            await p.enqueue("count", 1, queue="q")
    with pytest.raises((xq.RedisRefused, xq.ConfigError)) as e:
        asyncio.run(asyncio.wait_for(enqueue(), 30))
    msgs.append(str(e.value))
    for msg in msgs:
        assert "wrong-pw" not in msg and PW not in msg, msg
        assert "authentication failed" in msg, msg


def test_acl_user_on_cluster(cluster, redis_url):
    _acl_on(cluster.ports)
    try:
        url = _with_user(cluster.url)
        queues = queues_on_masters(cluster, 2, prefix="acl")
        _drain_and_count(url, queues, {"XQ_TEST_REDIS": redis_url})
        _refused(_with_user(cluster.url, "wrong-pw"))
    finally:
        _acl_off(cluster.ports)


def test_unreachable_cluster_is_connection_lost():
    """No seed node answers: xq.ConnectionLost (redis-py's RedisClusterException, translated)."""
    url = f"redis+cluster://{HOST}:{free_port()},{HOST}:{free_port()}/"
    with pytest.raises(xq.ConnectionLost, match="unreachable"):
        xq.Producer(url, retry_for=0)


def test_acl_user_on_sentinel(sentinel, redis_url):
    ports = [s.port for s in sentinel.servers]
    _acl_on(ports)
    try:
        url = _with_user(sentinel.url)
        _drain_and_count(url, ["acl1", "acl2"], {"XQ_TEST_REDIS": redis_url})
        _refused(_with_user(sentinel.url, "wrong-pw"))
    finally:
        _acl_off(ports)


def test_sentinels_own_acl_user(sentinel, redis_url):
    """sentinel_username= / sentinel_password= reach the sentinels.  The user is added beside the default
    one (which stays open), so other tests of the session set are unaffected; a wrong sentinel_password is
    refused by every sentinel: an error that names it and does not show the password."""
    ports = [s.port for s in sentinel.sentinels]
    for p in ports:
        assert _ask(p, "ACL", "SETUSER", "xqsent", "on", ">sent-pw", "+@all", timeout=5) == b"OK"
    try:
        url = f"{sentinel.url}?sentinel_username=xqsent&sentinel_password=sent-pw"
        _drain_and_count(url, ["sent"], {"XQ_TEST_REDIS": redis_url}, n=5)
        bad = f"{sentinel.url}?sentinel_username=xqsent&sentinel_password=wrong-pw"
        with pytest.raises((xq.RedisRefused, xq.ConnectionLost, xq.ConfigError)) as e:
            with xq.Producer(bad, retry_for=0) as p:
                p.enqueue("count", 1, queue="sent")
        # redis-py reports it as MasterNotFoundError listing each sentinel's AuthenticationError, which xq
        # takes for an outage (ConnectionLost, retried for retry_for) rather than a refusal
        assert "AuthenticationError" in str(e.value) and "wrong-pw" not in str(e.value), str(e.value)
    finally:
        for p in ports:
            _ask(p, "ACL", "DELUSER", "xqsent", timeout=5)


def _openssl(*args: str, cwd) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"openssl {' '.join(args)}:\n{out.stderr}"


def _certs(d) -> dict:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 (files in d)."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=xq test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
             "-out", "server.csr", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt", cwd=d)
    return {k: str(d / f) for k, f in (("ca", "ca.crt"), ("cert", "server.crt"), ("key", "server.key"))}


def _tls_ping(port: int, ca: str) -> bool:
    import redis

    try:
        c = redis.Redis(host=HOST, port=port, ssl=True, ssl_ca_certs=ca, socket_timeout=1,
                        socket_connect_timeout=1)
        try:
            return c.ping()
        finally:
            c.close()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def _tls_server(d, port: int, certs: dict, *conf: str) -> subprocess.Popen:
    """A redis-server in d that speaks TLS only (no plain port) on port, answering PING when returned."""
    d.mkdir(exist_ok=True)
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", HOST,
                             "--tls-cert-file", certs["cert"], "--tls-key-file", certs["key"],
                             "--tls-ca-cert-file", certs["ca"], "--tls-auth-clients", "no", "--save", "",
                             "--appendonly", "yes", "--dir", str(d), "--logfile", str(d / "redis.log"), *conf],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d)
    try:
        wait_until(lambda: proc.poll() is not None or _tls_ping(port, certs["ca"]), 10, 0.05,
                   what=f"the TLS redis-server on port {port} to answer")
        assert proc.poll() is None, (d / "redis.log").read_text()
    except BaseException:
        stop_process(proc)
        raise
    return proc


@pytest.fixture
def tls_redis(tmp_path):
    """A TLS-only redis-server of this test's own: (port, certs)."""
    certs = _certs(tmp_path)
    port = free_port()
    proc = _tls_server(tmp_path / "redis", port, certs)
    try:
        yield port, certs
    finally:
        stop_process(proc)


def test_tls_single(tls_redis, redis_url):
    port, certs = tls_redis
    url = f"rediss://{HOST}:{port}/0?ssl_ca_certs={certs['ca']}"
    _drain_and_count(url, ["tls"], {"XQ_TEST_REDIS": redis_url})
    with xq.Producer(url) as p:
        tid = p.enqueue("echo", {"over": "tls"})
        with XQRun(url, burst=True, env={"XQ_TEST_REDIS": redis_url}) as w:
            assert w.wait(60) == 0, w.output()
        assert p.result(tid, timeout=10) == {"over": "tls"}
    # without the CA the server's certificate is not trusted: a clear error, not a hang
    with pytest.raises((xq.ConnectionLost, xq.RedisRefused, xq.ConfigError)) as e:
        with xq.Producer(f"rediss://{HOST}:{port}/0", retry_for=0) as p:
            p.enqueue("echo", 1)
    assert "certificate" in str(e.value).lower(), str(e.value)
    assert os.path.exists(certs["ca"])


def _tls_client(port: int, ca: str):
    import redis

    return redis.Redis(host=HOST, port=port, ssl=True, ssl_ca_certs=ca, socket_timeout=5)


def test_tls_cluster(tmp_path, redis_url):
    """3 TLS-only masters (cluster bus and replication over TLS too), rediss+cluster://...?ssl_ca_certs=."""
    from topology import cluster_port, keyslot
    from xq.keys import QueueKeys

    certs = _certs(tmp_path)
    ports = [cluster_port() for _ in range(3)]
    procs = []
    try:
        for p in ports:
            procs.append(_tls_server(tmp_path / str(p), p, certs, "--tls-cluster", "yes", "--tls-replication",
                                     "yes", "--cluster-enabled", "yes", "--cluster-node-timeout", "2000"))
        out = subprocess.run(["redis-cli", "--tls", "--cacert", certs["ca"], "--cluster", "create",
                              *(f"{HOST}:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
        clients = [_tls_client(p, certs["ca"]) for p in ports]
        try:
            wait_until(lambda: all(c.cluster("info")["cluster_state"] == "ok" for c in clients), 30, 0.1,
                       what="the TLS cluster to be ok")
            slots = clients[0].cluster("slots")
        finally:
            for c in clients:
                c.close()
        owner = {}
        for name in (f"tls{i}" for i in range(1000)):  # two queues whose slots are on two masters
            slot = keyslot(QueueKeys(name).base)
            port = next(int(r[2][1]) for r in slots if r[0] <= slot <= r[1])
            owner.setdefault(port, name)
            if len(owner) == 2:
                break
        assert len(owner) == 2, (owner, slots)
        url = "rediss+cluster://" + ",".join(f"{HOST}:{p}" for p in ports) + f"/?ssl_ca_certs={certs['ca']}"
        _drain_and_count(url, list(owner.values()), {"XQ_TEST_REDIS": redis_url})
    finally:
        for proc in procs:
            stop_process(proc)
