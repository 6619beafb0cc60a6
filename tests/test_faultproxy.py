"""The fault proxy itself (tests/faultproxy.py) against a real redis-server: quick checks of every fault."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from faultproxy import FaultProxy
from helpers import wait_until


def client(url: str, **kw) -> redis.Redis:
    """One connection, no redis-py retries: a fault shows up as the command's own error."""
    return redis.Redis.from_url(url, single_connection_client=True, retry=Retry(NoBackoff(), 0),
                                socket_connect_timeout=2, **kw)


def clients_on_server(direct: redis.Redis) -> int:
    """Connections the real server has, not counting `direct` itself."""
    return len(direct.client_list()) - 1


def test_commands_pass_through(fault_proxy):
    c = client(fault_proxy.url())
    try:
        assert c.ping()
        c.set("k", b"v" * 1_000_000)  # bigger than one chunk
        assert c.get("k") == b"v" * 1_000_000
        pipe = c.pipeline(transaction=False)
        for i in range(5000):
            pipe.incr("n")
        assert pipe.execute()[-1] == 5000
        # (the pipeline takes a connection of its own from the pool)
        assert fault_proxy.accepted >= 1 and fault_proxy.connections == fault_proxy.accepted
        assert fault_proxy.cuts == 0
    finally:
        c.close()
    direct = redis.Redis.from_url(fault_proxy.redis.url)
    assert direct.get("n") == b"5000"  # really stored on the server behind the proxy
    direct.close()


def test_url_names_db_and_password(fault_proxy):
    assert fault_proxy.url() == f"redis://127.0.0.1:{fault_proxy.port}/0"
    assert fault_proxy.url(db=3, password="pw") == f"redis://:pw@127.0.0.1:{fault_proxy.port}/3"


def test_cut_fails_the_next_command_then_a_new_connection_works(fault_proxy):
    direct = redis.Redis.from_url(fault_proxy.redis.url)
    c = client(fault_proxy.url())
    try:
        assert c.ping()
        assert clients_on_server(direct) == 1
        assert fault_proxy.cut() == 1
        assert fault_proxy.cuts == 1 and fault_proxy.connections == 0
        with pytest.raises(redis.ConnectionError):
            c.ping()
        # the server side was closed too
        wait_until(lambda: clients_on_server(direct) == 0, 5, what="the server to drop the cut connection")
        assert c.ping()  # redis-py reconnects on the next command
        assert fault_proxy.accepted == 2 and fault_proxy.cuts == 1
    finally:
        c.close()
        direct.close()


def test_cut_resets_a_raw_socket(fault_proxy):
    s = socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=5)
    try:
        s.sendall(b"PING\r\n")
        assert s.recv(100) == b"+PONG\r\n"
        fault_proxy.cut()
        with pytest.raises(ConnectionResetError):  # SO_LINGER 0: a RST, not an orderly FIN
            s.sendall(b"PING\r\n")
            s.recv(100)
    finally:
        s.close()


def test_refuse_closes_new_and_existing_connections(fault_proxy):
    c = client(fault_proxy.url())
    try:
        assert c.ping()
        fault_proxy.refuse(True)
        assert fault_proxy.cuts == 1
        for _ in range(3):
            with pytest.raises(redis.ConnectionError):
                c.ping()
        assert fault_proxy.refused >= 1
        fault_proxy.refuse(False)
        assert c.ping()
    finally:
        c.close()


def test_stall_holds_bytes_until_resume(fault_proxy):
    s = socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=5)
    try:
        fault_proxy.stall()
        s.sendall(b"PING\r\n")
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            s.recv(100)
        fault_proxy.resume()
        s.settimeout(5)
        assert s.recv(100) == b"+PONG\r\n"  # the held command was delivered, the connection never dropped
        assert fault_proxy.cuts == 0
    finally:
        s.close()


def test_stall_down_holds_only_the_replies(fault_proxy):
    direct = redis.Redis.from_url(fault_proxy.redis.url)
    s = socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=5)
    try:
        fault_proxy.stall("down")
        s.sendall(b"SET k v\r\n")
        wait_until(lambda: direct.get("k") == b"v", 5, what="the command to reach the server")  # it went up
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(100)  # ... but its reply is held
        fault_proxy.resume()
        s.settimeout(5)
        assert s.recv(100) == b"+OK\r\n"
        with pytest.raises(ValueError):
            fault_proxy.stall("sideways")
    finally:
        s.close()
        direct.close()


def test_stall_times_out_a_client_then_resume(fault_proxy):
    c = client(fault_proxy.url(), socket_timeout=0.5)
    try:
        assert c.ping()
        fault_proxy.stall()
        with pytest.raises(redis.TimeoutError):
            c.ping()
        fault_proxy.resume()
        assert c.ping()
    finally:
        c.close()


def test_delay_adds_latency_each_way(fault_proxy):
    c = client(fault_proxy.url())
    try:
        assert c.ping()
        fault_proxy.delay(0.1)
        t0 = time.monotonic()
        assert c.ping()
        assert time.monotonic() - t0 >= 0.19  # 0.1 s up + 0.1 s down
        fault_proxy.delay(0)
        assert c.ping()
    finally:
        c.close()


def test_cut_randomly_is_bounded_and_stoppable(fault_proxy):
    url = fault_proxy.url()
    errors = 0
    c = client(url)  # connects at once: before the cuts start
    fault_proxy.cut_randomly(0.05, 0.6)
    assert fault_proxy.cutting
    deadline = time.monotonic() + 1.0
    try:
        for _ in range(10_000):  # bounded in count and time
            if time.monotonic() > deadline:
                break
            try:
                c.ping()
            except redis.ConnectionError:
                errors += 1
            time.sleep(0.005)
    finally:
        c.close()
    wait_until(lambda: not fault_proxy.cutting, 3, what="cut_randomly to end on its own")
    assert fault_proxy.cuts >= 1 and errors >= 1
    fault_proxy.cut_randomly(0.01, 60)
    t0 = time.monotonic()
    fault_proxy.stop_cutting()
    assert not fault_proxy.cutting and time.monotonic() - t0 < 5


def test_stop_closes_everything_and_ends_its_threads(fresh_redis):
    proxy = FaultProxy("127.0.0.1", fresh_redis.port).start()
    c = client(proxy.url())
    try:
        assert c.ping()
        proxy.stall()
        proxy.cut_randomly(10, 60)
        proxy.stop()
        with pytest.raises(redis.ConnectionError):
            c.ping()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
    finally:
        c.close()
        proxy.stop()  # idempotent
    wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("faultproxy")], 3,
               what="the proxy's threads to end")
