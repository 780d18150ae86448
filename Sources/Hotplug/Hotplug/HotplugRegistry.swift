import Logging

/// The state table's entries (the machine's own states, the subsystems' built-in ones, the registered ones), each
/// CPU's progress through them, the injected failures and the disable counter; and the one loop that walks a CPU
/// through them (``invokeRange(_:to:mode:machine:)``). Shared by the machine (control thread) and the CPU threads
/// (the STARTING walk, the ONLINE cross-calls); it never keeps the machine, so CPU threads keep no machine alive.
final class HotplugRegistry: Sendable {
    /// One of the machine's own steps: gets the machine as an argument instead of keeping it.
    typealias MachineStep = @Sendable (_ machine: Machine, _ cpu: Int, _ mode: WalkMode) throws -> Void

    struct Entry {
        var name: String
        var startup: HotplugCallback?
        var teardown: HotplugCallback?
        var instanceStartup: HotplugInstanceCallback?
        var instanceTeardown: HotplugInstanceCallback?
        var isMultiInstance: Bool
        var instances: [String] = []
        var isBuiltin = false
        /// The machine's own callbacks (`cpu:bringup`, `cpu:teardown`, `online`), see ``HotplugTable/fixedEntries``.
        var machineStartup: MachineStep?
        var machineTeardown: MachineStep?
    }

    /// A registered state and its entry as they were when the walk took them.
    final class Step: Sendable {
        let state: HotplugState
        let entry: Entry
        init(state: HotplugState, entry: Entry) {
            self.state = state
            self.entry = entry
        }
    }

    struct Injection: Hashable {
        let cpu: Int
        let state: HotplugState
        let direction: HotplugDirection
    }

    struct Contents {
        var entries: [HotplugState: Entry] = HotplugTable.fixedEntries {
            didSet { ordered = Contents.order(entries) }   // registration is rare; the walk reads `ordered`
        }
        /// `entries` ascending, each an immutable snapshot: the walk finds its next state here without hashing and
        /// takes its entry with one retain instead of copying every callback out.
        var ordered: [Step] = Contents.order(HotplugTable.fixedEntries)

        static func order(_ entries: [HotplugState: Entry]) -> [Step] {
            entries.keys.sorted().map { Step(state: $0, entry: entries[$0]!) }
        }
        var current: [HotplugState]
        var target: [HotplugState]
        var injections: Set<Injection> = []
        var disableDepth = 0
    }

    let contents: Locked<Contents>
    let logger: Logger
    /// The machine's id, for the thread context its callbacks run in (``ThreadContext``).
    let machineID: UInt64

    init(possible: Int, machineID: UInt64, logger: Logger) {
        contents = Locked(Contents(current: Array(repeating: .offline, count: possible),
                                   target: Array(repeating: .offline, count: possible)))
        self.machineID = machineID
        self.logger = logger
    }

    // MARK: Bookkeeping

    func current(_ cpu: Int) -> HotplugState { contents.withLock { $0.current[cpu] } }
    func setCurrent(_ cpu: Int, _ state: HotplugState) { contents.withLock { $0.current[cpu] = state } }
    func target(_ cpu: Int) -> HotplugState { contents.withLock { $0.target[cpu] } }
    func setTarget(_ cpu: Int, _ state: HotplugState) { contents.withLock { $0.target[cpu] = state } }

    func entry(_ state: HotplugState) -> Entry? { contents.withLock { $0.entries[state] } }

    func name(_ state: HotplugState) -> String { entry(state)?.name ?? "unregistered \(state.rawValue)" }

    /// The next state `cpu` has to run on its way to `target` in `direction`: the lowest entry above its current
    /// state and at most `target` (startup), or the highest entry at most its current state and above `target`
    /// (teardown); nil when none is left.
    func nextDue(_ cpu: Int, toward target: HotplugState, _ direction: HotplugDirection) -> HotplugState? {
        contents.withLock { $0.nextDue(cpu, toward: target, direction)?.state }
    }

    /// Allocates the first free slot of `range`.
    func allocate(in range: ClosedRange<Int>, entry: Entry) -> HotplugState? {
        contents.withLock { contents -> HotplugState? in
            guard let raw = range.first(where: { contents.entries[HotplugState(rawValue: $0)] == nil }) else { return nil }
            let state = HotplugState(rawValue: raw)
            contents.entries[state] = entry
            return state
        }
    }

    /// Registers a subsystem's built-in state at its declared slot. Traps when the slot is not a built-in one or
    /// is taken (two subsystems declaring the same slot is a programmer error).
    func insertBuiltin(_ builtin: HotplugBuiltinState) {
        precondition(HotplugTable.isBuiltinSlot(builtin.state),
                     "\(builtin.name) declares \(builtin.state), which is not a built-in slot of the hotplug state table")
        contents.withLock { contents in
            if let taken = contents.entries[builtin.state] {
                preconditionFailure("\(builtin.name) declares \(builtin.state), already taken by \(taken.name)")
            }
            contents.entries[builtin.state] = Entry(name: builtin.name, startup: builtin.startup,
                                                    teardown: builtin.teardown, isMultiInstance: false, isBuiltin: true)
        }
    }

    /// Removes a state and the injections armed on it (a later state in the same slot starts clean).
    func remove(_ state: HotplugState) {
        contents.withLock { contents in
            contents.entries.removeValue(forKey: state)
            contents.injections = contents.injections.filter { $0.state != state }
        }
    }

    /// Consumes an injected failure for this callback, if one is armed.
    func takeInjection(_ cpu: Int, _ state: HotplugState, _ direction: HotplugDirection) -> Bool {
        contents.withLock { $0.takeInjection(cpu, state, direction) }
    }

    // MARK: Invocation

    /// Runs the callback(s) of `state` for `cpu` in `direction` on the calling thread (the caller picks the
    /// thread the placement requires). An armed injected failure fires first. A multi-instance state runs its
    /// callback for every instance; when instance k fails, instances before it are undone on this CPU first. The
    /// machine's own steps get `machine` (nil where none can be due: the STARTING and ONLINE runs). Each
    /// invocation is traced at debug level.
    func invoke(_ state: HotplugState, cpu: Int, _ direction: HotplugDirection, mode: WalkMode = .operation,
                machine: Machine? = nil) throws {
        let started = Shim.monotonicNanoseconds()
        defer { trace(state, cpu, direction, started) }
        let (entry, injected) = contents.withLock { ($0.entries[state], $0.takeInjection(cpu, state, direction)) }
        if injected { throw InjectedFailure(state: state, cpu: cpu, direction: direction) }
        guard let entry else { return }
        try run(entry, state, cpu: cpu, direction, mode: mode, machine: machine)
    }

    /// Runs an entry's callback(s) (see ``invoke(_:cpu:_:mode:machine:)``). The callbacks of the subsystems and
    /// of registered states run in the thread's hotplug-callback context, so that an operation, a registration or a
    /// stop_machine they call fails at once instead of waiting for the walk that waits for them; the machine's own
    /// steps do not (they drive stop_machine themselves).
    private func run(_ entry: Entry, _ state: HotplugState, cpu: Int, _ direction: HotplugDirection, mode: WalkMode,
                     machine: Machine?) throws {
        if let step = direction == .startup ? entry.machineStartup : entry.machineTeardown {
            guard let machine else { preconditionFailure("\(entry.name) runs on the control thread, with the machine") }
            try step(machine, cpu, mode)
        } else {
            try ThreadContext.hotplugCallback.enter(machineID: machineID) { () throws in
                try runCallbacks(entry, cpu: cpu, direction)
            }
        }
    }

    /// Runs the callback(s) of a subsystem's or a registered state's entry.
    private func runCallbacks(_ entry: Entry, cpu: Int, _ direction: HotplugDirection) throws {
        if entry.isMultiInstance {
            let callback = direction == .startup ? entry.instanceStartup : entry.instanceTeardown
            let undo = direction == .startup ? entry.instanceTeardown : entry.instanceStartup
            guard let callback else { return }
            for (index, instance) in entry.instances.enumerated() {
                do {
                    try callback(cpu, instance)
                } catch {
                    for done in entry.instances[..<index].reversed() { try? undo?(cpu, done) }
                    throw error
                }
            }
        } else if let callback = direction == .startup ? entry.startup : entry.teardown {
            try callback(cpu)
        }
    }

    /// Traces one invocation at debug level (the metadata is built only when debug logging is on).
    private func trace(_ state: HotplugState, _ cpu: Int, _ direction: HotplugDirection, _ started: Int64) {
        logger.debug("hotplug callback", metadata: [
            "state": "\(name(state))", "cpu": "\(cpu)", "direction": "\(direction.rawValue)",
            "duration_us": "\(Double(Shim.monotonicNanoseconds() - started) / 1000)",
        ])
    }

    // MARK: The walk

    /// The one hotplug walk (Linux's `cpuhp_invoke_callback_range`): runs, on the calling thread, every state
    /// between `cpu`'s current state and `target`, in order: the startups ascending when `target` is above, the
    /// teardowns descending when it is below. The caller picks the thread (see `Machine.walk`).
    ///
    /// Bookkeeping, as Linux keeps it: while a callback runs, the CPU's current state already counts it as done
    /// (a startup's state, or the state before a teardown's), so that a walk nested in it (the STARTING walk of
    /// `cpu:bringup` and `cpu:teardown`) continues from there; a failure puts it back. When no state is left, the
    /// current state becomes `target` (unless a nested walk took it further).
    ///
    /// A failure: a STARTING callback traps in every mode (the other CPUs are stopped meanwhile); in
    /// ``WalkMode/retire`` any other failure is logged and the walk goes on; otherwise a callback that the table
    /// says may not fail traps, and one that may throws ``StepFailure`` with the CPU at the last completed state.
    func invokeRange(_ cpu: Int, to target: HotplugState, mode: WalkMode, machine: Machine?) throws(StepFailure) {
        let current = self.current(cpu)
        guard current != target else { return }
        let direction: HotplugDirection = current < target ? .startup : .teardown
        while true {
            // One lock per step: find the next due state, count it as done, take its entry and any armed failure.
            let claimed = contents.withLock { contents -> (Step, Bool)? in
                guard let step = contents.nextDue(cpu, toward: target, direction) else { return nil }
                contents.current[cpu] = direction == .startup ? step.state : HotplugTable.state(before: step.state)
                return (step, contents.takeInjection(cpu, step.state, direction))
            }
            guard let (step, injected) = claimed else { break }
            let state = step.state
            let before = direction == .startup ? HotplugTable.state(before: state) : state
            let done = direction == .startup ? state : HotplugTable.state(before: state)
            let started = Shim.monotonicNanoseconds()
            do {
                if injected { throw InjectedFailure(state: state, cpu: cpu, direction: direction) }
                try run(step.entry, state, cpu: cpu, direction, mode: mode, machine: machine)
                trace(state, cpu, direction, started)
            } catch {
                trace(state, cpu, direction, started)
                if HotplugTable.placement(of: state) == .starting {
                    preconditionFailure("STARTING callback \(name(state)) \(direction) failed on CPU \(cpu): \(error); STARTING callbacks must not fail")
                }
                if mode == .retire {
                    logger.error("shutdown: \(direction.rawValue) of \(name(state)) failed on CPU \(cpu): \(error)")
                    continue
                }
                guard HotplugTable.mayFail(state, direction) else {
                    preconditionFailure("\(name(state)) \(direction) failed on CPU \(cpu): \(error); it may not fail")
                }
                if self.current(cpu) == done { setCurrent(cpu, before) }
                throw StepFailure(state: state, direction: direction, error: error)
            }
        }
        contents.withLock { contents in
            let reached = direction == .startup ? contents.current[cpu] >= target : contents.current[cpu] <= target
            if !reached { contents.current[cpu] = target }
        }
    }

    /// The STARTING walk, on the target CPU's own thread with its signal blocked (right after SIGP START, or in
    /// the stop_machine that takes it down): startups up to the last STARTING state, or teardowns down to
    /// ``HotplugState/bringup``. It cannot fail (a STARTING failure traps). Every other online CPU waits in
    /// stop_machine's barrier meanwhile (on attach too, while the control thread's stop_machine body waits for this
    /// CPU), so the walk runs in the stop_machine context as well: a cross-call to another CPU fails at once. In
    /// ``WalkMode/retire`` nobody else is online and there is no stop_machine.
    func walkStarting(_ cpu: Int, _ direction: HotplugDirection, mode: WalkMode = .operation) {
        let context: ThreadContext = mode == .retire ? [] : .stopMachineBody
        do {
            try context.enter(machineID: machineID) { () throws(StepFailure) in
                try invokeRange(cpu, to: HotplugTable.startingEnd(direction), mode: mode, machine: nil)
            }
        } catch {
            preconditionFailure("the STARTING walk of CPU \(cpu) returned \(error.error); STARTING callbacks must not fail")
        }
    }
}

/// How a walk treats a failing step.
enum WalkMode: Sendable, Equatable {
    /// An attach or detach: a failing step stops the walk; the run it belongs to is first undone where it ran,
    /// then the operation rolls back.
    case operation
    /// Going back to where a failed operation started: a failing step stops the walk where it is.
    case rollback
    /// The shutdown path that retires the calling CPU: every run is walked inline on that CPU, and a failure is
    /// logged and the walk goes on (the machine is going away; nothing can stop half-way).
    case retire
}

/// A step that failed in a walk, with the CPU left at the last completed state.
struct StepFailure: Error {
    let state: HotplugState
    let direction: HotplugDirection
    /// The callback's error, or the cross-call's when the CPU did not take it in time.
    let error: any Error
    /// Undoing the failed run where it ran failed in turn, at this step: the CPU stays where that stopped.
    var undoFailure: (state: HotplugState, direction: HotplugDirection, error: any Error)?
}

extension HotplugRegistry.Contents {
    /// See ``HotplugRegistry/nextDue(_:toward:_:)``; a scan of the few ordered keys, no hashing.
    func nextDue(_ cpu: Int, toward target: HotplugState, _ direction: HotplugDirection) -> HotplugRegistry.Step? {
        let current = self.current[cpu]
        return direction == .startup
            ? ordered.first { $0.state > current && $0.state <= target }
            : ordered.last { $0.state <= current && $0.state > target }
    }

    /// Consumes an armed injected failure; no hashing when none is armed (the common case).
    mutating func takeInjection(_ cpu: Int, _ state: HotplugState, _ direction: HotplugDirection) -> Bool {
        guard !injections.isEmpty else { return false }
        return injections.remove(.init(cpu: cpu, state: state, direction: direction)) != nil
    }
}
