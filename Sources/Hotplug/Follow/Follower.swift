/// Follow mode: the machine follows the CPUs the process may really use.
///
/// A follower polls, every ``Machine/FollowOptions/interval`` (1 ms by default), the three sources that decide
/// whether a physical CPU is usable:
/// - the process affinity mask (the main thread's, `sched_getaffinity(getpid())`: what `taskset -p` changes);
/// - the cgroup v2 `cpuset.cpus.effective` of the process's cgroup (`/proc/self/cgroup`), when readable;
/// - the kernel's online CPUs (`/sys/devices/system/cpu/online`), when readable.
///
/// A CPU is usable when all readable sources contain it. When a logical CPU's physical CPU stops being usable, the
/// follower detaches it (its tasklets migrate, its slab caches drain); when it is usable again, the follower attaches
/// it again and re-pins its thread (the kernel, or `taskset -a`, may have changed a parked thread's affinity). It also
/// re-pins an online CPU's thread whose affinity was changed under it while its CPU stayed usable. It never attaches
/// a CPU it did not detach itself, and never detaches the last online CPU (it reports that as a failure).
///
/// Polling is the cheap, always-available mechanism; a change is seen within one interval, and the detach itself
/// takes 0.1-1 ms from the follower's thread.
///
/// - Note: Kernel uevents over netlink (to react without polling) are not implemented: the interval bounds the delay.
public final class Follower: Sendable {
    /// What the follower did.
    public enum Event: Sendable, Equatable {
        /// Logical CPU `cpu` was detached because physical CPU `physicalCPU` stopped being usable (`source` says which
        /// source dropped it); `latency` runs from the poll that saw the change to the end of the detach.
        case detached(cpu: Int, physicalCPU: Int, source: String, latency: Duration)
        /// Logical CPU `cpu` was attached again on `physicalCPU`.
        case attached(cpu: Int, physicalCPU: Int, latency: Duration)
        /// An online CPU's thread had lost its pinning and was pinned to `physicalCPU` again.
        case repinned(cpu: Int, physicalCPU: Int)
        /// An operation the follower needed failed (for example: the CPU is the last online one).
        case failed(cpu: Int, operation: String, error: HotplugError)
    }

    private let machine: Machine
    private let options: Machine.FollowOptions
    private let onEvent: @Sendable (Event) -> Void
    private let loop = Locked<PeriodicThread?>(nil)
    /// CPUs this follower detached (and may attach again). Touched by the follower's thread only.
    private let detachedByMe = Locked<Set<Int>>([])

    init(machine: Machine, options: Machine.FollowOptions, onEvent: @escaping @Sendable (Event) -> Void) {
        self.machine = machine
        self.options = options
        self.onEvent = onEvent
    }

    func start() throws(HotplugError) {
        let thread = try PeriodicThread(interval: max(options.interval, .microseconds(100))) { [self] in poll() }
        loop.withLock { $0 = thread }
    }

    /// Stops following and waits for the follower's thread. Idempotent.
    public func stop() {
        loop.withLock { loop in
            loop?.stop()
            loop = nil
        }
    }

    /// The physical CPUs usable now, and for each unusable one the first source that excludes it.
    func usable() -> (cpus: Set<Int>, excludedBy: [Int: String]) {
        var sources: [(String, Set<Int>)] = []
        if let affinity = try? Shim.affinity(of: options.affinityThread ?? Shim.processID) {
            sources.append(("affinity mask", Set(affinity)))
        }
        if options.followCgroup, let cpus = Follower.cgroupCPUs() { sources.append(("cgroup cpuset", cpus)) }
        if options.followKernel, let text = Shim.readTextFile("/sys/devices/system/cpu/online"),
           let cpus = Follower.parseList(text) {
            sources.append(("kernel online mask", cpus))
        }
        let all = Set(machine.topology.physicalCPUs)
        var usable = all
        var excluded: [Int: String] = [:]
        for (name, cpus) in sources {
            for cpu in usable where !cpus.contains(cpu) { excluded[cpu] = name }
            usable.formIntersection(cpus)
        }
        return (usable, excluded)
    }

    private func poll() {
        let seen = ContinuousClock.now
        let (usable, excludedBy) = usable()
        for cpu in 0..<machine.possibleCount {
            guard let physical = try? machine.physicalCPU(of: cpu), let state = try? machine.state(of: cpu) else { continue }
            if state == .online && !usable.contains(physical) {
                do {
                    try machine.offline(cpu)
                    detachedByMe.withLock { _ = $0.insert(cpu) }
                    onEvent(.detached(cpu: cpu, physicalCPU: physical, source: excludedBy[physical] ?? "?",
                                      latency: ContinuousClock.now - seen))
                } catch {
                    onEvent(.failed(cpu: cpu, operation: "detach", error: error))
                }
            } else if state != .online && usable.contains(physical) && detachedByMe.withLock({ $0.contains(cpu) }) {
                do {
                    if state == .standby { try machine.configure(cpu) }
                    if let tid = try machine.threadID(of: cpu) { try Shim.pin(thread: tid, to: physical) }
                    try machine.online(cpu)
                    detachedByMe.withLock { _ = $0.remove(cpu) }
                    onEvent(.attached(cpu: cpu, physicalCPU: physical, latency: ContinuousClock.now - seen))
                } catch {
                    onEvent(.failed(cpu: cpu, operation: "attach", error: error))
                }
            } else if state == .online, let tid = try? machine.threadID(of: cpu),
                      let allowed = try? Shim.affinity(of: tid), allowed != [physical] {
                if (try? Shim.pin(thread: tid, to: physical)) != nil {
                    onEvent(.repinned(cpu: cpu, physicalCPU: physical))
                }
            }
        }
    }

    /// The effective cpuset of the process's cgroup v2, nil when there is none to read.
    static func cgroupCPUs() -> Set<Int>? {
        guard let membership = Shim.readTextFile("/proc/self/cgroup"),
              let line = membership.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else { return nil }
        let path = String(line.dropFirst(3))
        guard let text = Shim.readTextFile("/sys/fs/cgroup\(path == "/" ? "" : path)/cpuset.cpus.effective") else { return nil }
        return parseList(text)
    }

    /// A kernel CPU list (`0-3,8,10-11`); nil when malformed or empty.
    static func parseList(_ text: String) -> Set<Int>? {
        var cpus = Set<Int>()
        for part in text.split(whereSeparator: { $0 == "," || $0 == "\n" || $0 == " " }) {
            let bounds = part.split(separator: "-")
            guard let low = Int(bounds[0]) else { return nil }
            let high = bounds.count > 1 ? Int(bounds[1]) : low
            guard let high, high >= low else { return nil }
            cpus.formUnion(low...high)
        }
        return cpus.isEmpty ? nil : cpus
    }
}

extension Machine {
    /// How a ``Follower`` watches the machine it runs on.
    public struct FollowOptions: Sendable {
        /// How often the sources are read.
        public var interval: Duration
        /// The thread whose affinity mask is "the process's"; nil: the main thread (what `taskset -p` changes).
        public var affinityThread: Int32?
        /// Whether to follow the cgroup v2 cpuset (when readable).
        public var followCgroup: Bool
        /// Whether to follow the kernel's online CPU mask.
        public var followKernel: Bool

        public init(interval: Duration = .milliseconds(1), affinityThread: Int32? = nil, followCgroup: Bool = true,
                    followKernel: Bool = true) {
            self.interval = interval
            self.affinityThread = affinityThread
            self.followCgroup = followCgroup
            self.followKernel = followKernel
        }
    }

    /// Starts following the CPUs the process may use (see ``Follower``); `onEvent` runs on the follower's thread.
    /// - Throws: a system error when the follower's thread cannot start.
    public func follow(_ options: FollowOptions = FollowOptions(),
                       onEvent: @escaping @Sendable (Follower.Event) -> Void = { _ in }) throws(HotplugError) -> Follower {
        let follower = Follower(machine: self, options: options, onEvent: onEvent)
        try follower.start()
        return follower
    }
}
