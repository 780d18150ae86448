// The SIGP mechanism: control blocks, the mailbox, wake-up delivery, the signal handler, stopping "wherever it
// is" (outside the runtime's lock sections: see chp_nostop_enter in CHotplug.h), and the CPU-side safe point,
// poll, idle and offline park. Which condition code and status an order answers, and which bits it posts, is the
// S/390 order policy in sigp_orders.c; the helpers both files use (ticket, post, status store) are inline in
// internal.h.
//
// Memory-ordering map, for sigp.c, sigp_orders.c and internal.h (every pair names its partner):
// - P1 mailbox: senders post with a release RMW (chp_post, or an order's CAS in chp_sigp_post); the CPU takes
//   bits with an acquire RMW (safe point) or reads with an acquire load (poll, handler). Data published with a bit
//   (ext_param, emergency_count) is written before the release RMW and read after the acquire.
// - P2 delivery class: it lives in the mailbox word, so the sender's posting RMW reads it atomically (no Dekker
//   pair). The CPU enters POLLING / IDLE with a CAS that fails if an order is pending, and leaves them for RUNNING
//   in the RMW that takes its orders; the idle futex_wait compares the whole word, so any post wakes it.
// - P3 sig_seq / sig_ack: the sender takes its ticket (relaxed fetch_add of sig_seq) BEFORE its release RMW of the
//   mailbox. A safe point first takes the mailbox bits (acquire RMW, P1: it then sees the ticket of every bit it
//   took), then loads sig_seq and publishes it as sig_ack with a release RMW, partner of the sender's acquire load
//   while waiting. So a CPU that took a sender's bits at a safe point has acknowledged that sender's ticket, even
//   if it blocks the signal right after. The handler acknowledges whatever sig_seq holds when it runs (tgkill
//   follows the ticket).
// - P4 lifecycle: the controller's release store (chp_cpu_set_lifecycle), partner of the acquire loads
//   (chp_load_lifecycle) in chp_cpu_park_offline, at the CPU's safe points (chp_cpu_lifecycle) and in
//   chp_sigp_post's START of a parked CPU.
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

// Iterations of the acknowledgement spin between two looks at the clock and the target's run state.
#define CHP_ACK_CHECK_EVERY 64u
// Iterations of the acknowledgement spin before the sender starts giving way with sched_yield (oversubscription).
#define CHP_ACK_SPIN_BUDGET 4096u
// Iterations of the poll loop between two looks at the clock.
#define CHP_POLL_CHECK_EVERY 64u

// The logical CPU bound to this thread, for the signal handler. Initial-exec TLS: the access is a plain load from
// the thread pointer, never a call into the dynamic loader, so it is async-signal-safe.
static __thread chp_cpu_t *chp_self __attribute__((tls_model("initial-exec")));
__thread uint64_t chp_self_machine __attribute__((tls_model("initial-exec")));
__thread intptr_t chp_self_logical __attribute__((tls_model("initial-exec"))) = -1;
__thread uint32_t chp_nostop_depth __attribute__((tls_model("initial-exec")));
__thread volatile uint32_t chp_nostop_deferred __attribute__((tls_model("initial-exec")));

static _Atomic int chp_installed_signal;
static _Atomic int chp_install_refs;
// Threads bound as logical CPUs (chp_cpu_bind_self .. chp_cpu_unbind_self), under the install lock. The handler
// stays installed while any is bound, even after the last machine dropped its reference: a CPU thread that shutdown
// left running (busy in a long cross-call or tasklet) may still have a SIGP signal pending, and the default action
// of a real-time signal kills the process.
static int chp_bound_threads;
static _Atomic int chp_install_lock;   // a tiny spin lock: installation is rare and never on a hot path

static void install_lock(void) {
    int expected = 0;
    // Acquire: partner of the release store in install_unlock.
    while (!atomic_compare_exchange_weak_explicit(&chp_install_lock, &expected, 1, memory_order_acquire,
                                                  memory_order_relaxed)) {
        expected = 0;
        sched_yield();
    }
}
static void install_unlock(void) { atomic_store_explicit(&chp_install_lock, 0, memory_order_release); }

// MARK: Control blocks

int chp_cpu_create(chp_cpu_t **cpu) {
    void *memory = NULL;
    int rc = posix_memalign(&memory, CHP_CACHE_LINE, sizeof(chp_cpu_t));
    if (rc != 0) return rc;
    memset(memory, 0, sizeof(chp_cpu_t));
    chp_cpu_t *created = memory;
    created->ext_source = -1;
    *cpu = created;
    return 0;
}

void chp_cpu_destroy(chp_cpu_t *cpu) { free(cpu); }

// MARK: Acknowledgement (P3)

static void acknowledge(chp_cpu_t *cpu) {
    // Acquire: P3 (orders this load after the caller's mailbox RMW; the tickets it covers were taken before the
    // posts that the caller took).
    uint64_t seq = atomic_load_explicit(A64(&cpu->sig_seq), memory_order_acquire);
    uint64_t ack = atomic_load_explicit(A64(&cpu->sig_ack), memory_order_relaxed);
    while (ack < seq) {
        // Release: partner of the sender's acquire load of sig_ack in chp_sigp_deliver.
        if (atomic_compare_exchange_weak_explicit(A64(&cpu->sig_ack), &ack, seq, memory_order_release,
                                                  memory_order_relaxed)) {
            break;
        }
    }
}

// Debugging only: a claimed CPU leaves its idle wait like an unclaimed one (chp_debug_set_ignore_claims).
static _Atomic bool chp_debug_ignore_claims = false;

// Replaces the delivery class (the CPU's own thread only). Returns the word it replaced.
static uint32_t set_class(chp_cpu_t *cpu, uint32_t cls) {
    uint32_t mb = atomic_load_explicit(A32(&cpu->mailbox), memory_order_relaxed);
    // Acq_rel: P1 (we may read orders posted meanwhile; senders read our class with their RMW).
    while (!atomic_compare_exchange_weak_explicit(A32(&cpu->mailbox), &mb, WITH_CLASS(mb, cls), memory_order_acq_rel,
                                                  memory_order_relaxed)) {
    }
    return mb;
}

// Consumes a pending STOP-class order (turning it into the STOPPED state). Returns the bits it consumed, 0 when
// none was pending.
static uint32_t consume_stop(chp_cpu_t *cpu) {
    uint32_t mb = atomic_load_explicit(A32(&cpu->mailbox), memory_order_acquire);
    for (;;) {
        if ((mb & CHP_MB_STOP) == 0) return 0;
        uint32_t next = (mb & ~(CHP_MB_STOP | CHP_MB_STOP_STORE)) | CHP_MB_STOPPED;
        // Acq_rel: P1 (taking the order) and publishing the STOPPED state to senders' acquire loads.
        if (atomic_compare_exchange_weak_explicit(A32(&cpu->mailbox), &mb, next, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            return mb & (CHP_MB_STOP | CHP_MB_STOP_STORE);
        }
    }
}

// Blocks the calling CPU while its mailbox holds STOPPED. Async-signal-safe (atomics and futex only).
static void stop_wait(chp_cpu_t *cpu) {
    uint32_t previous = atomic_load_explicit(A32(&cpu->run_state), memory_order_relaxed);
    chp_cpu_set_run_state(cpu, CHP_RUN_STOPPED);
    acknowledge(cpu);
    uint32_t mb;
    // Acquire: partner of the release CAS by START / RESTART that clears STOPPED.
    while ((mb = atomic_load_explicit(A32(&cpu->mailbox), memory_order_acquire)) & CHP_MB_STOPPED) {
        // Other orders change the mailbox and wake us spuriously; EINTR from foreign signals too: re-check.
        (void)chp_futex_wait(&cpu->mailbox, mb, -1);
    }
    chp_cpu_set_run_state(cpu, previous);
}

// MARK: The signal handler

static void sigp_handler(int signo, siginfo_t *info, void *context) {
    (void)signo;
    (void)info;
    int saved_errno = errno;
    chp_cpu_t *cpu = chp_self;
    if (cpu == NULL) {  // a stray signal on a thread that is no logical CPU: ignore it
        errno = saved_errno;
        return;
    }
    atomic_fetch_add_explicit(A64(&cpu->signals_received), 1, memory_order_relaxed);
    // Inside a runtime lock section (chp_nostop_enter): a thread stopped here would park holding the lock, and
    // every thread that needs it (a cross-call to another CPU, a hotplug operation, stop_machine) would wait for
    // its START. Leave the STOP pending and answer; the outermost chp_nostop_leave raises the signal again.
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (chp_nostop_depth != 0) {
        // Acquire: P1 (reads the order bits the sender posted before its signal).
        if (atomic_load_explicit(A32(&cpu->mailbox), memory_order_acquire) & CHP_MB_STOP) chp_nostop_deferred = 1;
        acknowledge(cpu);
        errno = saved_errno;
        return;
    }
    uint32_t consumed = consume_stop(cpu);
    if (consumed != 0) {
        // Stop wherever it is: record the interrupted instruction and stack pointer from the ucontext.
        ucontext_t *uc = context;
        uint64_t ip = 0, sp = 0;
#if defined(__x86_64__)
        ip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
        sp = (uint64_t)uc->uc_mcontext.gregs[REG_RSP];
#elif defined(__aarch64__)
        ip = (uint64_t)uc->uc_mcontext.pc;
        sp = (uint64_t)uc->uc_mcontext.sp;
#else
        (void)uc;
        ip = (uint64_t)(uintptr_t)__builtin_return_address(0);
        sp = (uint64_t)(uintptr_t)__builtin_frame_address(0);
#endif
        atomic_store_explicit(A64(&cpu->stop_ip), ip, memory_order_relaxed);
        atomic_store_explicit(A64(&cpu->stop_sp), sp, memory_order_relaxed);
        if (consumed & CHP_MB_STOP_STORE) chp_store_status(cpu);
        atomic_fetch_add_explicit(A64(&cpu->stops_in_handler), 1, memory_order_relaxed);
        stop_wait(cpu);   // acknowledges before blocking
    } else {
        acknowledge(cpu);
    }
    errno = saved_errno;
}

static bool signal_can_carry_sigp(int signo) {
    if (signo <= 0 || signo >= NSIG) return false;
    switch (signo) {
    case SIGKILL: case SIGSTOP: case SIGSEGV: case SIGBUS: case SIGFPE: case SIGILL: case SIGTRAP: case SIGABRT:
    case SIGCHLD: case SIGCONT: case SIGTSTP: case SIGTTIN: case SIGTTOU: case SIGPIPE:
        return false;
    default:
        return true;
    }
}

static bool has_application_handler(const struct sigaction *sa) {
    if (sa->sa_flags & SA_SIGINFO) return sa->sa_sigaction != NULL;
    return sa->sa_handler != SIG_DFL && sa->sa_handler != SIG_IGN;
}

int chp_sigp_install(int signo) {
    if (!signal_can_carry_sigp(signo)) return EINVAL;
    install_lock();
    int current = atomic_load_explicit(&chp_installed_signal, memory_order_relaxed);
    if (current == signo) {
        atomic_fetch_add_explicit(&chp_install_refs, 1, memory_order_relaxed);
        install_unlock();
        return 0;
    }
    struct sigaction old;
    if (sigaction(signo, NULL, &old) != 0) { int e = errno; install_unlock(); return e; }
    if (has_application_handler(&old)) { install_unlock(); return EBUSY; }
    if (current != 0) { install_unlock(); return EEXIST; }   // SIGP already rides on another signal
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = sigp_handler;
    // SA_RESTART: the application's system calls on a logical CPU restart transparently after the handler.
    // The handler's own signal is blocked while it runs (no SA_NODEFER), so a stopped handler takes no nested
    // SIGP; START wakes it with futex.
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(signo, &sa, NULL) != 0) { int e = errno; install_unlock(); return e; }
    atomic_store_explicit(&chp_installed_signal, signo, memory_order_relaxed);
    atomic_store_explicit(&chp_install_refs, 1, memory_order_relaxed);
    install_unlock();
    return 0;
}

// Restores the default disposition once no machine references the signal and no logical CPU thread is left.
// Caller holds the install lock.
static int restore_default_if_unused(void) {
    int signo = atomic_load_explicit(&chp_installed_signal, memory_order_relaxed);
    if (signo == 0 || atomic_load_explicit(&chp_install_refs, memory_order_relaxed) != 0 || chp_bound_threads != 0) {
        return 0;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    int rc = sigaction(signo, &sa, NULL) == 0 ? 0 : errno;
    atomic_store_explicit(&chp_installed_signal, 0, memory_order_relaxed);
    return rc;
}

int chp_sigp_uninstall(int signo) {
    install_lock();
    int current = atomic_load_explicit(&chp_installed_signal, memory_order_relaxed);
    if (current != signo || current == 0 || atomic_load_explicit(&chp_install_refs, memory_order_relaxed) == 0) {
        install_unlock();
        return EINVAL;
    }
    atomic_fetch_sub_explicit(&chp_install_refs, 1, memory_order_relaxed);
    int rc = restore_default_if_unused();   // else the last thread to unbind restores it
    install_unlock();
    return rc;
}

int chp_sigp_signal(void) { return atomic_load_explicit(&chp_installed_signal, memory_order_relaxed); }
int chp_sigrtmin(void) { return SIGRTMIN; }
int chp_sigrtmax(void) { return SIGRTMAX; }

// MARK: Runtime lock sections

void chp_nostop_resume_stop(void) {
    chp_nostop_deferred = 0;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    chp_cpu_t *cpu = chp_self;
    int signo = chp_sigp_signal();
    if (cpu == NULL || signo == 0) return;
    // The handler stops the thread right after tgkill returns (signal unblocked), or when the thread unblocks it;
    // a STOP taken meanwhile at a safe point, or absorbed by going offline, makes it a plain acknowledgement.
    pid_t tid = (pid_t)atomic_load_explicit(AI32(&cpu->tid), memory_order_relaxed);   // our own: no pairing
    if (syscall(SYS_tgkill, getpid(), tid, signo) == 0) {
        atomic_fetch_add_explicit(A64(&cpu->signals_sent), 1, memory_order_relaxed);
    }
}

// MARK: Binding a thread, blocking the signal

int chp_sigp_block(bool block) {
    int signo = chp_sigp_signal();
    if (signo == 0) return EINVAL;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    return pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

bool chp_sigp_is_blocked(void) {
    int signo = chp_sigp_signal();
    if (signo == 0) return false;
    sigset_t set;
    sigemptyset(&set);
    if (pthread_sigmask(SIG_BLOCK, NULL, &set) != 0) return false;
    return sigismember(&set, signo) == 1;
}

int chp_cpu_bind_self(chp_cpu_t *cpu) {
    atomic_store_explicit(AI32(&cpu->tid), (int32_t)chp_gettid(), memory_order_release);
    install_lock();
    chp_bound_threads++;
    install_unlock();
    chp_self = cpu;
    return chp_sigp_block(false);
}

void chp_cpu_set_self_identity(uint64_t machine, intptr_t logical) {
    chp_self_machine = machine;
    chp_self_logical = logical;
}

void chp_cpu_unbind_self(void) {
    (void)chp_sigp_block(true);
    bool bound = chp_self != NULL;
    chp_self = NULL;
    chp_self_machine = 0;
    chp_self_logical = -1;
    if (!bound) return;
    // The signal is blocked for good on this thread (a pending one dies with it): it no longer needs the handler.
    install_lock();
    chp_bound_threads--;
    (void)restore_default_if_unused();
    install_unlock();
}

// MARK: Posting internal bits

void chp_cpu_post_bits(chp_cpu_t *cpu, uint32_t bits, chp_delivery_t *delivery) {
    delivery->ticket = chp_take_ticket(cpu);
    delivery->seen = chp_post(cpu, bits);
}

void chp_cpu_wake_mailbox(chp_cpu_t *cpu) { chp_wake_mailbox(cpu); }

bool chp_cpu_post_and_wake_idle(chp_cpu_t *cpu, uint32_t bits) {
    uint32_t seen = chp_post(cpu, bits);   // release: P1; the returned word holds the class at the post (P2)
    // A claimed CPU is woken by the claim's release; waking it now would only send it back to sleep.
    bool claimed = (seen & CHP_MB_CLAIMED) && !atomic_load_explicit(&chp_debug_ignore_claims, memory_order_relaxed);
    if ((seen & CHP_MB_STOPPED) || claimed || CLASS_OF(seen) != CHP_CLASS_IDLE) return false;
    atomic_fetch_add_explicit(A64(&cpu->futex_wakes), 1, memory_order_relaxed);
    chp_wake_mailbox(cpu);
    return true;
}

uint32_t chp_cpu_retract_bits(chp_cpu_t *cpu, uint32_t bits) {
    uint32_t old = atomic_fetch_and_explicit(A32(&cpu->mailbox), ~bits, memory_order_acq_rel);
    return old & bits;
}

// MARK: Delivery

int chp_sigp_deliver(chp_cpu_t *cpu, const chp_delivery_t *delivery, int64_t resend_ns, int64_t timeout_ns) {
    uint64_t ticket = delivery->ticket;
    uint32_t seen = delivery->seen;
    if (ticket == 0 || (seen & CHP_MB_STOPPED)) return 0;   // nothing to deliver, or stopped: it stays pending
    if (cpu == chp_self) {
        // To itself: never wait for its own acknowledgement. Unblocked, the signal is handled on the way out of
        // tgkill (a STOP stops it right here); blocked (a stop_machine body, a CPU draining its calls on the way
        // offline), the order stays pending for its next safe point.
        int self_signo = chp_sigp_signal();
        if (self_signo != 0 && CLASS_OF(seen) == CHP_CLASS_RUNNING) {
            pid_t self_tid = (pid_t)atomic_load_explicit(AI32(&cpu->tid), memory_order_relaxed);
            if (syscall(SYS_tgkill, getpid(), self_tid, self_signo) == 0) {
                atomic_fetch_add_explicit(A64(&cpu->signals_sent), 1, memory_order_relaxed);
            }
        }
        return 0;
    }
    switch (CLASS_OF(seen)) {
    case CHP_CLASS_IDLE:
        if (seen & CHP_MB_CLAIMED) return 0;   // the claim's release wakes it
        atomic_fetch_add_explicit(A64(&cpu->futex_wakes), 1, memory_order_relaxed);
        chp_wake_mailbox(cpu);
        return 0;
    case CHP_CLASS_RUNNING:
        break;
    default:   // POLLING sees the post itself; QUIET takes it when it runs again
        return 0;
    }
    int signo = chp_sigp_signal();
    if (signo == 0) return EINVAL;
    pid_t tid = (pid_t)atomic_load_explicit(AI32(&cpu->tid), memory_order_acquire);
    int64_t start = chp_monotonic_ns();
    int64_t last_send = start;
    if (syscall(SYS_tgkill, getpid(), tid, signo) != 0) {
        if (errno != EAGAIN) return errno;   // EAGAIN: the signal queue is full; the resend below retries
    } else {
        atomic_fetch_add_explicit(A64(&cpu->signals_sent), 1, memory_order_relaxed);
    }
    uint32_t spins = 0;
    uint32_t resent = 0;
    // Acquire: P3, partner of the acknowledger's release CAS of sig_ack.
    while (atomic_load_explicit(A64(&cpu->sig_ack), memory_order_acquire) < ticket) {
        spins++;
        if (spins < CHP_ACK_SPIN_BUDGET) chp_cpu_relax();
        else sched_yield();   // give way: the target may need this core (oversubscription)
        if (spins % CHP_ACK_CHECK_EVERY != 0) continue;
        uint32_t mb = atomic_load_explicit(A32(&cpu->mailbox), memory_order_acquire);
        // Stopped or parked offline since: the order stays pending (accepted), as for a stopped CPU.
        if ((mb & CHP_MB_STOPPED) || CLASS_OF(mb) == CHP_CLASS_QUIET) return 0;
        int64_t now = chp_monotonic_ns();
        // POLLING / IDLE now: it passed a safe point (or will before it waits), which acknowledges; keep waiting.
        // The resend comes before the timeout check, so a CPU is only reported after at least one resend, even
        // when this sender was descheduled for the whole bound.
        if (CLASS_OF(mb) == CHP_CLASS_RUNNING && now - last_send >= resend_ns) {
            // Lost, or blocked by the thread's signal mask: send it again (a blocked one stays pending).
            if (syscall(SYS_tgkill, getpid(), tid, signo) == 0) {
                atomic_fetch_add_explicit(A64(&cpu->resends), 1, memory_order_relaxed);
                atomic_fetch_add_explicit(A64(&cpu->signals_sent), 1, memory_order_relaxed);
            } else if (errno != EAGAIN) {
                return errno;
            }
            last_send = now;
            resent++;
        }
        // Past the bound, and resent at least once (or twice the bound: it was never running code meanwhile).
        if (now - start >= timeout_ns && (resent > 0 || now - start >= 2 * timeout_ns)) {
            atomic_store_explicit(A32(&cpu->check_stop), 1, memory_order_relaxed);
            return ETIMEDOUT;
        }
    }
    return 0;
}

// MARK: The CPU's own side

void chp_cpu_set_run_state(chp_cpu_t *cpu, uint32_t state) {
    // Release: partner of the acquire loads by readers (introspection, SENSE_RUNNING, COND_EMERGENCY_SIGNAL).
    atomic_store_explicit(A32(&cpu->run_state), state, memory_order_release);
}

uint32_t chp_cpu_run_state(const chp_cpu_t *cpu) { return chp_load_run_state(cpu); }

uint32_t chp_cpu_mailbox(const chp_cpu_t *cpu) {
    return atomic_load_explicit((_Atomic uint32_t *)&cpu->mailbox, memory_order_acquire);
}

// The CPU answers (safe point, wait state): it is not check-stopped. Written only when set, to keep the line clean
// on the hot path.
static void clear_check_stop(chp_cpu_t *cpu) {
    if (atomic_load_explicit(A32(&cpu->check_stop), memory_order_relaxed)) {
        atomic_store_explicit(A32(&cpu->check_stop), 0, memory_order_relaxed);
    }
}

uint32_t chp_cpu_safe_point(chp_cpu_t *cpu) {
    clear_check_stop(cpu);
    uint32_t take = CHP_MB_RESTART | CHP_MB_EXTERNAL_CALL | CHP_MB_EMERGENCY | CHP_MB_CALL | CHP_MB_LIFECYCLE |
                    CHP_MB_TASKLET | CHP_MB_JOB;
    uint32_t old = atomic_load_explicit(A32(&cpu->mailbox), memory_order_relaxed);
    uint32_t next;
    do {
        next = WITH_CLASS(old & ~take, CHP_CLASS_RUNNING);
        if (next == old) break;   // nothing to take, already RUNNING: no write on the hot path
        // Acquire: P1, partner of the senders' release RMWs (and P3: their tickets are then visible). P2: a post
        // after this RMW reads RUNNING and signals; one before it is taken here.
    } while (!atomic_compare_exchange_weak_explicit(A32(&cpu->mailbox), &old, next, memory_order_acquire,
                                                    memory_order_relaxed));
    if (next == old) atomic_thread_fence(memory_order_acquire);
    chp_cpu_set_run_state(cpu, CHP_RUN_RUNNING);
    acknowledge(cpu);   // after taking the bits: covers the tickets of everything taken (P3)
    return old & (take | CHP_MB_STOP | CHP_MB_STOP_STORE);
}

bool chp_cpu_take_external_call(chp_cpu_t *cpu, uint32_t *param, int32_t *source) {
    if (atomic_load_explicit(A32(&cpu->ext_claim), memory_order_acquire) == 0) return false;
    *param = atomic_load_explicit(A32(&cpu->ext_param), memory_order_relaxed);
    *source = atomic_load_explicit(AI32(&cpu->ext_source), memory_order_relaxed);
    // Release: partner of the next sender's acquire CAS of ext_claim (it may overwrite the parameter now).
    atomic_store_explicit(A32(&cpu->ext_claim), 0, memory_order_release);
    return true;
}

uint32_t chp_cpu_take_emergency(chp_cpu_t *cpu) {
    return atomic_exchange_explicit(A32(&cpu->emergency_count), 0, memory_order_acquire);
}

__attribute__((noinline)) bool chp_cpu_stop_here(chp_cpu_t *cpu) {
    uint32_t consumed = consume_stop(cpu);
    if (consumed == 0) return false;
    atomic_store_explicit(A64(&cpu->stop_ip), (uint64_t)(uintptr_t)__builtin_return_address(0),
                          memory_order_relaxed);
    atomic_store_explicit(A64(&cpu->stop_sp), (uint64_t)(uintptr_t)__builtin_frame_address(0),
                          memory_order_relaxed);
    if (consumed & CHP_MB_STOP_STORE) chp_store_status(cpu);
    atomic_fetch_add_explicit(A64(&cpu->stops_at_safe_point), 1, memory_order_relaxed);
    stop_wait(cpu);
    return true;
}

void chp_cpu_wait_for_orders(chp_cpu_t *cpu, int64_t poll_ns) {
    clear_check_stop(cpu);
    uint32_t mb = atomic_load_explicit(A32(&cpu->mailbox), memory_order_acquire);
    // Enter POLLING unless an order is pending (P2: the CAS fails if one is posted meanwhile).
    do {
        if (mb & CHP_MB_ORDERS) return;
    } while (!atomic_compare_exchange_weak_explicit(A32(&cpu->mailbox), &mb, WITH_CLASS(mb, CHP_CLASS_POLLING),
                                                    memory_order_acq_rel, memory_order_acquire));
    chp_cpu_set_run_state(cpu, CHP_RUN_POLLING);
    if (poll_ns > 0) {
        int64_t deadline = chp_monotonic_ns() + poll_ns;
        for (uint32_t i = 1;; i++) {
            // Acquire: P1.
            if (atomic_load_explicit(A32(&cpu->mailbox), memory_order_acquire) & CHP_MB_ORDERS) {
                chp_cpu_set_run_state(cpu, CHP_RUN_RUNNING);
                return;
            }
            chp_cpu_relax();
            if (i % CHP_POLL_CHECK_EVERY == 0 && chp_monotonic_ns() >= deadline) break;
        }
    }
    // POLLING -> IDLE, unless an order arrived (P2).
    mb = atomic_load_explicit(A32(&cpu->mailbox), memory_order_acquire);
    uint32_t idle;
    do {
        if (mb & CHP_MB_ORDERS) {
            chp_cpu_set_run_state(cpu, CHP_RUN_RUNNING);
            return;
        }
        idle = WITH_CLASS(mb, CHP_CLASS_IDLE);
    } while (!atomic_compare_exchange_weak_explicit(A32(&cpu->mailbox), &mb, idle, memory_order_acq_rel,
                                                    memory_order_acquire));
    chp_cpu_set_run_state(cpu, CHP_RUN_IDLE);
    // Relaxed: one writer (this thread), readers want a figure, not an order (the clock read is a system call's
    // worth only next to the futex wait it precedes).
    int64_t parked_total = atomic_load_explicit(AI64(&cpu->idle_mark), memory_order_relaxed);
    atomic_store_explicit(AI64(&cpu->idle_mark), parked_total - chp_monotonic_ns(), memory_order_relaxed);
    // The kernel compares the whole word: any post since the CAS changed it, and futex_wait returns EAGAIN.
    // Acquire: P1, and partner of chp_cpu_release_claim's release (a claimed CPU leaves only after the release,
    // seeing everything the stop_machine body wrote).
    while (((mb = atomic_load_explicit(A32(&cpu->mailbox), memory_order_acquire)) & CHP_MB_ORDERS) == 0 ||
           ((mb & CHP_MB_CLAIMED) && !atomic_load_explicit(&chp_debug_ignore_claims, memory_order_relaxed))) {
        (void)chp_futex_wait(&cpu->mailbox, mb, -1);   // EINTR / EAGAIN / spurious: re-check
    }
    int64_t mark = atomic_load_explicit(AI64(&cpu->idle_mark), memory_order_relaxed);
    atomic_store_explicit(AI64(&cpu->idle_mark), mark + chp_monotonic_ns(), memory_order_relaxed);
    chp_cpu_set_run_state(cpu, CHP_RUN_RUNNING);
}

int64_t chp_cpu_idle_ns(const chp_cpu_t *cpu) {
    int64_t mark = atomic_load_explicit(AI64(&((chp_cpu_t *)cpu)->idle_mark), memory_order_relaxed);
    return mark < 0 ? mark + chp_monotonic_ns() : mark;
}

void chp_debug_set_ignore_claims(bool ignore) {
    atomic_store_explicit(&chp_debug_ignore_claims, ignore, memory_order_relaxed);
}

bool chp_cpu_claim_idle(chp_cpu_t *cpu) {
    uint32_t mb = atomic_load_explicit(A32(&cpu->mailbox), memory_order_acquire);
    for (;;) {
        // Only a CPU parked in its idle wait with nothing to do: it is at a safe point, holds no lock and runs
        // nothing; an order already posted means it is (or will be) on its way out, so it must take part.
        if (CLASS_OF(mb) != CHP_CLASS_IDLE || (mb & (CHP_MB_ORDERS | CHP_MB_STOPPED | CHP_MB_CLAIMED))) return false;
        // Acq_rel: acquire pairs with the CPU's release CAS that entered IDLE (its earlier writes are visible).
        if (atomic_compare_exchange_weak_explicit(A32(&cpu->mailbox), &mb, mb | CHP_MB_CLAIMED,
                                                  memory_order_acq_rel, memory_order_acquire)) {
            return true;
        }
    }
}

void chp_cpu_release_claim(chp_cpu_t *cpu) {
    // Release: partner of the idle wait's acquire load.
    uint32_t old = atomic_fetch_and_explicit(A32(&cpu->mailbox), ~(uint32_t)CHP_MB_CLAIMED, memory_order_acq_rel);
    if (old & CHP_MB_ORDERS) {
        atomic_fetch_add_explicit(A64(&cpu->futex_wakes), 1, memory_order_relaxed);
        chp_wake_mailbox(cpu);
    }
}

__attribute__((noinline)) void chp_cpu_absorb_stop(chp_cpu_t *cpu) {
    // Acq_rel: P1 (we take the order out).
    uint32_t old = atomic_fetch_and_explicit(A32(&cpu->mailbox), ~(uint32_t)(CHP_MB_STOP | CHP_MB_STOP_STORE),
                                             memory_order_acq_rel);
    if (old & CHP_MB_STOP_STORE) {
        atomic_store_explicit(A64(&cpu->stop_ip), (uint64_t)(uintptr_t)__builtin_return_address(0),
                              memory_order_relaxed);
        atomic_store_explicit(A64(&cpu->stop_sp), (uint64_t)(uintptr_t)__builtin_frame_address(0),
                              memory_order_relaxed);
        chp_store_status(cpu);
    }
}

void chp_cpu_prepare(chp_cpu_t *cpu) {
    atomic_store_explicit(A32(&cpu->mailbox), 0, memory_order_relaxed);
    atomic_store_explicit(A32(&cpu->emergency_count), 0, memory_order_relaxed);
    atomic_store_explicit(A32(&cpu->ext_claim), 0, memory_order_relaxed);
    atomic_store_explicit(A32(&cpu->status_stored), 0, memory_order_relaxed);
    atomic_store_explicit(A32(&cpu->check_stop), 0, memory_order_relaxed);
    atomic_store_explicit(AI32(&cpu->tid), 0, memory_order_relaxed);
    atomic_store_explicit(A64(&cpu->stop_ip), 0, memory_order_relaxed);
    atomic_store_explicit(A64(&cpu->stop_sp), 0, memory_order_relaxed);
    // Release: publishes the cleared block to the thread created next (pthread_create also orders it).
    atomic_store_explicit(A32(&cpu->lifecycle), CHP_LIFE_PARKED, memory_order_release);
}

static void enter_offline(chp_cpu_t *cpu, uint64_t ip, uint64_t sp) {
    atomic_store_explicit(A64(&cpu->stop_ip), ip, memory_order_relaxed);
    atomic_store_explicit(A64(&cpu->stop_sp), sp, memory_order_relaxed);
    (void)set_class(cpu, CHP_CLASS_QUIET);   // release (acq_rel CAS): publishes the stop site with the class
    chp_cpu_set_run_state(cpu, CHP_RUN_OFFLINE);
}

__attribute__((noinline)) void chp_cpu_enter_offline(chp_cpu_t *cpu) {
    enter_offline(cpu, (uint64_t)(uintptr_t)__builtin_return_address(0),
                  (uint64_t)(uintptr_t)__builtin_frame_address(0));
}

__attribute__((noinline)) uint32_t chp_cpu_park_offline(chp_cpu_t *cpu) {
    enter_offline(cpu, (uint64_t)(uintptr_t)__builtin_return_address(0),
                  (uint64_t)(uintptr_t)__builtin_frame_address(0));
    acknowledge(cpu);
    uint32_t life;
    // Acquire: P4, partner of the controller's release store in chp_cpu_set_lifecycle.
    while ((life = atomic_load_explicit(A32(&cpu->lifecycle), memory_order_acquire)) == CHP_LIFE_PARKED ||
           life == CHP_LIFE_OFFLINE) {
        (void)chp_futex_wait(&cpu->lifecycle, life, -1);   // EINTR / EAGAIN / spurious: re-check
    }
    (void)set_class(cpu, life == CHP_LIFE_EXIT ? CHP_CLASS_QUIET : CHP_CLASS_RUNNING);
    chp_cpu_set_run_state(cpu, CHP_RUN_RUNNING);
    return life;
}

void chp_cpu_set_lifecycle(chp_cpu_t *cpu, uint32_t lifecycle) {
    // Release: P4.
    atomic_store_explicit(A32(&cpu->lifecycle), lifecycle, memory_order_release);
}

uint32_t chp_cpu_lifecycle(const chp_cpu_t *cpu) { return chp_load_lifecycle(cpu); }

void chp_cpu_wake_lifecycle(chp_cpu_t *cpu) { chp_futex_wake_all(&cpu->lifecycle); }

// MARK: Readers

pid_t chp_cpu_tid(const chp_cpu_t *cpu) {
    return (pid_t)atomic_load_explicit((_Atomic int32_t *)&cpu->tid, memory_order_acquire);
}

bool chp_cpu_stored_status(const chp_cpu_t *cpu, uint64_t *ip, uint64_t *sp) {
    // Acquire: partner of the release store in chp_store_status.
    if (atomic_load_explicit((_Atomic uint32_t *)&cpu->status_stored, memory_order_acquire) == 0) return false;
    *ip = atomic_load_explicit((_Atomic uint64_t *)&cpu->status_ip, memory_order_relaxed);
    *sp = atomic_load_explicit((_Atomic uint64_t *)&cpu->status_sp, memory_order_relaxed);
    return true;
}

void chp_cpu_statistics(const chp_cpu_t *cpu, chp_cpu_stats_t *out) {
#define LOAD(field) atomic_load_explicit((_Atomic uint64_t *)&cpu->field, memory_order_relaxed)
    out->signals_sent = LOAD(signals_sent);
    out->signals_received = LOAD(signals_received);
    out->futex_wakes = LOAD(futex_wakes);
    out->resends = LOAD(resends);
    out->stops_in_handler = LOAD(stops_in_handler);
    out->stops_at_safe_point = LOAD(stops_at_safe_point);
#undef LOAD
}
