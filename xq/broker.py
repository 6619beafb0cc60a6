"""The one module that sends commands to Redis.

Everything above it (producer, supervisor) calls these methods; a test can wrap a Broker to inject
faults.  Hot paths (enqueue_many, the supervisor's claim+complete step) send RESP built by `_fast` on a
dedicated connection and read the replies with hiredis: one round trip per batch, no per-command Python
objects from redis-py's pipeline machinery.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import time
from typing import Iterable, NamedTuple, Sequence

import hiredis
import orjson
import redis
from redis.exceptions import NoScriptError

from . import scripts, stats
from ._impl import fast
from .conn import (DEFAULT_URL, RetryWindow, dedicated, failure, make_client, node_client, parse_url,  # noqa: F401 - DEFAULT_URL re-exported
                   redacted, translate)
from .conn import CLUSTER_MOVES, MasterWatch, cluster_node_error, replica_error
from .errors import ConnectionLost, RedisFull, ResultTimeout
from .keys import QUEUES, WORKERS, QueueKeys, worker_key
from .records import esc

PEEK_CAP = 1 << 20  # bytes of each field a listing ships at most (a longer one is cut and marked "truncated")
PEEK_SKIP = ("payload", "result")  # fields a listing leaves out: status() does not show them
# Bytes one read of the raw connection may take.  redis-py reads 32 KiB at a time, and each read of a
# socket with a timeout is a poll() and a recv() plus redis-py's Python around them: a 58 KB payload read
# after a claim took 2-4 of them, most of the supervisor's turns on CPU-bound thumbnails.
RAW_READ_SIZE = 1 << 18

log = logging.getLogger("xq")


def io(method=None, *, retry: bool = True):
    """A Broker method that talks to Redis.  A failure of the connection leaves as ConnectionLost or
    RedisRefused (see conn.translate), after the dedicated connections, whose state is then unknown, are
    dropped.  With Broker(retry_for=T) (producers), a method marked retry (safe to run twice: reads and the
    idempotent scripts) is retried through ConnectionLost for up to T seconds, with jittered backoff."""
    if method is None:
        return functools.partial(io, retry=retry)

    @functools.wraps(method)
    def guarded(self, *args, **kw):
        window = None  # made at the first failure: the hot path pays nothing for it but the clock
        start = time.monotonic()
        while True:
            try:
                return method(self, *args, **kw)
            except Exception as e:  # noqa: BLE001 - sorted by conn.failure: only Redis failures go on
                t = failure(e, self.url)
                if not isinstance(t, RedisFull):
                    # the dedicated connections' state is unknown now.  Not after a refused write: its reply
                    # was read and every connection is in step, and a reset would throw away the replies
                    # the supervisor's main connection still awaits (a claim's: tasks leased, never seen)
                    self.reset()
                window = window or RetryWindow(self.retry_for if retry else 0.0, start)
                time.sleep(window.pause(t))
    return guarded


class Refused(NamedTuple):
    """A report (COMPLETE, RELEASE) about an attempt its reporter no longer holds: left unwritten."""

    id: bytes
    attempt: int       # the attempt reported
    state: bytes       # the record's state now; b"" when it has no record
    worker: bytes      # who holds it now (the record's worker)
    now_attempt: int   # the record's attempt now (0 when it has none)


class Batch(NamedTuple):
    """One pipeline of a multi-step read (see Broker.pipelined): the reply of each call, in order."""
    calls: list       # (redis-py command method, args, kwargs) each, as made by cmd()
    multi: bool = False  # in MULTI/EXEC

    @property
    def single(self) -> bool:
        """One call, no MULTI: sent as a plain command (a Cluster has no PUBLISH in a pipeline)."""
        return len(self.calls) == 1 and not self.multi

    def call(self, client):
        """The single call, sent on client (its reply, or its coroutine for redis.asyncio)."""
        method, args, kw = self.calls[0]
        return getattr(client, method)(*args, **kw)

    def pipeline(self, client):
        """A pipeline of client (redis-py, sync or asyncio) holding the calls; the caller executes it."""
        pipe = client.pipeline(transaction=self.multi)
        for method, args, kw in self.calls:
            getattr(pipe, method)(*args, **kw)
        return pipe


def cmd(method: str, *args, **kw) -> tuple:
    return method, args, kw


def refusals(flat: Sequence) -> list[Refused]:
    """The refused list of a COMPLETE or RELEASE reply (5 values a task; see scripts.COMPLETE)."""
    return [Refused(flat[i], int(flat[i + 1]), flat[i + 2], flat[i + 3], int(flat[i + 4] or 0))
            for i in range(0, len(flat), 5)]


def queue_counts(pipe, qk: QueueKeys):
    """Queue on pipe (sync or asyncio) the commands of Broker.counts; counts_of reads their replies."""
    for key in qk.ready:
        pipe.llen(key)
    pipe.zcard(qk.sched)
    pipe.zcard(qk.leases)
    pipe.zcard(qk.dead)
    return pipe


def counts_of(r: Sequence[int]) -> dict[str, int]:
    return {"queued": sum(r[:10]), "sched": r[10], "running": r[11], "dead": r[12]}


class Broker:
    """Redis access for xq: scripts by name, raw pipelined sends, the blocking wake-up wait.

    On a Redis Cluster (redis+cluster:// URL) self.client is a RedisCluster: each script call and pipelined
    command goes to its key's slot (a queue's keys share one), SCRIPT LOAD to every master.  The raw
    pipelined path (send_packed, exchange) needs one connection to the master of one queue's slot:
    at(queue) gives the Broker that has it (self on one Redis or a Sentinel set)."""

    def __init__(self, url: str, *, socket_timeout: float | None = 30.0, retry_for: float = 0.0, client=None):
        self.url = url
        self.cluster = client is None and parse_url(url).kind == "cluster"
        self.client = client if client is not None else make_client(url, socket_timeout=socket_timeout)
        self.socket_timeout = socket_timeout
        self.retry_for = retry_for  # seconds an idempotent call is retried through an outage (producers)
        self._nodes: dict[str, Broker] = {}  # cluster: node name -> the Broker of its raw path (see at)
        self._stale = False  # cluster: a node's Broker failed, so the slot map may be out of date
        self._owner: Broker | None = None  # a node's Broker: the cluster Broker it belongs to
        self._sha = scripts.SHA
        self._conn = None    # dedicated connection for raw pipelined sends
        self._wconn = None   # dedicated connection for the blocking wake-up wait
        self._wid = 0        # its CLIENT ID, to unblock it
        self._wreader = None  # hiredis reader of its replies
        self._watch = MasterWatch(url) if client is None else None  # Sentinel: a failover not yet noticed

    # --- connection management ---
    @io
    def ping(self) -> bool:
        """Does Redis answer?  On a Cluster, after a failure, the slot map is read again first: a reconnect
        after a failover then goes to the promoted master at its first try (redis-py re-reads the map when
        a command fails, which during a failover is before the promotion)."""
        self._refresh()
        ok = bool(self.client.ping())
        if not self.cluster and self._owner is None:
            self._check_role()
        return ok

    def _check_role(self) -> None:
        """One Redis or a Sentinel's master: not a replica (ConnectionLost: it cannot take writes until
        promoted, so it is waited for) nor a Cluster node given as redis:// (RedisRefused: only the URL can
        change that).  Left unchecked where ROLE or INFO is denied (an ACL)."""
        try:
            role = self.client.execute_command("ROLE")
        except redis.ResponseError:
            role = None
        if role and role[0] in (b"slave", "slave"):
            raise replica_error(self.url, role)
        try:
            enabled = self.client.info("cluster").get("cluster_enabled")
        except redis.ResponseError:
            enabled = None
        if enabled:
            raise cluster_node_error(self.url)

    @io
    def load_scripts(self) -> None:
        for name, src in scripts.ALL.items():
            sha = self.client.script_load(src)
            assert sha.encode() == self._sha[name], name

    @staticmethod
    def pack_load_scripts() -> list[bytes]:
        """SCRIPT LOAD of every script, packed: to load them in the same round trip as other commands."""
        return [fast.pack_command([b"SCRIPT", b"LOAD", src.encode()]) for src in scripts.ALL.values()]

    def sha(self, name: str) -> bytes:
        return self._sha[name]

    def _raw(self):
        if self._conn is None:
            conn = dedicated(self.client, RAW_READ_SIZE)
            conn.connect()
            self._conn = conn
        return self._conn

    def at(self, queue: str) -> "Broker":
        """The Broker whose raw path (send_packed, exchange, unlink_scan) reaches queue's slot: self, but on
        a Cluster the one bound to the master serving that slot now (after a failure of one, the slot map
        is read again first: a failover or a MOVED reply moved the slot).  On a Sentinel set, ConnectionLost
        when the sentinels name a new master (check_master)."""
        if not self.cluster:
            self.check_master()
            return self
        self._refresh()
        node = self.client.get_node_from_key(QueueKeys(queue).base)
        b = self._nodes.get(node.name)
        if b is None:
            b = Broker(self.url, retry_for=self.retry_for, socket_timeout=self.socket_timeout,
                       client=node_client(self.url, node.host, node.port, socket_timeout=self.socket_timeout))
            self._nodes[node.name] = b
            b._owner = self
        return b

    def check_master(self) -> None:
        """On a Sentinel set, at most once a second: ConnectionLost if the sentinels now name another master
        than the one this client's connections reach (they are dropped: see conn.MasterWatch)."""
        if self._watch is not None and self._watch.due():
            self._check_master()

    @io(retry=False)
    def _check_master(self) -> None:
        self._watch.check(self.client)

    def _refresh(self) -> None:
        """On a Cluster after a failure (self._stale): read the slot map again (a failover or a MOVED reply
        may have moved a slot)."""
        if self._stale:
            self._stale = False
            try:
                self.client.nodes_manager.initialize()
            except Exception as e:  # noqa: BLE001 - sorted by conn.failure: a Redis failure is raised as ours
                self._stale = True
                raise failure(e, self.url) from e

    def reset(self) -> None:
        """Drop the dedicated connections (after an error); the next call reconnects.  On a Cluster, those
        of every node's Broker too (replies outstanding on any of them are lost with the outage), and the
        slot map is read again before the next call that needs it (at, ping)."""
        self._stale = self.cluster
        if self._owner is not None:
            self._owner._stale = True
        for b in self._nodes.values():
            b.reset()
        for c in (self._conn, self._wconn):
            if c is not None:
                try:
                    c.disconnect()
                except Exception:
                    pass
        self._conn = self._wconn = None

    def forget_after_fork(self) -> None:
        """In a forked child: close the inherited sockets' fds without shutdown() (which would cut the
        parent's connections too) and drop every reference to them."""
        # a RedisCluster has no pool of its own: one per node (its nodes' Brokers are below)
        pools = [getattr(self.client, "connection_pool", None)]
        if self.cluster:
            pools = [n.redis_connection.connection_pool for n in self.client.get_nodes() if n.redis_connection]
        conns = [self._conn, self._wconn, *(c for pool in pools for c in getattr(pool, "_available_connections", ())),
                 *(c for pool in pools for c in getattr(pool, "_in_use_connections", ()))]
        for c in conns:
            sock = getattr(c, "_sock", None)
            if sock is not None:
                try:
                    os.close(sock.detach())
                except OSError:
                    pass
                c._sock = None
        self._conn = self._wconn = None
        for b in self._nodes.values():
            b.forget_after_fork()

    def close(self) -> None:
        self.reset()
        for b in self._nodes.values():
            b.close()
        self._nodes.clear()
        self.client.close()

    @io(retry=False)
    def send_packed(self, command: bytes) -> None:
        """Send one packed command without reading its reply (see read_replies)."""
        self._raw().send_packed_command([command], check_health=False)

    @io(retry=False)
    def read_replies(self, commands: Sequence[bytes]) -> list:
        """The replies of commands sent with send_packed, in order (errors as values, NOSCRIPT retried once)."""
        out = [self.read_reply() for _ in commands]
        # NOSCRIPT: Redis restarted or was flushed; reload and run that command again, once.
        for i, x in enumerate(out):
            if isinstance(x, NoScriptError):
                self.load_scripts()
                self.send_packed(commands[i])
                out[i] = self.read_reply()
        return out

    @io(retry=False)
    def reply_ready(self) -> bool:
        """Can read_reply() return without waiting (pipelined replies on the main connection)?  Asked once a
        reply, and once more when none is left, on the hot path: buffered data, or one read of the socket
        into the parser's reader (redis-py's can_read makes three syscalls and two poll objects).  The read
        is os.readv on the fd, which Python keeps non-blocking for a socket with a timeout: a socket's own
        recv would first wait up to that timeout for data, whatever its flags."""
        conn = self._conn
        if conn is None:
            return False
        parser = conn._parser
        reader, sock, buf = getattr(parser, "_reader", None), getattr(parser, "_sock", None), \
            getattr(parser, "_buffer", None)
        if reader is None or sock is None or buf is None or isinstance(sock, ssl.SSLSocket) \
                or not sock.gettimeout():
            return conn.can_read(timeout=0)  # another parser, TLS, or a blocking fd: redis-py's check
        if reader.has_data():
            return True
        try:
            n = os.readv(sock.fileno(), [buf])
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            raise redis.ConnectionError(f"Error while reading from {redacted(self.url)}: {e}") from e
        if n == 0:
            raise redis.ConnectionError(f"Connection closed by server ({redacted(self.url)})")
        reader.feed(buf, 0, n)
        return True

    @io(retry=False)
    def read_reply(self):
        """The next reply on the main connection; an error reply is returned, not raised."""
        if self._conn is None:
            raise ConnectionLost(f"Redis at {redacted(self.url)}: the connection was dropped with replies "
                                 f"outstanding", url=redacted(self.url))
        try:
            return self._conn.read_response()
        except CLUSTER_MOVES:
            # a Cluster's slot moved (failover, resharding) or is not served yet (CLUSTERDOWN while it heals):
            # an outage, the command was not run; the guard drops the connection, at() re-reads the slot map
            raise
        except redis.ResponseError as e:
            return e

    @io(retry=False)
    def main_fileno(self) -> int:
        return self._raw()._sock.fileno()

    @io
    def run(self, name: str, keys: Sequence, argv: Sequence):
        """Run one script on the client pool (not the pipelined main connection), raising its error reply."""
        try:
            return self.client.evalsha(self._sha[name], len(keys), *keys, *argv)
        except NoScriptError:
            self.load_scripts()
            return self.client.evalsha(self._sha[name], len(keys), *keys, *argv)

    def pipelined(self, plan):
        """Run a plan: a generator that yields Batches and gets each one's replies back, written once for
        Broker and xq.aio._AsyncBroker (which differ only in how they send a pipeline); returns its value."""
        replies = None
        try:
            while True:
                batch = plan.send(replies)
                replies = ([batch.call(self.client)] if batch.single else
                           batch.pipeline(self.client).execute() if batch.calls else [])
        except StopIteration as done:
            return done.value

    # --- producer ---
    def pack_enqueue(self, qk: QueueKeys, name: str, priority: int, max_retries: int | None, ids: Sequence[bytes],
                     payloads: Sequence, first: int, max_payload: int, *, delay_ms="", eta_ms="",
                     expires_in_ms="", expires_at_ms="", timeout_ms="", flow: bytes = b"") -> tuple[bytes, int]:
        """(packed commands, replies they get); max_retries None: the record stores none, and the task's
        own default (or 3) applies.  Payloads over scripts.STAGE_PAYLOAD bytes are staged (ENQUEUE's doc)."""
        maxr = b"" if max_retries is None else max_retries
        return fast.pack_enqueue(self._sha["enqueue"], (qk.ready[priority], qk.wake, qk.sched),
                                 (qk.task_prefix, name, priority, maxr, delay_ms, eta_ms, expires_in_ms,
                                  expires_at_ms, timeout_ms, qk.events, qk.name, flow), ids, payloads, first,
                                 max_payload, qk.stage_prefix, scripts.STAGE_PAYLOAD, scripts.STAGE_TTL_MS)

    @io
    def register_queue(self, queue: str) -> None:
        self.client.sadd(QUEUES, queue)

    # --- worker registry (xq/supervisor/registry.py) ---
    @io(retry=False)
    def heartbeat(self, worker_id: str, record: bytes, ttl_ms: int, now_ms: int, prune_before_ms: int) -> None:
        """Write a supervisor's registry record (PX ttl_ms) and its index entry, in one round trip; drop
        index entries not refreshed since prune_before_ms (workers long dead), so the index stays bounded."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(worker_key(worker_id), record, px=ttl_ms)
        pipe.zadd(WORKERS, {worker_id: now_ms})
        pipe.zremrangebyscore(WORKERS, "-inf", f"({prune_before_ms}")
        pipe.execute()

    @io(retry=False)
    def unregister(self, worker_id: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(worker_key(worker_id))
        pipe.zrem(WORKERS, worker_id)
        pipe.execute()

    @io
    def workers(self) -> list[tuple[str, float, bytes | None]]:
        """(worker id, last heartbeat ms, record JSON or None once expired) of every indexed worker,
        newest heartbeat first."""
        return self.pipelined(plan_workers())

    @io
    def worker_record(self, worker_id: str) -> bytes | None:
        return self.client.get(worker_key(worker_id))

    @io
    def queues(self) -> list[str]:
        return sorted(x.decode() for x in self.client.smembers(QUEUES))

    @io
    def task_record(self, qk: QueueKeys, task_id: str | bytes) -> dict[bytes, bytes]:
        """task_id bytes: as Redis holds it (it may not be UTF-8: see records.raw_id)."""
        key = qk.task_prefix.encode() + task_id if isinstance(task_id, bytes) else qk.task(task_id)
        return self.client.hgetall(key)

    @io
    def find_queue(self, task_id: str, queues: Iterable[str]) -> str | None:
        """Which of queues holds a record for task_id (one pipelined round trip)."""
        queues = list(queues)
        if not queues:
            return None
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.exists(QueueKeys(q).task(task_id))
        for q, hit in zip(queues, pipe.execute()):
            if hit:
                return q
        return None

    @io
    def retention(self, qks: Sequence[QueueKeys]) -> list[tuple[dict, dict]]:
        """Per queue: (its retention policy, its trimmed watermark), HGETALL replies, in one round trip."""
        return self.pipelined(plan_retention(qks))

    @io
    def set_retention(self, qk: QueueKeys, values: dict[str, int], unset: Sequence[str]) -> None:
        """Set fields of a queue's retention policy and remove others (back to their defaults)."""
        return self.pipelined(plan_set_retention(qk, values, unset))

    @io
    def finished_counts(self, qk: QueueKeys) -> list[int]:
        """ZCARD of the done, canceled, expired indexes and the dead-letter set."""
        return self.pipelined(plan_finished_counts(qk))

    def cancel(self, qk: QueueKeys, task_id: str, ttl: int) -> tuple[str, str]:
        """(outcome, state before); see scripts.CANCEL."""
        out, before = self.run("cancel", *self.cancel_args(qk, task_id, ttl))
        return out.decode(), before.decode()

    @io
    def dead_ids(self, qk: QueueKeys, offset: int, limit: int, raw: bool = False) -> list[tuple[str, float]]:
        """(id, time of death) of the dead-letter set, oldest first; raw: ids as bytes (an id written by a
        foreign producer may not be UTF-8), else as text with backslash escapes."""
        rows = self.client.zrange(qk.dead, offset, offset + limit - 1, withscores=True)
        return [(i if raw else esc(i), score / 1000.0) for i, score in rows]

    @io
    def scheduled_ids(self, qk: QueueKeys, offset: int, limit: int) -> list[tuple[str, float]]:
        """(id, due time) of scheduled and retrying tasks, soonest first."""
        rows = self.client.zrange(qk.sched, offset, offset + limit - 1, withscores=True)
        return [(esc(i), score / 1000.0) for i, score in rows]

    def peek(self, zset: str, qk: QueueKeys, offset: int, limit: int, cap: int = PEEK_CAP,
             skip: Sequence[str] = PEEK_SKIP) -> list[tuple[bytes, float, dict, dict]]:
        """One page of a sorted set of task ids with their records, each field cut at cap bytes (script
        PEEK): (raw id, score, {field: value} or None if the record is gone, {cut field: its full length})
        per id, in order."""
        return peek_rows(self.run("peek", *peek_args(zset, qk, offset, limit, cap, skip)))

    @io
    def task_brief(self, qk: QueueKeys, task_id: str | bytes, cap: int,
                   capped: Sequence[str] = PEEK_SKIP) -> tuple[dict, dict]:
        """A task's record without the capped fields longer than cap bytes (script RECORD): ({field: value},
        {left-out field: its length}); both empty if there is no record."""
        return record_brief(self.run("record", *record_args(qk, task_id, cap, capped)))

    @io
    def set_paused(self, qk: QueueKeys, paused: bool) -> bool:
        """Pause (set xq:{Q}:paused) or resume (delete it, and set the wake marker so idle supervisors
        claim at once) the queue, publishing a queue event {"queue","state":"paused"|"resumed","ts"} on its
        events channel, all in one MULTI.  Returns whether the state changed.  Idempotent, so retried."""
        return self.pipelined(plan_set_paused(qk, paused, int(time.time() * 1000)))

    @io
    def paused_since(self, qks: Sequence[QueueKeys]) -> list[float | None]:
        """For each queue, the time (s since the epoch) it was paused, or None if it is not paused."""
        return self.pipelined(plan_paused_since(qks))

    @io
    def dead_count(self, qk: QueueKeys) -> int:
        return self.client.zcard(qk.dead)

    def replay(self, qk: QueueKeys, ids: Sequence[str], priority: int | None, mode: str = "requeue") -> list[str]:
        reply = self.run("replay", *replay_args(qk, ids, priority, mode))
        return [esc(i) for i in reply]

    def purge_dead(self, qk: QueueKeys, batch: int = 1000) -> int:
        total = 0
        while True:
            n = self.run("purge", [qk.dead], [qk.task_prefix, batch])
            total += n
            if n < batch:
                return total

    # --- bulk operations (replay into another queue, flush, delete a queue; issue 11) ---
    # Packed here, sent by exchange(): several chunks per round trip, each script call bounded by its chunk.
    def pack_dead_read(self, qk: QueueKeys, offset: int, count: int, ids: Sequence[bytes] = ()) -> bytes:
        """Script DEAD_READ: a page (offset, count) of the dead-letter set, or those ids of it."""
        return fast.pack_command([b"EVALSHA", self._sha["dead_read"], 1, qk.dead, qk.task_prefix, offset, count,
                                  *ids])

    def pack_import(self, qk: QueueKeys, priority: int | None, tasks: Sequence[bytes]) -> bytes:
        """Script IMPORT: tasks (flat, 8 values a task, as DEAD_READ gives them) queued afresh in qk."""
        return fast.pack_command([b"EVALSHA", self._sha["import"], 11, qk.wake, *qk.ready, qk.task_prefix,
                                  qk.events, qk.name, b"" if priority is None else priority, *tasks])

    def pack_replay_head(self, qk: QueueKeys, count: int, priority: int | None) -> bytes:
        """Script REPLAY 'head': requeue the first count dead letters in place."""
        return fast.pack_command([b"EVALSHA", self._sha["replay"], 12, qk.dead, qk.wake, *qk.ready,
                                  qk.task_prefix, qk.events, qk.name, b"" if priority is None else priority,
                                  b"head", count])

    def pack_remove_dead(self, qk: QueueKeys, ids: Sequence[bytes]) -> bytes:
        """Script REPLAY 'remove': drop these dead letters (copied elsewhere) and their records."""
        return fast.pack_command([b"EVALSHA", self._sha["replay"], 12, qk.dead, qk.wake, *qk.ready,
                                  qk.task_prefix, qk.events, qk.name, b"", b"remove", *ids])

    def pack_flush(self, qk: QueueKeys, state: str, count: int, cursor: bytes = b"0", ttl: int = 86400) -> bytes:
        """Script FLUSH: delete up to count tasks in state (queued, scheduled, retrying)."""
        return fast.pack_command([b"EVALSHA", self._sha["flush"], 11, *qk.ready, qk.sched, qk.task_prefix,
                                  qk.events, qk.name, state, count, cursor, ttl])

    def pack_purge(self, qk: QueueKeys, count: int) -> bytes:
        """Script PURGE: delete the first count dead letters."""
        return fast.pack_command([b"EVALSHA", self._sha["purge"], 1, qk.dead, qk.task_prefix, count])

    @io(retry=False)
    def exchange(self, commands: Sequence[bytes]) -> list:
        """Send packed commands at once on the main connection and read their replies in order; an error
        reply is raised (after every reply was read, so the connection stays in step)."""
        if not commands:
            return []
        self._raw().send_packed_command(list(commands), check_health=False)
        out = self.read_replies(commands)
        for x in out:
            if isinstance(x, Exception):
                raise translate(x, self.url)
        return out

    @io
    def counts(self, qk: QueueKeys) -> dict[str, int]:
        """Lengths of the ready lists (all levels), sched, leases and dead, in one round trip."""
        return counts_of(queue_counts(self.client.pipeline(transaction=False), qk).execute())

    @io(retry=False)
    def unlink_scan(self, qk: QueueKeys, cursor: int, count: int, unlink: Sequence[bytes]) -> tuple[int, tuple]:
        """UNLINK the keys found by the last step (if any) and take the next SCAN step over the queue's keys
        (MATCH xq:{Q}:*), in one round trip: (keys unlinked, (next cursor, keys found))."""
        pipe = self.client.pipeline(transaction=False)
        if unlink:
            pipe.unlink(*unlink)
        pipe.scan(cursor, match=qk.pattern, count=count)
        r = pipe.execute()
        return (r[0] if unlink else 0), r[-1]

    @io
    def dbsize(self) -> int:
        return self.client.dbsize()

    @io(retry=False)
    def unlink(self, keys: Sequence) -> int:
        return self.client.unlink(*keys) if keys else 0

    @io
    def forget_queue(self, queue: str) -> None:
        self.client.srem(QUEUES, queue)

    def cron_fire(self, qk: QueueKeys, entry_key: str, tick_ms: int, mode: str, task_id: bytes = b"",
                  name: str = "", payload: bytes = b"", ct: bytes = b"j", priority: int = 5) -> tuple[int, int]:
        """(fired 1/0, the last tick fired before, ms or -1); see scripts.CRON."""
        fired, last = self.run("cron", [qk.cron, qk.ready[priority], qk.wake],
                               [entry_key, tick_ms, mode, qk.task_prefix, task_id, name, payload, ct, priority,
                                qk.events, qk.name])
        return int(fired), int(last)

    def group(self, qk: QueueKeys, mode: str, group_id: str, *, callback_id: str = "", name: str = "",
              payload: bytes = b"", priority: int = 5, max_retries: int | None = None, timeout_ms="",
              ttl: int = 86400) -> None:
        """Open a group before its members are enqueued, or seal it after; see scripts.GROUP."""
        self.run("group", *group_args(qk, mode, group_id, callback_id=callback_id, name=name, payload=payload,
                                      priority=priority, max_retries=max_retries, timeout_ms=timeout_ms, ttl=ttl))

    @io
    def group_state(self, qk: QueueKeys, group_id: str) -> tuple[dict, list[bytes]]:
        """(the group's hash, its member ids in order) in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(qk.group(group_id))
        pipe.lrange(qk.group_members(group_id), 0, -1)
        h, ids = pipe.execute()
        return h, ids

    @io
    def records(self, qk: QueueKeys, ids: Sequence, *fields: str) -> list[list]:
        """HMGET fields of many task records, pipelined."""
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(qk.task(i), *fields)
        return pipe.execute()

    # --- queue inspection (issue 11: xq queues / queue show / tasks) ---
    def queue_stats(self, qk: QueueKeys, cap: int, by_name: bool) -> list:
        """Script QSTATS: the counts of one queue in one round trip (see xq/scripts.py)."""
        return self.run("qstats", *queue_stats_args(qk, cap, by_name))

    @io
    def ready_ids(self, qk: QueueKeys, offset: int, limit: int) -> list[bytes]:
        """ids of the ready lists in claim order (priority 0 first, FIFO within a level), offset..+limit:
        LLEN of each level, then LRANGE of the levels the page falls in (two round trips)."""
        return self.pipelined(plan_ready_ids(qk, offset, limit))

    @io
    def waiting_ids(self, qk: QueueKeys, cap: int) -> tuple[list[bytes], bool]:
        """ids of waiting tasks, found through the hooked set (see scripts.QSTATS): the d:<id> members and
        group callbacks of at most cap hooked ids; (ids, whether every hooked id was looked at)."""
        return self.pipelined(plan_waiting_ids(qk, cap))

    @io
    def raw_records(self, qk: QueueKeys, ids: Sequence[bytes], fields: Sequence[str]) -> list[dict]:
        """HMGET of the given fields of many records, pipelined, as {field: value} without absent fields
        ({} if the record is gone)."""
        return self.pipelined(plan_raw_records(qk, ids, fields))

    @io
    def lease_score(self, qk: QueueKeys, task_id: str):
        return self.client.zscore(qk.leases, task_id)

    # --- supervisor ---
    @staticmethod
    def claim_keys(queues: Sequence[QueueKeys]) -> list[str]:
        keys: list[str] = []
        for qk in queues:
            keys.extend(qk.ready)
            keys += (qk.wake, qk.leases, qk.sched, qk.dead)
        return keys

    @staticmethod
    def claim_tail(queues: Sequence[QueueKeys], weights: Sequence[int | None] | None = None,
                   level_weights: Sequence[int] | None = None, name_limits: bytes = b"") -> list:
        """name_limits: JSON {task name: [starts, period ms]} of per-name rate limits, or b''."""
        tail: list = [",".join(map(str, level_weights)) if level_weights else "", name_limits, ""]  # "": sizes off
        for i, qk in enumerate(queues):
            w = weights[i] if weights else None
            tail += (qk.task_prefix, qk.events, qk.name, "" if w is None else w)
        return tail

    def pack_claim(self, keys: Sequence[str], tail: Sequence[str], want: int, worker: str, lease_ms: int,
                   max_payload: int, ttl: int, sizes: bool = False) -> bytes:
        """sizes: CLAIM reads each payload's size first and leaves a large one to an HGET (ARGV[8])."""
        if sizes:
            tail = [tail[0], tail[1], b"1", *tail[3:]]
        return fast.pack_command([b"EVALSHA", self._sha["claim"], len(keys), *keys,
                                  want, worker, lease_ms, max_payload, ttl, *tail])

    def pack_complete(self, qk: QueueKeys, ttl: int, event: bytes, items: list, worker: str,
                      stats: bool = False) -> bytes:
        """items: 7 values a task (id, attempt, outcome, text, extra, started ms, finished ms); the reply is
        {written, refused} (see refusals).  stats: the script counts failed attempts in the stats history."""
        if stats:
            return fast.pack_command([b"EVALSHA", self._sha["complete"], 4, qk.leases, qk.sched, qk.dead,
                                      qk.stats_names, qk.task_prefix, qk.events, ttl, event, qk.name, worker,
                                      *items])
        return fast.pack_command([b"EVALSHA", self._sha["complete"], 3, qk.leases, qk.sched, qk.dead,
                                  qk.task_prefix, qk.events, ttl, event, qk.name, worker, *items])

    @staticmethod
    def pack_stats(qk: QueueKeys, ms: int, rows: dict, fresh) -> tuple[bytes, int]:
        """The stats history writes of one pipeline step for one queue (xq/stats.py): one BITFIELD for the
        queue and one per task name, adding done counts and run time (rows: name bytes -> [done, run time
        seconds]) to the minute of `ms`.  fresh(key) says whether this writer meets the key for the first
        time this hour: then the key gets its EXPIRE, and a name its entry in xq:{Q}:stn (so these extra
        commands come once per key per hour, not per step).  Returns (commands, how many replies)."""
        hour, off = stats.locate(ms)
        pack = fast.pack_command
        out, n = [], 0
        total_n, total_us = 0, 0
        for name, (count, busy) in rows.items():
            us = int(busy * 1e6)
            total_n += count
            total_us += us
            key = qk.stats_b(hour, name)
            out.append(pack([b"BITFIELD", key, b"OVERFLOW", b"SAT", b"INCRBY", b"u32", off, count,
                             b"INCRBY", b"u40", off + stats.RUNTIME_BIT, us, *stats.SIZE_OP]))
            n += 1
            if fresh(key):
                out.append(pack([b"EXPIRE", key, stats.TTL]))
                out.append(pack([b"ZADD", qk.stats_names, hour, name]))
                n += 2
        key = qk.stats_b(hour)
        out.append(pack([b"BITFIELD", key, b"OVERFLOW", b"SAT", b"INCRBY", b"u32", off, total_n,
                         b"INCRBY", b"u40", off + stats.RUNTIME_BIT, total_us, *stats.SIZE_OP]))
        n += 1
        if fresh(key):  # once an hour per queue: the name index's own expiry, and its names gone quiet
            out.append(pack([b"EXPIRE", key, stats.TTL]))
            out.append(pack([b"EXPIRE", qk.stats_names, stats.TTL]))
            out.append(pack([b"ZREMRANGEBYSCORE", qk.stats_names, b"-inf", b"(%d" % (hour - stats.HOURS)]))
            n += 3
        return b"".join(out), n

    @io
    def stats_ranges(self, reads: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """GETRANGE key start end of each (key, start, end), in one pipelined round trip (the stats history
        keys of a queue share its slot)."""
        return self.pipelined(plan_stats_ranges(reads))

    @io
    def stats_names(self, qk: QueueKeys, since_hour: int) -> list[bytes]:
        """The task names with stats history written in hour since_hour or later."""
        return self.client.zrangebyscore(qk.stats_names, since_hour, "+inf")

    def release(self, qk: QueueKeys, mode: str, tasks: Sequence[tuple[bytes, int]], *, error: str = "",
                holder: str = "", ttl: int = 0, outcome: str = "lost", delay_ms: int = 0, started_ms="",
                max_retries: bytes = b"{}", stats: bool = False) -> tuple[list[bytes], list[bytes], list[Refused]]:
        """Requeue, retry, cancel or kill tasks, given as (id, attempt) pairs held by holder; see
        scripts.RELEASE for the modes ('expired' takes no tasks and ignores the holder).  stats: count the
        failed attempts in the stats history.  Returns (requeued, dead, refused)."""
        keys = [qk.leases, qk.wake, qk.sched, qk.dead, *qk.ready]
        if stats:
            keys.append(qk.stats_names)
        reply = self.run("release", keys,
                         [qk.task_prefix, qk.events, qk.name, ttl, mode, error, holder, outcome, int(delay_ms),
                          started_ms, max_retries, *(v for t in tasks for v in t)])
        return reply[0], reply[1], refusals(reply[2])

    def return_orphans(self, qk: QueueKeys, holder: str, known: Sequence[bytes]) -> list[bytes]:
        """Put back, unstarted, every task leased to holder but not among known (the ids it holds): what a
        claim whose reply was lost took.  Returns their ids."""
        reply = self.run("release", [qk.leases, qk.wake, qk.sched, qk.dead, *qk.ready],
                         [qk.task_prefix, qk.events, qk.name, 0, "orphans", "", holder, "lost", 0, "", b"{}",
                          *known])
        return reply[0]

    def renew(self, qk: QueueKeys, worker: str, lease_ms: int,
              tasks: Sequence[tuple[bytes, int]]) -> tuple[list[bytes], list[bytes]]:
        """Extend this worker's leases of (id, attempt) pairs; returns (ids it no longer holds at that attempt,
        held ids whose cancel was requested)."""
        lost, cancel = self.run("renew", [qk.leases], [qk.task_prefix, worker, lease_ms,
                                                        *(v for t in tasks for v in t)])
        return lost, cancel

    # --- blocking wake-up wait (idle supervisors) ---
    @io(retry=False)
    def start_wait(self, wake_keys: Sequence[str], timeout: float, claim: bytes) -> int:
        """Send BZPOPMIN on the wake markers and, behind it on the same connection, a packed CLAIM, without
        waiting; returns the socket fd to poll.  Redis runs the claim the moment the wait ends (a marker
        arrived or the timeout passed): the wake-up carries the tasks, with no round trip of its own.
        redis-py only opens this connection (AUTH, SELECT, TLS); its replies are read with a hiredis
        reader of our own, since this is the idle path every task's start latency goes through."""
        if self._wconn is None:
            conn = dedicated(self.client)
            conn.connect()
            conn.send_command("CLIENT", "ID")
            self._wid = conn.read_response()
            self._wconn, self._wreader = conn, hiredis.Reader()
        self._wconn._sock.sendall(fast.pack_command([b"BZPOPMIN", *wake_keys, f"{timeout:.3f}"]) + claim)
        return self._wconn._sock.fileno()

    @io(retry=False)
    def finish_wait(self):
        """The CLAIM reply of the wait, once its socket is readable (an error reply is returned, not raised)."""
        try:
            replies = []
            while len(replies) < 2:  # the marker (or nil on timeout), then the claim
                reply = self._wreader.gets()
                if reply is not False:
                    replies.append(reply)
                    continue
                data = self._wait_read()
                if not data:
                    raise redis.ConnectionError("Redis closed the connection of the wake-up wait")
                self._wreader.feed(data)
        except BaseException:
            self.reset()
            raise
        reply = replies[1]
        if isinstance(reply, hiredis.ReplyError):
            msg = str(reply)
            return NoScriptError(msg) if msg.startswith("NOSCRIPT") else redis.ResponseError(msg)
        return reply

    def _wait_read(self) -> bytes:
        """What the wait's socket holds (poll() said it is readable): os.read first, since a socket with a
        timeout polls before each recv (a syscall more on every idle task's start); recv if nothing is
        there yet, or on TLS."""
        sock = self._wconn._sock
        if not isinstance(sock, ssl.SSLSocket):
            try:
                return os.read(sock.fileno(), 65536)
            except (BlockingIOError, InterruptedError):
                pass
        return sock.recv(65536)

    @io(retry=False)
    def cancel_wait(self) -> None:
        """End an outstanding wait at once (as if it timed out): its CLAIM runs and replies right away."""
        self.client.client_unblock(self._wid)

    def wait_fileno(self) -> int:
        return self._wconn._sock.fileno() if self._wconn is not None else -1

    # --- progress (issue 4, point 7) ---
    def pack_progress(self, qk: QueueKeys, entries: Sequence[tuple]) -> tuple[bytes, int]:
        """Packed commands storing the progress of running tasks of one queue and publishing it; returns
        (bytes to send, number of replies they produce).

        entries: (task id, record field JSON, event members, ts ms) per task, the last report of each.
        One HSET of the record's `progress` field per task, then one PUBLISH of a JSON array of
        {"id","queue","state":"progress","ts","progress","message"} on the queue's events channel.  Plain
        commands, no script: the supervisor only sends progress of tasks it holds (leased, record present),
        and pipelines these ahead of the COMPLETE of the same step, so a task's progress lands before its
        final state."""
        task, name = qk.task, qk.name.encode()
        cmds, events = [], []
        for tid, record, members, ts in entries:
            cmds.append(fast.pack_command([b"HSET", task(tid), b"progress", record]))
            events.append(b'{"id":"' + tid + b'","queue":"' + name + b'","state":"progress","ts":%d,' % ts
                          + members + b"}")
        cmds.append(fast.pack_command([b"PUBLISH", qk.events, b"[" + b",".join(events) + b"]"]))
        return b"".join(cmds), len(cmds)

    # --- Pub/Sub ---
    @io
    def subscribe(self, channels: Sequence[str]):
        """A new PubSub subscribed to channels (subscribe confirmations are not returned as messages); the
        caller closes it, and after a ConnectionLost from messages() drops it and subscribes anew."""
        ps = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            ps.subscribe(*channels)
        except BaseException:
            ps.close()
            raise
        return ps

    @io(retry=False)
    def messages(self, ps, limit: int = 1000) -> list[bytes]:
        """The data of the messages that have arrived on ps, without waiting."""
        out = []
        while len(out) < limit:
            msg = ps.get_message(timeout=0.0)
            if msg is None:
                break
            if msg.get("type") == "message":
                out.append(msg["data"])
        return out

    # --- event streams (issue 4, point 8) ---
    @staticmethod
    def cancel_args(qk: QueueKeys, task_id: str, ttl: int) -> tuple[list, list]:
        """(KEYS, ARGV) of scripts.CANCEL; shared with xq.aio."""
        return [qk.sched], [qk.task_prefix, qk.events, qk.control, qk.name, ttl, task_id]

    @io
    def subscribe_events(self, channels: Sequence[str], timeout: float = 10.0, ps=None):
        """(a PubSub subscribed to channels, messages that arrived meanwhile), once Redis has confirmed
        every subscription, so no event published after this returns is missed.  With ps, the channels are
        added to that PubSub; else a new one is made, which the caller closes."""
        own = ps is None
        ps = self.client.pubsub() if own else ps
        try:
            ps.subscribe(*channels)
            want, early = {c.encode() for c in channels}, []
            deadline = time.monotonic() + timeout
            while want and time.monotonic() < deadline:
                msg = ps.get_message(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                if msg is None:
                    continue
                if msg["type"] == "subscribe":
                    want.discard(msg["channel"])
                elif msg["type"] == "message":  # of a channel confirmed earlier: keep it
                    early.append(msg)
            if want:
                raise ResultTimeout(f"Redis did not confirm the subscription to {b', '.join(want).decode()} "
                                    f"within {timeout} s")
        except BaseException:
            if own:
                ps.close()
            raise
        return ps, early

    @io(retry=False)
    def next_message(self, ps, timeout: float):
        """The next message of ps (a dict as redis-py gives it), or None after timeout seconds."""
        return ps.get_message(timeout=timeout)

    @io
    def groups_fired(self, qk: QueueKeys, group_ids: Sequence[str]) -> list:
        """When each group finished (every member ended; ms, as bytes) or None, pipelined."""
        pipe = self.client.pipeline(transaction=False)
        for g in group_ids:
            pipe.hget(qk.group(g), "fired")
        return pipe.execute()


# --- multi-step reads and writes as plans (issue 11) ---
# Each is a generator that yields a Batch (one pipeline) and is sent its replies, returning the result: the
# commands and the logic between round trips are written once, and Broker.pipelined and
# xq.aio._AsyncBroker.pipelined only send them (see docs/design.md "Inspection").

def plan_workers():
    rows = (yield Batch([cmd("zrevrange", WORKERS, 0, -1, withscores=True)]))[0]
    if not rows:
        return []
    recs = yield Batch([cmd("get", worker_key(wid.decode(errors="replace"))) for wid, _ in rows])
    return [(wid.decode(errors="replace"), score, rec) for (wid, score), rec in zip(rows, recs)]


def plan_stats_ranges(reads: Sequence[tuple[str, int, int]]):
    return (yield Batch([cmd("getrange", key, start, end) for key, start, end in reads])) if reads else []


def plan_retention(qks: Sequence[QueueKeys]):
    out = yield Batch([c for qk in qks for c in (cmd("hgetall", qk.retention), cmd("hgetall", qk.trimmed))])
    return list(zip(out[::2], out[1::2]))


def plan_set_retention(qk: QueueKeys, values: dict, unset: Sequence[str]):
    calls = ([cmd("hset", qk.retention, mapping=values)] if values else []) + \
            ([cmd("hdel", qk.retention, *unset)] if unset else [])
    yield Batch(calls, multi=True)


def plan_finished_counts(qk: QueueKeys):
    return (yield Batch([cmd("zcard", z) for z in (qk.finished("done"), qk.finished("canceled"),
                                                     qk.finished("expired"), qk.dead)]))


def plan_set_paused(qk: QueueKeys, paused: bool, ms: int):
    if paused:
        calls = [cmd("set", qk.paused, ms, nx=True)]
    else:
        calls = [cmd("delete", qk.paused), cmd("zadd", qk.wake, {"1": 0})]
    changed = bool((yield Batch(calls, multi=True))[0])
    if changed:
        ev = orjson.dumps([{"queue": qk.name, "state": "paused" if paused else "resumed", "ts": ms}])
        yield Batch([cmd("publish", qk.events, ev)])
    return changed


def plan_paused_since(qks: Sequence[QueueKeys]):
    if not qks:
        return []
    # one slot per queue: GETs, not a cross-slot MGET
    out: list[float | None] = []
    for v in (yield Batch([cmd("get", qk.paused) for qk in qks])):
        try:
            out.append(None if v is None else int(v) / 1000.0)
        except ValueError:
            out.append(0.0)  # paused by someone who wrote another value: paused all the same
    return out


def plan_ready_ids(qk: QueueKeys, offset: int, limit: int):
    lens = yield Batch([cmd("llen", key) for key in qk.ready])
    calls, start, want = [], offset, limit
    for key, ln in zip(qk.ready, lens):
        if want <= 0:
            break
        if start >= ln:
            start -= ln
            continue
        calls.append(cmd("lrange", key, start, start + want - 1))
        want -= min(ln - start, want)
        start = 0
    return [i for part in ((yield Batch(calls)) if calls else []) for i in part]


def plan_waiting_ids(qk: QueueKeys, cap: int):
    hooked, cursor, complete = [], 0, True
    for _ in range(cap):  # bounded: SSCAN pages until cap hooked ids
        cursor, part = (yield Batch([cmd("sscan", qk.hooked, cursor, count=min(1000, cap))]))[0]
        hooked.extend(part)
        if cursor == 0 or len(hooked) >= cap:
            complete = cursor == 0 and len(hooked) <= cap
            break
    hooked = hooked[:cap]
    calls = []
    for h in hooked:
        calls += [cmd("smembers", qk.base.encode() + b"d:" + h), cmd("hget", qk.task_prefix.encode() + h, "grp")]
    replies = (yield Batch(calls)) if hooked else []
    cand = {i for deps in replies[0::2] for i in deps}
    groups = [g for g in replies[1::2] if g]
    if groups:
        cbs = yield Batch([cmd("hget", qk.base.encode() + b"g:" + g, "cb") for g in groups])
        cand.update(cb for cb in cbs if cb)
    ids = sorted(cand)
    states = (yield Batch([cmd("hget", qk.task_prefix.encode() + i, "state") for i in ids])) if ids else []
    return [i for i, st in zip(ids, states) if st == b"waiting"], complete


def plan_raw_records(qk: QueueKeys, ids: Sequence[bytes], fields: Sequence[str]):
    rows = (yield Batch([cmd("hmget", qk.task_prefix.encode() + i, *fields) for i in ids])) if ids else []
    keys = [f.encode() for f in fields]
    return [{k: v for k, v in zip(keys, row) if v is not None} for row in rows]


def queue_stats_args(qk: QueueKeys, cap: int, by_name: bool) -> tuple[list, list]:
    """(KEYS, ARGV) of scripts.QSTATS; shared with xq.aio."""
    return ([*qk.ready, qk.sched, qk.leases, qk.dead, qk.paused, qk.hooked],
            [qk.task_prefix, qk.base, cap, 1 if by_name else 0])


def peek_args(zset: str, qk: QueueKeys, offset: int, limit: int, cap: int = PEEK_CAP,
              skip: Sequence[str] = PEEK_SKIP) -> tuple[list, list]:
    """(KEYS, ARGV) of scripts.PEEK; shared with xq.aio."""
    return [zset], [qk.task_prefix, offset, limit, cap, *skip]


def group_args(qk: QueueKeys, mode: str, group_id: str, *, callback_id: str = "", name: str = "",
               payload: bytes = b"", priority: int = 5, max_retries: int | None = None, timeout_ms="",
               ttl: int = 86400) -> tuple[list, list]:
    """(KEYS, ARGV) of scripts.GROUP; shared with xq.aio."""
    cb_key = qk.task(callback_id) if callback_id else qk.group(group_id)
    return ([qk.group(group_id), cb_key],
            [mode, qk.task_prefix, group_id, callback_id, name, payload, priority,
             "" if max_retries is None else max_retries, timeout_ms, qk.events, qk.name, ttl])


def replay_args(qk: QueueKeys, ids: Sequence, priority: int | None, mode: str = "requeue") -> tuple[list, list]:
    """(KEYS, ARGV) of scripts.REPLAY (mode requeue or remove); shared with xq.aio."""
    return ([qk.dead, qk.wake, *qk.ready],
            [qk.task_prefix, qk.events, qk.name, "" if priority is None else priority, mode, *ids])


def record_args(qk: QueueKeys, task_id: str | bytes, cap: int, capped: Sequence[str]) -> tuple[list, list]:
    """(KEYS, ARGV) of scripts.RECORD; shared with xq.aio."""
    key = qk.task_prefix.encode() + task_id if isinstance(task_id, bytes) else qk.task(task_id)
    return [key], [cap, *capped]


def record_brief(reply) -> tuple[dict, dict]:
    """The reply of scripts.RECORD as Broker.task_brief returns it."""
    fields, out = reply
    return dict(zip(fields[::2], fields[1::2])), {k.decode(): int(n) for k, n in zip(out[::2], out[1::2])}


def peek_rows(reply) -> list[tuple[bytes, float, dict | None, dict]]:
    """The reply of scripts.PEEK as Broker.peek returns it."""
    return [(row[0], float(row[1]), dict(zip(row[2][::2], row[2][1::2])) if row[4] else None,
             {k.decode(): int(n) for k, n in zip(row[3][::2], row[3][1::2])})
            for row in reply]
