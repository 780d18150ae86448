// CPeers: the raw peers the benchmarks compare swift-hotplug against, the few timing helpers both sides share, and
// the affinity helpers of the follow figure (`taskset -a -p` from inside the process).
//
// Every peer runs its measuring side on the calling thread (the caller pins it) and starts its partner threads
// pinned to `partner_cpu` or `cpus[1...]` (-1: not pinned). It first runs `warmup` untimed samples, then writes
// `count` samples, in nanoseconds of CLOCK_MONOTONIC (the malloc peers: picoseconds per operation), to `samples`.
// Nothing in a timed loop allocates or takes a lock of ours (what the peer itself does, pthread_create's stack,
// glibc's barrier lock, malloc and free, is what it measures).
// Every spin of ours issues a pause hint and, after CPR_SPIN_BUDGET iterations, gives way with sched_yield
// (two-core machines); Concurrency Kit's barriers spin as Concurrency Kit wrote them.
//
// House rules: every symbol is prefixed `cpr_`; each prototype says how it fails; C never exits or aborts; every
// atomic names its memory order and every acquire/release pair names its partner.
#ifndef CPEERS_H
#define CPEERS_H

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>
#include "malloc_count.h"   // the executor figures' allocation counters

#ifdef __cplusplus
extern "C" {
#endif

/// Pause iterations of a spin before it starts giving way with sched_yield.
enum { CPR_SPIN_BUDGET = 4096 };
/// Spin iterations between two looks at the clock (time bounds).
enum { CPR_CHECK_EVERY = 256 };

/// CLOCK_MONOTONIC in nanoseconds. Cannot fail.
static inline int64_t cpr_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/// The CPU's spin-wait hint. Cannot fail.
static inline void cpr_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

/// One step of a bounded spin: a pause hint within the budget, sched_yield past it. Cannot fail.
static inline void cpr_spin_step(uint32_t spins) {
    if (spins < CPR_SPIN_BUDGET) cpr_relax();
    else sched_yield();
}

// Explicitly ordered access to words shared between threads (and with signal handlers). None can fail.
static inline uint64_t cpr_load_acquire_u64(const uint64_t *word) { return __atomic_load_n(word, __ATOMIC_ACQUIRE); }
static inline uint32_t cpr_load_acquire_u32(const uint32_t *word) { return __atomic_load_n(word, __ATOMIC_ACQUIRE); }
static inline void cpr_store_release_u32(uint32_t *word, uint32_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}
static inline void cpr_store_release_u64(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}
/// Adds one with release order (the acknowledgement of an interruption). Partner: the acquire load in
/// cpr_wait_change. Cannot fail.
static inline void cpr_bump_release_u64(uint64_t *word) { __atomic_fetch_add(word, 1, __ATOMIC_RELEASE); }

/// Spins (pause hint, then sched_yield past the budget) while `*word` is `value` (`below` false) or below `value`
/// (`below` true), for at most `timeout_ns`. Acquire: partner of the release in cpr_bump_release_u64.
/// Returns 0, or ETIMEDOUT.
static inline int cpr_wait_while(const uint64_t *word, uint64_t value, bool below, int64_t timeout_ns) {
    int64_t start = 0;
    for (uint32_t spins = 0;; spins++) {
        uint64_t seen = __atomic_load_n(word, __ATOMIC_ACQUIRE);
        if (below ? seen >= value : seen != value) return 0;
        cpr_spin_step(spins);
        if (spins % CPR_CHECK_EVERY == CPR_CHECK_EVERY - 1) {
            int64_t now = cpr_now_ns();
            if (start == 0) start = now;
            else if (now - start >= timeout_ns) return ETIMEDOUT;
        }
    }
}

/// Spins until `*word != old` (see cpr_wait_while).
static inline int cpr_wait_change(const uint64_t *word, uint64_t old, int64_t timeout_ns) {
    return cpr_wait_while(word, old, false, timeout_ns);
}

/// Spins until `*word >= target` (see cpr_wait_while).
static inline int cpr_wait_at_least(const uint64_t *word, uint64_t target, int64_t timeout_ns) {
    return cpr_wait_while(word, target, true, timeout_ns);
}

/// Starts `body(arg)` on a new thread pinned to `cpu` (-1: not pinned; a failed pin leaves it unpinned).
/// Returns 0 or pthread_create's error. (For the C peers; not meant for Swift.)
int cpr_start_pinned(pthread_t *thread, int cpu, void *(*body)(void *), void *arg);

/// Allocates `size` zeroed bytes aligned to a cache line (shared words on lines of their own).
/// Returns NULL and sets errno.
void *cpr_alloc_lines(size_t size);
/// Frees memory from cpr_alloc_lines. Cannot fail.
void cpr_free(void *memory);

/// Pins the calling thread to physical CPU `cpu`. Returns -1 and sets errno.
int cpr_pin_self(int cpu);

/// Spins (pause hint, sched_yield every CPR_SPIN_BUDGET iterations) until `*stop` is non-zero (acquire: partner of
/// the release store that sets it), or for at most `limit_ns`. This is "a CPU running user code", the same loop
/// for our logical CPU and for the raw peer. Cannot fail.
void cpr_busy_until(const uint32_t *stop, int64_t limit_ns);

/// SIGRTMIN as the C library sees it. Cannot fail.
int cpr_sigrtmin(void);

/// Peer of "SIGP to a polling CPU": two threads bounce one cache line through an atomic word. A sample is one round
/// trip (the caller writes the line, the partner answers on the same line). Returns 0, or an errno value:
/// ETIMEDOUT (no answer within `timeout_ns`), or pthread_create's.
int cpr_pingpong(int partner_cpu, int64_t *samples, size_t count, size_t warmup, int64_t timeout_ns);

/// Peer of "SIGP to a running CPU": the partner spins in user code (cpr_busy_until); a raw SA_SIGINFO handler on
/// `signo` increments the partner's own acknowledgement word (release); a sample is tgkill + spinning until that
/// word changes (acquire). The previous disposition of `signo` is restored. Returns 0, or an errno value:
/// ETIMEDOUT, EBUSY (`signo` already has a handler), or sigaction's / pthread_create's / tgkill's.
int cpr_signal_roundtrip(int partner_cpu, int signo, int64_t *samples, size_t count, size_t warmup,
                         int64_t timeout_ns);

/// Peer of "SIGP waking a parked CPU": the partner blocks in futex_wait on a word; a sample is storing the word +
/// FUTEX_WAKE, then spinning until the woken partner's acknowledgement. Before each sample the caller waits until
/// the partner announced it waits, then `settle_ns` more so that it is asleep in the kernel.
/// Returns 0, or an errno value: ETIMEDOUT, or pthread_create's.
int cpr_futex_roundtrip(int partner_cpu, int64_t settle_ns, int64_t *samples, size_t count, size_t warmup,
                        int64_t timeout_ns);

/// The barrier peers.
typedef enum cpr_barrier_kind {
    CPR_BARRIER_PTHREAD = 0,            // glibc pthread_barrier_wait
    CPR_BARRIER_CK_CENTRALIZED = 1,     // Concurrency Kit ck_barrier_centralized
    CPR_BARRIER_CK_DISSEMINATION = 2,   // Concurrency Kit ck_barrier_dissemination
    CPR_BARRIER_CK_TOURNAMENT = 3,      // Concurrency Kit ck_barrier_tournament
    CPR_BARRIER_CK_MCS = 4,             // Concurrency Kit ck_barrier_mcs
} cpr_barrier_kind_t;

/// True when the barrier can run here: pthread always; the Concurrency Kit ones when <ck_barrier.h> was present at
/// build time and libck opens at run time. Cannot fail.
bool cpr_barrier_available(cpr_barrier_kind_t kind);

/// The most threads a barrier or membarrier peer runs.
enum { CPR_MAX_THREADS = 1024 };

/// `threads` threads (the caller and `threads - 1` partners) run `warmup + count` back-to-back episodes; the caller
/// takes the clock after each episode, and a sample is the time between two consecutive episode exits (one whole
/// episode). The caller runs where it is (it pins itself; `cpus[0]` is not used); partner i is pinned to `cpus[i]`
/// (-1: not pinned). Concurrency Kit barriers only spin: give every thread a CPU of its own. Returns 0, or an errno
/// value: ENOTSUP (not available), EINVAL (`threads` not in 1...CPR_MAX_THREADS), ENOMEM, or pthread_create's /
/// pthread_barrier_init's.
int cpr_barrier_episodes(cpr_barrier_kind_t kind, const int *cpus, size_t threads, int64_t *samples, size_t count,
                         size_t warmup);

/// Registers the process for MEMBARRIER_CMD_PRIVATE_EXPEDITED (once is enough; repeating it is harmless).
/// Returns 0, or an errno value (ENOSYS, EINVAL: the kernel does not have it).
int cpr_membarrier_register(void);

/// Peer of "stop_machine, N CPUs": `threads - 1` partners, partner i pinned to `cpus[i]` (-1: not pinned), either
/// spin in user code (cpr_busy_until; `spinning`) or block in futex_wait (not `spinning`; the caller then waits
/// `settle_ns` once so that they are asleep in the kernel). Once all have started, a sample is one
/// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) on the calling thread (which pins itself; `cpus[0]` is not
/// used). Register first (cpr_membarrier_register). Returns 0, or an errno value: ETIMEDOUT (the partners did not
/// start within `timeout_ns`), EINVAL, or membarrier's / pthread_create's.
int cpr_membarrier_rounds(const int *cpus, size_t threads, bool spinning, int64_t settle_ns, int64_t *samples,
                          size_t count, size_t warmup, int64_t timeout_ns);

/// Peer of "attach / detach": a sample is pthread_create of a thread that returns at once (pinned to
/// `partner_cpu` through its attributes; -1: not pinned) + pthread_join of it. Returns 0, or an errno value
/// (pthread_attr_init's / pthread_create's / pthread_join's).
int cpr_thread_create_join(int partner_cpu, int64_t *samples, size_t count, size_t warmup);

/// Peer of "parked CPU time": a thread pinned to `cpu` (-1: not pinned) that publishes its kernel thread id and
/// blocks in futex_wait until cpr_parked_stop. Returns 0 and sets `*out`, or an errno value (ENOMEM, pthread_create's).
typedef struct cpr_parked_thread cpr_parked_thread_t;
int cpr_parked_start(int cpu, cpr_parked_thread_t **out);
/// The parked thread's kernel thread id, or 0 while it has not run yet. Cannot fail.
pid_t cpr_parked_tid(const cpr_parked_thread_t *parked);
/// Wakes the parked thread, joins it and frees `parked`. Cannot fail.
void cpr_parked_stop(cpr_parked_thread_t *parked);

/// The CPU time thread `tid` of this process has used so far, in nanoseconds: the first field of
/// /proc/self/task/TID/schedstat (the scheduler's runtime sum, much finer than the clock ticks of .../stat).
/// Returns 0, or an errno value: open's / read's (ENOENT: no such thread, or a kernel without schedstat), EINVAL
/// (not a number).
int cpr_thread_cpu_ns(pid_t tid, int64_t *ns);

// Affinity masks of the follow figure (affinity.c).

/// The affinity mask of thread `tid` (0: the calling thread; the process id: its main thread) as CPU numbers, in
/// increasing order, into `cpus` (room for `capacity`). Returns 0 and sets `*count`, or an errno value: ENOMEM,
/// ERANGE (more than `capacity` CPUs), or sched_getaffinity's.
int cpr_affinity_get(pid_t tid, int *cpus, size_t capacity, size_t *count);

/// What `taskset -a -p` does: gives every thread of this process (each entry of /proc/self/task) the affinity mask
/// of the `count` CPUs `cpus`. A thread that exits meanwhile is skipped; one created meanwhile may be missed (it
/// inherits its creator's mask). Returns 0 and sets `*threads` (when not NULL) to the threads changed, or an errno
/// value: EINVAL (no CPU, or one out of range), ENOMEM, or opendir's / sched_setaffinity's (the threads listed
/// before the failing one keep the new mask).
int cpr_affinity_set_every_thread(const int *cpus, size_t count, size_t *threads);

// The malloc peers of the slab figures (malloc_peers.c). They call plain malloc / free, so they measure whichever
// allocator serves this process (run them in a child process per allocator: cpr_spawn_child). Their samples are in
// picoseconds per operation: a batch's time * 1000 / `batch`.

/// Peer of "slab alloc+free pair": `threads` threads (the caller, which pins itself, and `threads - 1` partners,
/// partner i pinned to `cpus[i]`, -1: not pinned; `cpus[0]` is not used) meet at a start gate, then each runs
/// `warmup` untimed and `counts[i]` timed batches of `batch` pairs malloc(`size`) + free; thread i writes its
/// samples after those of threads 0..<i. Returns 0, or an errno value: EINVAL (`threads` not in
/// 1...CPR_MAX_THREADS, `batch` 0), ENOMEM (malloc failed), ETIMEDOUT (a thread missed the gate by `timeout_ns`),
/// or pthread_create's.
int cpr_malloc_pairs(const int *cpus, size_t threads, size_t size, size_t batch, int64_t *samples,
                     const size_t *counts, size_t warmup, int64_t timeout_ns);

/// Peer of "slab alloc + remote free": the caller (the producer, which pins itself) mallocs `batch` objects of
/// `size` bytes into a ring and hands them to a partner pinned to `consumer_cpu` (-1: not pinned), which frees them
/// all and says so; a sample is one such round, from the first malloc until the producer sees the consumer's
/// answer, per object. Returns 0, or an errno value: EINVAL (`batch` 0), ENOMEM, ETIMEDOUT (no answer within
/// `timeout_ns`), or pthread_create's.
int cpr_malloc_remote_rounds(int consumer_cpu, size_t size, size_t batch, int64_t *samples, size_t count,
                             size_t warmup, int64_t timeout_ns);

/// True when this executable was started by the dynamic loader (a static executable ignores LD_PRELOAD). Cannot
/// fail.
bool cpr_dynamically_linked(void);

/// The file of the library whose `malloc` this process's symbol lookup resolves (the LD_PRELOAD one, if any), or
/// NULL when it cannot be told. Cannot fail otherwise.
const char *cpr_malloc_provider(void);

/// Writes the name and version of the allocator in use ("jemalloc 5.3.0-...", "tcmalloc (gperftools 2.10)",
/// "glibc 2.36") to `buffer` (NUL-terminated, truncated to `length`). Cannot fail.
void cpr_malloc_version(char *buffer, size_t length);

/// Starts `path` with `argv` (NULL-terminated) and this process's environment, less any LD_PRELOAD, plus
/// LD_PRELOAD=`preload` unless it is NULL; the child's stdout is a pipe whose read end (close-on-exec) goes to
/// `*stdout_fd`. Returns 0, or an errno value (pipe2's, posix_spawn's, ENOMEM).
int cpr_spawn_child(const char *path, char *const argv[], const char *preload, pid_t *pid, int *stdout_fd);

/// Waits for child `pid`; `*status` is its exit code, or 128 + the signal that ended it. Returns 0, or waitpid's
/// errno value.
int cpr_wait_child(pid_t pid, int *status);

/// Asks the kernel to kill this process (SIGKILL) when the thread that started it ends. Cannot fail.
void cpr_die_with_parent(void);

#ifdef __cplusplus
}
#endif
#endif
