"""The OpenAPI 3.1 document of `xq web`'s API, written by hand (served at /openapi.json).

tests/test_web_api.py checks that it lists exactly the app's routes and methods, and which need a token."""

from __future__ import annotations

from ..inspect import PREVIEW
from .api import MAX_BATCH, MAX_INT, MAX_LIMIT, MAX_MINUTES, SUBMIT_FIELDS


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    what = {400: "the body is not JSON", 401: "no or a wrong Bearer token", 403: "a read token on an admin endpoint",
            404: "no such task, worker or route", 409: "the task has not finished: the message names its state",
            413: "the body or payload is too large",
            422: "bad input: the error names the field", 429: "too many bad tokens from this address", 503: "Redis cannot be reached", 507: "Redis is full"}
    return {str(c): _json(_ref("Error"), what[c]) for c in codes}


def _param(name: str, where: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema,
            "description": description}


QUEUE = _param("queue", "path", {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"}, "queue name")
TASK_ID = _param("task_id", "path", {"type": "string"}, "task id")
BY_NAME = _param("by_name", "query", {"type": "boolean"}, "also count per task name (1/true, 0/false)")
IN_QUEUE = _param("queue", "query", {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"}, "the task's queue (default: looked up in every queue)")
STATES = ["queued", "scheduled", "retrying", "running", "waiting", "dead", "done", "expired", "canceled"]
OBJECT = {"type": "object", "additionalProperties": True}


def _op(summary: str, ok: dict, *errors: int, params=(), admin: bool = False, body: dict | None = None,
        probe: bool = False, status: int = 200) -> dict:
    op = {"summary": summary, "responses": {str(status): ok, **_errors(*errors)}}
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if probe:
        op["security"] = []  # no token: for load balancers and orchestrators
    elif admin:
        op["description"] = "Needs an admin token."
    return op


READ_ERRORS = (401, 422, 429, 503)
ADMIN_ERRORS = (401, 403, 422, 429, 503)

_TYPES = {"string": {"type": "string"}, "number": {"type": "number"}, "integer": {"type": "integer"},
          "array": {"type": "array", "items": {"type": "string"}}}
SUBMIT = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {f: ({} if types is None else
                       {"anyOf": [_TYPES[t] for t in types]} if len(types) > 1 else dict(_TYPES[types[0]]))
                   for f, types in SUBMIT_FIELDS.items()},
}
SUBMIT["properties"]["name"]["minLength"] = 1
SUBMIT["properties"]["payload"]["description"] = "any JSON value, given to the task as is"
SUBMIT["properties"]["eta"]["description"] = "unix seconds: not started before"
SUBMIT["properties"]["priority"]["description"] = "0 (highest) .. 9, or critical, high, normal, low"
DOWNLOAD = {"description": "the payload or result", "content": {
    "application/json": {"schema": {}}, "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    "headers": {"Content-Disposition": {"schema": {"type": "string"},
                                        "description": "raw bytes only: attachment; filename=\"<id>.<payload|result>\""}}}
CONTENT = {"type": ["object", "null"], "required": ["type", "size", "inline", "href"], "properties": {
    "type": {"enum": ["json", "bytes"]}, "size": {"type": "integer", "description": "bytes"},
    "inline": {"type": "boolean", "description": f"the value is in the view: JSON of at most {PREVIEW} bytes"},
    "href": {"type": "string", "description": "its download: GET /api/tasks/{task_id}/payload or /result"}}}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "xq web API", "version": "1",
             "description": "Inspect and drive xq queues. Send 'Authorization: Bearer <token>'; read tokens "
                            "may call GET endpoints, admin tokens every endpoint."},
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {"get": _op("the process is alive", _json(OBJECT, "ok"), probe=True)},
        "/readyz": {"get": _op("Redis answers", _json(OBJECT, "ready"), 503, probe=True)},
        "/openapi.json": {"get": _op("this document", _json(OBJECT, "the OpenAPI document"), probe=True)},
        "/api/queues": {"get": _op("every queue with its counts", _json(
            {"type": "object", "properties": {"queues": {"type": "array", "items": _ref("Queue")}}}, "queues"),
            *READ_ERRORS, params=[BY_NAME])},
        "/api/queues/{queue}": {"get": _op("one queue's counts, latency and paused state", _json(
            _ref("Queue"), "the queue"), *READ_ERRORS, params=[QUEUE, BY_NAME])},
        "/api/queues/{queue}/tasks": {"get": _op("one page of a queue's tasks in one state", _json(
            OBJECT, "a page: tasks, offset, limit, complete"), *READ_ERRORS, params=[
            QUEUE, _param("state", "query", {"enum": STATES}, "task state", required=True),
            _param("name", "query", {"type": "string"}, "only tasks of this name"),
            _param("offset", "query", {"type": "integer", "minimum": 0, "maximum": MAX_INT}, "tasks to skip"),
            _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "page size")])},
        "/api/queues/{queue}/history": {"get": _op("per-minute stats of a queue or one task name", _json(
            {"type": "object", "properties": {"queue": {"type": "string"}, "history": {"type": "array"}}},
            "history"), *READ_ERRORS, params=[
            QUEUE, _param("name", "query", {"type": "string"}, "one task name"),
            _param("minutes", "query", {"type": "integer", "minimum": 1, "maximum": MAX_MINUTES}, "minutes back")])},
        "/api/queues/{queue}/pause": {"post": _op("stop supervisors claiming from the queue", _json(
            _ref("Paused"), "paused"), *ADMIN_ERRORS, params=[QUEUE], admin=True)},
        "/api/queues/{queue}/resume": {"post": _op("let supervisors claim again", _json(
            _ref("Paused"), "resumed"), *ADMIN_ERRORS, params=[QUEUE], admin=True)},
        "/api/tasks": {"post": _op(
            "submit a task (the options of Producer.enqueue): a JSON body, or a raw-bytes payload as an "
            "application/octet-stream body with the other fields as query parameters (depends_on "
            "comma-separated); a payload is at most the producer's max_payload bytes (413)", _json(
            {"type": "object", "properties": {"id": {"type": "string"}, "queue": {"type": "string"}}},
            "submitted"), 400, *ADMIN_ERRORS, 404, 413, 507, admin=True, body=SUBMIT, status=201)},
        "/api/tasks/{task_id}": {"get": _op("a task's status, attempt history, payload and result", _json(
            _ref("Task"), "the task"), *READ_ERRORS, 404, params=[TASK_ID, IN_QUEUE])},
        "/api/tasks/{task_id}/payload": {"get": _op(
            "a task's payload, whole: raw bytes as an application/octet-stream attachment '<id>.payload', "
            "JSON as application/json", DOWNLOAD, *READ_ERRORS, 404, params=[TASK_ID, IN_QUEUE])},
        "/api/tasks/{task_id}/result": {"get": _op(
            "a done task's result, whole: raw bytes as an application/octet-stream attachment '<id>.result', "
            "JSON as application/json.  409 not_ready while the task is unfinished (queued, scheduled, "
            "retrying, running, waiting), 404 no_result once it has failed (dead, expired, canceled)",
            DOWNLOAD, *READ_ERRORS, 404, 409, params=[TASK_ID, IN_QUEUE])},
        "/api/tasks/{task_id}/cancel": {"post": _op("cancel a task", _json(
            {"type": "object", "properties": {"id": {"type": "string"},
                                              "outcome": {"enum": ["canceled", "canceling", "finished"]}}},
            "the outcome"), *ADMIN_ERRORS, 404, params=[TASK_ID, IN_QUEUE], admin=True)},
        "/api/workers": {"get": _op("the live supervisors, newest heartbeat first", _json(
            {"type": "object", "properties": {"workers": {"type": "array", "items": OBJECT}}}, "workers"),
            *READ_ERRORS)},
        "/api/workers/{worker_id}": {"get": _op("one live supervisor", _json(OBJECT, "the worker"),
                                                *READ_ERRORS, 404, params=[
            _param("worker_id", "path", {"type": "string"}, "worker id")])},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "a token of $XQ_WEB_TOKENS or --tokens-file"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "field": {"type": "string", "description": "the bad field or parameter"}}}}},
            "Queue": {"type": "object", "additionalProperties": True, "properties": {
                "queue": {"type": "string"}, "paused": {"type": "boolean"}, "ready": {"type": "integer"},
                "scheduled": {"type": "integer"}, "running": {"type": "integer"}, "dead": {"type": "integer"},
                "latency": {"type": ["number", "null"]}}},
            "Task": {"type": "object", "additionalProperties": True,
                     "required": ["id", "queue", "status", "payload", "payload_info", "result", "result_info"],
                     "properties": {
                         "id": {"type": "string"}, "queue": {"type": "string"}, "status": {"type": "string"},
                         "payload": {"description": "the JSON payload if inline, else null"},
                         "payload_info": CONTENT,
                         "result": {"description": "the JSON result if inline, else null"},
                         "result_info": {**CONTENT, "description": "null unless the task is done"}}},
            "Paused": {"type": "object", "properties": {"queue": {"type": "string"}, "paused": {"type": "boolean"},
                                                         "changed": {"type": "boolean"}}},
        },
    },
}


# ---------------------------------------------------------------- second slice: dead letters, flush, batch, events
IDS = {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_BATCH}
PRIORITY = {"anyOf": [{"type": "integer"}, {"type": "string"}],
            "description": "0 (highest) .. 9, or critical, high, normal, low"}
BATCH = {**SUBMIT, "required": ["name", "payloads"],
         "properties": {**{k: v for k, v in SUBMIT["properties"].items() if k not in ("payload", "task_id")},
                        "payloads": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH,
                                     "description": "one task per payload (any JSON values)"}}}
_csv = {"type": "string"}
# POST /api/tasks also takes the payload as raw bytes, the other fields as query parameters
_submit = DOCUMENT["paths"]["/api/tasks"]["post"]
_submit["requestBody"]["content"]["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
_submit["parameters"] = [
    _param(f, "query", {k: v for k, v in SUBMIT["properties"][f].items() if k != "description"}
           if "array" not in (SUBMIT_FIELDS[f] or ()) else {"type": "string"},
           f"with an application/octet-stream body only: as the JSON field {f}")
    for f in SUBMIT_FIELDS if f != "payload"]

DOCUMENT["paths"].update({
    "/api/queues/{queue}/dead": {"get": _op("one page of the queue's dead letters, oldest first", _json(
        {"type": "object", "properties": {"queue": {"type": "string"}, "count": {"type": "integer"},
                                          "offset": {"type": "integer"}, "limit": {"type": "integer"},
                                          "tasks": {"type": "array", "items": OBJECT}}}, "a page"),
        *READ_ERRORS, params=[QUEUE, _param("offset", "query", {"type": "integer", "minimum": 0, "maximum": MAX_INT}, "tasks to skip"),
                              _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                                     "page size")])},
    "/api/queues/{queue}/dead/replay": {"post": _op(
        "put dead letters back to work: all or those ids, optionally at a priority and into another queue",
        _json({"type": "object", "properties": {"queue": {"type": "string"}, "count": {"type": "integer"},
                                                "replayed": {"type": "array", "items": {"type": "string"}},
                                                "skipped": {"type": "array", "items": {"type": "string"}}}},
              "the ids replayed; skipped: the ids given that were not dead letters of the queue"),
        400, *ADMIN_ERRORS, 413, params=[QUEUE], admin=True,
        body={"type": "object", "additionalProperties": False, "properties": {
            "ids": IDS, "priority": PRIORITY, "to_queue": {"type": "string"}}})},
    "/api/queues/{queue}/dead/purge": {"post": _op(
        "delete dead letters: those ids, or all", _json(
            {"type": "object", "properties": {"queue": {"type": "string"}, "purged": {"type": "integer"},
                                              "ids": {"type": "array", "items": {"type": "string"}}}},
            "how many were deleted (and which, given ids)"), 400, *ADMIN_ERRORS, 413, params=[QUEUE], admin=True,
        body={"type": "object", "additionalProperties": False,
              "properties": {"ids": IDS, "all": {"type": "boolean"}}})},
    "/api/queues/{queue}/flush": {"post": _op(
        "delete every task of the queue in one state", _json(
            {"type": "object", "properties": {"queue": {"type": "string"}, "state": {"type": "string"},
                                              "deleted": {"type": "integer"}}}, "how many"),
        400, *ADMIN_ERRORS, params=[QUEUE], admin=True, body={
            "type": "object", "additionalProperties": False, "required": ["state"],
            "properties": {"state": {"enum": ["queued", "scheduled", "retrying", "dead"]}}})},
    "/api/tasks/batch": {"post": _op(
        f"submit one task per payload (at most {MAX_BATCH}), with the options of POST /api/tasks", _json(
            {"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "string"}},
                                              "queue": {"type": "string"}}}, "submitted, ids in payload order"),
        400, *ADMIN_ERRORS, 404, 413, 507, admin=True, body=BATCH, status=201)},
    "/api/events": {"get": {
        **_op("live task events as Server-Sent Events (text/event-stream): one `event: <state>` with "
              "`data: <JSON event>` each, a `: heartbeat` comment every 15 s, `event: overflow` with "
              "`data: {\"dropped\": n}` where a client reading too slowly lost n events.  The same filters "
              "and events over a WebSocket at /api/events/ws (JSON text messages, {\"overflow\": true, "
              "\"dropped\": n} for a loss; a refused handshake closes with "
              "4000 + the HTTP status, e.g. 4401).  Browsers' EventSource and WebSocket cannot send headers: "
              "they may pass the token as ?token=, which can end up in proxy and server access logs",
              {"description": "the event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
              *READ_ERRORS, 413, params=[
                  _param("queue", "query", _csv, "queues, comma-separated (default: the ids' queues, or default)"),
                  _param("ids", "query", _csv, "only these task ids, comma-separated"),
                  _param("states", "query", _csv, "only these states, comma-separated (queued, running, done, ...)"),
                  _param("token", "query", _csv, "the token, for clients that cannot send the header")])}},
})
