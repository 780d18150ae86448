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
/// - the kernel's online CPUs (`/sys/devices/system/cpu/online`), when readable;
///
/// and how many of them to keep online:
/// - the CPU quota of the process's cgroup and of every ancestor (``Source/quota``: `cpu.max` in cgroup v2,
///   `cpu.cfs_quota_us` / `cpu.cfs_period_us` in a v1 `cpu` hierarchy; the tightest wins, as the kubelet limits the
///   pod's cgroup and the container's separately), re-read at every poll with `/proc/self/cgroup`;
/// - or, instead of the quota, an explicit cap (``Source/cap``: ``Machine/FollowOptions/maxCPUs``, the environment
///   variable `HOTPLUG_MAX_CPUS`, or ``setMaxCPUs(_:)``).
///
/// A CPU is usable when all readable sources contain it. When a logical CPU's physical CPU stops being usable, the
/// follower detaches it (its tasklets migrate, its slab caches drain); when it is usable again, the follower attaches
/// it again and re-pins its thread first (the kernel breaks a pinned thread's affinity when it offlines the CPU;
/// `taskset -a` and a cgroup cpuset write replace every thread's mask). It also re-pins any thread of a logical CPU
/// whose affinity was changed under it while its CPU stayed usable. It never attaches a CPU it did not detach
/// itself, and never detaches the last online CPU (it reports that as a failure).
///
/// Under a limit the follower keeps `min(usable, max(minimum, round(quota / period)))` logical CPUs online
/// (``Limit/cpuCount(usable:minimum:rounding:)``: rounded up by default, as Go, the JDK and .NET do), choosing which
/// to detach and attach so that NUMA nodes stay balanced (the rule is in the DocC article "Following the machine it
/// runs on", and in `CPUChoice`). The CPUs it may count are the online ones on usable physical CPUs and the ones it
/// detached itself on usable physical CPUs; the usability and the count are decided in the same poll, so a quota
/// change and a cpuset change together end in one consistent set. Each change of the limit, with the detaches or
/// attaches it causes, is one ``Event/resized(_:)``. A quota file that exists but cannot be read or parsed is reported once
/// (``Event/quotaUnusable(_:)``) and changes nothing: the limit in force stays. The CPU weight (`cpu.weight`,
/// `cpu.shares`: the Kubernetes request) is reported with each resize for information, never followed.
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
    /// Where a follower learns that a physical CPU is, or is not, usable (`affinity`, `cgroup`, `online`), or how
    /// many logical CPUs to keep online (`quota`, `cap`).
    public enum Source: String, Sendable, CaseIterable {
        /// The process affinity mask (`sched_getaffinity`).
        case affinity
        /// The cpuset of the process's cgroup (v2 or v1).
        case cgroup
        /// The kernel's online CPU mask.
        case online
        /// The CPU quota of the process's cgroup and its ancestors (v2 `cpu.max`, v1 `cpu.cfs_quota_us`).
        case quota
        /// The explicit cap (``Machine/FollowOptions/maxCPUs``, `HOTPLUG_MAX_CPUS`, ``Follower/setMaxCPUs(_:)``).
        case cap

        /// The sources that say which physical CPUs are usable.
        static let cpuSets: [Source] = [.affinity, .cgroup, .online]
    }

    /// How a fractional CPU limit becomes a number of logical CPUs (``CPUQuota/cpuCount(rounding:)``).
    public enum Rounding: String, Sendable {
        /// 1.5 CPUs keep 2 logical CPUs online (Go, the JDK and .NET round up): the quota's CPU time can be used
        /// in full, at the price of some throttling.
        case up
        /// 1.5 CPUs keep 1 online: no more threads than the quota can run at once.
        case down
    }

    /// The CPU limit a follower keeps to: an explicit cap, else the tightest quota, else none.
    public struct Limit: Sendable, Equatable {
        /// The tightest quota of the process's cgroup and its ancestors (nil: none, or a cap is in force and the
        /// quota is not read).
        public let quota: CPUQuota?
        /// The explicit cap in force, which overrides the quota.
        public let cap: Int?
        /// The CPU weight of the process's cgroup, for information (filled in ``Resize/limit``; never followed).
        public let weight: CPUWeight?

        /// A limit of a quota, or of a cap (which wins), or none.
        public init(quota: CPUQuota? = nil, cap: Int? = nil, weight: CPUWeight? = nil) {
            self.quota = quota
            self.cap = cap
            self.weight = weight
        }

        /// Where the limit comes from: ``Source/cap``, ``Source/quota``, or nil for none.
        public var source: Source? { cap != nil ? .cap : quota != nil ? .quota : nil }

        /// The limit in CPUs (2.5 for 250000 us every 100000 us), nil for none.
        public var cpus: Double? { cap.map(Double.init) ?? quota?.cpus }

        /// How many logical CPUs to keep online with `usable` of them available: `usable` without a limit; with a
        /// cap, `min(usable, cap)`; with a quota, `min(usable, max(minimum, quota / period rounded))`.
        public func cpuCount(usable: Int, minimum: Int, rounding: Rounding) -> Int {
            if let cap { return min(usable, cap) }
            guard let quota else { return usable }
            return min(usable, max(minimum, quota.cpuCount(rounding: rounding)))
        }

        /// Equal as limits (the weight, which is information, aside).
        func sameLimit(as other: Limit) -> Bool { quota == other.quota && cap == other.cap }
    }

    /// A change of the CPU limit, and what the follower did about it (``Event/resized(_:)``).
    public struct Resize: Sendable, Equatable {
        /// ``Source/quota`` or ``Source/cap``: where the new limit comes from (or the old one, when it was lifted).
        public let source: Source
        /// The limit now in force: ``Limit/cpus`` is the fractional limit (2.5), ``CPUQuota/cgroup`` on its quota
        /// the cgroup it came from; its weight is the cgroup's CPU weight, for information.
        public let limit: Limit
        /// How many logical CPUs the follower keeps online now; nil without a limit (every usable one).
        public let target: Int?
        /// The logical CPUs detached for it, in order.
        public let detached: [Int]
        /// The logical CPUs attached for it, in order.
        public let attached: [Int]
        /// From the last poll that saw the old limit to the end of the last detach or attach (or of the poll that
        /// saw the new limit, when none was needed): it bounds the delay from the change.
        public let latency: Duration
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
        /// The CPU limit changed, or CPUs were detached or attached to keep to it (the per-CPU ``detached(cpu:physicalCPU:sources:latency:operation:)``
        /// and ``attached(cpu:physicalCPU:latency:operation:)`` events come first, with source ``Source/quota`` or
        /// ``Source/cap``).
        case resized(Resize)
        /// A quota file exists but cannot be read or parsed: reported once, until a reading succeeds; the limit in
        /// force does not change meanwhile.
        case quotaUnusable(QuotaProblem)
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
    /// The explicit cap (``setMaxCPUs(_:)``), nil to follow the quota.
    private let cap: Locked<Int?>

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
        /// The limit in force (the last one read without a problem), nil before the first reading.
        var limit: Limit?
        /// While the CPUs online do not match the limit yet (an operation failed and is retried): the last poll
        /// that saw the limit before the change that is being followed, where the resize's latency starts.
        var pendingSince: ContinuousClock.Instant?
        /// The previous poll.
        var lastPoll: ContinuousClock.Instant?
        /// Set while a quota problem has been reported and no reading has succeeded since.
        var problemReported = false
    }

    init(machine: Machine, options: Machine.FollowOptions, cap: Int?, onEvent: @escaping @Sendable (Event) -> Void) {
        self.machine = machine
        self.options = options
        // Counted before the handler sees it: events are rare, and the counters exist once per machine.
        let metrics = machine.metrics
        self.onEvent = { event in
            metrics.recordFollowerEvent(event)
            onEvent(event)
        }
        self.cap = Locked(cap)
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

    /// Whether the follower still polls: false once ``stop()`` was called (its thread ends after the current poll).
    public var isFollowing: Bool {
        // Acquire: partner of the release in `stop()`.
        !stopped.load(ordering: .acquiring) && loop.withLock { $0 != nil }
    }

    /// The logical CPUs this follower detached and has not attached again.
    public var detachedCPUs: Set<Int> { state.withLock { $0.detachedByMe } }

    /// The sources this follower can read on this machine (the others are missing or unreadable); ``Source/cap``
    /// while a cap is in force.
    public var readableSources: [Source] {
        let membership = KernelFile.read("/proc/self/cgroup")
        return Source.allCases.filter { source in
            switch source {
            case .affinity, .cgroup, .online: read(source, membership: membership) != nil
            case .quota: options.followQuota && membership.map { mounts.quota(membership: $0).found } ?? false
            case .cap: maxCPUs != nil
            }
        }
    }

    /// The machine's physical CPUs that every readable source allows now (read on the caller's thread).
    public func usablePhysicalCPUs() -> Set<Int> { usable(membership: KernelFile.read("/proc/self/cgroup")).cpus }

    /// The explicit cap in force (nil: the follower follows the quota).
    public var maxCPUs: Int? { cap.withLock { $0 } }

    /// Sets the explicit cap: at most `cap` logical CPUs online whatever the quota says, from the next poll on;
    /// nil goes back to following the quota (as `runtime.SetDefaultGOMAXPROCS` does in Go). The environment is
    /// not read again.
    /// - Throws: ``HotplugError/invalidArgument(name:value:valid:)`` for a cap below 1.
    public func setMaxCPUs(_ cap: Int?) throws(HotplugError) {
        if let cap, cap < 1 { throw .invalidArgument(name: "maxCPUs", value: "\(cap)", valid: "1 or more, or nil") }
        self.cap.withLock { $0 = cap }
    }

    /// The limit as the sources say now (read on the caller's thread): the cap, or the tightest quota (with the
    /// cgroup's weight); nil when the quota files cannot be used (``QuotaProblem``), or are not followed.
    public func currentLimit() -> Limit? {
        let membership = KernelFile.read("/proc/self/cgroup")
        guard case .success(let limit) = readLimit(membership: membership) else { return nil }
        return Limit(quota: limit.quota, cap: limit.cap, weight: membership.flatMap { mounts.weight(membership: $0) })
    }

    /// How many logical CPUs the follower keeps online under the limit it keeps to now, given `usable` of them
    /// usable (nil before its first poll: every usable one).
    public func targetCount(usable: Int) -> Int {
        let limit = state.withLock { $0.limit } ?? Limit()
        return limit.cpuCount(usable: usable, minimum: options.minimumCPUs, rounding: options.rounding)
    }

    private func read(_ source: Source, membership: String?) -> Set<Int>? {
        switch source {
        case .affinity:
            return (try? Shim.affinity(of: options.affinityThread ?? Shim.processID)).map(Set.init)
        case .cgroup:
            return options.followCgroup ? membership.flatMap { mounts.cpus(membership: $0) } : nil
        case .online:
            guard options.followKernel, let text = KernelFile.read("/sys/devices/system/cpu/online"),
                  let cpus = CPUSet(parsing: text), !cpus.isEmpty else { return nil }
            return Set(cpus)
        case .quota, .cap:
            return nil
        }
    }

    /// The physical CPUs usable now, and for each unusable one the sources that exclude it.
    func usable(membership: String?) -> (cpus: Set<Int>, excludedBy: [Int: [Source]]) {
        var usable = Set(physicalCPUs)
        var excluded: [Int: [Source]] = [:]
        for source in Source.cpuSets {
            guard let cpus = read(source, membership: membership) else { continue }
            for cpu in physicalCPUs where !cpus.contains(cpu) { excluded[cpu, default: []].append(source) }
            usable.formIntersection(cpus)
        }
        return (usable, excluded)
    }

    /// The limit the sources give now (without the weight), or the problem that hides it. The quota is not read
    /// while a cap is in force (it would be overridden), nor when it is not followed.
    private func readLimit(membership: String?) -> Result<Limit, QuotaProblemError> {
        if let cap = maxCPUs { return .success(Limit(cap: cap)) }
        guard options.followQuota, let membership else { return .success(Limit()) }
        let reading = mounts.quota(membership: membership)
        if let problem = reading.problem { return .failure(QuotaProblemError(problem: problem)) }
        return .success(Limit(quota: reading.tightest))
    }

    /// A ``QuotaProblem`` as the failure of a `Result`.
    private struct QuotaProblemError: Error {
        let problem: QuotaProblem
    }

    private func poll() {
        let seen = ContinuousClock.now
        // One read of the process's cgroup for the cpuset and the quota: a move to another cgroup is seen by both.
        let membership = options.followCgroup || options.followQuota ? KernelFile.read("/proc/self/cgroup") : nil
        let (usable, excludedBy) = usable(membership: membership)
        let (limitChanged, oldSource) = updateLimit(membership: membership)
        let (limit, previousPoll) = state.withLock { ($0.limit ?? Limit(), $0.lastPoll) }
        // 1. Which physical CPUs are usable: detach the logical CPUs on the others, re-pin the threads of the rest.
        var onlineUsable: [Int] = [], waiting: [Int] = []
        for cpu in 0..<machine.possibleCount {
            // Acquire: partner of the release store in stop() (called from `onEvent` during this poll).
            if stopped.load(ordering: .acquiring) { return }
            guard let physical = try? machine.physicalCPU(of: cpu), let cpuState = try? machine.state(of: cpu) else { continue }
            let isUsable = usable.contains(physical)
            if cpuState == .online && !isUsable {
                // The latency bound starts at the last poll before this one that saw the CPU usable.
                let since = state.withLock { $0.lastUsable[physical] } ?? seen
                detach(cpu, physical: physical, sources: excludedBy[physical] ?? [], since: since)
            } else if cpuState == .online {
                onlineUsable.append(cpu)
                state.withLock { _ = $0.failing.remove(cpu) }
                if let tid = try? machine.threadID(of: cpu), let allowed = try? Shim.affinity(of: tid),
                   allowed != [physical], (try? Shim.pin(thread: tid, to: physical)) != nil {
                    onEvent(.repinned(cpu: cpu, physicalCPU: physical))
                }
            } else if isUsable && state.withLock({ $0.detachedByMe.contains(cpu) }) {
                waiting.append(cpu)
            } else {
                state.withLock { _ = $0.failing.remove(cpu) }
            }
        }
        // 2. How many to keep online: the limit's count of the CPUs the follower may count; the CPU choice decides
        // which (the follower's own CPU, if it runs on one, stays).
        let target = limit.cpuCount(usable: onlineUsable.count + waiting.count, minimum: options.minimumCPUs,
                                    rounding: options.rounding)
        // The latency of a resize starts at the last poll that saw the old limit: the previous poll when this one saw
        // the change, else (a count still to be reached, after a failure) where the change being followed started.
        let limitSince = limitChanged ? previousPoll ?? seen
            : state.withLock { $0.pendingSince } ?? previousPoll ?? seen
        let node = { [machine] (cpu: Int) in (try? machine.node(of: cpu)) ?? 0 }
        var detached: [Int] = [], attached: [Int] = []
        var lastEnd = seen   // the end of the last detach or attach for the limit
        // A resize moves its whole set in one bulk operation (one stop_machine for all the CPUs).
        if onlineUsable.count > target, let source = limit.source {
            if stopped.load(ordering: .acquiring) { return }   // acquire: as above
            let chosen = CPUChoice.toDetach(onlineUsable.count - target, online: onlineUsable, keep: machine.currentCPU,
                                            node: node)
            if let (done, end) = detachAll(chosen, sources: [source], since: limitSince) {
                detached = done
                lastEnd = end
            }
        } else if onlineUsable.count < target {
            if stopped.load(ordering: .acquiring) { return }   // acquire: as above
            let chosen = CPUChoice.toAttach(target - onlineUsable.count, candidates: waiting, online: onlineUsable,
                                            node: node)
            if let (done, end) = attachAll(chosen, since: limitSince, previousPoll: previousPoll) {
                attached = done
                lastEnd = end
            }
        }
        let moved = !(detached.isEmpty && attached.isEmpty)
        let countChanged = limit.source != nil && moved
        if limitChanged || countChanged, let source = limit.source ?? oldSource {
            let weight = membership.flatMap { mounts.weight(membership: $0) }
            onEvent(.resized(Resize(source: source, limit: Limit(quota: limit.quota, cap: limit.cap, weight: weight),
                                    target: limit.source == nil ? nil : target, detached: detached, attached: attached,
                                    latency: (moved ? lastEnd : ContinuousClock.now) - limitSince)))
        }
        state.withLock { state in
            for cpu in physicalCPUs {
                if usable.contains(cpu) { state.lastUsable[cpu] = seen } else { state.lastUnusable[cpu] = seen }
            }
            state.lastPoll = seen
            let reached = onlineUsable.count - detached.count + attached.count == target
            state.pendingSince = reached ? nil : limitSince
        }
    }

    /// Reads the limit and, when it differs from the one in force, makes it the one in force (`changed`, with the
    /// old limit's source). A problem leaves the limit in force as it is and is reported once, until a reading
    /// succeeds.
    private func updateLimit(membership: String?) -> (changed: Bool, oldSource: Source?) {
        switch readLimit(membership: membership) {
        case .failure(let error):
            if state.withLock({ state in defer { state.problemReported = true }; return !state.problemReported }) {
                onEvent(.quotaUnusable(error.problem))
            }
            return (false, nil)
        case .success(let limit):
            return state.withLock { state in
                state.problemReported = false
                guard let old = state.limit else {
                    state.limit = limit
                    return (limit.source != nil, nil)   // a limit found at the first poll is a change from none
                }
                guard !old.sameLimit(as: limit) else { return (false, old.source) }
                state.limit = limit
                return (true, old.source)
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

    /// Detaches `cpu`; the end of the detach, nil when it failed.
    @discardableResult
    private func detach(_ cpu: Int, physical: Int, sources: [Source], since: ContinuousClock.Instant) -> ContinuousClock.Instant? {
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
            return end
        } catch {
            failed(cpu, .offline, error)
            return nil
        }
    }

    /// Detaches `cpus` in one bulk operation; the CPUs detached and the end, nil when none was.
    private func detachAll(_ cpus: [Int], sources: [Source], since: ContinuousClock.Instant)
        -> (detached: [Int], end: ContinuousClock.Instant)? {
        guard !cpus.isEmpty else { return nil }
        let start = ContinuousClock.now
        let result: HotplugBatchResult
        do {
            result = try atDefaultPriority { () throws(HotplugError) in try machine.offline(CPUSet(cpus)) }
        } catch {
            for cpu in cpus { failed(cpu, .offline, error) }
            return nil
        }
        let end = ContinuousClock.now
        for (cpu, error) in result.failures { failed(cpu, .offline, error) }
        let done = cpus.filter { result.changed.contains($0) }
        for cpu in done {
            state.withLock { state in
                state.detachedByMe.insert(cpu)
                state.failing.remove(cpu)
            }
            onEvent(.detached(cpu: cpu, physicalCPU: (try? machine.physicalCPU(of: cpu)) ?? -1, sources: sources,
                              latency: end - since, operation: end - start))
        }
        return done.isEmpty ? nil : (done, end)
    }

    /// Attaches `cpus` (configuring and re-pinning each first) in one bulk operation; the CPUs attached and the
    /// end, nil when none was. A CPU whose physical CPU just came back counts its latency from the last poll that
    /// saw it unusable; one the limit lets back, from `since` (the last poll that saw the old limit).
    private func attachAll(_ cpus: [Int], since: ContinuousClock.Instant, previousPoll: ContinuousClock.Instant?)
        -> (attached: [Int], end: ContinuousClock.Instant)? {
        let start = ContinuousClock.now
        var ready = CPUSet()
        var physicals: [Int: Int] = [:]
        for cpu in cpus {
            guard let physical = try? machine.physicalCPU(of: cpu), let cpuState = try? machine.state(of: cpu) else { continue }
            do {
                try atDefaultPriority { () throws(HotplugError) in
                    if cpuState == .standby { try machine.configure(cpu) }
                    if let tid = try machine.threadID(of: cpu) { try Shim.pin(thread: tid, to: physical) }
                }
                ready.insert(cpu)
                physicals[cpu] = physical
            } catch {
                failed(cpu, .online, error)
            }
        }
        guard !ready.isEmpty else { return nil }
        let result: HotplugBatchResult
        do {
            result = try atDefaultPriority { () throws(HotplugError) in try machine.online(ready) }
        } catch {
            for cpu in ready { failed(cpu, .online, error) }
            return nil
        }
        let end = ContinuousClock.now
        for (cpu, error) in result.failures { failed(cpu, .online, error) }
        let done = cpus.filter { result.changed.contains($0) }
        for cpu in done {
            let physical = physicals[cpu] ?? -1
            let unusableSince = state.withLock { state -> ContinuousClock.Instant? in
                state.detachedByMe.remove(cpu)
                state.failing.remove(cpu)
                return state.lastUnusable[physical]
            }
            let from = unusableSince.flatMap { $0 == previousPoll ? $0 : nil } ?? since
            onEvent(.attached(cpu: cpu, physicalCPU: physical, latency: end - from, operation: end - start))
        }
        return done.isEmpty ? nil : (done, end)
    }

    /// The effective cpuset of the process's cgroup (v2, else v1), nil when there is none to read.
    static func cgroupCPUs() -> Set<Int>? {
        KernelFile.read("/proc/self/cgroup").flatMap { CgroupMounts.read().cpus(membership: $0) }
    }

    /// A CPU count with two decimals (`2.50`), for descriptions and event lines.
    public static func format(cpus: Double) -> String {
        let hundredths = Int((cpus * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}

/// Where the cgroup hierarchies that can carry a cpuset are mounted (from `/proc/self/mountinfo`).
struct CgroupMounts: Sendable {
    /// A mount: where it is, and which cgroup path its root is (non-"/" inside some containers).
    struct Mount: Sendable, Equatable {
        let point: String
        let root: String
    }
    /// The cgroup v2 mount, the cgroup v1 mount with the cpuset controller, and the one with the cpu controller.
    let v2: Mount?
    let v1Cpuset: Mount?
    var v1Cpu: Mount? = nil

    static func read() -> CgroupMounts {
        parse(mountinfo: KernelFile.read("/proc/self/mountinfo") ?? "")
    }

    /// Parses mountinfo lines: `id parent major:minor root point options [optional...] - fstype source superoptions`.
    static func parse(mountinfo: String) -> CgroupMounts {
        var v2: Mount?, v1: Mount?, v1Cpu: Mount?
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ").map(String.init)
            guard let dash = fields.firstIndex(of: "-"), dash >= 5, fields.count > dash + 3 else { continue }
            let mount = Mount(point: unescape(fields[4]), root: unescape(fields[3]))
            switch fields[dash + 1] {
            case "cgroup2": v2 = v2 ?? mount
            case "cgroup":
                let options = fields[dash + 3].split(separator: ",")
                if options.contains("cpuset") { v1 = v1 ?? mount }
                if options.contains("cpu") { v1Cpu = v1Cpu ?? mount }
            default: break
            }
        }
        return CgroupMounts(v2: v2, v1Cpuset: v1, v1Cpu: v1Cpu)
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

    /// The effective cpuset of this process's cgroup (`membership`: `/proc/self/cgroup`): v2 first, then a v1 cpuset
    /// hierarchy (an empty or malformed list counts as none).
    func cpus(membership: String) -> Set<Int>? {
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
        /// Whether to follow the CPU quota of the process's cgroup and its ancestors (v2 or v1, when readable).
        public var followQuota: Bool
        /// How a fractional limit becomes a count of logical CPUs (up by default).
        public var rounding: Follower.Rounding
        /// The fewest logical CPUs a quota leaves online (1 or more; a cap may go lower, never below 1).
        public var minimumCPUs: Int
        /// An explicit cap on the logical CPUs online, which overrides the quota (as `GOMAXPROCS` does in Go). Nil:
        /// the environment variable `HOTPLUG_MAX_CPUS` when it is set (a positive integer), else the quota. To go
        /// back to following the quota: leave both unset, or call ``Follower/setMaxCPUs(_:)`` with nil.
        public var maxCPUs: Int?

        /// The name of the environment variable read for ``maxCPUs`` when that is nil.
        public static let maxCPUsVariable = "HOTPLUG_MAX_CPUS"

        public init(interval: Duration = .milliseconds(1), affinityThread: Int32? = nil, followCgroup: Bool = true,
                    followKernel: Bool = true, realtimePriority: Int32? = nil, followQuota: Bool = true,
                    rounding: Follower.Rounding = .up, minimumCPUs: Int = 1, maxCPUs: Int? = nil) {
            self.interval = interval
            self.affinityThread = affinityThread
            self.followCgroup = followCgroup
            self.followKernel = followKernel
            self.realtimePriority = realtimePriority
            self.followQuota = followQuota
            self.rounding = rounding
            self.minimumCPUs = minimumCPUs
            self.maxCPUs = maxCPUs
        }
    }

    /// Starts following the CPUs the process may use (see ``Follower``); `onEvent` runs on the follower's thread.
    /// - Throws: a system error when the follower's thread cannot start, or when the kernel refuses its
    ///   ``FollowOptions/realtimePriority``; ``HotplugError/invalidArgument(name:value:valid:)`` for an
    ///   ``FollowOptions/interval`` out of range, a ``FollowOptions/realtimePriority`` outside 1...99, a
    ///   ``FollowOptions/minimumCPUs`` or ``FollowOptions/maxCPUs`` below 1, or a `HOTPLUG_MAX_CPUS` that is not a
    ///   positive integer; ``HotplugError/shutDown``.
    public func follow(_ options: FollowOptions = FollowOptions(),
                       onEvent: @escaping @Sendable (Follower.Event) -> Void = { _ in }) throws(HotplugError) -> Follower {
        try ensureNotShutDown()
        try validateInterval(options.interval)
        if let priority = options.realtimePriority, !(1...99).contains(priority) {
            throw .invalidArgument(name: "realtimePriority", value: "\(priority)", valid: "1...99")
        }
        guard options.minimumCPUs >= 1 else {
            throw .invalidArgument(name: "minimumCPUs", value: "\(options.minimumCPUs)", valid: "1 or more")
        }
        var cap = options.maxCPUs
        if let value = cap, value < 1 { throw .invalidArgument(name: "maxCPUs", value: "\(value)", valid: "1 or more, or nil") }
        if cap == nil, let text = Shim.environment(FollowOptions.maxCPUsVariable) {
            guard let value = QuotaFormat.value(text) else {
                throw .invalidArgument(name: FollowOptions.maxCPUsVariable, value: text, valid: "a positive integer")
            }
            cap = value
        }
        let follower = Follower(machine: self, options: options, cap: cap, onEvent: onEvent)
        try follower.start()
        return follower
    }
}
