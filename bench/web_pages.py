"""What the dashboard's pages cost: wall time per page through the whole ASGI app (session, handler, HTML),
and Redis commands per page, with TASKS tasks in one queue.

    python3 bench/web_pages.py [TASKS]

In-process (httpx's ASGI transport: the app's own cost, not uvicorn's or the network's), logged in once
with an admin token.  A private redis-server on a free port (xq.embedded), stopped at the end.  Redis
commands are from INFO commandstats (commands inside scripts counted too).
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

ROUNDS = 200  # bounded: requests per page
TOKEN = "bench-0123456789abcdef"


def main() -> None:
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with EmbeddedRedis() as server:
        with xq.Producer(server.url) as p:
            for i in range(0, tasks, 10_000):
                p.enqueue_many("n", list(range(min(10_000, tasks - i))))
            some = p.enqueue("n", {"x": 1})
        asyncio.run(measure(server.url, tasks, some))


async def measure(url: str, tasks: int, some: str) -> None:
    r = redis.Redis.from_url(url)
    app = create_app(url, tokens=[f"bench:admin:{TOKEN}"], secret="bench")
    pages = ["/", "/ui/live/overview", "/queues/default", f"/queues/default?state=queued&offset={tasks // 2}",
             "/queues/default/dead", f"/tasks/{some}", f"/tasks/{some}?queue=default",
             f"/ui/live/task/{some}?queue=default", "/workers"]
    print(f"{tasks + 1} queued tasks in one queue, {ROUNDS} sequential requests each:")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://xq") as c:
        assert (await c.post("/login", data={"token": TOKEN})).status_code == 303
        for path in pages:
            assert (await c.get(path)).status_code == 200  # warm
            await time_requests(f"GET {path}", lambda: c.get(path), r, ROUNDS)
    await app.state.xq.producer.close()
    r.close()


if __name__ == "__main__":
    main()
