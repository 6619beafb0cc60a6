# Declarations of the hot path; see _fast.pyi for the contract and the byte layout.
from libc.stdint cimport uint32_t, uint64_t
from cpython.buffer cimport Py_buffer


cdef extern from "_ring.h":
    uint64_t xq_load_acquire_u64(const uint64_t *p) nogil
    void xq_store_release_u64(uint64_t *p, uint64_t v) nogil
    uint32_t xq_load_u32(const uint32_t *p) nogil
    void xq_store_u32(uint32_t *p, uint32_t v) nogil
    void xq_fence() nogil
    uint32_t xq_xchg_u32(uint32_t *p, uint32_t v) nogil


cdef class Ring:
    cdef Py_buffer view           # the shared mapping, held for the Ring's lifetime
    cdef char *data               # start of the data region (after the header)
    cdef uint64_t *head           # total bytes written; producer stores with release
    cdef uint64_t *tail           # total bytes consumed; consumer stores with release
    cdef uint32_t *sleeping       # 1 while the consumer is about to block on the eventfd
    cdef uint64_t cap             # data region size, a power of two
    cdef uint64_t mask            # cap - 1
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t max_chunk  # largest frame payload: cap // 4
    cdef int efd                  # eventfd the producer writes to wake the consumer
    cdef uint64_t seen_tail       # producer: last tail read; free space is re-read only when it looks short
    cdef uint64_t seen_head       # consumer: last head read; re-read only when caught up with it
    cdef object asm_head          # consumer: bytes of the head of a message being assembled
    cdef object asm_body          # consumer: bytes of its body, allocated once, filled chunk by chunk
    cdef Py_ssize_t asm_filled    # logical bytes of it received so far (prefix excluded)
    cdef Py_ssize_t asm_hl        # its head length

    cdef inline void _wake(self) noexcept nogil
    cdef object _read_one(self)
    cdef Py_ssize_t _write(self, Py_buffer hb, Py_buffer bb, Py_ssize_t offset) except -1


cdef class InFlight:
    """A claimed task while this supervisor holds it: from CLAIM's reply to its COMPLETE or RELEASE."""
    cdef readonly int qidx            # index of its queue in the supervisor's --queues
    cdef readonly bytes id            # task id
    cdef readonly bytes name          # task name, as CLAIM returned it
    cdef public bytes payload         # payload bytes, forwarded to the child untouched (set late for a large one)
    cdef readonly bytes ct            # payload content type: b"j" JSON, b"b" raw bytes
    cdef readonly int attempt         # this claim's attempt number: with the worker id, the fencing token
    cdef readonly long long timeout_ms  # its own processing timeout in ms; 0: its task's default applies
