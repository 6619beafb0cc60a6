"""Pure-Python twin of xq._fast: the same names, the same bytes on the wire and in the rings.

Selected with XQ_PURE=1, or used when the extension is not built.  Python cannot issue a memory fence:
this twin relies on x86-TSO ordering (stores are not reordered with stores, loads not with loads), and
every consumer wait has a timeout, so the one reordering TSO allows (a store followed by a load, in the
sleeping-flag handshake) can delay a wake-up by that timeout but never lose data.
"""

from __future__ import annotations

import os
import select
import struct
import time

import orjson

IMPLEMENTATION = "python"
HEADER_SIZE = 256
ST_DONE, ST_FAILED, ST_BYE, ST_RETRY, ST_CANCELED, ST_PROGRESS = 1, 2, 3, 4, 5, 6
_OUTCOMES = {2: b"failed", 4: b"retry", 5: b"canceled"}

_HEAD, _TAIL, _SLEEP = 0, 8, 32        # word indexes: head at byte 0, tail at 64, sleeping at 128 (u32)
_MORE, _WRAP = 1, 2
_FRAME = struct.Struct("<II")
_PREFIX = struct.Struct("<II")
_TASK = struct.Struct("<QHBBHH")
_RESULT = struct.Struct("<QBBHIdd")
_EFD_ONE = (1).to_bytes(8, "little")


class RingFull(Exception):
    """Reserved; write() returns the offset reached instead of raising."""


class Ring:
    """One direction of a shared-memory SPSC ring (see xq/_fast.pyi for the byte layout)."""

    def __init__(self, buf, efd: int):
        mv = memoryview(buf)
        cap = len(mv) - HEADER_SIZE
        if cap < 4096 or cap & (cap - 1):
            raise ValueError(f"ring capacity {cap} must be a power of two >= 4096")
        self.capacity = cap
        self.max_chunk = cap // 4
        self._mask = cap - 1
        self._q = mv[:HEADER_SIZE].cast("Q")
        self._i = mv[:HEADER_SIZE].cast("I")
        self._data = mv[HEADER_SIZE:]
        self._efd = efd
        self._asm = None  # consumer: [head, body, filled] of a message being assembled

    @staticmethod
    def size_for(capacity: int) -> int:
        return HEADER_SIZE + capacity

    @staticmethod
    def message_size(head, body=b"") -> int:
        return 8 + len(head) + len(body)

    def reset(self) -> None:
        self._q[_HEAD // 8] = 0
        self._q[_TAIL] = 0
        self._i[_SLEEP] = 0

    def free(self) -> int:
        return self.capacity - (self._q[0] - self._q[_TAIL])

    # --- producer ---
    def _wake(self) -> None:
        if self._i[_SLEEP]:
            self._i[_SLEEP] = 0
            try:
                os.write(self._efd, _EFD_ONE)
            except BlockingIOError:
                pass

    def write(self, head, body=b"", offset: int = 0) -> int:
        hl, bl = len(head), len(body)
        if hl >= 65536:
            raise ValueError(f"message head of {hl} bytes is too large (limit 65535)")
        total = 8 + hl + bl
        q, data, cap, mask = self._q, self._data, self.capacity, self._mask
        pos, tail = q[0], q[_TAIL]
        small = total <= self.max_chunk
        if small:
            # All or nothing: one frame, never split across the end of the data region.
            need = (8 + total + 7) & ~7
            contiguous = cap - (pos & mask)
            if cap - (pos - tail) < need + (contiguous if contiguous < need else 0):
                return offset
        prefix = _PREFIX.pack(hl, bl)
        wrote = False
        while offset < total:
            free = cap - (pos - tail)
            at = pos & mask
            contiguous = cap - at
            n = min(total - offset, self.max_chunk, free - 8)
            if n <= 0:
                break
            if 8 + n > contiguous:
                if small or contiguous < 16:
                    if free < contiguous:
                        break
                    _FRAME.pack_into(data, at, 0, _WRAP)
                    pos += contiguous
                    continue
                n = contiguous - 8
            end = offset + n
            _FRAME.pack_into(data, at, n, _MORE if end < total else 0)
            o = at + 8
            for seg_start, seg in ((0, prefix), (8, head), (8 + hl, body)):
                lo, hi = max(offset, seg_start), min(end, seg_start + len(seg))
                if lo < hi:
                    data[o:o + hi - lo] = seg[lo - seg_start:hi - seg_start]
                    o += hi - lo
            pos += (8 + n + 7) & ~7
            offset = end
            wrote = True
            q[0] = pos  # publish each frame (TSO: the data stores above become visible first)
        if wrote:
            self._wake()
        return offset

    def write_many(self, messages, start: int = 0) -> int:
        done = 0
        for h, b in messages[start:]:
            size = 8 + len(h) + len(b)
            if size > self.max_chunk or self.write(h, b) != size:
                break
            done += 1
        return done

    # --- consumer ---
    def _frame(self):
        q, data, mask = self._q, self._data, self._mask
        while True:
            tail = q[_TAIL]
            if tail == q[0]:
                return None
            at = tail & mask
            n, flags = _FRAME.unpack_from(data, at)
            if flags & _WRAP:
                q[_TAIL] = tail + (self.capacity - at)
                continue
            return at + 8, n, flags, tail + ((8 + n + 7) & ~7)

    def read(self):
        while True:
            f = self._frame()
            if f is None:
                return None
            start, n, flags, nxt = f
            chunk = bytes(self._data[start:start + n])
            self._q[_TAIL] = nxt
            asm = self._asm
            if asm is None:
                hl, bl = _PREFIX.unpack_from(chunk, 0)
                asm = [bytearray(hl), bytearray(bl), 0, hl]
                chunk = chunk[8:]
                if not flags & _MORE and len(chunk) == hl + bl:
                    return chunk[:hl], chunk[hl:]
                self._asm = asm
            head, body, filled, hl = asm
            for b in (chunk,):
                k = 0
                while k < len(b):
                    if filled < hl:
                        m = min(hl - filled, len(b) - k)
                        head[filled:filled + m] = b[k:k + m]
                    else:
                        m = min(len(body) - (filled - hl), len(b) - k)
                        body[filled - hl:filled - hl + m] = b[k:k + m]
                    filled += m
                    k += m
            asm[2] = filled
            if not flags & _MORE:
                self._asm = None
                return bytes(head), bytes(body)

    def read_many(self, limit: int):
        out = []
        while len(out) < limit:
            m = self.read()
            if m is None:
                break
            out.append(m)
        return out

    def empty(self) -> bool:
        return self._q[_TAIL] == self._q[0]

    def arm(self) -> bool:
        self._i[_SLEEP] = 1
        if not self.empty():
            self._i[_SLEEP] = 0
            return False
        return True

    def disarm(self, readable: bool = True) -> None:
        self._i[_SLEEP] = 0
        if not readable:
            return
        try:
            os.read(self._efd, 8)
        except BlockingIOError:
            pass

    def wait(self, timeout: float) -> bool:
        if self.arm():
            p = select.poll()
            p.register(self._efd, select.POLLIN)
            p.poll(max(0.0, timeout) * 1000.0)
        self.disarm()
        return not self.empty()


def _head_error(attempt, ct, il, nl):
    """Why a task head cannot be encoded (the frame carries attempt, id and name lengths in 16 bits)."""
    if il > 0xFFFF:
        return f"task id of {il} bytes is too large for a task head (limit 65535)"
    if nl > 0xFFFF:
        return f"task name of {nl} bytes is too large for a task head (limit 65535)"
    if not 0 <= attempt <= 0xFFFF:
        return f"attempt {attempt} does not fit a task head (limit 65535)"
    return f"content type {ct!r} is not one byte"


def encode_task_head(seq, attempt, ct, qidx, task_id, name) -> bytes:
    if len(task_id) > 0xFFFF or len(name) > 0xFFFF or not 0 <= attempt <= 0xFFFF or len(ct) != 1:
        raise ValueError(_head_error(attempt, ct, len(task_id), len(name)))
    return _TASK.pack(seq, attempt, ct[0], qidx, len(task_id), len(name)) + task_id + name


def decode_task_head(head):
    try:
        seq, attempt, ct, qidx, il, nl = _TASK.unpack_from(head, 0)
    except struct.error:
        raise ValueError(f"task head of {len(head)} bytes is too short") from None
    o = _TASK.size
    if len(head) != o + il + nl:
        raise ValueError(f"task head of {len(head)} bytes does not match its id/name lengths {il}/{nl}")
    return seq, attempt, bytes((ct,)), qidx, bytes(head[o:o + il]), bytes(head[o + il:o + il + nl])


def encode_result_head(seq, status, rct, started, finished, error) -> bytes:
    return _RESULT.pack(seq, status, rct[0], 0, len(error), started, finished) + error


def decode_result_head(head):
    try:
        seq, status, rct, _, el, started, finished = _RESULT.unpack_from(head, 0)
    except struct.error:
        raise ValueError(f"result head of {len(head)} bytes is too short") from None
    o = _RESULT.size
    if len(head) != o + el:
        raise ValueError(f"result head of {len(head)} bytes does not match its error length {el}")
    return seq, status, bytes((rct,)), started, finished, bytes(head[o:o + el])


_ALPHABET = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_state = {"pid": -1, "node": 0, "counter": 0, "last": 0}


def new_ids(n: int) -> list[bytes]:
    st = _state
    if st["pid"] != os.getpid():
        st.update(pid=os.getpid(), node=int.from_bytes(os.urandom(5), "big"),
                  counter=int.from_bytes(os.urandom(5), "big") >> 1, last=0)
    ms = max(time.time_ns() // 1_000_000, st["last"])
    st["last"] = ms
    node, counter = st["node"], st["counter"]
    out = []
    a = _ALPHABET
    for _ in range(n):
        counter = (counter + 1) & ((1 << 40) - 1)
        if counter == 0:
            ms += 1
            st["last"] = ms
        v = (ms << 80) | (node << 40) | counter
        out.append(bytes(a[(v >> (5 * (25 - i))) & 31] for i in range(26)))
    st["counter"] = counter
    return out



_TO_B32 = bytes.maketrans(_ALPHABET, b"0123456789abcdefghijklmnopqrstuv")  # int(x, 32) reads 0-9 a-v


def wait_times(items: list) -> list[int]:
    out = []
    for i in range(0, len(items) - 6, 7):
        tid, att, st = items[i], items[i + 1], items[i + 5]
        w = -1
        if type(tid) is bytes and len(tid) == 26 and type(att) is int and att == 1 and type(st) is int:
            head = tid[:10]
            t = -1 if head.translate(None, _ALPHABET) else int(head.translate(_TO_B32), 32)
            if 0 < t <= st:
                w = st - t
        out.append(w)
    return out

def encode_payloads(payloads):
    data, ct = [], []
    dumps = orjson.dumps
    for i, p in enumerate(payloads):
        if isinstance(p, bytes):
            data.append(p)
            ct.append(b"b")
        elif isinstance(p, (bytearray, memoryview)):
            data.append(bytes(p))
            ct.append(b"b")
        else:
            try:
                data.append(dumps(p))
            except TypeError as e:
                raise TypeError(f"payload #{i} of type {type(p).__name__} cannot be serialized to JSON: {e}") from None
            ct.append(b"j")
    return data, ct


def _b(x) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, (int, float)):
        return str(x).encode()
    raise TypeError(f"cannot send {type(x).__name__} to Redis")


def pack_command(args) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = _b(a)
        parts.append(b"$%d\r\n" % len(b))
        parts.append(b)
        parts.append(b"\r\n")
    return b"".join(parts)


def pack_enqueue(sha, keys, fixed, ids, payloads, first, max_payload, stage=b"", inline=0, ttl_ms=0):
    from xq.errors import PayloadTooLarge

    args = [b"EVALSHA", sha, len(keys), *keys, *fixed]
    stage = _b(stage)
    staged = []
    for i, p in enumerate(payloads):
        try:
            (d,), (ct,) = encode_payloads([p])
        except TypeError as e:
            raise TypeError(str(e).replace("payload #0", f"payload #{first + i}", 1)) from None
        if len(d) > max_payload:
            raise PayloadTooLarge(f"payload #{first + i} is {len(d)} bytes, over max_payload={max_payload} bytes")
        if stage and len(d) > inline:
            key = stage + _b(ids[i])
            staged += [pack_command([b"HSET", key, b"payload", d]), pack_command([b"PEXPIRE", key, ttl_ms])]
            args += (ids[i], b"", ct + b"+")
        else:
            args += (ids[i], d, ct)
    if not staged:
        return pack_command(args), 1
    multi, exec_ = pack_command([b"MULTI"]), pack_command([b"EXEC"])
    return multi + b"".join(staged) + exec_ + pack_command(args), len(staged) + 3


# ---------------------------------------------------------------- supervisor loops

class InFlight:
    """A claimed task while this supervisor holds it (fields: _fast.pxd)."""

    __slots__ = ("qidx", "id", "name", "payload", "ct", "attempt", "timeout_ms")

    def __init__(self, qidx, id, name, payload, ct, attempt, timeout_ms=0):
        self.qidx, self.id, self.name, self.payload = qidx, id, name, payload
        self.ct, self.attempt, self.timeout_ms = ct, attempt, timeout_ms

    def __repr__(self):
        return (f"InFlight(qidx={self.qidx}, id={self.id!r}, name={self.name!r}, payload=<{len(self.payload)} "
                f"bytes>, ct={self.ct!r}, attempt={self.attempt}, timeout_ms={self.timeout_ms})")


def screen_claimed(tasks):
    from xq.keys import check_record

    out = None
    for i in range(0, len(tasks), 7):
        if check_record(tasks[i + 1], tasks[i + 2], tasks[i + 4], tasks[i + 5], tasks[i + 6]) is not None:
            if out is None:
                out = []
            out.append(i)
    return out


def take_claimed(tasks, inflight, buffer, seq):
    for i in range(0, len(tasks), 7):
        seq += 1
        to = tasks[i + 6]
        inflight[seq] = InFlight(tasks[i], tasks[i + 1], tasks[i + 2], tasks[i + 3], tasks[i + 4], tasks[i + 5],
                                 int(to) if to else 0)
        buffer.append(seq)
    return seq


def fill_ring(ring, buffer, inflight, unacked, room):
    done = 0
    while done < room and buffer:
        seq = buffer[0]
        t = inflight[seq]
        payload = t.payload
        head = encode_task_head(seq, t.attempt, t.ct, t.qidx, t.id, t.name)
        size = 8 + len(head) + len(payload)
        if size > ring.max_chunk:
            return done, 2
        if ring.write(head, payload) != size:
            return done, 1
        buffer.popleft()
        unacked.append(seq)
        done += 1
    return done, 0


def drain_results(ring, inflight, completions, unacked, limit, progress=None, stats=None):
    n, busy = 0, 0.0
    for head, body in ring.read_many(limit):
        seq, status, rct, started, finished, error = decode_result_head(head)
        if status == ST_PROGRESS:
            # The task is still running: its seq stays in unacked and inflight.
            t = inflight.get(seq)
            if t is not None and progress is not None:
                progress[seq] = (t.qidx, t.id, body, error, int(started * 1000))
            continue
        n += 1
        if unacked and unacked[0] == seq:
            unacked.popleft()
        else:
            try:
                unacked.remove(seq)
            except ValueError:
                pass
        t = inflight.pop(seq, None)
        if t is None:
            continue
        took = finished - started
        busy += took
        items = completions.setdefault(t.qidx, [])
        if status == ST_DONE:
            if stats is not None:
                row = stats.setdefault(t.qidx, {}).get(t.name)
                if row is None:
                    stats[t.qidx][t.name] = [1, took]
                else:
                    row[0] += 1
                    row[1] += took
            items += (t.id, t.attempt, b"done", body, rct, int(started * 1000), int(finished * 1000))
        else:
            items += (t.id, t.attempt, _OUTCOMES.get(status, b"failed"), error, body, int(started * 1000),
                      int(finished * 1000))
    return n, busy


EVENT_RESULT_MAX = 512  # bytes of JSON result carried inline in a completion event


def build_event(queue, items, ts):
    tail = b'","queue":"' + queue + b'","state":"'
    end = b'","ts":%d' % ts
    parts = []
    for i in range(0, len(items), 7):
        if items[i + 2] != b"done":
            continue
        body = items[i + 3]
        if items[i + 4] == b"j" and len(body) <= EVENT_RESULT_MAX:
            parts.append(b'{"id":"' + items[i] + tail + b"done" + end + b',"result":' + body + b"}")
        else:
            parts.append(b'{"id":"' + items[i] + tail + b"done" + end + b"}")
    if not parts:
        return b""
    return b"[" + b",".join(parts) + b"]"
