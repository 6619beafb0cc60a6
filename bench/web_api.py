"""What `xq web`'s endpoints cost: wall time per request through the whole ASGI app (auth, handler, JSON),
and Redis commands per request, with TASKS tasks in one queue.

    python3 bench/web_api.py [TASKS]

In-process (httpx's ASGI transport: no sockets, so the figures are the app's own cost, not uvicorn's or
the network's).  It starts a private redis-server on a free port (xq.embedded) and stops it at the end.
Redis commands are from INFO commandstats (commands inside scripts counted too).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import httpx
import redis

import xq
from xq.embedded import EmbeddedRedis
from xq.web import create_app

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
            r.config_resetstat()
            times = []
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                resp = await c.request(method, path, headers=AUTH, json=body)
                times.append(time.perf_counter() - t0)
                assert resp.status_code < 300, resp.text
            calls = sum(v["calls"] for k, v in r.info("commandstats").items() if k != "cmdstat_config")
            times.sort()
            print(f"  {method:4} {path:55} p50 {statistics.median(times) * 1000:6.2f} ms  "
                  f"p99 {times[int(len(times) * 0.99) - 1] * 1000:6.2f} ms  {calls / ROUNDS:5.1f} Redis commands")
    await app.state.xq.producer.close()
    r.close()


if __name__ == "__main__":
    main()
