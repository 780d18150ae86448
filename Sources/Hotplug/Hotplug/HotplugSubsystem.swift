import Logging

/// A part of the runtime with per-CPU data that follows attach and detach through built-in hotplug states it
/// declares itself, in its own folder: its slots (`extension HotplugState { static let ... }`, in a built-in
/// region of ``HotplugTable``) and its callbacks. The machine never wires a subsystem's callbacks by hand: it
/// builds ``BuiltinSubsystems``, which creates each subsystem and registers its states.
///
/// The callbacks must hold the subsystem weakly: the registry that keeps them is kept by every CPU thread, and a
/// CPU thread must keep neither a subsystem nor the machine alive. Anything a subsystem sets on the CPU cores (a
/// hook its CPU side runs at the safe point) it sets in its own initialiser, weakly too.
protocol HotplugSubsystem: AnyObject, Sendable {
    /// Creates the subsystem for a machine being built (its CPU threads do not exist yet).
    init(_ context: HotplugSubsystemContext)
    /// The subsystem's built-in states, at fixed slots of the table's built-in regions.
    var hotplugStates: [HotplugBuiltinState] { get }
}

/// What a subsystem is created from: the machine's parts that exist before the machine itself (a subsystem never
/// keeps the machine).
struct HotplugSubsystemContext: Sendable {
    /// The logical CPUs, by id (their threads start later).
    let cores: [CPUCore]
    /// The machine's id (`CPUCore.currentID(machineID:)` tells whether the caller is one of its CPUs).
    let machineID: UInt64
    /// The state table the subsystems' states go into.
    let registry: HotplugRegistry
    /// The machine's logger.
    let logger: Logger
}

/// One built-in state a subsystem declares.
struct HotplugBuiltinState: Sendable {
    let state: HotplugState
    /// "subsys:mode".
    let name: String
    let startup: HotplugCallback?
    let teardown: HotplugCallback?
}

/// The machine's built-in subsystems: the one list of them, built by `Machine.init` in one call, which creates
/// every subsystem from the context and registers its states.
///
/// Adding a subsystem touches its own folder and this list, never `Machine.init` (the executors are the latest
/// example: `Executors/ExecutorEngine.swift`):
/// 1. In its own folder, make it a `final class Thing: HotplugSubsystem` with `init(_ context:)` (it keeps the
///    cores it needs, never the machine) and declare its slots there: `extension HotplugState { static let
///    thingDead = HotplugState(rawValue: 35) }`, each in a free slot of a built-in region of ``HotplugTable``
///    whose placement fits (PREPARE 20...39 on the control thread; STARTING 41...42, both taken, by the tasklets
///    and the executors; ONLINE has none yet: carve one out of the table's ONLINE region there, the one place that
///    knows the layout). Registration traps at start-up when a slot is outside a built-in region or taken.
/// 2. Return them from `hotplugStates`, each callback capturing the subsystem weakly (`[weak self]`). The order
///    between subsystems is the slot order: a teardown runs before every teardown of a lower slot.
/// 3. Here: add `let thing: Thing`, create it in `init` (`thing = Thing(context)`) and list it in `all`. The
///    machine reaches it as `subsystems.thing` (a computed property on `Machine` if the public API needs it, as
///    `tasklets`, `slabs` and `executorEngine` have).
/// 4. Test it like the others: the state table test lists every built-in state by slot and name; an attach /
///    detach test, with a failure injected at each failable state, checks its per-CPU data.
struct BuiltinSubsystems: Sendable {
    /// Tasklet lists per CPU, the CPU side that runs them, the takeover on detach.
    let tasklets: TaskletEngine
    /// The machine's slab caches, given magazines on attach and drained on detach.
    let slabs: SlabRegistry
    /// A Swift executor per logical CPU and the pool; their jobs follow attach and detach.
    let executors: ExecutorEngine

    /// Every built-in subsystem, in creation order.
    var all: [any HotplugSubsystem] { [tasklets, slabs, executors] }

    /// Creates every built-in subsystem and registers its states in `context.registry`.
    init(_ context: HotplugSubsystemContext) {
        tasklets = TaskletEngine(context)
        slabs = SlabRegistry(context)
        executors = ExecutorEngine(context)
        for subsystem in all {
            for state in subsystem.hotplugStates { context.registry.insertBuiltin(state) }
        }
    }
}
