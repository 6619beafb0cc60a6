"""`xq.AsyncProducer`: enqueue tasks and await their results from asyncio code (web applications).

The same calls, options, checks and wire format as the sync `xq.Producer`: both call
producer.prepare_enqueue (every option checked, every chunk packed, nothing sent) and
producer.finish_enqueue (replies read back), share the record and event interpretation
(Producer._status_of, _outcome, _group_values, EventFilter), and every other call (groups, status,
cancel, dead letters, replay, purge, flush, the inspection) is one producer.ProducerCore operation, run
here by `drive` (an await per I/O step).  What differs is only the I/O, which _AsyncBroker does on
`redis.asyncio`: it is the asyncio twin of broker.Broker (the one other place xq sends Redis commands
from), reusing its script hashes, its packing, its script arguments and its plans of pipelines.

Unlike Producer, an AsyncProducer may be shared by any number of concurrent tasks of one event loop:
each enqueue borrows a pooled connection for its pipelined chunks, every waiting result() shares the
producer's one Pub/Sub connection (_Waiters), and each event stream subscribes on a connection of its own.
Failures, retries and resends follow the same rules as Producer's (xq.conn, producer.Resend).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import functools
import time
from typing import Any, Iterable, Sequence

import redis
from redis.exceptions import NoScriptError

from . import broker, scripts
from .app import DEFAULT_QUEUE, App
from .broker import Broker, counts_of, queue_counts
from .conn import (CLUSTER_MOVES, Backoff, MasterWatch, RetryWindow, failure, make_async_client, node_client, parse_url,
                   translate)
from .errors import ConfigError, ConnectionLost, RedisFull, ResultTimeout, UnknownTask
from .keys import QUEUES, check_queue, queue_keys, worker_key
from .inspect import AsyncInspector
from .records import esc
from .producer import (DEFAULT_MAX_PAYLOAD, OUTCOME_FIELDS, TERMINAL, EventFilter, Group, Producer, ProducerCore,
                       Resend, batch_pause, chunk_reply, event_request, finish_batch, finish_enqueue, missing_task,
                       prepare_batch, prepare_enqueue, retention_view)

SUBSCRIBE_TIMEOUT = 10.0


def aio_io(method=None, *, retry: bool = True):
    """broker.io for coroutines: failures leave as ConnectionLost / RedisRefused (conn.translate); with
    retry_for > 0 a method marked retry is retried through ConnectionLost for that long."""
    if method is None:
        return functools.partial(aio_io, retry=retry)

    @functools.wraps(method)
    async def guarded(self, *args, **kw):
        window = None  # made at the first failure: the hot path pays nothing for it but the clock
        start = time.monotonic()
        while True:
            try:
                return await method(self, *args, **kw)
            except Exception as e:  # noqa: BLE001 - sorted by conn.failure: only Redis failures go on
                window = window or RetryWindow(self.retry_for if retry else 0.0, start)
                await asyncio.sleep(window.pause(failure(e, self.url)))
    return guarded


async def drive(op, me=None):
    """As producer.drive, awaiting each Call: run an operation (a generator yielding Calls) on asyncio."""
    value, step = None, op.send
    while True:
        try:
            c = step(value)
        except StopIteration as done:
            return done.value
        try:
            value = await getattr(me if c.target is None else c.target, c.method)(*c.args, **c.kw)
            step = op.send
        except Exception as e:  # noqa: BLE001 - the operation's to handle (ConnectionLost) or raise
            value, step = e, op.throw


class _AsyncBroker:
    """Redis access of an AsyncProducer, on redis.asyncio (see broker.Broker for the sync one)."""

    # Pure methods of the sync Broker, which only read the script hashes (self._sha).
    pack_enqueue = Broker.pack_enqueue
    sha = Broker.sha
    pack_dead_read = Broker.pack_dead_read
    pack_import = Broker.pack_import
    pack_replay_head = Broker.pack_replay_head
    pack_remove_dead = Broker.pack_remove_dead
    pack_flush = Broker.pack_flush
    pack_purge = Broker.pack_purge

    def __init__(self, url: str, *, socket_timeout: float | None = 30.0, retry_for: float = 0.0, client=None):
        self.url = url
        self.retry_for = retry_for
        self.socket_timeout = socket_timeout
        self.cluster = client is None and parse_url(url).kind == "cluster"
        self.client = client if client is not None else make_async_client(url, socket_timeout=socket_timeout)
        self._sha = scripts.SHA
        self._nodes: dict[str, _AsyncBroker] = {}  # cluster: as Broker.at
        self._stale = False
        self._watch = MasterWatch(url) if client is None else None  # Sentinel: a failover not yet noticed

    async def close(self) -> None:
        for b in self._nodes.values():
            await b.close()
        self._nodes.clear()
        await self.client.aclose()

    async def at(self, queue: str) -> "_AsyncBroker":
        """As Broker.at: the broker whose raw path (send_and_read) reaches queue's slot."""
        if not self.cluster:
            if self._watch is not None and self._watch.due():
                await self._check_master()
            return self
        try:
            await self.client.initialize()  # a no-op once the slot map is read
            if self._stale:
                self._stale = False
                await self.client.nodes_manager.initialize()
        except Exception as e:  # noqa: BLE001 - sorted by conn.failure: a Redis failure is raised as ours
            self._stale = True
            raise failure(e, self.url) from e
        node = self.client.get_node_from_key(queue_keys(queue).base)
        b = self._nodes.get(node.name)
        if b is None:
            b = self._nodes[node.name] = _AsyncBroker(self.url, retry_for=self.retry_for, client=node_client(
                self.url, node.host, node.port, asyncio=True, socket_timeout=self.socket_timeout))
        return b

    @aio_io(retry=False)
    async def _check_master(self) -> None:
        await self._watch.acheck(self.client)

    @aio_io
    async def load_scripts(self) -> None:
        for name, src in scripts.ALL.items():
            await self.client.script_load(src)

    @aio_io
    async def run(self, name: str, keys: Sequence, argv: Sequence):
        """Run one script, raising its error reply; NOSCRIPT loads the scripts and runs it again, once."""
        try:
            return await self.client.evalsha(self._sha[name], len(keys), *keys, *argv)
        except NoScriptError:
            await self.load_scripts()
            return await self.client.evalsha(self._sha[name], len(keys), *keys, *argv)

    async def send(self, preps, chunk: int, replicas: int = 0, replicas_timeout: float = 1.0) -> list[Resend]:
        """Every prep's commands sent and their replies read (rs.replies: one value per chunk), each resent
        through an outage as its producer.Resend says (the same rule as Producer's).  Each node's commands
        go in one round trip (with replicas, WAITs behind them), the nodes' concurrently (on a Cluster:
        the masters of the queues' slots)."""
        rss = [Resend(p, chunk, self.retry_for, replicas, replicas_timeout) for p in preps]
        while True:
            todo = [rs for rs in rss if rs.todo]
            if not todo:
                return rss
            lost: dict[int, ConnectionLost] = {}  # id(Resend) -> the outage it met this round
            nodes: dict[int, tuple[_AsyncBroker, list[Resend]]] = {}
            for rs in todo:
                try:
                    node = await self.at(rs.prep.queue)
                except ConnectionLost as e:
                    lost[id(rs)] = e
                    continue
                nodes.setdefault(id(node), (node, []))[1].append(rs)
            for key, (node, g) in list(nodes.items()):  # after an outage: what the cut round stored goes no more
                probes = [(rs, rs.probes()) for rs in g]
                cmds = [c for _, ps in probes for _, c in ps]
                if not cmds:
                    continue
                load = Broker.pack_load_scripts()  # a Redis that never answered a round may lack the scripts
                try:
                    got = iter((await node.send_and_read(load + cmds))[len(load):])
                except ConnectionLost as e:
                    lost.update((id(rs), e) for rs in g)
                    del nodes[key]
                    continue
                for rs, ps in probes:
                    if ps:
                        rs.probed([i for i, _ in ps], [next(got) for _ in ps])
            groups = [(node, g) for node, g in nodes.values() if any(rs.todo or rs.tail() for rs in g)]
            outs = await asyncio.gather(*(node.send_and_read(
                [rs.prep.commands[i] for rs in g for i in rs.todo] + [c for rs in g for c in rs.tail()], g,
                sum(len(rs.tail()) for rs in g), [rs.prep.replies[i] for rs in g for i in rs.todo])
                for node, g in groups), return_exceptions=True)
            for (_node, g), out in zip(groups, outs):
                if isinstance(out, ConnectionLost):
                    lost.update((id(rs), out) for rs in g)
                    continue
                if isinstance(out, BaseException):
                    raise out
                replies = iter(out)  # every chunk's, in order, then every tail's
                for rs in g:
                    for i in rs.todo:
                        rs.replies[i] = next(replies)
                for rs in g:
                    rs.waited([next(replies) for _ in rs.tail()])
                    rs.settle()
                busy = next((rs.busy for rs in g if rs.busy is not None), None)
                if busy is not None:  # refused for now (READONLY, NOREPLICAS, ...): paused for as an outage
                    err = translate(busy, _node.url)
                    lost.update((id(rs), err) for rs in g)
            if lost:
                self._stale = self.cluster
                await asyncio.sleep(batch_pause(rss, lost))

    @aio_io(retry=False)
    async def send_and_read(self, commands: Sequence[bytes], rss: Sequence[Resend] = (), tail: int = 0,
                            counts: Sequence[int] = ()) -> list:
        """Send every packed command, then read every reply (errors as values), on one pooled connection:
        one round trip for the lot (rss: the Resends whose todo chunks these are, marked sent).  A command
        answered NOSCRIPT is sent again, once, after loading the scripts, and then the last `tail` commands
        (Resend.tail: the WAITs) too, so they come after it.  counts: how many replies each of the first
        commands gets (an enqueue chunk with staged payloads: producer.chunk_reply makes them one); the
        others get one.  A connection left with unread replies (error, cancellation) is dropped, not
        reused."""
        pool = self.client.connection_pool
        try:
            conn = await pool.get_connection()
        except TypeError:  # redis-py < 5.3 wants a command name
            conn = await pool.get_connection("EVALSHA")
        clean = False
        try:
            for rs in rss:  # before the write: one that fails half-way may have delivered its first chunks,
                rs.sent.update(rs.todo)  # which are then "unknown", never "not sent"
            await conn.send_packed_command(list(commands), check_health=False)
            counts = list(counts) + [1] * (len(commands) - len(counts))

            async def read(i):
                if counts[i] == 1:
                    return await self._read(conn)
                return chunk_reply([await self._read(conn) for _ in range(counts[i])])

            out = [await read(i) for i in range(len(commands))]
            again = False
            for i, x in enumerate(out):
                if isinstance(x, NoScriptError):
                    await self.load_scripts()
                    await conn.send_packed_command([commands[i]], check_health=False)
                    out[i] = await read(i)
                    again = True
            if again and tail:
                n = len(commands) - tail
                await conn.send_packed_command(list(commands[n:]), check_health=False)
                out[n:] = [await self._read(conn) for _ in commands[n:]]
            clean = True
            return out
        finally:
            if not clean:
                await conn.disconnect(nowait=True)
            await pool.release(conn)

    @staticmethod
    async def _read(conn):
        try:
            return await conn.read_response()
        except CLUSTER_MOVES:
            raise  # a Cluster's slot moved or is not served yet: the connection is dropped, at() re-reads the map
        except redis.ResponseError as e:
            return e

    async def exchange(self, commands: Sequence[bytes]) -> list:
        """As Broker.exchange: send packed commands at once and read their replies in order (one round trip
        on one pooled connection); an error reply is raised, after every reply was read."""
        if not commands:
            return []
        out = await self.send_and_read(commands)
        for x in out:
            if isinstance(x, Exception):
                raise translate(x, self.url)
        return out

    @aio_io(retry=False)
    async def ping(self) -> None:
        """Whether Redis answers now (for a readiness probe): ConnectionLost / RedisRefused if not."""
        await self.client.ping()

    @aio_io
    async def register_queue(self, queue: str) -> None:
        await self.client.sadd(QUEUES, queue)

    @aio_io
    async def queues(self) -> list[str]:
        return sorted(x.decode() for x in await self.client.smembers(QUEUES))

    @aio_io
    async def find_queue(self, task_id: str, queues: Iterable[str]) -> str | None:
        queues = list(queues)
        if not queues:
            return None
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.exists(queue_keys(q).task(task_id))
        for q, hit in zip(queues, await pipe.execute()):
            if hit:
                return q
        return None

    @aio_io
    async def retention(self, qks) -> list[tuple[dict, dict]]:
        return await self.pipelined(broker.plan_retention(qks))

    @aio_io
    async def set_retention(self, qk, values: dict, unset) -> None:
        return await self.pipelined(broker.plan_set_retention(qk, values, unset))

    @aio_io
    async def finished_counts(self, qk) -> list[int]:
        return await self.pipelined(broker.plan_finished_counts(qk))

    @aio_io
    async def task_record(self, qk, task_id: str | bytes) -> dict:
        key = qk.task_prefix.encode() + task_id if isinstance(task_id, bytes) else qk.task(task_id)
        return await self.client.hgetall(key)

    @aio_io
    async def task_brief(self, qk, task_id: str | bytes, cap: int,
                         capped: Sequence[str] = broker.PEEK_SKIP) -> tuple[dict, dict]:
        return broker.record_brief(await self.run("record", *broker.record_args(qk, task_id, cap, capped)))

    @aio_io
    async def records(self, qk, ids: Sequence, *fields: str) -> list[list]:
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(qk.task(i), *fields)
        return await pipe.execute()

    @aio_io
    async def groups_fired(self, qk, group_ids: Sequence[str]) -> list:
        pipe = self.client.pipeline(transaction=False)
        for g in group_ids:
            pipe.hget(qk.group(g), "fired")
        return await pipe.execute()

    async def group(self, qk, mode: str, group_id: str, **kw) -> None:
        """As Broker.group."""
        await self.run("group", *broker.group_args(qk, mode, group_id, **kw))

    @aio_io
    async def group_state(self, qk, group_id: str) -> tuple[dict, list[bytes]]:
        """As Broker.group_state."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(qk.group(group_id))
        pipe.lrange(qk.group_members(group_id), 0, -1)
        h, ids = await pipe.execute()
        return h, ids

    @aio_io
    async def dead_count(self, qk) -> int:
        return await self.client.zcard(qk.dead)

    async def replay(self, qk, ids: Sequence, priority: int | None, mode: str = "requeue") -> list[str]:
        """As Broker.replay."""
        return [esc(i) for i in await self.run("replay", *broker.replay_args(qk, ids, priority, mode))]

    async def purge_dead(self, qk, batch: int = 1000) -> int:
        """As Broker.purge_dead."""
        total = 0
        while True:
            n = await self.run("purge", [qk.dead], [qk.task_prefix, batch])
            total += n
            if n < batch:
                return total

    @aio_io
    async def counts(self, qk) -> dict[str, int]:
        """As Broker.counts."""
        return counts_of(await queue_counts(self.client.pipeline(transaction=False), qk).execute())

    @aio_io(retry=False)
    async def unlink_scan(self, qk, cursor: int, count: int, unlink: Sequence[bytes]) -> tuple[int, tuple]:
        """As Broker.unlink_scan."""
        pipe = self.client.pipeline(transaction=False)
        if unlink:
            pipe.unlink(*unlink)
        pipe.scan(cursor, match=qk.pattern, count=count)
        r = await pipe.execute()
        return (r[0] if unlink else 0), r[-1]

    @aio_io
    async def dbsize(self) -> int:
        return await self.client.dbsize()

    @aio_io(retry=False)
    async def unlink(self, keys: Sequence) -> int:
        return await self.client.unlink(*keys) if keys else 0

    @aio_io
    async def forget_queue(self, queue: str) -> None:
        await self.client.srem(QUEUES, queue)

    async def cancel(self, qk, task_id: str, ttl: int) -> tuple[str, str]:
        out, before = await self.run("cancel", *Broker.cancel_args(qk, task_id, ttl))
        return out.decode(), before.decode()

    # --- inspection (xq.inspect.AsyncInspector): Broker's methods of the same names, on the same plans ---
    async def pipelined(self, plan):
        """As Broker.pipelined: run a plan of pipelines (broker.Batch) and return its value."""
        replies = None
        try:
            while True:
                batch = plan.send(replies)
                replies = ([await batch.call(self.client)] if batch.single else
                           await batch.pipeline(self.client).execute() if batch.calls else [])
        except StopIteration as done:
            return done.value

    @aio_io
    async def workers(self) -> list[tuple[str, float, bytes | None]]:
        return await self.pipelined(broker.plan_workers())

    @aio_io
    async def worker_record(self, worker_id: str) -> bytes | None:
        return await self.client.get(worker_key(worker_id))

    @aio_io
    async def set_paused(self, qk, paused: bool) -> bool:
        return await self.pipelined(broker.plan_set_paused(qk, paused, int(time.time() * 1000)))

    @aio_io
    async def paused_since(self, qks) -> list[float | None]:
        return await self.pipelined(broker.plan_paused_since(qks))

    async def queue_stats(self, qk, cap: int, by_name: bool) -> list:
        return await self.run("qstats", *broker.queue_stats_args(qk, cap, by_name))

    @aio_io
    async def ready_ids(self, qk, offset: int, limit: int) -> list[bytes]:
        return await self.pipelined(broker.plan_ready_ids(qk, offset, limit))

    @aio_io
    async def waiting_ids(self, qk, cap: int) -> tuple[list[bytes], bool]:
        return await self.pipelined(broker.plan_waiting_ids(qk, cap))

    @aio_io
    async def raw_records(self, qk, ids: Sequence[bytes], fields: Sequence[str]) -> list[dict]:
        return await self.pipelined(broker.plan_raw_records(qk, ids, fields))

    @aio_io
    async def stats_ranges(self, reads) -> list[bytes]:
        return await self.pipelined(broker.plan_stats_ranges(reads))

    @aio_io
    async def stats_names(self, qk, since_hour: int) -> list[bytes]:
        return await self.client.zrangebyscore(qk.stats_names, since_hour, "+inf")

    async def peek(self, zset: str, qk, offset: int, limit: int) -> list[tuple[bytes, float, dict | None, dict]]:
        return broker.peek_rows(await self.run("peek", *broker.peek_args(zset, qk, offset, limit)))

    @aio_io(retry=False)
    async def next_message(self, ps, timeout: float):
        """The next message of ps, or None after timeout seconds."""
        return await ps.get_message(timeout=timeout)

    @aio_io
    async def subscribe_events(self, channels: Sequence[str], timeout: float = SUBSCRIBE_TIMEOUT):
        """(a new PubSub subscribed to channels, messages that arrived meanwhile), once Redis has confirmed
        every subscription (see Broker.subscribe_events).  The caller closes it (aclose)."""
        ps = self.client.pubsub()
        try:
            await ps.subscribe(*channels)
            want, early = {c.encode() for c in channels}, []
            deadline = time.monotonic() + timeout
            while want and time.monotonic() < deadline:
                msg = await ps.get_message(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                if msg is None:
                    continue
                if msg["type"] == "subscribe":
                    want.discard(msg["channel"])
                elif msg["type"] == "message":
                    early.append(msg)
            if want:
                raise ResultTimeout(f"Redis did not confirm the subscription to {b', '.join(want).decode()} "
                                    f"within {timeout} s")
        except BaseException:
            await ps.aclose()
            raise
        return ps, early


async def _aclose_quietly(ps) -> None:
    if ps is not None:
        try:
            await ps.aclose()
        except Exception:  # noqa: BLE001 - its connection is broken already
            pass


class _Waiters:
    """The one Pub/Sub connection an AsyncProducer's waiting result() calls share, and its reader.

    A waiter registers a future under its task id and asks for its queue's channel (watch() returns once
    Redis confirmed the subscription).  The reader resolves a task's futures with its terminal event.
    After an outage it subscribes anew to every channel (retrying for the broker's retry_for) and
    resolves every future with None: events of the gap are lost, so each waiter reads its record again."""

    def __init__(self, broker: "_AsyncBroker"):
        self.broker = broker
        self.ps = None
        self.channels: dict[bytes, asyncio.Event] = {}    # channel -> set once Redis confirmed it
        self.futures: dict[str, list[asyncio.Future]] = {}
        self.reader: asyncio.Task | None = None
        self.error: BaseException | None = None           # why the reader gave up (raised to waiters)

    def add(self, task_id: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.futures.setdefault(task_id, []).append(fut)
        return fut

    def discard(self, task_id: str, fut: asyncio.Future) -> None:
        futs = self.futures.get(task_id)
        if futs and fut in futs:
            futs.remove(fut)
            if not futs:
                del self.futures[task_id]

    async def watch(self, channel: str) -> None:
        if self.error is not None:
            if self.futures and self.reader is not None and self.reader.done():
                raise self.error  # to the waiters of the outage that made the reader give up
            self.error = None
            await self._reset()
            await self._subscribe(list(self.channels))
        if self.ps is None:
            self.ps = self.broker.client.pubsub()
        ch = channel.encode()
        confirmed = self.channels.get(ch)
        if confirmed is None:
            confirmed = self.channels[ch] = asyncio.Event()
            await self._subscribe([ch])
        if self.reader is None or self.reader.done():
            self.reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_TIMEOUT)
        except asyncio.TimeoutError:
            raise ResultTimeout(f"Redis did not confirm the subscription to {channel} within "
                                f"{SUBSCRIBE_TIMEOUT} s") from None
        if self.error is not None:
            raise self.error

    @aio_io(retry=False)
    async def _subscribe(self, channels) -> None:
        await self.ps.subscribe(*channels)  # only sends: the reader sees the confirmations

    @property
    def url(self) -> str:
        return self.broker.url

    @property
    def retry_for(self) -> float:
        return self.broker.retry_for

    async def _read(self) -> None:
        backoff, down_since, resubscribe = Backoff(0.05, 2.0), None, False
        while True:
            try:
                if resubscribe:
                    # until a SUBSCRIBE gets through: redis-py records channels only then, and _next()
                    # would otherwise idle on a connection subscribed to nothing, forever
                    if self.channels:
                        await self._subscribe(list(self.channels))
                    resubscribe = False
                msg = await self._next()
                backoff.reset()
                down_since = None
            except ConnectionLost as e:
                # wake every waiter (its events may be lost) and subscribe anew, for a bounded time
                self._resolve_all(None)
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > self.retry_for:
                    self.error = e
                    self._resolve_all(None)
                    return
                await self._reset()
                await asyncio.sleep(backoff.next())
                resubscribe = True
                continue
            if msg is None:
                continue
            if msg["type"] == "subscribe":
                ev = self.channels.get(msg["channel"])
                if ev is not None:
                    ev.set()
            elif msg["type"] == "message" and self.futures:
                data = msg["data"]
                for tid in [t for t in self.futures if t.encode() in data]:
                    for ev in EventFilter([tid], [], set(TERMINAL), False).feed(data):
                        for fut in self.futures.get(tid, ()):
                            if not fut.done():
                                fut.set_result(ev)

    @aio_io(retry=False)
    async def _next(self):
        if not self.ps.subscribed:
            await asyncio.sleep(0.05)  # nothing subscribed yet (the first watch() is on its way)
            return None
        return await self.ps.get_message(timeout=1.0)

    async def _reset(self) -> None:
        old, self.ps = self.ps, self.broker.client.pubsub()
        for ev in self.channels.values():
            ev.clear()
        await _aclose_quietly(old)

    def _resolve_all(self, value) -> None:
        for futs in self.futures.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(value)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            try:
                await self.reader
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self.ps is not None:
            await self.ps.aclose()


class AsyncProducer(ProducerCore):
    """The asyncio twin of xq.Producer: `async with xq.AsyncProducer(url) as p: tid = await p.enqueue(...)`.

    Every public call of Producer, with the same parameters (tests/test_api_parity.py), as a coroutine
    (events: an async iterator); safe to share between the concurrent tasks of one event loop."""

    def __init__(self, url: str | None = None, *, app: App | None = None,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, chunk: int = 1000, result_ttl: int = 86400,
                 retry_for: float | None = None, socket_timeout: float = 30.0, replicas: int = 0,
                 replicas_timeout: float = 1.0):
        super().__init__(url, app, max_payload, chunk, result_ttl, retry_for, replicas, replicas_timeout,
                         socket_timeout)
        self.broker = _AsyncBroker(self.url, retry_for=self.retry_for, socket_timeout=socket_timeout)
        self._waiters: _Waiters | None = None

    async def close(self) -> None:
        if self._waiters is not None:
            await self._waiters.close()
            self._waiters = None
        await self.broker.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # --- enqueue ---
    async def enqueue(self, name: str, payload: Any = None, *, queue: str | None = None,
                      priority: int | str | None = None, max_retries: int | None = None, delay: float | None = None,
                      eta: dt.datetime | float | None = None, expires: float | dt.datetime | None = None,
                      timeout: float | None = None, unique_key: str | None = None, unique_ttl: float | None = None,
                      task_id: str | None = None, result_ttl: int | None = None, **opts) -> str:
        """Enqueue one task; returns its id (with unique_key: the holder's id if the key is held).
        As Producer.enqueue."""
        return (await self.enqueue_many(name, [payload], queue=queue, priority=priority, max_retries=max_retries,
                                        delay=delay, eta=eta, expires=expires, timeout=timeout,
                                        unique_key=unique_key, unique_ttl=unique_ttl,
                                        ids=None if task_id is None else [task_id], result_ttl=result_ttl,
                                        **opts))[0]

    async def enqueue_many(self, name: str, payloads: Iterable[Any], *, queue: str | None = None,
                           priority: int | str | None = None, max_retries: int | None = None,
                           delay: float | None = None, eta: dt.datetime | float | None = None,
                           expires: float | dt.datetime | None = None, timeout: float | None = None,
                           depends_on: Sequence[str] | str | None = None, on_dependency_failure: str = "fail",
                           concurrency_key: str | None = None, max_concurrency: int | None = None,
                           rate_key: str | None = None, rate_limit: str | None = None,
                           ids: Sequence[str] | None = None, _group: str | None = None,
                           result_ttl: int | None = None, **opts) -> list[str]:
        """Enqueue one task per payload, every chunk pipelined in one round trip; returns their ids in
        order.  Options as Producer.enqueue_many, checked by the same code (prepare_enqueue) before
        anything is sent."""
        prep = prepare_enqueue(self.app, self.broker, self.chunk, self.max_payload, name, payloads, queue=queue,
                               priority=priority, max_retries=max_retries, delay=delay, eta=eta, expires=expires,
                               timeout=timeout, depends_on=depends_on, on_dependency_failure=on_dependency_failure,
                               concurrency_key=concurrency_key, max_concurrency=max_concurrency,
                               rate_key=rate_key, rate_limit=rate_limit, ids=ids, _group=_group,
                               result_ttl=result_ttl, **opts)
        prep.check_deps([await self._find(dep, None) for dep in prep.deps])
        rs = (await self.broker.send([prep], self.chunk, self.replicas, self.replicas_timeout))[0]
        out, enqueued = finish_enqueue(prep, rs.replies, self.app)
        await self._remember(prep.queue, out)
        if enqueued:
            rs.check_replicated(out)
        return out

    async def enqueue_batch(self, tasks: Iterable[Sequence]) -> list[str]:
        """Enqueue tasks of any names into any queues in one go; returns their ids in the order given.
        As Producer.enqueue_batch: every task checked first, then each node's chunks in one round trip,
        the nodes' (on a Cluster: the masters of the queues' slots) concurrently."""
        batch = prepare_batch(self.app, self.broker, self.chunk, self.max_payload, tasks)
        for prep in batch.preps:
            prep.check_deps([await self._find(dep, None) for dep in prep.deps])
        rss = await self.broker.send(batch.preps, self.chunk, self.replicas, self.replicas_timeout)
        out, enqueued = finish_batch(batch, rss, self.app)
        for prep, pos in zip(batch.preps, batch.where):
            await self._remember(prep.queue, [out[p] for p in pos])
        for rs, pos, ok in zip(rss, batch.where, enqueued):
            if ok:
                rs.check_replicated([out[p] for p in pos])
        return out

    async def _remember(self, queue: str, ids) -> None:
        if queue not in self._known_queues:
            try:
                await self.broker.register_queue(queue)
            except RedisFull:  # the tasks are stored; a later enqueue registers the queue
                return self._cache(queue, ids)
            self._known_queues.add(queue)
        self._cache(queue, ids)

    # --- inspection ---
    async def _find(self, task_id: str, queue: str | None) -> str:
        if queue is not None:
            return check_queue(queue)
        q = self._queue_of.get(task_id)
        if q is None:
            queues = await self.broker.queues()
            q = await self.broker.find_queue(task_id, queues)
            if q is None:
                raise await self._missing(task_id, queues)
            self._cache(q, [task_id])  # bounded: a long-lived server (xq web) looks up many ids
        return q

    async def _missing(self, task_id: str, queues) -> UnknownTask:
        """As Producer._missing."""
        marks = await self.broker.retention([queue_keys(q) for q in queues])
        views = {q: retention_view(*pm) for q, pm in zip(queues, marks)}
        return missing_task(task_id, views, f"in queue {queues[0]!r}" if len(queues) == 1 else "in any queue")

    # --- the operations of ProducerCore, as coroutines ---
    @staticmethod
    def _operation(fn):
        """A ProducerCore operation as a coroutine method (see ProducerCore)."""
        @functools.wraps(fn)
        async def method(self, *args, **kw):
            return await self._drive(fn(self, *args, **kw))
        return method

    async def _drive(self, op):
        return await drive(op, self)

    _sleep = staticmethod(asyncio.sleep)

    def _inspector(self) -> AsyncInspector:
        """An AsyncInspector sharing this producer's broker."""
        return AsyncInspector(self.url, broker=self.broker)

    # --- results ---
    async def _outcome(self, task_id: str, q: str):
        rec = (await self.broker.records(queue_keys(q), [task_id], *OUTCOME_FIELDS))[0]
        if rec[0] is None:
            raise await self._missing(task_id, [q])
        return Producer._outcome(task_id, q, rec)

    async def result(self, task_id: "str | Group", timeout: float | None = None, *, queue: str | None = None) -> Any:
        """Wait for the task (or every member of a Group) to finish and return its result (a Group: the
        members' results in order), without polling; raises TaskFailed, or ResultTimeout after timeout
        seconds.  Every waiting result() of this producer shares one Pub/Sub connection (see _Waiters),
        subscribed before the state is read again, so a completion in between cannot be missed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if isinstance(task_id, Group):
            return await self._group_result(task_id, timeout, deadline)
        q = await self._find(task_id, queue)
        done, value = await self._outcome(task_id, q)  # finished already: no subscription needed
        if done:
            return value
        if self._waiters is None:
            self._waiters = _Waiters(self.broker)
        channel = queue_keys(q).events
        fut = self._waiters.add(task_id)
        try:
            while True:
                await self._waiters.watch(channel)
                done, value = await self._outcome(task_id, q)
                if done:
                    return value
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ResultTimeout(f"task {task_id} did not finish within {timeout} s")
                try:
                    ev = await asyncio.wait_for(asyncio.shield(fut), left)
                except asyncio.TimeoutError:
                    raise ResultTimeout(f"task {task_id} did not finish within {timeout} s") from None
                if ev is not None and "result" in ev:  # a small JSON result travels in the event
                    return ev["result"]
                fut = self._waiters.add(task_id)  # None: an outage (events lost) or the end: read again
        finally:
            self._waiters.discard(task_id, fut)

    async def _group_result(self, group: Group, timeout: float | None, deadline: float | None) -> list:
        qk = queue_keys(group.queue)
        if (await self.broker.groups_fired(qk, [group.id]))[0] is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            async with self.events([group], until_done=True, timeout=left) as stream:
                async for _ev in stream:  # ends at the group's group_done, or at the timeout
                    pass
            if (await self.broker.groups_fired(qk, [group.id]))[0] is None:
                raise ResultTimeout(f"group {group.id} did not finish within {timeout} s")
        records = await self.broker.records(qk, group.ids, *OUTCOME_FIELDS)
        gone = next((tid for tid, rec in zip(group.ids, records) if rec[0] is None), None)
        if gone is not None:  # a member's record was trimmed: as Producer._group_result
            raise await self._missing(gone, [group.queue])
        return Producer._group_values(group.ids, records)

    # --- event streams ---
    def events(self, ids=None, queues: Sequence[str] | str | None = None, states: Sequence[str] | str | None = None,
               timeout: float | None = None, *, until_done: bool = False) -> "AsyncEventStream":
        """As Producer.events, for `async for`: `async with p.events(ids=[tid], until_done=True) as stream:
        async for ev in stream: ...`.  The subscription is made (and confirmed) on entering the `async
        with`, or else at the first iteration; leaving the `async with` closes its connection, as does
        the end of the stream (timeout, until_done)."""
        return AsyncEventStream(self, ids, queues, states, timeout, until_done)


class AsyncEventStream:
    """What AsyncProducer.events returns: an async iterator of event dicts and an async context manager."""

    def __init__(self, producer: AsyncProducer, ids, queues, states, timeout, until_done):
        self._p = producer
        self._tasks, self._groups, states = event_request(ids, states)
        if until_done and not (self._tasks or self._groups):
            raise ConfigError("until_done needs ids= (it stops once every one of them has ended)")
        self._queues = None if queues is None else list(dict.fromkeys(
            check_queue(q) for q in ([queues] if isinstance(queues, str) else queues)))
        self._until_done = until_done
        self._filter = EventFilter(self._tasks, list(self._groups), states, until_done)
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._ps = None
        self._closed = False
        self._pending: collections.deque = collections.deque()
        self._channels: list[str] = []
        self._where: dict = {}

    async def open(self) -> "AsyncEventStream":
        """Subscribe (confirmed) and read the followed ids' states; called by `async with` or the first
        iteration."""
        if self._ps is not None or self._closed:
            return self
        p = self._p
        if self._queues is None:
            found = {await p._find(t, None) for t in self._tasks}
            qs = sorted(found | set(self._groups.values())) or [DEFAULT_QUEUE]
        else:
            qs = self._queues
        where = {}
        if self._until_done:
            for t in self._tasks:
                where[t] = await p._find(t, qs[0] if len(qs) == 1 else None)
                if where[t] not in qs:
                    raise ConfigError(f"task {t} is in queue {where[t]!r}, which is not among queues={qs}")
        self._channels = [queue_keys(q).events for q in qs]
        self._where = where
        await self._subscribe()
        return self

    async def _subscribe(self) -> None:
        """Subscribe (confirmed), then hand out what ended already (until_done) and what arrived meanwhile;
        also after a cut, since the events of the gap are lost."""
        p = self._p
        ps, early = await p.broker.subscribe_events(self._channels)
        self._ps = ps
        try:
            if self._until_done:
                by_queue: dict[str, list[str]] = {}
                for t, q in self._where.items():
                    by_queue.setdefault(q, []).append(t)
                tasks = [(t, q, state, fin) for q, ts in by_queue.items()
                         for t, (state, fin) in zip(ts, await p.broker.records(queue_keys(q), ts, "state", "fin"))]
                groups = [(g, q, (await p.broker.groups_fired(queue_keys(q), [g]))[0])
                          for g, q in self._groups.items()]
                self._pending.extend(self._filter.initial(tasks, groups))
            for msg in early:
                self._pending.extend(self._filter.feed(msg["data"]))
        except BaseException:
            await self.aclose()
            raise

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict:
        if self._ps is None and not self._closed:
            await self.open()
        while True:
            if self._pending:
                return self._pending.popleft()
            left = None if self._deadline is None else self._deadline - time.monotonic()
            if self._closed or self._filter.finished or (left is not None and left <= 0):
                await self.aclose()
                raise StopAsyncIteration
            try:
                msg = await self._p.broker.next_message(self._ps, min(left, 3600.0) if left is not None else 3600.0)
            except ConnectionLost:
                ps, self._ps = self._ps, None
                await _aclose_quietly(ps)
                await self._subscribe()  # retried for retry_for seconds, else ConnectionLost
                continue
            if msg is not None and msg["type"] == "message":
                self._pending.extend(self._filter.feed(msg["data"]))

    async def aclose(self) -> None:
        self._closed = True
        ps, self._ps = self._ps, None
        if ps is not None:
            await ps.aclose()

    async def __aenter__(self) -> "AsyncEventStream":
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
