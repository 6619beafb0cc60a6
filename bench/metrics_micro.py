"""Per-task cost of the metrics bookkeeping in the supervisor (Metrics.claimed + Metrics.completed).

    PYTHONPATH=$PWD python3 bench/metrics_micro.py [BATCH ...]       (default: 1000 100 10 1)

Each batch size runs for a bounded count of tasks (XQ_MICRO_TASKS, default 200,000) and prints the time per
task.  Timings are noisy on a shared machine; instruction counts are not: run one batch size under
callgrind with XQ_MICRO_TASKS=N and =0 and divide the difference of the totals by N:

    XQ_MICRO_TASKS=20000 PYTHONPATH=$PWD valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python3 bench/metrics_micro.py 100 2>&1 | grep refs
"""
import os
import sys
import time
import types

from xq._impl import fast
from xq.supervisor.metrics import Metrics

TASKS = int(os.environ.get("XQ_MICRO_TASKS", "200000"))


def run(m, batch: int) -> float:
    ids = fast.new_ids(batch)
    now = int(time.time() * 1000)
    claim, items = [], []
    for i in ids:
        claim += [0, i, b"noop", b"", b"j", 1, b""]
        items += [i, 1, b"done", b"null", b"j", now, now + 1]
    rounds = TASKS // batch
    if not rounds:
        return 0.0
    t = time.perf_counter()
    for _ in range(rounds):
        m.claimed(claim)
        m.completed(0, items)
    return (time.perf_counter() - t) / (rounds * batch)


def main() -> None:
    sup = types.SimpleNamespace(qnames=["default"], cfg=types.SimpleNamespace(procs=2), broker=types.SimpleNamespace())
    m = Metrics(sup, 0, host="127.0.0.1")
    try:
        for batch in [int(a) for a in sys.argv[1:]] or [1000, 100, 10, 1]:
            print(f"batch {batch:4}: {run(m, batch) * 1e6:.2f} us per task (claim + complete)", flush=True)
    finally:
        m.close()


if __name__ == "__main__":
    main()
