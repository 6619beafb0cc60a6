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


class QueueKeys:
    """The key names of one queue."""

    __slots__ = ("name", "ready", "wake", "leases", "sched", "dead", "cron", "task_prefix", "events", "control")

    def __init__(self, name: str):
        check_queue(name)
        base = f"xq:{{{name}}}:"
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


_cache: dict[str, QueueKeys] = {}


def queue_keys(name: str) -> QueueKeys:
    """Cached QueueKeys for a queue name."""
    k = _cache.get(name)
    if k is None:
        k = _cache[name] = QueueKeys(name)
    return k
