import CHotplug
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The one internal layer that calls the C shim and libc, and the only one that sees the shim's C constants;
/// everything above it is plain Swift. It turns failures into ``HotplugError``: the shim returns errno values (it
/// never leaves one in `errno` for Swift to read), and where a libc call reports through `errno`, the value is
/// taken into a local right after the call, before anything that might allocate (and so change it).
@usableFromInline
enum Shim {
    /// The calling thread's logical CPU id when it is a CPU of machine `machineID`, else -1: two thread-local
    /// loads, inlined into the caller (the slab allocator's inlinable fast paths).
    @inlinable @inline(__always)
    static func currentLogicalCPU(machineID: UInt64) -> Int { Int(chp_cpu_self_logical(machineID)) }

    static func errnoDescription(_ code: Int32) -> String {
        guard let message = strerror(code) else { return "unknown error" }
        return String(cString: message)
    }

    static var currentThreadID: Int32 { chp_gettid() }

    static func monotonicNanoseconds() -> Int64 { chp_monotonic_ns() }

    /// Debugging only: claimed idle CPUs leave their wait like unclaimed ones (see `Machine.debugLetClaimedCPUsRun`).
    static func debugIgnoreClaims(_ ignore: Bool) { chp_debug_set_ignore_claims(ignore) }

    /// CPU time of a thread of this process, in nanoseconds.
    /// - Throws: ``HotplugError/system(call:errno:)`` (EINVAL when no such thread exists).
    static func threadCPUTime(_ tid: Int32) throws(HotplugError) -> Int64 {
        var nanoseconds: Int64 = 0
        let rc = chp_thread_cputime_ns(tid, &nanoseconds)
        if rc != 0 { throw .system(call: "clock_gettime(thread \(tid))", errno: rc) }
        return nanoseconds
    }

    /// The CPUs in thread `tid`'s affinity mask (0: the caller), ascending.
    static func affinity(of tid: Int32 = 0) throws(HotplugError) -> [Int] {
        var capacity = 256
        while true {
            var buffer = [Int32](repeating: 0, count: capacity)
            var count: Int32 = 0
            let rc = buffer.withUnsafeMutableBufferPointer { chp_affinity_get(tid, $0.baseAddress, Int32(capacity), &count) }
            if rc != 0 { throw .system(call: "sched_getaffinity", errno: rc) }
            if Int(count) <= capacity { return buffer.prefix(Int(count)).map(Int.init) }
            capacity = Int(count)
        }
    }

    /// Pins thread `tid` (0: the caller) to exactly the physical CPU `cpu`.
    static func pin(thread tid: Int32, to cpu: Int) throws(HotplugError) {
        let rc = chp_affinity_pin(tid, Int32(cpu))
        if rc != 0 { throw .system(call: "sched_setaffinity(cpu \(cpu))", errno: rc) }
    }

    /// Sets thread `tid`'s (0: the caller) affinity mask to `cpus`.
    static func setAffinity(thread tid: Int32, cpus: [Int]) throws(HotplugError) {
        let list = cpus.map(Int32.init)
        let rc = list.withUnsafeBufferPointer { chp_affinity_set(tid, $0.baseAddress, Int32($0.count)) }
        if rc != 0 { throw .system(call: "sched_setaffinity", errno: rc) }
    }

    /// The physical CPU the caller runs on right now; -1 where the kernel cannot say.
    static func currentPhysicalCPU() -> Int {
        var cpu: Int32 = -1
        return chp_current_cpu(&cpu) == 0 ? Int(cpu) : -1
    }

    /// The process id (the main thread's tid).
    static var processID: Int32 { getpid() }

    /// The value of environment variable `name` (`getenv`), nil when it is not set (the follower's
    /// `HOTPLUG_MAX_CPUS`).
    static func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

    /// The size of a memory page.
    static var pageSize: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }

    static var realtimeSignalRange: ClosedRange<Int32> { chp_sigrtmin()...chp_sigrtmax() }

    static func installSIGP(signal: Int32) throws(HotplugError) {
        switch chp_sigp_install(signal) {
        case 0: return
        case EINVAL: throw .invalidSignal(signal)
        case EBUSY: throw .signalInUse(signal)
        case EEXIST:
            throw .invalidConfiguration("SIGP already uses signal \(chp_sigp_signal()) in this process; every machine shares one signal")
        case let code: throw .system(call: "sigaction(\(signal))", errno: code)
        }
    }

    /// Drops this machine's reference to the SIGP signal. The default disposition comes back only once no machine
    /// uses the signal and every logical CPU thread has exited (the last one restores it): a thread that a shutdown
    /// left running may still receive a pending SIGP signal, whose default action would kill the process.
    static func uninstallSIGP(signal: Int32) { _ = chp_sigp_uninstall(signal) }

    /// The handler installed for `signal` right now (SIG_DFL, SIG_IGN, or a function): nil when sigaction fails.
    static func signalDisposition(_ signal: Int32) -> UnsafeMutableRawPointer? {
        var current = sigaction()
        guard sigaction(signal, nil, &current) == 0 else { return nil }
        return unsafeBitCast(current.__sigaction_handler.sa_handler, to: UnsafeMutableRawPointer?.self)
    }

    /// Blocks or unblocks the SIGP signal on the calling thread ("interrupts off / on").
    static func blockSIGP(_ block: Bool) throws(HotplugError) {
        let rc = chp_sigp_block(block)
        if rc != 0 { throw .system(call: "pthread_sigmask", errno: rc) }
    }

    /// True when the SIGP signal is blocked on the calling thread.
    static var isSIGPBlocked: Bool { chp_sigp_is_blocked() }

    /// Starts a joinable OS thread running `body`.
    static func spawnThread(_ body: @escaping @Sendable () -> Void) throws(HotplugError) -> pthread_t {
        final class Box: @unchecked Sendable {   // handed over to the new thread, released there: never shared
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        let context = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, context)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(context).release()
            throw .system(call: "pthread_create", errno: rc)
        }
        return thread
    }

    /// Gives `thread` the real-time policy SCHED_FIFO at `priority` (1...99). Needs CAP_SYS_NICE (or an RLIMIT_RTPRIO
    /// allowance); otherwise the kernel answers EPERM.
    static func setRealtimePriority(_ thread: pthread_t, _ priority: Int32) throws(HotplugError) {
        var parameters = sched_param()
        parameters.sched_priority = priority
        let rc = pthread_setschedparam(thread, SCHED_FIFO, &parameters)
        if rc != 0 { throw .system(call: "pthread_setschedparam(SCHED_FIFO, \(priority))", errno: rc) }
    }

    /// Sets the calling thread's policy: SCHED_FIFO at `priority`, or the default policy (SCHED_OTHER) for nil.
    static func setOwnPriority(_ priority: Int32?) throws(HotplugError) {
        var parameters = sched_param()
        parameters.sched_priority = priority ?? 0
        let rc = pthread_setschedparam(pthread_self(), priority == nil ? SCHED_OTHER : SCHED_FIFO, &parameters)
        if rc != 0 { throw .system(call: "pthread_setschedparam", errno: rc) }
    }

    static func join(_ thread: pthread_t) throws(HotplugError) {
        let rc = pthread_join(thread, nil)
        if rc != 0 { throw .system(call: "pthread_join", errno: rc) }
    }

    /// Lets a thread's resources go when it exits, without a join.
    static func detach(_ thread: pthread_t) { pthread_detach(thread) }

    /// Names the calling thread (what `top -H`, `perf` and debuggers show); the kernel keeps 15 bytes and cuts a
    /// longer name there. Best effort: a name the kernel refuses leaves the old one.
    static func nameCurrentThread(_ name: String) {
        _ = chp_thread_set_name(name)
    }

    static func yield() { sched_yield() }

    static func sleep(microseconds: UInt32) { usleep(microseconds) }
}

/// A one-shot completion on a futex word (C memory, so the address is stable and the kernel can wait on it).
final class Completion: @unchecked Sendable {
    // @unchecked: the pointee is only touched through the shim's explicitly ordered atomics.
    private let event: UnsafeMutablePointer<chp_event_t>

    init() {
        event = .allocate(capacity: 1)
        event.initialize(to: chp_event_t())
    }

    deinit { event.deallocate() }

    /// Only when nobody waits.
    func reset() { chp_event_reset(event) }
    /// Release: partner of the acquire in `wait` / `isSet`.
    func signal() { chp_event_set(event) }
    var isSet: Bool { chp_event_is_set(event) }

    /// Spins for `spins` pause iterations, then parks. Returns false on timeout.
    func wait(spins: UInt32 = 2_000, timeoutNanoseconds: Int64 = -1) -> Bool {
        chp_event_wait(event, spins, timeoutNanoseconds) == 0
    }
}
