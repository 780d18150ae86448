extension Machine {
    // MARK: Attach and detach

    /// Walks `cpu` up to ``HotplugState/online`` (see ``HotplugState`` for the steps). Caller holds `operations`.
    func attachLocked(_ cpu: Int) throws(HotplugError) {
        let lifecycle = state.withLock { $0.cpus[cpu] }
        if lifecycle == .standby { throw .notPresent(cpu: cpu) }
        if registry.current(cpu) == .online { return }
        if registry.contents.withLock({ $0.disableDepth }) > 0 { throw .busy(cpu: cpu, reason: .hotplugDisabled) }
        try operate(cpu, to: .online)
    }

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
        try operate(cpu, to: .offline)
    }

    /// An attach or detach, under the hotplug write lock: walks `cpu` to `target`; on a failure, walks it back to
    /// where it started (a failed attach rolls back, a failed detach rolls forward). Caller holds `operations`.
    /// - Throws: ``HotplugError/callbackFailed(_:)`` naming the failed step and whether the CPU is back where it
    ///   started; the timeout itself when the CPU did not take part in time and is back where it started.
    private func operate(_ cpu: Int, to target: HotplugState) throws(HotplugError) {
        let started = Shim.monotonicNanoseconds()
        do {
            try hotplugLock.withWriteLock { () throws(HotplugError) in
                // The target changes under the write lock only (as Linux sets it under cpus_write_lock): a holder of
                // the read lock sees every CPU where it is heading.
                registry.setTarget(cpu, target)
                defer { registry.setTarget(cpu, registry.current(cpu)) }
                try walkOrRollBack(cpu, to: target)
            }
        } catch {
            metrics.recordOperation(attach: target == .online, HotplugOutcome(error), started: started)
            sampleOperationMetrics(cpu: cpu)
            throw error
        }
        metrics.recordOperation(attach: target == .online, .success, started: started)
        trace(cpu, target == .online ? "attach" : "detach", started)
    }

    /// Walks `cpu` to `target`; on a failure walks it back to `start` (by default where it is now) and throws the
    /// failure, saying whether it got back.
    func walkOrRollBack(_ cpu: Int, to target: HotplugState, rollingBackTo start: HotplugState? = nil)
        throws(HotplugError) {
        let start = start ?? registry.current(cpu)
        do {
            try walk(cpu, to: target, mode: .operation)
        } catch {
            metrics.recordRollback(injected: error.error is InjectedFailure)
            let rolledBack: Bool
            if let undo = error.undoFailure {
                rolledBack = reportRollbackFailure(cpu, undo.state, undo.direction, undo.error)
            } else {
                do {
                    try walk(cpu, to: start, mode: .rollback)
                    rolledBack = true
                } catch {
                    rolledBack = reportRollbackFailure(cpu, error.state, error.direction, error.error)
                }
            }
            throw failure(error.state, cpu, error.direction, error.error, rolledBack: rolledBack)
        }
    }

    // MARK: The walk

    /// Walks `cpu` from its current state to `target` through the state table: cuts the way into runs of one
    /// placement and has ``HotplugRegistry/invokeRange(_:to:mode:machine:)`` walk each where its placement says:
    /// control runs inline on this thread (with `cpu:bringup` and `cpu:teardown`, which make the CPU walk its
    /// STARTING run itself), ONLINE runs on the CPU in one cross-call (none when no ONLINE state is due). In
    /// ``WalkMode/operation`` a failed run is undone where it ran before the failure returns; in
    /// ``WalkMode/retire`` (the caller is `cpu` itself) every run is walked inline, and a failure is logged and the
    /// walk goes on.
    func walk(_ cpu: Int, to target: HotplugState, mode: WalkMode) throws(StepFailure) {
        let registry = self.registry
        let direction: HotplugDirection = registry.current(cpu) < target ? .startup : .teardown
        while let next = registry.nextDue(cpu, toward: target, direction) {
            let from = registry.current(cpu)
            let end = HotplugTable.end(of: HotplugTable.run(containing: next), toward: target, direction)
            switch HotplugTable.placement(of: next) {
            case .control:
                try Machine.walkRun(registry, cpu, from: from, to: end, mode: mode, machine: self)
            case .online:
                let outcome: Result<Void, StepFailure>
                do {
                    // Captures the registry, not the machine: a CPU thread keeps no machine alive.
                    outcome = try run(on: cpu) { () -> Result<Void, StepFailure> in
                        Result { () throws(StepFailure) in
                            try Machine.walkRun(registry, cpu, from: from, to: end, mode: mode, machine: nil)
                        }
                    }
                } catch {
                    // The cross-call itself failed (the CPU did not reach a safe point in time): nothing ran.
                    throw StepFailure(state: next, direction: direction, error: error)
                }
                try outcome.get()
            case .starting:
                // cpu:bringup and cpu:teardown have the CPU walk these itself. The walk meets them only when the
                // calling CPU retires itself and its cpu:teardown failed (logged): they run here, signal blocked.
                precondition(currentCPU == cpu, "STARTING states of CPU \(cpu) run only on that CPU")
                try? Shim.blockSIGP(true)
                defer { try? Shim.blockSIGP(false) }
                try Machine.walkRun(registry, cpu, from: from, to: end, mode: mode, machine: nil)
            }
        }
        registry.contents.withLock { contents in
            let reached = direction == .startup ? contents.current[cpu] >= target : contents.current[cpu] <= target
            if !reached { contents.current[cpu] = target }
        }
    }

    /// One run of the walk, on the calling thread; in ``WalkMode/operation``, a failure is first undone here,
    /// back to `from` (an ONLINE failure on the CPU itself, in the same cross-call).
    private static func walkRun(_ registry: HotplugRegistry, _ cpu: Int, from: HotplugState, to end: HotplugState,
                                mode: WalkMode, machine: Machine?) throws(StepFailure) {
        do {
            try registry.invokeRange(cpu, to: end, mode: mode, machine: machine)
        } catch {
            guard mode == .operation else { throw error }
            var failure = error
            do {
                try registry.invokeRange(cpu, to: from, mode: .rollback, machine: machine)
            } catch {
                failure.undoFailure = (error.state, error.direction, error.error)
            }
            throw failure
        }
    }

    // MARK: The machine's own states

    /// `cpu:bringup` startup: synchronises every online CPU and starts `cpu`. Inside stop_machine the lifecycle
    /// permits the thread to run and SIGP START wakes it; it enters the online mask, walks the STARTING startups
    /// on its own thread with its signal blocked (`CPUCore.startingHook`) and acknowledges, while everyone else is
    /// stopped.
    func bringUp(_ cpu: Int) throws {
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
        }
        if online.isEmpty {
            try start(cpu)   // the first CPU of a machine: nobody to synchronise
        } else {
            try stopMachineLocked(active: nil, timeout: nil, anywhere: true, start)
        }
    }

    /// `cpu:teardown` teardown, the CPU's death: stop_machine with the dying CPU active; on it, the STARTING
    /// teardowns, out of the online mask, and the lifecycle asks it to park (it does so at its next safe point,
    /// after the stopper returns, finishing the cross-calls it had accepted).
    ///
    /// In ``WalkMode/retire`` the caller is `cpu` itself and nobody else is online: it blocks its signal, walks
    /// the STARTING teardowns and leaves the online mask, inline; the retire path then makes its thread exit.
    func takeDown(_ cpu: Int, _ mode: WalkMode) throws {
        if mode == .retire {
            precondition(currentCPU == cpu, "only CPU \(cpu) itself retires CPU \(cpu)")
            try? Shim.blockSIGP(true)
            registry.walkStarting(cpu, .teardown, mode: mode)
            try? Shim.blockSIGP(false)
            state.withLock { $0.online.remove(cpu) }
            return
        }
        let core = cores[cpu]
        core.ack.reset()
        try stopMachineLocked(active: [cpu], timeout: nil) { [self] _ in
            registry.walkStarting(cpu, .teardown)
            state.withLock {
                $0.online.remove(cpu)
                $0.cpus[cpu] = .parked
            }
            core.control.lifecycle = .offline
            _ = core.control.post(.lifecycle)   // taken at its own next safe point: no wake-up needed
        }
        _ = core.ack.wait()   // parked (after finishing the cross-calls it had accepted)
    }

    /// `online` startup: the CPU becomes active (last on attach).
    func activate(_ cpu: Int) { state.withLock { $0.active.insert(cpu) } }

    /// `online` teardown: the CPU leaves the active mask (first on detach, like Linux).
    func deactivate(_ cpu: Int) { state.withLock { $0.active.remove(cpu) } }

    // MARK: Failures

    func reportRollbackFailure(_ cpu: Int, _ step: HotplugState, _ direction: HotplugDirection,
                                       _ error: any Error) -> Bool {
        metrics.rollbackFailures.increment()
        logger.critical("hotplug rollback failed: the CPU stays where it stopped", metadata: [
            "cpu": "\(cpu)", "state": "\(registry.name(step))", "direction": "\(direction.rawValue)",
            "error": "\(error)", "current": "\(registry.current(cpu).rawValue)",
        ])
        return false
    }

    func failure(_ step: HotplugState, _ cpu: Int, _ direction: HotplugDirection, _ error: any Error,
                         rolledBack: Bool) -> HotplugError {
        if let hotplug = error as? HotplugError, case .timeout = hotplug, rolledBack { return hotplug }
        return .callbackFailed(HotplugCallbackFailure(state: step, name: registry.name(step), cpu: cpu,
                                                      direction: direction, underlying: error, rolledBack: rolledBack))
    }
}
