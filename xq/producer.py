"""`xq.Producer`: enqueue tasks, read their status, wait for their results."""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import orjson
from redis.exceptions import NoScriptError

from ._impl import fast
from .app import DEFAULT_QUEUE, App, check_seconds
from .broker import DEFAULT_URL, Broker
from .conn import RetryWindow, cannot_persist, classify, parse_url, refuses_writes, translate
from .errors import (ConfigError, ConnectionLost, MalformedRecord, NotReplicated, RedisFull, ResultTimeout, TaskFailed,
                     TaskTrimmed, UnknownTask)
from .flow import flow_args, flow_json
from .keys import (DEFAULT_KEEP, DEFAULT_KEEP_DEAD, DEFAULT_PRIORITY, MAX_RETRIES, PRIORITIES, check_int,
                   check_ms, check_name, check_queue, check_result_ttl, check_task_ids, queue_keys)
from .records import esc, group_view, raw_id, task_view

PRIORITY_NAMES = {"critical": 0, "high": 2, "normal": 5, "low": 8}
DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024
TERMINAL = ("done", "dead", "expired", "canceled")
_ENQUEUE_OPTS = ("queue", "priority", "max_retries", "delay", "eta", "expires", "timeout", "unique_key",
                 "unique_ttl", "ids", "task_id", "depends_on", "on_dependency_failure", "concurrency_key", "max_concurrency",
                 "rate_key", "rate_limit", "result_ttl")
OUTCOME_FIELDS = ("state", "result", "rct", "error")
ETA_PAST_LIMIT = 60.0  # seconds an eta may lie in the past (clock skew) and still mean "run now"
DEAD_READ_FIELDS = 11  # values per task in a DEAD_READ reply (scripts.DEAD_READ), as IMPORT takes them
DEFAULT_RETRY_FOR = 30.0  # seconds a producer retries through a Redis outage before raising ConnectionLost


def retry_window(retry_for: float | None) -> float:
    """retry_for, else $XQ_RETRY_FOR, else DEFAULT_RETRY_FOR: seconds of retrying through an outage."""
    if retry_for is None:
        env = os.environ.get("XQ_RETRY_FOR")
        try:
            retry_for = float(env) if env else DEFAULT_RETRY_FOR
        except ValueError:
            raise ConfigError(f"invalid XQ_RETRY_FOR {env!r}: expected seconds >= 0") from None
    if isinstance(retry_for, bool) or not isinstance(retry_for, (int, float)) or retry_for < 0:
        raise ConfigError(f"invalid retry_for {retry_for!r}: expected seconds >= 0")
    return float(retry_for)


def check_priority(priority) -> int:
    """An integer 0 (highest) .. 9 (lowest), or one of the names critical/high/normal/low."""
    if isinstance(priority, str) and priority in PRIORITY_NAMES:
        return PRIORITY_NAMES[priority]
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority < PRIORITIES:
        raise ConfigError(f"invalid priority {priority!r}: use an integer 0 (highest) to 9 (lowest) "
                          f"or one of {', '.join(PRIORITY_NAMES)}")
    return priority


def _unix(what: str, value) -> float:
    """A datetime (naive = local time) or unix seconds, as unix seconds."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"invalid {what} {value!r}: expected a datetime or unix seconds")
    return float(value)


def timing_args(delay=None, eta=None, expires=None, timeout=None, default_expires=None) -> dict:
    """Check the timing options of an enqueue and turn them into ENQUEUE arguments (ms)."""
    out: dict = {}
    if delay is not None and eta is not None:
        raise ConfigError("give delay= or eta=, not both")
    if delay is not None:
        d = check_seconds("delay", delay, positive=False)
        if d > 0:
            out["delay_ms"] = int(d * 1000)
    elif eta is not None:
        t = _unix("eta", eta)
        ago = time.time() - t
        if ago > ETA_PAST_LIMIT:
            raise ConfigError(f"eta {eta!r} is {ago:.0f} s in the past (more than {ETA_PAST_LIMIT:.0f} s): "
                              f"to run now, leave eta out")
        out["eta_ms"] = int(t * 1000)
    if expires is None:
        expires = default_expires
    if isinstance(expires, dt.datetime):
        t = expires.timestamp()
        if t <= time.time():
            raise ConfigError(f"expires {expires!r} is in the past: the task could never run")
        out["expires_at_ms"] = int(t * 1000)
    elif expires is not None:
        out["expires_in_ms"] = max(1, int(check_seconds("expires", expires) * 1000))
    if timeout is not None:
        out["timeout_ms"] = max(1, int(check_seconds("timeout", timeout) * 1000))
    names = {"delay_ms": "delay", "eta_ms": "eta", "expires_at_ms": "expires", "expires_in_ms": "expires",
             "timeout_ms": "timeout"}
    for k, v in out.items():
        check_ms(names[k], v)
    return out


class Group:
    """A group made by Producer.group(): its id, queue, member ids (in order) and callback id (or None)."""

    __slots__ = ("id", "queue", "ids", "callback")

    def __init__(self, group_id: str, queue: str, ids: list[str], callback: str | None):
        self.id, self.queue, self.ids, self.callback = group_id, queue, ids, callback

    def __repr__(self) -> str:
        return f"Group({self.id!r}, queue={self.queue!r}, {len(self.ids)} tasks, callback={self.callback!r})"


def _script_error(e: Exception) -> Exception:
    """An 'XQ ...' error reply of a script as the xq error it stands for."""
    msg = str(e)
    if msg.startswith("XQ unknown dependency"):
        return UnknownTask(msg[3:])
    if msg.startswith("XQ "):
        return ConfigError(msg[3:])
    return e


# --- enqueue, shared by Producer and aio.AsyncProducer: checks and packing here, I/O in the callers ---
def enqueue_options(app: App | None, name: str, queue, priority, max_retries,
                    opts: dict) -> tuple[str, int, int | None, dict]:
    """(queue, priority, max_retries to store or None, route defaults) of an enqueue of task name."""
    if opts:
        from .app import unknown_option

        raise unknown_option("enqueue option", sorted(opts)[0], list(_ENQUEUE_OPTS))
    check_name(name)
    route = app.route_for(name) if app is not None else {}
    queue = check_queue(queue if queue is not None else route.get("queue", DEFAULT_QUEUE))
    priority = check_priority(priority if priority is not None else route.get("priority", DEFAULT_PRIORITY))
    if max_retries is None:
        # None stores nothing: the worker applies the task's own default (or 3)
        max_retries = route.get("max_retries")
    else:
        check_int("max_retries", max_retries, 0, MAX_RETRIES)
    return queue, priority, max_retries, route


class Prepared(NamedTuple):
    """An enqueue checked and packed, nothing sent yet: what prepare_enqueue returns."""
    name: str
    queue: str
    priority: int
    ids: list            # bytes, one per payload
    commands: list       # packed per chunk: MULTI, its stages' HSET/PEXPIRE, EXEC (if any), then EVALSHA ENQUEUE
    flow: dict           # flow_args
    timing: dict         # timing_args
    starts: tuple = ()  # the index of each command's first id (chunk_starts)
    replies: tuple = ()  # how many replies each command gets (chunk_reply makes them one)

    def chunk_ids(self, i: int) -> list:
        """The ids packed in command i."""
        end = self.starts[i + 1] if i + 1 < len(self.starts) else len(self.ids)
        return self.ids[self.starts[i]:end]

    @property
    def deps(self) -> list[str]:
        return self.flow.get("deps", [])

    def check_deps(self, dep_queues: Sequence[str]) -> None:
        """dep_queues: the queue of each of self.deps (found by the caller, which does the I/O)."""
        for dep, dq in zip(self.deps, dep_queues):
            if dq != self.queue:
                raise ConfigError(f"dependency {dep} is in queue {dq!r}, not {self.queue!r}: a task can only "
                                  f"depend on tasks of its own queue (one Redis Cluster slot, so the hand-over "
                                  f"is atomic)")


def prepare_enqueue(app: App | None, packer, chunk: int, max_payload: int, name: str, payloads: Iterable[Any], *,
                    queue: str | None = None, priority: int | str | None = None, max_retries: int | None = None,
                    delay: float | None = None, eta: dt.datetime | float | None = None,
                    expires: float | dt.datetime | None = None, timeout: float | None = None,
                    depends_on: Sequence[str] | str | None = None, on_dependency_failure: str = "fail",
                    concurrency_key: str | None = None, max_concurrency: int | None = None,
                    rate_key: str | None = None, rate_limit: str | None = None, unique_key: str | None = None,
                    unique_ttl: float | None = None, ids: Sequence[str] | None = None, _group: str | None = None,
                    result_ttl: int | None = None, **opts) -> Prepared:
    """Check every option of an enqueue_many and pack its commands (packer: a Broker, for pack_enqueue).

    Pure CPU, no Redis: the caller then checks the dependencies' queues (Prepared.check_deps), sends
    every command, reads every reply and hands them to finish_enqueue.  Every chunk is encoded and
    packed here, before anything is sent, so a bad payload enqueues nothing."""
    queue, priority, max_retries, route = enqueue_options(app, name, queue, priority, max_retries, opts)
    payloads = payloads if isinstance(payloads, (list, tuple)) else list(payloads)
    flow = flow_args(unique_key=unique_key, unique_ttl=unique_ttl, concurrency_key=concurrency_key,
                     max_concurrency=max_concurrency, rate_key=rate_key, rate_limit=rate_limit,
                     depends_on=depends_on, on_dependency_failure=on_dependency_failure, group=_group,
                     count=len(payloads))
    rttl = result_ttl if result_ttl is not None else route.get("result_ttl")
    if rttl is not None:  # travels with the flow options: the record's 'rttl' (see scripts.retain)
        flow["rt"] = check_result_ttl("result_ttl", rttl)
    timing = timing_args(delay, eta, expires, timeout if timeout is not None else route.get("timeout"),
                         route.get("expires"))
    ids = fast.new_ids(len(payloads)) if ids is None else check_task_ids(ids, len(payloads))
    qk = queue_keys(queue)
    fj = flow_json(flow)
    starts = chunk_starts(payloads, chunk)
    ends = starts[1:] + [len(ids)]
    packed = [packer.pack_enqueue(qk, name, priority, max_retries, ids[i:j], payloads[i:j],
                                  i, max_payload, flow=fj, **timing)
              for i, j in zip(starts, ends)]
    return Prepared(name, queue, priority, ids, [c for c, _ in packed], flow, timing, tuple(starts),
                    tuple(n for _, n in packed))


def _busy(reply) -> bool:
    """Is this reply an error that waiting can fix (a replica's READONLY, NOREPLICAS, LOADING, ...)?"""
    return isinstance(reply, Exception) and not isinstance(reply, NoScriptError) and classify(reply) == "network"


def chunk_reply(replies: Sequence):
    """The one reply of a chunk from the replies of its commands (its stages' MULTI/EXEC, then
    ENQUEUE's): the first error if any (an OOM refusing a stage stored nothing either), else ENQUEUE's."""
    for r in replies:
        if isinstance(r, Exception):
            return r
    return replies[-1]


# Bytes of raw payloads per ENQUEUE command: a chunk closes at `chunk` tasks or once its bytes payloads
# reach this.  Redis runs a command only once all of it has arrived: 40 payloads of 4.3 MB in one command
# (passed through Lua, as they were then) took 0.5-1.6 s to enqueue and 411 MB of Redis' memory at peak,
# and no task could start before the last byte arrived; one command a MiB lets the first tasks run while
# the rest are still on the wire (large payloads are staged besides: see scripts.ENQUEUE).
CHUNK_BYTES = 1 << 20


def chunk_starts(payloads: Sequence, chunk: int, limit: int = CHUNK_BYTES) -> list[int]:
    """The index of each chunk's first payload: at most `chunk` payloads a chunk, and a new one once the
    raw (bytes-like) payloads of the current one reach `limit` bytes (JSON payloads count as nothing: they
    are encoded later, and are rarely large)."""
    starts, size, n = [0] if len(payloads) else [], 0, 0
    for k, p in enumerate(payloads):
        if n == chunk or (size >= limit and n):
            starts.append(k)
            size = n = 0
        if isinstance(p, (bytes, bytearray, memoryview)):
            size += len(p)
        n += 1
    return starts


def check_replicas(url: str, replicas, replicas_timeout, socket_timeout) -> tuple[int, float]:
    """(replicas, replicas_timeout) of a producer, or ConfigError naming the bad one."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ConfigError(f"invalid replicas {replicas!r}: expected a number of replicas >= 0")
    replicas_timeout = check_seconds("replicas_timeout", replicas_timeout, allow_none=False)
    if replicas and parse_url(url).kind == "cluster":
        raise ConfigError("replicas= is not supported on a Redis Cluster (redis+cluster://) yet: a resent enqueue "
                          "could not prove that ids stored by an earlier connection reached a replica")
    if replicas and socket_timeout is not None and replicas_timeout >= socket_timeout:
        raise ConfigError(f"invalid replicas_timeout {replicas_timeout:g}: it must be shorter than socket_timeout "
                          f"({socket_timeout:g} s), or every slow WAIT would count as a lost connection")
    return replicas, replicas_timeout


class Resend:
    """Which chunks of an enqueue are still to be sent, through outages and NOSCRIPT replies (no I/O;
    shared by Producer and AsyncProducer).  A chunk whose reply was read is settled; the others go again,
    which is safe because ENQUEUE skips ids it has.  Once retry_for seconds of retrying are used up,
    pause() raises ConnectionLost saying which ids are stored, which unknown and which never left.

    With replicas > 0 every round ends with tail(): a WAIT on the connection the chunks went on (WAIT
    counts the replicas that have that connection's writes).  After an outage every chunk goes again, on
    the new connection, followed by a PUBLISH of nothing ("[]" on the queue's events channel) before the
    WAIT: ids an earlier connection stored are skipped (no write), and this write, being in the
    replication stream after them, is acknowledged only by a replica that has them too."""

    def __init__(self, prep: Prepared, chunk: int, retry_for: float, replicas: int = 0, replicas_timeout: float = 1.0):
        self.prep, self.chunk, self.retry_for = prep, chunk, retry_for
        self.replies: list = [None] * len(prep.commands)
        self.todo = list(range(len(prep.commands)))
        self.sent: set[int] = set()  # chunks that left at least once: stored or not, only a reply says
        self.window = RetryWindow(retry_for, time.monotonic())  # from the call's start: a stall counts
        self.replicas, self.replicas_timeout = replicas, replicas_timeout
        self.wait = fast.pack_command([b"WAIT", b"%d" % replicas, b"%d" % max(1, round(replicas_timeout * 1000))]) \
            if replicas else b""
        self.sync = b""      # the PUBLISH sent before the WAIT after an outage
        self.busy = None     # settle(): the first reply refusing a chunk for now (READONLY, NOREPLICAS, ...)
        self.acked = None    # the last WAIT's reply: how many replicas have this connection's writes

    def tail(self) -> list[bytes]:
        """The commands sent behind the round's chunks, on the same connection: none, or [sync,] WAIT."""
        return [c for c in (self.sync, self.wait) if c]

    def waited(self, replies: Sequence) -> None:
        """The replies of tail(), in order."""
        if replies:
            for r in replies:
                if isinstance(r, Exception):
                    raise r
            self.acked = replies[-1]

    def check_replicated(self, ids: list[str]) -> None:
        """NotReplicated if fewer replicas than asked for acknowledged the stored tasks (ids)."""
        if self.replicas and (self.acked or 0) < self.replicas:
            n = len(ids)
            raise NotReplicated(
                f"enqueue of {n} {self.prep.name!r} task(s) in queue {self.prep.queue!r}: {self.acked or 0} of "
                f"{self.replicas} replica(s) acknowledged within {self.replicas_timeout:g} s (WAIT); the server "
                f"that took them has them (err.ids), but no replica is known to: if it is being replaced (a "
                f"failover under way, or it was demoted) they are lost. Enqueueing them again with ids=err.ids "
                f"is safe (an id stored already is skipped); check the replicas: INFO replication",
                ids=ids, acked=self.acked or 0,
                wanted=self.replicas)

    def probes(self) -> list[tuple[int, bytes]]:
        """After a round an outage cut: (chunk, EXISTS of every id of it) for each chunk sent but not
        answered.  ENQUEUE is one script, so a chunk all of whose ids have records is stored (by that round,
        or earlier: ENQUEUE would skip them all), and need not go again: without this, a large call on a link
        cut more often than the whole call takes sent everything again each round and never finished.  Not
        with replicas, where every chunk goes again on the new connection for its WAIT (see the class doc)."""
        if self.replicas:
            return []
        qk = queue_keys(self.prep.queue)
        return [(i, fast.pack_command([b"EXISTS", *[qk.task(x) for x in self.prep.chunk_ids(i)]]))
                for i in self.todo if i in self.sent]

    def probed(self, chunks: Sequence[int], counts: Sequence) -> None:
        """The EXISTS counts of probes(): a chunk whose every id has a record is settled as stored."""
        done = {i for i, n in zip(chunks, counts) if n == len(self.prep.chunk_ids(i))}
        for i in done:
            self.replies[i] = len(self.prep.chunk_ids(i))  # as ENQUEUE answers: the count of its ids
        self.todo = [i for i in self.todo if i not in done]

    def settle(self) -> bool:
        """After a round whose replies were all read: keep the chunks answered NOSCRIPT (Redis restarted
        or was flushed) to go again, True if there are any (the caller loads the scripts first); and those
        refused for now (a replica's READONLY, NOREPLICAS, LOADING, ...: conn.classify says 'network'),
        the first such reply in .busy (the caller pauses as for an outage, then sends them again)."""
        self.todo = [i for i in self.todo if isinstance(self.replies[i], NoScriptError) or _busy(self.replies[i])]
        self.busy = next((self.replies[i] for i in self.todo if _busy(self.replies[i])), None)
        return any(isinstance(self.replies[i], NoScriptError) for i in self.todo)

    def pause(self, e: ConnectionLost) -> float:
        """After an outage in a round: the seconds to wait before the next, or ConnectionLost when the
        retry window is used up."""
        self.todo = [i for i in self.todo if self.replies[i] is None or isinstance(self.replies[i], NoScriptError)
                     or _busy(self.replies[i])]
        for i in self.todo:
            self.replies[i] = None
        try:
            pause = self.window.pause(e)
        except ConnectionLost:
            pass
        else:
            if self.replicas:  # everything again, on the new connection: see the class doc
                self.todo, self.replies = list(range(len(self.replies))), [None] * len(self.replies)
                self.sync = fast.pack_command([b"PUBLISH", queue_keys(self.prep.queue).events, b"[]"])
            return pause
        ids = self.prep.ids
        stored, unknown = self.accounts()
        raise ConnectionLost(f"{e}; gave up after {self.retry_for:g} s of retries: of {len(ids)} task(s), "
                             f"{len(stored)} stored, {len(unknown)} unknown (sent, reply lost), "
                             f"{len(ids) - len(stored) - len(unknown)} not sent; repeating the call with "
                             f"ids= these ids stores none twice", url=e.url, stored=stored, unknown=unknown) from e

    def accounts(self) -> tuple[list[str], list[str]]:
        """(ids stored, ids unknown: sent, reply lost) of the chunks so far; the others never left."""
        ids_of = self.prep.chunk_ids  # bytes, as packed
        stored = [x.decode() for i in range(len(self.replies)) if i not in self.todo for x in ids_of(i)]
        unknown = [x.decode() for i in self.todo if i in self.sent for x in ids_of(i)]
        return stored, unknown


def finish_enqueue(prep: Prepared, replies: Sequence, app: App | None) -> tuple[list[str], bool]:
    """(ids, enqueued) from the replies of prep.commands: an error reply raises (as its xq error); a
    bytes reply means the unique key is held, and is that task's id: ([it], False), nothing enqueued.
    Runs the app's on_enqueue hooks after a real enqueue.  A reply refusing writes (OOM: Redis full under
    noeviction; MISCONF: it cannot persist) raises RedisFull naming which ids were stored and which not: nothing is retried behind the caller's back."""
    if any(refuses_writes(r) for r in replies if isinstance(r, Exception)):
        raise _full(prep, replies)
    for reply in replies:
        if isinstance(reply, Exception):
            raise _script_error(reply)
        if isinstance(reply, bytes):
            return [reply.decode()], False
    out = [i.decode() for i in prep.ids]
    if app is not None:
        app.run_enqueue_hooks(prep.name, prep.queue, out, {"priority": prep.priority, **prep.timing, **prep.flow})
    return out, True


def _full(prep: Prepared, replies: Sequence) -> RedisFull:
    stored, not_stored = [], []
    for i, reply in enumerate(replies):
        (not_stored if isinstance(reply, Exception) else stored).extend(x.decode() for x in prep.chunk_ids(i))
    n = len(prep.ids)
    what = ("nothing was stored" if not stored else
            f"of {n} task(s), {len(stored)} were stored (err.stored) and {len(not_stored)} were not (err.not_stored)")
    if any(cannot_persist(r) for r in replies if isinstance(r, Exception)):
        return RedisFull(f"Redis cannot persist to disk (MISCONF: its last RDB save failed and "
                         f"stop-writes-on-bgsave-error is yes): enqueue of {n} {prep.name!r} task(s) refused, "
                         f"{what}; fix the disk (see the Redis log), then enqueue again (ids= makes that safe)",
                         stored=stored, not_stored=not_stored, cause="misconf")
    return RedisFull(f"Redis is full (used memory > maxmemory, policy noeviction): enqueue of {n} {prep.name!r} "
                     f"task(s) refused, {what}; free memory (finish or purge tasks, shorten result_ttl) or raise "
                     f"maxmemory, then enqueue again (ids= makes that safe)", stored=stored, not_stored=not_stored)


# --- enqueue_batch, shared by Producer and aio.AsyncProducer: checks and packing here, I/O in the callers ---
class PreparedBatch(NamedTuple):
    """An enqueue_batch checked and packed: one Prepared per task name and options (a task with a
    unique_key alone), and for each the positions of its tasks in the caller's list."""
    preps: list
    where: list   # list[int] per prep
    count: int


def _frozen(name: str, opts: dict):
    """A hashable key of a task's name and options (lists as tuples), or None when an option will not hash
    (the task then goes alone; prepare_enqueue names what is wrong with it).  Options given in another
    order make another key: those tasks go in separate commands, which is only slower."""
    key = (name, *opts.items())
    try:
        hash(key)
        return key
    except TypeError:
        key = (name, *((k, tuple(v) if isinstance(v, list) else v) for k, v in opts.items()))
    try:
        hash(key)
        return key
    except TypeError:
        return None


def prepare_batch(app: App | None, packer, chunk: int, max_payload: int, tasks: Iterable) -> PreparedBatch:
    """Check every task of an enqueue_batch and pack its commands (see prepare_enqueue); nothing sent.

    tasks: (name, payload) or (name, payload, {options}); the options are enqueue()'s (task_id= for a
    task's own id).  A bad task raises ConfigError naming it (#index), before anything is sent."""
    runs: dict = {}  # key -> (name, options, payloads, given ids or None each, positions)
    given: set = set()
    n = 0
    for i, t in enumerate(tasks):
        n = i + 1
        if not isinstance(t, (tuple, list)) or len(t) not in (2, 3) or not isinstance(t[0], str) \
                or (len(t) == 3 and not isinstance(t[2], dict)):
            raise ConfigError(f"task #{i} (a {type(t).__name__}): expected (name, payload) or "
                              f"(name, payload, {{options}})")
        name, tid, key = t[0], None, t[0]
        opts = t[2] if len(t) == 3 else {}
        if opts:
            if "ids" in opts:
                raise ConfigError(f"task #{i} ({name}): ids= is enqueue_many's option; give the task's own id "
                                  f"as task_id=")
            if "task_id" in opts:
                opts = dict(opts)
                tid = opts.pop("task_id")
                if isinstance(tid, str):  # another type: check_task_ids names it
                    if tid in given:
                        raise ConfigError(f"task #{i} ({name}): task_id {tid!r} is given twice in the batch")
                    given.add(tid)
            key = None if opts.get("unique_key") is not None else _frozen(name, opts)
        run = runs.get(key) if key is not None else None
        if run is None:
            run = runs[key if key is not None else ("#", i)] = (name, opts, [], [], [])
        run[2].append(t[1])
        run[3].append(tid)
        run[4].append(i)
    preps, where = [], []
    for name, opts, payloads, ids, pos in runs.values():
        if any(x is not None for x in ids):
            fresh = iter(x.decode() for x in fast.new_ids(sum(x is None for x in ids)))
            ids = [x if x is not None else next(fresh) for x in ids]
        else:
            ids = None
        try:
            preps.append(prepare_enqueue(app, packer, chunk, max_payload, name, payloads, ids=ids, **opts))
        except ConfigError as e:
            at = f"task #{pos[0]}" if len(pos) == 1 else f"tasks #{pos[0]}, ... ({len(pos)} with these options)"
            raise ConfigError(f"{at} ({name}): {e}") from None
        except (TypeError, ValueError) as e:  # a payload not JSON, or too large: named by its place in the run
            msg = re.sub(r"^payload #(\d+)", lambda m: f"task #{pos[int(m.group(1))]} ({name}): payload", str(e))
            raise type(e)(msg) from None
        where.append(pos)
    return PreparedBatch(preps, where, n)


def finish_batch(batch: PreparedBatch, rss: Sequence[Resend], app: App | None) -> tuple[list[str], list[bool]]:
    """(ids in the caller's order, enqueued or not per prep) from the replies (see finish_enqueue).  A
    refused write (RedisFull) is raised naming the ids stored and not stored across the whole batch."""
    out: list = [None] * batch.count
    enqueued, full, stored = [], None, set()
    for prep, pos, rs in zip(batch.preps, batch.where, rss):
        try:
            ids, ok = finish_enqueue(prep, rs.replies, app)
            stored.update(ids)
        except RedisFull as e:
            full = full or e
            stored.update(e.stored)
            ids, ok = [i.decode() for i in prep.ids], False
        for p, i in zip(pos, ids):
            out[p] = i
        enqueued.append(ok)
    if full is not None:
        full.stored = [i for i in out if i in stored]
        full.not_stored = [i for i in out if i not in stored]
        full.args = (f"{full} [the whole batch of {batch.count}: {len(full.stored)} stored (err.stored), "
                     f"{len(full.not_stored)} not (err.not_stored)]",)
        raise full
    return out, enqueued


def batch_pause(rss: Sequence[Resend], lost: dict) -> float:
    """The seconds to wait after a round in which the Resends in lost (id(Resend) -> ConnectionLost) met an
    outage (Resend.pause); once one has used up its retries, ConnectionLost, naming the ids of the whole
    batch if there are several Resends."""
    pauses, gave_up = [], None
    for rs in rss:
        if id(rs) in lost:
            try:
                pauses.append(rs.pause(lost[id(rs)]))
            except ConnectionLost as e:
                gave_up = gave_up or e
    if gave_up is not None:
        if len(rss) == 1:
            raise gave_up
        raise batch_gave_up(rss, gave_up) from gave_up
    return max(pauses)


def batch_gave_up(rss: Sequence[Resend], e: ConnectionLost) -> ConnectionLost:
    """The ConnectionLost of an enqueue_batch whose retries ran out for a queue: what is stored, unknown
    and never sent across the whole batch (repeating it with the same task_id= each stores none twice)."""
    stored, unknown, n = [], [], 0
    for rs in rss:
        s, u = rs.accounts()
        stored += s
        unknown += u
        n += len(rs.prep.ids)
    return ConnectionLost(f"{e.__cause__ or e}; gave up after {rss[0].retry_for:g} s of retries: "
                          f"of {n} task(s) of the batch, {len(stored)} stored, {len(unknown)} unknown (sent, reply "
                          f"lost), {n - len(stored) - len(unknown)} not sent", url=e.url, stored=stored, unknown=unknown)


def _close_quietly(ps) -> None:
    """Close a PubSub whose connection may be broken already."""
    if ps is not None:
        try:
            ps.close()
        except Exception:  # noqa: BLE001 - a broken connection is being dropped anyway
            pass


def _check_page(offset, limit) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ConfigError(f"invalid offset {offset!r}: expected an integer >= 0")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"invalid limit {limit!r}: expected an integer >= 1")


def id_time(task_id: str) -> float | None:
    """Creation time (unix seconds) embedded in an xq task id, None for a foreign id."""
    if len(task_id) != 26:
        return None
    v = 0
    for ch in task_id[:10]:
        k = _CROCKFORD.find(ch)
        if k < 0:
            return None
        v = v * 32 + k
    return v / 1000.0  # 26 chars carry 130 bits, the top 2 zero: the first 10 are the 48-bit ms timestamp


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


# --- retention: what a missing record means, shared by Producer and AsyncProducer (I/O in them) ---
def retention_view(policy: dict, mark: dict) -> dict:
    """A queue's retention policy and watermark (their HGETALL replies) with the defaults filled in."""
    def num(d, k):
        try:
            return int(d[k])
        except (KeyError, TypeError, ValueError):
            return None
    fin, at = num(mark, b"fin"), num(mark, b"at")
    return {"keep": num(policy, b"keep") or DEFAULT_KEEP, "max_age": num(policy, b"max_age"),
            "keep_dead": num(policy, b"keep_dead") or DEFAULT_KEEP_DEAD,
            "defaults": sorted({"keep", "max_age", "keep_dead"} - {k.decode() for k in policy}),
            "trimmed": num(mark, b"n") or 0, "trimmed_newest": fin / 1000.0 if fin else None,
            "trimmed_at": at / 1000.0 if at else None}


def retention_text(r: dict) -> str:
    """What a retention_view keeps, in words."""
    age = f"{r['max_age']} s" if r["max_age"] else "the result ttl"
    return f"keeps the last {r['keep']} finished per state, for at most {age}"


def missing_task(task_id: str, views: dict[str, dict], where: str) -> UnknownTask:
    """The error for a task id with no record in the queues of views (queue -> retention_view): TaskTrimmed
    when the id was made before the newest record a queue's retention removed (an xq id carries its
    creation time), else UnknownTask (`where` names where it was looked for)."""
    born = id_time(task_id) if isinstance(task_id, str) else None
    for q, r in views.items():
        newest = r["trimmed_newest"]
        if born is not None and newest is not None and born <= newest + 1.0:  # 1 s: clock skew between hosts
            return TaskTrimmed(f"task {task_id!r} was trimmed: it is older than the newest of the {r['trimmed']} "
                               f"finished record(s) removed by the retention of queue {q!r}, which {retention_text(r)} "
                               f"(enqueue with result_ttl= to keep a result longer)", queue=q)
    return UnknownTask(f"no task with id {esc(task_id)!r} {where} (never enqueued, or its record expired)")

# --- event streams, shared by Producer.events and aio.AsyncProducer.events: filtering here, I/O in them ---
EVENT_STATES = ("scheduled", "queued", "waiting", "running", "progress", "retrying", "done", "dead", "expired",
                "canceled", "group_done")


def event_request(ids, states) -> tuple[list[str], dict[str, str], set | None]:
    """(task ids, {group id: queue}, states or None) of an events() call, checked.

    ids: None (every event), a task id, a Group, or an iterable of those."""
    tasks: list[str] = []
    groups: dict[str, str] = {}
    if ids is not None:
        for i in ([ids] if isinstance(ids, (str, Group)) else list(ids)):
            if isinstance(i, Group):
                groups[i.id] = i.queue
            elif isinstance(i, str) and i:
                tasks.append(i)
            else:
                raise ConfigError(f"invalid id {i!r} in ids=: expected task ids (strings) or Groups")
        if not tasks and not groups:
            raise ConfigError("ids= is empty: give None for every event, or the ids to follow")
    if states is not None:
        states = {states} if isinstance(states, str) else set(states)
        bad = sorted(map(repr, states - set(EVENT_STATES)))
        if bad:
            raise ConfigError(f"unknown event state(s) {', '.join(bad)}; known: {', '.join(EVENT_STATES)}")
    return list(dict.fromkeys(tasks)), groups, states


class EventFilter:
    """Which events of a stream to hand out (no I/O).  With until_done, each followed id's stream ends at
    its first terminal event (done, dead, expired, canceled; group_done for a group), synthetic or real,
    and the whole stream is finished once every id's has."""

    def __init__(self, tasks: Sequence[str], groups: Sequence[str], states: set | None, until_done: bool):
        self.ids = set(tasks) | set(groups) or None  # None: every id
        self.groups = set(groups)
        self.states = states
        self.open = set(self.ids or ()) if until_done else None  # ids whose terminal event is still due
        # a payload without any followed id is skipped before JSON parsing, as in result()
        self.needles = [i.encode() for i in self.ids] if self.ids and len(self.ids) <= 16 else None

    @property
    def finished(self) -> bool:
        return self.open is not None and not self.open

    def _take(self, ev: dict) -> bool:
        i = ev.get("id")
        if self.ids is not None and i not in self.ids:
            return False
        if self.open is not None:
            if i not in self.open:
                return False  # ended already (perhaps reported by a synthetic event)
            if ev.get("state") in (("group_done",) if i in self.groups else TERMINAL):
                self.open.discard(i)
        return self.states is None or ev.get("state") in self.states

    def initial(self, tasks: Sequence[tuple], groups: Sequence[tuple]) -> list[dict]:
        """Synthetic events for followed ids that ended before the subscription (until_done only).

        tasks: (id, queue, state, fin) from the records read right after subscribing; groups: (id, queue,
        fired).  Each synthetic event is {"id", "queue", "state", "ts", "synthetic": True}."""
        out = []
        for tid, q, state, fin in tasks:
            if state is None:
                raise UnknownTask(f"no task with id {tid!r} in queue {q!r}: until_done would wait forever")
            if esc(state) in TERMINAL:
                out.append({"id": tid, "queue": q, "state": esc(state),
                            "ts": int(fin) if fin and fin.isdigit() else int(time.time() * 1000), "synthetic": True})
        for gid, q, fired in groups:
            if fired is not None:
                out.append({"id": gid, "queue": q, "state": "group_done",
                            "ts": int(fired) if fired.isdigit() else int(time.time() * 1000), "synthetic": True})
        return [ev for ev in out if self._take(ev)]

    def feed(self, data: bytes) -> list[dict]:
        """The events to hand out from one message of an events channel."""
        if self.needles is not None and not any(n in data for n in self.needles):
            return []
        try:
            events = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []  # not xq's: someone else published on the channel
        if not isinstance(events, list):
            return []
        return [ev for ev in events if isinstance(ev, dict) and self._take(ev)]


class ProducerBase:
    """What Producer and AsyncProducer share without I/O: their settings and the id -> queue cache."""

    def __init__(self, url: str | None, app: App | None, max_payload: int, chunk: int, result_ttl: int,
                 retry_for: float | None = None, replicas: int = 0, replicas_timeout: float = 1.0,
                 socket_timeout: float | None = None):
        self.url = url or os.environ.get("XQ_REDIS_URL") or DEFAULT_URL
        self.retry_for = retry_window(retry_for)
        self.replicas, self.replicas_timeout = check_replicas(self.url, replicas, replicas_timeout, socket_timeout)
        self.app = app
        self.max_payload = max_payload
        self.chunk = chunk
        self.result_ttl = result_ttl  # for records this producer finishes (cancel of a waiting task)
        self._known_queues: set[str] = set()
        self._queue_of: OrderedDict[str, str] = OrderedDict()

    def _cache(self, queue: str, ids) -> None:
        cache = self._queue_of
        for i in ids[-10000:]:
            cache[i] = queue
        while len(cache) > 100_000:
            cache.popitem(last=False)


# --- operations written once for Producer and AsyncProducer: the I/O is yielded, run by each one's driver ---
class Call(NamedTuple):
    """One I/O step of an operation: target.method(*args, **kw), the target a broker (or a node's broker,
    from broker.at) or None for the producer itself; a sync Producer calls it, an AsyncProducer awaits it."""
    target: Any
    method: str
    args: tuple
    kw: dict


def call(target, method: str, *args, **kw) -> Call:
    return Call(target, method, args, kw)


def _given(**kw) -> dict:
    """The keyword arguments that are not None (None: the callee's own default)."""
    return {k: v for k, v in kw.items() if v is not None}


def drive(op, me=None):
    """Run an operation (a generator yielding Calls) with plain calls: make each Call (target None: me)
    and send back its result, or throw in its exception; return the operation's value.  The asyncio
    twin is xq.aio.drive."""
    value, step = None, op.send
    while True:
        try:
            c = step(value)
        except StopIteration as done:
            return done.value
        try:
            value = getattr(me if c.target is None else c.target, c.method)(*c.args, **c.kw)
            step = op.send
        except Exception as e:  # noqa: BLE001 - the operation's to handle (ConnectionLost) or raise
            value, step = e, op.throw


def operation(fn):
    """Mark a generator method of ProducerCore as a public operation: written once (checks, commands,
    parsing, yielding a Call for each I/O step and being sent its result), it becomes a plain method of
    Producer (Producer._drive) and a coroutine method of AsyncProducer (AsyncProducer._drive), with the
    same name, signature and docstring (ProducerCore.__init_subclass__)."""
    fn.xq_operation = True
    return fn


class ProducerCore(ProducerBase):
    """The operations of Producer and AsyncProducer other than enqueueing, results and event streams
    (whose hot paths share prepare_enqueue / finish_enqueue / EventFilter instead), written once as
    generators that yield their I/O (see operation).  A subclass gets each one wrapped by its
    _operation(fn) unless it defines the name itself; tests/test_api_parity.py holds the two public
    APIs equal."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        for name, fn in vars(ProducerCore).items():
            # only where the class would get the bare generator: not over an override, nor wrapped twice
            if getattr(fn, "xq_operation", False) and getattr(cls, name) is fn:
                setattr(cls, name, cls._operation(fn))

    @staticmethod
    def _operation(fn):  # overridden by Producer (sync) and AsyncProducer (coroutine)
        raise NotImplementedError

    def _inspector(self):  # an Inspector / AsyncInspector sharing the producer's broker
        raise NotImplementedError

    # --- groups ---
    @operation
    def group(self, tasks: Sequence, *, then: tuple | None = None, queue: str | None = None) -> Group:
        """Enqueue many tasks as one group and, once every member has ended, one callback task (a chord).

        tasks: (name, payload) or (name, payload, {enqueue options}) tuples; then: (name, payload) or
        (name, payload, {priority, max_retries, timeout}) of the callback, which receives {"group": id,
        "ids": [member ids, in order], "statuses": [their final states], "payload": its own payload}.
        Every member and the callback live in one queue (the first member's, or queue=), so the count
        is atomic: the callback runs exactly once.  Returns a Group (id, member ids, callback id);
        result(group) waits for all members and returns their results in order."""
        items = list(tasks)
        if not items:
            raise ConfigError("a group needs at least one task")
        norm = []
        for i, t in enumerate(items):
            if not isinstance(t, (tuple, list)) or len(t) not in (2, 3) or not isinstance(t[0], str) \
                    or (len(t) == 3 and not isinstance(t[2], dict)):
                raise ConfigError(f"group member #{i} {t!r}: expected (name, payload) or (name, payload, {{options}})")
            try:  # checked here, before the group is opened: a bad member writes nothing
                check_name(t[0])
                if len(t) == 3 and t[2].get("max_retries") is not None:
                    check_int("max_retries", t[2]["max_retries"], 0, MAX_RETRIES)
            except ConfigError as e:
                raise ConfigError(f"group member #{i}: {e}") from None
            norm.append((t[0], t[1], dict(t[2]) if len(t) == 3 else {}))
        # every member goes to queue= if given, else where its own option or its route sends it; all to one
        queues = [o.get("queue") or queue or enqueue_options(self.app, name, None, None, None, {})[0]
                  for name, _p, o in norm]
        queue = check_queue(queue or queues[0])
        for i, (name, _p, o) in enumerate(norm):
            if queues[i] != queue:
                raise ConfigError(f"group member #{i} ({name}) goes to queue {queues[i]!r}, not {queue!r}: a group "
                                  f"lives in one queue (one Redis Cluster slot); pass queue= to group()")
            o["queue"] = queue
        cb = None
        if then is not None:
            if not isinstance(then, (tuple, list)) or len(then) not in (2, 3) or not isinstance(then[0], str):
                raise ConfigError(f"invalid then={then!r}: expected (name, payload) or (name, payload, {{options}})")
            cbo = dict(then[2]) if len(then) == 3 else {}
            bad = set(cbo) - {"priority", "max_retries", "timeout"}
            if bad:
                raise ConfigError(f"callback option(s) {', '.join(sorted(bad))} not supported; allowed: "
                                  f"priority, max_retries, timeout")
            _q, cprio, cmaxr, croute = enqueue_options(self.app, then[0], queue, cbo.get("priority"),
                                                       cbo.get("max_retries"), {})
            ctimeout = cbo.get("timeout", croute.get("timeout"))
            try:
                cpayload = orjson.dumps(then[1])
            except TypeError as e:
                raise ConfigError(f"callback payload cannot be serialized to JSON: {e}") from None
            cb = (fast.new_ids(1)[0].decode(), then[0], cpayload, cprio, cmaxr,
                  timing_args(timeout=ctimeout).get("timeout_ms", ""))
        qk = queue_keys(queue)
        gid = fast.new_ids(1)[0].decode()
        yield call(self.broker, "group", qk, "open", gid)
        ids: list[str] = []
        # consecutive members of one name and options go in one enqueue_many
        run: list = []
        for name, payload, o in norm + [(None, None, None)]:
            if run and (name != run[0][0] or o != run[0][2]):
                ids += (yield call(None, "enqueue_many", run[0][0], [r[1] for r in run], _group=gid, **run[0][2]))
                run = []
            if name is not None:
                run.append((name, payload, o))
        if cb is not None:
            yield call(self.broker, "group", qk, "seal", gid, callback_id=cb[0], name=cb[1], payload=cb[2],
                       priority=cb[3], max_retries=cb[4], timeout_ms=cb[5], ttl=self.result_ttl)
            yield call(None, "_remember", queue, [cb[0]])
        else:
            yield call(self.broker, "group", qk, "seal", gid, ttl=self.result_ttl)
        return Group(gid, queue, ids, cb[0] if cb else None)

    @operation
    def group_status(self, group: Group | str, *, queue: str | None = None) -> dict:
        """A group's progress: total, left (members not ended), finished (bool), callback id."""
        gid, q = (group.id, group.queue) if isinstance(group, Group) else (group, check_queue(queue or DEFAULT_QUEUE))
        h, _ids = yield call(self.broker, "group_state", queue_keys(q), gid)
        if not h:
            raise UnknownTask(f"no group with id {gid!r} in queue {q!r} (never made, or its keys expired)")
        return group_view(gid, q, h)

    # --- one task ---
    @operation
    def status(self, task_id: str, *, queue: str | None = None) -> dict:
        """The task's record: status, attempts, timestamps (unix seconds), worker, error.  A malformed
        record is shown with its bad fields escaped or raw and a "malformed" list of notes (see
        xq.records); an id that is not UTF-8 may be given as listings show it (backslash escapes)."""
        q = yield call(None, "_find", task_id, queue)
        raw = raw_id(task_id)
        rec = yield call(self.broker, "task_record", queue_keys(q), raw)
        if not rec:
            raise (yield call(None, "_missing", task_id, [q]))
        return Producer._status_of(raw, q, rec)

    @operation
    def cancel(self, task_id: str, *, queue: str | None = None) -> str:
        """Cancel a task, wherever it is.  Returns what happened:

        "canceled"  it was queued, scheduled or retrying: status `canceled`, it never runs;
        "canceling" it is running: its supervisor interrupts the handler (xq.Cancelled is raised in it, the
                    child is killed after a grace if it does not stop) and records `canceled`;
        "finished"  it had already ended (done, dead, expired or canceled): nothing changes.
        Raises UnknownTask for an id with no record."""
        q = yield call(None, "_find", task_id, queue)
        outcome, _before = yield call(self.broker, "cancel", queue_keys(q), task_id, self.result_ttl)
        if outcome == "unknown":
            raise UnknownTask(f"cannot cancel {task_id!r}: no task with that id in queue {q!r}")
        return outcome

    # --- workers, queues, task listings, retention, pause / resume (xq.inspect's Inspector / AsyncInspector) ---
    @operation
    def workers(self) -> list[dict]:
        """The live supervisors' registry records, newest heartbeat first (see Inspector.workers)."""
        return (yield call(self._inspector(), "workers"))

    @operation
    def worker(self, worker_id: str) -> dict | None:
        """One live supervisor's registry record, or None (see Inspector.worker)."""
        return (yield call(self._inspector(), "worker", worker_id))

    @operation
    def queues(self, by_name: bool = False) -> list[dict]:
        """The counts of every queue (see Inspector.queues)."""
        return (yield call(self._inspector(), "queues", by_name=by_name))

    @operation
    def queue(self, queue: str = DEFAULT_QUEUE, by_name: bool = False, sample: int | None = None) -> dict:
        """One queue's counts per state and its latency, read in one round trip (see Inspector.queue;
        sample None: its default)."""
        return (yield call(self._inspector(), "queue", queue, by_name=by_name, **_given(sample=sample)))

    @operation
    def tasks(self, queue: str, state: str, *, name: str | None = None, offset: int = 0, limit: int = 50,
              scan: int | None = None) -> dict:
        """One page of a queue's tasks in one state (see Inspector.tasks; scan None: its default)."""
        return (yield call(self._inspector(), "tasks", queue, state, name=name, offset=offset, limit=limit,
                           **_given(scan=scan)))

    @operation
    def retention(self, queue: str = DEFAULT_QUEUE) -> dict:
        """The queue's retention policy and what it removed (see Inspector.retention)."""
        return (yield call(self._inspector(), "retention", queue))

    @operation
    def set_retention(self, queue: str = DEFAULT_QUEUE, *, keep: int | None = None, max_age: int | None = None,
                      keep_dead: int | None = None, reset: bool = False) -> dict:
        """Set the queue's retention policy: keep, max_age, keep_dead, reset (see Inspector.set_retention)."""
        return (yield call(self._inspector(), "set_retention", queue, keep=keep, max_age=max_age,
                           keep_dead=keep_dead, reset=reset))

    @operation
    def history(self, queue: str = DEFAULT_QUEUE, *, name: str | None = None, minutes: int = 60,
                now: float | None = None) -> list[dict]:
        """A queue's (or one task name's) per-minute stats history (see Inspector.history)."""
        return (yield call(self._inspector(), "history", queue, name=name, minutes=minutes, now=now))

    @operation
    def pause_queue(self, queue: str = DEFAULT_QUEUE) -> bool:
        """Pause the queue: no supervisor claims from it until resume_queue (see Inspector.pause_queue).
        Returns False if it was paused already."""
        return (yield call(self._inspector(), "pause_queue", queue))

    @operation
    def resume_queue(self, queue: str = DEFAULT_QUEUE) -> bool:
        """Resume a paused queue (idle supervisors wake at once).  Returns False if it was not paused."""
        return (yield call(self._inspector(), "resume_queue", queue))

    @operation
    def paused(self, queue: str = DEFAULT_QUEUE) -> bool:
        """Is the queue paused?"""
        return (yield call(self._inspector(), "paused", queue))

    # --- dead letters and schedules ---
    def _page(self, queue: str, offset: int, limit: int, which: str):
        """status() of each id of one page of a sorted set (records gone meanwhile are skipped), read in
        one round trip with each field cut at 1 MiB (see Broker.peek; a cut one is named in "truncated")."""
        qk = queue_keys(check_queue(queue))
        _check_page(offset, limit)
        rows = yield call(self.broker, "peek", getattr(qk, which), qk, offset, limit)
        return [task_view(task_id, queue, rec, cut, id_time=id_time)
                for task_id, _score, rec, cut in rows
                if rec is not None]  # None: purged, or expired, meanwhile

    @operation
    def dead_letters(self, queue: str = DEFAULT_QUEUE, *, offset: int = 0, limit: int = 100) -> list[dict]:
        """One page of the queue's dead-letter set, oldest first: each entry is status() of the task
        (a malformed record is shown escaped, with a "malformed" note: see xq.records)."""
        return (yield from self._page(queue, offset, limit, "dead"))

    @operation
    def scheduled(self, queue: str = DEFAULT_QUEUE, *, offset: int = 0, limit: int = 100) -> list[dict]:
        """One page of the queue's scheduled and retrying tasks, soonest due first: status() of each."""
        return (yield from self._page(queue, offset, limit, "sched"))

    @operation
    def dead_count(self, queue: str = DEFAULT_QUEUE) -> int:
        """How many tasks the queue's dead-letter set holds."""
        return (yield call(self.broker, "dead_count", queue_keys(check_queue(queue))))

    @operation
    def replay(self, queue: str = DEFAULT_QUEUE, ids: Sequence[str] | None = None, *,
               priority: int | str | None = None, to_queue: str | None = None,
               progress: Callable[[int, int | None], None] | None = None, chunk: int = 1000) -> list[str]:
        """Put dead tasks back to work: all of them (ids=None) or those ids; optionally at a new priority
        and/or into another queue.  Each gets its full retry budget again; its attempt numbers go on
        (xq.current().attempt of the first run after a replay is one more than the last before it, so no
        attempt is ever confused with an earlier one), its history is kept and its replay count goes up
        by one, in the same queue or another (name, payload, priority, max_retries, timeout and result ttl
        are kept too).  Returns the ids replayed; ids not in the dead-letter set are skipped, and
        replaying an empty set returns [].  progress(done, total) is called after each round trip.  Into
        another queue, tasks move in chunks of `chunk` (at most 5,000), copy first, original removed
        after: a replay cut short (a crash, an outage past retry_for) may leave a task in both queues,
        never in neither, and running it again finishes the move without copying anything twice
        (docs/design.md, "Bulk operations")."""
        qk = queue_keys(check_queue(queue))
        prio = None if priority is None else check_priority(priority)
        check_int("chunk", chunk, 1, 5000)
        if to_queue is not None:
            check_queue(to_queue)
            if to_queue == queue:
                to_queue = None
        if ids is not None:  # an id as listed (escaped if it is not UTF-8) to the bytes Redis holds
            ids = [raw_id(i) for i in ([ids] if isinstance(ids, str) else ids)]
        if to_queue is not None:
            return (yield from self._move_dead(qk, ids, prio, queue_keys(to_queue), progress, chunk))
        if ids is None:
            return (yield from self._replay_all(qk, prio, progress, chunk))
        done: list[str] = []
        for i in range(0, len(ids), 500):
            done += (yield call(self.broker, "replay", qk, list(ids[i:i + 500]), prio))
            if progress:
                progress(min(i + 500, len(ids)), len(ids))
        return done

    def _replay_all(self, qk, prio: int | None, progress, chunk: int):
        """Replay every dead letter of qk in place: REPLAY 'head' calls of `chunk` ids, BULK_DEPTH a round
        trip, as many as the set held at the start (tasks dying meanwhile stay dead).  Safe to retry: a
        call only ever takes what is still in the set."""
        from .inspect import BULK_DEPTH

        total = yield call(self.broker, "dead_count", qk)
        done: list[str] = []
        looked = 0
        window = RetryWindow(self.retry_for)
        while looked < total:  # bounded: each round takes >= 1 of the `total` entries
            left = total - looked
            sizes = [min(chunk, left - k * chunk) for k in range(BULK_DEPTH) if left > k * chunk]
            try:
                node = yield call(self.broker, "at", qk.name)
                replies = yield call(node, "exchange", [node.pack_replay_head(qk, n, prio) for n in sizes])
            except ConnectionLost as e:
                yield call(None, "_sleep", window.pause(e))
                continue
            done += [esc(i) for part in replies for i in part]
            looked += sum(sizes)
            if progress:
                progress(min(looked, total), total)
        return done

    def _move_dead(self, qk, ids: list[bytes] | None, prio: int | None, tqk, progress, chunk: int):
        """Move dead letters of qk (all, or those ids) into tqk's ready lists.  The queues live in different
        hash slots, so each round is three round trips of BULK_DEPTH pipelined script calls: read chunks
        (DEAD_READ), write copies into the target (IMPORT), then remove the originals (REPLAY 'remove').
        A failure after the write leaves both; a round retried (or a replay run again) re-reads them, IMPORT
        skips the ids the target has, and the remove finishes the move: at-least-once, never lost."""
        from .inspect import BULK_DEPTH

        broker = self.broker
        yield call(None, "_remember", tqk.name, [])
        total = len(ids) if ids is not None else (yield call(broker, "dead_count", qk))
        moved: list[str] = []
        looked = kept = 0  # kept: dead letters left at the head of the set (no name to copy them by)
        window = RetryWindow(self.retry_for)
        w = DEAD_READ_FIELDS
        while looked < total:  # bounded: each round looks at >= 1 of the `total` ids, or ends the loop
            try:
                src = yield call(broker, "at", qk.name)  # on a Cluster: two masters, maybe
                dst = yield call(broker, "at", tqk.name)
                if ids is None:
                    left = total - looked
                    reads = [broker.pack_dead_read(qk, kept + k * chunk, min(chunk, left - k * chunk))
                             for k in range(BULK_DEPTH) if left > k * chunk]
                    n = None
                else:
                    part = ids[looked:looked + chunk * BULK_DEPTH]
                    reads = [broker.pack_dead_read(qk, 0, 0, part[k:k + chunk]) for k in range(0, len(part), chunk)]
                    n = len(part)
                chunks = yield call(src, "exchange", reads)
                yield call(dst, "exchange", [broker.pack_import(tqk, prio, c[0]) for c in chunks if c[0]])
                # the copies are stored: only now may the originals go
                gone = yield call(src, "exchange", [broker.pack_remove_dead(qk, c[0][::w] + c[1])
                                                    for c in chunks if c[0] or c[1]])
            except ConnectionLost as e:
                yield call(None, "_sleep", window.pause(e))
                continue
            moved += [esc(i) for part in gone for i in part]
            n = sum(c[3] for c in chunks) if n is None else n
            kept += sum(c[2] for c in chunks)
            looked += n
            if progress:
                progress(min(looked, total), total)
            if not n:
                break
        self._cache(tqk.name, moved)
        return moved

    @operation
    def purge_dead(self, queue: str = DEFAULT_QUEUE, ids: Sequence[str] | None = None) -> list[str] | int:
        """Delete every task in the queue's dead-letter set and return how many; or, given ids, delete those
        of them still dead (500 a script call) and return their ids (others are skipped)."""
        qk = queue_keys(check_queue(queue))
        if ids is None:
            return (yield call(self.broker, "purge_dead", qk))
        raw = [raw_id(i) for i in ([ids] if isinstance(ids, str) else ids)]
        gone: list[str] = []
        for i in range(0, len(raw), 500):
            node = yield call(self.broker, "at", qk.name)
            gone += [esc(t) for t in (yield call(node, "exchange", [node.pack_remove_dead(qk, raw[i:i + 500])]))[0]]
        return gone

    # --- bulk deletes (xq.inspect's operations, shared with Inspector) ---
    @operation
    def flush(self, queue: str, state: str, *, progress: Callable[[int, int | None], None] | None = None,
              chunk: int = 1000) -> int:
        """Delete every task of the queue in state queued, scheduled, retrying or dead; returns how many
        (see Inspector.flush)."""
        from .inspect import op_flush

        return (yield from op_flush(self.broker, queue, state, progress, chunk, self.result_ttl))

    @operation
    def delete_queue(self, queue: str, *, progress: Callable[[int, int | None], None] | None = None) -> dict:
        """Delete every key of the queue and its entry in xq:queues; returns counts (see
        Inspector.delete_queue)."""
        from .inspect import BULK_CHUNK, op_delete_queue

        return (yield from op_delete_queue(self.broker, queue, progress, BULK_CHUNK))


class Producer(ProducerCore):
    """Enqueues tasks into Redis and reads their state; one per process is plenty (not thread-safe).

    Through a Redis outage (connection refused, cut, timed out) every call retries for retry_for seconds
    (default: $XQ_RETRY_FOR, else 30), with jittered backoff, then raises xq.ConnectionLost.  Retries
    never duplicate a task: ids are made here, and the enqueue script skips ids it already has.

    replicas: durability of enqueues.  Redis replicates asynchronously: an enqueue is acknowledged once the
    master has it, and a failover (the master lost, a replica promoted by Sentinel or the Cluster) loses
    the acknowledged writes no replica had received yet.  With replicas=N (N > 0), enqueue / enqueue_many
    (and group) return only after N replicas have the tasks (Redis' WAIT, on the connection that wrote
    them), waiting at most replicas_timeout seconds; fewer in time raise xq.NotReplicated: the server that
    took the tasks has them, but if it is an old master being replaced they are lost, so enqueue them again
    with ids=err.ids (stored ids are skipped) once Redis is settled.  That narrows the loss to a failover promoting a replica that had
    not acknowledged (Sentinel prefers the most up-to-date one) and to every server holding them failing
    together; WAIT makes no write synchronous, and a replica can still lose it on restart.  Costs a round
    trip to a replica per call.  One Redis or Sentinel set; refused on a Cluster."""

    def __init__(self, url: str | None = None, *, app: App | None = None,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, chunk: int = 1000, result_ttl: int = 86400,
                 retry_for: float | None = None, socket_timeout: float = 30.0, replicas: int = 0,
                 replicas_timeout: float = 1.0):
        super().__init__(url, app, max_payload, chunk, result_ttl, retry_for, replicas, replicas_timeout,
                         socket_timeout)
        # socket_timeout: how long a reply may take before the connection counts as lost (a stalled peer)
        self.broker = Broker(self.url, retry_for=self.retry_for, socket_timeout=socket_timeout)
        self._pubsub = None

    def close(self) -> None:
        self._close_pubsub()
        self.broker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- enqueue ---
    def _remember(self, queue: str, ids) -> None:
        if queue not in self._known_queues:
            try:
                self.broker.register_queue(queue)
            except RedisFull:  # the tasks are stored; a later enqueue registers the queue
                return self._cache(queue, ids)
            self._known_queues.add(queue)
        self._cache(queue, ids)

    def enqueue(self, name: str, payload: Any = None, *, queue: str | None = None,
                priority: int | str | None = None, max_retries: int | None = None, delay: float | None = None,
                eta: dt.datetime | float | None = None, expires: float | dt.datetime | None = None,
                timeout: float | None = None, unique_key: str | None = None, unique_ttl: float | None = None,
                task_id: str | None = None, result_ttl: int | None = None, **opts) -> str:
        """Enqueue one task; returns its id (task_id if given).  See enqueue_many for the options.

        unique_key: while a task enqueued with this key (in this queue) has not ended (done, dead, expired,
        canceled), and at most unique_ttl seconds if given, enqueueing another returns the first one's id
        and enqueues nothing.  Without unique_ttl the key is held until the task ends, however long."""
        return self.enqueue_many(name, [payload], queue=queue, priority=priority, max_retries=max_retries,
                                 delay=delay, eta=eta, expires=expires, timeout=timeout, unique_key=unique_key,
                                 unique_ttl=unique_ttl, ids=None if task_id is None else [task_id],
                                 result_ttl=result_ttl, **opts)[0]

    def enqueue_many(self, name: str, payloads: Iterable[Any], *, queue: str | None = None,
                     priority: int | str | None = None, max_retries: int | None = None,
                     delay: float | None = None, eta: dt.datetime | float | None = None,
                     expires: float | dt.datetime | None = None, timeout: float | None = None,
                     depends_on: Sequence[str] | str | None = None, on_dependency_failure: str = "fail",
                     concurrency_key: str | None = None, max_concurrency: int | None = None,
                     rate_key: str | None = None, rate_limit: str | None = None,
                     ids: Sequence[str] | None = None, _group: str | None = None, result_ttl: int | None = None,
                     **opts) -> list[str]:
        """Enqueue one task per payload, pipelined in chunks; returns their ids in order.

        queue/priority/max_retries/timeout/expires default to the app's route for the task name (with
        Producer(app=...)), else the default queue, priority 5 and 3 retries.
        priority: 0 (highest) .. 9 or critical/high/normal/low; max_retries: attempts after the first;
        delay (seconds) or eta (datetime or unix seconds): status `scheduled` until then; expires (seconds
        from now, or a datetime): not started by then, the task becomes `expired` and never runs;
        timeout: seconds an attempt may run.
        depends_on: ids of tasks in the same queue; the tasks wait (status `waiting`) until all of them are
        done; if one ends otherwise (dead, expired, canceled) they die with a reason naming it, unless
        on_dependency_failure="run".  concurrency_key + max_concurrency: at most that many tasks with the
        key run at once, across all machines.  rate_key + rate_limit ("100/s", "5/m", "1/h"): at most that
        many starts of tasks with the key per period.
        ids: the tasks' ids, one per payload (default: new ones, see xq.new_ids).  A task whose id has a
        record in the queue already is not stored again, so a call that raised ConnectionLost can be
        repeated with the same ids (e.g. `ids=err.stored + err.unknown` plus the rest) without duplicates.
        result_ttl: whole seconds the tasks' finished records are kept (instead of the supervisor's
        --result-ttl), and not removed by the queue's retention count (see retention()): for results read
        long after the task ended.
        Every payload is encoded and checked before anything is sent, so a bad payload enqueues nothing.
        """
        broker = self.broker
        prep = prepare_enqueue(self.app, broker, self.chunk, self.max_payload, name, payloads, queue=queue,
                               priority=priority, max_retries=max_retries, delay=delay, eta=eta, expires=expires,
                               timeout=timeout, depends_on=depends_on, on_dependency_failure=on_dependency_failure,
                               concurrency_key=concurrency_key, max_concurrency=max_concurrency,
                               rate_key=rate_key, rate_limit=rate_limit, ids=ids, _group=_group,
                               result_ttl=result_ttl, **opts)
        prep.check_deps([self._find(dep, None) for dep in prep.deps])
        rs = self._send([prep])[0]
        out, enqueued = finish_enqueue(prep, rs.replies, self.app)
        self._remember(prep.queue, out)
        if enqueued:
            rs.check_replicated(out)
        return out

    def enqueue_batch(self, tasks: Iterable[Sequence]) -> list[str]:
        """Enqueue tasks of any names into any queues in one go; returns their ids in the order given.

        tasks: (name, payload) or (name, payload, {options}) tuples, the options those of enqueue() (queue,
        priority, delay, task_id, unique_key, depends_on, ...); each task goes to its queue= option, else
        its route's, else the default queue.  Tasks of one name and options are enqueued together, as one
        enqueue_many would (a task with a unique_key alone: its id is the holder's if the key is held).
        Every task is checked and packed before anything is sent, so a bad one enqueues nothing.  Then
        every queue's chunks are written before any reply is read: on a Cluster the masters of the queues'
        slots work in parallel, in one round trip each.  Outages are retried as in enqueue_many, per
        queue; once retry_for is used up, xq.ConnectionLost names which ids of the whole batch are stored
        and which unknown, and repeating the batch with each task's task_id= stores none twice."""
        batch = prepare_batch(self.app, self.broker, self.chunk, self.max_payload, tasks)
        for prep in batch.preps:
            prep.check_deps([self._find(dep, None) for dep in prep.deps])
        rss = self._send(batch.preps)
        out, enqueued = finish_batch(batch, rss, self.app)
        for prep, pos in zip(batch.preps, batch.where):
            self._remember(prep.queue, [out[p] for p in pos])
        for rs, pos, ok in zip(rss, batch.where, enqueued):
            if ok:
                rs.check_replicated([out[p] for p in pos])
        return out

    def _send(self, preps: Sequence[Prepared]) -> list[Resend]:
        """Every prep's commands sent, each resent through an outage as its Resend says.  Each goes on the
        raw connection of its queue's node (on a Cluster: the master of its slot, now); every node's
        commands are written before any node's reply is read, so the nodes work in parallel; with
        replicas, WAITs behind them on the same connection."""
        rss = [Resend(p, self.chunk, self.retry_for, self.replicas, self.replicas_timeout) for p in preps]
        while True:
            todo = [rs for rs in rss if rs.todo]
            if not todo:
                return rss
            lost: dict[int, ConnectionLost] = {}  # id(Resend) -> the outage it met this round
            nodes: dict[int, tuple[Broker, list[Resend]]] = {}
            for rs in todo:
                try:
                    node = self.broker.at(rs.prep.queue)
                except ConnectionLost as e:
                    lost[id(rs)] = e
                    continue
                nodes.setdefault(id(node), (node, []))[1].append(rs)
            for node, group in nodes.values():
                try:
                    probes = [(rs, rs.probes()) for rs in group]  # after an outage: what the cut round
                    cmds = [c for _, ps in probes for _, c in ps]     # stored goes no more
                    if cmds:  # with the scripts loaded in the same round trip: a Redis that never answered
                        load = node.pack_load_scripts()               # a round may lack them
                        got = iter(node.exchange(load + cmds)[len(load):])
                        for rs, ps in probes:
                            if ps:
                                rs.probed([i for i, _ in ps], [next(got) for _ in ps])
                    for rs in group:
                        for i in rs.todo:
                            node.send_packed(rs.prep.commands[i])
                            rs.sent.add(i)
                    for rs in group:
                        for c in rs.tail():
                            node.send_packed(c)
                except ConnectionLost as e:
                    lost.update((id(rs), e) for rs in group)
            for node, group in nodes.values():
                if id(group[0]) in lost:
                    continue
                try:
                    for rs in group:
                        for i in rs.todo:
                            rs.replies[i] = chunk_reply([node.read_reply() for _ in range(rs.prep.replies[i])])
                    for rs in group:
                        rs.waited([node.read_reply() for _ in rs.tail()])
                    if [rs for rs in group if rs.settle()]:
                        node.load_scripts()
                    busy = next((rs.busy for rs in group if rs.busy is not None), None)
                    if busy is not None:
                        raise translate(busy, node.url)
                except ConnectionLost as e:
                    lost.update((id(rs), e) for rs in group)
            if lost:
                time.sleep(batch_pause(rss, lost))

    # --- inspection ---
    def _find(self, task_id: str, queue: str | None) -> str:
        if queue is not None:
            return check_queue(queue)
        q = self._queue_of.get(task_id)
        if q is None:
            queues = self.broker.queues()
            q = self.broker.find_queue(task_id, queues)
            if q is None:
                raise self._missing(task_id, queues)
            self._cache(q, [task_id])  # bounded: a long-lived server (xq web) looks up many ids
        return q

    def _missing(self, task_id: str, queues: Sequence[str]) -> UnknownTask:
        """The error for a task with no record in queues: TaskTrimmed if a queue's retention removed it."""
        marks = self.broker.retention([queue_keys(q) for q in queues])
        views = {q: retention_view(*pm) for q, pm in zip(queues, marks)}
        return missing_task(task_id, views, f"in queue {queues[0]!r}" if len(queues) == 1 else "in any queue")

    @staticmethod
    def _status_of(task_id: str | bytes, q: str, rec: dict) -> dict:
        """status() of a task's record (its HGETALL reply); shared with AsyncProducer.  A malformed record
        is shown, never raised on: see xq.records.task_view."""
        if not rec:
            raise UnknownTask(f"no task with id {esc(task_id)!r} in queue {q!r} (never enqueued, or its "
                              f"record expired)")
        return task_view(task_id, q, rec, id_time=id_time)

    @staticmethod
    def _decode_result(rec: dict, task_id: str = "?") -> Any:
        data = rec.get(b"result")
        if rec.get(b"rct") == b"b":
            return data
        try:
            return orjson.loads(data) if data else None
        except orjson.JSONDecodeError as e:
            raise MalformedRecord(f"task {task_id}: its result is not JSON ({e}): {esc(data[:200])!r}") from None

    def _terminal(self, task_id: str, q: str):
        """(True, value) if the task has finished (raises TaskFailed for a failure), else (False, None)."""
        rec = self.broker.records(queue_keys(q), [task_id], *OUTCOME_FIELDS)[0]  # through broker.io: xq's errors
        if rec[0] is None:
            raise self._missing(task_id, [q])
        return self._outcome(task_id, q, rec)

    @classmethod
    def _outcome(cls, task_id: str, q: str, rec) -> tuple[bool, Any]:
        """_terminal() of the OUTCOME_FIELDS of a record; shared with AsyncProducer."""
        state, result, rct, error = rec
        if state is None:
            raise UnknownTask(f"no task with id {task_id!r} in queue {q!r}")
        if state == b"done":
            return True, cls._decode_result({b"result": result, b"rct": rct}, task_id)
        if state in (b"dead", b"expired", b"canceled"):
            raise TaskFailed(task_id, state.decode(), esc(error or b""))
        return False, None

    def _subscribe(self, channel: str) -> None:
        """Subscribe the producer's one Pub/Sub connection (shared by every wait) and wait for Redis to
        confirm, so no event published after this returns is missed."""
        if self._pubsub is None:
            self._pubsub, _early = self.broker.subscribe_events([channel])
        elif channel.encode() not in self._pubsub.channels:
            self.broker.subscribe_events([channel], ps=self._pubsub)

    def _next_message(self, channel: str, timeout: float):
        """The next message on the producer's subscription, or None after timeout seconds, or None at once
        after an outage: the subscription is made anew (retrying for retry_for seconds, else
        ConnectionLost) and the caller reads again the state it waits for, as events of the gap are lost."""
        try:
            self._subscribe(channel)
            return self.broker.next_message(self._pubsub, timeout)
        except ConnectionLost:
            self._close_pubsub()
            self._subscribe(channel)
            return None

    def _close_pubsub(self) -> None:
        ps, self._pubsub = self._pubsub, None
        _close_quietly(ps)

    def result(self, task_id: "str | Group", timeout: float | None = None, *, queue: str | None = None) -> Any:
        """Wait for the task to finish and return its result, without polling.

        Subscribes to the queue's event channel before reading the state, so a completion between the
        two cannot be missed.  Raises TaskFailed if the task failed, ResultTimeout after timeout seconds.
        For a Group: waits until every member has ended and returns their results in order, raising
        TaskFailed for the first member that did not succeed.
        """
        if isinstance(task_id, Group):
            return self._group_result(task_id, timeout)
        q = self._find(task_id, queue)
        channel = queue_keys(q).events
        self._subscribe(channel)
        deadline = None if timeout is None else time.monotonic() + timeout
        done, value = self._terminal(task_id, q)
        if done:
            return value
        needle = task_id.encode()
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ResultTimeout(f"task {task_id} did not finish within {timeout} s")
            msg = self._next_message(channel, left if left is not None else 3600.0)
            if msg is None:  # a timeout, or an outage whose events are lost: look at the record
                done, value = self._terminal(task_id, q)
                if done:
                    return value
                continue
            if msg["type"] != "message" or needle not in msg["data"]:
                continue
            for ev in orjson.loads(msg["data"]):
                if ev["id"] == task_id and ev["state"] in TERMINAL:
                    if "result" in ev:  # a small JSON result travels in the event: no read needed
                        return ev["result"]
                    done, value = self._terminal(task_id, q)
                    if done:
                        return value

    def _group_result(self, group: "Group", timeout: float | None) -> list:
        qk = queue_keys(group.queue)
        self._subscribe(qk.events)
        deadline = None if timeout is None else time.monotonic() + timeout
        needle = group.id.encode()
        while b"fired" not in self.broker.group_state(qk, group.id)[0]:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ResultTimeout(f"group {group.id} did not finish within {timeout} s")
                msg = self._next_message(qk.events, left if left is not None else 3600.0)
                if msg is None or (msg["type"] == "message" and needle in msg["data"]):
                    break  # news of the group, or a timeout or an outage: look at its state
        records = self.broker.records(qk, group.ids, *OUTCOME_FIELDS)
        gone = next((tid for tid, rec in zip(group.ids, records) if rec[0] is None), None)
        if gone is not None:  # a member's record was trimmed (a group larger than the queue's retention keeps)
            raise self._missing(gone, [group.queue])
        return self._group_values(group.ids, records)

    @classmethod
    def _group_values(cls, ids: Sequence[str], records: Sequence) -> list:
        """The results of a finished group's members (OUTCOME_FIELDS of each); shared with AsyncProducer."""
        out = []
        for tid, (state, result, rct, error) in zip(ids, records):
            if state != b"done":
                raise TaskFailed(tid, esc(state or b"gone"), esc(error or b""))
            out.append(cls._decode_result({b"result": result, b"rct": rct}, tid))
        return out

    # --- event streams ---
    def events(self, ids=None, queues: Sequence[str] | str | None = None, states: Sequence[str] | str | None = None,
               timeout: float | None = None, *, until_done: bool = False):
        """An iterator over the events of the chosen tasks and queues, as dicts {"id", "queue", "state",
        "ts", ...} (see docs/protocol.md), in the order Redis published them.

        ids: task ids and/or Groups to follow (None: every event of the queues); queues: the queues to
        listen to (default: those of ids, else "default"); states: only events in these states;
        timeout: stop after that many seconds in all (None: never; or break out of the loop).
        until_done (ids required): stop once every id has ended (done, dead, expired, canceled; a
        Group: group_done); ids that had ended before the call get one synthetic event each
        ({..., "synthetic": True}), and an id's events after its end are not reported.
        Subscribes on its own connection, confirmed before this returns (nothing published after the
        call is missed); the connection is closed when the iterator ends or is closed (break / del)."""
        tasks, groups, states = event_request(ids, states)
        if until_done and not (tasks or groups):
            raise ConfigError("until_done needs ids= (it stops once every one of them has ended)")
        if queues is None:
            qs = sorted({self._find(t, None) for t in tasks} | set(groups.values())) or [DEFAULT_QUEUE]
        else:
            qs = list(dict.fromkeys(check_queue(q) for q in ([queues] if isinstance(queues, str) else queues)))
        where = {t: self._find(t, qs[0] if len(qs) == 1 else None) for t in tasks} if until_done else {}
        for t, q in where.items():
            if q not in qs:
                raise ConfigError(f"task {t} is in queue {q!r}, which is not among queues={qs}")
        filt = EventFilter(tasks, list(groups), states, until_done)
        channels = [queue_keys(q).events for q in qs]
        ps, early = self.broker.subscribe_events(channels)
        try:
            first = filt.initial(self._event_states(where), self._group_states(groups)) if until_done else []
        except BaseException:
            ps.close()
            raise
        return self._event_stream(ps, channels, early, filt, first, timeout, where, groups)

    def _event_states(self, where: dict) -> list[tuple]:
        by_queue: dict[str, list[str]] = {}
        for t, q in where.items():
            by_queue.setdefault(q, []).append(t)
        return [(t, q, state, fin) for q, ts in by_queue.items()
                for t, (state, fin) in zip(ts, self.broker.records(queue_keys(q), ts, "state", "fin"))]

    def _group_states(self, groups: dict) -> list[tuple]:
        return [(g, q, self.broker.groups_fired(queue_keys(q), [g])[0]) for g, q in groups.items()]

    def _event_stream(self, ps, channels: list, early: list, filt: EventFilter, first: list,
                      timeout: float | None, where: dict, groups: dict):
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            yield from first
            for msg in early:
                yield from filt.feed(msg["data"])
            while not filt.finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                try:
                    msg = self.broker.next_message(ps, min(left, 3600.0) if left is not None else 3600.0)
                except ConnectionLost:
                    # subscribe anew (retrying for retry_for); events of the gap are lost, so a followed
                    # id that ended meanwhile gets its synthetic event, as at the start
                    _close_quietly(ps)
                    ps, early = self.broker.subscribe_events(channels)
                    if filt.open is not None:
                        yield from filt.initial(self._event_states(where), self._group_states(groups))
                    for m in early:
                        yield from filt.feed(m["data"])
                    continue
                if msg is not None and msg["type"] == "message":
                    yield from filt.feed(msg["data"])
        finally:
            _close_quietly(ps)

    @staticmethod
    def _operation(fn):
        """A ProducerCore operation as a plain method (see ProducerCore)."""
        @functools.wraps(fn)
        def method(self, *args, **kw):
            return self._drive(fn(self, *args, **kw))
        return method

    def _drive(self, op):
        return drive(op, self)

    _sleep = staticmethod(time.sleep)

    def _inspector(self):
        """An Inspector sharing this producer's Broker (the operator reads and writes live there)."""
        from .inspect import Inspector

        return Inspector(self.url, broker=self.broker)
