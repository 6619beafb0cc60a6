"""The JSON endpoints of `xq web`, each a thin call into xq.inspect.AsyncInspector or xq.AsyncProducer.

Every endpoint goes through `endpoint(role)`: it checks the Bearer token (see xq.web.auth) and turns the
library's errors into JSON errors `{"error": {"code", "message"[, "field"]}}` with a 4xx status (503 when
Redis cannot be reached), so bad input never gets a 500.
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import re

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..app import DEFAULT_QUEUE
from ..errors import (ConfigError, ConnectionLost, MalformedRecord, PayloadTooLarge, RedisFull, RedisRefused,
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
    return Response(orjson.dumps({"error": body}), status_code=e.status, media_type="application/json",
                    headers=headers)


_INVALID = re.compile(r"^invalid (queue|state|name|offset|limit|minutes|task id)\b")


async def http_error(request: Request, exc) -> Response:
    """Starlette's own errors (no such route, method not allowed) in the API's JSON form."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(ApiError(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}"))


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


def endpoint(role: str | None):
    """Wrap a handler(state, request): role "read" or "admin" (None: no token needed, for probes)."""
    def wrap(handler):
        @functools.wraps(handler)
        async def run(request: Request) -> Response:
            state = request.app.state.xq
            try:
                if role is not None and state.tokens:
                    check_role(state.tokens, request, role)
                return await handler(state, request)
            except Exception as e:  # noqa: BLE001 - a bug is logged and answered as JSON too
                err = _translate(e)
                if err is None:
                    log.exception("%s %s failed", request.method, request.url.path)
                    err = ApiError(500, "internal", f"internal error ({type(e).__name__}); see the server log")
                return error_response(err)
        return run
    return wrap


def check_role(tokens, request: Request, role: str) -> None:
    token = auth.match(tokens, request.headers.get("authorization"))
    if token is None:
        raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")
    if role == "admin" and token.role != "admin":
        log.info("token %r (role read) refused on %s %s", token.name, request.method, request.url.path)
        raise ApiError(403, "forbidden", f"this endpoint needs an admin token; token {token.name!r} is read-only")


# ---------------------------------------------------------------- parameters
def q_int(request: Request, name: str, default: int, lo: int, hi: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(422, "invalid", f"query parameter {name}={raw!r}: expected an integer", name) from None
    if v < lo or (hi is not None and v > hi):
        span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
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
                                         minutes=q_int(request, "minutes", 60, 1, 7 * 24 * 60))
    return json_response({"queue": q, "history": rows})


@endpoint("read")
async def get_task(state, request):
    tid = request.path_params["task_id"]
    view = await state.producer.status(tid, queue=q_str(request, "queue"))
    view["result"] = None
    if view["status"] == "done":  # finished: result() reads it at once, without waiting
        try:
            view["result"] = await state.producer.result(tid, timeout=0, queue=view["queue"])
        except MalformedRecord as e:
            view["malformed"] = [*view.get("malformed", []), str(e)]
    return json_response(view)


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


@endpoint("admin")
async def submit_task(state, request):
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
