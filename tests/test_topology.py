"""One URL scheme for one Redis, a Redis Cluster and a Sentinel set (xq.conn.parse_url), and producers and
inspection on a real 3-master Cluster and a real Sentinel set (fixtures in tests/topology.py)."""

from __future__ import annotations

import asyncio
import re
import time

import orjson
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

import xq
from xq import conn
from xq.broker import Broker
from xq.inspect import AsyncInspector, Inspector
from xq.keys import QueueKeys
from xq.scripts import SHA

from helpers import wait_until
from topology import keyslot, queues_on_masters


# ------------------------------------------------------------------------------------------- the parser
@pytest.mark.parametrize("url, kind, nodes, master, db, user, password, tls", [
    ("redis://127.0.0.1:7000/2", "single", (("127.0.0.1", 7000),), None, 2, None, None, False),
    ("rediss://u:pw@h:1/0", "single", (("h", 1),), None, 0, "u", "pw", True),
    ("redis+cluster://h1:7000,h2:7001/", "cluster", (("h1", 7000), ("h2", 7001)), None, 0, None, None, False),
    ("redis+cluster://h1", "cluster", (("h1", 6379),), None, 0, None, None, False),
    ("rediss+cluster://app:p%40ss@h1:7000/0", "cluster", (("h1", 7000),), None, 0, "app", "p@ss", True),
    ("redis+cluster://[::1]:7000,h2:7001", "cluster", (("::1", 7000), ("h2", 7001)), None, 0, None, None, False),
    ("redis+sentinel://s1,s2:26380/mymaster", "sentinel", (("s1", 26379), ("s2", 26380)), "mymaster", 0, None,
     None, False),
    ("rediss+sentinel://:pw@s1:26379/mymaster/3", "sentinel", (("s1", 26379),), "mymaster", 3, None, "pw", True),
])
def test_parse_url(url, kind, nodes, master, db, user, password, tls):
    t = conn.parse_url(url)
    assert (t.kind, t.nodes, t.master, t.db, t.username or None, t.password, t.tls) == (
        kind, nodes, master, db, user, password, tls)
    assert conn.check_url(url) == url


def test_sentinel_credentials_are_options():
    t = conn.parse_url("redis+sentinel://m:mpw@s1/mm?sentinel_username=su&sentinel_password=spw")
    assert t.connection_kwargs() == {"username": "m", "password": "mpw"}
    assert t.sentinel_kwargs() == {"username": "su", "password": "spw"}
    t = conn.parse_url("rediss+cluster://h:1?ssl_cert_reqs=none")
    assert t.connection_kwargs()["ssl"] is True and t.connection_kwargs()["ssl_cert_reqs"] == "none"


@pytest.mark.parametrize("url, says", [
    ("redis+cluster://", "no hosts"),
    ("redis+cluster:///", "no hosts"),
    ("redis+cluster://h1:7000,,h2:7001", "empty host"),
    ("redis+cluster://h1:70000", "bad port '70000'"),
    ("redis+cluster://h1:x", "bad port 'x'"),
    ("redis+cluster://h1:7000/3", "only database 0"),
    ("redis+sentinel://s1:26379", "no master name"),
    ("redis+sentinel://s1:26379/", "no master name"),
    ("redis+sentinel://s1:26379/m/x", "database 'x' is not a number"),
    ("redis+sentinel://s1:26379/m/1/2", "more than MASTER_NAME/db"),
    ("redis+cluster://h1?foo=1", "unknown option 'foo'"),
    ("redis+cluster://h1?sentinel_password=x", "unknown option 'sentinel_password'"),
    ("redis+cluster://h1?ssl_cert_reqs=none", "needs TLS"),
    ("redis+mesh://h1", "scheme 'redis+mesh'"),
    ("h1:6379", "scheme '(none)'"),
    ("redis://h1:1,h2:2/0", "Port could not be cast"),
])
def test_bad_urls_name_the_problem(url, says):
    with pytest.raises(xq.ConfigError, match=re.escape(says)):
        conn.parse_url(url)
    with pytest.raises(xq.ConfigError, match="invalid Redis URL"):
        xq.Producer(url)


@pytest.mark.parametrize("url", [
    "redis://:hunter2@h:1/0", "redis://u:hunter2@h:1/0", "rediss+cluster://u:hunter2@h1:1,h2:2/",
    "redis+sentinel://:hunter2@s1,s2/m/1?sentinel_password=hunter2",
    "redis+sentinel://s1/m?sentinel_username=u&sentinel_password=hunter2&x=1",
])
def test_redacted_hides_every_password(url):
    assert "hunter2" not in conn.redacted(url) and "***" in conn.redacted(url)
    try:
        conn.parse_url(url)
    except xq.ConfigError as e:
        assert "hunter2" not in str(e)


_host = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,2}", fullmatch=True)
_secret = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="%@/?#,:&="),
                  min_size=6, max_size=20)


@given(st.lists(st.tuples(_host, st.integers(1, 65535)), min_size=1, max_size=6), _secret,
       st.sampled_from(["redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"]))
def test_parse_round_trip_and_redaction(nodes, password, scheme):
    path = "/m/2" if "sentinel" in scheme else "/"
    url = f"{scheme}://user:{password}@" + ",".join(f"{h}:{p}" for h, p in nodes) + path
    t = conn.parse_url(url)
    assert t.nodes == tuple(nodes) and t.password == password and t.username == "user"
    assert t.tls == scheme.startswith("rediss") and t.kind == scheme.partition("+")[2]
    assert password not in conn.redacted(url)


# ------------------------------------------------------------------------------------------------ Cluster
def _places(cluster, queues):
    return {q: cluster.master_of(QueueKeys(q).base) for q in queues}


def test_cluster_fixture_is_three_masters_three_replicas(cluster):
    roles = cluster.roles()
    assert sorted(roles.values()) == ["master"] * 3 + ["slave"] * 3
    c = conn.make_client(cluster.url)
    try:
        assert type(c).__name__ == "RedisCluster" and len(c.get_primaries()) == 3
    finally:
        c.close()


def test_cluster_producer_and_inspection_over_three_masters(cluster):
    queues = queues_on_masters(cluster, 3)
    assert len(set(_places(cluster, queues).values())) == 3
    with xq.Producer(cluster.url) as p:
        ids = {q: p.enqueue_many("job", [{"n": i} for i in range(5)], queue=q) for q in queues}
        # every script call went to its queue's master: the records are there, not on the others
        for q in queues:
            node = redis.Redis(port=cluster.master_of(QueueKeys(q).base))
            assert node.llen(QueueKeys(q).ready[5]) == 5 and node.exists(QueueKeys(q).task(ids[q][0]))
            node.close()
        assert {x["queue"] for x in p.queues()} >= set(queues)
        for q in queues:
            assert p.queue(q)["ready"] == 5
            assert [t["id"] for t in p.tasks(q, "queued")["tasks"]] == ids[q]
            assert p.status(ids[q][0])["status"] == "queued"   # found by scanning xq:queues, on its node
        q0 = queues[0]
        assert p.pause_queue(q0) and p.paused(q0) and p.queue(q0)["paused"]
        assert p.resume_queue(q0) and not p.paused(q0)
        assert p.cancel(ids[q0][0]) == "canceled" and p.status(ids[q0][0])["status"] == "canceled"
        # a dependent of a canceled task dies: a dead letter, made by the scripts on that queue's master
        q1 = queues[1]
        parent = p.enqueue("job", 1, queue=q1)
        child = p.enqueue("job", 2, queue=q1, depends_on=[parent])
        assert p.status(child)["status"] == "waiting"
        p.cancel(parent)
        assert [t["id"] for t in p.dead_letters(q1)] == [child] and p.dead_count(q1) == 1
        # replay it into a queue on another master: read on one node, imported on the other
        assert p.replay(q1, to_queue=queues[2]) == [child]
        assert p.dead_count(q1) == 0 and p.queue(queues[2])["ready"] == 6
        assert p.flush(queues[2], "queued") == 6 and p.queue(queues[2])["ready"] == 0
        assert p.delete_queue(q1)["keys"] > 0 and q1 not in {x["queue"] for x in p.queues()}


def test_cluster_scripts_are_reloaded_on_each_master(cluster):
    queues = queues_on_masters(cluster, 3)
    with xq.Producer(cluster.url) as p:
        for q in queues:
            p.enqueue("job", 1, queue=q)  # the scripts were flushed on every node: NOSCRIPT, load, again
        for port in cluster.master_ports():
            node = redis.Redis(port=port)
            assert all(node.script_exists(SHA["enqueue"].decode())), port
            node.close()
        assert sum(p.queue(q)["ready"] for q in queues) == 3


def test_cluster_inspector_and_async(cluster):
    queues = queues_on_masters(cluster, 3, prefix="a")

    async def go():
        async with xq.AsyncProducer(cluster.url) as p:
            ids = [await p.enqueue_many("job", [1, 2], queue=q) for q in queues]
            assert [(await p.queue(q))["ready"] for q in queues] == [2, 2, 2]
            assert (await p.status(ids[1][0]))["status"] == "queued"
            assert await p.pause_queue(queues[2]) and await p.paused(queues[2])
            assert await p.cancel(ids[0][1]) == "canceled"
        async with AsyncInspector(cluster.url) as i:
            assert [t["id"] for t in (await i.tasks(queues[1], "queued"))["tasks"]] == ids[1]
        return ids
    ids = asyncio.run(go())
    with Inspector(cluster.url) as i:
        assert [i.queue(q)["ready"] for q in queues] == [2, 2, 2] and i.paused(queues[2])
        assert i.tasks(queues[0], "canceled")["tasks"][0]["id"] == ids[0][1]


def test_cluster_producer_follows_a_failover(cluster):
    q = queues_on_masters(cluster, 1, prefix="f")[0]
    with xq.Producer(cluster.url, retry_for=30) as p:
        first = p.enqueue_many("job", [1, 2, 3], queue=q)
        time.sleep(1.5)  # appendfsync everysec and async replication: let the replica have them
        old = cluster.master_of(QueueKeys(q).base)
        new = cluster.kill_master(old)
        try:
            second = p.enqueue_many("job", [4, 5], queue=q)   # the slot moved: MOVED / refused, map re-read
            assert cluster.master_of(QueueKeys(q).base) == new
            assert p.queue(q)["ready"] == 5
            assert [t["id"] for t in p.tasks(q, "queued")["tasks"]] == first + second
        finally:
            cluster.restart(old)
            cluster.wait_healthy(60)


def test_cluster_reconnect_after_a_failover_reads_the_slot_map_first(cluster):
    """A supervisor reconnects with ping + load_scripts: the first try after the promotion must reach the
    new master, not the dead one of the slot map redis-py read when the previous try failed."""
    q = queues_on_masters(cluster, 1, prefix="m")[0]
    b = Broker(cluster.url, retry_for=0)
    try:
        b.load_scripts()
        old = cluster.master_of(QueueKeys(q).base)
        cluster.server(old).kill()
        with pytest.raises(xq.ConnectionLost):
            b.load_scripts()  # the old master is in the map: refused (and redis-py reads the map, unchanged)
        slot = keyslot(QueueKeys(q).base)

        def promoted_everywhere():  # every live node's slot map names the new master (whichever one redis-py asks)
            views = {r[2][1] for n in cluster.servers if n.running for r in cluster._slots(n.port) or [(0, -1, None)]
                     if r[0] <= slot <= r[1]}
            return len(views) == 1 and old not in views and views.pop()
        new = wait_until(promoted_everywhere, 30, 0.05, what="the replica's promotion, known to every node")
        assert b.ping() and b.load_scripts() is None  # first try, no retry (retry_for=0)
        assert b.at(q).client.connection_pool.connection_kwargs["port"] == new
    finally:
        b.close()
        cluster.restart(old)
        cluster.wait_healthy(60)


def test_cluster_keys_of_a_queue_share_a_slot():
    qk = QueueKeys("orders")
    assert len({keyslot(k) for k in (qk.wake, qk.sched, qk.dead, qk.task("x"), *qk.ready)}) == 1


# ----------------------------------------------------------------------------------------------- Sentinel
def test_sentinel_producer_inspection_and_failover(sentinel):
    with xq.Producer(sentinel.url, retry_for=30) as p:
        first = p.enqueue_many("job", [1, 2, 3], queue="s")
        assert p.queue("s")["ready"] == 3 and p.status(first[0])["status"] == "queued"
        assert p.pause_queue("s") and p.resume_queue("s")
        assert p.cancel(first[2]) == "canceled"
        direct = redis.Redis(port=sentinel.master_port())
        assert direct.exists(QueueKeys("s").task(first[0]))  # on the master the sentinels announce
        direct.close()
        time.sleep(1.5)  # asynchronous replication and appendfsync everysec: let the replicas have them
        old = sentinel.master_port()
        new = sentinel.kill_master()
        try:
            second = p.enqueue_many("job", [4, 5], queue="s")  # master_for finds the new master
            assert sentinel.master_port() == new != old
            assert [t["id"] for t in p.tasks("s", "queued")["tasks"]] == first[:2] + second
            with Inspector(sentinel.url) as i:
                assert i.queue("s")["ready"] == 5  # the canceled id stays listed until a claim drops it
        finally:
            sentinel.restart(old)
            sentinel.wait_healthy(60)


def test_sentinel_async(sentinel):
    async def go():
        async with xq.AsyncProducer(sentinel.url) as p:
            ids = await p.enqueue_many("job", [1, 2], queue="sa")
            assert (await p.queue("sa"))["ready"] == 2 and (await p.status(ids[1]))["status"] == "queued"
    asyncio.run(go())


@pytest.mark.parametrize("where", ["cluster", "sentinel"])
def test_cli_inspection_commands(where, request):
    from click.testing import CliRunner

    from xq.cli import main

    url = request.getfixturevalue(where).url
    runner = CliRunner()

    def xq_(*args):
        out = runner.invoke(main, [*args, "--redis", url])
        assert out.exit_code == 0, out.output
        return out.output
    tid = xq_("enqueue", "job", '{"n": 1}', "--queue", "c1").strip()
    xq_("enqueue", "job", "2", "--queue", "c2")
    assert {q["queue"] for q in orjson.loads(xq_("queues", "--json"))} == {"c1", "c2"}
    assert [t["id"] for t in orjson.loads(xq_("tasks", "c1", "--state", "queued", "--json"))["tasks"]] == [tid]
    assert tid in xq_("status", tid)
    xq_("queue", "pause", "c1")
    assert orjson.loads(xq_("queue", "show", "c1", "--json"))["paused"]
    xq_("queue", "resume", "c1")
    child = xq_("enqueue", "job", "3", "--queue", "c1", "--depends-on", tid).strip()
    xq_("cancel", tid)
    assert "canceled" in xq_("status", tid)
    assert [t["id"] for t in orjson.loads(xq_("dlq", "ls", "c1", "--json"))["tasks"]] == [child]
    assert orjson.loads(xq_("queue", "flush", "c2", "--state", "queued", "--yes", "--json"))


@pytest.mark.parametrize("where", ["cluster", "sentinel"])
def test_results_and_events(where, request):
    """result() and events() subscribe to the queue's channel: on a Cluster, on the node of its slot."""
    url = request.getfixturevalue(where).url
    with xq.Producer(url) as p:
        t = p.enqueue("job", 1, queue="r1")
        stream = p.events(ids=[t], timeout=10, until_done=True)
        p.cancel(t)
        assert [ev["state"] for ev in stream] == ["canceled"]
        with pytest.raises(xq.TaskFailed, match="canceled"):
            p.result(t, timeout=5)

    async def go():
        async with xq.AsyncProducer(url) as ap:
            t = await ap.enqueue("job", 1, queue="r1")
            waiting = asyncio.ensure_future(ap.result(t, timeout=10))
            await asyncio.sleep(0.2)
            await ap.cancel(t)
            with pytest.raises(xq.TaskFailed, match="canceled"):
                await waiting
    asyncio.run(go())
