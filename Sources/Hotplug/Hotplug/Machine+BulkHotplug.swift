/// What a bulk attach or detach did: the CPUs it moved, and each CPU it could not move with the reason. A CPU that
/// failed is back where it started unless its error says otherwise (``HotplugCallbackFailure/rolledBack``); the
/// others completed regardless.
public struct HotplugBatchResult: Sendable, Equatable {
    /// The CPUs this call attached (or detached).
    public var changed = CPUSet()
    /// The CPUs it did not, each with its error.
    public var failures: [Int: HotplugError] = [:]

    /// True when every CPU asked for ended where it was asked to (already there counts).
    public var isComplete: Bool { failures.isEmpty }

    public init() {}
}

extension Machine {
    /// Attaches a set of CPUs in one walk (docs/ARCHITECTURE.md, "The hotplug walk"): each CPU's PREPARE startups,
    /// then **one** stop_machine that starts them all (each walks its STARTING startups while every other online
    /// CPU, including the ones this call started before it, is held), then each CPU's ONLINE startups and
    /// activation. A CPU whose step fails is rolled back alone and reported in the result; the others complete.
    /// CPUs already online are left as they are (neither changed nor failed).
    /// - Throws: only what refuses the whole call, with nothing changed: ``HotplugError/invalidCPU(_:)``,
    ///   ``HotplugError/busy(cpu:reason:)`` while hotplug is disabled, ``HotplugError/shutDown``,
    ///   ``HotplugError/wouldDeadlock(operation:reason:)`` (as ``online(_:)-(Int)``).
    @discardableResult
    public func online(_ cpus: CPUSet) throws(HotplugError) -> HotplugBatchResult {
        for cpu in cpus { try validate(cpu) }
        try refuseReentry(.online)
        return try withOperation { () throws(HotplugError) in try attachLocked(cpus) }
    }

    /// Detaches a set of CPUs in one walk: each CPU's deactivation and ONLINE teardowns, then **one**
    /// stop_machine in which the dying CPUs, one after another, walk their STARTING teardowns and leave the online
    /// mask, then each CPU's PREPARE teardowns (its tasklets, executors and slab magazines handed on). A CPU whose
    /// step fails is rolled forward alone and reported; the others complete. CPUs already offline are left alone.
    /// - Throws: only what refuses the whole call, with nothing changed: ``HotplugError/busy(cpu:reason:)`` with
    ///   ``BusyReason/lastOnlineCPU`` when the set holds every online CPU, or while hotplug is disabled;
    ///   ``HotplugError/invalidCPU(_:)``, ``HotplugError/shutDown``, ``HotplugError/wouldDeadlock(operation:reason:)``
    ///   (also when called on a CPU of the set).
    @discardableResult
    public func offline(_ cpus: CPUSet) throws(HotplugError) -> HotplugBatchResult {
        for cpu in cpus { try validate(cpu) }
        for cpu in cpus { try refuseReentry(.offline, target: cpu) }
        try refuseReentry(.offline)
        return try withOperation { () throws(HotplugError) in try detachLocked(cpus) }
    }

    // MARK: Attach

    /// Caller holds `operations`.
    func attachLocked(_ cpus: CPUSet) throws(HotplugError) -> HotplugBatchResult {
        var result = HotplugBatchResult()
        if registry.contents.withLock({ $0.disableDepth }) > 0, let first = cpus.first(where: { _ in true }) {
            throw .busy(cpu: first, reason: .hotplugDisabled)
        }
        var pending: [Int] = []
        for cpu in cpus {
            if state.withLock({ $0.cpus[cpu] }) == .standby {
                result.failures[cpu] = .notPresent(cpu: cpu)
            } else if registry.current(cpu) != .online {
                pending.append(cpu)
            }
        }
        // A machine with no CPU online has nobody to hold: its first CPU comes up alone.
        while online.isEmpty, let first = pending.first {
            pending.removeFirst()
            do throws(HotplugError) {
                try attachLocked(first)
                result.changed.insert(first)
            } catch {
                result.failures[first] = error
            }
        }
        guard !pending.isEmpty else { return result }
        let started = Shim.monotonicNanoseconds()
        hotplugLock.withWriteLock {
            for cpu in pending { registry.setTarget(cpu, .online) }
            defer { for cpu in pending { registry.setTarget(cpu, registry.current(cpu)) } }
            // 1. PREPARE, each CPU on its own.
            let beforeBringup = HotplugTable.state(before: .bringup)
            var ready: [Int] = []
            for cpu in pending {
                do throws(HotplugError) {
                    try walkOrRollBack(cpu, to: beforeBringup)
                    ready.append(cpu)
                } catch {
                    result.failures[cpu] = error
                }
            }
            // 2. One stop_machine starts them all; an injected failure keeps its CPU out of it.
            ready = ready.filter { cpu in
                guard registry.takeInjection(cpu, .bringup, .startup) else { return true }
                let injected = InjectedFailure(state: .bringup, cpu: cpu, direction: .startup)
                result.failures[cpu] = rollBack(cpu, to: .offline, after: .bringup, .startup, injected)
                return false
            }
            if !ready.isEmpty {
                do {
                    try bringUpAll(ready)
                } catch {
                    for cpu in ready {
                        registry.setCurrent(cpu, beforeBringup)
                        result.failures[cpu] = rollBack(cpu, to: .offline, after: .bringup, .startup, error)
                    }
                    ready = []
                }
            }
            // 3. The rest of the way, each CPU on its own; a failure takes that CPU all the way back.
            for cpu in ready {
                do throws(HotplugError) {
                    try walkOrRollBack(cpu, to: .online, rollingBackTo: .offline)
                    result.changed.insert(cpu)
                } catch {
                    result.failures[cpu] = error
                }
            }
        }
        metrics.recordOperation(attach: true, HotplugOutcome(result), started: started)
        trace(-1, "bulk attach of \(pending.count)", started)
        return result
    }

    /// `cpu:bringup` for a batch: one stop_machine; inside it each CPU in turn enters the online mask, is started
    /// with SIGP START, walks its STARTING startups on its own thread and acknowledges, then waits (held) until the
    /// stop_machine has ended, so that every STARTING callback runs with every other online CPU held.
    private func bringUpAll(_ cpus: [Int]) throws {
        let hold = Completion()
        for cpu in cpus {
            let core = cores[cpu]
            core.setAcceptingCalls(true)
            core.ack.reset()
            core.startHold = hold
            registry.setCurrent(cpu, .bringup)   // counts as done while it runs, as the walk keeps it
        }
        // Signalled in every case; each CPU clears its own `startHold` once it has passed it (a CPU that was never
        // started finds it signalled the next time it starts).
        defer { hold.signal() }
        try stopMachineLocked(active: nil, timeout: nil, anywhere: true) { [self] _ in
            for cpu in cpus {
                let core = cores[cpu]
                state.withLock {
                    $0.cpus[cpu] = .online
                    $0.online.insert(cpu)
                }
                core.control.lifecycle = .online
                let result = try core.control.sigp(.start, parameter: 0, source: nil, cpu: cpu,
                                                   resendNanoseconds: resendNanoseconds,
                                                   timeoutNanoseconds: responseNanoseconds)
                precondition(result.conditionCode == .accepted, "SIGP START to parked CPU \(cpu) answered \(result)")
                _ = core.ack.wait()
            }
        }
    }

    // MARK: Detach

    /// Caller holds `operations`.
    func detachLocked(_ cpus: CPUSet) throws(HotplugError) -> HotplugBatchResult {
        var result = HotplugBatchResult()
        guard let first = cpus.first(where: { _ in true }) else { return result }
        if registry.contents.withLock({ $0.disableDepth }) > 0 { throw .busy(cpu: first, reason: .hotplugDisabled) }
        let online = self.online
        if online.allSatisfy({ cpus.contains($0) }) { throw .busy(cpu: first, reason: .lastOnlineCPU) }
        var pending: [Int] = []
        for cpu in cpus {
            let lifecycle = state.withLock { $0.cpus[cpu] }
            if lifecycle == .standby {
                result.failures[cpu] = .notPresent(cpu: cpu)
            } else if registry.current(cpu) == .offline && lifecycle == .parked {
                continue
            } else if cores[cpu].isStoppedByOrder {
                result.failures[cpu] = .stoppedByOrder(cpu: cpu)
            } else {
                pending.append(cpu)
            }
        }
        guard !pending.isEmpty else { return result }
        let started = Shim.monotonicNanoseconds()
        hotplugLock.withWriteLock {
            for cpu in pending { registry.setTarget(cpu, .offline) }
            defer { for cpu in pending { registry.setTarget(cpu, registry.current(cpu)) } }
            // 1. Down to cpu:teardown (deactivation, ONLINE teardowns), each CPU on its own.
            var dying: [Int] = []
            for cpu in pending {
                do throws(HotplugError) {
                    try walkOrRollBack(cpu, to: .teardownCPU)
                    dying.append(cpu)
                } catch {
                    result.failures[cpu] = error
                }
            }
            // 2. One stop_machine for every death; an injected failure keeps its CPU alive.
            dying = dying.filter { cpu in
                guard registry.takeInjection(cpu, .teardownCPU, .teardown) else { return true }
                let injected = InjectedFailure(state: .teardownCPU, cpu: cpu, direction: .teardown)
                result.failures[cpu] = rollBack(cpu, to: .online, after: .teardownCPU, .teardown, injected)
                return false
            }
            if !dying.isEmpty {
                do {
                    try takeDownAll(dying)
                } catch {
                    for cpu in dying {
                        registry.setCurrent(cpu, .teardownCPU)
                        result.failures[cpu] = rollBack(cpu, to: .online, after: .teardownCPU, .teardown, error)
                    }
                    dying = []
                }
            }
            // 3. PREPARE teardowns (they may not fail: what a dead CPU held is handed on).
            for cpu in dying {
                do throws(StepFailure) {
                    try walk(cpu, to: .offline, mode: .operation)
                    result.changed.insert(cpu)
                } catch {
                    result.failures[cpu] = failure(error.state, cpu, error.direction, error.error, rolledBack: false)
                }
            }
        }
        metrics.recordOperation(attach: false, HotplugOutcome(result), started: started)
        trace(-1, "bulk detach of \(pending.count)", started)
        return result
    }

    /// `cpu:teardown` for a batch: one stop_machine with the dying CPUs active; they take turns (in CPU order) to
    /// walk their STARTING teardowns, so each runs while every other online CPU is stopped; then each leaves the
    /// online mask and is told to park, and this waits until all have parked.
    private func takeDownAll(_ cpus: [Int]) throws {
        let turn = TurnTicket(cpus.count)
        for cpu in cpus {
            cores[cpu].ack.reset()
            registry.setCurrent(cpu, HotplugTable.state(before: .teardownCPU))
        }
        try stopMachineLocked(active: CPUSet(cpus), timeout: nil) { [self] cpu in
            guard let index = cpus.firstIndex(of: cpu) else { return }
            turn.wait(for: index)
            defer { turn.pass(to: index + 1) }
            let core = cores[cpu]
            registry.walkStarting(cpu, .teardown)
            state.withLock {
                $0.online.remove(cpu)
                $0.cpus[cpu] = .parked
            }
            core.control.lifecycle = .offline
            _ = core.control.post(.lifecycle)
        }
        for cpu in cpus { _ = cores[cpu].ack.wait() }
    }

    /// Walks a CPU whose bulk step failed back to `start`, and the error to report for it.
    private func rollBack(_ cpu: Int, to start: HotplugState, after step: HotplugState,
                          _ direction: HotplugDirection, _ error: any Error) -> HotplugError {
        metrics.recordRollback(injected: error is InjectedFailure)
        var rolledBack = true
        do throws(StepFailure) {
            try walk(cpu, to: start, mode: .rollback)
        } catch {
            rolledBack = reportRollbackFailure(cpu, error.state, error.direction, error.error)
        }
        return failure(step, cpu, direction, error, rolledBack: rolledBack)
    }
}

/// Turns taken in order by the bodies of one stop_machine: each waits parked on its own event until the previous
/// one hands it the turn (a spin would take the cores from the CPU whose turn it is: the dying CPUs of a batch
/// outnumber the cores).
private final class TurnTicket: Sendable {
    private let turns: [Completion]

    init(_ count: Int) { turns = (0..<count).map { _ in Completion() } }

    func wait(for turn: Int) {
        guard turn > 0 else { return }
        _ = turns[turn].wait(spins: 0)   // acquire: partner of the previous holder's release in `pass`
    }

    func pass(to turn: Int) {
        if turn < turns.count { turns[turn].signal() }   // release
    }
}
