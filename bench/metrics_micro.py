"""Per-task cost of the metrics bookkeeping in the supervisor (Metrics.claimed + Metrics.completed), batches of 100.

    PYTHONPATH=$PWD python3 bench/metrics_micro.py
"""
import time, types
from xq._impl import fast
from xq.supervisor.metrics import Metrics
sup = types.SimpleNamespace(qnames=["default"], cfg=types.SimpleNamespace(procs=2))
m = Metrics(sup, 0, host="127.0.0.1")
ids = fast.new_ids(100)
now = int(time.time()*1000)
claim = []
for i in ids: claim += [0, i, b"noop", b"", b"j", 1, b""]
items = []
for i in ids: items += [i, 1, b"done", b"null", b"j", now, now + 1]
N = 2000
t = time.perf_counter()
for _ in range(N):
    m.claimed(claim); m.completed(0, items)
dt = time.perf_counter() - t
print(f"{dt / (N*100) * 1e6:.2f} us per task (claim + complete, batches of 100)")
m.close()
