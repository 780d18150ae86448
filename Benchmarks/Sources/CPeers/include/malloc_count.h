// Counting the process's allocations without interposing malloc: a uprobe perf event on the entry of each of the C
// library's allocating functions, opened for every thread of the process (see malloc_count.c). Used by the
// executor figures' malloc rows; nothing else in the runner is touched (no LD_PRELOAD, no symbol of ours named
// malloc), so the other figures and the malloc peers' child processes run exactly as before.
//
// House rules as in CPeers.h: `cpr_` prefix, each prototype says how it fails, C never exits or aborts.
#ifndef CPEERS_MALLOC_COUNT_H
#define CPEERS_MALLOC_COUNT_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Resolves the entries of the allocator's malloc, calloc, realloc, posix_memalign, aligned_alloc and memalign
/// (each address once: aliases count once) and the kernel's uprobe event type. Idempotent.
/// Returns 0, or an errno value: ENOENT (no uprobe PMU, or a symbol without a file), and perf_event_open's errors
/// once a counter is opened (EACCES/EPERM without CAP_PERFMON or CAP_SYS_ADMIN).
int cpr_mcount_prepare(void);

/// Opens counters for every thread of the process that has none yet (an entry of /proc/self/task). Call it
/// between samples: it allocates itself (opendir), so a sample starts with `cpr_mcount_read` after it. Threads that
/// appear later are counted from the next call on. Returns 0, or an errno value (opendir's, perf_event_open's,
/// EMFILE past CPR_MCOUNT_MAX_COUNTERS counters); a thread that ended meanwhile is skipped.
int cpr_mcount_cover_threads(void);

/// The calls counted so far, summed over every counter (a thread that ended keeps its final count): entries into
/// malloc, calloc and realloc (`aligned` false: the allocations), or into posix_memalign, aligned_alloc and memalign
/// (`aligned` true). glibc relays an aligned request of at most 16 bytes' alignment to its own malloc entry, which
/// counts it among the allocations already; so the aligned entries are reported apart, never added (a larger
/// alignment, which glibc serves without that entry, would show up there alone). Allocates nothing. A counter that
/// cannot be read adds 0.
uint64_t cpr_mcount_read(bool aligned);

/// The number of threads and of counters open now. Cannot fail.
void cpr_mcount_coverage(int *threads, int *counters);

/// Closes every counter (the next cover starts from scratch). Cannot fail.
void cpr_mcount_close(void);

/// The most counters open at once (threads x probed functions).
enum { CPR_MCOUNT_MAX_COUNTERS = 4096 };

#ifdef __cplusplus
}
#endif
#endif
