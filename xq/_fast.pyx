# cython: language_level=3
"""Hot path of xq in Cython: shared-memory rings, task/result heads, ids, RESP packing.

The pure-Python twin (_pyfast.py) has the same API and writes the same bytes; _fast.pyi is the
contract and documents the ring byte layout.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE, PyBUF_SIMPLE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset
from posix.unistd cimport read as c_read, write as c_write, getpid

import os
import time

import orjson

IMPLEMENTATION = "cython"
HEADER_SIZE = 256
ST_DONE = 1
ST_FAILED = 2
ST_BYE = 3
ST_RETRY = 4
ST_CANCELED = 5
ST_PROGRESS = 6
# COMPLETE outcome per non-done result status; the result body then carries the outcome's extra value
# (the retry delay in ms, as ASCII digits)
_OUTCOMES = {2: b"failed", 4: b"retry", 5: b"canceled"}

DEF HDR = 256
DEF MORE = 1
DEF WRAP = 2

cdef extern from "poll.h" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN


class RingFull(Exception):
    """Reserved; write() returns the offset reached instead of raising."""


cdef inline uint64_t align8(uint64_t n) noexcept nogil:
    return (n + 7) & ~(<uint64_t>7)


cdef inline void put_u32(char *p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)


cdef inline uint32_t get_u32(const char *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef class Ring:
    """One direction of a shared-memory SPSC ring."""

    def __cinit__(self, buf, int efd):
        PyObject_GetBuffer(buf, &self.view, PyBUF_WRITABLE)
        cdef Py_ssize_t cap = self.view.len - HDR
        if cap < 4096 or (cap & (cap - 1)) != 0:
            PyBuffer_Release(&self.view)
            self.view.buf = NULL
            raise ValueError(f"ring capacity {cap} must be a power of two >= 4096")
        cdef char *base = <char *>self.view.buf
        self.head = <uint64_t *>base
        self.tail = <uint64_t *>(base + 64)
        self.sleeping = <uint32_t *>(base + 128)
        self.data = base + HDR
        self.cap = cap
        self.mask = cap - 1
        self.capacity = cap
        self.max_chunk = cap // 4
        self.efd = efd
        self.asm_head = None
        self.asm_body = None
        self.seen_tail = xq_load_acquire_u64(self.tail)
        self.seen_head = xq_load_acquire_u64(self.head)

    def __dealloc__(self):
        if self.view.buf != NULL:
            PyBuffer_Release(&self.view)

    @staticmethod
    def size_for(Py_ssize_t capacity):
        """Bytes the shared mapping must have for a ring of that capacity."""
        return HDR + capacity

    @staticmethod
    def message_size(head, body=b""):
        return 8 + len(head) + len(body)

    def reset(self):
        """Zero the header (creator only)."""
        memset(self.view.buf, 0, HDR)
        self.seen_tail = self.seen_head = 0

    def free(self):
        return self.cap - (xq_load_acquire_u64(self.head) - xq_load_acquire_u64(self.tail))

    cdef inline void _wake(self) noexcept nogil:
        cdef uint64_t one = 1
        # head was stored with release; the full fence orders it before the sleeping load, pairing
        # with the fence in arm(): either the consumer sees the new head or we see sleeping == 1.
        # The exchange (a locked write) only happens when someone sleeps: the common case is a load.
        xq_fence()
        if xq_load_u32(self.sleeping) == 1 and xq_xchg_u32(self.sleeping, 0) == 1:
            c_write(self.efd, &one, 8)

    def write(self, head, body=b"", Py_ssize_t offset=0):
        """Write prefix+head+body from logical offset on, as much as fits; returns the new offset."""
        cdef Py_buffer hb, bb
        PyObject_GetBuffer(head, &hb, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(body, &bb, PyBUF_SIMPLE)
        except BaseException:
            PyBuffer_Release(&hb)
            raise
        try:
            return self._write(hb, bb, offset)
        finally:
            PyBuffer_Release(&bb)
            PyBuffer_Release(&hb)

    def write_many(self, list messages, Py_ssize_t start=0):
        """Write messages[start:] ((head, body) bytes pairs) while they fit whole; returns how many were
        written.  Stops at the first one that does not fit or is larger than max_chunk (use write())."""
        cdef Py_buffer hb, bb
        cdef Py_ssize_t i, n = len(messages), done = 0, size
        cdef object m, h, b
        for i in range(start, n):
            m = messages[i]
            h = (<tuple>m)[0]
            b = (<tuple>m)[1]
            if not (PyBytes_CheckExact(h) and PyBytes_CheckExact(b)):
                raise TypeError("write_many takes (bytes, bytes) pairs")
            size = 8 + PyBytes_GET_SIZE(h) + PyBytes_GET_SIZE(b)
            if size > self.max_chunk:
                break
            # bytes are immutable and kept alive by the list: their storage can be lent as is.
            hb.buf = PyBytes_AS_STRING(h)
            hb.len = PyBytes_GET_SIZE(h)
            bb.buf = PyBytes_AS_STRING(b)
            bb.len = PyBytes_GET_SIZE(b)
            if self._write(hb, bb, 0) != size:
                break
            done += 1
        return done

    cdef Py_ssize_t _write(self, Py_buffer hb, Py_buffer bb, Py_ssize_t offset) except -1:
        cdef Py_ssize_t hl, bl, total, n, end, lo, hi, seg_start, seg_len
        cdef uint64_t pos, tail, free, at, contiguous, need
        cdef bint small, wrote = False, blocked = False
        cdef char prefix[8]
        cdef const char *segs[3]
        cdef Py_ssize_t starts[3]
        cdef Py_ssize_t lens[3]
        cdef char *o
        cdef int k
        if True:
            hl = hb.len
            bl = bb.len
            if hl >= 65536:
                raise ValueError(f"message head of {hl} bytes is too large (limit 65535)")
            total = 8 + hl + bl
            put_u32(prefix, <uint32_t>hl)
            put_u32(prefix + 4, <uint32_t>bl)
            segs[0] = prefix; starts[0] = 0; lens[0] = 8
            segs[1] = <const char *>hb.buf; starts[1] = 8; lens[1] = hl
            segs[2] = <const char *>bb.buf; starts[2] = 8 + hl; lens[2] = bl
            with nogil:
                pos = self.head[0]  # only this process writes head
                tail = self.seen_tail
                if self.cap - (pos - tail) < <uint64_t>(total + 16) + self.max_chunk:
                    tail = self.seen_tail = xq_load_acquire_u64(self.tail)
                small = total <= self.max_chunk
                if small:
                    need = align8(8 + total)
                    contiguous = self.cap - (pos & self.mask)
                    if self.cap - (pos - tail) < need + (contiguous if contiguous < need else 0):
                        blocked = True
                while not blocked and offset < total:
                    free = self.cap - (pos - tail)
                    at = pos & self.mask
                    contiguous = self.cap - at
                    n = total - offset
                    if n > self.max_chunk:
                        n = self.max_chunk
                    if <Py_ssize_t>free - 8 < n:
                        n = <Py_ssize_t>free - 8
                    if n <= 0:
                        break
                    if <uint64_t>(8 + n) > contiguous:
                        if small or contiguous < 16:
                            if free < contiguous:
                                break
                            put_u32(self.data + at, 0)
                            put_u32(self.data + at + 4, WRAP)
                            pos += contiguous
                            continue
                        n = contiguous - 8
                    end = offset + n
                    put_u32(self.data + at, <uint32_t>n)
                    put_u32(self.data + at + 4, MORE if end < total else 0)
                    o = self.data + at + 8
                    for k in range(3):
                        seg_start = starts[k]
                        seg_len = lens[k]
                        lo = offset if offset > seg_start else seg_start
                        hi = end if end < seg_start + seg_len else seg_start + seg_len
                        if lo < hi:
                            memcpy(o, segs[k] + (lo - seg_start), hi - lo)
                            o += hi - lo
                    pos += align8(8 + n)
                    offset = end
                    wrote = True
                    xq_store_release_u64(self.head, pos)
                if wrote:
                    self._wake()
            return offset

    cdef object _read_one(self):
        cdef uint64_t tail, headp, at, nxt
        cdef uint32_t n, flags, hl, bl
        cdef char *p
        cdef Py_ssize_t take, room
        cdef object h, b
        while True:
            tail = self.tail[0]  # only this process writes tail
            if tail == self.seen_head:
                self.seen_head = xq_load_acquire_u64(self.head)
                if tail == self.seen_head:
                    return None
            at = tail & self.mask
            p = self.data + at
            n = get_u32(p)
            flags = get_u32(p + 4)
            if flags & WRAP:
                xq_store_release_u64(self.tail, tail + (self.cap - at))
                continue
            nxt = tail + align8(8 + n)
            p += 8
            if self.asm_head is None:
                hl = get_u32(p)
                bl = get_u32(p + 4)
                if not (flags & MORE) and n == 8 + hl + bl:
                    h = PyBytes_FromStringAndSize(p + 8, hl)
                    b = PyBytes_FromStringAndSize(p + 8 + hl, bl) if bl else b""
                    xq_store_release_u64(self.tail, nxt)
                    return (h, b)
                self.asm_head = PyBytes_FromStringAndSize(NULL, hl)
                self.asm_body = PyBytes_FromStringAndSize(NULL, bl)
                self.asm_hl = hl
                self.asm_filled = 0
                p += 8
                n -= 8
            # Assemble straight into the final bytes objects: one copy out of shared memory.
            while n > 0:
                if self.asm_filled < self.asm_hl:
                    room = self.asm_hl - self.asm_filled
                    take = n if n < room else room
                    memcpy(PyBytes_AS_STRING(self.asm_head) + self.asm_filled, p, take)
                else:
                    room = PyBytes_GET_SIZE(self.asm_body) - (self.asm_filled - self.asm_hl)
                    take = n if n < room else room
                    if take <= 0:
                        break
                    memcpy(PyBytes_AS_STRING(self.asm_body) + (self.asm_filled - self.asm_hl), p, take)
                self.asm_filled += take
                p += take
                n -= take
            xq_store_release_u64(self.tail, nxt)
            if not (flags & MORE):
                h, b = self.asm_head, self.asm_body
                self.asm_head = self.asm_body = None
                return (h, b)

    def read(self):
        """Next complete message as (head, body), or None."""
        return self._read_one()

    def read_many(self, Py_ssize_t limit):
        """Up to limit complete messages."""
        cdef list out = []
        cdef object m
        while len(out) < limit:
            m = self._read_one()
            if m is None:
                break
            out.append(m)
        return out

    def empty(self):
        return self.tail[0] == xq_load_acquire_u64(self.head)

    def arm(self):
        """Set sleeping, fence, re-check: True if the caller may block on the eventfd."""
        xq_store_u32(self.sleeping, 1)
        xq_fence()
        if self.tail[0] != xq_load_acquire_u64(self.head):
            xq_store_u32(self.sleeping, 0)
            return False
        return True

    def disarm(self, bint readable=True):
        """Clear sleeping and drain the eventfd counter; readable False (poll() did not see the eventfd
        readable) skips the read: a wake-up written since is consumed at the next disarm."""
        cdef uint64_t v
        xq_store_u32(self.sleeping, 0)
        if readable:
            c_read(self.efd, &v, 8)

    def wait(self, double timeout):
        """Block until data is there or timeout seconds passed; True if data is there."""
        cdef pollfd pfd
        cdef int ms = <int>(timeout * 1000.0) if timeout > 0 else 0
        if self.arm():
            pfd.fd = self.efd
            pfd.events = POLLIN
            pfd.revents = 0
            with nogil:
                poll(&pfd, 1, ms)
        self.disarm()
        return not self.empty()


# ---------------------------------------------------------------- heads

DEF TASK_FIXED = 16   # u64 seq | u16 attempt | u8 ct | u8 qidx | u16 id_len | u16 name_len
DEF RESULT_FIXED = 32  # u64 seq | u8 status | u8 rct | u16 pad | u32 err_len | f64 started | f64 finished


def _head_error(attempt, ct, il, nl):
    """Why a task head cannot be encoded (the frame carries attempt, id and name lengths in 16 bits)."""
    if il > 0xFFFF:
        return f"task id of {il} bytes is too large for a task head (limit 65535)"
    if nl > 0xFFFF:
        return f"task name of {nl} bytes is too large for a task head (limit 65535)"
    if not 0 <= attempt <= 0xFFFF:
        return f"attempt {attempt} does not fit a task head (limit 65535)"
    return f"content type {ct!r} is not one byte"


def encode_task_head(uint64_t seq, long long attempt, bytes ct, uint8_t qidx, bytes task_id, bytes name):
    cdef Py_ssize_t il = len(task_id), nl = len(name)
    if il > 0xFFFF or nl > 0xFFFF or attempt < 0 or attempt > 0xFFFF or len(ct) != 1:
        raise ValueError(_head_error(attempt, ct, il, nl))
    cdef object out = PyBytes_FromStringAndSize(NULL, TASK_FIXED + il + nl)
    cdef char *p = PyBytes_AS_STRING(out)
    cdef uint16_t v16 = <uint16_t>attempt
    memcpy(p, &seq, 8)
    memcpy(p + 8, &v16, 2)
    p[10] = PyBytes_AS_STRING(ct)[0]
    p[11] = <char>qidx
    v16 = <uint16_t>il
    memcpy(p + 12, &v16, 2)
    v16 = <uint16_t>nl
    memcpy(p + 14, &v16, 2)
    memcpy(p + 16, PyBytes_AS_STRING(task_id), il)
    memcpy(p + 16 + il, PyBytes_AS_STRING(name), nl)
    return out


def decode_task_head(bytes head):
    cdef Py_ssize_t n = len(head)
    cdef const char *p = PyBytes_AS_STRING(head)
    cdef uint64_t seq
    cdef uint16_t attempt, il, nl
    if n < TASK_FIXED:
        raise ValueError(f"task head of {n} bytes is too short")
    memcpy(&seq, p, 8)
    memcpy(&attempt, p + 8, 2)
    memcpy(&il, p + 12, 2)
    memcpy(&nl, p + 14, 2)
    if n != TASK_FIXED + il + nl:
        raise ValueError(f"task head of {n} bytes does not match its id/name lengths {il}/{nl}")
    return (seq, attempt, PyBytes_FromStringAndSize(p + 10, 1), <uint8_t>p[11],
            PyBytes_FromStringAndSize(p + 16, il), PyBytes_FromStringAndSize(p + 16 + il, nl))


def encode_result_head(uint64_t seq, uint8_t status, bytes rct, double started, double finished, bytes error):
    cdef Py_ssize_t el = len(error)
    cdef object out = PyBytes_FromStringAndSize(NULL, RESULT_FIXED + el)
    cdef char *p = PyBytes_AS_STRING(out)
    cdef uint32_t e32 = <uint32_t>el
    memset(p, 0, RESULT_FIXED)
    memcpy(p, &seq, 8)
    p[8] = <char>status
    p[9] = PyBytes_AS_STRING(rct)[0]
    memcpy(p + 12, &e32, 4)
    memcpy(p + 16, &started, 8)
    memcpy(p + 24, &finished, 8)
    memcpy(p + 32, PyBytes_AS_STRING(error), el)
    return out


def decode_result_head(bytes head):
    cdef Py_ssize_t n = len(head)
    cdef const char *p = PyBytes_AS_STRING(head)
    cdef uint64_t seq
    cdef uint32_t el
    cdef double started, finished
    if n < RESULT_FIXED:
        raise ValueError(f"result head of {n} bytes is too short")
    memcpy(&seq, p, 8)
    memcpy(&el, p + 12, 4)
    memcpy(&started, p + 16, 8)
    memcpy(&finished, p + 24, 8)
    if n != RESULT_FIXED + el:
        raise ValueError(f"result head of {n} bytes does not match its error length {el}")
    return (seq, <uint8_t>p[8], PyBytes_FromStringAndSize(p + 9, 1), started, finished,
            PyBytes_FromStringAndSize(p + RESULT_FIXED, el))


# ---------------------------------------------------------------- ids

cdef const char *ALPHABET = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
cdef int id_pid = -1
cdef uint64_t id_node = 0, id_counter = 0, id_last = 0
DEF MASK40 = 0xFFFFFFFFFF


def new_ids(Py_ssize_t n):
    """n sortable 26-char ids: 48-bit ms time, 40 random bits per process, 40-bit counter."""
    global id_pid, id_node, id_counter, id_last
    cdef list out = []
    cdef uint64_t ms, hi, lo
    cdef Py_ssize_t i
    cdef int j
    cdef object s
    cdef char *p
    if id_pid != getpid():  # a forked child must not repeat its parent's ids
        id_pid = getpid()
        id_node = int.from_bytes(os.urandom(5), "big")
        id_counter = int.from_bytes(os.urandom(5), "big") >> 1
        id_last = 0
    ms = <uint64_t>(time.time_ns() // 1000000)
    if ms < id_last:
        ms = id_last
    id_last = ms
    for i in range(n):
        id_counter = (id_counter + 1) & MASK40
        if id_counter == 0:
            ms += 1
            id_last = ms
        # 128 bits = hi (ms:48 | node high 16) , lo (node low 24 | counter 40); 26 chars of 5 bits = 130
        hi = (ms << 16) | (id_node >> 24)
        lo = ((id_node & 0xFFFFFF) << 40) | id_counter
        s = PyBytes_FromStringAndSize(NULL, 26)
        p = PyBytes_AS_STRING(s)
        for j in range(25, -1, -1):
            p[j] = ALPHABET[lo & 31]
            lo = (lo >> 5) | ((hi & 31) << 59)
            hi >>= 5
        out.append(s)
    return out



cdef uint8_t _B32[256]
memset(_B32, 255, 256)
for _i, _c in enumerate(bytearray(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")):
    _B32[_c] = _i


def wait_times(list items):
    """Per task of COMPLETE arguments (7 values a task: id, attempt, ..., started ms, finished ms), its
    queue wait in ms: started minus the enqueue time its xq id begins with (10 Crockford base32 chars),
    or -1 when not known (a retry, an id of another form, an enqueue time after the start)."""
    cdef Py_ssize_t i, j, n = len(items)
    cdef list out = []
    cdef object tid, att, st
    cdef const uint8_t *p
    cdef int64_t t, w
    cdef uint8_t v
    for i in range(0, n - 6, 7):
        tid, att, st = items[i], items[i + 1], items[i + 5]
        w = -1
        if PyBytes_CheckExact(tid) and PyBytes_GET_SIZE(tid) == 26 and type(att) is int and att == 1 \
                and type(st) is int:
            p = <const uint8_t *>PyBytes_AS_STRING(tid)
            t = 0
            for j in range(10):
                v = _B32[p[j]]
                if v == 255:
                    t = -1
                    break
                t = t * 32 + v
            if 0 < t <= <int64_t>st:
                w = <int64_t>st - t
        out.append(w)
    return out


# ---------------------------------------------------------------- payloads and RESP

def encode_payloads(payloads):
    """(data, ct) per payload: raw bytes as b'b', anything else orjson-dumped as b'j'."""
    cdef list data = [], ct = []
    cdef Py_ssize_t i = 0
    dumps = orjson.dumps
    for p in payloads:
        if PyBytes_CheckExact(p):
            data.append(p)
            ct.append(b"b")
        elif isinstance(p, (bytes, bytearray, memoryview)):
            data.append(bytes(p))
            ct.append(b"b")
        else:
            try:
                data.append(dumps(p))
            except TypeError as e:
                raise TypeError(f"payload #{i} of type {type(p).__name__} cannot be serialized to JSON: {e}") from None
            ct.append(b"j")
        i += 1
    return data, ct


cdef inline bytes _b(object x):
    if PyBytes_CheckExact(x):
        return <bytes>x
    if isinstance(x, str):
        return (<str>x).encode()
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, (int, float)):
        return str(x).encode()
    raise TypeError(f"cannot send {type(x).__name__} to Redis")


cdef inline Py_ssize_t _digits(Py_ssize_t v) noexcept nogil:
    cdef Py_ssize_t d = 1
    while v >= 10:
        v //= 10
        d += 1
    return d


cdef inline char *_put_len(char *p, char tag, Py_ssize_t v) noexcept nogil:
    cdef Py_ssize_t d = _digits(v), k
    p[0] = tag
    for k in range(d, 0, -1):
        p[k] = <char>(48 + v % 10)
        v //= 10
    p[d + 1] = 13
    p[d + 2] = 10
    return p + d + 3


cdef bytes _pack(list parts):
    cdef Py_ssize_t n = len(parts), size, i, l
    cdef bytes b
    cdef object out
    cdef char *p
    size = 3 + _digits(n)
    for i in range(n):
        l = PyBytes_GET_SIZE(parts[i])
        size += 3 + _digits(l) + l + 2
    out = PyBytes_FromStringAndSize(NULL, size)
    p = PyBytes_AS_STRING(out)
    p = _put_len(p, 42, n)  # '*'
    for i in range(n):
        b = <bytes>parts[i]
        l = PyBytes_GET_SIZE(b)
        p = _put_len(p, 36, l)  # '$'
        memcpy(p, PyBytes_AS_STRING(b), l)
        p[l] = 13
        p[l + 1] = 10
        p += l + 2
    return out


def pack_command(args):
    """One RESP array of bulk strings."""
    return _pack([_b(a) for a in args])


_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def pack_enqueue(sha, keys, fixed, ids, payloads, Py_ssize_t first, Py_ssize_t max_payload, stage=b"",
                 Py_ssize_t inline=0, ttl_ms=0):
    """(RESP, replies): EVALSHA sha nkeys *keys *fixed, then id, data, ct per task; payloads are encoded
    here (raw bytes as ct b'b', else orjson as b'j') and dropped at once, so only the packed bytes stay
    alive.  With a stage prefix, a payload over `inline` bytes is staged instead: HSET stage+id payload
    data and PEXPIRE stage+id ttl_ms go first, all of them in one MULTI/EXEC, and the task's triple is
    (id, b'', ct + b'+'); replies is how many replies the lot gets (1, or 3 + 2 a staged payload)."""
    from xq.errors import PayloadTooLarge
    cdef list parts = [b"EVALSHA", _b(sha), _b(len(keys))]
    cdef list staged = []
    cdef Py_ssize_t i, n = len(ids)
    cdef bytes d, ttl = _b(ttl_ms), sp = _b(stage)
    cdef bint staging = PyBytes_GET_SIZE(sp) > 0
    dumps = orjson.dumps
    for k in keys:
        parts.append(_b(k))
    for f in fixed:
        parts.append(_b(f))
    for i in range(n):
        p = payloads[i]
        tid = _b(ids[i])
        parts.append(tid)
        if PyBytes_CheckExact(p):
            d = <bytes>p
            ct = b"b"
        elif isinstance(p, (bytearray, memoryview)):
            d = bytes(p)
            ct = b"b"
        else:
            try:
                d = dumps(p)
            except TypeError as e:
                raise TypeError(f"payload #{first + i} of type {type(p).__name__} cannot be serialized to JSON: {e}") from None
            ct = b"j"
        if PyBytes_GET_SIZE(d) > max_payload:
            raise PayloadTooLarge(f"payload #{first + i} is {PyBytes_GET_SIZE(d)} bytes, over max_payload={max_payload} bytes")
        if staging and PyBytes_GET_SIZE(d) > inline:
            staged.append(_pack([b"HSET", sp + tid, b"payload", d]))
            staged.append(_pack([b"PEXPIRE", sp + tid, ttl]))
            parts.append(b"")
            parts.append(ct + b"+")
        else:
            parts.append(d)
            parts.append(ct)
    if not staged:
        return _pack(parts), 1
    # MULTI/EXEC: a stage is written with its expiry or not at all, whatever cuts the connection
    n = len(staged)
    staged.insert(0, _MULTI)
    staged.append(_EXEC)
    staged.append(_pack(parts))
    return b"".join(staged), n + 3


# ---------------------------------------------------------------- supervisor loops

cdef class InFlight:
    """A claimed task while this supervisor holds it (fields: _fast.pxd)."""

    def __init__(self, int qidx, bytes id, bytes name, bytes payload, bytes ct, int attempt, long long timeout_ms=0):
        self.qidx = qidx
        self.id = id
        self.name = name
        self.payload = payload
        self.ct = ct
        self.attempt = attempt
        self.timeout_ms = timeout_ms

    def __repr__(self):
        return (f"InFlight(qidx={self.qidx}, id={self.id!r}, name={self.name!r}, payload=<{len(self.payload)} "
                f"bytes>, ct={self.ct!r}, attempt={self.attempt}, timeout_ms={self.timeout_ms})")


cdef uint8_t _ID_OK[256]
memset(_ID_OK, 0, 256)
for _c in bytearray(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"):
    _ID_OK[_c] = 1


cdef inline bint _plain(object task_id, object name, object ct, object att, object to):
    """The cheap check of a claimed task: True if it certainly keeps every limit (keys.check_record
    gives the reason for the rest; a non-ASCII name, for one, is looked at there)."""
    cdef Py_ssize_t n, i
    cdef const uint8_t *p
    if not PyBytes_CheckExact(task_id) or not PyBytes_CheckExact(name) or not PyBytes_CheckExact(ct):
        return False
    n = PyBytes_GET_SIZE(task_id)
    if n < 1 or n > 128:
        return False
    p = <const uint8_t *>PyBytes_AS_STRING(task_id)
    for i in range(n):
        if not _ID_OK[p[i]]:
            return False
    n = PyBytes_GET_SIZE(name)
    if n < 1 or n > 200:
        return False
    p = <const uint8_t *>PyBytes_AS_STRING(name)
    for i in range(n):
        if p[i] < 0x20 or p[i] >= 0x7f:
            return False
    if PyBytes_GET_SIZE(ct) != 1 or (PyBytes_AS_STRING(ct)[0] != b'j' and PyBytes_AS_STRING(ct)[0] != b'b'):
        return False
    if type(att) is not int or not (1 <= att <= 65535):
        return False
    if not PyBytes_CheckExact(to):
        return False
    n = PyBytes_GET_SIZE(to)
    if n > 14:
        return False
    p = <const uint8_t *>PyBytes_AS_STRING(to)
    for i in range(n):
        if p[i] < 0x30 or p[i] > 0x39:
            return False
    return True


def screen_claimed(list tasks):
    """Offsets (into tasks, 7 values a task) of the claimed tasks that need keys.check_record's full
    look, or None when every one keeps the limits (the common case, one pass in C)."""
    cdef Py_ssize_t i, n = len(tasks)
    cdef list out = None
    for i in range(0, n, 7):
        if not _plain(tasks[i + 1], tasks[i + 2], tasks[i + 4], tasks[i + 5], tasks[i + 6]):
            if out is None:
                out = []
            out.append(i)
    return out


def take_claimed(list tasks, dict inflight, buffer, uint64_t seq):
    """Record a CLAIM reply (7 values a task) as inflight[seq] = InFlight and queue seq in buffer; returns
    the last seq used."""
    cdef Py_ssize_t i, n = len(tasks)
    cdef InFlight t
    cdef object to
    append = buffer.append
    for i in range(0, n, 7):
        seq += 1
        t = InFlight.__new__(InFlight)
        t.qidx = tasks[i]
        t.id = tasks[i + 1]
        t.name = tasks[i + 2]
        t.payload = tasks[i + 3]
        t.ct = tasks[i + 4]
        t.attempt = tasks[i + 5]
        to = tasks[i + 6]
        t.timeout_ms = int(to) if to else 0
        inflight[seq] = t
        append(seq)
    return seq


def fill_ring(Ring ring, buffer, dict inflight, unacked, Py_ssize_t room):
    """Move up to room tasks from the head of buffer into ring (head encoded here, payload copied once),
    appending their seqs to unacked.  Returns (written, why): why 0 = room or buffer exhausted, 1 = ring
    out of bytes, 2 = the next task is larger than a chunk (stream it with Ring.write)."""
    cdef Py_buffer hb, bb
    cdef Py_ssize_t done = 0, size
    cdef object seq, head, payload
    cdef InFlight t
    popleft = buffer.popleft
    append = unacked.append
    while done < room and buffer:
        seq = buffer[0]
        t = <InFlight?>inflight[seq]
        payload = t.payload
        head = encode_task_head(seq, t.attempt, t.ct, t.qidx, t.id, t.name)
        size = 8 + PyBytes_GET_SIZE(head) + PyBytes_GET_SIZE(payload)
        if size > ring.max_chunk:
            return done, 2
        hb.buf = PyBytes_AS_STRING(head)
        hb.len = PyBytes_GET_SIZE(head)
        bb.buf = PyBytes_AS_STRING(payload)
        bb.len = PyBytes_GET_SIZE(payload)
        if ring._write(hb, bb, 0) != size:
            return done, 1
        popleft()
        append(seq)
        done += 1
    return done, 0


def drain_results(Ring ring, dict inflight, dict completions, unacked, Py_ssize_t limit, dict progress=None,
                  dict stats=None):
    """Read up to limit result frames; for each, retire its seq and append COMPLETE arguments (id, attempt,
    outcome, result-or-error, rct-or-extra, started ms, finished ms) to completions[queue index].  A progress
    frame only sets progress[seq] (the last one wins).  stats: a done task adds 1 and its run time to
    stats[queue index][name] = [done, seconds] (the stats history).  Returns (result frames, total run time
    in seconds)."""
    cdef Py_ssize_t n = 0, frames = 0
    cdef double busy = 0.0, took
    cdef object m, o, items, d, row
    cdef InFlight t
    cdef list li
    while frames < limit:
        m = ring._read_one()
        if m is None:
            break
        frames += 1
        seq, status, rct, started, finished, error = decode_result_head((<tuple>m)[0])
        if status == ST_PROGRESS:
            # The task is still running: its seq stays in unacked and inflight.
            o = inflight.get(seq)
            if o is not None and progress is not None:
                t = <InFlight?>o
                progress[seq] = (t.qidx, t.id, (<tuple>m)[1], error, <int64_t>(started * 1000))
            continue
        n += 1
        if unacked and unacked[0] == seq:
            unacked.popleft()
        else:
            try:
                unacked.remove(seq)
            except ValueError:
                pass
        o = inflight.pop(seq, None)
        if o is None:
            continue
        t = <InFlight?>o
        took = finished - started
        busy += took
        if stats is not None and status == ST_DONE:
            d = stats.get(t.qidx)
            if d is None:
                d = stats[t.qidx] = {}
            row = (<dict>d).get(t.name)
            if row is None:
                (<dict>d)[t.name] = [1, took]
            else:
                (<list>row)[0] += 1
                (<list>row)[1] += took
        items = completions.get(t.qidx)
        if items is None:
            items = completions[t.qidx] = []
        li = <list>items
        li.append(t.id)
        li.append(t.attempt)
        if status == ST_DONE:
            li.append(b"done")
            li.append((<tuple>m)[1])
            li.append(rct)
        else:
            li.append(_OUTCOMES.get(status, b"failed"))
            li.append(error)
            li.append((<tuple>m)[1])
        li.append(<int64_t>(started * 1000))
        li.append(<int64_t>(finished * 1000))
    return n, busy


EVENT_RESULT_MAX = 512  # bytes of JSON result carried inline in a completion event


def build_event(bytes queue, list items, int64_t ts):
    """The events message of the done tasks of one COMPLETE: a JSON array of {"id","queue","state","ts"} (7
    items a task), plus "result" for a done task whose result is JSON of at most EVENT_RESULT_MAX bytes.
    Other outcomes are skipped (the script publishes those, as only it knows the state they lead to); b""
    if no task is done."""
    cdef list parts = []
    cdef Py_ssize_t i
    cdef bytes body
    tail = b'","queue":"' + queue + b'","state":"'
    end = b'","ts":' + str(ts).encode()
    for i in range(0, len(items), 7):
        if items[i + 2] != b"done":
            continue
        body = items[i + 3]
        if items[i + 4] == b"j" and len(body) <= EVENT_RESULT_MAX:
            parts.append(b'{"id":"' + items[i] + tail + b'done' + end + b',"result":' + body + b"}")
        else:
            parts.append(b'{"id":"' + items[i] + tail + b'done' + end + b"}")
    if not parts:
        return b""
    return b"[" + b",".join(parts) + b"]"
