extension Machine {
    /// The hotplug state machine of this machine: registration, fault injection, introspection, disabling.
    public var hotplug: Hotplug { Hotplug(machine: self) }

    /// Runs `body` with the online mask held stable (Linux's `cpus_read_lock`): no attach or detach completes
    /// meanwhile. Do not call it on a logical CPU around work that waits for stop_machine (an attach waiting for
    /// the write lock would wait for that CPU: it then fails with a timeout), and do not nest it.
    ///
    /// Called from a hotplug callback, a stop_machine body or a CPU going offline, it runs `body` at once without
    /// taking the lock: the operation or stop_machine the caller runs inside already holds the hotplug lock (the
    /// write lock, or the read lock of a stop_machine) and waits for the caller, so taking it again would wait
    /// for the caller itself. The mask is then stable but for the operation in progress, which waits for `body`.
    public func withCPUsReadLocked<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        if reentry() != nil { return try body() }
        return try hotplugLock.withReadLock(body)
    }

    /// The hotplug state machine (see ``HotplugState`` for sections, threads, order and rollback).
    public struct Hotplug: Sendable {
        let machine: Machine

        /// Registers a state in `section`, in the first free slot of that section's dynamic range (registration
        /// order is callback order).
        /// - Parameters:
        ///   - name: "subsys:mode"; must not be empty.
        ///   - section: where the callbacks run (PREPARE, STARTING or ONLINE).
        ///   - invokeOnExisting: run `startup` now for every CPU already past the state (on the thread the section
        ///     requires). A failure on CPU N tears the state down again on the CPUs before N and removes it.
        ///   - startup: runs on attach (ascending order); nil for none.
        ///   - teardown: runs on detach (descending order); nil for none.
        /// - Returns: the state.
        /// - Throws: ``HotplugError/noFreeState(section:)`` when the section's range is full;
        ///   ``HotplugError/duplicateStateName(_:existing:)`` when a state of that name is registered (built-in
        ///   ones included); ``HotplugError/invalidConfiguration(_:)`` for an empty name;
        ///   ``HotplugError/callbackFailed(_:)`` when an invoked startup failed; ``HotplugError/shutDown``;
        ///   ``HotplugError/wouldDeadlock(operation:reason:)`` with ``HotplugOperation/registration`` when called
        ///   from a hotplug callback, a stop_machine body or a CPU going offline (the state table changes only
        ///   between operations: register from outside, before or after). The same holds for every change of the
        ///   table below.
        @discardableResult
        public func register(_ name: String, section: HotplugSection, invokeOnExisting: Bool = true,
                             startup: HotplugCallback?, teardown: HotplugCallback?) throws(HotplugError) -> HotplugState {
            try machine.registerState(name, section: section, invokeOnExisting: invokeOnExisting,
                                      entry: .init(name: name, startup: startup, teardown: teardown,
                                                   isMultiInstance: false))
        }

        /// Registers a multi-instance state: its callbacks run once per instance added with
        /// ``addInstance(_:to:invoke:)``.
        /// - Throws: as ``register(_:section:invokeOnExisting:startup:teardown:)``.
        @discardableResult
        public func registerMultiInstance(_ name: String, section: HotplugSection,
                                          startup: HotplugInstanceCallback?,
                                          teardown: HotplugInstanceCallback?) throws(HotplugError) -> HotplugState {
            try machine.registerState(name, section: section, invokeOnExisting: false,
                                      entry: .init(name: name, instanceStartup: startup, instanceTeardown: teardown,
                                                   isMultiInstance: true))
        }

        /// Removes a state; with `invokeTeardown`, first runs its teardown for every CPU past it (descending CPU
        /// order; an ONLINE teardown's failure is logged and the removal goes on, as Linux does).
        public func unregister(_ state: HotplugState, invokeTeardown: Bool = true) throws(HotplugError) {
            try machine.unregisterState(state, invokeTeardown: invokeTeardown)
        }

        /// Adds an instance to a multi-instance state; with `invoke`, runs its startup on every CPU past the state.
        /// A failure on CPU N tears it down on the CPUs before N and does not add it.
        public func addInstance(_ instance: String, to state: HotplugState, invoke: Bool = true) throws(HotplugError) {
            try machine.addInstance(instance, to: state, invoke: invoke)
        }

        /// Removes an instance; with `invoke`, runs its teardown on every CPU past the state first.
        public func removeInstance(_ instance: String, from state: HotplugState, invoke: Bool = true) throws(HotplugError) {
            try machine.removeInstance(instance, from: state, invoke: invoke)
        }

        /// Makes the next `direction` callback of `state` on `cpu` fail once (Linux's `cpuN/hotplug/fail`).
        /// Accepted where a failure is allowed: PREPARE and ONLINE startups, ONLINE teardowns,
        /// ``HotplugState/bringup`` startup (the CPU does not start) and ``HotplugState/teardownCPU`` teardown
        /// (the CPU refuses to die).
        /// - Throws: ``HotplugError/cannotInject(state:direction:reason:)``, ``HotplugError/invalidCPU(_:)``,
        ///   ``HotplugError/shutDown``.
        public func injectFailure(cpu: Int, at state: HotplugState, direction: HotplugDirection) throws(HotplugError) {
            try machine.validate(cpu)
            try machine.ensureNotShutDown()
            guard machine.registry.entry(state) != nil else {
                throw .cannotInject(state: state, direction: direction, reason: "no such state is registered")
            }
            guard HotplugTable.mayFail(state, direction) else {
                let what = HotplugTable.region(of: state)?.kind == .fixed ? machine.registry.name(state) : "\(state.section)"
                throw .cannotInject(state: state, direction: direction, reason: "\(what) \(direction)s may not fail")
            }
            machine.registry.contents.withLock {
                _ = $0.injections.insert(.init(cpu: cpu, state: state, direction: direction))
            }
        }

        /// Every state of the table, ascending: the machine's own (`offline`, `cpu:bringup`, `cpu:teardown`,
        /// `online`), the subsystems' built-in ones and the registered ones.
        public var states: [HotplugStateInfo] {
            machine.registry.contents.withLock { contents in
                contents.entries.keys.sorted().map { state in
                    let entry = contents.entries[state]!
                    return HotplugStateInfo(state: state, name: entry.name, section: state.section,
                                            isMultiInstance: entry.isMultiInstance, instances: entry.instances,
                                            isBuiltin: entry.isBuiltin)
                }
            }
        }

        /// How far `cpu` is set up: every registered state up to this one has run its startup.
        public func currentState(of cpu: Int) throws(HotplugError) -> HotplugState {
            try machine.validate(cpu)
            return machine.registry.current(cpu)
        }

        /// Where `cpu` is heading (equal to the current state when no operation is in progress).
        public func targetState(of cpu: Int) throws(HotplugError) -> HotplugState {
            try machine.validate(cpu)
            return machine.registry.target(cpu)
        }

        /// The name of a state ("offline", "cpu:bringup", "cpu:teardown", "online", or the registered one).
        public func name(of state: HotplugState) -> String { machine.registry.name(state) }

        /// Disables hotplug operations (nesting): until the matching ``enable()``, attach and detach fail with
        /// ``HotplugError/busy(cpu:reason:)``. An operation in progress is waited for; called from inside one (a
        /// hotplug callback, a stop_machine body, a CPU going offline), it does not wait for it (it waits for the
        /// caller): that operation completes, and the ones after it are refused.
        public func disable() {
            if machine.reentry() != nil {
                machine.registry.contents.withLock { $0.disableDepth += 1 }
                return
            }
            machine.operations.withLock { machine.registry.contents.withLock { $0.disableDepth += 1 } }
        }

        /// Undoes one ``disable()``. Traps when hotplug is not disabled (an unbalanced call is a programmer error).
        public func enable() {
            machine.registry.contents.withLock {
                precondition($0.disableDepth > 0, "Machine.hotplug.enable() without a matching disable()")
                $0.disableDepth -= 1
            }
        }
    }

    // MARK: Registration

    func registerState(_ name: String, section: HotplugSection, invokeOnExisting: Bool,
                       entry: HotplugRegistry.Entry) throws(HotplugError) -> HotplugState {
        guard !name.isEmpty else { throw .invalidConfiguration("a hotplug state needs a name (\"subsys:mode\")") }
        try refuseReentry(.registration)
        return try withOperation { () throws(HotplugError) in
            // Under the operations lock: two registrations of one name cannot both pass.
            if let existing = registry.state(named: name) { throw .duplicateStateName(name, existing: existing) }
            return try hotplugLock.withWriteLock { () throws(HotplugError) in
                guard let state = registry.allocate(in: HotplugTable.dynamicSlots(section), entry: entry) else { throw .noFreeState(section: section) }
                guard invokeOnExisting, entry.startup != nil else { return state }
                var done: [Int] = []
                for cpu in 0..<possibleCount where registry.current(cpu) >= state {
                    do {
                        try invokeOnCPU(state, cpu: cpu, .startup) { try $0() }
                        done.append(cpu)
                    } catch {
                        let rolledBack = undo(state, on: done, .teardown)
                        registry.remove(state)
                        throw .callbackFailed(HotplugCallbackFailure(
                            state: state, name: name, cpu: cpu, direction: .startup, underlying: error, rolledBack: rolledBack))
                    }
                }
                return state
            }
        }
    }

    func unregisterState(_ state: HotplugState, invokeTeardown: Bool) throws(HotplugError) {
        try refuseReentry(.registration)
        try withOperation { () throws(HotplugError) in
            try hotplugLock.withWriteLock { () throws(HotplugError) in
                guard let entry = registry.entry(state) else { throw .unknownState(state) }
                if entry.isBuiltin {
                    throw .invalidConfiguration("the built-in state \(entry.name) cannot be unregistered")
                }
                if invokeTeardown {
                    for cpu in (0..<possibleCount).reversed() where registry.current(cpu) >= state {
                        do {
                            try invokeOnCPU(state, cpu: cpu, .teardown) { try $0() }
                        } catch {
                            logger.error("hotplug: teardown of \(registry.name(state)) failed on CPU \(cpu) while unregistering: \(error)")
                        }
                    }
                }
                registry.remove(state)
            }
        }
    }

    func addInstance(_ instance: String, to state: HotplugState, invoke: Bool) throws(HotplugError) {
        try refuseReentry(.registration)
        try withOperation { () throws(HotplugError) in
            try hotplugLock.withWriteLock { () throws(HotplugError) in
                guard let entry = registry.entry(state), entry.isMultiInstance else { throw .unknownState(state) }
                var done: [Int] = []
                if invoke, let startup = entry.instanceStartup {
                    for cpu in 0..<possibleCount where registry.current(cpu) >= state {
                        do {
                            try invokeOnCPU(state, cpu: cpu, .startup, injected: true) { _ in try startup(cpu, instance) }
                            done.append(cpu)
                        } catch {
                            var rolledBack = true
                            if let teardown = entry.instanceTeardown {
                                for back in done.reversed() {
                                    do { try invokeOnCPU(state, cpu: back, .teardown, injected: false) { _ in try teardown(back, instance) } }
                                    catch { rolledBack = false }
                                }
                            }
                            throw .callbackFailed(HotplugCallbackFailure(
                                state: state, name: entry.name, cpu: cpu, direction: .startup, underlying: error,
                                rolledBack: rolledBack))
                        }
                    }
                }
                registry.contents.withLock { $0.entries[state]?.instances.append(instance) }
            }
        }
    }

    func removeInstance(_ instance: String, from state: HotplugState, invoke: Bool) throws(HotplugError) {
        try refuseReentry(.registration)
        try withOperation { () throws(HotplugError) in
            try hotplugLock.withWriteLock { () throws(HotplugError) in
                guard let entry = registry.entry(state), entry.isMultiInstance, entry.instances.contains(instance) else {
                    throw .unknownState(state)
                }
                if invoke, let teardown = entry.instanceTeardown {
                    for cpu in (0..<possibleCount).reversed() where registry.current(cpu) >= state {
                        do { try invokeOnCPU(state, cpu: cpu, .teardown, injected: false) { _ in try teardown(cpu, instance) } }
                        catch { logger.error("hotplug: teardown of instance \(instance) failed on CPU \(cpu): \(error)") }
                    }
                }
                registry.contents.withLock { $0.entries[state]?.instances.removeAll { $0 == instance } }
            }
        }
    }

    /// Runs one state's callback for one CPU on the thread its placement requires: PREPARE on the calling
    /// (control) thread, STARTING on the CPU with its signal blocked, ONLINE on the CPU at a safe point; in the
    /// thread's hotplug-callback context, as in a walk.
    private func invokeOnCPU(_ state: HotplugState, cpu: Int, _ direction: HotplugDirection, injected: Bool = true,
                             _ call: @escaping @Sendable (@Sendable () throws -> Void) throws -> Void) throws {
        let registry = self.registry
        let machineID = id
        let work: @Sendable () throws -> Void = {
            if injected, registry.takeInjection(cpu, state, direction) {
                throw InjectedFailure(state: state, cpu: cpu, direction: direction)
            }
            try ThreadContext.hotplugCallback.enter(machineID: machineID) { () throws in
                try call { try registry.invoke(state, cpu: cpu, direction) }
            }
        }
        switch HotplugTable.placement(of: state) {
        case .control: try work()
        case .starting: try stopOne(cpu) { try work() }
        case .online: try run(on: cpu) { try work() }
        }
    }

    private func undo(_ state: HotplugState, on cpus: [Int], _ direction: HotplugDirection) -> Bool {
        var ok = true
        for cpu in cpus.reversed() {
            do { try invokeOnCPU(state, cpu: cpu, direction) { try $0() } } catch { ok = false }
        }
        return ok
    }
}
