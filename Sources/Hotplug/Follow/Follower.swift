import Synchronization

/// Follow mode: the machine follows the CPUs the process may really use.
///
/// A follower polls, every ``Machine/FollowOptions/interval`` (1 ms by default), the three sources that decide
/// whether a physical CPU is usable (``Follower/Source``):
/// - the process affinity mask (the main thread's, `sched_getaffinity(getpid())`: what `taskset -p` changes; the
///   kernel reports it intersected with its active CPUs, so a CPU being offlined leaves it first);
/// - the cpuset of the process's cgroup (`/proc/self/cgroup`): `cpuset.cpus.effective` on cgroup v2,
///   `cpuset.effective_cpus` on a cgroup v1 cpuset hierarchy, when readable (mount points from
///   `/proc/self/mountinfo`, read once; the process's cgroup is read at every poll, so a move is followed);
/// - the kernel's online CPUs (`/sys/devices/system/cpu/online`), when readable.
///
/// A CPU is usable when all readable sources contain it. When a logical CPU's physical CPU stops being usable, the
/// follower detaches it (its tasklets migrate, its slab caches drain); when it is usable again, the follower attaches
/// it again and re-pins its thread first (the kernel breaks a pinned thread's affinity when it offlines the CPU;
/// `taskset -a` and a cgroup cpuset write replace every thread's mask). It also re-pins any thread of a logical CPU
/// whose affinity was changed under it while its CPU stayed usable. It never attaches a CPU it did not detach
/// itself, and never detaches the last online CPU (it reports that as a failure).
///
/// Latency: a change is seen within one interval. Each event reports the time from the last poll that still saw the
/// CPU in its old condition to the end of the operation: the change happened after that poll, so the figure bounds
/// the delay from the change to the runtime having followed it.
///
/// Lifetime: the follower's thread holds the follower weakly. A follower dropped without ``stop()`` stops its
/// thread (from its `deinit`, after the current poll) and then no longer keeps the machine alive; while it
/// exists, it keeps its machine alive. ``stop()`` may be called from `onEvent` (on the follower's own thread): it
/// returns at once, and the follower makes no change after the handler returns.
///
/// What a follower does not do: it does not pick up CPUs that were not in the machine's topology when the machine
/// was created (a hot-added CPU the process never had; the topology is the machine's "possible" mask), and it does
/// not listen to kernel uevents over netlink: polling bounds the delay instead.
public final class Follower: Sendable {
    /// Where a follower learns that a physical CPU is, or is not, usable.
    public enum Source: String, Sendable, CaseIterable {
        /// The process affinity mask (`sched_getaffinity`).
        case affinity
        /// The cpuset of the process's cgroup (v2 or v1).
        case cgroup
        /// The kernel's online CPU mask.
        case online
    }

    /// What the follower did.
    public enum Event: Sendable, Equatable {
        /// Logical CPU `cpu` was detached because physical CPU `physicalCPU` stopped being usable; `sources` are the
        /// sources that excluded it; `latency` runs from the last poll that saw it usable to the end of the detach,
        /// `operation` is the detach alone.
        case detached(cpu: Int, physicalCPU: Int, sources: [Source], latency: Duration, operation: Duration)
        /// Logical CPU `cpu` was attached again on `physicalCPU` (its thread re-pinned first); `latency` runs from the
        /// last poll that saw the CPU unusable to the end of the attach, `operation` is the attach alone.
        case attached(cpu: Int, physicalCPU: Int, latency: Duration, operation: Duration)
        /// The thread of logical CPU `cpu` had lost its pinning and was pinned to `physicalCPU` again.
        case repinned(cpu: Int, physicalCPU: Int)
        /// An operation the follower needed failed (for example: the CPU is the last online one). It is retried at
        /// every poll but reported once, until the condition goes away or the operation succeeds. `operation` is
        /// ``HotplugOperation/offline`` for a detach, ``HotplugOperation/online`` for an attach (which configures
        /// a CPU in standby and re-pins its thread first: `error` says which step failed).
        case failed(cpu: Int, operation: HotplugOperation, error: HotplugError)
    }

    private let machine: Machine
    private let options: Machine.FollowOptions
    private let onEvent: @Sendable (Event) -> Void
    private let loop = Locked<PeriodicThread?>(nil)
    /// Set by ``stop()``: the poll in progress makes no further change (it may be the one calling `onEvent`).
    private let stopped = Atomic<Bool>(false)
    private let state = Locked(PollState())
    private let mounts: CgroupMounts
    /// The machine's physical CPUs (its topology does not change).
    private let physicalCPUs: [Int]

    /// What the polls remember (touched by the follower's thread, read by ``detachedCPUs``).
    private struct PollState {
        /// Logical CPUs this follower detached (and may attach again).
        var detachedByMe = Set<Int>()
        /// Per physical CPU: the last poll that saw it usable, and the last that saw it unusable.
        var lastUsable: [Int: ContinuousClock.Instant] = [:]
        var lastUnusable: [Int: ContinuousClock.Instant] = [:]
        /// Logical CPUs whose detach or attach failed and was reported: it is retried every poll, but reported
        /// again only after the condition went away or the operation succeeded.
        var failing = Set<Int>()
    }

    init(machine: Machine, options: Machine.FollowOptions, onEvent: @escaping @Sendable (Event) -> Void) {
        self.machine = machine
        self.options = options
        self.onEvent = onEvent
        mounts = CgroupMounts.read()
        physicalCPUs = machine.topology.physicalCPUs
    }

    func start() throws(HotplugError) {
        // Weak: the thread must not keep a dropped follower (and through it, the machine) alive.
        let thread = try PeriodicThread(interval: max(options.interval, .microseconds(100)),
                                        realtimePriority: options.realtimePriority) { [weak self] in
            guard let self, !stopped.load(ordering: .acquiring) else { return false }
            poll()
            return true
        }
        loop.withLock { $0 = thread }
    }

    /// A follower dropped without ``stop()``: its thread ends after the current poll (this may run on that thread,
    /// at the end of a poll, which then does not wait for itself).
    deinit { stop() }

    /// Stops following and waits for the follower's thread. Idempotent. CPUs it detached stay detached.
    ///
    /// Called from `onEvent` (the follower's own thread) it returns at once: the poll that called the handler makes
    /// no further change, and the thread ends when the handler returns.
    public func stop() {
        // Release: partner of the acquire loads in the poll loop.
        stopped.store(true, ordering: .releasing)
        let thread = loop.withLock { loop -> PeriodicThread? in
            defer { loop = nil }
            return loop
        }
        thread?.stop()   // outside the lock: waiting for the thread must not hold it
    }

    /// The logical CPUs this follower detached and has not attached again.
    public var detachedCPUs: Set<Int> { state.withLock { $0.detachedByMe } }

    /// The sources this follower can read on this machine (the others are missing or unreadable).
    public var readableSources: [Source] { Source.allCases.filter { read($0) != nil } }

    /// The machine's physical CPUs that every readable source allows now (read on the caller's thread).
    public func usablePhysicalCPUs() -> Set<Int> { usable().cpus }

    private func read(_ source: Source) -> Set<Int>? {
        switch source {
        case .affinity:
            return (try? Shim.affinity(of: options.affinityThread ?? Shim.processID)).map(Set.init)
        case .cgroup:
            return options.followCgroup ? mounts.cpus() : nil
        case .online:
            guard options.followKernel, let text = KernelFile.read("/sys/devices/system/cpu/online"),
                  let cpus = CPUSet(parsing: text), !cpus.isEmpty else { return nil }
            return Set(cpus)
        }
    }

    /// The physical CPUs usable now, and for each unusable one the sources that exclude it.
    func usable() -> (cpus: Set<Int>, excludedBy: [Int: [Source]]) {
        var usable = Set(physicalCPUs)
        var excluded: [Int: [Source]] = [:]
        for source in Source.allCases {
            guard let cpus = read(source) else { continue }
            for cpu in physicalCPUs where !cpus.contains(cpu) { excluded[cpu, default: []].append(source) }
            usable.formIntersection(cpus)
        }
        return (usable, excluded)
    }

    private func poll() {
        let seen = ContinuousClock.now
        let (usable, excludedBy) = usable()
        for cpu in 0..<machine.possibleCount {
            // Acquire: partner of the release store in stop() (called from `onEvent` during this poll).
            if stopped.load(ordering: .acquiring) { return }
            guard let physical = try? machine.physicalCPU(of: cpu), let cpuState = try? machine.state(of: cpu) else { continue }
            let isUsable = usable.contains(physical)
            if cpuState == .online && !isUsable {
                // The latency bound starts at the last poll before this one that saw the CPU usable.
                let since = state.withLock { $0.lastUsable[physical] } ?? seen
                detach(cpu, physical: physical, sources: excludedBy[physical] ?? [], since: since)
            } else if cpuState != .online && isUsable && state.withLock({ $0.detachedByMe.contains(cpu) }) {
                let since = state.withLock { $0.lastUnusable[physical] } ?? seen
                attach(cpu, physical: physical, state: cpuState, since: since)
            } else {
                state.withLock { _ = $0.failing.remove(cpu) }
                if isUsable, let tid = try? machine.threadID(of: cpu), let allowed = try? Shim.affinity(of: tid),
                   allowed != [physical], (try? Shim.pin(thread: tid, to: physical)) != nil {
                    onEvent(.repinned(cpu: cpu, physicalCPU: physical))
                }
            }
        }
        state.withLock { state in
            for cpu in physicalCPUs {
                if usable.contains(cpu) { state.lastUsable[cpu] = seen } else { state.lastUnusable[cpu] = seen }
            }
        }
    }

    /// Reports a failed operation once per episode (see ``PollState/failing``).
    private func failed(_ cpu: Int, _ operation: HotplugOperation, _ error: HotplugError) {
        guard state.withLock({ $0.failing.insert(cpu).inserted }) else { return }
        onEvent(.failed(cpu: cpu, operation: operation, error: error))
    }

    /// Runs a detach or attach at the default policy: it waits for the CPUs' threads, and a real-time thread that
    /// spins while the thread it waits for is runnable on the same CPU would hold that thread off (priority
    /// inversion). Only the polls run at ``Machine/FollowOptions/realtimePriority``.
    private func atDefaultPriority<T>(_ body: () throws(HotplugError) -> T) throws(HotplugError) -> T {
        guard let priority = options.realtimePriority else { return try body() }
        try? Shim.setOwnPriority(nil)
        defer { try? Shim.setOwnPriority(priority) }
        return try body()
    }

    private func detach(_ cpu: Int, physical: Int, sources: [Source], since: ContinuousClock.Instant) {
        do {
            let start = ContinuousClock.now
            try atDefaultPriority { () throws(HotplugError) in try machine.offline(cpu) }
            let end = ContinuousClock.now
            state.withLock { state in
                state.detachedByMe.insert(cpu)
                state.failing.remove(cpu)
            }
            onEvent(.detached(cpu: cpu, physicalCPU: physical, sources: sources, latency: end - since,
                              operation: end - start))
        } catch {
            failed(cpu, .offline, error)
        }
    }

    private func attach(_ cpu: Int, physical: Int, state cpuState: LogicalCPUState, since: ContinuousClock.Instant) {
        do {
            let start = ContinuousClock.now
            try atDefaultPriority { () throws(HotplugError) in
                if cpuState == .standby { try machine.configure(cpu) }
                if let tid = try machine.threadID(of: cpu) { try Shim.pin(thread: tid, to: physical) }
                try machine.online(cpu)
            }
            let end = ContinuousClock.now
            state.withLock { state in
                state.detachedByMe.remove(cpu)
                state.failing.remove(cpu)
            }
            onEvent(.attached(cpu: cpu, physicalCPU: physical, latency: end - since, operation: end - start))
        } catch {
            failed(cpu, .online, error)
        }
    }

    /// The effective cpuset of the process's cgroup (v2, else v1), nil when there is none to read.
    static func cgroupCPUs() -> Set<Int>? { CgroupMounts.read().cpus() }
}

/// Where the cgroup hierarchies that can carry a cpuset are mounted (from `/proc/self/mountinfo`).
struct CgroupMounts: Sendable {
    /// A mount: where it is, and which cgroup path its root is (non-"/" inside some containers).
    struct Mount: Sendable, Equatable {
        let point: String
        let root: String
    }
    /// The cgroup v2 mount, and the cgroup v1 mount with the cpuset controller.
    let v2: Mount?
    let v1Cpuset: Mount?

    static func read() -> CgroupMounts {
        parse(mountinfo: KernelFile.read("/proc/self/mountinfo") ?? "")
    }

    /// Parses mountinfo lines: `id parent major:minor root point options [optional...] - fstype source superoptions`.
    static func parse(mountinfo: String) -> CgroupMounts {
        var v2: Mount?, v1: Mount?
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ").map(String.init)
            guard let dash = fields.firstIndex(of: "-"), dash >= 5, fields.count > dash + 3 else { continue }
            let mount = Mount(point: unescape(fields[4]), root: unescape(fields[3]))
            switch fields[dash + 1] {
            case "cgroup2": v2 = v2 ?? mount
            case "cgroup" where fields[dash + 3].split(separator: ",").contains("cpuset"): v1 = v1 ?? mount
            default: break
            }
        }
        return CgroupMounts(v2: v2, v1Cpuset: v1)
    }

    /// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
    private static func unescape(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var bytes: [UInt8] = []
        var utf8 = Array(field.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "\\"), utf8.count >= 3, let value = UInt8(String(decoding: utf8.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(value)
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The directory of cgroup `path` under `mount`, nil when the mount's root is not above it.
    static func directory(of path: String, under mount: Mount) -> String? {
        var relative = path
        if mount.root != "/" {
            guard path == mount.root || path.hasPrefix(mount.root + "/") else { return nil }
            relative = String(path.dropFirst(mount.root.count))
        }
        return mount.point + (relative == "/" ? "" : relative)
    }

    /// The effective cpuset of this process's cgroup: v2 first, then a v1 cpuset hierarchy (an empty or malformed
    /// list counts as none).
    func cpus() -> Set<Int>? {
        guard let membership = KernelFile.read("/proc/self/cgroup") else { return nil }
        for line in membership.split(separator: "\n") {
            // `hierarchy-id:controllers:path`; the path may itself contain ':'.
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            let path = String(parts[2])
            if parts[0] == "0", parts[1].isEmpty, let v2, let directory = CgroupMounts.directory(of: path, under: v2),
               let text = KernelFile.read(directory + "/cpuset.cpus.effective"), let cpus = CPUSet(parsing: text),
               !cpus.isEmpty {
                return Set(cpus)
            }
            if parts[1].split(separator: ",").contains("cpuset"), let v1Cpuset,
               let directory = CgroupMounts.directory(of: path, under: v1Cpuset),
               let text = KernelFile.read(directory + "/cpuset.effective_cpus") ?? KernelFile.read(directory + "/cpuset.cpus"),
               let cpus = CPUSet(parsing: text), !cpus.isEmpty {
                return Set(cpus)
            }
        }
        return nil
    }
}

extension Machine {
    /// How a ``Follower`` watches the machine it runs on.
    public struct FollowOptions: Sendable {
        /// How often the sources are read: positive, at most `UInt32.max` microseconds.
        public var interval: Duration
        /// The thread whose affinity mask is "the process's"; nil: the main thread (what `taskset -p` changes).
        public var affinityThread: Int32?
        /// Whether to follow the cgroup cpuset (v2 or v1, when readable).
        public var followCgroup: Bool
        /// Whether to follow the kernel's online CPU mask.
        public var followKernel: Bool
        /// SCHED_FIFO priority (1...99) for the follower's polls, as the kernel runs its own hotplug threads; nil:
        /// the default policy. On a loaded machine a default-policy follower waits for a time slice before it sees a
        /// change; a real-time one does not. The detach or attach itself runs at the default policy (it waits for
        /// the CPUs' threads, which a real-time waiter could hold off). Needs CAP_SYS_NICE
        /// (``Machine/follow(_:onEvent:)`` throws otherwise).
        public var realtimePriority: Int32?

        public init(interval: Duration = .milliseconds(1), affinityThread: Int32? = nil, followCgroup: Bool = true,
                    followKernel: Bool = true, realtimePriority: Int32? = nil) {
            self.interval = interval
            self.affinityThread = affinityThread
            self.followCgroup = followCgroup
            self.followKernel = followKernel
            self.realtimePriority = realtimePriority
        }
    }

    /// Starts following the CPUs the process may use (see ``Follower``); `onEvent` runs on the follower's thread.
    /// - Throws: a system error when the follower's thread cannot start, or when the kernel refuses its
    ///   ``FollowOptions/realtimePriority``; ``HotplugError/invalidArgument(name:value:valid:)`` for an
    ///   ``FollowOptions/interval`` out of range or a ``FollowOptions/realtimePriority`` outside 1...99;
    ///   ``HotplugError/shutDown``.
    public func follow(_ options: FollowOptions = FollowOptions(),
                       onEvent: @escaping @Sendable (Follower.Event) -> Void = { _ in }) throws(HotplugError) -> Follower {
        try ensureNotShutDown()
        try validateInterval(options.interval)
        if let priority = options.realtimePriority, !(1...99).contains(priority) {
            throw .invalidArgument(name: "realtimePriority", value: "\(priority)", valid: "1...99")
        }
        let follower = Follower(machine: self, options: options, onEvent: onEvent)
        try follower.start()
        return follower
    }
}
