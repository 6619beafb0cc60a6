"""The JSON endpoints of `xq web`, each a thin call into xq.inspect.AsyncInspector or xq.AsyncProducer.

Every endpoint goes through `endpoint(role)`: it checks the Bearer token (see xq.web.auth) and turns the
library's errors into JSON errors `{"error": {"code", "message"[, "field"]}}` with a 4xx status (503 when
Redis cannot be reached), so bad input never gets a 500.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import math
import re
import time
from urllib.parse import quote

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..app import DEFAULT_QUEUE
from ..keys import queue_keys
from ..stats import MAX_MINUTES
from ..errors import (ConfigError, ConnectionLost, PayloadTooLarge, RedisFull, RedisRefused,
                      TaskTrimmed, UnknownTask)
from . import auth

log = logging.getLogger("xq.web")

MAX_BODY = 16 * 1024 * 1024  # bytes of a request body; the producer's max_payload checks the payload itself
MAX_LIMIT = 1000  # tasks in one page


class ApiError(Exception):
    """An error answered as JSON: status, a short code, a message and the field it is about."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def _default(obj):
    if isinstance(obj, (bytes, bytearray, memoryview)):  # a raw-bytes result or payload
        return {"encoding": "base64", "size": len(obj), "data": base64.b64encode(obj).decode()}
    raise TypeError(f"not JSON: {type(obj).__name__}")


def json_response(data, status: int = 200) -> Response:
    return Response(orjson.dumps(data, default=_default), status_code=status, media_type="application/json")


def error_response(e: ApiError) -> Response:
    body = {"code": e.code, "message": e.message}
    if e.field is not None:
        body["field"] = e.field
    headers = {"WWW-Authenticate": 'Bearer realm="xq"'} if e.status == 401 else None
    if e.status == 429:
        headers = {"Retry-After": e.message.rsplit(" ", 2)[-2]}
    return Response(orjson.dumps({"error": body}), status_code=e.status, media_type="application/json",
                    headers=headers)


_INVALID = re.compile(r"^invalid (queue|state|name|offset|limit|minutes|task id)\b")


async def http_error(request: Request, exc) -> Response:
    """Starlette's own errors (no such route, method not allowed) in the API's JSON form."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    resp = error_response(ApiError(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}"))
    resp.headers.update(exc.headers or {})  # a 405's Allow (RFC 9110)
    return resp


def _translate(e: Exception) -> ApiError | None:
    """The ApiError a library error stands for, or None for a bug."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, TaskTrimmed):
        return ApiError(404, "trimmed", str(e))
    if isinstance(e, UnknownTask):
        return ApiError(404, "not_found", str(e))
    if isinstance(e, PayloadTooLarge):
        return ApiError(413, "payload_too_large", str(e), "payload")
    if isinstance(e, ConfigError):
        m = _INVALID.match(str(e))  # the library's messages start "invalid <what> ...": name the field
        return ApiError(422, "invalid", str(e), m[1].replace(" ", "_") if m else None)
    if isinstance(e, RedisFull):
        return ApiError(507, "redis_full", str(e))
    if isinstance(e, (ConnectionLost, RedisRefused)):
        return ApiError(503, "redis_unavailable", str(e))
    return None


def endpoint(role: str | None, query_token: bool = False):
    """Wrap a handler(state, request): role "read" or "admin" (None: no token needed, for probes).
    query_token: also take the token from a `token` query parameter (for browsers' EventSource)."""
    def wrap(handler):
        @functools.wraps(handler)
        async def run(request: Request) -> Response:
            state = request.app.state.xq
            try:
                if role is not None and state.tokens:
                    check_role(state.tokens, request, role, limiter=state.limiter, query_token=query_token)
                return await handler(state, request)
            except Exception as e:  # noqa: BLE001 - a bug is logged and answered as JSON too
                err = _translate(e)
                if err is None:
                    log.exception("%s %s failed", request.method, request.url.path)
                    err = ApiError(500, "internal", f"internal error ({type(e).__name__}); see the server log")
                return error_response(err)
        return run
    return wrap


def check_role(tokens, request, role: str, limiter: auth.FailLimiter | None = None,
               query_token: bool = False) -> None:
    """Raise ApiError unless the request (HTTP or WebSocket) carries a token of the role: 401 none or a
    wrong one, 403 a read token on an admin endpoint, 429 while its address is blocked for bad tokens."""
    addr = request.client.host if request.client else "?"
    now = time.monotonic()
    if limiter is not None and (wait := limiter.blocked_for(addr, now)):
        raise ApiError(429, "too_many_failures", f"too many bad tokens from {addr}; retry in {math.ceil(wait)} s")
    header = request.headers.get("authorization")
    if header is None and query_token and request.query_params.get("token"):
        header = f"Bearer {request.query_params['token']}"
    token = auth.match(tokens, header)
    if token is None:
        if header and limiter is not None:
            limiter.fail(addr, now)
        raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")
    if role == "admin" and token.role != "admin":
        log.info("token %r (role read) refused on %s %s", token.name, request.method, request.url.path)
        raise ApiError(403, "forbidden", f"this endpoint needs an admin token; token {token.name!r} is read-only")


# ---------------------------------------------------------------- parameters
MAX_INT = 10**12  # the largest integer query parameter (an offset): a bigger one is no use and breaks JSON


def q_int(request: Request, name: str, default: int, lo: int, hi: int = MAX_INT) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(422, "invalid", f"query parameter {name}={raw!r}: expected an integer", name) from None
    if v < lo or v > hi:
        span = f"{lo}..{hi}"
        raise ApiError(422, "invalid", f"query parameter {name}={v}: expected {span}", name)
    return v


def q_bool(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "0").lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("", "0", "false", "no"):
        return False
    raise ApiError(422, "invalid", f"query parameter {name}={raw!r}: expected 1/true or 0/false", name)


def q_str(request: Request, name: str) -> str | None:
    return request.query_params.get(name) or None


# The fields of POST /api/tasks: each with the JSON types it may have (bool is never a number).
_STR, _NUM, _INT = ("string",), ("number",), ("integer",)
SUBMIT_FIELDS = {
    "name": _STR, "payload": None, "queue": _STR, "priority": ("integer", "string"), "max_retries": _INT,
    "delay": _NUM, "eta": _NUM, "expires": _NUM, "timeout": _NUM, "depends_on": ("array", "string"),
    "on_dependency_failure": _STR, "unique_key": _STR, "unique_ttl": _NUM, "concurrency_key": _STR,
    "max_concurrency": _INT, "rate_key": _STR, "rate_limit": _STR, "result_ttl": _INT, "task_id": _STR,
}


def _json_type(v) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "null" if v is None else "object"


def submit_options(body) -> tuple[str, object, dict]:
    """(name, payload, enqueue options) of a submit body, or ApiError naming the bad field."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the request body must be a JSON object", "body")
    for field, value in body.items():
        if field not in SUBMIT_FIELDS:
            raise ApiError(422, "invalid", f"unknown field {field!r}; expected some of {', '.join(SUBMIT_FIELDS)}",
                           field)
        allowed = SUBMIT_FIELDS[field]
        if allowed is None or value is None:
            continue
        t = _json_type(value)
        if not (t in allowed or (t == "integer" and "number" in allowed)):
            raise ApiError(422, "invalid", f"field {field!r}: expected {' or '.join(allowed)}, got {t}", field)
        if t == "number" and not math.isfinite(value):
            raise ApiError(422, "invalid", f"field {field!r}: expected a finite number", field)
        if field == "depends_on" and t == "array" and not all(isinstance(d, str) for d in value):
            raise ApiError(422, "invalid", "field 'depends_on': expected an array of task ids (strings)", field)
    name = body.get("name")
    if not name:
        raise ApiError(422, "invalid", "field 'name' (the task name) is required", "name")
    opts = {k: v for k, v in body.items() if k not in ("name", "payload") and v is not None}
    return name, body.get("payload"), opts


async def read_json(request: Request):
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, "payload_too_large", f"the request body is over {MAX_BODY} bytes", "body")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "payload_too_large", f"the request body is over {MAX_BODY} bytes", "body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, "bad_json", f"the request body is not JSON: {e}", "body") from None


def _field_of(e: ConfigError, given) -> str | None:
    """The submit field a producer's ConfigError is about: of the fields given, the one its message
    mentions first (as `max_retries` or `task id`)."""
    msg = str(e)
    at = {f: min((i for i in (msg.find(f), msg.find(f.replace("_", " "))) if i >= 0), default=-1) for f in given}
    found = sorted((i, f) for f, i in at.items() if i >= 0)
    return found[0][1] if found else None


# ---------------------------------------------------------------- endpoints
@endpoint(None)
async def healthz(state, request):
    return json_response({"status": "ok"})


@endpoint(None)
async def readyz(state, request):
    try:
        await state.producer.broker.ping()
    except (ConnectionLost, RedisRefused) as e:
        return error_response(ApiError(503, "redis_unavailable", str(e)))
    return json_response({"status": "ready"})


@endpoint(None)
async def openapi(state, request):
    from .openapi import DOCUMENT
    return json_response(DOCUMENT)


@endpoint("read")
async def list_queues(state, request):
    return json_response({"queues": await state.inspector.queues(by_name=q_bool(request, "by_name"))})


@endpoint("read")
async def get_queue(state, request):
    q = request.path_params["queue"]
    return json_response(await state.inspector.queue(q, by_name=q_bool(request, "by_name")))


@endpoint("read")
async def queue_tasks(state, request):
    q = request.path_params["queue"]
    st = q_str(request, "state")
    if st is None:
        raise ApiError(422, "invalid", "query parameter 'state' is required", "state")
    page = await state.inspector.tasks(q, st, name=q_str(request, "name"), offset=q_int(request, "offset", 0, 0),
                                       limit=q_int(request, "limit", 50, 1, MAX_LIMIT))
    return json_response(page)


@endpoint("read")
async def queue_history(state, request):
    q = request.path_params["queue"]
    rows = await state.inspector.history(q, name=q_str(request, "name"),
                                         minutes=q_int(request, "minutes", 60, 1, MAX_MINUTES))
    return json_response({"queue": q, "history": rows})


async def task_view(state, tid: str, queue: str | None) -> dict:
    """The task's view (AsyncInspector.task: a payload or result over PREVIEW bytes, or raw bytes, is not
    read) with each payload_info/result_info's "href", the route downloading it; UnknownTask if none."""
    q = await state.producer._find(tid, queue)
    view = await state.inspector.task(q, tid)
    if view is None:
        raise await state.producer._missing(tid, [q])
    for field in ("payload", "result"):
        if view[field + "_info"] is not None:
            view[field + "_info"]["href"] = f"/api/tasks/{quote(tid, safe='')}/{field}?queue={quote(q, safe='')}"
    return view


@endpoint("read")
async def get_task(state, request):
    return json_response(await task_view(state, request.path_params["task_id"], q_str(request, "queue")))


NOT_READY = ("queued", "scheduled", "retrying", "running", "waiting")


async def download(state, tid: str, queue: str | None, field: str) -> Response:
    """The task's payload or result whole: raw bytes as an attachment "<id>.<field>[.jpg|.png|...]" of the
    content type their first bytes show (sniff), else application/octet-stream; JSON as application/json.
    A result: 409 not_ready while the task is unfinished, 404 no_result once it has failed (dead, expired,
    canceled)."""
    q = await state.producer._find(tid, queue)
    st, data, ct = (await state.producer.broker.records(queue_keys(q), [tid], "state", field,
                                                        "ct" if field == "payload" else "rct"))[0]
    if st is None:
        raise await state.producer._missing(tid, [q])
    if field == "result" and st != b"done":
        state_ = st.decode(errors="replace")
        if state_ in NOT_READY:
            raise ApiError(409, "not_ready", f"task {tid} is {state_}: it has no result yet")
        raise ApiError(404, "no_result", f"task {tid} is {state_}: it has no result")
    if ct == b"b":
        media, ext = sniff(data or b"")
        name = re.sub(r"[^A-Za-z0-9._-]", "_", tid) + "." + field + ext
        return Response(data or b"", media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
    return Response(data or b"null", media_type="application/json")


# (magic bytes at the start, or at offset 8 for ISO media, content type, file extension): the formats the
# media processors read and write; anything else is application/octet-stream
_MAGIC = ((b"\xff\xd8\xff", "image/jpeg", ".jpg"), (b"\x89PNG\r\n\x1a\n", "image/png", ".png"),
          (b"GIF87a", "image/gif", ".gif"), (b"GIF89a", "image/gif", ".gif"))


def sniff(data: bytes) -> tuple[str, str]:
    """The content type and extension of raw bytes whose format their first bytes show (JPEG, PNG, GIF, WebP,
    AVIF, MP4), else application/octet-stream and no extension."""
    for magic, media, ext in _MAGIC:
        if data.startswith(magic):
            return media, ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", ".webp"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif", ".avif"
        return "video/mp4", ".mp4"
    return "application/octet-stream", ""


@endpoint("read")
async def task_payload(state, request):
    return await download(state, request.path_params["task_id"], q_str(request, "queue"), "payload")


@endpoint("read")
async def task_result(state, request):
    return await download(state, request.path_params["task_id"], q_str(request, "queue"), "result")


@endpoint("read")
async def list_workers(state, request):
    return json_response({"workers": await state.inspector.workers()})


@endpoint("read")
async def get_worker(state, request):
    wid = request.path_params["worker_id"]
    w = await state.inspector.worker(wid)
    if w is None:
        raise ApiError(404, "not_found", f"no live worker with id {wid!r}")
    return json_response(w)


def query_options(request: Request) -> dict:
    """The submit fields given as query parameters (with a raw-bytes body), typed as SUBMIT_FIELDS says:
    an integer or number parsed, priority a level or a name, depends_on comma-separated ids."""
    out = {}
    for field, raw in request.query_params.items():
        allowed = SUBMIT_FIELDS.get(field, ())
        if field == "payload" or field not in SUBMIT_FIELDS:
            raise ApiError(422, "invalid", f"unknown query parameter {field!r}; expected some of "
                           f"{', '.join(f for f in SUBMIT_FIELDS if f != 'payload')} (the body is the payload)",
                           field)
        if "array" in allowed:
            out[field] = [v for v in raw.split(",") if v]
        elif "integer" in allowed and re.fullmatch(r"-?[0-9]+", raw):
            out[field] = int(raw)
        elif "number" in allowed:
            try:
                out[field] = float(raw)
            except ValueError:
                raise ApiError(422, "invalid", f"query parameter {field}={raw!r}: expected a number", field) \
                    from None
        elif "string" in allowed:
            out[field] = raw
        else:
            raise ApiError(422, "invalid", f"query parameter {field}={raw!r}: expected an integer", field)
    return out


async def read_bytes(request: Request, limit: int) -> bytes:
    """The raw body, at most limit bytes (413 naming the producer's max_payload)."""
    declared = request.headers.get("content-length", "")
    too_big = ApiError(413, "payload_too_large", f"the payload is over max_payload={limit} bytes", "payload")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


@endpoint("admin")
async def submit_task(state, request):
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/octet-stream":
        opts = query_options(request)  # checked before the body is read
        name, _, opts = submit_options(opts)
        payload = await read_bytes(request, state.producer.max_payload)
    else:
        name, payload, opts = submit_options(await read_json(request))
    try:
        tid = await state.producer.enqueue(name, payload, **opts)
    except PayloadTooLarge:
        raise
    except ConfigError as e:
        raise ApiError(422, "invalid", str(e), _field_of(e, ["name", *opts])) from None
    return json_response({"id": tid, "queue": opts.get("queue", DEFAULT_QUEUE)}, status=201)


@endpoint("admin")
async def cancel_task(state, request):
    tid = request.path_params["task_id"]
    outcome = await state.producer.cancel(tid, queue=q_str(request, "queue"))
    return json_response({"id": tid, "outcome": outcome})


@endpoint("admin")
async def pause_queue(state, request):
    q = request.path_params["queue"]
    changed = await state.inspector.pause_queue(q)
    return json_response({"queue": q, "paused": True, "changed": changed})


@endpoint("admin")
async def resume_queue(state, request):
    q = request.path_params["queue"]
    changed = await state.inspector.resume_queue(q)
    return json_response({"queue": q, "paused": False, "changed": changed})


# ---------------------------------------------------------------- second slice: dead letters, flush, batch, events
MAX_BATCH = 10_000  # tasks in one POST /api/tasks/batch, ids in one replay or purge
HEARTBEAT = 15.0  # seconds between SSE comment lines (keeps proxies from closing an idle stream)


async def in_thread(state, fn, *args, **kw):
    """Run a sync-only Producer call (dead letters, replay, purge, flush) in a worker thread, one at a
    time: the lock bounds the threads to one and keeps the sync Producer's connection unshared."""
    async with state.sync_lock:
        return await asyncio.to_thread(fn, *args, **kw)


def _body_fields(body, allowed: dict) -> dict:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the request body must be a JSON object", "body")
    for field, value in body.items():
        if field not in allowed:
            raise ApiError(422, "invalid", f"unknown field {field!r}; expected some of {', '.join(allowed)}", field)
        if _json_type(value) not in allowed[field]:  # null too: leave a field out rather than null
            raise ApiError(422, "invalid", f"field {field!r}: expected {' or '.join(allowed[field])}, "
                                           f"got {_json_type(value)}", field)
    return {k: v for k, v in body.items() if v is not None}


def _ids(body: dict, field: str = "ids") -> list[str] | None:
    ids = body.get(field)
    if ids is None:
        return None
    if not all(isinstance(i, str) and i for i in ids):
        raise ApiError(422, "invalid", f"field {field!r}: expected an array of task ids (non-empty strings)", field)
    if len(ids) > MAX_BATCH:
        raise ApiError(413, "too_many", f"field {field!r}: {len(ids)} ids, at most {MAX_BATCH} a request", field)
    return ids


@endpoint("read")
async def dead_letters(state, request):
    q = request.path_params["queue"]
    offset, limit = q_int(request, "offset", 0, 0), q_int(request, "limit", 50, 1, MAX_LIMIT)
    tasks = await in_thread(state, state.sync.dead_letters, q, offset=offset, limit=limit)
    count = await in_thread(state, state.sync.dead_count, q)
    return json_response({"queue": q, "count": count, "offset": offset, "limit": limit, "tasks": tasks})


@endpoint("admin")
async def replay_dead(state, request):
    q = request.path_params["queue"]
    body = _body_fields(await read_json(request), {"ids": ("array",), "priority": ("integer", "string"),
                                                  "to_queue": ("string",)})
    ids = _ids(body)
    try:
        done = await in_thread(state, state.sync.replay, q, ids, priority=body.get("priority"),
                               to_queue=body.get("to_queue"))
    except ConfigError as e:
        raise ApiError(422, "invalid", str(e), _field_of(e, ["priority", "to_queue", "queue"])) from None
    replayed = set(done)
    skipped = [i for i in dict.fromkeys(ids or []) if i not in replayed]
    return json_response({"queue": body.get("to_queue", q), "replayed": done, "count": len(done),
                          "skipped": skipped})


@endpoint("admin")
async def purge_dead(state, request):
    q = request.path_params["queue"]
    body = _body_fields(await read_json(request), {"ids": ("array",), "all": ("boolean",)})
    ids = _ids(body)
    if (ids is None) == (body.get("all") is not True):
        raise ApiError(422, "invalid", "give either 'ids' (the dead tasks to delete) or 'all': true", "ids")
    if ids is None:
        n = await in_thread(state, state.sync.purge_dead, q)
        return json_response({"queue": q, "purged": n})
    gone = await in_thread(state, state.sync.purge_dead, q, ids)
    return json_response({"queue": q, "purged": len(gone), "ids": gone})


@endpoint("admin")
async def flush_queue(state, request):
    q = request.path_params["queue"]
    body = _body_fields(await read_json(request), {"state": ("string",)})
    if "state" not in body:
        raise ApiError(422, "invalid", "field 'state' is required (queued, scheduled, retrying or dead)", "state")
    try:
        n = await in_thread(state, state.sync.flush, q, body["state"])
    except ConfigError as e:
        raise ApiError(422, "invalid", str(e), "state") from None
    return json_response({"queue": q, "state": body["state"], "deleted": n})


@endpoint("admin")
async def submit_batch(state, request):
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the request body must be a JSON object", "body")
    payloads = body.get("payloads")
    if not isinstance(payloads, list) or not payloads:
        raise ApiError(422, "invalid", "field 'payloads' (an array of task payloads, one per task) is required",
                       "payloads")
    if len(payloads) > MAX_BATCH:
        raise ApiError(413, "too_many", f"field 'payloads': {len(payloads)} tasks, at most {MAX_BATCH} a request",
                       "payloads")
    rest = {k: v for k, v in body.items() if k != "payloads"}
    if "payload" in rest or "task_id" in rest:
        bad = "payload" if "payload" in rest else "task_id"
        raise ApiError(422, "invalid", f"field {bad!r} is not for a batch (give 'payloads'; ids are generated)", bad)
    name, _, opts = submit_options(rest)
    try:
        ids = await state.producer.enqueue_many(name, payloads, **opts)
    except PayloadTooLarge as e:
        raise ApiError(413, "payload_too_large", str(e), "payloads") from None
    except ConfigError as e:
        raise ApiError(422, "invalid", str(e), _field_of(e, ["name", *opts])) from None
    return json_response({"ids": ids, "queue": opts.get("queue", DEFAULT_QUEUE)}, status=201)


def _csv(request, name: str) -> list[str] | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    return [v for v in raw.split(",") if v] or None


async def open_events(state, request):
    """The AsyncEventStream of the request's filters (queue=a,b ids=.. states=..), subscribed (confirmed)."""
    ids, queues, states = _csv(request, "ids"), _csv(request, "queue"), _csv(request, "states")
    if ids is not None and len(ids) > MAX_LIMIT:
        raise ApiError(413, "too_many", f"query parameter ids: at most {MAX_LIMIT} ids", "ids")
    try:
        stream = state.producer.events(ids=ids, queues=queues, states=states)
    except ConfigError as e:
        msg = str(e)
        raise ApiError(422, "invalid", msg, "states" if "state" in msg else "queue" if "queue" in msg
                       else "ids") from None
    return await stream.open()


BACKLOG = 10_000  # events held for a client that reads slower than they come; more are dropped (counted)


class _Pump:
    """A stream's events gathered for one client: a task reads the stream into a list that the writer takes
    whole (one write for all that came since the last), so the writer's cost is per batch, not per event.

    Never blocks the stream: past BACKLOG events untaken (the client reads slower than the events come, or
    not at all), the newest are dropped and counted, and the next take reports how many, at the gap."""

    def __init__(self, stream):
        self.events: list[dict] = []
        self.dropped = 0
        self.ended = False
        self.error: ConnectionLost | None = None  # why the stream ended, when Redis ended it
        self._ready = asyncio.Event()
        self._stream = stream
        self._task = asyncio.create_task(self._run(stream))

    async def _run(self, stream) -> None:
        try:
            async for ev in stream:
                if len(self.events) < BACKLOG:
                    self.events.append(ev)
                else:
                    self.dropped += 1
                self._ready.set()
        except ConnectionLost as e:
            log.warning("event stream ended: %s", e)
            self.error = e
        finally:
            self.ended = True
            self._ready.set()

    async def take(self, timeout: float | None = None) -> tuple[list[dict], int] | None:
        """(the events since the last take, how many were dropped after them); ([], 0) after timeout seconds
        without any; None once the stream has ended (or stop was called) and all is taken."""
        if not self.events and not self.dropped and not self.ended:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return [], 0
        self._ready.clear()
        if not self.events and not self.dropped:
            return None  # ended
        events, dropped, self.events, self.dropped = self.events, self.dropped, [], 0
        return events, dropped

    def stop(self) -> None:
        """End the stream's reading: take returns None from now on (after what is left)."""
        self._task.cancel()

    async def aclose(self) -> None:
        """Stop and close the stream (unsubscribe)."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._stream.aclose()


def _sse(ev: dict) -> bytes:
    return b"event: " + ev.get("state", "event").encode() + b"\ndata: " + orjson.dumps(ev) + b"\n\n"


@endpoint("read", query_token=True)
async def events_sse(state, request):
    return await sse_response(state, request)


async def sse_response(state, request) -> Response:
    """GET /api/events (and the dashboard's /ui/events, authenticated by its session cookie; the caller
    checked who may read): `event: <state>` + `data: <JSON event>` frames, all that came since the last write in
    one write; `: heartbeat` after state.heartbeat idle seconds; `event: overflow` + `data: {"dropped": n}`
    where a client reading too slowly lost n events (see _Pump)."""
    from starlette.responses import StreamingResponse

    stream = await open_events(state, request)
    heartbeat = state.heartbeat

    async def body():
        pump = _Pump(stream)

        async def gone():  # the client's going away ends the stream at once, not at the next write
            while (await request.receive())["type"] != "http.disconnect":  # (uvicorn does not cancel a
                pass                                                        # response on a disconnect)
            pump.stop()

        left = asyncio.create_task(gone())
        try:
            yield b": subscribed\n\n"
            while (got := await pump.take(heartbeat)) is not None:
                events, dropped = got
                if not events and not dropped:
                    yield b": heartbeat\n\n"
                    continue
                out = b"".join(map(_sse, events))
                if dropped:
                    out += b"event: overflow\ndata: " + orjson.dumps({"dropped": dropped}) + b"\n\n"
                yield out
            if pump.error is not None:  # said before the end, not a silent close (browsers reconnect anyway)
                yield b"event: error\ndata: " + orjson.dumps(
                    {"error": {"code": "redis_unavailable", "message": str(pump.error)}}) + b"\n\n"
        finally:  # the client went away or the stream ended: unsubscribe, shielded from Starlette's
            # cancelling the response on a disconnect (its cancel scope would cut every await here)
            with anyio.CancelScope(shield=True):
                left.cancel()
                await asyncio.gather(left, return_exceptions=True)
                await pump.aclose()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def events_ws(websocket) -> None:
    """WebSocket /api/events/ws: the events as JSON text messages, and {"overflow": true, "dropped": n}
    where a client reading too slowly lost n events (see _Pump).  An error (bad token, bad filter) ends
    the connection: a close with code 4000 + the HTTP status it stands for (4401, 4403, 4422, 4503) and the
    message as its reason, sent after accepting (a refusal before it reaches the client as a bare HTTP 403,
    whatever the error).  A stream ended by a Redis outage closes with 4503 and the reason."""
    from starlette.websockets import WebSocketDisconnect

    state = websocket.app.state.xq
    try:
        if state.tokens:
            check_role(state.tokens, websocket, "read", limiter=state.limiter, query_token=True)
        stream = await open_events(state, websocket)
    except Exception as e:  # noqa: BLE001 - answered as for HTTP
        err = _translate(e)
        if err is None:
            log.exception("WebSocket %s failed", websocket.url.path)
            err = ApiError(500, "internal", f"internal error ({type(e).__name__}); see the server log")
        await websocket.accept()
        await websocket.close(code=4000 + err.status, reason=err.message[:120])  # a close frame's reason: <= 123 bytes
        return
    await websocket.accept()
    pump = _Pump(stream)

    async def send():
        while (got := await pump.take()) is not None:
            events, dropped = got
            for ev in events:
                await websocket.send_text(orjson.dumps(ev).decode())
            if dropped:
                await websocket.send_text(orjson.dumps({"overflow": True, "dropped": dropped}).decode())
        if pump.error is not None:
            await websocket.close(code=4503, reason=str(pump.error)[:120])
        else:
            await websocket.close()

    sender = asyncio.create_task(send())
    try:
        while True:  # until the client closes (what it sends is ignored)
            recv = asyncio.ensure_future(websocket.receive())
            done, _ = await asyncio.wait({recv, sender}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                recv.cancel()
                return
            if recv.result()["type"] == "websocket.disconnect":
                return
    except WebSocketDisconnect:
        return
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await pump.aclose()
