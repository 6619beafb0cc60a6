/* Memory-ordering helpers for the shared-memory rings (GCC/Clang __atomic builtins). */
#ifndef XQ_RING_H
#define XQ_RING_H
#include <stdint.h>

/* The consumer reads frame bytes only after it has seen `head` move: acquire pairs with the
   producer's release, so the bytes written before the release are visible. */
static inline uint64_t xq_load_acquire_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void xq_store_release_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t xq_load_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void xq_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
/* The sleeping-flag handshake is a store followed by a load on each side (Dekker): only a full
   fence keeps that pair in order, on x86 included. */
static inline void xq_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline uint32_t xq_xchg_u32(uint32_t *p, uint32_t v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
#endif
