// The sense-reversing centralized barrier with spin-then-park. See CHotplug.h for the protocol.
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int chp_barrier_create(uint32_t participants, chp_barrier_t **barrier) {
    if (participants == 0) return EINVAL;
    void *memory = NULL;
    int rc = posix_memalign(&memory, CHP_CACHE_LINE, sizeof(chp_barrier_t));
    if (rc != 0) return rc;
    memset(memory, 0, sizeof(chp_barrier_t));
    chp_barrier_t *created = memory;
    // Relaxed: the caller hands the barrier to its participants through its own synchronisation (thread start,
    // a lock), which orders these stores.
    atomic_store_explicit(A32(&created->participants), participants, memory_order_relaxed);
    *barrier = created;
    return 0;
}

void chp_barrier_destroy(chp_barrier_t *barrier) { free(barrier); }

void chp_barrier_state_init(const chp_barrier_t *barrier, chp_barrier_state_t *state) {
    // Acquire: partner of the release store of the sense by the last arriver of the previous episode.
    state->sense = atomic_load_explicit((_Atomic uint32_t *)&barrier->sense, memory_order_acquire);
}

int chp_barrier_set_participants(chp_barrier_t *barrier, uint32_t participants) {
    if (participants == 0) return EINVAL;
    // Relaxed: the caller guarantees no episode is in progress; the next episode's participants learn it through
    // whatever synchronisation brought them here (the caller's own release/acquire).
    atomic_store_explicit(A32(&barrier->participants), participants, memory_order_relaxed);
    return 0;
}

bool chp_barrier_wait(chp_barrier_t *barrier, chp_barrier_state_t *state, uint32_t spin_budget) {
    uint32_t mine = state->sense ^ 1u;
    state->sense = mine;
    uint32_t participants = atomic_load_explicit(A32(&barrier->participants), memory_order_relaxed);
    // Acq_rel: releases this participant's writes before the barrier; the last arriver acquires all of them.
    uint32_t arrived = atomic_fetch_add_explicit(A32(&barrier->arrived), 1, memory_order_acq_rel) + 1;
    if (arrived == participants) {
        // Relaxed: published to the next episode's arrivals by the release store of the sense just below.
        atomic_store_explicit(A32(&barrier->arrived), 0, memory_order_relaxed);
        // Release: partner of the acquire loads of the sense by the spinning / parked participants.
        atomic_store_explicit(A32(&barrier->sense), mine, memory_order_release);
        // Dekker pair with the fence after a waiter registers: either we see it, or it sees the new sense.
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load_explicit(A32(&barrier->waiters), memory_order_relaxed) != 0) {
            chp_futex_wake_all(&barrier->sense);
        }
        return true;
    }
    for (uint32_t i = 0; i < spin_budget; i++) {
        // Acquire: partner of the last arriver's release store of the sense.
        if (atomic_load_explicit(A32(&barrier->sense), memory_order_acquire) == mine) return false;
        chp_cpu_relax();
    }
    atomic_fetch_add_explicit(A32(&barrier->waiters), 1, memory_order_relaxed);
    // Dekker pair with the last arriver's fence.
    atomic_thread_fence(memory_order_seq_cst);
    // Acquire: partner of the last arriver's release store of the sense.
    while (atomic_load_explicit(A32(&barrier->sense), memory_order_acquire) != mine) {
        // EINTR / EAGAIN / spurious: re-check the word.
        (void)chp_futex_wait(&barrier->sense, mine ^ 1u, -1);
    }
    atomic_fetch_sub_explicit(A32(&barrier->waiters), 1, memory_order_relaxed);
    return false;
}
