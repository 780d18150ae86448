import Logging
import Metrics
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A set of logical CPUs on real, pinned OS threads, attached and detached while the program runs.
///
/// A machine has `possible` logical CPUs with dense ids `0..<possible`. Logical CPU `i` runs on slot
/// `i % topology.cpus.count` of its ``Topology``, so more logical CPUs than physical ones is allowed
/// (oversubscription: every wait in the runtime spins for a bounded budget, then parks in the kernel).
///
/// Masks, as in Linux: ``possible`` ⊇ ``present`` (its thread exists) ⊇ ``online`` ⊇ ``active``.
/// Lifecycle: ``configure(_:)``, ``online(_:)``, ``offline(_:)``, ``deconfigure(_:)``; lifecycle operations
/// are serialised. Requesting the state a CPU is already in is a no-op success.
///
/// Orders: ``sigp(_:_:parameter:)``; cross-calls on top of them: ``run(on:timeout:_:)``,
/// ``submit(on:_:)`` and ``runOnEach(timeout:_:)``.
///
/// ``shutdown()`` (also run by `deinit`) takes every CPU offline, joins every thread and releases the signal.
public final class Machine: Sendable {
    /// How a machine behaves.
    public struct Configuration: Sendable {
        /// The signal that carries SIGP orders to CPUs running code. nil: `SIGRTMIN + 6`.
        public var signal: Int32?
        /// Logical CPUs configured and brought online at creation (ids `0..<n`). nil: all of them.
        public var initiallyOnline: Int?
        /// How long an idle CPU polls its mailbox before it parks in the kernel; zero or negative: it parks at
        /// once; `Duration.noTimeout`: it never parks.
        public var pollTime: Duration
        /// How long a sender waits for a running CPU to acknowledge an order's signal (``HotplugError/notResponding(cpu:order:waitedNanoseconds:)``),
        /// and a lifecycle operation for the CPU to reach a safe point (``HotplugError/timeout(cpu:operation:waitedNanoseconds:)``);
        /// the default of every `timeout: nil`. Zero or negative: no wait, one try; `Duration.noTimeout`: no limit.
        public var responseTimeout: Duration
        /// How long a sender waits for an acknowledgement before it sends the signal again. Must be positive.
        public var resendInterval: Duration
        /// Receives what SIGP orders leave for a CPU's safe point (external calls, emergency signals, restarts),
        /// on that CPU's own thread.
        public var interruptHandler: (@Sendable (_ cpu: Int, _ interruption: SIGPInterruption) -> Void)?
        /// Where the machine's metrics go (the DocC article "Metrics"); nil: `MetricsSystem.factory` as it is when
        /// the machine is created (a no-op until the application bootstraps a backend). Its metric objects are
        /// made once, at creation.
        public var metricsFactory: (any MetricsFactory)?

        public init(signal: Int32? = nil, initiallyOnline: Int? = nil, pollTime: Duration = .microseconds(20),
                    responseTimeout: Duration = .seconds(5), resendInterval: Duration = .milliseconds(10),
                    metricsFactory: (any MetricsFactory)? = nil,
                    interruptHandler: (@Sendable (_ cpu: Int, _ interruption: SIGPInterruption) -> Void)? = nil) {
            self.metricsFactory = metricsFactory
            self.signal = signal
            self.initiallyOnline = initiallyOnline
            self.pollTime = pollTime
            self.responseTimeout = responseTimeout
            self.resendInterval = resendInterval
            self.interruptHandler = interruptHandler
        }
    }

    struct State {
        var cpus: [LogicalCPUState]
        var threads: [pthread_t?]
        var present = CPUSet()
        var online = CPUSet()
        var active = CPUSet()
        var isShutDown = false
    }

    public let topology: Topology
    /// The physical CPUs the topology's slots use (stop_machine parks instead of spinning when its participants
    /// outnumber them); counted once.
    let physicalCPUCount: Int
    /// The number of possible logical CPUs.
    public let possibleCount: Int
    /// The signal carrying SIGP orders.
    public let signal: Int32
    let cores: [CPUCore]
    let logger: Logger
    let responseNanoseconds: Int64
    let resendNanoseconds: Int64
    let state: Locked<State>
    /// Serialises lifecycle operations (held for a whole operation; `state` only for short reads and writes).
    let operations = Lock()
    /// The hotplug read/write lock (Linux's `cpu_hotplug_lock`): readers keep the online mask stable.
    let hotplugLock = ReadWriteLock()
    /// Serialises stop_machine runs.
    let stopMachineSerial = Lock()
    /// The hotplug state table and each CPU's progress through it.
    let registry: HotplugRegistry
    /// The subsystems with built-in hotplug states (tasklets, slab caches).
    let subsystems: BuiltinSubsystems
    let id: UInt64
    /// This machine's metric objects (made once, here; recorded on cold paths only).
    let metrics: HotplugMetrics

    /// The tasklet lists of every CPU.
    var tasklets: TaskletEngine { subsystems.tasklets }
    /// The slab caches of this machine (drained by `slab:dead`).
    var slabs: SlabRegistry { subsystems.slabs }

    private static let machineIDs = Atomic<UInt64>(0)

    /// Creates a machine and brings `configuration.initiallyOnline` CPUs online.
    /// - Parameters:
    ///   - topology: the physical CPUs and nodes to use; nil: ``Topology/current()``.
    ///   - cpus: the number of possible logical CPUs; nil: one per slot of the topology.
    ///   - configuration: signal, polling and time bounds, interrupt handler.
    ///   - logger: receives lifecycle transitions at debug level.
    /// - Throws: ``HotplugError/signalInUse(_:)`` when the application already handles the signal,
    ///   ``HotplugError/invalidSignal(_:)``, ``HotplugError/invalidConfiguration(_:)`` (no CPU, `initiallyOnline`
    ///   out of `1...cpus`), ``HotplugError/invalidArgument(name:value:valid:)`` (more than ``maximumCPUs`` CPUs,
    ///   a `resendInterval` that is not positive), or a system error. `responseTimeout` and `pollTime` follow
    ///   the timeout rule: zero or negative is one try, `Duration.noTimeout` no limit
    ///   (`docs/ARCHITECTURE.md`, "Layers", "Timeouts").
    public init(topology: Topology? = nil, cpus: Int? = nil, configuration: Configuration = Configuration(),
                logger: Logger = Logger(label: "hotplug")) throws(HotplugError) {
        var resolved: Topology
        if let topology { resolved = topology } else { resolved = try Topology.current() }
        let topology = resolved
        let possible = cpus ?? topology.cpus.count
        try Machine.validate(cpus: possible, configuration: configuration)
        let initial = configuration.initiallyOnline ?? possible
        guard (1...possible).contains(initial) else {
            throw .invalidConfiguration("initiallyOnline must be in 1...\(possible), got \(initial)")
        }
        let signal = configuration.signal ?? (Shim.realtimeSignalRange.lowerBound + 6)
        try Shim.installSIGP(signal: signal)
        let id = Machine.machineIDs.add(1, ordering: .relaxed).newValue
        let registry = HotplugRegistry(possible: possible, machineID: id, logger: logger)
        var cores: [CPUCore] = []
        do {
            for cpu in 0..<possible {
                cores.append(try CPUCore(id: cpu, slot: topology.cpus[cpu % topology.cpus.count], machineID: id,
                                         pollNanoseconds: configuration.pollTime.pollNanoseconds,
                                         interruptHandler: configuration.interruptHandler,
                                         startingHook: { cpu in registry.walkStarting(cpu, .startup) }))
            }
        } catch {
            Shim.uninstallSIGP(signal: signal)
            throw error
        }
        self.topology = topology
        physicalCPUCount = Set(topology.cpus.map(\.physicalID)).count
        self.possibleCount = possible
        self.signal = signal
        self.cores = cores
        self.registry = registry
        subsystems = BuiltinSubsystems(HotplugSubsystemContext(cores: cores, machineID: id, registry: registry,
                                                               logger: logger))
        self.logger = logger
        self.responseNanoseconds = configuration.responseTimeout.timeoutNanoseconds
        self.resendNanoseconds = configuration.resendInterval.timeoutNanoseconds
        self.id = id
        self.metrics = HotplugMetrics(factory: configuration.metricsFactory ?? MetricsSystem.factory, possible: possible)
        self.state = Locked(State(cpus: Array(repeating: .standby, count: possible),
                                 threads: Array(repeating: nil, count: possible)))
        do {
            for cpu in 0..<initial {
                try configure(cpu)
                try online(cpu)
            }
        } catch {
            shutdown()
            throw error
        }
    }

    deinit { shutdown() }

    // MARK: Masks and introspection

    public var possible: CPUSet { CPUSet(0..<possibleCount) }
    public var present: CPUSet { state.withLock { $0.present } }
    public var online: CPUSet { state.withLock { $0.online } }
    public var active: CPUSet { state.withLock { $0.active } }

    /// The lifecycle state of a logical CPU.
    public func state(of cpu: Int) throws(HotplugError) -> LogicalCPUState {
        try validate(cpu)
        return state.withLock { $0.cpus[cpu] }
    }

    /// What the CPU's thread is doing right now.
    public func runState(of cpu: Int) throws(HotplugError) -> RunState {
        try validate(cpu)
        return cores[cpu].control.runState
    }

    /// The kernel thread id of a present CPU (for /proc/self/task/TID), nil in standby.
    public func threadID(of cpu: Int) throws(HotplugError) -> Int32? {
        try validate(cpu)
        let present = state.withLock { $0.present.contains(cpu) }
        return present ? cores[cpu].control.threadID : nil
    }

    /// The physical CPU a logical CPU is pinned to.
    public func physicalCPU(of cpu: Int) throws(HotplugError) -> Int {
        try validate(cpu)
        return cores[cpu].slot.physicalID
    }

    /// The NUMA node of a logical CPU (synthetic or real, as the topology says).
    public func node(of cpu: Int) throws(HotplugError) -> Int {
        try validate(cpu)
        return cores[cpu].slot.node
    }

    /// The logical CPU of this machine the caller runs on, nil on any other thread.
    public var currentCPU: Int? { CPUCore.currentID(machineID: id) }

    /// Tasklet runs queued on a CPU and not yet taken (an estimate: a load signal, e.g. for a balancer).
    public func queuedTasklets(on cpu: Int) throws(HotplugError) -> Int {
        try validate(cpu)
        return tasklets.queues[cpu].queued
    }

    /// The CPU time a present CPU's thread has used, nil in standby.
    /// - Throws: ``HotplugError/system(call:errno:)`` when the kernel does not say.
    public func cpuTime(of cpu: Int) throws(HotplugError) -> Duration? {
        guard let tid = try threadID(of: cpu) else { return nil }
        return .nanoseconds(try Shim.threadCPUTime(tid))
    }

    /// The time a CPU has spent parked in its idle wait with nothing to do, since the machine was made (its threads'
    /// parks added up; the park in progress counts up to now). Over an interval, the interval less this time's
    /// growth is the time the CPU had work: running, polling for orders, stopped, or waiting for a physical CPU
    /// (preempted by other threads, or throttled by a CPU quota). So it shows demand where ``cpuTime(of:)`` shows
    /// only what the kernel granted: on a shared or throttled machine a CPU with work all the time has little CPU
    /// time, but no idle time. A CPU that is offline or in standby is not in its idle wait: its idle time stands.
    /// - Throws: ``HotplugError/invalidCPU(_:)`` for an id outside `0..<possible`.
    public func idleTime(of cpu: Int) throws(HotplugError) -> Duration {
        try validate(cpu)
        return .nanoseconds(cores[cpu].control.idleNanoseconds)
    }

    /// Counters of how orders reached a CPU.
    public func deliveryStatistics(of cpu: Int) throws(HotplugError) -> DeliveryStatistics {
        try validate(cpu)
        return cores[cpu].control.statistics
    }

    /// The status area written by ``SIGPOrder/stopAndStoreStatus``, nil when none was stored.
    public func storedStatus(of cpu: Int) throws(HotplugError) -> StoredStatus? {
        try validate(cpu)
        return cores[cpu].control.storedStatus
    }

    func validate(_ cpu: Int) throws(HotplugError) {
        guard (0..<possibleCount).contains(cpu) else { throw .invalidCPU(cpu) }
    }

    // MARK: Lifecycle

    /// standby -> parked: creates the CPU's thread, pinned to its physical CPU and blocked in the kernel.
    /// - Throws: ``HotplugError/invalidCPU(_:)``, ``HotplugError/incorrectState(cpu:state:operation:)`` when the
    ///   CPU is already configured, ``HotplugError/shutDown``, or a system error (thread creation, pinning);
    ///   ``HotplugError/wouldDeadlock(operation:reason:)`` when called from a hotplug callback, a stop_machine body
    ///   or a CPU going offline (docs/ARCHITECTURE.md, "Rules for callbacks and bodies").
    public func configure(_ cpu: Int) throws(HotplugError) {
        try validate(cpu)
        try refuseReentry(.configure)
        try withOperation { () throws(HotplugError) in
            let current = state.withLock { $0.cpus[cpu] }
            guard current == .standby else {
                throw .incorrectState(cpu: cpu, state: current, operation: .configure)
            }
            let core = cores[cpu]
            let started = Shim.monotonicNanoseconds()
            core.control.prepareForNewThread()
            core.startError = nil
            core.ack.reset()
            let thread = try Shim.spawnThread { core.threadMain() }
            _ = core.ack.wait()   // no user code runs before this acknowledgement: it cannot be held up
            if let error = core.startError {
                try? Shim.join(thread)
                throw error
            }
            state.withLock {
                $0.cpus[cpu] = .parked
                $0.threads[cpu] = thread
                $0.present.insert(cpu)
            }
            trace(cpu, "configure", started)
        }
    }

    /// Attaches a parked CPU: walks it up through the hotplug states (PREPARE startups on this thread;
    /// stop_machine, SIGP START, STARTING startups on the CPU; ONLINE startups on the CPU) to online and active.
    /// A no-op for an online CPU; a CPU left part-way by a failed rollback continues from where it stopped.
    /// - Throws: ``HotplugError/notPresent(cpu:)``, ``HotplugError/busy(cpu:reason:)`` (hotplug disabled),
    ///   ``HotplugError/callbackFailed(_:)`` (rolled back, or not: see its `rolledBack`),
    ///   ``HotplugError/timeout(cpu:operation:waitedNanoseconds:)``, ``HotplugError/invalidCPU(_:)``,
    ///   ``HotplugError/shutDown``; ``HotplugError/wouldDeadlock(operation:reason:)`` when called from a hotplug
    ///   callback, a stop_machine body or a CPU going offline (docs/ARCHITECTURE.md, "Rules for callbacks and
    ///   bodies").
    public func online(_ cpu: Int) throws(HotplugError) {
        try validate(cpu)
        try refuseReentry(.online)
        try withOperation { () throws(HotplugError) in try attachLocked(cpu) }
    }

    /// Detaches an online CPU: walks it down (ONLINE teardowns on the CPU; stop_machine, STARTING teardowns on
    /// the dying CPU, out of the online mask, its thread parks after finishing the cross-calls it accepted;
    /// PREPARE teardowns on this thread). A no-op for a parked CPU.
    ///
    /// A CPU cannot take itself offline: the detach waits until the CPU parks, which it does only at its next safe
    /// point, after the caller's code returns. Called on `cpu` itself (a cross-call or tasklet on it) it fails at
    /// once; hand it to another CPU instead (``submit(on:_:)``), which returns at once and detaches `cpu` after the
    /// caller's code has returned.
    /// - Throws: ``HotplugError/busy(cpu:reason:)`` for the last online CPU or while hotplug is disabled;
    ///   ``HotplugError/stoppedByOrder(cpu:)`` for a CPU stopped by a SIGP order (START it first);
    ///   ``HotplugError/callbackFailed(_:)`` (rolled forward, or not);
    ///   ``HotplugError/timeout(cpu:operation:waitedNanoseconds:)`` when a CPU does not reach a safe point in time
    ///   (nothing changed then); ``HotplugError/notPresent(cpu:)``, ``HotplugError/invalidCPU(_:)``,
    ///   ``HotplugError/shutDown``; ``HotplugError/wouldDeadlock(operation:reason:)`` when called on `cpu` itself,
    ///   from a hotplug callback, a stop_machine body or a CPU going offline (docs/ARCHITECTURE.md, "Rules for
    ///   callbacks and bodies").
    public func offline(_ cpu: Int) throws(HotplugError) {
        try validate(cpu)
        try refuseReentry(.offline, target: cpu)
        try withOperation { () throws(HotplugError) in try detachLocked(cpu) }
    }

    /// parked -> standby: the CPU's thread exits and is joined. A no-op in standby.
    /// - Throws: ``HotplugError/incorrectState(cpu:state:operation:)`` for an online CPU (offline it first),
    ///   ``HotplugError/invalidCPU(_:)``, ``HotplugError/shutDown``; ``HotplugError/wouldDeadlock(operation:reason:)``
    ///   when called on `cpu` itself (its thread cannot join itself), from a hotplug callback, a stop_machine body
    ///   or a CPU going offline (docs/ARCHITECTURE.md, "Rules for callbacks and bodies").
    public func deconfigure(_ cpu: Int) throws(HotplugError) {
        try validate(cpu)
        try refuseReentry(.deconfigure, target: cpu)
        try withOperation { () throws(HotplugError) in
            try deconfigureLocked(cpu)
        }
    }

    private func deconfigureLocked(_ cpu: Int) throws(HotplugError) {
        let (current, thread) = state.withLock { ($0.cpus[cpu], $0.threads[cpu]) }
        switch current {
        case .standby: return
        case .online: throw .incorrectState(cpu: cpu, state: .online, operation: .deconfigure)
        case .parked: break
        }
        let started = Shim.monotonicNanoseconds()
        let core = cores[cpu]
        core.control.lifecycle = .exit
        core.control.wakeLifecycle()
        if let thread { try Shim.join(thread) }
        state.withLock {
            $0.cpus[cpu] = .standby
            $0.threads[cpu] = nil
            $0.present.remove(cpu)
        }
        trace(cpu, "deconfigure", started)
    }

    /// Takes every CPU offline (starting those stopped by orders), joins every thread and releases the signal.
    /// Idempotent; later operations throw ``HotplugError/shutDown``.
    ///
    /// A CPU that does not reach a safe point within ``Configuration/responseTimeout`` (busy in a long cross-call or
    /// tasklet, stuck in user code) is left running, and only that one: it is logged, it leaves the masks (so that
    /// the stop_machine runs taking the other CPUs down no longer wait for it), its queue refuses new cross-calls,
    /// and its thread exits by itself when its current work returns to its safe point; its memory is never freed
    /// under it. The SIGP handler stays installed until the last such thread has exited, so a signal still pending
    /// on it never meets the signal's default action (which would kill the process).
    ///
    /// Called on one of this machine's CPUs (its last reference dropped there), that CPU is retired last, inline:
    /// its thread exits when the current work returns to its safe point.
    /// Called where it would wait for its caller (a hotplug callback, a stop_machine body, a cross-call run by a CPU
    /// on its way offline: docs/ARCHITECTURE.md, "Rules for callbacks and bodies"), it cannot shut down there: it
    /// hands the shutdown to a thread of its own, which runs it as soon as the operation in progress has finished,
    /// logs that, and returns an empty set at once.
    /// - Returns: the CPUs left running, in the state described above; empty when every CPU went down, on every
    ///   call after the first, and when the shutdown was handed to a thread of its own.
    @discardableResult
    public func shutdown() -> CPUSet {
        if let reason = reentry() {
            logger.warning("shutdown called where it would wait for itself (\(reason.rawValue)): it runs on a thread of its own once the operation in progress has finished")
            do {
                Shim.detach(try Shim.spawnThread { [self] in shutdown() })
            } catch {
                logger.critical("shutdown: no thread to hand the shutdown to (\(error)); the machine stays up")
            }
            return []
        }
        return operations.withLock { () -> CPUSet in
            guard !state.withLock({ $0.isShutDown }) else { return [] }
            // Release every CPU stopped by an order first (and drop STOPs not taken yet): a stopped CPU cannot
            // reach the safe point that every stop_machine below needs from it.
            for core in cores where core.isStoppedByOrder {
                _ = core.control.retract([.stop, .stopStore, .stopped, .restart])
                core.control.wakeMailbox()
            }
            // Highest first, so that the lowest CPU (usually the first one attached) goes last. A shutdown running
            // on one of this machine's own CPUs retires that CPU last, inline.
            let me = currentCPU
            var leftRunning = CPUSet()
            for cpu in (0..<possibleCount).reversed() where cpu != me {
                // Each retry leaves one more CPU behind, so this ends within `possibleCount` tries.
                while !leftRunning.contains(cpu) && state.withLock({ $0.cpus[cpu] }) != .standby {
                    do throws(HotplugError) {
                        try detachLocked(cpu, allowLast: true)
                        try deconfigureLocked(cpu)
                    } catch {
                        // A timeout names the CPU that did not reach a safe point (this one, or one that held up
                        // the stop_machine taking this one down): leave that one running and go on without it.
                        if let stuck = Machine.unresponsiveCPU(in: error), stuck != me, !leftRunning.contains(stuck),
                           state.withLock({ $0.cpus[stuck] }) == .online {
                            logger.error("shutdown: logical CPU \(stuck) did not reach a safe point (\(error)); its thread is left running and exits at its next safe point")
                            abandonForShutdown(stuck)
                            leftRunning.insert(stuck)
                        } else {
                            logger.error("shutdown: logical CPU \(cpu) did not go down: \(error); its thread is left running")
                            leftRunning.insert(cpu)
                        }
                    }
                }
            }
            if let me { retireCurrentCPU(me) }
            let dropped = tasklets.droppedAtShutdown.load(ordering: .relaxed)
            if dropped > 0 { logger.warning("shutdown: \(dropped) scheduled tasklet run(s) had no CPU left and did not run") }
            state.withLock { $0.isShutDown = true }
            sampleOperationMetrics()
            slabs.close()
            Shim.uninstallSIGP(signal: signal)   // the handler stays while a CPU thread is left (see Shim)
            return leftRunning
        }
    }

    /// The CPU a hotplug error says did not reach a safe point in time, if it says so (directly, or as the cause of
    /// a failed callback step).
    private static func unresponsiveCPU(in error: HotplugError) -> Int? {
        switch error {
        case .timeout(let cpu, _, _), .notResponding(let cpu, _, _): return cpu
        case .callbackFailed(let failure):
            return (failure.underlying as? HotplugError).flatMap { unresponsiveCPU(in: $0) }
        default: return nil
        }
    }

    /// Leaves a CPU that cannot reach a safe point behind at shutdown: it refuses new cross-calls, leaves every
    /// mask (later stop_machine runs go on without it), and its lifecycle asks it to exit: at its next safe point
    /// it runs the calls it had accepted, parks and its thread exits, detached (it retains its core, not the
    /// machine).
    private func abandonForShutdown(_ cpu: Int) {
        cores[cpu].setAcceptingCalls(false)
        letThreadExit(cpu)
    }

    /// Takes `cpu` out of every mask and lets its thread exit, detached, at its next safe point (it goes offline,
    /// then exits): the end of both ways a shutdown leaves a CPU without a join.
    private func letThreadExit(_ cpu: Int) {
        let thread = state.withLock { state -> pthread_t? in
            state.active.remove(cpu)
            state.online.remove(cpu)
            state.present.remove(cpu)
            state.cpus[cpu] = .standby
            defer { state.threads[cpu] = nil }
            return state.threads[cpu]
        }
        if let thread { Shim.detach(thread) }
        cores[cpu].control.lifecycle = .exit
        _ = cores[cpu].control.post(.lifecycle)   // taken at its next safe point: it goes offline, then exits
    }

    /// Takes down the CPU the caller runs on: the hotplug walk down to ``HotplugState/offline`` in its retire
    /// mode, inline on this CPU's own thread (the ONLINE teardowns, then `cpu:teardown` blocks the signal and walks
    /// the STARTING teardowns, then the PREPARE teardowns; a failure is logged and the walk goes on); then it
    /// leaves every mask, and its thread exits detached when the current work returns to its safe point.
    private func retireCurrentCPU(_ cpu: Int) {
        do {
            try walk(cpu, to: .offline, mode: .retire)
        } catch {
            preconditionFailure("the retire walk of CPU \(cpu) returned \(error.error); it logs its failures")
        }
        letThreadExit(cpu)   // the walk's `online` teardown already took it out of the active mask
    }

    /// Where the calling thread runs inside this machine such that a hotplug operation, a registration or a
    /// stop_machine would wait for the caller itself: inside a hotplug callback or a stop_machine body (the
    /// thread's ``ThreadContext``), or on a CPU on its way offline (it runs the cross-calls it accepted, and the
    /// detach taking it down waits for it to park). nil elsewhere, including on foreign threads while another
    /// thread's operation runs: they simply wait for the lock. Cold: lifecycle calls only.
    func reentry() -> DeadlockReason? {
        let context = ThreadContext.current(machineID: id)
        if context.contains(.hotplugCallback) { return .insideHotplugCallback }
        if context.contains(.stopMachineBody) { return .insideStopMachine }
        // A CPU thread running code is online, unless it runs what it accepted before going offline: its state
        // says parked from the moment the stop_machine of `cpu:teardown` took it out of the online mask.
        if let me = currentCPU, state.withLock({ $0.cpus[me] }) != .online { return .callerGoingOffline }
        return nil
    }

    /// Throws ``HotplugError/wouldDeadlock(operation:reason:)`` when `operation` would wait for the calling thread
    /// (see ``reentry()``), or would take down `target` while running on it.
    func refuseReentry(_ operation: HotplugOperation, target: Int? = nil) throws(HotplugError) {
        if let reason = reentry() { throw .wouldDeadlock(operation: operation, reason: reason) }
        if let target, currentCPU == target { throw .wouldDeadlock(operation: operation, reason: .calledOnTargetCPU) }
    }

    func withOperation<T>(_ body: () throws(HotplugError) -> T) throws(HotplugError) -> T {
        let result: Result<T, HotplugError> = operations.withLock {
            if state.withLock({ $0.isShutDown }) { return .failure(.shutDown) }
            do throws(HotplugError) { return .success(try body()) } catch { return .failure(error) }
        }
        return try result.get()
    }

    func trace(_ cpu: Int, _ operation: String, _ started: Int64) {
        logger.debug("hotplug transition", metadata: [
            "cpu": "\(cpu)", "operation": "\(operation)",
            "duration_us": "\(Double(Shim.monotonicNanoseconds() - started) / 1000)",
        ])
        sampleOperationMetrics(cpu: cpu >= 0 ? cpu : nil)
    }
}
