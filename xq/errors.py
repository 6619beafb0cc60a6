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


class UnknownTask(XQError, LookupError):
    """No task with that id exists (never enqueued, or its record expired)."""


class ResultTimeout(XQError, TimeoutError):
    """Producer.result() gave up waiting."""
