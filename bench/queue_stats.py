"""Redis time of the QSTATS read (xq queue show) against the cap, on a big queue.

    redis-server --port 36999 --save "" &    # a scratch server: this FLUSHALLs it
    python3 bench/queue_stats.py redis://127.0.0.1:36999/0
"""
import sys
import time, redis, xq
from xq.inspect import Inspector
url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:36999/0"
r = redis.Redis.from_url(url); r.flushall()
p = xq.Producer(url)
for k in range(10):
    p.enqueue_many("n", list(range(10000)))
p.enqueue_many("d", list(range(5000)), delay=600)
heads = p.enqueue_many("h", list(range(1500)))
for h in heads:
    p.enqueue("w", 1, depends_on=[h])
i = Inspector(url)
for cap in (1000, 200, 100):
  for by in (False, True):
    i.queue("default", by_name=by, sample=cap)
    r.config_resetstat()
    for _ in range(5): q = i.queue("default", by_name=by, sample=cap)
    us = r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
    print(f"sample={cap} by_name={by}: {us:.0f} us per call in Redis")
r.delete(*[k for k in r.scan_iter("xq:{default}:hooked")]); r.delete("xq:{default}:sched")
r.config_resetstat()
for _ in range(5): i.queue("default")
print("no sched, no hooked:", r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"], "us")
