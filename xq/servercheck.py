"""What `xq run` checks of the Redis server at start, before any child runs: would it lose tasks?

- **Eviction.**  Under a `maxmemory-policy` that evicts keys (`allkeys-*`, `volatile-*`), a full Redis
  deletes keys silently: task records, ready lists, leases; tasks vanish with nobody told.  `xq run`
  refuses to start (exit 7) unless `--allow-eviction` says to run anyway (then it warns).  Under
  `noeviction` a full Redis refuses writes instead: producers get `xq.RedisFull`, supervisors keep their
  results until it takes writes again.
- **Persistence.**  With neither AOF nor RDB save points, a restart of Redis loses everything: it warns
  once, naming what.
- **Version.**  xq's scripts need Redis 7.0 or later (the `#!lua` shebang and its flags): an older one
  is refused (exit 7).
- A server that does not let us look (CONFIG or INFO denied by an ACL, renamed away on a managed Redis)
  gets a warning saying what could not be checked, and the supervisor goes on.

The check runs on the connection the supervisor uses (`Broker.client`), so it sees the server the tasks go to.
"""

from __future__ import annotations

import logging

import redis

from .conn import classify, redacted, translate
from .errors import XQError

log = logging.getLogger("xq")

EVICTING_PREFIXES = ("allkeys-", "volatile-")
MIN_VERSION = (7, 0)


class RedisUnsafe(XQError):
    """The Redis server would lose tasks (an evicting maxmemory-policy) or cannot run xq's scripts
    (older than 7.0): `xq run` exits 7 with this message."""


def evicting(policy: str) -> bool:
    return policy.startswith(EVICTING_PREFIXES)


def _version(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:2]:
        out.append(int(part) if part.isdigit() else 0)
    return tuple(out)


def _ask(call, what: str, url: str, skipped: list[str]):
    """call()'s answer, or None (noted in skipped) when the server will not tell us: an ACL denies the
    command, or it was renamed or disabled.  A lost connection is raised as ConnectionLost."""
    try:
        return call()
    except redis.RedisError as e:
        kind = classify(e)
        if kind == "network":
            raise translate(e, url) from e
        skipped.append(f"{what} ({type(e).__name__}: {e})")
        return None


def check_server(client: redis.Redis, url: str, *, allow_eviction: bool = False) -> list[str]:
    """Check the server behind client; raises RedisUnsafe when it would lose tasks.  Logs, and returns,
    the warnings (each once)."""
    where = f"Redis at {redacted(url)}"
    warnings: list[str] = []
    skipped: list[str] = []
    info = _ask(lambda: client.info("server"), "INFO server", url, skipped)
    if info and info.get("redis_version"):
        version = str(info["redis_version"])
        if _version(version) < MIN_VERSION:
            raise RedisUnsafe(f"{where} is Redis {version}; xq needs 7.0 or later (its Lua scripts use the "
                              f"#!lua shebang and flags)")
    conf = _ask(lambda: client.config_get("maxmemory-policy", "maxmemory", "appendonly", "save"),
                "CONFIG GET", url, skipped)
    if conf is not None:
        conf = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in conf.items()}
        policy = conf.get("maxmemory-policy") or ""
        maxmemory = conf.get("maxmemory") or "0"
        limit = f"maxmemory {maxmemory} bytes" if maxmemory != "0" else "maxmemory 0, no limit yet"
        if evicting(policy):
            why = (f"{where} has maxmemory-policy {policy} ({limit}): once full it evicts keys, silently "
                   f"deleting task records, queues and leases, so tasks are lost with nobody told")
            if not allow_eviction:
                raise RedisUnsafe(f"{why}; set `maxmemory-policy noeviction` (CONFIG SET and redis.conf; then "
                                  f"a full Redis refuses enqueues with xq.RedisFull instead), or pass "
                                  f"--allow-eviction to run anyway")
            warnings.append(f"{why}; running anyway, as --allow-eviction says")
        if conf.get("appendonly", "no") == "no" and not (conf.get("save") or "").strip():
            warnings.append(f"{where} has persistence off (appendonly no, no RDB save points): if it restarts, "
                            f"every queued, scheduled, waiting and running task, every stored result and the "
                            f"dead-letter sets are lost; turn on AOF (appendonly yes) or RDB snapshots (save)")
    if skipped:
        warnings.append(f"could not check {where} for key eviction and persistence: the server refused "
                        f"{'; '.join(skipped)}; make sure maxmemory-policy is noeviction and persistence is on")
    for w in warnings:
        log.warning("%s", w)
    return warnings
