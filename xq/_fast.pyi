"""Type stub and contract of the hot path: xq/_fast.pyx (Cython) and its pure-Python twin xq/_pyfast.py.

Both modules export exactly these names with exactly this behaviour; tests run the same bodies against both.

Ring byte layout (one single-producer/single-consumer ring, in one shared mapping):

    offset  size  field
    0       8     head: total bytes ever written (producer stores, release)
    64      8     tail: total bytes ever consumed (consumer stores, release)
    128     4     sleeping: 1 while the consumer is (about to be) blocked on the eventfd
    256     cap   data: frames, each 8-byte aligned

A frame is `u32 len | u32 flags | len bytes | pad to 8`. flags bit 0 (MORE) says the logical message
continues in the next frame; flags bit 1 (WRAP) marks the rest of the data region as skipped (len 0), the
next frame starts at data offset 0. A logical message is `u32 head_len | u32 body_len | head | body`, cut
into frames of at most `max_chunk` bytes so a message larger than the ring streams through it.
"""

from typing import Sequence

HEADER_SIZE: int  # 256
IMPLEMENTATION: str  # "cython" or "python"


class RingFull(Exception):
    """Raised by nothing; reserved.  write() returns the offset reached instead of raising."""


class Ring:
    """One direction of a shared-memory SPSC ring.

    buf: a writable buffer (anonymous MAP_SHARED mmap) of HEADER_SIZE + capacity bytes, capacity a power of
    two >= 4096.  efd: an eventfd (non-blocking) the producer writes to wake a sleeping consumer.
    Exactly one process writes and exactly one process reads.
    """

    capacity: int
    max_chunk: int  # capacity // 4

    def __init__(self, buf: memoryview | bytearray, efd: int) -> None: ...
    @staticmethod
    def size_for(capacity: int) -> int:
        """Bytes the shared mapping must have for a ring of that capacity."""
    def reset(self) -> None:
        """Zero the header (creator only, before anyone else uses it)."""

    # --- producer side ---
    def write(self, head: bytes, body: bytes | memoryview = b"", offset: int = 0) -> int:
        """Write the logical message prefix+head+body from logical `offset` on, as much as fits.

        Returns the new offset; the message is complete when it equals message_size(head, body).  A
        message of at most max_chunk bytes is written whole or not at all (returns 0 then).  Wakes the
        consumer (eventfd write) if it is sleeping.  head must be < 64 KiB; body < 4 GiB.
        """
    def write_many(self, messages: list[tuple[bytes, bytes]], start: int = 0) -> int:
        """Write messages[start:] while each fits whole; returns how many were written.  Stops at the first
        that does not fit now or is larger than max_chunk (send that one with write())."""
    @staticmethod
    def message_size(head: bytes, body: bytes | memoryview = b"") -> int: ...
    def free(self) -> int:
        """Bytes free right now (producer side)."""

    # --- consumer side ---
    def read(self) -> tuple[bytes, bytes] | None:
        """Next complete message as (head, body), or None if none is complete yet.

        Partial messages are assembled across calls without an intermediate copy of body.
        """
    def read_many(self, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to limit complete messages."""
    def empty(self) -> bool: ...
    def arm(self) -> bool:
        """Consumer is about to sleep: set sleeping, full fence, re-check.  Returns False (and clears
        sleeping) if data is already there; True if the caller may block on the eventfd."""
    def disarm(self, readable: bool = True) -> None:
        """Clear sleeping and drain the eventfd counter (non-blocking); readable False (poll() did not
        report the eventfd) skips the read: a wake-up written since is consumed at the next disarm."""
    def wait(self, timeout: float) -> bool:
        """arm(); if armed, poll the eventfd up to timeout seconds; disarm().  True if data is there."""


# --- task/result heads (the supervisor never looks inside payloads) ---

def encode_task_head(seq: int, attempt: int, ct: bytes, qidx: int, task_id: bytes, name: bytes) -> bytes:
    """u64 seq | u16 attempt | u8 ct (ord of b'j'/b'b') | u8 qidx | u16 id_len | u16 name_len | id | name."""
def decode_task_head(head: bytes) -> tuple[int, int, bytes, int, bytes, bytes]:
    """Inverse of encode_task_head: (seq, attempt, ct, qidx, task_id, name).  ValueError if malformed."""

# status codes in result heads
ST_DONE: int      # 1
ST_FAILED: int    # 2
ST_BYE: int       # 3: the child stops (recycled); seq is the last seq it finished, body empty
ST_RETRY: int     # 4: a retryable failure; body is the retry delay in ms (ASCII digits)
ST_CANCELED: int  # 5: the task was canceled (before it started, or the handler was interrupted)
ST_PROGRESS: int  # 6: the task is still running and reported progress; started = finished = report time,
                  #    error = the event's JSON members (`"progress":P,"message":M`), body = the record's
                  #    `progress` field (JSON {"pct","msg","ts"})

def encode_result_head(seq: int, status: int, rct: bytes, started: float, finished: float, error: bytes) -> bytes:
    """u64 seq | u8 status | u8 rct | u16 pad | u32 err_len | f64 started | f64 finished | error."""
def decode_result_head(head: bytes) -> tuple[int, int, bytes, float, float, bytes]:
    """Inverse: (seq, status, rct, started, finished, error)."""


# --- producer side encoding ---

def new_ids(n: int) -> list[bytes]:
    """n task ids: 26-char Crockford base32 of 48-bit ms timestamp + 80 bits (40 random per process,
    40-bit counter starting at a random value, bumped per id; monotonic within a process)."""
def wait_times(items: list) -> list[int]:
    """Per task of COMPLETE arguments (7 values a task: id, attempt, outcome, text, extra, started ms,
    finished ms), its queue wait in ms: started minus the enqueue time its xq id begins with (10 Crockford
    base32 chars, upper case), or -1 when not known (attempt > 1, an id of another form, an enqueue time
    after the start): the xq_task_wait_seconds figures of xq/supervisor/metrics.py."""
def encode_payloads(payloads: Sequence[object]) -> tuple[list[bytes], list[bytes]]:
    """(data, ct) per payload: bytes/bytearray/memoryview pass raw with ct b'b'; anything else is orjson
    dumped with ct b'j'.  TypeError naming the index and type if a payload cannot be serialized."""
def pack_command(args: Sequence[bytes | str | int | float]) -> bytes:
    """One RESP array of bulk strings (the wire form of a Redis command)."""
def pack_enqueue(sha: bytes, keys: Sequence[bytes | str], fixed: Sequence[bytes | str | int],
                 ids: Sequence[bytes], payloads: Sequence[object], first: int, max_payload: int,
                 stage: bytes = b"", inline: int = 0, ttl_ms: int = 0) -> tuple[bytes, int]:
    """(RESP, replies): EVALSHA sha len(keys) *keys *fixed, then per task: id, data, ct — packed in one go.

    Each payload is encoded as encode_payloads does and dropped once copied, so a large batch keeps only
    packed bytes alive.  TypeError / xq.errors.PayloadTooLarge name the payload's index (first + i).
    With a stage prefix, each payload over `inline` bytes is staged (scripts.ENQUEUE, ARGV[13..]):
    `HSET stage+id payload data` and `PEXPIRE stage+id ttl_ms`, all in one MULTI/EXEC, precede the
    EVALSHA, whose triple for it is (id, b"", ct + b"+").  replies: how many replies the packed commands
    get (1 without stages, else 3 + 2 a staged payload).
    """


# --- supervisor loops ---

class InFlight:
    """A claimed task while this supervisor holds it: from CLAIM's reply until its COMPLETE or RELEASE.
    Read-only in the Cython module (a cdef class, declared in _fast.pxd); a __slots__ class in the twin."""

    qidx: int        # index of its queue in the supervisor's --queues
    id: bytes        # task id
    name: bytes      # task name
    payload: bytes   # payload bytes, forwarded to the child untouched
    ct: bytes        # payload content type: b"j" JSON, b"b" raw bytes
    attempt: int     # this claim's attempt number: with the worker id, the fencing token of its reports
    timeout_ms: int  # its own processing timeout, ms; 0: its task's default applies

    def __init__(self, qidx: int, id: bytes, name: bytes, payload: bytes, ct: bytes, attempt: int,
                 timeout_ms: int = 0) -> None: ...

def screen_claimed(tasks: list) -> list[int] | None:
    """Offsets (into tasks, 7 values a task) of claimed tasks that may break a limit of docs/protocol.md
    (keys.check_record says which and why), or None when none may."""
def take_claimed(tasks: list, inflight: dict, buffer, seq: int) -> int:
    """Record a CLAIM reply (7 values a task: qidx, id, name, payload, ct, attempt, timeout ms or b'') as
    inflight[seq] = InFlight(...) (timeout b'' becomes 0) and append seq to buffer (a deque); returns the
    last seq used."""
def fill_ring(ring: Ring, buffer, inflight: dict[int, InFlight], unacked, room: int) -> tuple[int, int]:
    """Move up to room seqs from buffer into ring (heads encoded here), appending them to unacked.
    Returns (written, why): 0 room/buffer exhausted, 1 ring out of bytes, 2 next message > max_chunk."""
def drain_results(ring: Ring, inflight: dict[int, InFlight], completions: dict, unacked, limit: int,
                  progress: dict | None = None, stats: dict | None = None) -> tuple[int, float]:
    """Read up to limit frames; append COMPLETE args to completions[qidx]: (id, attempt, b"done", result,
    rct, started ms, finished ms) for ST_DONE, else (id, attempt, outcome, error, body, started ms, finished
    ms) with
    outcome b"failed" / b"retry" / b"canceled" (see scripts.COMPLETE); returns (result frames read, total
    run time in seconds).  An ST_PROGRESS frame of a seq still in inflight sets progress[seq] = (qidx, id,
    record JSON, event members, ts ms), replacing an earlier one; it leaves inflight and unacked alone and
    is not counted (dropped if progress is None or the seq is unknown).  stats: each done task adds 1 and its
    run time (s) to stats[qidx][name] = [done, seconds] (the stats history; failures are counted in Redis)."""
EVENT_RESULT_MAX: int

def build_event(queue: bytes, items: list, ts: int) -> bytes:
    """JSON array of {"id","queue","state","ts"} for the done tasks among COMPLETE items (7 a task), plus
    "result" when the result is JSON (rct 'j') of at most EVENT_RESULT_MAX bytes; b"" if none is done."""
