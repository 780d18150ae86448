// CHotplug: the C shim of swift-hotplug.
//
// C does only what Swift cannot do safely: the signal handler (and everything it touches), futex parking,
// thread affinity and the spinning barrier. Everything else lives in Swift, and only one internal Swift layer
// (Sources/Hotplug/Shim) calls these functions.
//
// House rules (docs/ARCHITECTURE.md, "House rules"):
// - every exported symbol is prefixed `chp_`; no macros are exported (they become functions); what only the .c
//   files share lives in internal.h, outside include/;
// - a function that can fail returns 0 or an errno value and hands its results back through out-parameters; no
//   function sets errno for its caller (Swift would read it after its own allocations may have changed it);
//   each prototype's comment says which errno values it returns, or "Cannot fail";
// - C never exits or aborts: Swift decides;
// - shared state and per-thread state are separate structs; shared hot fields are cache-line padded;
// - every atomic names its memory order, and every acquire/release pair names its partner.
#ifndef CHOTPLUG_H
#define CHOTPLUG_H

#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CHP_CACHE_LINE 64

// ---------------------------------------------------------------------------------------------------------------
// MARK: Thread identity, CPU time
// ---------------------------------------------------------------------------------------------------------------

/// The calling thread's kernel thread id (gettid). Cannot fail.
pid_t chp_gettid(void);
/// Names the calling thread (prctl PR_SET_NAME: the kernel keeps 15 bytes). 0, or an errno value.
int chp_thread_set_name(const char *name);

/// Stores in `*ns` the CPU time consumed so far by the thread `tid` of this process, in nanoseconds.
/// Returns 0, or an errno value: EINVAL when `tid` is not positive or no such thread exists (the kernel rejects
/// its clock id).
int chp_thread_cputime_ns(pid_t tid, int64_t *ns);

/// CLOCK_MONOTONIC in nanoseconds. Cannot fail.
int64_t chp_monotonic_ns(void);

// ---------------------------------------------------------------------------------------------------------------
// MARK: Affinity
// ---------------------------------------------------------------------------------------------------------------

// CPU ids are 0 ..< 8192 (NR_CPUS of the largest x86-64 kernels); masks are read and written at that size.

/// Writes the CPU ids of thread `tid`'s affinity mask (0: the calling thread) into `cpus`, ascending, at most
/// `capacity` of them, and stores in `*count` the number of CPUs in the mask (more than `capacity`: only the first
/// `capacity` were written; call again with a larger buffer).
/// Returns 0, or an errno value: ESRCH (no such thread), ENOMEM.
int chp_affinity_get(pid_t tid, int *cpus, int capacity, int *count);

/// Pins thread `tid` (0: the calling thread) to exactly the physical CPU `cpu`.
/// Returns 0, or an errno value: EINVAL (`cpu` out of range, or not a CPU this process may use), ESRCH (no such
/// thread), EPERM, ENOMEM.
int chp_affinity_pin(pid_t tid, int cpu);

/// Sets thread `tid`'s (0: the calling thread) affinity to the `count` CPUs in `cpus`.
/// Returns 0, or an errno value: EINVAL (an id out of range, or no usable CPU among them), ESRCH (no such
/// thread), EPERM, ENOMEM.
int chp_affinity_set(pid_t tid, const int *cpus, int count);

/// Stores in `*cpu` the physical CPU the caller is running on right now (sched_getcpu).
/// Returns 0, or an errno value: ENOSYS where the kernel cannot say.
int chp_current_cpu(int *cpu);

// ---------------------------------------------------------------------------------------------------------------
// MARK: One-shot event (a futex word with spin-then-park waiting)
// ---------------------------------------------------------------------------------------------------------------

/// A one-shot completion: one side sets it, any number wait for it. Zero-initialised memory is "not set".
typedef struct chp_event {
    uint32_t word;      // 0 not set, 1 set; futex word
    uint32_t waiters;   // count of threads parked (or about to park) on `word`
} chp_event_t;

/// Resets the event to "not set". Only when nobody waits. Cannot fail.
void chp_event_reset(chp_event_t *event);
/// Sets the event (release: pairs with the acquire in chp_event_wait/chp_event_is_set) and wakes all waiters.
/// Cannot fail.
void chp_event_set(chp_event_t *event);
/// True once set (acquire). Cannot fail.
bool chp_event_is_set(const chp_event_t *event);
/// Spins `spin_budget` pause iterations, then parks, until set or until `timeout_ns` passed (negative: no bound).
/// Returns 0 when set, or ETIMEDOUT.
int chp_event_wait(chp_event_t *event, uint32_t spin_budget, int64_t timeout_ns);

// ---------------------------------------------------------------------------------------------------------------
// MARK: Barrier (sense-reversing, centralized, spin-then-park)
// ---------------------------------------------------------------------------------------------------------------
//
// The shared part (`chp_barrier_t`) holds the arrival counter and the global sense on separate cache lines; each
// participant owns a `chp_barrier_state_t` with its local sense (Concurrency Kit's split). An episode: every
// participant increments the counter (acq_rel); the last one resets the counter and flips the global sense
// (release); the others spin on the sense (acquire) for a bounded budget with a pause hint each iteration, then
// park on it with futex, so oversubscribed runs never livelock. The last arriver wakes the parked ones only when
// some registered as waiters (a Dekker pair of seq_cst fences makes that check race-free).
//
// The participant count is read at each arrival; change it only between episodes (when nobody is inside).

typedef struct chp_barrier {
    _Alignas(CHP_CACHE_LINE) uint32_t arrived;       // arrivals in the current episode
    char pad0[CHP_CACHE_LINE - sizeof(uint32_t)];
    _Alignas(CHP_CACHE_LINE) uint32_t sense;         // global sense; also the futex word
    uint32_t waiters;                                // participants parked (or about to park) on `sense`
    char pad1[CHP_CACHE_LINE - 2 * sizeof(uint32_t)];
    _Alignas(CHP_CACHE_LINE) uint32_t participants;  // set between episodes
    char pad2[CHP_CACHE_LINE - sizeof(uint32_t)];
} chp_barrier_t;

typedef struct chp_barrier_state {
    uint32_t sense;     // this participant's local sense
} chp_barrier_state_t;

/// Allocates a cache-line aligned barrier for `participants` (>= 1) threads, initialised, into `*barrier`.
/// Returns 0, or an errno value: EINVAL (0 participants), ENOMEM.
int chp_barrier_create(uint32_t participants, chp_barrier_t **barrier);
/// Frees a barrier from chp_barrier_create. Cannot fail.
void chp_barrier_destroy(chp_barrier_t *barrier);
/// Initialises one participant's state to the barrier's current sense (so participants may join between
/// episodes). Cannot fail.
void chp_barrier_state_init(const chp_barrier_t *barrier, chp_barrier_state_t *state);
/// Changes the participant count for the next episodes; call only while no episode is in progress.
/// Returns 0, or EINVAL for 0 participants.
int chp_barrier_set_participants(chp_barrier_t *barrier, uint32_t participants);
/// Waits until all participants have arrived. Spins `spin_budget` pause iterations before parking.
/// Returns true in exactly one participant per episode (the last to arrive), false in the others. Cannot fail.
bool chp_barrier_wait(chp_barrier_t *barrier, chp_barrier_state_t *state, uint32_t spin_budget);

// ---------------------------------------------------------------------------------------------------------------
// MARK: SIGP: the per-CPU control block and the signal layer
// ---------------------------------------------------------------------------------------------------------------
//
// Every logical CPU has one `chp_cpu_t`, allocated by Swift with chp_cpu_create, shared between senders (any
// thread), the CPU's own loop (Swift, at safe points) and the signal handler (C, on the CPU's thread).
//
// Delivery of an order:
//   1. the sender takes a signal ticket, then posts the order in `mailbox` with an RMW (the busy /
//      external-call-pending checks are in the same RMW); the RMW returns the word it replaced, whose delivery
//      class says how the CPU was waiting at that very instant;
//   2. the cheapest sufficient wake-up follows from that class: POLLING -> nothing (the CPU spins on the word);
//      IDLE -> futex wake on `mailbox`; QUIET or STOPPED -> nothing (the order stays pending until the CPU runs
//      again); RUNNING -> a real signal with tgkill, then the sender waits for the handler's (or the next safe
//      point's) acknowledgement (`sig_ack` >= its ticket), resending the signal every `resend_ns` while the CPU
//      still runs code, and gives up after `timeout_ns` (once it has resent at least once, or after twice
//      `timeout_ns`).
//   3. the signal handler (async-signal-safe: atomics, futex, nothing else) acknowledges, and when a STOP-class
//      order is pending stops right there, wherever the thread was, until START or RESTART.
//
// Everything else an order asks for (external call, emergency signal, restart, cross-calls) runs at the CPU's
// next safe point, in Swift.

/// Run states of a logical CPU's thread (`chp_cpu_t.run_state`): for introspection and for the orders that depend
/// on them (SENSE_RUNNING, COND_EMERGENCY_SIGNAL); delivery uses the class in the mailbox word.
enum {
    CHP_RUN_NONE = 0,      // no thread (standby)
    CHP_RUN_OFFLINE = 1,   // thread parked in the kernel by the lifecycle (configured, not online)
    CHP_RUN_RUNNING = 2,   // executing code: a signal is needed to interrupt it
    CHP_RUN_POLLING = 3,   // spinning on its mailbox: it will see any order without a wake-up
    CHP_RUN_IDLE = 4,      // parked in futex_wait on its mailbox (the wait state)
    CHP_RUN_STOPPED = 5,
};

/// Mailbox bits (`chp_cpu_t.mailbox`).
enum {
    CHP_MB_STOP = 1u << 0,            // STOP pending
    CHP_MB_STOP_STORE = 1u << 1,      // STOP_AND_STORE_STATUS pending (always with CHP_MB_STOP)
    CHP_MB_RESTART = 1u << 2,         // RESTART pending
    CHP_MB_EXTERNAL_CALL = 1u << 3,   // an external call is pending (only one may be)
    CHP_MB_EMERGENCY = 1u << 4,       // at least one emergency signal is pending (count in `emergency_count`)
    CHP_MB_CALL = 1u << 5,            // cross-calls are queued (Swift side)
    CHP_MB_LIFECYCLE = 1u << 6,       // the lifecycle asks for attention (offline / exit)
    CHP_MB_STOPPED = 1u << 7,         // state, not an order: the CPU is stopped (cleared by START / RESTART)
    CHP_MB_CLASS_SHIFT = 8,           // bits 8-9: the CPU's delivery class (CHP_CLASS_*), state, not an order
    CHP_MB_CLASS_MASK = 3u << 8,
    CHP_MB_TASKLET = 1u << 10,        // tasklets are queued (Swift side); needs no signal, only an idle wake
    CHP_MB_JOB = 1u << 11,            // executor jobs are queued (Swift side); needs no signal, only an idle wake
    CHP_MB_CLAIMED = 1u << 12,        // state, not an order: a stop_machine holds this idle CPU where it parks
    CHP_MB_ORDERS = CHP_MB_STOP | CHP_MB_STOP_STORE | CHP_MB_RESTART | CHP_MB_EXTERNAL_CALL | CHP_MB_EMERGENCY |
                    CHP_MB_CALL | CHP_MB_LIFECYCLE | CHP_MB_TASKLET | CHP_MB_JOB,
    CHP_MB_BUSY_MASK = CHP_MB_STOP | CHP_MB_RESTART,
    CHP_MB_ARCH_PENDING = CHP_MB_STOP | CHP_MB_STOP_STORE | CHP_MB_RESTART | CHP_MB_EXTERNAL_CALL | CHP_MB_EMERGENCY,
};

/// Delivery classes, kept in the mailbox word so that the RMW that posts an order also reads, atomically, how the
/// CPU must be woken; the CPU changes its class with RMWs on the same word, and leaves POLLING / IDLE for RUNNING
/// in the very RMW that takes its pending orders.
enum {
    CHP_CLASS_QUIET = 0,     // no thread, offline, or about to park offline: nothing to wake
    CHP_CLASS_RUNNING = 1,   // runs code: a signal is needed
    CHP_CLASS_POLLING = 2,   // spins on the mailbox: it sees the post
    CHP_CLASS_IDLE = 3,      // blocked in futex_wait on the mailbox: a futex wake
};

/// What a post tells the delivery: the signal ticket (0: nothing to deliver) and the mailbox word the post
/// replaced (its class and STOPPED bit at the instant of the post).
typedef struct chp_delivery {
    uint64_t ticket;
    uint32_t seen;
} chp_delivery_t;

/// Lifecycle words (`chp_cpu_t.lifecycle`), written by the controlling thread.
enum {
    CHP_LIFE_PARKED = 0,   // stay parked (offline)
    CHP_LIFE_ONLINE = 1,   // permitted to run (START wakes it)
    CHP_LIFE_OFFLINE = 2,  // go offline at the next safe point
    CHP_LIFE_EXIT = 3,     // leave the thread (deconfigure)
};

typedef struct chp_cpu {
    // Written by senders, read by the CPU: the mailbox is also the futex word of the idle wait.
    _Alignas(CHP_CACHE_LINE) uint32_t mailbox;
    uint32_t emergency_count;   // pending emergency signals
    uint32_t ext_param;         // parameter of the pending external call
    int32_t ext_source;         // source CPU of the pending external call (-1: not a logical CPU)
    uint32_t ext_claim;         // 1 from the moment a sender claims the external-call slot until the CPU took it
    uint32_t reserved0;
    uint64_t sig_seq;           // tickets of signals sent (fetch_add by senders)
    char pad0[CHP_CACHE_LINE - 6 * sizeof(uint32_t) - sizeof(uint64_t)];

    // Written by the CPU, read by senders.
    _Alignas(CHP_CACHE_LINE) uint32_t run_state;
    uint32_t reserved1;
    uint64_t sig_ack;           // highest ticket acknowledged by the handler or a safe point
    // Idle accounting, written only by the CPU when it parks in its idle wait and when it leaves it: while the CPU
    // is not parked, the nanoseconds it has spent parked so far (>= 0); while it is parked, that total minus the
    // CLOCK_MONOTONIC time it parked at (< 0: the clock is always ahead of the time spent parked since it began).
    // One word, so a reader never sees a total without its start (chp_cpu_idle_ns).
    int64_t idle_mark;
    char pad1[CHP_CACHE_LINE - 2 * sizeof(uint32_t) - 2 * sizeof(uint64_t)];

    // Lifecycle (controlling thread -> CPU); futex word of the offline park.
    _Alignas(CHP_CACHE_LINE) uint32_t lifecycle;
    int32_t tid;                // the CPU thread's kernel tid, 0 before it started
    uint32_t status_stored;     // 1 when the status area holds a STOP_AND_STORE_STATUS
    uint32_t check_stop;        // 1 when the CPU failed to answer a signal in time
    uint64_t stop_ip;           // instruction pointer where the CPU last stopped
    uint64_t stop_sp;           // stack pointer where the CPU last stopped
    uint64_t status_ip;         // status area: instruction pointer stored by STOP_AND_STORE_STATUS
    uint64_t status_sp;         // status area: stack pointer stored by STOP_AND_STORE_STATUS
    char pad2[CHP_CACHE_LINE - 4 * sizeof(uint32_t) - 4 * sizeof(uint64_t)];

    // Statistics (relaxed; only for reports and tests).
    _Alignas(CHP_CACHE_LINE) uint64_t signals_sent;      // tgkill calls made towards this CPU
    uint64_t signals_received;  // handler entries on this CPU
    uint64_t futex_wakes;       // futex wakes of the idle wait made towards this CPU
    uint64_t stops_in_handler;  // stops taken inside the signal handler ("wherever it is")
    uint64_t stops_at_safe_point;
    uint64_t resends;           // signals sent again because no acknowledgement came in time
    char pad3[CHP_CACHE_LINE - 6 * sizeof(uint64_t)];
} chp_cpu_t;

/// Allocates a zeroed, cache-line aligned control block into `*cpu`. Returns 0, or an errno value: ENOMEM.
int chp_cpu_create(chp_cpu_t **cpu);
/// Frees a control block whose thread has exited. Cannot fail.
void chp_cpu_destroy(chp_cpu_t *cpu);

/// Installs the process-wide SIGP handler on `signo` (reference counted: several machines may share it).
/// Returns 0, or an errno value: EINVAL (a signal that cannot carry SIGP), EBUSY (the application already has a
/// handler there), EEXIST (SIGP already uses another signal in this process).
int chp_sigp_install(int signo);
/// Drops one reference. The default disposition comes back when no reference is left and no thread is bound as a
/// logical CPU (chp_cpu_bind_self); until then the handler stays (it ignores the signal on unbound threads), and the
/// last thread to unbind restores it. So a CPU thread left running by a shutdown never meets the signal's default
/// action. Returns 0, or an errno value: EINVAL (`signo` is not the installed SIGP signal, or has no reference), or
/// sigaction's.
int chp_sigp_uninstall(int signo);
/// The signal installed, or 0. Cannot fail.
int chp_sigp_signal(void);
/// SIGRTMIN and SIGRTMAX as the C library sees them. Cannot fail.
int chp_sigrtmin(void);
int chp_sigrtmax(void);

/// Binds the calling thread to `cpu` for the signal handler (thread-local, initial-exec TLS), stores its tid, and
/// unblocks the SIGP signal for the thread.
/// Returns 0, or an errno value: EINVAL (no SIGP signal is installed), or pthread_sigmask's. The thread is bound
/// either way.
int chp_cpu_bind_self(chp_cpu_t *cpu);
/// Blocks the SIGP signal for the calling thread and unbinds it (clears what chp_cpu_bind_self and
/// chp_cpu_set_self_identity set); the last thread to unbind after the last chp_sigp_uninstall restores the signal's
/// default disposition. Cannot fail (a failed sigaction there leaves the ignoring handler installed).
void chp_cpu_unbind_self(void);

/// The calling thread's identity as a logical CPU: its machine's id (never 0) and its CPU id; 0 and -1 on any other
/// thread. Written only on the thread itself: chp_cpu_set_self_identity after binding, cleared by chp_cpu_unbind_self.
extern __thread uint64_t chp_self_machine __attribute__((tls_model("initial-exec")));
extern __thread intptr_t chp_self_logical __attribute__((tls_model("initial-exec")));
/// Records the calling (bound) thread's identity. Cannot fail.
void chp_cpu_set_self_identity(uint64_t machine, intptr_t logical);
/// The calling thread's logical CPU id when it is a CPU of machine `machine`, else -1: two thread-local loads,
/// inlined into the caller (the slab allocator's fast paths). Cannot fail.
static inline intptr_t chp_cpu_self_logical(uint64_t machine) {
    return chp_self_machine == machine ? chp_self_logical : -1;
}

/// Runtime lock sections ("no-stop" sections): SIGP actions wait for the next safe point while a logical CPU is
/// inside one. A STOP (or STOP_AND_STORE_STATUS) whose signal reaches a CPU thread inside such a section does not
/// stop it there: the handler acknowledges the signal, leaves the order pending and sets `chp_nostop_deferred`;
/// the outermost chp_nostop_leave then sends the signal to the thread again, and the handler stops it there, with
/// no runtime lock held (or at the point where the thread unblocks the signal, or at its next safe point, whichever
/// comes first). The runtime's own locks (Lock, Locked, ReadWriteLock in Sources/Hotplug/Shim/Lock.swift) enter a
/// section before they lock and leave it after they unlock, on every thread: a plain thread-local increment and
/// decrement, no system call. RESTART and the other orders already run only at safe points.
///
/// The depth is written only by its own thread; the handler (same thread) only reads it. `chp_nostop_deferred` is
/// set by the handler and cleared by chp_nostop_resume_stop, on the same thread. Compiler signal fences order the
/// accesses against the handler (a signal handler runs on the interrupted thread: no hardware fence is needed).
extern __thread uint32_t chp_nostop_depth __attribute__((tls_model("initial-exec")));
extern __thread volatile uint32_t chp_nostop_deferred __attribute__((tls_model("initial-exec")));
/// The slow path of chp_nostop_leave: clears `chp_nostop_deferred` and sends the SIGP signal to the calling thread
/// again (a logical CPU with an installed signal; otherwise it only clears the flag). Cannot fail: a failed tgkill
/// leaves the STOP pending in the mailbox for the CPU's next safe point.
void chp_nostop_resume_stop(void);
/// Enters a runtime lock section (nests). Cannot fail.
static inline void chp_nostop_enter(void) {
    chp_nostop_depth += 1;
    // The handler must see the new depth before the lock is taken (compiler barrier only: same thread).
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}
/// Leaves a runtime lock section; the outermost leave lets a STOP deferred inside it take effect. Cannot fail.
static inline void chp_nostop_leave(void) {
    // The lock is released before the depth drops (compiler barrier only: same thread).
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    uint32_t depth = chp_nostop_depth - 1;
    chp_nostop_depth = depth;
    // Read the flag after the depth dropped: a handler running from here on sees depth 0 and stops at once, one
    // that ran before set the flag, which this load sees.
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (__builtin_expect(chp_nostop_deferred != 0, 0) && depth == 0) chp_nostop_resume_stop();
}

/// Blocks (`block` true) or unblocks the SIGP signal for the calling thread ("interrupts off/on").
/// Returns 0, or an errno value: EINVAL (no SIGP signal is installed), or pthread_sigmask's.
int chp_sigp_block(bool block);

/// True when the SIGP signal is blocked for the calling thread. Cannot fail.
bool chp_sigp_is_blocked(void);

/// Result of posting an order. `cc` is the condition code (0 accepted, 1 status stored, 2 busy, 3 not
/// operational); `status` holds the status bits for cc 1.
typedef struct chp_sigp_result {
    int cc;
    uint32_t status;
} chp_sigp_result_t;

/// S/390 status bits.
enum {
    CHP_STATUS_INVALID_ORDER = 0x2,
    CHP_STATUS_CHECK_STOP = 0x10,
    CHP_STATUS_STOPPED = 0x40,
    CHP_STATUS_EXT_CALL_PENDING = 0x80,
    CHP_STATUS_INVALID_PARAMETER = 0x100,
    CHP_STATUS_INCORRECT_STATE = 0x200,
    CHP_STATUS_NOT_RUNNING = 0x400,
};

/// S/390 order codes.
enum {
    CHP_SIGP_SENSE = 1,
    CHP_SIGP_EXTERNAL_CALL = 2,
    CHP_SIGP_EMERGENCY_SIGNAL = 3,
    CHP_SIGP_START = 4,
    CHP_SIGP_STOP = 5,
    CHP_SIGP_RESTART = 6,
    CHP_SIGP_STOP_AND_STORE_STATUS = 9,
    CHP_SIGP_INITIAL_CPU_RESET = 11,
    CHP_SIGP_CPU_RESET = 12,
    CHP_SIGP_COND_EMERGENCY_SIGNAL = 19,
    CHP_SIGP_SENSE_RUNNING = 21,
};

/// Evaluates and posts one order to `cpu` (the architectural part of SIGP: condition code, status, mailbox).
/// Does not deliver the wake-up: when the order needs one, `delivery->ticket` receives a non-zero signal ticket
/// (taken before the post, so that whoever takes the posted bits also acknowledges the ticket) and the caller
/// calls chp_sigp_deliver with `delivery`; otherwise the ticket is 0. `source` is the sending logical CPU or -1.
/// Cannot fail (the outcome is in the result).
chp_sigp_result_t chp_sigp_post(chp_cpu_t *cpu, int order, uint32_t parameter, int32_t source,
                                chp_delivery_t *delivery);

/// Posts internal mailbox bits (CHP_MB_CALL, CHP_MB_LIFECYCLE) without the architectural checks; fills
/// `delivery` for chp_sigp_deliver. Cannot fail.
void chp_cpu_post_bits(chp_cpu_t *cpu, uint32_t bits, chp_delivery_t *delivery);
/// Posts internal bits that need no signal (CHP_MB_TASKLET, CHP_MB_JOB): a running CPU sees them at its next safe point, a
/// polling one at once; an idle one is woken with futex. Returns true when it had to wake the CPU. Cannot fail.
bool chp_cpu_post_and_wake_idle(chp_cpu_t *cpu, uint32_t bits);

/// Wakes every thread blocked on the CPU's mailbox (idle or stopped). Cannot fail.
void chp_cpu_wake_mailbox(chp_cpu_t *cpu);
/// Removes internal bits if they are still pending; returns the bits that were removed. Cannot fail.
uint32_t chp_cpu_retract_bits(chp_cpu_t *cpu, uint32_t bits);

/// Delivers the cheapest sufficient wake-up for a post (see above). To the calling CPU itself it sends the signal
/// (when it runs code) and never waits for the acknowledgement.
/// Returns 0, or an errno value: ETIMEDOUT (a running CPU did not acknowledge within `timeout_ns` and at least
/// one resend, or within twice `timeout_ns`; the CPU is then marked check-stopped), EINVAL (no SIGP signal is
/// installed), or tgkill's.
int chp_sigp_deliver(chp_cpu_t *cpu, const chp_delivery_t *delivery, int64_t resend_ns, int64_t timeout_ns);


// MARK: Called by the CPU's own thread

/// Sets the CPU's run state (release: partner of the acquire loads in chp_cpu_run_state and chp_sigp_post, whose
/// NONE / OFFLINE checks, SENSE_RUNNING and COND_EMERGENCY_SIGNAL depend on it). Cannot fail.
void chp_cpu_set_run_state(chp_cpu_t *cpu, uint32_t state);
/// Reads a CPU's run state (acquire). Cannot fail.
uint32_t chp_cpu_run_state(const chp_cpu_t *cpu);
/// Reads the mailbox (acquire: partner of the senders' release RMWs that post orders). Cannot fail.
uint32_t chp_cpu_mailbox(const chp_cpu_t *cpu);

/// A safe point: in one RMW, takes the pending mailbox bits out (except STOP-class bits, which chp_cpu_stop_here
/// consumes) and sets the delivery class RUNNING; then acknowledges every signal ticket issued so far (a ticket
/// is taken before its bits are posted, so the acknowledgement covers every bit taken here). Clears a check stop
/// (the CPU answers). Returns the bits taken together with the STOP-class bits still pending. Cannot fail.
uint32_t chp_cpu_safe_point(chp_cpu_t *cpu);
/// Takes the pending external call: returns true and fills `param`/`source` when one was pending. Cannot fail.
bool chp_cpu_take_external_call(chp_cpu_t *cpu, uint32_t *param, int32_t *source);
/// Takes the pending emergency signals; returns their count. Cannot fail.
uint32_t chp_cpu_take_emergency(chp_cpu_t *cpu);

/// Consumes a pending STOP-class order and stops the calling CPU right here (at a safe point), recording this
/// call site as the stop address, until START or RESTART. Returns true when it stopped. Cannot fail.
bool chp_cpu_stop_here(chp_cpu_t *cpu);

/// Waits for orders: returns at once when some are pending; otherwise spins on the mailbox with class POLLING for
/// at most `poll_ns`, then parks in futex_wait on it with class IDLE, until an order is posted and no stop_machine
/// claims it (CHP_MB_CLAIMED). The class stays POLLING / IDLE until the next safe point takes the orders (so a
/// post meanwhile needs no signal). Cannot fail.
void chp_cpu_wait_for_orders(chp_cpu_t *cpu, int64_t poll_ns);

/// Claims an idle CPU for a stop_machine without waking it: succeeds only while the CPU is parked in its idle wait
/// (class IDLE) with no order pending, and then sets CHP_MB_CLAIMED in the same CAS. A claimed CPU stays in its
/// idle wait, whatever is posted to it, until chp_cpu_release_claim: it is at a safe point that runs nothing.
/// Acq_rel: everything the CPU wrote before it parked is visible to the claimer. Cannot fail.
bool chp_cpu_claim_idle(chp_cpu_t *cpu);

/// Debugging only (the torture's proof that it catches a broken claim): when set, a claimed CPU leaves its idle
/// wait as soon as an order is posted, as if it had never been claimed. Never set in normal use.
void chp_debug_set_ignore_claims(bool ignore);

/// Releases a claim, and wakes the CPU when orders were posted to it meanwhile. Release: what the stop_machine
/// body wrote is visible to the CPU when it leaves its wait (its acquire load). Cannot fail.
void chp_cpu_release_claim(chp_cpu_t *cpu);

/// Going offline absorbs a pending STOP-class order (an offline CPU is stopped): the order is cleared, and a
/// STOP_AND_STORE_STATUS stores this call site as the status. Cannot fail.
void chp_cpu_absorb_stop(chp_cpu_t *cpu);

/// Records the caller's site as where the CPU stops, and sets class QUIET and run state OFFLINE: the step before
/// acknowledging that it is configured or offline, and parking. Cannot fail.
void chp_cpu_enter_offline(chp_cpu_t *cpu);

/// Makes a control block fresh for a new thread (configure after standby): clears the mailbox, pending
/// interruptions, the status area, check stop, the stop site and the tid, and sets the lifecycle to PARKED; keeps
/// the run state, the signal tickets, and statistics. Only while no thread uses it. Cannot fail.
void chp_cpu_prepare(chp_cpu_t *cpu);

/// Records the caller's site as where the CPU stops, sets class QUIET and run state OFFLINE, acknowledges pending
/// signal tickets, and parks the calling CPU thread while its lifecycle word is PARKED or OFFLINE. Then sets class
/// RUNNING (QUIET for EXIT) and run state RUNNING, and returns the lifecycle word seen (ONLINE or EXIT).
/// Cannot fail.
uint32_t chp_cpu_park_offline(chp_cpu_t *cpu);

/// Writes the lifecycle word (release: partner of the CPU's acquire in chp_cpu_park_offline). Does not wake the
/// thread: START does that for ONLINE, chp_cpu_wake_lifecycle for EXIT. Cannot fail.
void chp_cpu_set_lifecycle(chp_cpu_t *cpu, uint32_t lifecycle);
/// Wakes the thread parked on its lifecycle word. Cannot fail.
void chp_cpu_wake_lifecycle(chp_cpu_t *cpu);
/// Reads the lifecycle word (acquire). Cannot fail.
uint32_t chp_cpu_lifecycle(const chp_cpu_t *cpu);

// MARK: Readers for the Swift layer (atomic loads; none can fail)

/// The CPU thread's kernel tid, 0 before it started.
pid_t chp_cpu_tid(const chp_cpu_t *cpu);
/// Nanoseconds the CPU has spent parked in its idle wait (chp_cpu_wait_for_orders with nothing to do) since its
/// control block was created, the current park included up to now. Not the poll before it: a polling CPU runs.
int64_t chp_cpu_idle_ns(const chp_cpu_t *cpu);
/// Copies the status area; returns false when no status was stored.
bool chp_cpu_stored_status(const chp_cpu_t *cpu, uint64_t *ip, uint64_t *sp);

typedef struct chp_cpu_stats {
    uint64_t signals_sent, signals_received, futex_wakes, resends, stops_in_handler, stops_at_safe_point;
} chp_cpu_stats_t;
/// Reads the statistics counters (relaxed).
void chp_cpu_statistics(const chp_cpu_t *cpu, chp_cpu_stats_t *out);

// ---------------------------------------------------------------------------------------------------------------
// MARK: Thread context (context.c)
// ---------------------------------------------------------------------------------------------------------------

/// What the calling thread runs inside, for one machine: `machine` is that machine's id (0: none) and `flags` its
/// context bits (a hotplug callback, a stop_machine body; their meaning is Swift's). Written only by the thread
/// itself, around the callbacks and bodies the runtime runs for the caller (cold paths); read where a call has to
/// know whether it would wait for itself. One machine at a time: entering another machine's context replaces it
/// until the matching restore.
typedef struct chp_context {
    uint64_t machine;
    uint32_t flags;
} chp_context_t;

extern __thread chp_context_t chp_thread_context __attribute__((tls_model("initial-exec")));

/// The calling thread's context bits for machine `machine`, 0 when it is inside nothing of that machine: two
/// thread-local loads, inlined. Cannot fail.
static inline uint32_t chp_context_flags(uint64_t machine) {
    return chp_thread_context.machine == machine ? chp_thread_context.flags : 0;
}
/// The calling thread's whole context (to restore it later). Cannot fail.
static inline chp_context_t chp_context_get(void) { return chp_thread_context; }
/// Replaces the calling thread's context. Cannot fail.
static inline void chp_context_set(chp_context_t context) { chp_thread_context = context; }

#ifdef __cplusplus
}
#endif
#endif
