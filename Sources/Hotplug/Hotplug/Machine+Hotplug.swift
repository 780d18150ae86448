extension Machine {
    // MARK: Attach

    /// Walks `cpu` up to ``HotplugState/online`` (see ``HotplugState`` for the steps). Caller holds `operations`.
    func attachLocked(_ cpu: Int) throws(HotplugError) {
        let lifecycle = state.withLock { $0.cpus[cpu] }
        if lifecycle == .standby { throw .notPresent(cpu: cpu) }
        if registry.current(cpu) == .online { return }
        if registry.contents.withLock({ $0.disableDepth }) > 0 { throw .busy(cpu: cpu, reason: .hotplugDisabled) }
        let started = Shim.monotonicNanoseconds()
        let start = registry.current(cpu)
        try hotplugLock.withWriteLock { () throws(HotplugError) in
            // The target changes under the write lock only (as Linux sets it under cpus_write_lock): a holder of
            // the read lock sees every CPU where it is heading.
            registry.setTarget(cpu, .online)
            defer { registry.setTarget(cpu, registry.current(cpu)) }
            // PREPARE, on this (the control) thread.
            for step in registry.states(in: 1...(HotplugState.bringup.rawValue - 1)) where registry.current(cpu) < step {
                do {
                    try registry.invoke(step, cpu: cpu, .startup)
                    registry.setCurrent(cpu, step)
                } catch {
                    throw failure(step, cpu, .startup, error, rolledBack: rollBack(cpu, to: start))
                }
            }
            if registry.current(cpu) < HotplugState(rawValue: HotplugState.bringup.rawValue - 1) {
                registry.setCurrent(cpu, HotplugState(rawValue: HotplugState.bringup.rawValue - 1))
            }
            // Bring-up: synchronise, start the thread; it runs the STARTING startups and enters the online mask.
            if registry.current(cpu) < .bringup {
                do {
                    if registry.takeInjection(cpu, .bringup, .startup) {
                        throw InjectedFailure(state: .bringup, cpu: cpu, direction: .startup)
                    }
                    try bringUp(cpu)
                } catch {
                    throw failure(.bringup, cpu, .startup, error, rolledBack: rollBack(cpu, to: start))
                }
            }
            // ONLINE, on the CPU itself at a safe point.
            do throws(HotplugError) {
                if let (step, error) = try walkOnline(cpu, .startup) {
                    if error is RollbackFailed { throw failure(step, cpu, .startup, error, rolledBack: false) }
                    throw failure(step, cpu, .startup, error, rolledBack: rollBack(cpu, to: start))
                }
            } catch {
                if case .callbackFailed = error { throw error }
                throw failure(.teardownCPU, cpu, .startup, error, rolledBack: rollBack(cpu, to: start))
            }
            registry.setCurrent(cpu, .online)
            state.withLock { $0.active.insert(cpu) }
        }
        trace(cpu, "attach", started)
    }

    /// Runs the ONLINE callbacks of `cpu` on its own thread, in `direction`. On a failure it undoes on that CPU the
    /// steps it completed in this call (so the ONLINE section is back where it was) and returns the failing step.
    private func walkOnline(_ cpu: Int, _ direction: HotplugDirection) throws(HotplugError) -> (HotplugState, any Error)? {
        let registry = self.registry
        let due = registry.states(in: HotplugState.onlineDynamic).contains { step in
            direction == .startup ? registry.current(cpu) < step : registry.current(cpu) >= step
        }
        guard due else { return nil }   // nothing to run: no cross-call at all
        let outcome: Result<(HotplugState, any Error)?, any Error> = Result {
            try run(on: cpu) { () -> FailedStep? in
                var states = registry.states(in: HotplugState.onlineDynamic)
                if direction == .teardown { states.reverse() }
                var done: [HotplugState] = []
                for step in states {
                    let due = direction == .startup ? registry.current(cpu) < step : registry.current(cpu) >= step
                    guard due else { continue }
                    do {
                        try registry.invoke(step, cpu: cpu, direction)
                        registry.setCurrent(cpu, direction == .startup ? step : HotplugState(rawValue: step.rawValue - 1))
                        done.append(step)
                    } catch {
                        // Undo this call's completed steps on this CPU, in reverse.
                        for undone in done.reversed() {
                            let back: HotplugDirection = direction == .startup ? .teardown : .startup
                            do {
                                try registry.invoke(undone, cpu: cpu, back)
                            } catch {
                                return FailedStep(state: step, error: RollbackFailed(original: error, state: undone))
                            }
                            registry.setCurrent(cpu, direction == .startup ? HotplugState(rawValue: undone.rawValue - 1) : undone)
                        }
                        return FailedStep(state: step, error: error)
                    }
                }
                return nil
            }.map { ($0.state, $0.error) }
        }
        switch outcome {
        case .success(let failed): return failed
        case .failure(let error as HotplugError): throw error
        case .failure(let error): return (HotplugState.online, error)
        }
    }

    /// Synchronises every online CPU and starts `cpu` (the seed's attach): inside stop_machine the lifecycle
    /// permits the thread to run and SIGP START wakes it; it runs the STARTING startups with its signal blocked and
    /// acknowledges; it enters the online mask while everyone else is stopped.
    private func bringUp(_ cpu: Int) throws {
        let core = cores[cpu]
        core.setAcceptingCalls(true)
        core.ack.reset()
        let start: @Sendable (Int) throws -> Void = { [self] _ in
            // In the online mask before it runs anything (everyone else is stopped meanwhile).
            state.withLock {
                $0.cpus[cpu] = .online
                $0.online.insert(cpu)
            }
            core.control.lifecycle = .online
            let result = try core.control.sigp(.start, parameter: 0, source: nil, cpu: cpu,
                                               resendNanoseconds: resendNanoseconds, timeoutNanoseconds: responseNanoseconds)
            precondition(result.conditionCode == .accepted, "SIGP START to parked CPU \(cpu) answered \(result)")
            _ = core.ack.wait()   // no user code runs before this acknowledgement but the STARTING callbacks
            registry.setCurrent(cpu, .teardownCPU)
        }
        if online.isEmpty {
            try start(cpu)   // the first CPU of a machine: nobody to synchronise
        } else {
            try stopMachineLocked(active: nil, timeout: nil, start)
        }
    }

    // MARK: Detach

    /// Walks `cpu` down to ``HotplugState/offline``. Caller holds `operations`.
    func detachLocked(_ cpu: Int, allowLast: Bool = false) throws(HotplugError) {
        let (lifecycle, onlineCount) = state.withLock { ($0.cpus[cpu], $0.online.count) }
        if lifecycle == .standby { throw .notPresent(cpu: cpu) }
        if registry.current(cpu) == .offline && lifecycle == .parked { return }
        if registry.contents.withLock({ $0.disableDepth }) > 0 && !allowLast {
            throw .busy(cpu: cpu, reason: .hotplugDisabled)
        }
        if lifecycle == .online && !allowLast && onlineCount <= 1 {
            throw .busy(cpu: cpu, reason: .lastOnlineCPU)
        }
        if cores[cpu].isStoppedByOrder {
            throw .stoppedByOrder(cpu: cpu)
        }
        let started = Shim.monotonicNanoseconds()
        let start = registry.current(cpu)
        try hotplugLock.withWriteLock { () throws(HotplugError) in
            // The target changes under the write lock only (as Linux sets it under cpus_write_lock): a holder of
            // the read lock sees every CPU where it is heading.
            registry.setTarget(cpu, .offline)
            defer { registry.setTarget(cpu, registry.current(cpu)) }
            state.withLock { $0.active.remove(cpu) }   // like Linux: inactive first
            if registry.current(cpu) > .teardownCPU {
                do throws(HotplugError) {
                    if let (step, error) = try walkOnline(cpu, .teardown) {
                        if error is RollbackFailed { throw failure(step, cpu, .teardown, error, rolledBack: false) }
                        throw failure(step, cpu, .teardown, error, rolledBack: rollForward(cpu, to: start))
                    }
                } catch {
                    if case .callbackFailed = error { throw error }
                    throw failure(.teardownCPU, cpu, .teardown, error, rolledBack: rollForward(cpu, to: start))
                }
                registry.setCurrent(cpu, .teardownCPU)
            }
            if registry.current(cpu) >= .teardownCPU {
                do {
                    if registry.takeInjection(cpu, .teardownCPU, .teardown) {
                        throw InjectedFailure(state: .teardownCPU, cpu: cpu, direction: .teardown)
                    }
                    try takeDown(cpu)
                } catch {
                    throw failure(.teardownCPU, cpu, .teardown, error, rolledBack: rollForward(cpu, to: start))
                }
            }
            prepareDown(cpu)
        }
        trace(cpu, "detach", started)
    }

    /// The CPU's death: stop_machine with the dying CPU active; on it, the STARTING teardowns, out of the online
    /// mask, and the lifecycle asks it to park (it does so at its next safe point, after the stopper returns).
    private func takeDown(_ cpu: Int) throws {
        let core = cores[cpu]
        core.ack.reset()
        try stopMachineLocked(active: [cpu], timeout: nil) { [self] _ in
            registry.runStarting(cpu: cpu, .teardown)
            state.withLock {
                $0.online.remove(cpu)
                $0.cpus[cpu] = .parked
            }
            core.control.lifecycle = .offline
            _ = core.control.post(.lifecycle)   // taken at its own next safe point: no wake-up needed
        }
        _ = core.ack.wait()   // parked (after finishing the cross-calls it had accepted)
        registry.setCurrent(cpu, HotplugState(rawValue: HotplugState.bringup.rawValue - 1))
    }

    /// PREPARE teardowns on the control thread, descending ("dead" callbacks). They may not fail.
    private func prepareDown(_ cpu: Int) {
        prepareDownTo(cpu, .offline)
        registry.setCurrent(cpu, .offline)
    }

    // MARK: Rollback

    /// After a failed startup: back down to `start`. Returns false (and reports loudly) when a teardown failed.
    private func rollBack(_ cpu: Int, to start: HotplugState) -> Bool {
        do {
            if registry.current(cpu) > .teardownCPU, let (step, error) = try walkOnline(cpu, .teardown) {
                return reportRollbackFailure(cpu, step, .teardown, error)
            }
            if registry.current(cpu) >= .teardownCPU { registry.setCurrent(cpu, .teardownCPU) }
            if registry.current(cpu) >= .teardownCPU, start < .teardownCPU { try takeDown(cpu) }
            if start < .bringup { prepareDownTo(cpu, start) }
            return true
        } catch {
            return reportRollbackFailure(cpu, registry.current(cpu), .teardown, error)
        }
    }

    /// PREPARE teardowns, descending, of the states above `start`.
    private func prepareDownTo(_ cpu: Int, _ start: HotplugState) {
        for step in registry.states(in: 1...(HotplugState.bringup.rawValue - 1)).reversed()
        where registry.current(cpu) >= step && step > start {
            do {
                try registry.invoke(step, cpu: cpu, .teardown)
            } catch {
                preconditionFailure("PREPARE teardown \(registry.name(step)) failed on CPU \(cpu): \(error); it may not fail")
            }
            registry.setCurrent(cpu, HotplugState(rawValue: step.rawValue - 1))
        }
        if registry.current(cpu) > start && registry.current(cpu) < .bringup { registry.setCurrent(cpu, start) }
    }

    /// After a failed teardown: back up to `start`. Returns false (and reports loudly) when a startup failed.
    private func rollForward(_ cpu: Int, to start: HotplugState) -> Bool {
        do {
            if registry.current(cpu) >= .teardownCPU, start > .teardownCPU,
               let (step, error) = try walkOnline(cpu, .startup) {   // runs nothing when nothing was torn down
                return reportRollbackFailure(cpu, step, .startup, error)
            }
            if start == .online, registry.current(cpu) >= .teardownCPU { registry.setCurrent(cpu, .online) }
            if registry.current(cpu) == .online { state.withLock { $0.active.insert(cpu) } }
            return true
        } catch {
            return reportRollbackFailure(cpu, registry.current(cpu), .startup, error)
        }
    }

    private func reportRollbackFailure(_ cpu: Int, _ step: HotplugState, _ direction: HotplugDirection,
                                       _ error: any Error) -> Bool {
        logger.critical("hotplug rollback failed: the CPU stays where it stopped", metadata: [
            "cpu": "\(cpu)", "state": "\(registry.name(step))", "direction": "\(direction.rawValue)",
            "error": "\(error)", "current": "\(registry.current(cpu).rawValue)",
        ])
        return false
    }

    private func failure(_ step: HotplugState, _ cpu: Int, _ direction: HotplugDirection, _ error: any Error,
                         rolledBack: Bool) -> HotplugError {
        if let hotplug = error as? HotplugError, case .timeout = hotplug, rolledBack { return hotplug }
        var underlying = error
        var rolled = rolledBack
        if let nested = error as? RollbackFailed {
            underlying = nested.original
            rolled = false
        }
        return .callbackFailed(HotplugCallbackFailure(state: step, name: registry.name(step), cpu: cpu,
                                                      direction: direction, underlying: underlying, rolledBack: rolled))
    }
}

/// A step that failed inside a CPU's ONLINE walk.
struct FailedStep: Sendable {
    let state: HotplugState
    let error: any Error
}

/// The ONLINE walk's own undo failed: the CPU stays where it stopped.
struct RollbackFailed: Error {
    let original: any Error
    let state: HotplugState
}
