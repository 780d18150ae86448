// The barrier peers: glibc pthread_barrier_wait and, where installed, Concurrency Kit's barriers.
//
// Concurrency Kit is optional. Its header decides at build time (__has_include); its library is opened at run time
// (dlopen), so a machine without it builds and runs the rest, and reports the ck peers as not available.
#include "CPeers.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if __has_include(<ck_barrier.h>)
#include <ck_barrier.h>
#include <dlfcn.h>
#define CPR_HAVE_CK 1
#else
#define CPR_HAVE_CK 0
#endif

#if CPR_HAVE_CK
typedef struct ck_api {
    int loaded;   // 0 not tried, 1 loaded, -1 not available
    __typeof__(ck_barrier_centralized) *centralized;
    __typeof__(ck_barrier_dissemination_init) *dissemination_init;
    __typeof__(ck_barrier_dissemination_subscribe) *dissemination_subscribe;
    __typeof__(ck_barrier_dissemination_size) *dissemination_size;
    __typeof__(ck_barrier_dissemination) *dissemination;
    __typeof__(ck_barrier_tournament_init) *tournament_init;
    __typeof__(ck_barrier_tournament_subscribe) *tournament_subscribe;
    __typeof__(ck_barrier_tournament_size) *tournament_size;
    __typeof__(ck_barrier_tournament) *tournament;
    __typeof__(ck_barrier_mcs_init) *mcs_init;
    __typeof__(ck_barrier_mcs_subscribe) *mcs_subscribe;
    __typeof__(ck_barrier_mcs) *mcs;
} ck_api_t;

static ck_api_t ck;
static pthread_once_t ck_once = PTHREAD_ONCE_INIT;

static void ck_load(void) {
    void *lib = dlopen("libck.so.0", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) lib = dlopen("libck.so", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) { ck.loaded = -1; return; }
#define CPR_CK_SYM(field, name) \
    if ((ck.field = (__typeof__(ck.field))dlsym(lib, name)) == NULL) { ck.loaded = -1; return; }
    CPR_CK_SYM(centralized, "ck_barrier_centralized")
    CPR_CK_SYM(dissemination_init, "ck_barrier_dissemination_init")
    CPR_CK_SYM(dissemination_subscribe, "ck_barrier_dissemination_subscribe")
    CPR_CK_SYM(dissemination_size, "ck_barrier_dissemination_size")
    CPR_CK_SYM(dissemination, "ck_barrier_dissemination")
    CPR_CK_SYM(tournament_init, "ck_barrier_tournament_init")
    CPR_CK_SYM(tournament_subscribe, "ck_barrier_tournament_subscribe")
    CPR_CK_SYM(tournament_size, "ck_barrier_tournament_size")
    CPR_CK_SYM(tournament, "ck_barrier_tournament")
    CPR_CK_SYM(mcs_init, "ck_barrier_mcs_init")
    CPR_CK_SYM(mcs_subscribe, "ck_barrier_mcs_subscribe")
    CPR_CK_SYM(mcs, "ck_barrier_mcs")
#undef CPR_CK_SYM
    ck.loaded = 1;   // published by pthread_once
}

static bool ck_available(void) {
    pthread_once(&ck_once, ck_load);
    return ck.loaded == 1;
}
#endif

bool cpr_barrier_available(cpr_barrier_kind_t kind) {
    switch (kind) {
    case CPR_BARRIER_PTHREAD:
        return true;
    case CPR_BARRIER_CK_CENTRALIZED:
    case CPR_BARRIER_CK_DISSEMINATION:
    case CPR_BARRIER_CK_TOURNAMENT:
    case CPR_BARRIER_CK_MCS:
#if CPR_HAVE_CK
        return ck_available();
#else
        return false;
#endif
    }
    return false;
}

// The shared part of one run. Each thread keeps its barrier state on its own stack (Concurrency Kit's split).
typedef struct barrier_run {
    cpr_barrier_kind_t kind;
    unsigned threads;
    size_t episodes;
    pthread_barrier_t pthread;
#if CPR_HAVE_CK
    _Alignas(64) ck_barrier_centralized_t centralized;
    ck_barrier_dissemination_t *dissemination;              // `threads` of them
    ck_barrier_dissemination_flag_t **dissemination_flags;  // `threads` arrays
    ck_barrier_tournament_t tournament;
    ck_barrier_tournament_round_t **tournament_rounds;      // `threads` arrays
    ck_barrier_mcs_t *mcs;                                  // `threads` of them
#endif
} barrier_run_t;

// Runs `warmup + count` episodes; takes the clock after each when `samples` is non-NULL.
static void run_episodes(barrier_run_t *run, int64_t *samples, size_t count, size_t warmup) {
#if CPR_HAVE_CK
    ck_barrier_centralized_state_t centralized = CK_BARRIER_CENTRALIZED_STATE_INITIALIZER;
    ck_barrier_dissemination_state_t dissemination;
    ck_barrier_tournament_state_t tournament;
    ck_barrier_mcs_state_t mcs;
    switch (run->kind) {
    case CPR_BARRIER_CK_DISSEMINATION: ck.dissemination_subscribe(run->dissemination, &dissemination); break;
    case CPR_BARRIER_CK_TOURNAMENT: ck.tournament_subscribe(&run->tournament, &tournament); break;
    case CPR_BARRIER_CK_MCS: ck.mcs_subscribe(run->mcs, &mcs); break;
    default: break;
    }
#endif
    int64_t previous = cpr_now_ns();
    for (size_t i = 0; i < warmup + count; i++) {
        switch (run->kind) {
        case CPR_BARRIER_PTHREAD: (void)pthread_barrier_wait(&run->pthread); break;
#if CPR_HAVE_CK
        case CPR_BARRIER_CK_CENTRALIZED: ck.centralized(&run->centralized, &centralized, run->threads); break;
        case CPR_BARRIER_CK_DISSEMINATION: ck.dissemination(run->dissemination, &dissemination); break;
        case CPR_BARRIER_CK_TOURNAMENT: ck.tournament(&run->tournament, &tournament); break;
        case CPR_BARRIER_CK_MCS: ck.mcs(run->mcs, &mcs); break;
#endif
        default: break;
        }
        if (samples != NULL) {
            int64_t now = cpr_now_ns();
            if (i >= warmup) samples[i - warmup] = now - previous;
            previous = now;
        }
    }
}

static void *barrier_partner(void *arg) {
    barrier_run_t *run = arg;
    run_episodes(run, NULL, run->episodes, 0);
    return NULL;
}

static void barrier_run_free(barrier_run_t *run) {
#if CPR_HAVE_CK
    for (unsigned i = 0; i < run->threads; i++) {
        if (run->dissemination_flags != NULL) free(run->dissemination_flags[i]);
        if (run->tournament_rounds != NULL) free(run->tournament_rounds[i]);
    }
    free(run->dissemination_flags);
    free(run->tournament_rounds);
    free(run->dissemination);
    free(run->mcs);
#endif
    cpr_free(run);
}

// Allocates `threads` zeroed arrays of `size` elements of `element` bytes; false when one failed.
#if CPR_HAVE_CK
static bool alloc_arrays(void **arrays, unsigned threads, size_t size, size_t element) {
    bool ok = true;
    for (unsigned i = 0; i < threads; i++) {
        arrays[i] = calloc(size, element);
        if (arrays[i] == NULL) ok = false;
    }
    return ok;
}
#endif

int cpr_barrier_episodes(cpr_barrier_kind_t kind, const int *cpus, size_t threads, int64_t *samples, size_t count,
                         size_t warmup) {
    if (!cpr_barrier_available(kind)) return ENOTSUP;
    if (threads < 1 || threads > CPR_MAX_THREADS) return EINVAL;
    barrier_run_t *run = cpr_alloc_lines(sizeof(barrier_run_t));
    if (run == NULL) return errno;
    run->kind = kind;
    run->threads = (unsigned)threads;
    run->episodes = warmup + count;
    int rc = 0;
    switch (kind) {
    case CPR_BARRIER_PTHREAD:
        rc = pthread_barrier_init(&run->pthread, NULL, run->threads);
        break;
#if CPR_HAVE_CK
    case CPR_BARRIER_CK_CENTRALIZED:
        break;   // zeroed memory is CK_BARRIER_CENTRALIZED_INITIALIZER
    case CPR_BARRIER_CK_DISSEMINATION: {
        // As Concurrency Kit's own regression does: one barrier record per thread, `size` flags per thread.
        unsigned size = ck.dissemination_size(run->threads);
        run->dissemination = calloc(threads, sizeof(ck_barrier_dissemination_t));
        run->dissemination_flags = calloc(threads, sizeof(ck_barrier_dissemination_flag_t *));
        if (run->dissemination == NULL || run->dissemination_flags == NULL
            || !alloc_arrays((void **)run->dissemination_flags, run->threads, size,
                             sizeof(ck_barrier_dissemination_flag_t))) {
            rc = ENOMEM;
            break;
        }
        ck.dissemination_init(run->dissemination, run->dissemination_flags, run->threads);
        break;
    }
    case CPR_BARRIER_CK_TOURNAMENT: {
        unsigned size = ck.tournament_size(run->threads);
        run->tournament_rounds = calloc(threads, sizeof(ck_barrier_tournament_round_t *));
        if (run->tournament_rounds == NULL
            || !alloc_arrays((void **)run->tournament_rounds, run->threads, size,
                             sizeof(ck_barrier_tournament_round_t))) {
            rc = ENOMEM;
            break;
        }
        ck.tournament_init(&run->tournament, run->tournament_rounds, run->threads);
        break;
    }
    case CPR_BARRIER_CK_MCS:
        run->mcs = calloc(threads, sizeof(ck_barrier_mcs_t));
        if (run->mcs == NULL) { rc = ENOMEM; break; }
        ck.mcs_init(run->mcs, run->threads);
        break;
#endif
    default:
        rc = ENOTSUP;
    }
    if (rc != 0) {
        if (kind == CPR_BARRIER_PTHREAD) { cpr_free(run); return rc; }   // never initialised
        barrier_run_free(run);
        return rc;
    }

    // Partners 1..threads-1. When one cannot start (the system is out of threads or memory), the error is returned
    // and the partners already started stay in the barrier for good, with the run they use.
    pthread_t partners[CPR_MAX_THREADS];
    size_t started = 0;
    for (size_t i = 1; i < threads && rc == 0; i++) {
        pthread_attr_t attr;
        rc = pthread_attr_init(&attr);
        if (rc != 0) break;
        if (cpus[i] >= 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(cpus[i], &set);
            (void)pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
        }
        rc = pthread_create(&partners[i], &attr, barrier_partner, run);
        pthread_attr_destroy(&attr);
        if (rc == 0) started = i;
    }
    if (rc == 0) run_episodes(run, samples, count, warmup);
    for (size_t i = 1; i <= started && rc == 0; i++) pthread_join(partners[i], NULL);
    if (rc == 0) {
        if (kind == CPR_BARRIER_PTHREAD) pthread_barrier_destroy(&run->pthread);
        barrier_run_free(run);
    }
    // rc != 0: started partners still wait in the barrier; leak the run rather than free memory they use.
    return rc;
}
