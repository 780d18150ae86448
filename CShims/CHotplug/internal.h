// Internal to the C shim: what its .c files share and Swift never sees (this header sits outside include/, so the
// module map does not export it). The functions declared here have hidden visibility; the small ones are inline
// so that the hot paths (barrier, mailbox) pay no call across files.
#ifndef CHOTPLUG_INTERNAL_H
#define CHOTPLUG_INTERNAL_H

#include "CHotplug.h"

#include <stdatomic.h>

#define CHP_INTERNAL __attribute__((visibility("hidden")))

#define A32(p) ((_Atomic uint32_t *)(p))
#define A64(p) ((_Atomic uint64_t *)(p))
#define AI32(p) ((_Atomic int32_t *)(p))
#define AI64(p) ((_Atomic int64_t *)(p))

// ---------------------------------------------------------------------------------------------------------------
// MARK: Pause hint and futex (util.c)
// ---------------------------------------------------------------------------------------------------------------

/// Issues the CPU's spin-wait hint (`pause` on x86, `yield` on arm64). Cannot fail.
static inline void chp_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/// Blocks while `*word == expected`, for at most `timeout_ns` (negative: no bound). Process-private futex.
/// Returns 0 when woken (or spuriously), or an errno value: EAGAIN (the word did not hold `expected`),
/// EINTR (a signal interrupted the wait), ETIMEDOUT. Callers re-check their word in a loop.
CHP_INTERNAL int chp_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);

/// Wakes every waiter on `word`. Cannot fail: FUTEX_WAKE fails only for a misaligned or unmapped word, and every
/// word passed here is an aligned field of a live struct.
CHP_INTERNAL void chp_futex_wake_all(uint32_t *word);

// ---------------------------------------------------------------------------------------------------------------
// MARK: SIGP: what the mechanism (sigp.c) and the order policy (sigp_orders.c) share
// ---------------------------------------------------------------------------------------------------------------
//
// P1 to P4 name the acquire/release pairs of the memory-ordering map at the top of sigp.c.

#define CLASS_OF(mb) (((mb) & CHP_MB_CLASS_MASK) >> CHP_MB_CLASS_SHIFT)
#define WITH_CLASS(mb, cls) (((mb) & ~(uint32_t)CHP_MB_CLASS_MASK) | ((uint32_t)(cls) << CHP_MB_CLASS_SHIFT))

/// Takes a signal ticket (P3: before the post it covers).
static inline uint64_t chp_take_ticket(chp_cpu_t *cpu) {
    return atomic_fetch_add_explicit(A64(&cpu->sig_seq), 1, memory_order_relaxed) + 1;
}

/// Sets `bits` in the mailbox (release RMW, P1; also publishes the ticket taken before it). Returns the mailbox
/// word it replaced (its class and STOPPED bit at the instant of the post, P2).
static inline uint32_t chp_post(chp_cpu_t *cpu, uint32_t bits) {
    return atomic_fetch_or_explicit(A32(&cpu->mailbox), bits, memory_order_release);
}

/// Wakes every thread blocked on the CPU's mailbox (idle wait or stop).
static inline void chp_wake_mailbox(chp_cpu_t *cpu) { chp_futex_wake_all(&cpu->mailbox); }

/// Copies the last stop site into the status area (STOP_AND_STORE_STATUS).
static inline void chp_store_status(chp_cpu_t *cpu) {
    atomic_store_explicit(A64(&cpu->status_ip),
                          atomic_load_explicit(A64(&cpu->stop_ip), memory_order_relaxed), memory_order_relaxed);
    atomic_store_explicit(A64(&cpu->status_sp),
                          atomic_load_explicit(A64(&cpu->stop_sp), memory_order_relaxed), memory_order_relaxed);
    // Release: publishes status_ip/status_sp; partner of the acquire load of status_stored in chp_cpu_stored_status.
    atomic_store_explicit(A32(&cpu->status_stored), 1, memory_order_release);
}

/// The run state (acquire: partner of the CPU's release store in chp_cpu_set_run_state).
static inline uint32_t chp_load_run_state(const chp_cpu_t *cpu) {
    return atomic_load_explicit((_Atomic uint32_t *)&cpu->run_state, memory_order_acquire);
}

/// The lifecycle word (acquire: P4, partner of the controller's release store in chp_cpu_set_lifecycle).
static inline uint32_t chp_load_lifecycle(const chp_cpu_t *cpu) {
    return atomic_load_explicit((_Atomic uint32_t *)&cpu->lifecycle, memory_order_acquire);
}

#endif
