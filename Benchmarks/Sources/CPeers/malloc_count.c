// Counts calls to the C library's allocating functions with uprobe perf events (linux/perf_event.h, the "uprobe"
// PMU): `config1` names the library file, `config2` the file offset of the function's entry. A counter belongs to one
// thread (perf_event_open with that tid, any CPU), so the kernel installs the breakpoint only in this process and
// every call from that thread counts exactly once; reading it is one read(2). This needs the privilege to create
// uprobes (root, or CAP_PERFMON + CAP_SYS_ADMIN); without it the executor figures' malloc rows say so.
#include "CPeers.h"
#include "malloc_count.h"

#include <dirent.h>
#include <dlfcn.h>
#include <link.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { CPR_MCOUNT_MAX_PROBES = 8, CPR_MCOUNT_MAX_THREADS = 1024 };

struct cpr_probe {
    char path[512];
    uint64_t offset;
    bool aligned;   // posix_memalign, aligned_alloc, memalign
};

// One user at a time (the runner measures one figure at a time); not thread-safe by design.
static struct cpr_probe probes[CPR_MCOUNT_MAX_PROBES];
static int probe_count = -1;   // -1: not prepared
static int uprobe_type = -1;
static int counter_fds[CPR_MCOUNT_MAX_COUNTERS];
static bool counter_aligned[CPR_MCOUNT_MAX_COUNTERS];
static int counter_count = 0;
static pid_t covered[CPR_MCOUNT_MAX_THREADS];
static int covered_count = 0;

struct cpr_segment_query {
    const char *file;
    uintptr_t vaddr;
    uint64_t offset;
    int found;
};

/// dl_iterate_phdr callback: the file offset of `vaddr` (relative to the object's load base) in the PT_LOAD segment
/// of `file` that maps it.
static int cpr_find_segment(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct cpr_segment_query *query = data;
    if (info->dlpi_name == NULL || strcmp(info->dlpi_name, query->file) != 0) return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *segment = &info->dlpi_phdr[i];
        if (segment->p_type != PT_LOAD) continue;
        if (query->vaddr >= segment->p_vaddr && query->vaddr < segment->p_vaddr + segment->p_memsz) {
            query->offset = query->vaddr - segment->p_vaddr + segment->p_offset;
            query->found = 1;
            return 1;
        }
    }
    return 0;
}

int cpr_mcount_prepare(void) {
    if (probe_count >= 0) return 0;
    FILE *file = fopen("/sys/bus/event_source/devices/uprobe/type", "r");
    if (file == NULL) return ENOENT;
    int type = -1;
    int scanned = fscanf(file, "%d", &type);
    fclose(file);
    if (scanned != 1 || type < 0) return ENOENT;
    // The first three allocate; the other three are counted apart (see malloc_count.h).
    static const char *const names[] = {"malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign"};
    void *seen[sizeof names / sizeof names[0]];
    int count = 0, distinct = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *entry = dlsym(RTLD_DEFAULT, names[i]);
        if (entry == NULL) continue;
        int duplicate = 0;
        for (int j = 0; j < distinct; j++) duplicate |= seen[j] == entry;
        if (duplicate) continue;   // an alias of one already probed (memalign and aligned_alloc in glibc)
        seen[distinct++] = entry;
        Dl_info info;
        if (dladdr(entry, &info) == 0 || info.dli_fname == NULL || info.dli_fname[0] != '/') return ENOENT;
        struct cpr_segment_query query = {info.dli_fname, (uintptr_t)entry - (uintptr_t)info.dli_fbase, 0, 0};
        dl_iterate_phdr(cpr_find_segment, &query);
        if (!query.found || strlen(info.dli_fname) >= sizeof probes[count].path) return ENOENT;
        strcpy(probes[count].path, info.dli_fname);
        probes[count].offset = query.offset;
        probes[count].aligned = i >= 3;
        count++;
    }
    if (count == 0) return ENOENT;
    uprobe_type = type;
    probe_count = count;
    return 0;
}

/// Opens one counter per probe for thread `tid`. Returns 0, ESRCH when the thread is gone, or an errno value.
static int cpr_mcount_open_thread(pid_t tid) {
    if (counter_count + probe_count > CPR_MCOUNT_MAX_COUNTERS || covered_count == CPR_MCOUNT_MAX_THREADS) return EMFILE;
    int opened = 0;
    for (int p = 0; p < probe_count; p++) {
        struct perf_event_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.size = sizeof attr;
        attr.type = (uint32_t)uprobe_type;
        attr.config1 = (uint64_t)(uintptr_t)probes[p].path;
        attr.config2 = probes[p].offset;
        attr.exclude_kernel = 1;
        attr.exclude_hv = 1;
        long fd = syscall(SYS_perf_event_open, &attr, tid, -1, -1, PERF_FLAG_FD_CLOEXEC);
        if (fd < 0) {
            int rc = errno;
            for (int k = 0; k < opened; k++) close(counter_fds[--counter_count]);
            return rc;
        }
        counter_aligned[counter_count] = probes[p].aligned;
        counter_fds[counter_count++] = (int)fd;
        opened++;
    }
    covered[covered_count++] = tid;
    return 0;
}

int cpr_mcount_cover_threads(void) {
    if (probe_count < 0) {
        int rc = cpr_mcount_prepare();
        if (rc != 0) return rc;
    }
    DIR *tasks = opendir("/proc/self/task");
    if (tasks == NULL) return errno;
    int rc = 0;
    for (struct dirent *entry; (entry = readdir(tasks)) != NULL;) {
        char *end = NULL;
        long tid = strtol(entry->d_name, &end, 10);
        if (end == entry->d_name || *end != 0 || tid <= 0) continue;   // "." and ".."
        int known = 0;
        for (int i = 0; i < covered_count && !known; i++) known = covered[i] == (pid_t)tid;
        if (known) continue;
        rc = cpr_mcount_open_thread((pid_t)tid);
        if (rc == ESRCH) { rc = 0; continue; }   // it ended meanwhile
        if (rc != 0) break;
    }
    closedir(tasks);
    return rc;
}

uint64_t cpr_mcount_read(bool aligned) {
    uint64_t total = 0;
    for (int i = 0; i < counter_count; i++) {
        if (counter_aligned[i] != aligned) continue;
        uint64_t value = 0;
        if (read(counter_fds[i], &value, sizeof value) == (ssize_t)sizeof value) total += value;
    }
    return total;
}

void cpr_mcount_coverage(int *threads, int *counters) {
    *threads = covered_count;
    *counters = counter_count;
}

/// Closing a uprobe counter waits for the kernel's grace period (about 100 ms here), so the counters are closed by
/// up to CPR_MCOUNT_CLOSERS threads at once: their waits overlap, and closing them all takes about one period.
enum { CPR_MCOUNT_CLOSERS = 64 };

struct cpr_close_share {
    int first;
    int count;
};

static void *cpr_close_share_main(void *arg) {
    const struct cpr_close_share *share = arg;
    for (int i = share->first; i < share->first + share->count; i++) close(counter_fds[i]);
    return NULL;
}

void cpr_mcount_close(void) {
    pthread_t threads[CPR_MCOUNT_CLOSERS];
    bool started[CPR_MCOUNT_CLOSERS];
    struct cpr_close_share shares[CPR_MCOUNT_CLOSERS];
    int closers = counter_count < CPR_MCOUNT_CLOSERS ? counter_count : CPR_MCOUNT_CLOSERS;
    int next = 0;
    for (int t = 0; t < closers; t++) {
        int count = counter_count / closers + (t < counter_count % closers ? 1 : 0);
        shares[t] = (struct cpr_close_share){next, count};
        next += count;
        started[t] = pthread_create(&threads[t], NULL, cpr_close_share_main, &shares[t]) == 0;
        if (!started[t]) cpr_close_share_main(&shares[t]);   // no thread: close this share here
    }
    for (int t = 0; t < closers; t++) {
        if (started[t]) pthread_join(threads[t], NULL);
    }
    counter_count = 0;
    covered_count = 0;
}
