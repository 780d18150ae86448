import Logging

/// The registered states, each CPU's progress through them, the injected failures and the disable counter.
/// Shared by the machine (control thread) and the CPU threads (STARTING callbacks); it never refers to the
/// machine, so CPU threads keep no machine alive.
final class HotplugRegistry: Sendable {
    struct Entry {
        var name: String
        var startup: HotplugCallback?
        var teardown: HotplugCallback?
        var instanceStartup: HotplugInstanceCallback?
        var instanceTeardown: HotplugInstanceCallback?
        var isMultiInstance: Bool
        var instances: [String] = []
        var isBuiltin = false
    }

    struct Injection: Hashable {
        let cpu: Int
        let state: HotplugState
        let direction: HotplugDirection
    }

    struct Contents {
        var entries: [HotplugState: Entry] = [:]
        var current: [HotplugState]
        var target: [HotplugState]
        var injections: Set<Injection> = []
        var disableDepth = 0
    }

    let contents: Locked<Contents>
    let logger: Logger

    init(possible: Int, logger: Logger) {
        contents = Locked(Contents(current: Array(repeating: .offline, count: possible),
                                   target: Array(repeating: .offline, count: possible)))
        self.logger = logger
    }

    // MARK: Bookkeeping

    func current(_ cpu: Int) -> HotplugState { contents.withLock { $0.current[cpu] } }
    func setCurrent(_ cpu: Int, _ state: HotplugState) { contents.withLock { $0.current[cpu] = state } }
    func target(_ cpu: Int) -> HotplugState { contents.withLock { $0.target[cpu] } }
    func setTarget(_ cpu: Int, _ state: HotplugState) { contents.withLock { $0.target[cpu] = state } }

    /// Registered states of `range`, ascending.
    func states(in range: ClosedRange<Int>) -> [HotplugState] {
        contents.withLock { $0.entries.keys.filter { range.contains($0.rawValue) }.sorted() }
    }

    func entry(_ state: HotplugState) -> Entry? { contents.withLock { $0.entries[state] } }

    func name(_ state: HotplugState) -> String {
        switch state {
        case .offline: return "offline"
        case .bringup: return "cpu:bringup"
        case .teardownCPU: return "cpu:teardown"
        case .online: return "online"
        default: return entry(state)?.name ?? "unregistered \(state.rawValue)"
        }
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

    /// Removes a state and the injections armed on it (a later state in the same slot starts clean).
    /// Registers one of the runtime's own states at its fixed slot.
    func insertBuiltin(_ state: HotplugState, _ entry: Entry) {
        var entry = entry
        entry.isBuiltin = true
        contents.withLock { $0.entries[state] = entry }
    }

    func remove(_ state: HotplugState) {
        contents.withLock { contents in
            contents.entries.removeValue(forKey: state)
            contents.injections = contents.injections.filter { $0.state != state }
        }
    }

    /// Consumes an injected failure for this callback, if one is armed.
    func takeInjection(_ cpu: Int, _ state: HotplugState, _ direction: HotplugDirection) -> Bool {
        contents.withLock { $0.injections.remove(Injection(cpu: cpu, state: state, direction: direction)) != nil }
    }

    // MARK: Invocation

    /// Runs the callback(s) of `state` for `cpu` in `direction` on the calling thread (the caller picks the
    /// thread the section requires). A multi-instance state runs its callback for every instance; when instance
    /// k fails, instances before it are undone on this CPU first. Each invocation is traced at debug level.
    func invoke(_ state: HotplugState, cpu: Int, _ direction: HotplugDirection) throws {
        let started = Shim.monotonicNanoseconds()
        defer {
            logger.debug("hotplug callback", metadata: [
                "state": "\(name(state))", "cpu": "\(cpu)", "direction": "\(direction.rawValue)",
                "duration_us": "\(Double(Shim.monotonicNanoseconds() - started) / 1000)",
            ])
        }
        if takeInjection(cpu, state, direction) {
            throw InjectedFailure(state: state, cpu: cpu, direction: direction)
        }
        guard let entry = entry(state) else { return }
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

    /// Runs the STARTING callbacks on the target CPU's own thread (its signal blocked), ascending on attach,
    /// descending on detach, updating the CPU's progress. STARTING callbacks may not fail.
    func runStarting(cpu: Int, _ direction: HotplugDirection) {
        var states = self.states(in: HotplugState.taskletsStarting.rawValue...HotplugState.startingDynamic.upperBound)
        if direction == .teardown { states.reverse() }
        for state in states {
            let due = direction == .startup ? current(cpu) < state : current(cpu) >= state
            guard due else { continue }
            do {
                try invoke(state, cpu: cpu, direction)
            } catch {
                preconditionFailure("STARTING callback \(name(state)) \(direction) failed on CPU \(cpu): \(error); STARTING callbacks must not fail")
            }
            setCurrent(cpu, direction == .startup ? state : HotplugState(rawValue: state.rawValue - 1))
        }
        setCurrent(cpu, direction == .startup ? HotplugState(rawValue: HotplugState.teardownCPU.rawValue - 1) : .bringup)
    }
}
