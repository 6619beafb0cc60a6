"""The byte layout of the stats history (docs/design.md, "Stats history"); keys are built in xq/keys.py.

One Redis string per (queue, hour) and per (queue, task name, hour): 60 records of RECORD bytes, one per
minute of the hour, at byte offset minute x RECORD.  A record is four big-endian unsigned integers, the
bit layout BITFIELD reads and writes:

    bits   0..31   done      attempts that finished with success          (u32, saturating)
    bits  32..63   retried   failed attempts scheduled for another attempt (u32, saturating)
    bits  64..95   dead      failed attempts that ended the task           (u32, saturating)
    bits 96..135   runtime   microseconds of run time of those attempts    (u40, saturating: 12.7 days of
                                                                            run time in one minute)

failed = retried + dead (every failed attempt is one or the other), so it is not stored.  A string is only
as long as its last written minute: at most 60 x 17 = 1020 bytes, which with Redis' 3-byte string header
and terminator is exactly one 1 KiB allocation.  Writers: the supervisor adds done and runtime once per
pipeline step (Broker.pack_stats), the scripts add retried, dead and runtime per failed attempt
(scripts.count_failed).  Minutes are of the writer's clock (the supervisor's, Redis' for failures).
"""

from __future__ import annotations

from typing import NamedTuple

RECORD = 17              # bytes per minute
RECORD_BITS = RECORD * 8
RUNTIME_BIT = 96         # bit offset of the runtime field within a record
TTL = 90000              # seconds a key lives after its first write: 25 h, so 24 h of minutes stay readable
HOURS = 25               # hours a name stays in xq:{Q}:stn after its last write
MAX_MINUTES = 1500       # the most minutes history() reads (25 h)
# Every write also adds 0 to the last byte of the hour, so a key is made at its full length at once: grown
# minute by minute instead, Redis would over-allocate it at each step (sdsMakeRoomFor doubles: measured
# 2136 bytes of MEMORY USAGE for a key grown a minute at a time, 1368 for one made at full length).
SIZE_OP = (b"INCRBY", b"u8", 60 * RECORD_BITS - 8, 0)


class Minute(NamedTuple):
    """One minute of stats history."""

    minute: int          # unix seconds of the minute's start
    done: int
    retried: int
    dead: int
    runtime: float       # seconds

    def as_dict(self) -> dict:
        return {"minute": self.minute, "done": self.done, "failed": self.retried + self.dead,
                "retried": self.retried, "dead": self.dead, "runtime": self.runtime}


def locate(ms: int) -> tuple[int, int]:
    """(hour number, bit offset of its minute's record) of a time in ms since the epoch."""
    return ms // 3600000, (ms // 60000) % 60 * RECORD_BITS


def ranges(first_minute: int, last_minute: int) -> list[tuple[int, int, int]]:
    """The reads covering minutes first_minute..last_minute (minute numbers: unix seconds // 60): (hour,
    first byte, last byte) per hour key, oldest first, for GETRANGE."""
    out = []
    for hour in range(first_minute // 60, last_minute // 60 + 1):
        lo = max(first_minute, hour * 60) - hour * 60
        hi = min(last_minute, hour * 60 + 59) - hour * 60
        out.append((hour, lo * RECORD, (hi + 1) * RECORD - 1))
    return out


def decode(first_minute: int, last_minute: int, chunks: list[bytes]) -> list[Minute]:
    """The minutes first_minute..last_minute from the GETRANGE replies of ranges(...) (a missing key or an
    unwritten tail reads as zeros)."""
    data = b"".join(c.ljust(hi - lo + 1, b"\0") for c, (_h, lo, hi) in
                    zip(chunks, ranges(first_minute, last_minute)))
    out = []
    for i in range(last_minute - first_minute + 1):
        r = data[i * RECORD:(i + 1) * RECORD]
        out.append(Minute((first_minute + i) * 60, int.from_bytes(r[0:4], "big"), int.from_bytes(r[4:8], "big"),
                          int.from_bytes(r[8:12], "big"), round(int.from_bytes(r[12:17], "big") / 1e6, 6)))
    return out


def rolling(minutes: list[Minute], now: float, span: int) -> tuple[int, int]:
    """(done, failed) over the `span` minutes before now, a sliding window estimated from whole minutes:
    the current minute so far, the span - 1 whole minutes before it, and the share of the minute before
    those that is still inside the window.  minutes: oldest first, ending with the current one, at least
    span + 1 of them."""
    cur = minutes[-span:]
    old = minutes[-span - 1]
    share = 1.0 - (now % 60) / 60.0
    done = sum(m.done for m in cur) + round(old.done * share)
    failed = sum(m.retried + m.dead for m in cur) + round((old.retried + old.dead) * share)
    return done, failed
