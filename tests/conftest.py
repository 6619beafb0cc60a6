"""Shared fixtures: real redis-servers on free loopback ports (never the system Redis on 6379)."""

from __future__ import annotations

import gc
import os
import shutil
import sys

import pytest
import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `import helpers`, `import xqrun`

from helpers import client_of, free_port, load_embedded, subscribers, wait_until  # noqa: E402,F401 - re-exported for tests

embedded = load_embedded()
EmbeddedRedis = embedded.EmbeddedRedis


def _require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH: the tests need a real one (apt-get install redis-server, "
                    "or run .ci/run, which installs it)", pytrace=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One private redis-server (AOF on) for the whole session, on a free port in a pytest tmp dir."""
    _require_redis_server()
    server = EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis-session"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


TOPOLOGIES = ("single", "cluster", "sentinel")


def pytest_configure(config):
    config.addinivalue_line("markers", "topologies(*names): run the test's `redis_url`/`r` on each named "
                                       "topology (single, cluster, sentinel); ids test_x[single], test_x[cluster]")
    config.addinivalue_line("markers", "single_only(reason): keep a test of a `topologies` module on one Redis, "
                                       "for the reason given")


def pytest_generate_tests(metafunc):
    """Parametrises `topology` (and so `redis_url` and `r`) by the closest `topologies` mark, narrowed to
    single by a `single_only` one; a test without the mark runs once, on the single server."""
    if "topology" not in metafunc.fixturenames:
        return
    mark = metafunc.definition.get_closest_marker("topologies")
    if mark is None:
        return
    names = mark.args
    unknown = [n for n in names if n not in TOPOLOGIES]
    if not names or unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: topologies{names} names none or unknown ones "
                                f"{unknown} (known: {', '.join(TOPOLOGIES)})")
    only = metafunc.definition.get_closest_marker("single_only")
    if only is not None:
        if not (only.args and isinstance(only.args[0], str) and only.args[0]):
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: single_only needs its reason")
        names = ("single",)
    metafunc.parametrize("topology", names, indirect=True, ids=names)


@pytest.fixture
def topology(request) -> str:
    """The topology `redis_url` and `r` use: single (default), cluster or sentinel (see `topologies`)."""
    return getattr(request, "param", "single")


@pytest.fixture
def redis_url(topology, request):
    """The URL of this test's topology, emptied first so each test starts clean: the session server
    (FLUSHALL + SCRIPT FLUSH), or the session Cluster or Sentinel set (their `cluster`/`sentinel` clean)."""
    if topology != "single":
        return request.getfixturevalue(topology).url
    redis_server = request.getfixturevalue("redis_server")
    if not redis_server.running:
        pytest.fail(f"the session redis-server ({redis_server.url}) is no longer running; log tail:\n"
                    f"{redis_server.log_tail()}", pytrace=False)
    client = redis.Redis.from_url(redis_server.url, socket_timeout=10)
    try:
        client.flushall()
        client.script_flush()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def r(redis_url):
    """A redis-py client (bytes replies) on the clean topology: a redis.Redis, or on a Cluster a RedisCluster
    (single-key commands route by slot; see helpers.py for the rest), on Sentinel the master's client."""
    client = client_of(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fresh_redis(tmp_path):
    """A private redis-server of this test's own, for tests that kill, stop or restart it."""
    _require_redis_server()
    server = EmbeddedRedis(data_dir=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def no_event_subscribers(r):
    """For tests that count the events channel's subscribers: waits until earlier tests' are gone (a Producer
    a test left unclosed keeps its result() subscription until it is collected)."""
    gc.collect()
    wait_until(lambda: subscribers(r) == 0, 10, what="earlier tests' subscriptions to close")


@pytest.fixture
def fault_proxy(fresh_redis):
    """A FaultProxy (tests/faultproxy.py) in front of this test's own redis-server; `.redis` is that
    EmbeddedRedis (its real URL: `.redis.url`), so a test can check state directly or restart it."""
    from faultproxy import FaultProxy

    proxy = FaultProxy("127.0.0.1", fresh_redis.port)
    proxy.redis = fresh_redis
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real 3-master, 3-replica Redis Cluster for the session (tests/topology.py: .url, .master_of(key),
    .kill_master(port), .restart(port)); use `cluster` for a test that wants it empty."""
    from topology import Cluster

    _require_redis_server()
    c = Cluster(str(tmp_path_factory.mktemp("cluster")))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster(redis_cluster):
    """The session Cluster, healthy and emptied (FLUSHALL on every master) for this test."""
    redis_cluster.wait_healthy(60)
    redis_cluster.clean()
    return redis_cluster


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory):
    """A real master + 2 replicas + 3 sentinels set for the session (tests/topology.py: .url,
    .master_port(), .kill_master()); use `sentinel` for a test that wants it empty."""
    from topology import SentinelSet

    _require_redis_server()
    s = SentinelSet(str(tmp_path_factory.mktemp("sentinel")))
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture
def sentinel(redis_sentinel):
    """The session Sentinel set, healthy and emptied (FLUSHALL on the master) for this test."""
    redis_sentinel.wait_healthy(60)
    redis_sentinel.clean()
    return redis_sentinel


@pytest.fixture
def lagging_sentinel(tmp_path):
    """A Sentinel set of this test's own whose replicas replicate through FaultProxies (`.proxies`), so the
    test can delay or stall the replication stream; the sentinels and clients reach the servers directly."""
    from topology import SentinelSet

    _require_redis_server()
    s = SentinelSet(str(tmp_path / "sentinel"), proxied=True)
    try:
        s.start()
        yield s
    finally:
        s.stop()
