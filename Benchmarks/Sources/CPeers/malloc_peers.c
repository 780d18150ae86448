// The malloc peers of the slab figures (glibc malloc, jemalloc, tcmalloc), and what it takes to run each in a
// process of its own: the child is this runner again, started with LD_PRELOAD naming the allocator (none for
// glibc), and it checks which library really serves malloc before it measures.
//
// The loops call plain malloc / free: whichever allocator the process's symbol lookup resolves (the LD_PRELOAD
// library first). Samples are in picoseconds per operation (a batch's time * 1000 / its size).
//
// Memory-ordering map (every pair names its partner):
// - M1 start gate: each thread's release increment of `arrived`, partner of the acquire loads in the others'
//   cpr_wait_at_least (so that every thread starts its timed loop together).
// - M2 hand-off: the producer's release increment of `handed`, partner of the consumer's acquire load: it publishes
//   the ring's pointers (and, on failure, `abort`, stored before it).
// - M3 freed: the consumer's release increment of `freed`, partner of the producer's acquire load: the consumer
//   has read the ring, which may be refilled.
#include "CPeers.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <gnu/libc-version.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define CPR_LINE 64

// MARK: Alloc+free pairs

typedef struct pair_run {
    _Alignas(CPR_LINE) uint64_t arrived;   // threads at the start gate (M1)
    char pad0[CPR_LINE - sizeof(uint64_t)];
    size_t threads;
    size_t size;
    size_t batch;
    size_t warmup;
    int64_t timeout_ns;
    const size_t *counts;
    int64_t *samples;
} pair_run_t;

typedef struct pair_thread {
    pair_run_t *run;
    size_t index;
    int rc;
} pair_thread_t;

static int pair_loop(pair_run_t *run, size_t index) {
    int64_t *out = run->samples;
    for (size_t i = 0; i < index; i++) out += run->counts[i];
    size_t count = run->counts[index];
    cpr_bump_release_u64(&run->arrived);   // Release: M1
    // Acquire: M1.
    if (cpr_wait_at_least(&run->arrived, run->threads, run->timeout_ns) != 0) return ETIMEDOUT;
    for (size_t i = 0; i < run->warmup + count; i++) {
        int64_t t0 = cpr_now_ns();
        for (size_t j = 0; j < run->batch; j++) {
            void *object = malloc(run->size);
            if (object == NULL) return ENOMEM;
            // The pointer escapes into an empty asm statement, so that the pair cannot be folded away.
            __asm__ __volatile__("" : : "r"(object) : "memory");
            free(object);
        }
        int64_t t1 = cpr_now_ns();
        if (i >= run->warmup) out[i - run->warmup] = (t1 - t0) * 1000 / (int64_t)run->batch;
    }
    return 0;
}

static void *pair_partner(void *arg) {
    pair_thread_t *thread = arg;
    thread->rc = pair_loop(thread->run, thread->index);
    return NULL;
}

int cpr_malloc_pairs(const int *cpus, size_t threads, size_t size, size_t batch, int64_t *samples,
                     const size_t *counts, size_t warmup, int64_t timeout_ns) {
    if (threads < 1 || threads > CPR_MAX_THREADS || batch < 1) return EINVAL;
    pair_run_t *run = cpr_alloc_lines(sizeof(pair_run_t));
    pair_thread_t *partners = calloc(threads, sizeof(pair_thread_t));
    pthread_t *handles = calloc(threads, sizeof(pthread_t));
    if (run == NULL || partners == NULL || handles == NULL) {
        cpr_free(run);
        free(partners);
        free(handles);
        return ENOMEM;
    }
    run->threads = threads;
    run->size = size;
    run->batch = batch;
    run->warmup = warmup;
    run->timeout_ns = timeout_ns;
    run->counts = counts;
    run->samples = samples;
    int rc = 0;
    size_t started = 1;
    for (; started < threads; started++) {
        partners[started] = (pair_thread_t){ .run = run, .index = started };
        rc = cpr_start_pinned(&handles[started], cpus[started], pair_partner, &partners[started]);
        if (rc != 0) break;   // the partners already started time out at the gate
    }
    int mine = pair_loop(run, 0);
    for (size_t i = 1; i < started; i++) {
        pthread_join(handles[i], NULL);
        if (rc == 0) rc = partners[i].rc;
    }
    if (rc == 0) rc = mine;
    cpr_free(run);
    free(partners);
    free(handles);
    return rc;
}

// MARK: Alloc here, free there

typedef struct remote_run {
    _Alignas(CPR_LINE) uint64_t handed;   // rounds handed to the consumer (M2)
    char pad0[CPR_LINE - sizeof(uint64_t)];
    _Alignas(CPR_LINE) uint64_t freed;    // rounds the consumer freed (M3)
    char pad1[CPR_LINE - sizeof(uint64_t)];
    _Alignas(CPR_LINE) uint32_t abort;    // set before the last hand-off when the producer gives up (M2)
    int rc;                               // the consumer's result
    size_t batch;
    size_t rounds;
    int64_t timeout_ns;
    void **ring;
} remote_run_t;

static void *remote_consumer(void *arg) {
    remote_run_t *run = arg;
    for (uint64_t round = 1; round <= run->rounds; round++) {
        // Acquire: M2.
        if (cpr_wait_at_least(&run->handed, round, run->timeout_ns) != 0) { run->rc = ETIMEDOUT; return NULL; }
        if (__atomic_load_n(&run->abort, __ATOMIC_RELAXED)) return NULL;   // ordered by M2's acquire
        for (size_t j = 0; j < run->batch; j++) free(run->ring[j]);
        cpr_bump_release_u64(&run->freed);   // Release: M3
    }
    return NULL;
}

int cpr_malloc_remote_rounds(int consumer_cpu, size_t size, size_t batch, int64_t *samples, size_t count,
                             size_t warmup, int64_t timeout_ns) {
    if (batch < 1) return EINVAL;
    remote_run_t *run = cpr_alloc_lines(sizeof(remote_run_t));
    void **ring = calloc(batch, sizeof(void *));
    if (run == NULL || ring == NULL) {
        cpr_free(run);
        free(ring);
        return ENOMEM;
    }
    run->batch = batch;
    run->rounds = warmup + count;
    run->timeout_ns = timeout_ns;
    run->ring = ring;
    pthread_t consumer;
    int rc = cpr_start_pinned(&consumer, consumer_cpu, remote_consumer, run);
    if (rc != 0) {
        cpr_free(run);
        free(ring);
        return rc;
    }
    for (size_t i = 0; i < warmup + count; i++) {
        int64_t t0 = cpr_now_ns();
        for (size_t j = 0; j < batch; j++) {
            void *object = malloc(size);
            if (object == NULL) {
                for (size_t k = 0; k < j; k++) free(ring[k]);
                rc = ENOMEM;
                break;
            }
            ring[j] = object;
        }
        if (rc != 0) break;
        cpr_bump_release_u64(&run->handed);   // Release: M2
        // Acquire: M3.
        if (cpr_wait_at_least(&run->freed, i + 1, timeout_ns) != 0) { rc = ETIMEDOUT; break; }
        int64_t t1 = cpr_now_ns();
        if (i >= warmup) samples[i - warmup] = (t1 - t0) * 1000 / (int64_t)batch;
    }
    if (rc != 0) {
        __atomic_store_n(&run->abort, 1, __ATOMIC_RELAXED);   // published by the release increment below (M2)
        cpr_bump_release_u64(&run->handed);
    }
    pthread_join(consumer, NULL);
    if (rc == 0) rc = run->rc;
    cpr_free(run);
    free(ring);
    return rc;
}

// MARK: Which malloc

bool cpr_dynamically_linked(void) { return getauxval(AT_BASE) != 0; }

const char *cpr_malloc_provider(void) {
    void *symbol = dlsym(RTLD_DEFAULT, "malloc");
    Dl_info info;
    if (symbol == NULL || dladdr(symbol, &info) == 0 || info.dli_fname == NULL) return NULL;
    return info.dli_fname;
}

void cpr_malloc_version(char *buffer, size_t length) {
    if (length == 0) return;
    typedef int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t);
    typedef const char *(*tc_version_fn)(int *, int *, const char **);
    mallctl_fn mallctl = (mallctl_fn)dlsym(RTLD_DEFAULT, "mallctl");
    if (mallctl != NULL) {
        const char *version = NULL;
        size_t size = sizeof(version);
        if (mallctl("version", &version, &size, NULL, 0) == 0 && version != NULL) {
            snprintf(buffer, length, "jemalloc %s", version);
            return;
        }
    }
    tc_version_fn tc_version = (tc_version_fn)dlsym(RTLD_DEFAULT, "tc_version");
    if (tc_version != NULL) {
        int major = 0, minor = 0;
        const char *patch = NULL;
        const char *version = tc_version(&major, &minor, &patch);
        snprintf(buffer, length, "tcmalloc (%s)", version != NULL ? version : "gperftools");
        return;
    }
    snprintf(buffer, length, "glibc %s", gnu_get_libc_version());
}

// MARK: Child processes

int cpr_spawn_child(const char *path, char *const argv[], const char *preload, pid_t *pid, int *stdout_fd) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return errno;
    size_t entries = 0;
    for (char **entry = environ; *entry != NULL; entry++) entries++;
    char **environment = calloc(entries + 2, sizeof(char *));
    char *preloadEntry = NULL;
    if (environment == NULL
        || (preload != NULL && asprintf(&preloadEntry, "LD_PRELOAD=%s", preload) < 0)) {
        free(environment);
        close(fds[0]);
        close(fds[1]);
        return ENOMEM;
    }
    size_t used = 0;
    for (char **entry = environ; *entry != NULL; entry++) {
        if (strncmp(*entry, "LD_PRELOAD=", 11) != 0) environment[used++] = *entry;
    }
    if (preloadEntry != NULL) environment[used++] = preloadEntry;
    environment[used] = NULL;
    posix_spawn_file_actions_t actions;
    int rc = posix_spawn_file_actions_init(&actions);
    if (rc == 0) {
        rc = posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
        if (rc == 0) rc = posix_spawn(pid, path, &actions, NULL, argv, environment);
        posix_spawn_file_actions_destroy(&actions);
    }
    free(preloadEntry);
    free(environment);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        return rc;
    }
    *stdout_fd = fds[0];
    return 0;
}

int cpr_wait_child(pid_t pid, int *status) {
    int raw = 0;
    pid_t rc;
    do { rc = waitpid(pid, &raw, 0); } while (rc < 0 && errno == EINTR);
    if (rc < 0) return errno;
    *status = WIFEXITED(raw) ? WEXITSTATUS(raw) : WIFSIGNALED(raw) ? 128 + WTERMSIG(raw) : 255;
    return 0;
}

void cpr_die_with_parent(void) { (void)prctl(PR_SET_PDEATHSIG, SIGKILL); }
