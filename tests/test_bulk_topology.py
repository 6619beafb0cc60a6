"""Producer.enqueue_batch / AsyncProducer.enqueue_batch (issue 13): tasks of several names into several
queues in one call, on one real redis-server and on a real 3-master Cluster (queues on different masters,
every master's commands written before any reply is read)."""

from __future__ import annotations

import asyncio

import pytest
import redis

import xq
from xq.keys import QueueKeys

from topology import queues_on_masters


def _mixed(queues: list[str], n: int) -> list[tuple]:
    """n tasks dealt round-robin over the queues, two names, one with a priority of its own."""
    out = []
    for i in range(n):
        q = queues[i % len(queues)]
        out.append(("job", {"n": i}, {"queue": q}) if i % 2 else ("other", i, {"queue": q, "priority": "high"}))
    return out


def _check_order(p, tasks: list[tuple], ids: list[str]) -> None:
    """Each queue lists its ids in the order given (per priority level), and each id has its task's name."""
    assert len(ids) == len(tasks) == len(set(ids))
    for (name, _payload, opts), tid in zip(tasks, ids):
        st = p.status(tid, queue=opts["queue"])
        assert (st["name"], st["status"]) == (name, "queued")
    for q in {o["queue"] for _n, _p, o in tasks}:
        listed = [t["id"] for t in p.tasks(q, "queued", limit=1000)["tasks"]]
        mine = [tid for (name, _p, o), tid in zip(tasks, ids) if o["queue"] == q]
        first = [tid for (name, _p, o), tid in zip(tasks, ids) if o["queue"] == q and name == "other"]
        assert listed == first + [t for t in mine if t not in first]  # high before normal, each in order


class _Spy:
    """Records (node port, "send" | "read") of every raw send and read of a cluster Producer's nodes."""

    def __init__(self, p: xq.Producer, queues: list[str]):
        self.log: list[tuple[int, str]] = []
        for q in queues:
            node = p.broker.at(q)
            port = node.client.connection_pool.connection_kwargs["port"]
            send, read = node.send_packed, node.read_reply
            node.send_packed = lambda c, _s=send, _p=port: (self.log.append((_p, "send")), _s(c))[1]
            node.read_reply = lambda _r=read, _p=port: (self.log.append((_p, "read")), _r())[1]


def test_cluster_batch_over_three_masters_in_one_call(cluster):
    queues = queues_on_masters(cluster, 3, prefix="b")
    masters = {q: cluster.master_of(QueueKeys(q).base) for q in queues}
    assert len(set(masters.values())) == 3
    tasks = _mixed(queues, 2500)  # more than one chunk (1000) on each master
    with xq.Producer(cluster.url) as p:
        p.broker.load_scripts()  # on every master: no NOSCRIPT round, so one round trip per master
        spy = _Spy(p, queues)
        ids = p.enqueue_batch(tasks)
        # every master got its commands before any master's reply was read: the masters worked in parallel
        ops = [op for _port, op in spy.log]
        first_read = ops.index("read")
        assert {port for port, op in spy.log[:first_read]} == set(masters.values())
        assert "send" not in ops[first_read:]
        _check_order(p, tasks, ids)
        for q in queues:  # each queue's tasks are on its own master
            node = redis.Redis(port=masters[q])
            try:
                assert sum(node.llen(k) for k in QueueKeys(q).ready) == sum(1 for t in tasks if t[2]["queue"] == q)
            finally:
                node.close()
        assert {x["queue"] for x in p.queues()} >= set(queues)


def test_cluster_batch_with_a_bad_task_enqueues_nothing(cluster):
    queues = queues_on_masters(cluster, 3, prefix="n")
    tasks = _mixed(queues, 30)
    with xq.Producer(cluster.url) as p:
        with pytest.raises(TypeError, match=r"^task #29 \(job\): payload of type object cannot be serialized to JSON"):
            p.enqueue_batch(tasks[:-1] + [("job", object(), {"queue": queues[2]})])
        with pytest.raises(xq.ConfigError, match=r"task #3 \(job\): unknown enqueue option.*colour"):
            p.enqueue_batch(tasks[:3] + [("job", 1, {"queue": queues[0], "colour": "red"})])
        with pytest.raises(xq.ConfigError, match=r"task #1 \(a str\): expected \(name, payload\)"):
            p.enqueue_batch([tasks[0], "job"])
        assert [p.queue(q)["ready"] for q in queues] == [0, 0, 0]


def test_cluster_batch_follows_a_failover(cluster):
    queues = queues_on_masters(cluster, 3, prefix="v")
    with xq.Producer(cluster.url, retry_for=30) as p:
        first = p.enqueue_batch([("job", i, {"queue": q}) for i, q in enumerate(queues)])
        old = cluster.master_of(QueueKeys(queues[0]).base)
        new = cluster.kill_master(old)
        try:
            second = p.enqueue_batch([("job", i, {"queue": q}) for i, q in enumerate(queues * 2)])
            assert cluster.master_of(QueueKeys(queues[0]).base) == new
            for k, q in enumerate(queues):  # the first batch of the killed master's queue may be lost
                listed = [t["id"] for t in p.tasks(q, "queued")["tasks"]]
                assert listed[-2:] == [second[k], second[k + 3]] and set(listed) <= {first[k], *second}
        finally:
            cluster.restart(old)
            cluster.wait_healthy(60)


def test_cluster_batch_async(cluster):
    queues = queues_on_masters(cluster, 3, prefix="c")
    tasks = _mixed(queues, 1200)

    async def go():
        async with xq.AsyncProducer(cluster.url) as p:
            ids = await p.enqueue_batch(tasks)
            with pytest.raises(TypeError, match=r"^task #2 \(job\): payload of type set"):
                await p.enqueue_batch(tasks[:2] + [("job", {1, 2}, {"queue": queues[0]})])
            return ids
    ids = asyncio.run(go())
    with xq.Producer(cluster.url) as p:
        _check_order(p, tasks, ids)


def test_batch_on_one_redis(redis_url):
    app = xq.App(routes={"img.*": {"queue": "images", "priority": "low"}})
    with xq.Producer(redis_url, app=app) as p:
        parent = p.enqueue("job", 0, queue="a")
        ids = p.enqueue_batch([
            ("img.thumb", 1),                                            # routed: images, low
            ("job", 2, {"queue": "a", "task_id": "mine-1"}),
            ("job", 3, {"queue": "a"}),                                  # same name and options: one run
            ("job", 4, {"queue": "a", "depends_on": [parent]}),
            ("job", 5, {"queue": "b", "unique_key": "u"}),
            ("job", 6),                                                  # default queue
        ])
        assert ids[1] == "mine-1" and len(set(ids)) == 6
        assert [p.status(i)["queue"] for i in ids] == ["images", "a", "a", "a", "b", "default"]
        assert p.status(ids[0])["priority"] == 8 and p.status(ids[3])["status"] == "waiting"
        assert [t["id"] for t in p.tasks("a", "queued")["tasks"]] == [parent, "mine-1", ids[2]]
        # the unique key is held: the holder's id, nothing enqueued; the same ids again: nothing twice
        again = p.enqueue_batch([("job", 7, {"queue": "b", "unique_key": "u"}), ("job", 2, {"queue": "a", "task_id": "mine-1"})])
        assert again == [ids[4], "mine-1"] and p.queue("a")["ready"] == 3 and p.queue("b")["ready"] == 1
        with pytest.raises(xq.ConfigError, match="task_id 'x' is given twice"):
            p.enqueue_batch([("job", 1, {"task_id": "x"}), ("other", 1, {"task_id": "x"})])
        with pytest.raises(xq.ConfigError, match="ids= is enqueue_many's option"):
            p.enqueue_batch([("job", 1, {"ids": ["y"]})])
        with pytest.raises(xq.ConfigError, match=r"task #1 \(job\): invalid priority 12"):
            p.enqueue_batch([("job", 1), ("job", 1, {"priority": 12})])
        with pytest.raises(xq.PayloadTooLarge, match=r"^task #2 \(job\): payload is 3\d\d\d bytes"):
            with xq.Producer(redis_url, max_payload=1000) as small:
                small.enqueue_batch([("job", 1), ("x", 2), ("job", "a" * 3000)])
        assert p.enqueue_batch([]) == []
        assert p.queue("default")["ready"] == 1


def test_batch_async_on_one_redis(redis_url):
    async def go():
        async with xq.AsyncProducer(redis_url) as p:
            ids = await p.enqueue_batch([("job", i, {"queue": "q%d" % (i % 2)}) for i in range(2500)])
            assert [(await p.queue(q))["ready"] for q in ("q0", "q1")] == [1250, 1250]
            assert (await p.status(ids[7]))["queue"] == "q1"
            return ids
    ids = asyncio.run(go())
    with xq.Producer(redis_url) as p:
        assert [t["id"] for t in p.tasks("q0", "queued", limit=2000)["tasks"]] == ids[0::2]


def test_batch_outage_names_the_whole_batch(fresh_redis):
    with xq.Producer(fresh_redis.url, retry_for=0.3) as p:
        p.enqueue_batch([("job", 1, {"queue": "a"})])
        fresh_redis.stop()
        with pytest.raises(xq.ConnectionLost, match="of 5 task.s. of the batch") as e:
            p.enqueue_batch([("job", i, {"queue": "ab"[i % 2]}) for i in range(5)])
        assert e.value.stored == [] and len(e.value.unknown) <= 5
