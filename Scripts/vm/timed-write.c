// timed-write PATH VALUE: writes VALUE to PATH in one write(2), like `echo VALUE > PATH`, and prints when the write
// started and when it returned, in CLOCK_MONOTONIC nanoseconds: `start_ns=N end_ns=N`. The VM harness's guest
// uses it to compare a kernel change (a CPU offline, a cpuset write) with the runtime's follow-event timestamps,
// which use the same clock. Exits 1 with the error when the file cannot be opened or the write fails.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: timed-write PATH VALUE\n");
        return 2;
    }
    int fd = open(argv[1], O_WRONLY);
    if (fd < 0) {
        fprintf(stderr, "timed-write: open %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    size_t length = strlen(argv[2]);
    long long start = now_ns();
    ssize_t written = write(fd, argv[2], length);
    long long end = now_ns();
    int saved = errno;
    close(fd);
    if (written != (ssize_t)length) {
        fprintf(stderr, "timed-write: write %s to %s: %s\n", argv[2], argv[1], written < 0 ? strerror(saved) : "short write");
        return 1;
    }
    printf("start_ns=%lld end_ns=%lld\n", start, end);
    return 0;
}
