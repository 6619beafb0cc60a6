"""Every Redis key and channel name xq uses is built here, and only here.

Key schema (Q is a queue name; `{Q}` is a Redis Cluster hash tag, so every key of a queue lives in one
slot and one Lua script may touch them all):

    xq:queues               set     names of every queue ever enqueued to (inspection only)
    xq:workers              zset    worker id -> its last heartbeat (ms): the worker registry's index
    xq:worker:<id>          string  a supervisor's registry record (JSON), EXPIREd after its TTL: a worker
                                    whose record is gone is dead, whatever xq:workers still says
    xq:{Q}:ready:P          list    ids ready to run at priority P (0 = highest .. 9), FIFO (RPUSH, LMPOP)
    xq:{Q}:wake             zset    wake-up marker: one member "1"; producers ZADD it, idle supervisors
                                    BZPOPMIN it, so an idle queue costs no polling
    xq:{Q}:leases           zset    id -> lease deadline (ms, Redis server time) of every claimed task
    xq:{Q}:sched            zset    id -> due time (ms, Redis server time) of scheduled and retrying tasks
    xq:{Q}:dead             zset    id -> time of death (ms): the dead-letter set
    xq:{Q}:cron             hash    periodic entry -> the last tick fired (ms), so each tick fires once
    xq:{Q}:paused           string  exists while the queue is paused (value: ms since the epoch it was
                                    paused); CLAIM skips the queue (read inside the script)
    xq:{Q}:t:<id>           hash    the task record: message, state, attempts, timestamps, result
    xq:{Q}:done             zset    id -> finish time (ms) of recently finished tasks, one index per final
    xq:{Q}:canceled         zset      state (dead letters: xq:{Q}:dead), written by the script that
    xq:{Q}:expired          zset      finishes them and cut to the queue's retention policy
    xq:{Q}:retention        hash    the queue's retention policy (xq queue retention): keep (finished
                                    records per state), max_age (seconds), keep_dead; unset: defaults
    xq:{Q}:trimmed          hash    the retention watermark: n (records removed), fin (finish ms of the
                                    newest removed), at (ms of the last removal); tells status() that a
                                    missing record was removed rather than never there
    xq:{Q}:events           channel Pub/Sub channel of task state changes (JSON arrays of events)
    xq:{Q}:control          channel Pub/Sub channel to supervisors: ids whose cancellation was requested
    xq:{Q}:st:<H>           string  stats history of the whole queue for hour H (unix seconds // 3600): 60
                                    records of 17 bytes, one per minute (xq/stats.py), written with
                                    BITFIELD ... OVERFLOW SAT INCRBY; EXPIREd 25 h after its first write
    xq:{Q}:st:<H>:<name>    string  the same for one task name
    xq:{Q}:stn              zset    task name -> the last hour H it had stats written: the names with history
                                    (entries older than 25 h are dropped by the supervisors)

The finished indexes, retention and trimmed are built by the scripts from the queue's base like the flow
control keys below (every finishing script would otherwise need 5 more KEYS, CLAIM 5 per queue).

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

The failure paths of the scripts (attempt_failed) count failed attempts into the stats history keys above,
built from the base and the record's name like the flow keys; the supervisors count done tasks.
"""

from __future__ import annotations

import re

from .errors import ConfigError

PRIORITIES = 10
DEFAULT_PRIORITY = 5
QUEUES = "xq:queues"
FINISHED_STATES = ("done", "canceled", "expired")
WORKERS = "xq:workers"


def worker_key(worker_id: str) -> str:
    """The registry record of one supervisor (see xq/supervisor/registry.py)."""
    return "xq:worker:" + worker_id

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


# ---------------------------------------------------------------- limits
# The largest value of every field a producer writes (docs/protocol.md, "Limits").  Producers refuse what
# breaks them before writing anything (the check_* functions below); a supervisor that meets one in a
# record written by someone else fails that task alone (check_record).
MAX_QUEUE = 100          # characters of a queue name (A-Z a-z 0-9 _ . -)
MAX_ID = 128             # characters of a task id (A-Z a-z 0-9 _ . : -)
MAX_NAME = 200           # bytes (UTF-8) of a task name, no control characters
MAX_KEY = 200            # bytes of a unique, concurrency or rate key
MAX_RETRIES = 1000       # max retries (attempts after the first)
MAX_ATTEMPTS = 65534     # attempts started (att); the hot path carries it in 16 bits
MAX_MS = 10 ** 14 - 1    # any ms field: due, exp, to, enq, rate periods (about 3,170 years)
MAX_COUNT = 10 ** 9      # max concurrency (cm) and starts per rate period (rn)
MAX_KEEP = 10 ** 9       # finished or dead records a retention policy keeps per state

# Retention defaults (docs/design.md, "Retention"): a queue without a policy keeps the newest 10,000
# finished records per final state (for at most the result ttl) and 10,000 dead letters: about
# 3 x 10,000 x ~460 B + 10,000 x ~2,000 B = ~34 MB of Redis per queue at most, whatever the task rate.
DEFAULT_KEEP = 10000
DEFAULT_KEEP_DEAD = 10000

_NAME_BAD_RE = re.compile(r"[\x00-\x1f\x7f]")
_NAME_BAD_B = re.compile(rb"[\x00-\x1f\x7f]")


def _limit(what: str, size: int, limit: int, unit: str = "bytes") -> ConfigError:
    return ConfigError(f"{what} is {size} {unit}; the limit is {limit} {unit}")


def check_text(what: str, value, limit: int) -> str:
    """A non-empty str of at most limit bytes of UTF-8; ConfigError naming the field and both sizes."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"invalid {what} {value!r}: expected a non-empty string of at most {limit} bytes")
    try:
        n = len(value.encode())
    except UnicodeEncodeError:
        raise ConfigError(f"invalid {what} {value[:50]!r}: not encodable as UTF-8") from None
    if n > limit:
        raise _limit(what, n, limit)
    return value


def check_name(name) -> str:
    """A task name: 1-MAX_NAME bytes of UTF-8 without control characters; ConfigError naming the sizes."""
    check_text("task name", name, MAX_NAME)
    if _NAME_BAD_RE.search(name):
        raise ConfigError(f"invalid task name {name!r}: control characters are not allowed")
    return name


def check_int(what: str, value, lo: int, hi: int) -> int:
    """An integer lo..hi (bools refused); ConfigError naming the field, the limit and the value."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"invalid {what} {value!r}: expected an integer {lo}..{hi}")
    if value < lo:
        raise ConfigError(f"invalid {what} {value!r}: expected an integer >= {lo}")
    if value > hi:
        raise ConfigError(f"{what} is {value}; the limit is {hi}")
    return value


MAX_RESULT_TTL = MAX_MS // 1000  # seconds


def check_result_ttl(what: str, value) -> int:
    """A task's own result ttl: whole seconds 1..MAX_RESULT_TTL; ConfigError naming what otherwise."""
    return check_int(what, value, 1, MAX_RESULT_TTL)


def check_ms(what: str, ms: int) -> int:
    """A time or duration in ms that fits the protocol (< 10^14)."""
    if ms > MAX_MS:
        raise ConfigError(f"{what} is {ms} ms; the limit is {MAX_MS} ms")
    return ms


_ID_B_RE = re.compile(rb"^[A-Za-z0-9_.:\-]{1,128}$")
_CT_OK = (b"j", b"b")


def check_record(task_id: bytes, name: bytes, ct: bytes, att, to) -> str | None:
    """A claimed task (the fields of a CLAIM reply) against the limits: None if it may run, else the reason
    it may not, naming the field.  Cheap: a supervisor calls it for every task it claims."""
    if _ID_B_RE.match(task_id) is None:
        n = len(task_id)
        if n > MAX_ID:
            return f"field id: task id is {n} bytes; the limit is {MAX_ID} characters"
        return f"field id: task id {task_id[:60]!r} is not 1-{MAX_ID} characters of A-Z a-z 0-9 _ . : -"
    n = len(name)
    if n > MAX_NAME:
        return f"field name: task name is {n} bytes; the limit is {MAX_NAME} bytes"
    if not n:
        return "field name: task name is empty"
    if not name.isascii():
        try:
            name.decode()
        except UnicodeDecodeError:
            return f"field name: task name {name[:60]!r} is not UTF-8"
    if _NAME_BAD_B.search(name):
        return f"field name: task name {name[:60]!r} has control characters"
    if ct not in _CT_OK:
        return f"field ct: content type {ct[:20]!r} is not 'j' (JSON) or 'b' (bytes)"
    if not isinstance(att, int) or not 1 <= att <= MAX_ATTEMPTS + 1:
        return f"field att: attempt {att!r} is over the limit of {MAX_ATTEMPTS} attempts"
    if to:
        try:
            v = int(to)
        except ValueError:
            return f"field to: timeout {to[:30]!r} is not an integer number of ms"
        if not 0 <= v <= MAX_MS:
            return f"field to: timeout of {v} ms is outside 0..{MAX_MS} ms"
    return None


class QueueKeys:
    """The key names of one queue."""

    __slots__ = ("name", "base", "ready", "wake", "leases", "sched", "dead", "cron", "task_prefix", "stage_prefix",
                 "events", "control")

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
        self.stage_prefix = (base + "s:").encode()  # payloads staged for ENQUEUE (scripts.ENQUEUE)
        self.events = base + "events"
        self.control = base + "control"

    def task(self, task_id: str | bytes) -> str:
        if isinstance(task_id, bytes):
            task_id = task_id.decode()
        return self.task_prefix + task_id

    @property
    def pattern(self) -> str:
        """SCAN MATCH pattern of every key of the queue (its name has no glob characters: check_queue)."""
        return self.base + "*"

    # flow control: built by the scripts from the base; named here for Python readers (tests, inspection)
    @property
    def paused(self) -> str:
        """Exists while the queue is paused; CLAIM builds it from the base."""
        return self.base + "paused"

    def finished(self, state: str) -> str:
        """The index of recently finished ids in a final state: done, canceled, expired (dead: .dead)."""
        if state not in FINISHED_STATES:
            raise ConfigError(f"invalid finished state {state!r}: expected one of {', '.join(FINISHED_STATES)}")
        return self.base + state

    @property
    def retention(self) -> str:
        """The queue's retention policy (hash: keep, max_age, keep_dead)."""
        return self.base + "retention"

    @property
    def trimmed(self) -> str:
        """The retention watermark (hash: n, fin, at)."""
        return self.base + "trimmed"

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

    def stats(self, hour: int, name: str | None = None) -> str:
        """The stats history of hour `hour` (unix seconds // 3600): of the whole queue, or of one task name."""
        return f"{self.base}st:{hour}" if name is None else f"{self.base}st:{hour}:{name}"

    def stats_b(self, hour: int, name: bytes | None = None) -> bytes:
        """stats() as bytes, for the supervisor, which holds task names as bytes."""
        k = b"%bst:%d" % (self.base.encode(), hour)
        return k if name is None else k + b":" + name

    @property
    def stats_names(self) -> str:
        """The task names with stats history: name -> the last hour written."""
        return self.base + "stn"

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
