"""Flow-control options of an enqueue: unique keys, dependencies, groups, per-key concurrency, rate limits.

Everything here is checked in the producer, before anything is sent, and turned into the one JSON object
the ENQUEUE script reads (its ARGV[12]); the scripts do the rest atomically (see scripts.py).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import orjson

from .errors import ConfigError
from .keys import MAX_COUNT, MAX_ID, MAX_KEY, MAX_MS, check_int, check_text

RATE_PERIODS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smh])\s*$")
DEP_POLICIES = ("fail", "run")


def parse_rate(what: str, value: str) -> tuple[int, int]:
    """'100/s', '5/m', '1000/h' or '10/30s' as (starts, period ms); ConfigError naming what otherwise."""
    m = _RATE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ConfigError(f"invalid {what} {value!r}: expected N/s, N/m or N/h (e.g. '100/s', '5/m', '10/30s')")
    n, mult, unit = int(m.group(1)), int(m.group(2) or 1), m.group(3)
    if n < 1 or mult < 1:
        raise ConfigError(f"invalid {what} {value!r}: the number of starts and the period must be at least 1 "
                          f"(a rate of zero would never run the task; cancel or pause it instead)")
    if n > MAX_COUNT:
        raise ConfigError(f"{what} {value!r}: starts per period is {n}; the limit is {MAX_COUNT}")
    period = mult * RATE_PERIODS_MS[unit]
    if period > MAX_MS:
        raise ConfigError(f"{what} {value!r}: the period is {period} ms; the limit is {MAX_MS} ms")
    return n, period


def check_key(what: str, value) -> str:
    """A non-empty key of at most MAX_KEY bytes (it becomes part of a Redis key name)."""
    return check_text(what, value, MAX_KEY)


def flow_args(*, unique_key=None, unique_ttl=None, concurrency_key=None, max_concurrency=None, rate_key=None,
              rate_limit=None, depends_on: Sequence[str] | None = None, on_dependency_failure: str = "fail",
              group: str | None = None, count: int = 1) -> dict[str, Any]:
    """The checked flow options of an enqueue of `count` tasks, as the ENQUEUE script's JSON keys."""
    out: dict[str, Any] = {}
    if unique_key is not None:
        if count != 1:
            raise ConfigError("unique_key applies to one task: use enqueue(), not enqueue_many()")
        out["uk"] = check_key("unique_key", unique_key)
        if unique_ttl is not None:
            if isinstance(unique_ttl, bool) or not isinstance(unique_ttl, (int, float)) or not unique_ttl > 0 \
                    or unique_ttl == float("inf"):
                raise ConfigError(f"invalid unique_ttl {unique_ttl!r}: expected a number of seconds > 0")
            out["ut"] = max(1, int(unique_ttl * 1000))
    elif unique_ttl is not None:
        raise ConfigError("unique_ttl given without unique_key")
    if concurrency_key is not None or max_concurrency is not None:
        if concurrency_key is None or max_concurrency is None:
            raise ConfigError("give concurrency_key= and max_concurrency= together")
        check_int("max_concurrency", max_concurrency, 1, MAX_COUNT)
        out["ck"], out["cm"] = check_key("concurrency_key", concurrency_key), max_concurrency
    if rate_key is not None or rate_limit is not None:
        if rate_key is None or rate_limit is None:
            raise ConfigError("give rate_key= and rate_limit= together (a per-task-name limit is set with "
                              "@app.task(rate_limit=...))")
        out["rk"] = check_key("rate_key", rate_key)
        out["rn"], out["rp"] = parse_rate("rate_limit", rate_limit)
    if depends_on is not None:
        deps = [depends_on] if isinstance(depends_on, str) else list(depends_on)
        if not all(isinstance(d, str) and d for d in deps):
            raise ConfigError(f"invalid depends_on {depends_on!r}: expected task ids (strings)")
        for d in deps:
            if len(d) > MAX_ID:
                raise ConfigError(f"depends_on id is {len(d)} characters; the limit is {MAX_ID} characters")
        if on_dependency_failure not in DEP_POLICIES:
            raise ConfigError(f"invalid on_dependency_failure {on_dependency_failure!r}: expected one of "
                              f"{', '.join(DEP_POLICIES)}")
        if deps:
            out["deps"] = list(dict.fromkeys(deps))
            if on_dependency_failure != "fail":
                out["df"] = on_dependency_failure
    if group is not None:
        out["grp"] = group
    return out


def flow_json(args: dict) -> bytes:
    return orjson.dumps(args) if args else b""
