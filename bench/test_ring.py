"""Ring throughput: 100-byte messages from one process to another.

Run: python -m pytest bench/test_ring.py --benchmark-only -s
References in the same suite: multiprocessing.Queue, multiprocessing.Pipe, faster_fifo.Queue.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import time

import pytest

from xq import _fast, _pyfast

MSG = b"m" * 100
CTX = mp.get_context("fork")


def _ring_pair(mod, capacity=1 << 20):
    m = mmap.mmap(-1, mod.Ring.size_for(capacity))
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    ring = mod.Ring(m, efd)
    ring.reset()
    return m, efd


def run_ring(mod, n: int) -> float:
    m, efd = _ring_pair(mod)
    pid = os.fork()
    if pid == 0:  # writer
        w = mod.Ring(m, efd)
        batch = [(b"", MSG)] * 256
        sent, deadline = 0, time.monotonic() + 60
        while sent < n and time.monotonic() < deadline:
            k = w.write_many(batch if n - sent >= 256 else batch[:n - sent])
            sent += k
            if k == 0:
                os.sched_yield()
        os._exit(0)
    r = mod.Ring(m, efd)
    got, deadline = 0, time.monotonic() + 60
    t0 = time.perf_counter()
    while got < n and time.monotonic() < deadline:
        batch = r.read_many(4096)
        if batch:
            got += len(batch)
        else:
            r.wait(0.01)
    el = time.perf_counter() - t0
    os.waitpid(pid, 0)
    assert got == n
    return n / el


def _mpq_writer(q, n):
    for _ in range(n):
        q.put(MSG)


def run_mp_queue(n: int) -> float:
    q = CTX.Queue(maxsize=10000)
    p = CTX.Process(target=_mpq_writer, args=(q, n))
    t0 = time.perf_counter()
    p.start()
    for _ in range(n):
        q.get(timeout=30)
    el = time.perf_counter() - t0
    p.join(30)
    return n / el


def _pipe_writer(c, n):
    for _ in range(n):
        c.send_bytes(MSG)


def run_mp_pipe(n: int) -> float:
    a, b = CTX.Pipe(duplex=False)
    p = CTX.Process(target=_pipe_writer, args=(b, n))
    t0 = time.perf_counter()
    p.start()
    for _ in range(n):
        a.recv_bytes()
    el = time.perf_counter() - t0
    p.join(30)
    return n / el


def _ff_writer(q, n):
    batch = [MSG] * 256
    sent = 0
    while sent < n:
        k = min(256, n - sent)
        q.put_many(batch[:k], timeout=30)
        sent += k


def run_faster_fifo(n: int) -> float:
    from faster_fifo import Queue

    q = Queue(max_size_bytes=1 << 20)
    p = CTX.Process(target=_ff_writer, args=(q, n))
    t0 = time.perf_counter()
    p.start()
    got = 0
    while got < n:
        got += len(q.get_many(timeout=30, max_messages_to_get=4096))
    el = time.perf_counter() - t0
    p.join(30)
    return n / el


CASES = {
    "xq ring (cython)": (lambda: run_ring(_fast, 1_000_000)),
    "xq ring (pure python)": (lambda: run_ring(_pyfast, 100_000)),
    "multiprocessing.Queue": (lambda: run_mp_queue(100_000)),
    "multiprocessing.Pipe": (lambda: run_mp_pipe(200_000)),
    "faster_fifo.Queue (put_many/get_many)": (lambda: run_faster_fifo(1_000_000)),
}


@pytest.mark.benchmark(group="ring")
@pytest.mark.parametrize("case", list(CASES))
def test_ring_throughput(benchmark, case):
    rates = []
    benchmark.pedantic(lambda: rates.append(CASES[case]()), rounds=3, iterations=1)
    best = sorted(rates)[len(rates) // 2]
    benchmark.extra_info["msgs_per_s"] = round(best)
    print(f"\n{case}: {best:,.0f} msgs/s of 100 bytes between two processes (median of 3)")
