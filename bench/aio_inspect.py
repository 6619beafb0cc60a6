"""Cost of the inspection reads, sync Inspector vs AsyncInspector (the same plans, xq/inspect.py), per call,
on a queue with tasks in several states; run it with PYTHONPATH at another checkout to compare the sync side
(AsyncInspector is then skipped if that checkout has none).

    redis-server --port 36998 --save "" &    # a scratch server: this FLUSHALLs it
    PYTHONPATH=. python3 bench/aio_inspect.py redis://127.0.0.1:36998/0
"""
import asyncio
import sys
import time

import redis

import xq
from xq.inspect import Inspector, run_plan

try:
    from xq.inspect import AsyncInspector
except ImportError:
    AsyncInspector = None

url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:36998/0"
N = 300  # calls per figure (bounded)
redis.Redis.from_url(url).flushall()
p = xq.Producer(url)
p.enqueue_many("n", list(range(5000)))
p.enqueue_many("d", list(range(500)), delay=600)
heads = p.enqueue_many("h", list(range(50)))
p.enqueue_many("w", list(range(50)), depends_on=heads[:1])

READS = {
    "queue()": lambda i: i.queue("default"),
    "queue(by_name)": lambda i: i.queue("default", by_name=True),
    "tasks(queued, 50)": lambda i: i.tasks("default", "queued"),
    "tasks(scheduled, 50)": lambda i: i.tasks("default", "scheduled"),
    "tasks(waiting, 50)": lambda i: i.tasks("default", "waiting"),
    "paused()": lambda i: i.paused("default"),
}


def sync_us(i, f) -> float:
    f(i)
    t = time.perf_counter()
    for _ in range(N):
        f(i)
    return (time.perf_counter() - t) / N * 1e6


async def async_us(i, f) -> float:
    await f(i)
    t = time.perf_counter()
    for _ in range(N):
        await f(i)
    return (time.perf_counter() - t) / N * 1e6


async def main():
    with Inspector(url) as si:
        ai = AsyncInspector(url) if AsyncInspector else None
        try:
            for name, f in READS.items():
                s = sync_us(si, f)
                a = await async_us(ai, f) if ai else float("nan")
                print(f"{name:22s} sync {s:8.0f} us   async {a:8.0f} us   per call, {N} calls")
        finally:
            if ai:
                await ai.close()

asyncio.run(main())


class Replay:
    """A broker answering a plan's steps with the replies a real run recorded: what a plan costs in
    Python alone (its generator steps and parsing), without Redis."""

    def __init__(self, broker):
        self.real, self.replies, self.recording = broker, [], True

    def __getattr__(self, method):
        def call(*args):
            if self.recording:
                self.replies.append(getattr(self.real, method)(*args))
                return self.replies[-1]
            return next(self.it)
        return call


if "plan_tasks" in dir(sys.modules["xq.inspect"]):
    from xq.inspect import plan_queue, plan_tasks
    with Inspector(url) as si:
        for name, make in (("plan_queue", lambda: plan_queue("default", True, 200)),
                           ("plan_tasks(queued)", lambda: plan_tasks("default", "queued", None, 0, 50, 10000)),
                           ("plan_tasks(waiting)", lambda: plan_tasks("default", "waiting", None, 0, 50, 10000))):
            rp = Replay(si.broker)
            run_plan(rp, make())
            rp.recording = False
            t = time.perf_counter()
            for _ in range(N):
                rp.it = iter(rp.replies)
                run_plan(rp, make())
            print(f"{name:22s} {len(rp.replies)} steps, {(time.perf_counter() - t) / N * 1e6:6.0f} us of Python per "
                  f"call without Redis")


class _One:
    def m(self, *args):
        return 1


def _plan(steps):
    for _ in range(steps):
        yield "m", 1


def _direct(b, steps):
    for _ in range(steps):
        b.m(1)


one, STEPS = _One(), 100000
t = time.perf_counter()
run_plan(one, _plan(STEPS))
t_plan = time.perf_counter() - t
t = time.perf_counter()
_direct(one, STEPS)
t_direct = time.perf_counter() - t
print(f"a plan step costs {(t_plan - t_direct) / STEPS * 1e6:.2f} us more than a direct broker call "
      f"({STEPS} steps)")
