"""The connection layer: every Redis connection xq opens is made, judged and given up here.

What it decides, so no caller has to:

- **What a failure means.**  `classify()` sorts an exception into `"network"` (the connection broke, timed
  out, was refused, Redis is loading or read-only after a failover: retrying can fix it), `"refused"`
  (Redis rejected our credentials, permissions or database: retrying cannot fix it until someone changes
  the configuration), `"full"` (Redis refuses writes, answering all else: an OOM reply at `maxmemory`
  under `noeviction`, or MISCONF after a failed RDB save; freeing memory or disk fixes it, so it is waited
  out) or `None` (anything else, including an `OSError` that
  is not a network error: a bug, raised as is).  `translate()` turns them into `xq.ConnectionLost` /
  `xq.RedisRefused` / `xq.RedisFull`, the only Redis failures code above this layer ever sees.
- **How long to wait.**  `Backoff`: capped exponential with full jitter, so a fleet of supervisors that
  lost Redis together does not reconnect in lockstep.
- **Who hears about it.**  `Health` logs a change of state once (down, with the reason; up again, with how
  long it was down), never once per retry.
- **Where connections come from.**  `dedicated()` opens a connection the client's pool does not count
  (the supervisor's pipelined and blocking-wait connections, which outlive any one command): dropping it
  can never use up a pool slot, whatever the pool's limit.

- **Which Redis it is.**  `parse_url()` reads the one URL scheme of the three topologies into a `Topology`;
  `make_client()` / `make_async_client()` give the matching redis-py client.

URLs (`rediss` instead of `redis`: TLS; user and password are ACL credentials, %-encoded):

- `redis://[[user]:password@]host[:port][/db]`, `unix://[[user]:password@]/path[?db=N]`: one Redis.
- `redis+cluster://[[user]:password@]host1:port,host2:port[/]`: a Redis Cluster, by any of its nodes
  (seeds; the rest is discovered).  A Cluster has only database 0, so no /db.
- `redis+sentinel://[[user]:password@]host1:26379,host2:26379/MASTER[/db][?sentinel_password=...]`: the
  master named MASTER of a Sentinel set, by its sentinels (port 26379 unless given).  The credentials
  before @ are the master's; the sentinels' own, if they require any, are the query parameters
  sentinel_username= and sentinel_password=.

TLS options (query parameters of any rediss URL; on rediss:// redis-py reads them itself): ssl_ca_certs,
ssl_certfile, ssl_keyfile, ssl_cert_reqs (none, optional, required).
"""

from __future__ import annotations

import errno
import logging
import math
import random
import re
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlparse

import hiredis
import redis
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import ConfigError, ConnectionLost, RedisFull, RedisRefused

log = logging.getLogger("xq")

DEFAULT_URL = "redis://127.0.0.1:6379/0"
SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")

# errno values of an OSError that mean the network (or the peer) failed, not our program
_NETWORK_ERRNOS = frozenset(getattr(errno, n) for n in (
    "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "EHOSTDOWN",
    "ENETUNREACH", "ENETDOWN", "ENETRESET", "ENOTCONN", "ESHUTDOWN", "EADDRNOTAVAIL", "ENOENT",
    "EAGAIN", "EINPROGRESS", "EALREADY", "ENOBUFS") if hasattr(errno, n))
# error replies that mean "not now" (retry) or "not you" (configuration), by their first word
# NOREPLICAS: a master under min-replicas-to-write with too few replicas in touch refuses writes until they
# are back, or until a failover replaces it: waited out like an outage
_BUSY_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY", "NOREPLICAS")
_REFUSED_REPLIES = ("NOAUTH", "WRONGPASS", "NOPERM", "ERR invalid password", "ERR AUTH", "ERR Client sent AUTH")
# ... and phrases of refusals whose first word is only ERR (redis-py drops that word)
_REFUSED_PHRASES = ("DB index is out of range", "invalid DB index", "invalid password", "invalid username-password",
                    "must be called with the client already authenticated", "NOAUTH", "WRONGPASS", "NOPERM")


@dataclass(frozen=True)
class Topology:
    """What a Redis URL names: kind 'single' (one Redis: url is handed to redis-py as is), 'cluster' (nodes:
    seed nodes) or 'sentinel' (nodes: the sentinels; master: the name they monitor)."""
    kind: str
    url: str
    nodes: tuple = ()              # (host, port) each
    master: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    options: dict = field(default_factory=dict)  # TLS options and the sentinels' own credentials

    def connection_kwargs(self) -> dict:
        """redis-py keyword arguments of a connection to one node (a cluster node, the master)."""
        kw = {"username": self.username, "password": self.password}
        if self.tls:
            kw["ssl"] = True
            kw.update((k, v) for k, v in self.options.items() if k in TLS_OPTIONS)
        return kw

    def sentinel_kwargs(self) -> dict:
        """redis-py keyword arguments of a connection to a sentinel."""
        kw = {k[len("sentinel_"):]: v for k, v in self.options.items() if k in SENTINEL_OPTIONS}
        if self.tls:
            kw["ssl"] = True
            kw.update((k, v) for k, v in self.options.items() if k in TLS_OPTIONS)
        return kw


def _bad(url, why: str) -> ConfigError:
    return ConfigError(f"invalid Redis URL {redacted(url)!r}: {why}")


def _hosts(url: str, netloc: str, default_port: int) -> tuple:
    """(host, port) of each of netloc's comma-separated host[:port] ([v6]:port)."""
    out = []
    for part in netloc.split(","):
        part = part.strip()
        if part.startswith("["):
            host, _, port = part[1:].partition("]")
            if port and not port.startswith(":"):
                raise _bad(url, f"bad host {part!r}")
            port = port[1:] or None
        else:
            host, colon, port = part.rpartition(":")
            if not colon:
                host, port = part, None
        if not host:
            raise _bad(url, f"no host in {part!r}" if part else "an empty host in the list" if "," in netloc
                       else "no hosts (expected host:port,host:port)")
        if port is None:
            port = default_port
        elif not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad(url, f"bad port {port!r} of host {host!r} (expected a number 1..65535)")
        out.append((host, int(port)))
    return tuple(out)


def parse_url(url: str) -> Topology:
    """The Topology a Redis URL names (see the module's doc for the scheme), or ConfigError naming what is
    wrong with it."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"invalid Redis URL {url!r}: expected redis://host:port/db, rediss://..., unix://path, "
                          f"redis+cluster://host:port,host:port or redis+sentinel://host:port,host:port/master")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise _bad(url, f"scheme {scheme if sep else '(none)'!r} is not one of {', '.join(SCHEMES)}")
    base, _, kind = scheme.partition("+")
    if not kind:
        return _parse_single(url)
    tls = base == "rediss"
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, netloc = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    options = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        allowed = TLS_OPTIONS + (SENTINEL_OPTIONS if kind == "sentinel" else ())
        if k not in allowed:
            raise _bad(url, f"unknown option {k!r} (known: {', '.join(allowed)})")
        if k in TLS_OPTIONS and not tls:
            raise _bad(url, f"option {k!r} needs TLS ({base}s+{kind}://)")
        options[k] = v
    nodes = _hosts(url, netloc, 6379 if kind == "cluster" else 26379)
    parts = [unquote(p) for p in path.split("/") if p]
    if kind == "cluster":
        if parts and parts != ["0"]:
            raise _bad(url, f"a Redis Cluster has only database 0, not {'/'.join(parts)!r} "
                            f"(expected {scheme}://host:port,host:port/)")
        return Topology("cluster", url, nodes, None, 0, username, password, tls, options)
    if not parts:
        raise _bad(url, f"no master name (expected {scheme}://host:26379,host:26379/MASTER_NAME[/db])")
    if len(parts) > 2:
        raise _bad(url, f"path {path!r} has more than MASTER_NAME/db")
    db = parts[1] if len(parts) == 2 else "0"
    if not db.isdigit():
        raise _bad(url, f"database {db!r} is not a number")
    return Topology("sentinel", url, nodes, parts[0], int(db), username, password, tls, options)


def _parse_single(url: str) -> Topology:
    try:
        p = urlparse(url)
        p.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as e:
        raise _bad(url, str(e)) from None
    if p.scheme != "unix" and not p.hostname:
        raise _bad(url, f"no host (expected {p.scheme}://host:port/db)")
    if p.scheme != "unix" and "," in p.netloc:
        raise _bad(url, f"several hosts in a {p.scheme}:// URL (a Cluster is redis+cluster://, a Sentinel set "
                        f"redis+sentinel://)")
    db = p.path.strip("/")
    if p.scheme != "unix" and db and not db.isdigit():
        raise _bad(url, f"database {db!r} is not a number")
    return Topology("single", url, ((p.hostname, p.port or 6379),) if p.scheme != "unix" else (),
                    None, int(db) if db.isdigit() else 0, p.username, p.password, p.scheme == "rediss")


def check_url(url: str) -> str:
    """url if it is a Redis URL xq can use, else ConfigError naming what is wrong."""
    parse_url(url)
    return url


_SECRET_QUERY = re.compile(r"((?:^|[?&])(?:sentinel_)?password=)[^&#]*")


def redacted(url: str) -> str:
    """url with any password (of the URL's credentials or a sentinel_password= option) replaced by ***,
    for logs and error messages."""
    if not isinstance(url, str):
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, q, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    query = _SECRET_QUERY.sub(r"\1***", query)
    return f"{scheme}{sep}{userinfo}{at}{hosts}{slash}{path}{q}{query}"


def client_options(**kw) -> dict:
    """redis-py options every xq client uses (sync and asyncio): no silent client-side retries (a resent
    EVALSHA could run twice; this layer decides what is retried), a bounded connect, TCP keepalive."""
    kw.setdefault("retry", Retry(NoBackoff(), 0))
    kw.setdefault("socket_connect_timeout", 5)
    kw.setdefault("socket_keepalive", True)
    return kw


def make_client(url: str, **kw):
    """The redis-py client for url: a redis.Redis (one Redis), a RedisCluster (routing each command to its
    key's slot), or a Sentinel master_for client (finding the master again after a failover); ConfigError
    if the URL is wrong."""
    from redis.cluster import ClusterNode, RedisCluster

    return _client(url, client_options(**kw), redis.Redis, RedisCluster, ClusterNode, _Sentinel)


def make_async_client(url: str, **kw):
    """As make_client, on redis.asyncio."""
    import redis.asyncio as aredis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.retry import Retry as AsyncRetry

    kw.setdefault("retry", AsyncRetry(NoBackoff(), 0))
    return _client(url, client_options(**kw), aredis.Redis, RedisCluster, ClusterNode, _AsyncSentinel)


def _client(url: str, kw: dict, Redis, RedisCluster, ClusterNode, Sentinel):
    """make_client's work, given the classes of redis-py's sync or asyncio flavour."""
    t = parse_url(url)
    try:
        if t.kind == "single":
            if not t.nodes:  # unix://: redis-py's socket-file connection takes no TCP options
                kw = {k: v for k, v in kw.items() if not k.startswith("socket_keepalive")}
            return Redis.from_url(url, **kw)
        if t.kind == "cluster":
            return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in t.nodes], **t.connection_kwargs(),
                                **kw)
        sentinel = Sentinel(list(t.nodes), sentinel_kwargs={**_sentinel_client_options(kw), **t.sentinel_kwargs()},
                            **t.connection_kwargs(), **kw)
        return sentinel.master_for(t.master, db=t.db)
    except ValueError as e:
        raise _bad(url, str(e)) from None
    except redis.exceptions.RedisClusterException as e:  # the sync RedisCluster reads the slot map here
        if "Cluster mode is not enabled" in str(e):
            raise _bad(url, "its nodes are not a Redis Cluster (cluster mode is not enabled on them): for one Redis "
                            "use redis://host:port/db") from None
        t = translate(e, url)
        if t is e:
            raise
        raise t from e


def _sentinel_client_options(kw: dict) -> dict:
    out = {k: kw[k] for k in ("retry", "socket_timeout", "socket_connect_timeout", "socket_keepalive") if k in kw}
    for k in ("socket_timeout", "socket_connect_timeout"):  # a sentinel that does not answer: ask the next
        out[k] = min(out.get(k) or SENTINEL_TIMEOUT, SENTINEL_TIMEOUT)
    return out


def node_client(url: str, host: str, port: int, asyncio: bool = False, **kw):
    """A plain client of one node of url's Cluster (the raw pipelined path reaches a slot's master so)."""
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry as AsyncRetry

    cls = aredis.Redis if asyncio else redis.Redis
    if asyncio:
        kw.setdefault("retry", AsyncRetry(NoBackoff(), 0))
    return cls(host=host, port=port, **parse_url(url).connection_kwargs(), **client_options(**kw))


def dedicated(client: redis.Redis, read_size: int | None = None):
    """A new, unconnected connection with the client's settings that its pool does not count: its owner
    connects, disconnects and drops it at will without ever using up a pool slot.  read_size: the bytes
    one read of its socket may take (redis-py's default is 32 KiB)."""
    pool = client.connection_pool
    kw = pool.connection_kwargs if read_size is None else {**pool.connection_kwargs, "socket_read_size": read_size}
    return pool.connection_class(**kw)


# ---------------------------------------------------------------------------------------------- failures
CLUSTER_MOVES = (redis.exceptions.MovedError, redis.exceptions.AskError, redis.exceptions.TryAgainError,
                  redis.exceptions.ClusterDownError, redis.exceptions.SlotNotCoveredError)


def _reply_starts(e: BaseException, prefixes) -> bool:
    msg = str(e)
    return any(msg.startswith(p) for p in prefixes)


def _refusal(e: BaseException) -> bool:
    msg = str(e)
    return _reply_starts(e, _REFUSED_REPLIES) or any(p in msg for p in _REFUSED_PHRASES)


def out_of_memory(e: BaseException) -> bool:
    """Is e Redis' OOM reply (maxmemory reached under noeviction: writes refused)?"""
    if isinstance(e, (RedisFull, redis.exceptions.OutOfMemoryError)):
        return True
    return isinstance(e, (redis.ResponseError, hiredis.ReplyError)) and (
        str(e).startswith("OOM ") or "command not allowed when used memory" in str(e))


def cannot_persist(e: BaseException) -> bool:
    """Is e Redis' MISCONF reply (an RDB save failed under stop-writes-on-bgsave-error: writes refused)?"""
    if isinstance(e, RedisFull):
        return e.cause == "misconf"
    return isinstance(e, (redis.ResponseError, hiredis.ReplyError)) and str(e).startswith("MISCONF")


def refuses_writes(e: BaseException) -> bool:
    """Does Redis refuse writes for now, answering everything else: full (OOM) or unable to persist
    (MISCONF)?  Either is waited out with the writes kept, never retried blindly nor taken for a bug."""
    return out_of_memory(e) or cannot_persist(e)


def classify(e: BaseException) -> str | None:
    """'network' (retrying can fix it), 'refused' (only a configuration change can), 'full' (Redis refuses
    writes at maxmemory: freeing memory fixes it) or None (a bug)."""
    if isinstance(e, (ConnectionLost,)):
        return "network"
    if isinstance(e, RedisRefused):
        return "refused"
    if refuses_writes(e):  # 'full' stands for both: writes refused until someone frees memory or disk
        return "full"
    if isinstance(e, (redis.AuthenticationError, redis.exceptions.AuthorizationError,
                      redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationWrongNumberOfArgsError)):
        return "refused"
    if isinstance(e, CLUSTER_MOVES):  # a Cluster slot moved or is not served yet: ask again later
        return "network"
    if isinstance(e, redis.exceptions.RedisClusterException) and e.__cause__ is not None:
        return classify(e.__cause__)  # "cannot be connected" to any seed: why it could not (refused, down)
    if isinstance(e, redis.ResponseError):
        if _refusal(e):
            return "refused"
        if isinstance(e, redis.ReadOnlyError) or _reply_starts(e, _BUSY_REPLIES):
            return "network"
        return None
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError, socket.timeout,
                      socket.gaierror, EOFError)):
        # redis-py wraps socket errors in ConnectionError, an AUTH failure too (caught above); a refused
        # SELECT surfaces as a ConnectionError whose text is the server's reply
        return "refused" if _refusal(e) else "network"
    if isinstance(e, OSError):
        return "network" if e.errno in _NETWORK_ERRNOS else None
    return None


def translate(e: BaseException, url: str) -> BaseException:
    """The xq error e stands for (ConnectionLost or RedisRefused, naming the URL without its password), or
    e itself when it is not a Redis failure."""
    kind = classify(e)
    if kind is None or isinstance(e, (ConnectionLost, RedisRefused, RedisFull)):
        return e
    reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    where = f"Redis at {redacted(url)}"
    if kind == "full":
        return RedisFull(full_message(url, e=e), url=redacted(url), cause="misconf" if cannot_persist(e) else "oom")
    if kind == "refused":
        msg = str(e)
        what = ("no such database" if "DB index" in msg else
                "missing ACL permission" if "NOPERM" in msg or isinstance(e, redis.exceptions.NoPermissionError)
                else "authentication failed (wrong or missing user or password in the URL)")
        return RedisRefused(f"{where} refused us: {what}: {reason}", url=redacted(url))
    if isinstance(e, redis.exceptions.MovedError) and _kind(url) != "cluster":
        return RedisRefused(f"{where} refused us: it is a node of a Redis Cluster ({reason}): use a "
                            f"redis+cluster:// URL", url=redacted(url))
    if isinstance(e, redis.ReadOnlyError) and _kind(url) == "single":
        return ConnectionLost(f"{where} unreachable: it is a read-only replica ({reason}); xq writes to the "
                              f"master: give the master's address, or the sentinels' in a redis+sentinel:// URL",
                              url=redacted(url))
    return ConnectionLost(f"{where} unreachable: {reason}", url=redacted(url))


def _kind(url: str) -> str | None:
    try:
        return parse_url(url).kind
    except ConfigError:
        return None


def replica_error(url: str, role) -> ConnectionLost:
    """What `ROLE` saying replica means to xq, which writes: the server is unusable until promoted."""
    def s(v):
        return v.decode() if isinstance(v, bytes) else str(v)
    of = f" of {s(role[1])}:{s(role[2])}" if len(role) > 2 else ""
    return ConnectionLost(f"Redis at {redacted(url)} unreachable: it is a read-only replica{of}; xq writes to the "
                          f"master: give the master's address, or the sentinels' in a redis+sentinel:// URL",
                          url=redacted(url))


def cluster_node_error(url: str) -> RedisRefused:
    return RedisRefused(f"Redis at {redacted(url)} refused us: it is a node of a Redis Cluster (cluster_enabled:1): "
                        f"use a redis+cluster:// URL", url=redacted(url))


def full_message(url: str, what: str = "the write was refused", e: BaseException | None = None) -> str:
    """What to tell an operator about a Redis that refuses writes (e: the reply, for which of the two)."""
    if e is not None and cannot_persist(e):
        return (f"Redis at {redacted(url)} cannot persist to disk (MISCONF: its last RDB save failed and "
                f"stop-writes-on-bgsave-error is yes): {what}; fix the disk (space, permissions: see the Redis "
                f"log; writes resume after the next good save) or set stop-writes-on-bgsave-error no")
    return (f"Redis at {redacted(url)} is full (used memory > maxmemory, policy noeviction): {what}; free "
            f"memory (finish or purge tasks, shorten --result-ttl) or raise maxmemory")


class Backoff:
    """Capped exponential backoff with full jitter: the n-th delay is uniform in [base, min(cap, base*2^n)]."""

    __slots__ = ("base", "cap", "attempt")

    def __init__(self, base: float = 0.05, cap: float = 5.0):
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        hi = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return random.uniform(self.base, max(self.base, hi))

    def reset(self) -> None:
        self.attempt = 0


class RetryWindow:
    """How long a caller retries through ConnectionLost: pause() gives the jittered wait before the next
    try, or raises the failure once the window of `seconds` (from the first failure) would be passed.
    Shared by the sync and asyncio brokers and the producers' enqueue resends."""

    __slots__ = ("seconds", "deadline", "backoff")

    def __init__(self, seconds: float, start: float | None = None):
        """start: the monotonic time the caller's call began, when the window counts from it (a call that
        stalls for a socket timeout before it fails has used that much of its window); else it counts
        from the first failure (long bulk operations, each outage of which gets the window)."""
        self.seconds, self.backoff = seconds, Backoff(0.05, 2.0)
        self.deadline = None if start is None else start + seconds

    def pause(self, e: BaseException) -> float:
        if self.seconds <= 0 or not isinstance(e, ConnectionLost):
            raise e
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.seconds
        pause = self.backoff.next()
        if now + pause > self.deadline:
            raise e
        return pause


def failure(e: BaseException, url: str) -> BaseException:
    """For a broker's guard: the OUTAGE error e stands for, or raise e itself (a bug: not retried)."""
    t = translate(e, url)
    if t is e and not isinstance(e, OUTAGE):
        raise e
    if t is not e:
        t.__cause__ = e
    return t


class Health:
    """Logs a connection's state changes, once each: down (with the reason), the reason changing while down
    (say an outage turning into a refused password), and up again (with how long it was down)."""

    __slots__ = ("what", "url", "ok", "since", "reason", "outages")

    def __init__(self, what: str, url: str):
        self.what, self.url = what, redacted(url)
        self.ok, self.since, self.reason, self.outages = True, 0.0, "", 0

    def down(self, e: BaseException, retry_in: float | None = None) -> None:
        kind = classify(e) or "error"
        reason = str(e)
        if reason.startswith(f"Redis at {self.url} "):  # said by translate(): keep only the why
            reason = reason.split(": ", 1)[-1]
        prev = self.reason.partition(":")[0]
        if kind != prev or (self.ok and not prev):  # ok with reason 'full': answering, not yet writing
            if self.ok and not prev:
                self.since = time.monotonic()
                self.outages += 1
            then = f"; retrying (next in {retry_in:.2f} s)" if retry_in is not None else ""
            if kind == "full" and cannot_persist(e):
                log.error("%s: Redis at %s cannot persist to disk (MISCONF: its last RDB save failed): writes "
                          "are refused; results and releases are kept here until Redis accepts writes "
                          "again%s", self.what, self.url, then)
            elif kind == "full":
                log.error("%s: Redis is full at %s (used memory > maxmemory under noeviction): writes are "
                          "refused; results and releases are kept here until Redis accepts writes "
                          "again%s", self.what, self.url, then)
            elif kind == "refused" and "redis+cluster://" in reason:
                log.error("%s: Redis at %s refuses us (%s)%s", self.what, self.url, reason, then)
            elif kind == "refused":
                log.error("%s: Redis at %s refuses us (%s); check the password, user ACL and database in "
                          "the URL%s", self.what, self.url, reason, then)
            else:
                log.error("%s: Redis at %s unreachable (%s)%s; nothing is lost meanwhile", self.what, self.url,
                          reason, then)
        self.ok, self.reason = False, f"{kind}:{reason}"

    def up(self) -> None:
        """Redis answers again.  After 'full' that only says it answers: the state stays until wrote()."""
        if self.ok or self.reason.startswith("full:"):
            self.ok = True
            return
        log.warning("%s: Redis at %s is reachable again after %.1f s", self.what, self.url,
                    time.monotonic() - self.since)
        self.ok, self.reason = True, ""

    @property
    def full(self) -> bool:
        return self.reason.startswith("full:")

    def wrote(self) -> None:
        """A write was accepted: after 'full', Redis takes writes again (logged once)."""
        if self.reason.startswith("full:"):
            log.warning("%s: Redis at %s takes writes again after %.1f s refusing them", self.what, self.url,
                        time.monotonic() - self.since)
            self.ok, self.reason = True, ""


MASTER_CHECK_EVERY = 1.0   # seconds between two asks of the sentinels for the master's address
SENTINEL_TIMEOUT = 1.0     # seconds a sentinel may take to answer before the next one is asked


def _named(replies) -> list[tuple[str, int]]:
    return [(r[0].decode() if isinstance(r[0], bytes) else r[0], int(r[1])) for r in replies
            if isinstance(r, (list, tuple)) and len(r) == 2]


def _choose(named: list, current, is_master, previous=None) -> tuple | None:
    """The master to use from the addresses the sentinels named: a new one (not `current`) as soon as one
    sentinel names it and it says it is a master (is_master(addr)); else current if named; else the one most
    name.  A sentinel that is behind or wrong cannot move us to a server that is not a master, nor back to
    the master we left (`previous`: it still says it is one until the sentinels demote it) unless every
    sentinel that answers names it again."""
    if not named:
        return None
    for a in dict.fromkeys(named):
        if a == current or current is None:
            continue
        if a == previous and named.count(a) < len(named):
            continue
        if is_master(a):
            return a
    if current in named:
        return current
    return max(set(named), key=named.count)


def _is_master(role) -> bool:
    return bool(role) and role[0] in (b"master", "master")


class _Sentinel(redis.sentinel.Sentinel):
    """redis-py's Sentinel, finding the master by GET-MASTER-ADDR-BY-NAME, which names a promoted replica as
    soon as it is one (SENTINEL MASTERS, which redis-py reads, names the old master until the whole failover
    is over: a reconnect during a planned failover went back to the old master, still taking writes)."""

    current = previous = None

    def discover_master(self, service_name):
        replies, errors = [], []
        for s in self.sentinels:
            try:
                replies.append(s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service_name))
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as e:
                errors.append(_sentinel_error(s, e))

        def is_master(a):
            try:
                with redis.Redis(host=a[0], port=a[1], **_probe_options(self.connection_kwargs)) as node:
                    return _is_master(node.execute_command("ROLE"))
            except Exception:  # noqa: BLE001 - not reachable (yet): not followed now
                return False
        return _adopt(self, _choose(_named(replies), self.current, is_master, self.previous), service_name, errors)


class _AsyncSentinel(redis.asyncio.sentinel.Sentinel):
    """_Sentinel for redis.asyncio."""

    current = previous = None

    async def discover_master(self, service_name):
        import redis.asyncio as aredis

        replies, errors = [], []
        for s in self.sentinels:
            try:
                replies.append(await s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service_name))
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as e:
                errors.append(_sentinel_error(s, e))
        named = _named(replies)
        masters = set()
        for a in dict.fromkeys(named):
            if a != self.current and self.current is not None:
                node = aredis.Redis(host=a[0], port=a[1], **_probe_options(self.connection_kwargs))
                try:
                    if _is_master(await node.execute_command("ROLE")):
                        masters.add(a)
                except Exception:  # noqa: BLE001
                    pass
                finally:
                    await node.aclose()
        return _adopt(self, _choose(named, self.current, masters.__contains__, self.previous), service_name, errors)


def _sentinel_error(sentinel, e: BaseException) -> str:
    kw = sentinel.connection_pool.connection_kwargs
    return f"{kw.get('host')}:{kw.get('port')}: {type(e).__name__}: {e}"


def _adopt(sentinel, chosen, service_name: str, errors: list) -> tuple:
    """The master a discover_master chose, remembered (with the one it replaces) for the next choice."""
    if chosen is None:
        raise redis.sentinel.MasterNotFoundError(
            f"no sentinel names a master {service_name!r}" + (f" ({'; '.join(errors)})" if errors else ""))
    if chosen != sentinel.current:
        sentinel.previous, sentinel.current = sentinel.current, chosen
    return chosen


def _probe_options(kw: dict) -> dict:
    keep = ("username", "password", "ssl", *TLS_OPTIONS)
    return {**{k: v for k, v in kw.items() if k in keep}, "socket_timeout": 0.5, "socket_connect_timeout": 0.5}


class MasterWatch:
    """On a Sentinel set: notices that the sentinels name another master than the one a client's
    connections were made to, and drops them, so that the next command reaches the new master.

    redis-py asks the sentinels only when it opens a connection, and an open one stays on the old master as
    long as that one answers: after a planned `SENTINEL FAILOVER` the old master takes writes until the
    sentinels demote it (up to 10 s, their INFO period), and every write in between (enqueues acknowledged,
    completions) is thrown away with its data.  check() asks them (the client's _Sentinel) at most once a
    MASTER_CHECK_EVERY and compares with its last answer; a sentinel that does not answer costs at most
    SENTINEL_TIMEOUT, and a check no sentinel answers is skipped (the connections stand until they fail).
    A change raises ConnectionLost, which every caller handles as an outage (the supervisor reconnects at
    once, a producer resends on the new master: ENQUEUE skips the ids it has).  A no-op on other URLs."""

    __slots__ = ("url", "topology", "next", "seen")

    def __init__(self, url: str):
        self.url = url
        self.topology = parse_url(url)
        self.next = 0.0 if self.topology.kind == "sentinel" else math.inf
        self.seen = None  # the master the sentinels named at the last check

    def due(self) -> bool:
        return time.monotonic() >= self.next

    def _moved(self, old, new) -> ConnectionLost:
        return ConnectionLost(f"Redis at {redacted(self.url)}: the sentinels now name {new[0]}:{new[1]} as master "
                              f"{self.topology.master!r} (it was {old[0]}:{old[1]}, a failover); reconnecting to it",
                              url=redacted(self.url))

    def _saw(self, new) -> tuple | None:
        old, self.seen = self.seen, tuple(new)
        return old if old is not None and old != self.seen else None

    def check(self, client) -> None:
        """ConnectionLost if client's master was replaced (its connections are dropped first)."""
        if not self.due():
            return
        self.next = time.monotonic() + MASTER_CHECK_EVERY
        pool = client.connection_pool
        try:
            new = pool.sentinel_manager.discover_master(self.topology.master)
        except Exception:  # noqa: BLE001 - no sentinel answers: nothing to compare with
            return
        old = self._saw(new)
        if old is not None:
            pool.disconnect()
            raise self._moved(old, self.seen)

    async def acheck(self, client) -> None:
        """check() for a redis.asyncio client."""
        if not self.due():
            return
        self.next = time.monotonic() + MASTER_CHECK_EVERY
        pool = client.connection_pool
        try:
            new = await pool.sentinel_manager.discover_master(self.topology.master)
        except Exception:  # noqa: BLE001
            return
        old = self._saw(new)
        if old is not None:
            await pool.disconnect()
            raise self._moved(old, self.seen)


# What a caller above this layer catches, and all it catches, for a Redis failure: the broker translates
# every other exception of a Redis call into one of these (see translate) or lets it through as a bug.
OUTAGE = (ConnectionLost, RedisRefused, RedisFull)
