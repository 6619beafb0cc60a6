"""What `xq web`'s endpoints cost: wall time per request through the whole ASGI app (auth, handler, JSON),
and Redis commands per request, with TASKS tasks in one queue.

    python3 bench/web_api.py [TASKS]

In-process (httpx's ASGI transport: no sockets, so the figures are the app's own cost, not uvicorn's or
the network's).  It starts a private redis-server on a free port (xq.embedded) and stops it at the end.
Redis commands are from INFO commandstats (commands inside scripts counted too).
"""

from __future__ import annotations

import asyncio
import os
import sys

import httpx
import redis

import xq
from xq.embedded import EmbeddedRedis
from xq.web import create_app

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchutil import time_requests  # noqa: E402

ROUNDS = 300  # bounded: requests per endpoint
TOKEN = "bench-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def main() -> None:
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with EmbeddedRedis() as server:
        with xq.Producer(server.url) as p:
            for i in range(0, tasks, 10_000):
                p.enqueue_many("n", list(range(min(10_000, tasks - i))))
            some = p.enqueue("n", 1)
        asyncio.run(measure(server.url, tasks, some))


async def measure(url: str, tasks: int, some: str) -> None:
    r = redis.Redis.from_url(url)
    app = create_app(url, tokens=[f"bench:admin:{TOKEN}"])
    cases = [("GET", "/api/queues", None), ("GET", "/api/queues/default", None),
             ("GET", "/api/queues/default/tasks?state=queued&limit=50", None),
             ("GET", f"/api/tasks/{some}", None), ("GET", f"/api/tasks/{some}?queue=default", None),
             ("POST", "/api/tasks", {"name": "n", "payload": {"x": 1}, "priority": "high"})]
    print(f"{tasks + 1} queued tasks in one queue, {ROUNDS} sequential requests each:")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://xq") as c:
        for method, path, body in cases:
            assert (await c.request(method, path, headers=AUTH, json=body)).status_code < 300  # warm
            await time_requests(f"{method:4} {path}", lambda: c.request(method, path, headers=AUTH, json=body), r, ROUNDS)
    await app.state.xq.producer.close()
    r.close()


if __name__ == "__main__":
    main()
