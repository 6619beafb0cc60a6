"""Every Redis key and channel name xq uses is built here, and only here.

Key schema (Q is a queue name; `{Q}` is a Redis Cluster hash tag, so every key of a queue lives in one
slot and one Lua script may touch them all):

    xq:queues               set     names of every queue ever enqueued to (inspection only)
    xq:{Q}:ready:P          list    ids ready to run at priority P (0 = highest .. 9), FIFO (RPUSH, LMPOP)
    xq:{Q}:wake             zset    wake-up marker: one member "1"; producers ZADD it, idle supervisors
                                    BZPOPMIN it, so an idle queue costs no polling
    xq:{Q}:leases           zset    id -> lease deadline (ms, Redis server time) of every claimed task
    xq:{Q}:sched            zset    id -> due time (ms, Redis server time) of scheduled and retrying tasks
    xq:{Q}:dead             zset    id -> time of death (ms): the dead-letter set
    xq:{Q}:cron             hash    periodic entry -> the last tick fired (ms), so each tick fires once
    xq:{Q}:t:<id>           hash    the task record: message, state, attempts, timestamps, result
    xq:{Q}:events           channel Pub/Sub channel of task state changes (JSON arrays of events)
    xq:{Q}:control          channel Pub/Sub channel to supervisors: ids whose cancellation was requested

Flow control (built by the scripts from the queue's base `xq:{Q}:` and a task record's fields, since
they are only known once the record is read; the methods below name them for Python readers):

    xq:{Q}:hooked           set     ids of unfinished tasks whose end sets something off (unique key,
                                    group, concurrency key, dependents): COMPLETE looks only these up
    xq:{Q}:u:<key>          string  the id holding unique key <key> (PX unique_ttl, if given)
    xq:{Q}:c:<key>          zset    concurrency slots of <key>: holder id -> its lease deadline (ms)
    xq:{Q}:cw:<key>         list    ids parked over <key>'s max_concurrency, moved back one per free slot
    xq:{Q}:rl:<key>         zset    rate key <key>'s start log: id:attempt -> start instant (ms), the
                                    last period's starts (a sliding window; PX one period)
    xq:{Q}:rp:<key>         zset    rate key <key>'s plan: deferred id -> the instant promised to it
    xq:{Q}:rnl:<name>       zset    the start log of task name <name>'s rate limit (@app.task(rate_limit=))
    xq:{Q}:rnp:<name>       zset    the plan of task name <name>'s rate limit
    xq:{Q}:d:<id>           set     ids waiting for task <id> (depends_on)
    xq:{Q}:g:<gid>          hash    a group: left, sealed, total, cb (callback id), fired
    xq:{Q}:gi:<gid>         list    the group's member ids, in the order given
    xq:{Q}:go:<gid>         hash    member id -> the state it ended in (each member counted once)
"""

from __future__ import annotations

import re

from .errors import ConfigError

PRIORITIES = 10
DEFAULT_PRIORITY = 5
QUEUES = "xq:queues"

_QUEUE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


def check_queue(name: str) -> str:
    """Return name if it is a valid queue name, else raise ConfigError saying what is allowed."""
    if not isinstance(name, str) or not _QUEUE_RE.match(name):
        raise ConfigError(
            f"invalid queue name {name!r}: use 1-100 characters from A-Z a-z 0-9 _ . -")
    return name


_TASK_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


def check_task_ids(ids, count: int) -> list[bytes]:
    """ids given by a caller for count tasks, as bytes, or ConfigError saying what is wrong: one per task,
    distinct, each 1-128 characters from A-Z a-z 0-9 _ . : - (ids are embedded in event JSON unescaped)."""
    ids = [ids] if isinstance(ids, str) else list(ids)
    if len(ids) != count:
        raise ConfigError(f"ids: {len(ids)} given for {count} task(s); give one per payload")
    for i in ids:
        if not isinstance(i, str) or not _TASK_ID_RE.match(i):
            raise ConfigError(f"invalid task id {i!r}: use 1-128 characters from A-Z a-z 0-9 _ . : - "
                              f"(or leave ids out: xq makes them)")
    if len(set(ids)) != len(ids):
        raise ConfigError("ids: the same id is given twice")
    return [i.encode() for i in ids]


class QueueKeys:
    """The key names of one queue."""

    __slots__ = ("name", "base", "ready", "wake", "leases", "sched", "dead", "cron", "task_prefix", "events", "control")

    def __init__(self, name: str):
        check_queue(name)
        self.base = base = f"xq:{{{name}}}:"
        self.name = name
        self.ready = [f"{base}ready:{p}" for p in range(PRIORITIES)]
        self.wake = base + "wake"
        self.leases = base + "leases"
        self.sched = base + "sched"
        self.dead = base + "dead"
        self.cron = base + "cron"
        self.task_prefix = base + "t:"
        self.events = base + "events"
        self.control = base + "control"

    def task(self, task_id: str | bytes) -> str:
        if isinstance(task_id, bytes):
            task_id = task_id.decode()
        return self.task_prefix + task_id

    # flow control: built by the scripts from the base; named here for Python readers (tests, inspection)
    @property
    def hooked(self) -> str:
        return self.base + "hooked"

    def unique(self, key: str) -> str:
        return f"{self.base}u:{key}"

    def slots(self, key: str) -> str:
        return f"{self.base}c:{key}"

    def parked(self, key: str) -> str:
        return f"{self.base}cw:{key}"

    def rate_log(self, key: str) -> str:
        return f"{self.base}rl:{key}"

    def rate_plan(self, key: str) -> str:
        return f"{self.base}rp:{key}"

    def name_rate_log(self, name: str) -> str:
        return f"{self.base}rnl:{name}"

    def name_rate_plan(self, name: str) -> str:
        return f"{self.base}rnp:{name}"

    def dependents(self, task_id: str) -> str:
        return f"{self.base}d:{task_id}"

    def group(self, group_id: str) -> str:
        return f"{self.base}g:{group_id}"

    def group_members(self, group_id: str) -> str:
        return f"{self.base}gi:{group_id}"

    def group_outcomes(self, group_id: str) -> str:
        return f"{self.base}go:{group_id}"


_cache: dict[str, QueueKeys] = {}


def queue_keys(name: str) -> QueueKeys:
    """Cached QueueKeys for a queue name."""
    k = _cache.get(name)
    if k is None:
        k = _cache[name] = QueueKeys(name)
    return k
