// The raw peers: cache-line ping-pong, tgkill + handler and futex wake round trips (SIGP figures), membarrier
// (stop_machine), pthread_create + pthread_join (attach / detach), and a thread parked in futex_wait with the
// reading of a thread's CPU time (parked CPU time).
//
// Memory-ordering map (every pair names its partner):
// - Q1 ping-pong: the caller's release store of an odd value, partner of the echo's acquire load; the echo's release
//   store of the next even value, partner of the caller's acquire load.
// - Q2 acknowledgements: the handler's / woken thread's release increment (cpr_bump_release_u64), partner of the
//   caller's acquire load in cpr_wait_change.
// - Q3 stop words: release store by the caller, partner of the acquire load in the partner's loop.
// - Q4 futex peer: the wakee's release store of `waiting`, partner of the caller's acquire load before a sample;
//   the caller's release store of `word`, partner of the wakee's acquire load after futex_wait.
// - Q5 membarrier peer: each partner's release increment of `started`, partner of the caller's acquire load.
// - Q6 parked peer: the parked thread's release store of its `tid`, partner of the acquire load in cpr_parked_tid.
#include "CPeers.h"

#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CPR_LINE 64

void *cpr_alloc_lines(size_t size) {
    size_t rounded = (size + CPR_LINE - 1) / CPR_LINE * CPR_LINE;
    void *memory = NULL;
    int rc = posix_memalign(&memory, CPR_LINE, rounded);
    if (rc != 0) { errno = rc; return NULL; }
    memset(memory, 0, rounded);
    return memory;
}

void cpr_free(void *memory) { free(memory); }

int cpr_pin_self(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set);
}

int cpr_sigrtmin(void) { return SIGRTMIN; }

void cpr_busy_until(const uint32_t *stop, int64_t limit_ns) {
    int64_t start = cpr_now_ns();
    for (uint32_t spins = 1;; spins++) {
        // Acquire: Q3.
        if (__atomic_load_n(stop, __ATOMIC_ACQUIRE) != 0) return;
        cpr_relax();
        if (spins % CPR_SPIN_BUDGET == 0) {
            sched_yield();   // give way now and then, as every spin here does
            if (cpr_now_ns() - start >= limit_ns) return;
        }
    }
}

static pid_t cpr_gettid(void) { return (pid_t)syscall(SYS_gettid); }

static int cpr_futex_wait(uint32_t *word, uint32_t expected) {
    long rc = syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
    return rc == 0 ? 0 : errno;
}

// Blocks in futex_wait until `*word` is non-zero (acquire: partner of the release store that sets it, before the
// FUTEX_WAKE). EINTR / EAGAIN / spurious wake-ups: re-check.
static void cpr_futex_sleep_until_set(uint32_t *word) {
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == 0) (void)cpr_futex_wait(word, 0);
}

static void cpr_futex_wake(uint32_t *word, int count) {
    (void)syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

int cpr_start_pinned(pthread_t *thread, int cpu, void *(*body)(void *), void *arg) {
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);
    if (rc != 0) return rc;
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        (void)pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
    }
    rc = pthread_create(thread, &attr, body, arg);
    pthread_attr_destroy(&attr);
    return rc;
}

// MARK: Cache-line ping-pong

typedef struct pingpong {
    _Alignas(CPR_LINE) uint64_t line;   // the bounced line: odd = the caller's ping, even = the echo's pong
    char pad0[CPR_LINE - sizeof(uint64_t)];
    _Alignas(CPR_LINE) uint32_t stop;
    char pad1[CPR_LINE - sizeof(uint32_t)];
} pingpong_t;

static void *pingpong_echo(void *arg) {
    pingpong_t *pp = arg;
    uint64_t seen = 0;
    for (;;) {
        uint32_t spins = 0;
        uint64_t value;
        // Acquire: Q1, partner of the caller's release store of the ping.
        while ((value = __atomic_load_n(&pp->line, __ATOMIC_ACQUIRE)) == seen) {
            if (__atomic_load_n(&pp->stop, __ATOMIC_ACQUIRE)) return NULL;   // Q3
            cpr_spin_step(spins++);
        }
        // Release: Q1, partner of the caller's acquire load of the pong.
        __atomic_store_n(&pp->line, value + 1, __ATOMIC_RELEASE);
        seen = value + 1;
    }
}

int cpr_pingpong(int partner_cpu, int64_t *samples, size_t count, size_t warmup, int64_t timeout_ns) {
    pingpong_t *pp = cpr_alloc_lines(sizeof(pingpong_t));
    if (pp == NULL) return errno;
    pthread_t echo;
    int rc = cpr_start_pinned(&echo, partner_cpu, pingpong_echo, pp);
    if (rc != 0) { cpr_free(pp); return rc; }
    uint64_t value = 0;
    for (size_t i = 0; i < warmup + count; i++) {
        int64_t t0 = cpr_now_ns();
        // Release: Q1 (the ping).
        __atomic_store_n(&pp->line, value + 1, __ATOMIC_RELEASE);
        // Acquire: Q1 (the pong), in cpr_wait_change.
        if (cpr_wait_change(&pp->line, value + 1, timeout_ns) != 0) { rc = ETIMEDOUT; break; }
        int64_t t1 = cpr_now_ns();
        value += 2;
        if (i >= warmup) samples[i - warmup] = t1 - t0;
    }
    __atomic_store_n(&pp->stop, 1, __ATOMIC_RELEASE);   // Q3
    pthread_join(echo, NULL);
    cpr_free(pp);
    return rc;
}

// MARK: tgkill + handler round trip

typedef struct signal_peer {
    _Alignas(CPR_LINE) uint64_t ack;     // incremented by the handler on the partner's thread
    char pad0[CPR_LINE - sizeof(uint64_t)];
    _Alignas(CPR_LINE) uint32_t stop;
    pid_t tid;                           // the partner's kernel thread id
    uint32_t ready;                      // 1 once the partner spins with the signal unblocked
    int signo;
    char pad1[CPR_LINE - 4 * sizeof(uint32_t)];
} signal_peer_t;

// The handler's per-thread acknowledgement word. Initial-exec TLS: a plain load from the thread pointer, so the
// handler stays async-signal-safe.
static __thread uint64_t *cpr_signal_ack __attribute__((tls_model("initial-exec")));

static void cpr_raw_handler(int signo, siginfo_t *info, void *context) {
    (void)signo;
    (void)info;
    (void)context;
    int saved = errno;
    uint64_t *ack = cpr_signal_ack;
    if (ack != NULL) cpr_bump_release_u64(ack);   // Release: Q2
    errno = saved;
}

static void *signal_target(void *arg) {
    signal_peer_t *peer = arg;
    cpr_signal_ack = &peer->ack;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, peer->signo);
    (void)pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    __atomic_store_n(&peer->tid, cpr_gettid(), __ATOMIC_RELAXED);
    // Release: publishes tid; partner of the caller's acquire load of `ready`.
    __atomic_store_n(&peer->ready, 1, __ATOMIC_RELEASE);
    cpr_busy_until(&peer->stop, INT64_MAX);
    cpr_signal_ack = NULL;
    return NULL;
}

int cpr_signal_roundtrip(int partner_cpu, int signo, int64_t *samples, size_t count, size_t warmup,
                         int64_t timeout_ns) {
    struct sigaction sa, old;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = cpr_raw_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(signo, NULL, &old) != 0) return errno;
    if ((old.sa_flags & SA_SIGINFO) || (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN)) return EBUSY;
    if (sigaction(signo, &sa, NULL) != 0) return errno;

    int rc = 0;
    signal_peer_t *peer = cpr_alloc_lines(sizeof(signal_peer_t));
    if (peer == NULL) { rc = errno; sigaction(signo, &old, NULL); return rc; }
    peer->signo = signo;
    pthread_t target;
    rc = cpr_start_pinned(&target, partner_cpu, signal_target, peer);
    if (rc != 0) { cpr_free(peer); sigaction(signo, &old, NULL); return rc; }

    int64_t start = cpr_now_ns();
    for (uint32_t spins = 0; __atomic_load_n(&peer->ready, __ATOMIC_ACQUIRE) == 0; spins++) {
        cpr_spin_step(spins);
        if (cpr_now_ns() - start >= timeout_ns) { rc = ETIMEDOUT; break; }
    }
    pid_t pid = getpid();
    pid_t tid = __atomic_load_n(&peer->tid, __ATOMIC_RELAXED);
    for (size_t i = 0; rc == 0 && i < warmup + count; i++) {
        uint64_t old_ack = __atomic_load_n(&peer->ack, __ATOMIC_RELAXED);
        int64_t t0 = cpr_now_ns();
        if (syscall(SYS_tgkill, pid, tid, signo) != 0) { rc = errno; break; }
        if (cpr_wait_change(&peer->ack, old_ack, timeout_ns) != 0) { rc = ETIMEDOUT; break; }   // Q2
        int64_t t1 = cpr_now_ns();
        if (i >= warmup) samples[i - warmup] = t1 - t0;
    }
    __atomic_store_n(&peer->stop, 1, __ATOMIC_RELEASE);   // Q3
    pthread_join(target, NULL);
    // Every signal was acknowledged (or timed out and the target has now left): nothing is pending for the handler.
    sigaction(signo, &old, NULL);
    cpr_free(peer);
    return rc;
}

// MARK: futex wake round trip

typedef struct futex_peer {
    _Alignas(CPR_LINE) uint32_t word;      // the futex word: 1 = wake up
    char pad0[CPR_LINE - sizeof(uint32_t)];
    _Alignas(CPR_LINE) uint32_t waiting;   // 1 while the wakee is (about to be) blocked on `word`
    uint32_t stop;
    char pad1[CPR_LINE - 2 * sizeof(uint32_t)];
    _Alignas(CPR_LINE) uint64_t ack;       // incremented by the wakee once woken
    char pad2[CPR_LINE - sizeof(uint64_t)];
} futex_peer_t;

static void *futex_wakee(void *arg) {
    futex_peer_t *peer = arg;
    for (;;) {
        __atomic_store_n(&peer->waiting, 1, __ATOMIC_RELEASE);   // Q4
        cpr_futex_sleep_until_set(&peer->word);   // Acquire: Q4, partner of the caller's release store of `word`
        __atomic_store_n(&peer->waiting, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&peer->word, 0, __ATOMIC_RELAXED);   // published by the release below
        if (__atomic_load_n(&peer->stop, __ATOMIC_ACQUIRE)) return NULL;   // Q3
        cpr_bump_release_u64(&peer->ack);   // Release: Q2
    }
}

int cpr_futex_roundtrip(int partner_cpu, int64_t settle_ns, int64_t *samples, size_t count, size_t warmup,
                        int64_t timeout_ns) {
    futex_peer_t *peer = cpr_alloc_lines(sizeof(futex_peer_t));
    if (peer == NULL) return errno;
    pthread_t wakee;
    int rc = cpr_start_pinned(&wakee, partner_cpu, futex_wakee, peer);
    if (rc != 0) { cpr_free(peer); return rc; }
    for (size_t i = 0; i < warmup + count; i++) {
        // Wait until the wakee announced it waits (acquire: Q4), then let it fall asleep in the kernel.
        int64_t start = cpr_now_ns();
        for (uint32_t spins = 0; __atomic_load_n(&peer->waiting, __ATOMIC_ACQUIRE) == 0; spins++) {
            cpr_spin_step(spins);
            if (cpr_now_ns() - start >= timeout_ns) { rc = ETIMEDOUT; break; }
        }
        if (rc != 0) break;
        int64_t settled = cpr_now_ns() + settle_ns;
        for (uint32_t spins = 0; cpr_now_ns() < settled; spins++) cpr_spin_step(spins);

        uint64_t old_ack = __atomic_load_n(&peer->ack, __ATOMIC_RELAXED);
        int64_t t0 = cpr_now_ns();
        __atomic_store_n(&peer->word, 1, __ATOMIC_RELEASE);   // Q4
        cpr_futex_wake(&peer->word, 1);
        if (cpr_wait_change(&peer->ack, old_ack, timeout_ns) != 0) { rc = ETIMEDOUT; break; }   // Q2
        int64_t t1 = cpr_now_ns();
        if (i >= warmup) samples[i - warmup] = t1 - t0;
    }
    __atomic_store_n(&peer->stop, 1, __ATOMIC_RELEASE);   // Q3
    __atomic_store_n(&peer->word, 1, __ATOMIC_RELEASE);
    cpr_futex_wake(&peer->word, 1);
    pthread_join(wakee, NULL);
    cpr_free(peer);
    return rc;
}

// MARK: membarrier (peer of stop_machine)

typedef struct membarrier_peer {
    _Alignas(CPR_LINE) uint32_t stop;      // 1: partners leave (also the sleeping partners' futex word)
    char pad0[CPR_LINE - sizeof(uint32_t)];
    _Alignas(CPR_LINE) uint32_t started;   // partners that spin, or are about to block
    char pad1[CPR_LINE - sizeof(uint32_t)];
} membarrier_peer_t;

static void *membarrier_spinner(void *arg) {
    membarrier_peer_t *peer = arg;
    __atomic_fetch_add(&peer->started, 1, __ATOMIC_RELEASE);   // Q5
    cpr_busy_until(&peer->stop, INT64_MAX);                     // Q3
    return NULL;
}

static void *membarrier_sleeper(void *arg) {
    membarrier_peer_t *peer = arg;
    __atomic_fetch_add(&peer->started, 1, __ATOMIC_RELEASE);   // Q5
    cpr_futex_sleep_until_set(&peer->stop);   // Acquire: Q3
    return NULL;
}

int cpr_membarrier_register(void) {
    return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 ? 0 : errno;
}

int cpr_membarrier_rounds(const int *cpus, size_t threads, bool spinning, int64_t settle_ns, int64_t *samples,
                          size_t count, size_t warmup, int64_t timeout_ns) {
    if (threads < 1 || threads > CPR_MAX_THREADS) return EINVAL;
    membarrier_peer_t *peer = cpr_alloc_lines(sizeof(membarrier_peer_t));
    if (peer == NULL) return errno;
    pthread_t partners[CPR_MAX_THREADS];
    size_t started = 0;
    int rc = 0;
    for (size_t i = 1; i < threads; i++) {
        rc = cpr_start_pinned(&partners[i], cpus[i], spinning ? membarrier_spinner : membarrier_sleeper, peer);
        if (rc != 0) break;
        started = i;
    }
    int64_t start = cpr_now_ns();
    for (uint32_t spins = 0; rc == 0 && __atomic_load_n(&peer->started, __ATOMIC_ACQUIRE) < threads - 1; spins++) {
        cpr_spin_step(spins);   // Q5
        if (cpr_now_ns() - start >= timeout_ns) rc = ETIMEDOUT;
    }
    if (rc == 0 && !spinning) {
        int64_t settled = cpr_now_ns() + settle_ns;
        for (uint32_t spins = 0; cpr_now_ns() < settled; spins++) cpr_spin_step(spins);
    }
    for (size_t i = 0; rc == 0 && i < warmup + count; i++) {
        int64_t t0 = cpr_now_ns();
        if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) { rc = errno; break; }
        int64_t t1 = cpr_now_ns();
        if (i >= warmup) samples[i - warmup] = t1 - t0;
    }
    __atomic_store_n(&peer->stop, 1, __ATOMIC_RELEASE);   // Q3
    cpr_futex_wake(&peer->stop, INT32_MAX);
    for (size_t i = 1; i <= started; i++) pthread_join(partners[i], NULL);
    cpr_free(peer);
    return rc;
}

// MARK: pthread_create + pthread_join (peer of attach / detach)

static void *trivial_thread(void *arg) { return arg; }

int cpr_thread_create_join(int partner_cpu, int64_t *samples, size_t count, size_t warmup) {
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);
    if (rc != 0) return rc;
    if (partner_cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(partner_cpu, &set);
        (void)pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
    }
    for (size_t i = 0; i < warmup + count; i++) {
        pthread_t thread;
        int64_t t0 = cpr_now_ns();
        rc = pthread_create(&thread, &attr, trivial_thread, NULL);
        if (rc != 0) break;
        rc = pthread_join(thread, NULL);
        int64_t t1 = cpr_now_ns();
        if (rc != 0) break;
        if (i >= warmup) samples[i - warmup] = t1 - t0;
    }
    pthread_attr_destroy(&attr);
    return rc;
}

// MARK: a thread parked in futex_wait (peer of "parked CPU time")

struct cpr_parked_thread {
    _Alignas(CPR_LINE) uint32_t stop;   // the futex word: 1 = leave
    char pad0[CPR_LINE - sizeof(uint32_t)];
    _Alignas(CPR_LINE) pid_t tid;       // the thread's kernel id; 0 until it runs
    char pad1[CPR_LINE - sizeof(pid_t)];
    pthread_t thread;
};

static void *parked_thread(void *arg) {
    cpr_parked_thread_t *parked = arg;
    __atomic_store_n(&parked->tid, cpr_gettid(), __ATOMIC_RELEASE);   // Q6
    cpr_futex_sleep_until_set(&parked->stop);                          // Acquire: Q3
    return NULL;
}

int cpr_parked_start(int cpu, cpr_parked_thread_t **out) {
    cpr_parked_thread_t *parked = cpr_alloc_lines(sizeof(cpr_parked_thread_t));
    if (parked == NULL) return errno;
    int rc = cpr_start_pinned(&parked->thread, cpu, parked_thread, parked);
    if (rc != 0) { cpr_free(parked); return rc; }
    *out = parked;
    return 0;
}

pid_t cpr_parked_tid(const cpr_parked_thread_t *parked) {
    return __atomic_load_n(&parked->tid, __ATOMIC_ACQUIRE);   // Q6
}

void cpr_parked_stop(cpr_parked_thread_t *parked) {
    __atomic_store_n(&parked->stop, 1, __ATOMIC_RELEASE);   // Q3
    cpr_futex_wake(&parked->stop, 1);
    pthread_join(parked->thread, NULL);
    cpr_free(parked);
}

int cpr_thread_cpu_ns(pid_t tid, int64_t *ns) {
    char path[64], text[128];
    snprintf(path, sizeof(path), "/proc/self/task/%d/schedstat", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    ssize_t length = read(fd, text, sizeof(text) - 1);
    int rc = length < 0 ? errno : 0;
    close(fd);
    if (rc != 0) return rc;
    text[length] = 0;
    char *end = NULL;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno != 0 || end == text || value < 0) return EINVAL;
    *ns = (int64_t)value;
    return 0;
}
