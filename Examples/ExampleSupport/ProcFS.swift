import Hotplug
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the kernel says about this process's threads, read from /proc/self/task/TID (with the library's
/// ``KernelFile``): state, CPU time, affinity.
public enum ProcFS {
    public static func taskPath(_ tid: Int32, _ file: String) -> String { "/proc/self/task/\(tid)/\(file)" }

    public static func threadExists(_ tid: Int32) -> Bool { access(taskPath(tid, ""), F_OK) == 0 }

    /// The fields of /proc/self/task/TID/stat after the command name (field 3, the state, first).
    public static func statFields(_ tid: Int32) -> [Substring]? {
        guard let text = KernelFile.read(taskPath(tid, "stat")), let close = text.lastIndex(of: ")") else { return nil }
        return text[text.index(after: close)...].split(separator: " ")
    }

    /// The physical CPU the calling thread runs on: field 39 ("processor") of /proc/thread-self/stat.
    public static func currentPhysicalCPU() -> Int {
        guard let text = KernelFile.read("/proc/thread-self/stat"), let close = text.lastIndex(of: ")") else { return -1 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 36 ? Int(fields[36]) ?? -1 : -1
    }

    /// R (running), S (sleeping), D, T, Z, ... or nil when the thread is gone.
    public static func threadState(_ tid: Int32) -> Character? { statFields(tid)?.first?.first }

    public static let ticksPerSecond = Int64(sysconf(Int32(_SC_CLK_TCK)))

    /// The thread's CPU time in nanoseconds: schedstat's first field (sum_exec_runtime), else utime + stime from
    /// stat (in clock ticks).
    public static func threadCPUTime(_ tid: Int32) -> Int64? {
        threadCPUTimeWithResolution(tid)?.nanoseconds
    }

    /// The thread's CPU time and the resolution of the source it came from: 1 ns from schedstat, one clock tick
    /// from stat's utime + stime (kernels without schedstats).
    public static func threadCPUTimeWithResolution(_ tid: Int32) -> (nanoseconds: Int64, resolution: Int64)? {
        if let text = KernelFile.read(taskPath(tid, "schedstat")), let first = text.split(separator: " ").first,
           let value = Int64(first) {
            return (value, 1)
        }
        guard let fields = statFields(tid), fields.count > 12, let user = Int64(fields[11]), let system = Int64(fields[12]),
              ticksPerSecond > 0 else { return nil }
        let tick = 1_000_000_000 / ticksPerSecond
        return ((user + system) * tick, tick)
    }

    /// The CPUs of the thread's `Cpus_allowed_list` (kernel list format `0-3,8`), ascending.
    public static func cpusAllowed(_ tid: Int32) -> [Int]? {
        guard let text = KernelFile.read(taskPath(tid, "status")) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("Cpus_allowed_list:") {
            return CPUSet(parsing: String(line.dropFirst("Cpus_allowed_list:".count))).map(Array.init)
        }
        return nil
    }

    /// The thread's voluntary and involuntary context switches (`voluntary_ctxt_switches`,
    /// `nonvoluntary_ctxt_switches` in /proc/self/task/TID/status): a sleeping thread that is woken and sleeps
    /// again adds a voluntary one.
    public static func contextSwitches(_ tid: Int32) -> (voluntary: Int, involuntary: Int)? {
        guard let text = KernelFile.read(taskPath(tid, "status")) else { return nil }
        var voluntary: Int?, involuntary: Int?
        for line in text.split(separator: "\n") {
            if line.hasPrefix("voluntary_ctxt_switches:") {
                voluntary = Int(line.dropFirst("voluntary_ctxt_switches:".count).trimmingWhitespace())
            } else if line.hasPrefix("nonvoluntary_ctxt_switches:") {
                involuntary = Int(line.dropFirst("nonvoluntary_ctxt_switches:".count).trimmingWhitespace())
            }
        }
        guard let voluntary, let involuntary else { return nil }
        return (voluntary, involuntary)
    }

    /// What the thread is blocked in, from /proc/self/task/TID/syscall: the system call number and its arguments
    /// ("202 0x7f... 0x80 ..." for a futex wait on that address), "running", or nil when unreadable.
    public static func blockedSyscall(_ tid: Int32) -> String? {
        KernelFile.read(taskPath(tid, "syscall")).map { String($0.split(separator: " ").prefix(4).joined(separator: " ")) }
    }
}

extension Substring {
    public func trimmingWhitespace() -> Substring {
        var s = self
        while let c = s.first, c == " " || c == "\t" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\n" { s.removeLast() }
        return s
    }
}
