// Thread identity, clocks, affinity, futex and the one-shot event.
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// The number of CPU ids the affinity calls can express (see CHotplug.h).
#define CHP_MAX_CPUS 8192

pid_t chp_gettid(void) { return (pid_t)syscall(SYS_gettid); }

// In C: prctl is variadic, which Swift cannot call, and pthread_setname_np needs _GNU_SOURCE.
int chp_thread_set_name(const char *name) { return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0) == 0 ? 0 : errno; }

static int64_t timespec_ns(const struct timespec *ts) {
    return (int64_t)ts->tv_sec * 1000000000LL + (int64_t)ts->tv_nsec;
}

int chp_thread_cputime_ns(pid_t tid, int64_t *ns) {
    // The clock id holds the negated tid in its upper 29 bits, so only 0 < tid < 2^28 round-trips (the kernel's
    // tids stay below 2^22); any other value would name another thread, or the caller.
    if (tid <= 0 || tid >= (1 << 28)) return EINVAL;
    // The kernel's per-thread CPU clock id for any thread of this process: MAKE_THREAD_CPUCLOCK(tid, SCHED).
    clockid_t clock = (clockid_t)((~(unsigned)tid) << 3) | 6;
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0) return errno;
    *ns = timespec_ns(&ts);
    return 0;
}

int64_t chp_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return timespec_ns(&ts);
}

int chp_affinity_get(pid_t tid, int *cpus, int capacity, int *count) {
    size_t size = CPU_ALLOC_SIZE(CHP_MAX_CPUS);
    cpu_set_t *set = CPU_ALLOC(CHP_MAX_CPUS);
    if (set == NULL) return ENOMEM;
    // The raw system call returns how many bytes of the mask the kernel wrote (its nr_cpu_ids, rounded up to a
    // word); glibc's wrapper hides that. Only those words are read, a set bit at a time: the follower reads every
    // thread's mask on every poll, and walking all CHP_MAX_CPUS bits made this 9% of an idle follower's time.
    long copied = syscall(SYS_sched_getaffinity, tid, size, set);
    if (copied < 0) {
        int code = errno;
        CPU_FREE(set);
        return code;
    }
    const unsigned long *words = (const unsigned long *)set;
    size_t word_count = (size_t)copied / sizeof(unsigned long);
    const int bits_per_word = (int)(sizeof(unsigned long) * CHAR_BIT);
    int found = 0;
    for (size_t w = 0; w < word_count; w++) {
        unsigned long bits = words[w];
        while (bits != 0) {
            int cpu = (int)w * bits_per_word + __builtin_ctzl(bits);
            bits &= bits - 1;   // clear the lowest set bit
            if (found < capacity) cpus[found] = cpu;
            found++;
        }
    }
    CPU_FREE(set);
    *count = found;
    return 0;
}

int chp_affinity_set(pid_t tid, const int *cpus, int count) {
    size_t size = CPU_ALLOC_SIZE(CHP_MAX_CPUS);
    cpu_set_t *set = CPU_ALLOC(CHP_MAX_CPUS);
    if (set == NULL) return ENOMEM;
    CPU_ZERO_S(size, set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CHP_MAX_CPUS) {
            CPU_FREE(set);
            return EINVAL;
        }
        CPU_SET_S(cpus[i], size, set);
    }
    int code = sched_setaffinity(tid, size, set) == 0 ? 0 : errno;
    CPU_FREE(set);
    return code;
}

int chp_affinity_pin(pid_t tid, int cpu) { return chp_affinity_set(tid, &cpu, 1); }

int chp_current_cpu(int *cpu) {
    int current = sched_getcpu();
    if (current < 0) return errno;
    *cpu = current;
    return 0;
}

int chp_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
        tsp = &ts;
    }
    long rc = syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, tsp, NULL, 0);
    return rc == 0 ? 0 : errno;
}

void chp_futex_wake_all(uint32_t *word) {
    (void)syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

// MARK: One-shot event

void chp_event_reset(chp_event_t *event) {
    atomic_store_explicit(A32(&event->word), 0, memory_order_relaxed);
    atomic_store_explicit(A32(&event->waiters), 0, memory_order_relaxed);
}

void chp_event_set(chp_event_t *event) {
    // Release: partner of the acquire loads in chp_event_wait / chp_event_is_set.
    atomic_store_explicit(A32(&event->word), 1, memory_order_release);
    // Dekker pair with the fence in chp_event_wait: either we see its waiter registration, or it sees word == 1.
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(A32(&event->waiters), memory_order_relaxed) != 0) {
        chp_futex_wake_all(&event->word);
    }
}

bool chp_event_is_set(const chp_event_t *event) {
    return atomic_load_explicit((_Atomic uint32_t *)&event->word, memory_order_acquire) != 0;
}

int chp_event_wait(chp_event_t *event, uint32_t spin_budget, int64_t timeout_ns) {
    for (uint32_t i = 0; i < spin_budget; i++) {
        if (chp_event_is_set(event)) return 0;
        chp_cpu_relax();
    }
    int64_t deadline = timeout_ns >= 0 ? chp_monotonic_ns() + timeout_ns : -1;
    atomic_fetch_add_explicit(A32(&event->waiters), 1, memory_order_relaxed);
    // Dekker pair with the fence in chp_event_set.
    atomic_thread_fence(memory_order_seq_cst);
    int result = 0;
    while (!chp_event_is_set(event)) {
        int64_t left = -1;
        if (deadline >= 0) {
            left = deadline - chp_monotonic_ns();
            if (left <= 0) { result = ETIMEDOUT; break; }
        }
        // EINTR, EAGAIN, ETIMEDOUT and spurious wake-ups all lead back to the re-check of the word.
        (void)chp_futex_wait(&event->word, 0, left);
    }
    atomic_fetch_sub_explicit(A32(&event->waiters), 1, memory_order_relaxed);
    return result;
}

_Static_assert(sizeof(chp_cpu_t) == 4 * CHP_CACHE_LINE, "chp_cpu_t: one cache line per group");
_Static_assert(sizeof(chp_barrier_t) == 3 * CHP_CACHE_LINE, "chp_barrier_t: one cache line per field group");
