// Affinity masks for the follow figure: reading one thread's mask and giving every thread of the process the same
// mask, as `taskset -a -p` does (one sched_setaffinity per entry of /proc/self/task).
#include "CPeers.h"

#include <dirent.h>
#include <stdlib.h>

/// The largest CPU number these helpers handle (their masks are CPU_ALLOC'd for this many).
enum { CPR_MAX_CPUS = 8192 };

int cpr_affinity_get(pid_t tid, int *cpus, size_t capacity, size_t *count) {
    size_t size = CPU_ALLOC_SIZE(CPR_MAX_CPUS);
    cpu_set_t *set = CPU_ALLOC(CPR_MAX_CPUS);
    if (set == NULL) return ENOMEM;
    CPU_ZERO_S(size, set);
    int rc = sched_getaffinity(tid, size, set) == 0 ? 0 : errno;
    size_t found = 0;
    for (int cpu = 0; rc == 0 && cpu < CPR_MAX_CPUS; cpu++) {
        if (!CPU_ISSET_S(cpu, size, set)) continue;
        if (found == capacity) { rc = ERANGE; break; }
        cpus[found++] = cpu;
    }
    CPU_FREE(set);
    if (rc == 0) *count = found;
    return rc;
}

int cpr_affinity_set_every_thread(const int *cpus, size_t count, size_t *threads) {
    if (count == 0) return EINVAL;
    size_t size = CPU_ALLOC_SIZE(CPR_MAX_CPUS);
    cpu_set_t *set = CPU_ALLOC(CPR_MAX_CPUS);
    if (set == NULL) return ENOMEM;
    CPU_ZERO_S(size, set);
    for (size_t i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPR_MAX_CPUS) { CPU_FREE(set); return EINVAL; }
        CPU_SET_S(cpus[i], size, set);
    }
    DIR *tasks = opendir("/proc/self/task");
    if (tasks == NULL) {
        int rc = errno;
        CPU_FREE(set);
        return rc;
    }
    int rc = 0;
    size_t changed = 0;
    for (struct dirent *entry; (entry = readdir(tasks)) != NULL;) {
        char *end = NULL;
        long tid = strtol(entry->d_name, &end, 10);
        if (end == entry->d_name || *end != 0 || tid <= 0) continue;   // "." and ".."
        if (sched_setaffinity((pid_t)tid, size, set) != 0) {
            if (errno == ESRCH) continue;   // it exited meanwhile
            rc = errno;
            break;
        }
        changed++;
    }
    closedir(tasks);
    CPU_FREE(set);
    if (rc == 0 && threads != NULL) *threads = changed;
    return rc;
}
