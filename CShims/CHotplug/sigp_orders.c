// The S/390 order policy of SIGP: which condition code and status bits each order answers, given the target's run
// state and mailbox, and which mailbox bits it posts. The mechanism that carries the posted bits (control block,
// mailbox, wake-up delivery, signal handler, safe point, parking) is in sigp.c; P1 to P4 name the
// acquire/release pairs of the memory-ordering map at the top of that file.
#include "internal.h"

// MARK: Orders

static chp_sigp_result_t cc(int code, uint32_t status) {
    chp_sigp_result_t r = {code, status};
    return r;
}

chp_sigp_result_t chp_sigp_post(chp_cpu_t *cpu, int order, uint32_t parameter, int32_t source,
                                chp_delivery_t *delivery) {
    delivery->ticket = 0;
    delivery->seen = 0;
    if (cpu == NULL) return cc(3, 0);
    uint32_t run = chp_load_run_state(cpu);   // acquire: partner of chp_cpu_set_run_state's release store
    if (run == CHP_RUN_NONE) return cc(3, 0);
    uint32_t mb = atomic_load_explicit(A32(&cpu->mailbox), memory_order_acquire);
    bool reset = order == CHP_SIGP_CPU_RESET || order == CHP_SIGP_INITIAL_CPU_RESET;
    bool modelled = order == CHP_SIGP_SENSE || order == CHP_SIGP_EXTERNAL_CALL ||
                    order == CHP_SIGP_EMERGENCY_SIGNAL || order == CHP_SIGP_START || order == CHP_SIGP_STOP ||
                    order == CHP_SIGP_RESTART || order == CHP_SIGP_STOP_AND_STORE_STATUS || reset ||
                    order == CHP_SIGP_COND_EMERGENCY_SIGNAL || order == CHP_SIGP_SENSE_RUNNING;
    if (!modelled) return cc(1, CHP_STATUS_INVALID_ORDER);
    bool offline = run == CHP_RUN_OFFLINE;
    // The lifecycle's START of a parked CPU is never busy: a STOP or RESTART accepted while it went offline stays
    // pending and is taken at its first safe point.
    bool attach = order == CHP_SIGP_START && offline && chp_load_lifecycle(cpu) == CHP_LIFE_ONLINE;
    if (!reset && !attach && (mb & CHP_MB_BUSY_MASK)) return cc(2, 0);

    switch (order) {
    case CHP_SIGP_SENSE: {
        uint32_t status = 0;
        if (offline || (mb & CHP_MB_STOPPED)) status |= CHP_STATUS_STOPPED;
        if (atomic_load_explicit(A32(&cpu->ext_claim), memory_order_acquire)) status |= CHP_STATUS_EXT_CALL_PENDING;
        if (atomic_load_explicit(A32(&cpu->check_stop), memory_order_relaxed)) status |= CHP_STATUS_CHECK_STOP;
        return status ? cc(1, status) : cc(0, 0);
    }
    case CHP_SIGP_SENSE_RUNNING:
        return (run == CHP_RUN_RUNNING || run == CHP_RUN_POLLING) ? cc(0, 0) : cc(1, CHP_STATUS_NOT_RUNNING);

    case CHP_SIGP_EXTERNAL_CALL: {
        uint32_t expected = 0;
        // Acquire: partner of the CPU's release store of 0 after it read the previous call's parameter.
        if (!atomic_compare_exchange_strong_explicit(A32(&cpu->ext_claim), &expected, 1, memory_order_acquire,
                                                     memory_order_relaxed)) {
            return cc(1, CHP_STATUS_EXT_CALL_PENDING);
        }
        // Relaxed: published by the release RMW of the mailbox below (P1).
        atomic_store_explicit(A32(&cpu->ext_param), parameter, memory_order_relaxed);
        atomic_store_explicit(AI32(&cpu->ext_source), source, memory_order_relaxed);
        uint64_t t = chp_take_ticket(cpu);
        delivery->seen = chp_post(cpu, CHP_MB_EXTERNAL_CALL);
        if (!offline) delivery->ticket = t;
        return cc(0, 0);
    }
    case CHP_SIGP_COND_EMERGENCY_SIGNAL:
        if (run == CHP_RUN_RUNNING) return cc(1, CHP_STATUS_INCORRECT_STATE);
        /* fallthrough */
    case CHP_SIGP_EMERGENCY_SIGNAL:
        // Relaxed: published by the release RMW of the mailbox below (P1).
        atomic_fetch_add_explicit(A32(&cpu->emergency_count), 1, memory_order_relaxed);
        {
            uint64_t t = chp_take_ticket(cpu);
            delivery->seen = chp_post(cpu, CHP_MB_EMERGENCY);
            if (!offline) delivery->ticket = t;
        }
        return cc(0, 0);

    case CHP_SIGP_START: {
        if (offline) {
            // A parked (offline) CPU starts only when the lifecycle has permitted it (attach).
            if (chp_load_lifecycle(cpu) != CHP_LIFE_ONLINE) return cc(1, CHP_STATUS_INCORRECT_STATE);
            chp_cpu_wake_lifecycle(cpu);
            return cc(0, 0);
        }
        uint32_t old = atomic_fetch_and_explicit(A32(&cpu->mailbox), ~(uint32_t)CHP_MB_STOPPED,
                                                 memory_order_release);   // P1: partner of stop_wait's acquire
        if (old & CHP_MB_STOPPED) chp_wake_mailbox(cpu);
        return cc(0, 0);
    }

    case CHP_SIGP_STOP:
    case CHP_SIGP_STOP_AND_STORE_STATUS: {
        bool store = order == CHP_SIGP_STOP_AND_STORE_STATUS;
        if (offline) {   // already stopped (parked); the status is where it parked
            if (store) chp_store_status(cpu);
            return cc(0, 0);
        }
        uint32_t bits = CHP_MB_STOP | (store ? CHP_MB_STOP_STORE : 0);
        uint64_t t = chp_take_ticket(cpu);
        for (;;) {
            if (mb & CHP_MB_BUSY_MASK) return cc(2, 0);
            if (mb & CHP_MB_STOPPED) {   // already stopped by an order
                if (store) chp_store_status(cpu);
                return cc(0, 0);
            }
            // Release: P1.
            if (atomic_compare_exchange_weak_explicit(A32(&cpu->mailbox), &mb, mb | bits, memory_order_release,
                                                      memory_order_acquire)) {
                break;
            }
        }
        delivery->ticket = t;
        delivery->seen = mb;
        return cc(0, 0);
    }

    case CHP_SIGP_RESTART: {
        if (offline) return cc(1, CHP_STATUS_INCORRECT_STATE);
        uint64_t t = chp_take_ticket(cpu);
        for (;;) {
            if (mb & CHP_MB_BUSY_MASK) return cc(2, 0);
            uint32_t next = (mb & ~(uint32_t)CHP_MB_STOPPED) | CHP_MB_RESTART;
            // Release: P1, and partner of stop_wait's acquire when it clears STOPPED.
            if (atomic_compare_exchange_weak_explicit(A32(&cpu->mailbox), &mb, next, memory_order_release,
                                                      memory_order_acquire)) {
                break;
            }
        }
        if (mb & CHP_MB_STOPPED) {
            chp_wake_mailbox(cpu);
        } else {
            delivery->ticket = t;
            delivery->seen = mb;
        }
        return cc(0, 0);
    }

    case CHP_SIGP_CPU_RESET:
    case CHP_SIGP_INITIAL_CPU_RESET: {
        // Clear every pending interruption and order; place the CPU in the stopped state.
        atomic_store_explicit(A32(&cpu->emergency_count), 0, memory_order_relaxed);
        uint32_t keep = CHP_MB_CALL | CHP_MB_LIFECYCLE | CHP_MB_TASKLET | CHP_MB_JOB | CHP_MB_STOPPED | CHP_MB_CLAIMED |
                        CHP_MB_CLASS_MASK;
        uint64_t t = chp_take_ticket(cpu);
        for (;;) {
            uint32_t next = mb & keep;
            if (!offline && !(mb & CHP_MB_STOPPED)) next |= CHP_MB_STOP;
            // Acq_rel: P1 for the STOP we may post, and we take the ext-call bit away.
            if (atomic_compare_exchange_weak_explicit(A32(&cpu->mailbox), &mb, next, memory_order_acq_rel,
                                                      memory_order_acquire)) {
                if (next & CHP_MB_STOP) {
                    delivery->ticket = t;
                    delivery->seen = mb;
                }
                break;
            }
        }
        // Release: partner of the acquire CAS of the next external-call sender.
        atomic_store_explicit(A32(&cpu->ext_claim), 0, memory_order_release);
        if (order == CHP_SIGP_INITIAL_CPU_RESET) {
            atomic_store_explicit(A32(&cpu->status_stored), 0, memory_order_relaxed);
            atomic_store_explicit(A64(&cpu->status_ip), 0, memory_order_relaxed);
            atomic_store_explicit(A64(&cpu->status_sp), 0, memory_order_relaxed);
            atomic_store_explicit(A32(&cpu->check_stop), 0, memory_order_relaxed);
        }
        return cc(0, 0);
    }
    default:
        return cc(1, CHP_STATUS_INVALID_ORDER);
    }
}
