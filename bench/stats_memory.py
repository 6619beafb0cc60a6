"""Memory of the stats history (docs/design.md, "Stats history"): 100 queues x 50 task names over a full day.

    PYTHONPATH=$PWD python3 bench/stats_memory.py [QUEUES] [NAMES] [HOURS]

Starts a private redis-server and writes the keys the way the supervisor does (Broker.pack_stats: one
BITFIELD per name and one for the queue per write, EXPIRE and the names index once per key and hour).
Queue 0 gets a write in every minute of every hour (the real pattern); the others one write in the last
minute of each hour, which leaves each string at the same full length (a string is as long as its last
written minute) in a 60th of the time.  Prints used_memory before and after, bytes per (queue, name) per
day, and MEMORY USAGE of one key of each kind.  Then, for comparison, the same hour of one name as a hash
of HINCRBY fields (one field per minute and counter), in its listpack and hashtable encodings."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import redis  # noqa: E402

from benchutil import private_redis  # noqa: E402
from xq import stats  # noqa: E402
from xq.broker import Broker  # noqa: E402
from xq.keys import queue_keys  # noqa: E402

BATCH = 5000  # commands per pipelined send


def main() -> None:
    nq = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    nn = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    hours = int(sys.argv[3]) if len(sys.argv) > 3 else 24
    t0 = 1_800_000_000 // 3600 * 3600
    with private_redis() as (url, _pid):
        r = redis.Redis.from_url(url)
        b = Broker(url)
        base = r.info("memory")["used_memory"]
        names = [f"app.tasks.name_{k:02d}".encode() for k in range(nn)]
        pending, commands = [], 0

        def flush():
            nonlocal pending
            if pending:
                b.send_packed(b"".join(c for c, _ in pending))
                for _ in range(sum(n for _, n in pending)):
                    reply = b.read_reply()
                    assert not isinstance(reply, Exception), reply
                pending = []

        for q in range(nq):
            qk = queue_keys(f"queue_{q:03d}")
            seen: set[bytes] = set()

            def fresh(key):
                if key in seen:
                    return False
                seen.add(key)
                return True

            for h in range(hours):
                minutes = range(60) if q == 0 else [59]
                for m in minutes:
                    ms = (t0 + h * 3600 + m * 60) * 1000
                    packed, n = b.pack_stats(qk, ms, {name: [40 + m, 0.012 * (40 + m)] for name in names}, fresh)
                    pending.append((packed, n))
                    commands += n
                    if sum(n for _, n in pending) >= BATCH:
                        flush()
        flush()
        used = r.info("memory")["used_memory"] - base
        keys = r.dbsize()
        per_name_day = used / (nq * nn) * 24 / hours
        print(f"{nq} queues x {nn} names x {hours} h: {keys:,} keys ({commands:,} commands), "
              f"used_memory +{used / 1e6:.1f} MB")
        print(f"per (queue, name) per day, the queue's own keys and index shared out: {per_name_day:,.0f} bytes")
        qk0, qk1 = queue_keys("queue_000"), queue_keys("queue_001")
        for what, key in (("name, written every minute", qk0.stats(t0 // 3600, names[0].decode())),
                          ("name, written in minute 59 only", qk1.stats(t0 // 3600, names[0].decode())),
                          ("queue total", qk0.stats(t0 // 3600)), ("names index (zset)", qk0.stats_names)):
            print(f"MEMORY USAGE {what}: {r.memory_usage(key, samples=0)} bytes "
                  f"(strlen {r.strlen(key) if r.type(key) == b'string' else '-'}; ttl {r.ttl(key)} s)")
        # the alternative: a hash of HINCRBY fields per (queue, name, hour)
        for fields, label in ((("d", "t"), "2 counters (done, runtime): 120 fields"),
                              (("d", "r", "x", "t"), "4 counters: 240 fields")):
            key = f"cmp:{len(fields)}"
            pipe = r.pipeline(transaction=False)
            for m in range(60):
                for f in fields:
                    pipe.hincrby(key, f"{m}:{f}", 480000 if f == "t" else 40 + m)
            pipe.execute()
            print(f"hash, {label}: MEMORY USAGE {r.memory_usage(key, samples=0)} bytes, encoding "
                  f"{r.object('encoding', key).decode()}")
        b.close()
        r.close()


if __name__ == "__main__":
    main()
