"""Exceptions a user can cause or meet; each message names the bad value and what is allowed."""


class XQError(Exception):
    """Base class of every xq error."""


class ConfigError(XQError, ValueError):
    """A bad option value: a malformed Redis URL, a queue name that is not allowed, an unknown option."""


class PayloadTooLarge(XQError, ValueError):
    """A payload is larger than the configured max_payload."""


class TaskFailed(XQError):
    """Producer.result() of a task that ended in failure; `.error` holds the task's error text."""

    def __init__(self, task_id: str, state: str, error: str):
        super().__init__(f"task {task_id} {state}: {error}")
        self.task_id = task_id
        self.state = state
        self.error = error


class MalformedRecord(XQError, ValueError):
    """A record's field cannot be read as what it should be (e.g. a result that is not JSON), written by
    a foreign producer or damaged; the message names the task and the field."""


class UnknownTask(XQError, LookupError):
    """No task with that id exists (never enqueued, or its record expired)."""


class TaskTrimmed(UnknownTask):
    """The task finished, but its record was removed by its queue's retention policy (`xq queue retention`):
    it is older than the finished records the queue keeps.  `.queue` names the queue."""

    def __init__(self, message: str, *, queue: str = ""):
        super().__init__(message)
        self.queue = queue


class ResultTimeout(XQError, TimeoutError):
    """Producer.result() gave up waiting."""


class Retry(XQError):
    """Raise in a handler to ask for another attempt: `raise xq.Retry(delay=10)` (seconds; None uses the
    task's backoff).  Counts as a failed attempt: once max_retries is used up the task is dead."""

    def __init__(self, delay: float | None = None, reason: str = ""):
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0):
            raise ConfigError(f"invalid Retry delay {delay!r}: expected seconds >= 0 or None")
        super().__init__(reason or (f"retry requested in {delay} s" if delay is not None else "retry requested"))
        self.delay = delay


class NonRetryable(XQError):
    """Raise in a handler (or subclass) for a failure no retry can fix: the task goes straight to the
    dead-letter set, whatever attempts remain."""


class Cancelled(BaseException):
    """Raised inside a running handler when its task is canceled (Producer.cancel).  A BaseException, so
    `except Exception` does not swallow it; clean up and re-raise (the child is killed after a grace)."""


class TaskTimeout(XQError):
    """The error recorded for an attempt stopped by its processing timeout."""


class ConnectionLost(XQError, ConnectionError):
    """Redis could not be reached (connection refused, cut, timed out; Redis loading or read-only).

    From a producer, raised once its retries ran out (Producer(retry_for=...)).  From an enqueue,
    `.stored` lists the ids known to be in Redis and `.unknown` those whose reply was lost; calling
    enqueue_many again with the same ids= (every id of the call) stores none twice."""

    def __init__(self, message: str, *, url: str = "", stored: list | None = None, unknown: list | None = None):
        super().__init__(message)
        self.url = url
        self.stored = stored or []
        self.unknown = unknown or []


class RedisRefused(XQError):
    """Redis answered but refused us: wrong password or user, missing ACL permission, no such database.
    Retrying cannot fix it until the configuration changes."""

    def __init__(self, message: str, *, url: str = ""):
        super().__init__(message)
        self.url = url


class RedisFull(XQError):
    """Redis refuses writes: it is at its `maxmemory` under the `noeviction` policy (an OOM reply,
    `.cause == "oom"`), or it cannot persist to disk (MISCONF: an RDB save failed under
    stop-writes-on-bgsave-error, `.cause == "misconf"`).

    From an enqueue nothing is retried silently: `.stored` lists the ids that are in Redis (chunks of an
    enqueue_many written before Redis filled up) and `.not_stored` those that are not; enqueue them again
    (with ids=) once memory is freed or `maxmemory` raised.  A supervisor meeting it keeps its results and
    writes them once Redis takes writes again."""

    def __init__(self, message: str, *, url: str = "", stored: list | None = None, not_stored: list | None = None,
                 cause: str = "oom"):
        super().__init__(message)
        self.url, self.cause = url, cause
        self.stored = stored or []
        self.not_stored = not_stored or []


class NotReplicated(XQError):
    """An enqueue of a Producer(replicas=N) that fewer than N replicas acknowledged within replicas_timeout
    (Redis' WAIT).  The server that took the tasks has them, but no replica is known to: a failover
    before one has them loses them, and so does a server that was a master being replaced (during a
    Sentinel failover the old master takes writes until it is demoted).  Enqueueing them again with
    ids=err.ids is safe: an id stored already is skipped.  `.ids` lists them, `.acked` how many replicas acknowledged,
    `.wanted` how many were asked for."""

    def __init__(self, message: str, *, ids: list | None = None, acked: int = 0, wanted: int = 0):
        super().__init__(message)
        self.ids = ids or []
        self.acked, self.wanted = acked, wanted
