/// The layout of the hotplug state table (see ``HotplugState``): the regions of slots, each with its section,
/// its placement, its failure rules and who fills it; and the machine's own states with their callbacks.
///
/// It is the only place that computes with raw values: "the state before X", "the run of one placement that holds
/// X", "the last STARTING state" are its queries. The walk (`HotplugRegistry.invokeRange`, driven by
/// `Machine.walk`) asks it where each state runs and whether a failure there is allowed; fault injection asks it
/// what may fail; registration asks it for a section's dynamic slots; a subsystem's built-in state must sit in a
/// built-in slot.
enum HotplugTable {
    /// Where a state's callbacks run.
    enum Placement: Sendable, Equatable {
        /// On the thread that runs the operation (the control thread), inline.
        case control
        /// On the target CPU with its SIGP signal blocked while every other online CPU is stopped. Run by the
        /// machine's own states (`cpu:bringup`, `cpu:teardown`), never on their own.
        case starting
        /// On the target CPU at a safe point (a cross-call).
        case online
    }

    /// Who fills a region's slots.
    enum Kind: Sendable, Equatable {
        /// The machine's own states (`offline`, `cpu:bringup`, `cpu:teardown`, `online`): ``fixedEntries``.
        case fixed
        /// Subsystems' states at slots they declare where they live (`HotplugSubsystem`).
        case builtin
        /// Allocated in order by registration.
        case dynamic
    }

    /// Consecutive slots with the same rules.
    struct Region: Sendable {
        let slots: ClosedRange<Int>
        let kind: Kind
        let section: HotplugSection
        let placement: Placement
        let startupMayFail: Bool
        let teardownMayFail: Bool
    }

    /// The regions, ascending and contiguous from ``HotplugState/offline`` to ``HotplugState/online``.
    static let regions: [Region] = [
        Region(slots: 0...0, kind: .fixed, section: .prepare, placement: .control,           // offline
               startupMayFail: false, teardownMayFail: false),
        Region(slots: 1...19, kind: .dynamic, section: .prepare, placement: .control,
               startupMayFail: true, teardownMayFail: false),
        Region(slots: 20...39, kind: .builtin, section: .prepare, placement: .control,
               startupMayFail: true, teardownMayFail: false),
        Region(slots: 40...40, kind: .fixed, section: .prepare, placement: .control,         // cpu:bringup
               startupMayFail: true, teardownMayFail: false),
        Region(slots: 41...42, kind: .builtin, section: .starting, placement: .starting,
               startupMayFail: false, teardownMayFail: false),
        Region(slots: 43...59, kind: .dynamic, section: .starting, placement: .starting,
               startupMayFail: false, teardownMayFail: false),
        Region(slots: 60...60, kind: .fixed, section: .online, placement: .control,          // cpu:teardown
               startupMayFail: false, teardownMayFail: true),
        Region(slots: 61...99, kind: .dynamic, section: .online, placement: .online,
               startupMayFail: true, teardownMayFail: true),
        Region(slots: 100...100, kind: .fixed, section: .online, placement: .control,        // online
               startupMayFail: false, teardownMayFail: false),
    ]

    /// The region holding `state`, nil outside the table.
    static func region(of state: HotplugState) -> Region? {
        regions.first { $0.slots.contains(state.rawValue) }
    }

    /// The section of any state; below the table is PREPARE, above it ONLINE.
    static func section(of state: HotplugState) -> HotplugSection {
        if let region = region(of: state) { return region.section }
        return state < .offline ? .prepare : .online
    }

    /// Where `state`'s callbacks run. Traps outside the table (the walk never leaves it).
    static func placement(of state: HotplugState) -> Placement {
        guard let region = region(of: state) else { preconditionFailure("\(state) is outside the hotplug state table") }
        return region.placement
    }

    /// Whether `state`'s callback in `direction` may fail (and so take an injected failure). False outside the
    /// table.
    static func mayFail(_ state: HotplugState, _ direction: HotplugDirection) -> Bool {
        guard let region = region(of: state) else { return false }
        return direction == .startup ? region.startupMayFail : region.teardownMayFail
    }

    /// The state a CPU is at once `state`'s teardown ran (slots are dense: every slot below is still set up).
    static func state(before state: HotplugState) -> HotplugState {
        precondition(state > .offline && state <= .online, "no state before \(state)")
        return HotplugState(rawValue: state.rawValue - 1)
    }

    /// The slots around `state` (not ``HotplugState/offline``, which never runs) whose states run on the same
    /// placement: the walk hands each such run to one thread.
    static func run(containing state: HotplugState) -> ClosedRange<HotplugState> {
        let placement = placement(of: state)
        guard let index = regions.firstIndex(where: { $0.slots.contains(state.rawValue) }) else {
            preconditionFailure("\(state) is outside the hotplug state table")
        }
        var low = index, high = index
        while low > 1, regions[low - 1].placement == placement { low -= 1 }
        while high + 1 < regions.count, regions[high + 1].placement == placement { high += 1 }
        return HotplugState(rawValue: regions[low].slots.lowerBound)...HotplugState(rawValue: regions[high].slots.upperBound)
    }

    /// Where a walk toward `target` that enters `run` leaves it: at `target` when the run holds it, else at the
    /// run's last slot (ascending) or at the state before its first slot (descending).
    static func end(of run: ClosedRange<HotplugState>, toward target: HotplugState, _ direction: HotplugDirection)
        -> HotplugState {
        direction == .startup ? min(target, run.upperBound) : max(target, state(before: run.lowerBound))
    }

    /// The STARTING states, which the target CPU walks itself: up to the last of them right after SIGP START, down
    /// to ``HotplugState/bringup`` (the state before the first of them) while it dies.
    static let starting: ClosedRange<HotplugState> = {
        let slots = regions.filter { $0.placement == .starting }.map(\.slots)
        return HotplugState(rawValue: slots.first!.lowerBound)...HotplugState(rawValue: slots.last!.upperBound)
    }()

    /// Where the STARTING walk in `direction` ends.
    static func startingEnd(_ direction: HotplugDirection) -> HotplugState {
        direction == .startup ? starting.upperBound : state(before: starting.lowerBound)
    }

    /// The slots registration allocates from in `section`, first free first.
    static func dynamicSlots(_ section: HotplugSection) -> ClosedRange<Int> {
        let region = regions.first { $0.kind == .dynamic && $0.section == section }!
        return region.slots
    }

    /// Whether a subsystem may declare a built-in state at `state`.
    static func isBuiltinSlot(_ state: HotplugState) -> Bool { region(of: state)?.kind == .builtin }

    /// The machine's own states, with their callbacks. These take the machine as an argument: the table (kept by
    /// every CPU thread through the registry) must keep no machine alive.
    static let fixedEntries: [HotplugState: HotplugRegistry.Entry] = [
        .offline: .init(name: "offline", isMultiInstance: false, isBuiltin: true),
        .bringup: .init(name: "cpu:bringup", isMultiInstance: false, isBuiltin: true,
                        machineStartup: { machine, cpu, _ in try machine.bringUp(cpu) }),
        .teardownCPU: .init(name: "cpu:teardown", isMultiInstance: false, isBuiltin: true,
                            machineTeardown: { machine, cpu, mode in try machine.takeDown(cpu, mode) }),
        .online: .init(name: "online", isMultiInstance: false, isBuiltin: true,
                       machineStartup: { machine, cpu, _ in machine.activate(cpu) },
                       machineTeardown: { machine, cpu, _ in machine.deactivate(cpu) }),
    ]
}

extension HotplugState {
    /// The dynamic slots of each section (registration order is callback order within them).
    static var prepareDynamic: ClosedRange<Int> { HotplugTable.dynamicSlots(.prepare) }
    static var startingDynamic: ClosedRange<Int> { HotplugTable.dynamicSlots(.starting) }
    static var onlineDynamic: ClosedRange<Int> { HotplugTable.dynamicSlots(.online) }
}
