"""`xq web`: an HTTP JSON API over the queues (xq.web.create_app), served by uvicorn (xq.web.serve).

Needs the optional extra: pip install 'xq-queue[web]' (Starlette, uvicorn and websockets).  The dashboard (xq/web/pages.py) is served by the same app.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import re
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route, WebSocketRoute

from ..aio import AsyncProducer
from ..conn import redacted
from ..errors import ConfigError
from ..inspect import AsyncInspector
from ..producer import Producer
from . import api, pages
from .auth import FailLimiter, Token, load_tokens, parse_tokens
from .session import Sessions

__all__ = ["create_app", "serve", "Token", "load_tokens", "LOOPBACK", "ROUTES"]

log = logging.getLogger("xq.web")

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(slots=True)
class State:
    producer: AsyncProducer
    inspector: AsyncInspector
    tokens: list[Token]
    sync: Producer  # for the sync-only calls (dead letters, replay, purge, flush): see api.in_thread
    limiter: FailLimiter = field(default_factory=FailLimiter)
    sync_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    heartbeat: float = api.HEARTBEAT


ROUTES = [
    Route("/healthz", api.healthz),
    Route("/readyz", api.readyz),
    Route("/openapi.json", api.openapi),
    Route("/api/queues", api.list_queues),
    Route("/api/queues/{queue}", api.get_queue),
    Route("/api/queues/{queue}/tasks", api.queue_tasks),
    Route("/api/queues/{queue}/history", api.queue_history),
    Route("/api/queues/{queue}/pause", api.pause_queue, methods=["POST"]),
    Route("/api/queues/{queue}/resume", api.resume_queue, methods=["POST"]),
    Route("/api/tasks", api.submit_task, methods=["POST"]),
    Route("/api/tasks/{task_id}", api.get_task),
    Route("/api/tasks/{task_id}/cancel", api.cancel_task, methods=["POST"]),
    Route("/api/tasks/{task_id}/payload", api.task_payload),
    Route("/api/tasks/{task_id}/result", api.task_result),
    Route("/api/workers", api.list_workers),
    Route("/api/workers/{worker_id}", api.get_worker),
    # second slice: dead letters, flush, batch submit, live events
    Route("/api/queues/{queue}/dead", api.dead_letters),
    Route("/api/queues/{queue}/dead/replay", api.replay_dead, methods=["POST"]),
    Route("/api/queues/{queue}/dead/purge", api.purge_dead, methods=["POST"]),
    Route("/api/queues/{queue}/flush", api.flush_queue, methods=["POST"]),
    Route("/api/tasks/batch", api.submit_batch, methods=["POST"]),
    Route("/api/events", api.events_sse),
]
WS_ROUTES = [WebSocketRoute("/api/events/ws", api.events_ws)]  # not in the OpenAPI document's paths


def create_app(url: str | None = None, *, tokens=None, anonymous: bool = False, retry_for: float = 2.0,
               socket_timeout: float = 5.0, max_payload: int | None = None, secret: str | None = None) -> Starlette:
    """The ASGI app of the API, to run with any ASGI server or mount in your own app.

    tokens: Token objects or "name:role:token" strings (None: $XQ_WEB_TOKENS).  Without any token every
    request is allowed as admin, so that needs anonymous=True (xq web allows it on loopback only).
    retry_for: seconds a request retries through a Redis outage before answering 503; socket_timeout:
    seconds a stalled Redis (it accepts, never answers) is waited for before that.  Mounted in another
    app, whose lifespan does not run this one's, await app.state.xq.producer.close() and call
    app.state.xq.sync.close() at shutdown.
    secret: the key signing the dashboard's session cookies (None: $XQ_WEB_SECRET, else random per start)."""
    if tokens is None:
        tokens = load_tokens()
    tokens = [t if isinstance(t, Token) else parse_tokens([t], "tokens")[0] for t in tokens]
    if not tokens and not anonymous:
        raise ConfigError("no tokens: pass tokens=[...] or set XQ_WEB_TOKENS (name:role:token,...), "
                          "or anonymous=True to let anyone who can reach the app administer the queues")
    kw = {} if max_payload is None else {"max_payload": max_payload}
    producer = AsyncProducer(url, retry_for=retry_for, socket_timeout=socket_timeout, **kw)
    sync = Producer(producer.url, retry_for=retry_for, socket_timeout=socket_timeout, **kw)
    state = State(producer, AsyncInspector(producer.url, broker=producer.broker), tokens, sync)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await producer.close()
        sync.close()

    app = Starlette(routes=[*ROUTES, *WS_ROUTES, *pages.ROUTES], lifespan=lifespan,  # the API's, then the dashboard's
                    exception_handlers={HTTPException: pages.http_error})  # 404/405: JSON under /api/, else HTML
    app.state.xq = state
    app.state.sessions = Sessions(secret)  # the dashboard's cookie key: secret, $XQ_WEB_SECRET or random
    return app


def serve(url: str | None = None, *, host: str = "127.0.0.1", port: int = 8080, tokens_file: str | None = None,
          log_level: str = "info") -> None:
    """Run the API with uvicorn until SIGINT/SIGTERM.  Off loopback it refuses (ConfigError) to start
    without tokens."""
    import uvicorn

    tokens = load_tokens(tokens_file)
    loopback = host in LOOPBACK
    if not tokens and not loopback:
        raise ConfigError(f"refusing to serve on {host} without tokens: anyone who can reach it could submit "
                          f"and cancel tasks; set XQ_WEB_TOKENS=name:role:token,... or pass --tokens-file")
    app = create_app(url, tokens=tokens, anonymous=loopback)
    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(asctime)s %(name)s %(message)s")
    log.info("xq web: Redis %s, listening on %s:%d", redacted(app.state.xq.producer.url), host, port)
    if tokens:
        log.info("xq web: %d token(s): %s", len(tokens), ", ".join(f"{t.name} ({t.role})" for t in tokens))
    else:
        log.warning("xq web: no tokens: every request on %s is allowed as admin (loopback only)", host)
    # open event streams (dashboards, /api/events) end at most 3 s after SIGINT/SIGTERM, not when clients go
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=3,
                log_config=_log_config(uvicorn))


_TOKEN_PARAM = re.compile(r"(?i)([?&]token=)[^&\s]*")


class HideTokens(logging.Filter):
    """Blanks the value of a token= query parameter (how browsers' EventSource and WebSocket clients pass
    their token) in uvicorn's log lines: tokens never reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_PARAM.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def _log_config(uvicorn) -> dict:
    """uvicorn's own logging configuration, with HideTokens on its handlers."""
    cfg = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    cfg.setdefault("filters", {})["hide_tokens"] = {"()": HideTokens}
    for handler in cfg["handlers"].values():  # access lines, and the WebSocket lines uvicorn logs as errors
        handler.setdefault("filters", []).append("hide_tokens")
    return cfg
