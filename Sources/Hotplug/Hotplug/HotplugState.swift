/// # CPU hotplug states
///
/// A logical CPU is attached and detached by walking one ordered table of states, each with a mandatory name
/// ("subsys:mode"), optional startup and teardown callbacks, a placement (the thread its callbacks run on) and
/// rules on what may fail. Attach (``Machine/online(_:)``) runs the startups in ascending order up to
/// ``HotplugState/online``; detach (``Machine/offline(_:)``) runs the teardowns in descending order down to
/// ``HotplugState/offline``. Starting the CPU and taking it down are states of the table like the others. This
/// is the generalisation, as Linux's cpuhp state machine made it, of "every part with per-CPU data registers
/// two functions" (docs/ARCHITECTURE.md, "Origin").
///
/// ```
///  state    name                placement                                           may fail
///  0        offline             (nothing set up)
///  1...19   PREPARE dynamic     control thread, before the CPU starts and after     startup
///  20...39  PREPARE built-in    it is dead ("dead" callbacks); 22 slab:prepare,
///                               25 slab:dead, 30 tasklets:dead
///  40       cpu:bringup         control thread: stop_machine, unpark, SIGP START;   startup
///                               the CPU then walks STARTING up itself
///  41       STARTING built-in   the target CPU, its SIGP signal blocked, every      nothing
///                               other online CPU stopped; 41 tasklets:starting
///  42...59  STARTING dynamic
///  60       cpu:teardown        control thread: stop_machine; the dying CPU walks   teardown
///                               STARTING down, leaves the online mask, parks
///  61...99  ONLINE dynamic      the target CPU at a safe point (a cross-call)       startup, teardown
///  100      online              control thread: the CPU enters (startup) or         nothing
///                               leaves (teardown) the active mask
/// ```
///
/// The table (`HotplugTable`) is the only place that knows the layout: which slots a section has, a state's
/// placement and failure rules, its neighbours ("the state before", "the last STARTING state"). Nothing else
/// computes with raw values. The built-in slots belong to subsystems that declare them where they live
/// (`HotplugSubsystem`: tasklets in `Tasklets/`, the slab allocator in `Slab/`); the dynamic slots are
/// allocated by ``Machine/Hotplug-swift.struct/register(_:section:invokeOnExisting:startup:teardown:)``.
///
/// ## The walk
///
/// One loop walks a CPU between two states (`HotplugRegistry.invokeRange`, Linux's
/// `cpuhp_invoke_callback_range`): it runs every registered state between the CPU's current state and the
/// target, in order, on the calling thread, and keeps the bookkeeping (the current state counts a state as done
/// while its callback runs, and goes back when it fails, as Linux does; so a walk nested in a callback continues
/// from there). The machine's driver (`Machine.walk`) cuts the way into runs of one placement and hands each to
/// the loop on the thread its placement names:
/// - control: inline on the control thread (PREPARE, cpu:bringup, cpu:teardown, online);
/// - online: on the target CPU in one cross-call (no cross-call when no ONLINE state is due);
/// - starting: not by the driver: cpu:bringup's startup makes the CPU walk the STARTING range up on its own
///   thread right after SIGP START, and cpu:teardown's teardown makes it walk the range down inside
///   stop_machine.
///
/// When the CPU retires itself (the shutdown path run on one of the machine's own CPUs) the same walk goes down
/// to offline with every run inline on that CPU: the ONLINE cross-call runs in place, and cpu:teardown blocks the
/// signal and walks the STARTING range there.
///
/// Attach: PREPARE startups on the control thread; cpu:bringup: inside stop_machine the lifecycle permits the
/// thread to run and SIGP START wakes it; the CPU enters the online mask and walks the STARTING startups with its
/// signal blocked while everyone else is stopped; then the ONLINE startups run on it at a safe point; `online`
/// makes it active.
///
/// Detach: `online`'s teardown takes it out of the active mask first; the ONLINE teardowns run on it; then
/// cpu:teardown: stop_machine, on the dying CPU the STARTING teardowns, out of the online mask, and the lifecycle
/// asks it to park; when its thread is parked, the PREPARE teardowns run on the control thread ("dead"
/// callbacks).
///
/// What may fail, and what rollback does:
/// - a failed step is first undone where its run ran (an ONLINE failure is undone on the CPU itself, in the same
///   cross-call, before the error returns); then the same walk runs in the other direction, back to where the
///   operation started: a failed attach rolls back, a failed detach rolls forward;
/// - STARTING callbacks and PREPARE teardowns may not fail (a throw there traps: it is a programmer error);
/// - a failure during rollback is reported loudly (logged at critical level, and the error says the rollback
///   failed) and leaves the CPU where it stopped; the next attach or detach continues from there;
/// - the shutdown path that retires the calling CPU cannot stop half-way: a failure there is logged and the walk
///   goes on.
///
/// Fault injection (``Machine/Hotplug-swift.struct/injectFailure(cpu:at:direction:)``) makes one callback fail
/// once, so that every rollback path is testable. It is accepted where the table says a failure is allowed: PREPARE
/// and ONLINE startups, ONLINE teardowns, the bring-up (the CPU does not start) and the teardown (the CPU refuses to
/// die). An armed failure fires at the next run of that callback, in an operation or in a rollback.
///
/// Locks: lifecycle operations and registrations are serialised; an attach or detach holds the hotplug write lock
/// for its whole walk, so ``Machine/withCPUsReadLocked(_:)`` sees a stable online mask. A callback runs inside
/// that operation: an attach, detach, registration or stop_machine it calls throws
/// ``HotplugError/wouldDeadlock(operation:reason:)`` at once, and ``Machine/withCPUsReadLocked(_:)`` runs its body
/// without taking the lock again (docs/ARCHITECTURE.md, "Rules for callbacks and bodies").
public struct HotplugState: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// The CPU is parked (or in standby): nothing is set up for it.
    public static let offline = HotplugState(rawValue: 0)
    /// `cpu:bringup`: its startup starts the CPU's thread (which walks the STARTING startups itself).
    public static let bringup = HotplugState(rawValue: 40)
    /// `cpu:teardown`: the CPU is in the online mask; its teardown takes the CPU down (which walks the STARTING
    /// teardowns on the dying CPU).
    public static let teardownCPU = HotplugState(rawValue: 60)
    /// The CPU is online and active (`online`: its startup makes the CPU active, its teardown inactive).
    public static let online = HotplugState(rawValue: 100)

    /// The section this state belongs to: PREPARE up to and including ``bringup`` (run from the control thread
    /// before the CPU starts, like Linux's `CPUHP_BRINGUP_CPU`), STARTING between the two, ONLINE from
    /// ``teardownCPU`` on.
    public var section: HotplugSection { HotplugTable.section(of: self) }

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "state \(rawValue)" }
}

/// The three sections of the state table; a registered state's section says where its callbacks run (see
/// ``HotplugState``).
public enum HotplugSection: String, Sendable, CaseIterable {
    /// On the control thread, before the CPU starts and after it is dead. Startups may fail.
    case prepare
    /// On the target CPU with its signal blocked, while the other CPUs are stopped. Nothing may fail.
    case starting
    /// On the target CPU at a safe point. Startups and teardowns may fail.
    case online
}

/// Attach (startup) or detach (teardown).
public enum HotplugDirection: String, Sendable {
    case startup, teardown
}

/// A hotplug callback: receives the logical CPU it is for.
public typealias HotplugCallback = @Sendable (_ cpu: Int) throws -> Void
/// A multi-instance hotplug callback: receives the CPU and the instance.
public typealias HotplugInstanceCallback = @Sendable (_ cpu: Int, _ instance: String) throws -> Void

/// What a callback failure leaves behind.
public struct HotplugCallbackFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public let state: HotplugState
    public let name: String
    public let cpu: Int
    public let direction: HotplugDirection
    /// The callback's error (``InjectedFailure`` for an injected one).
    public let underlying: any Error
    /// True when the CPU went back to where it started (rolled back on attach, forward on detach).
    public let rolledBack: Bool

    public static func == (a: Self, b: Self) -> Bool {
        a.state == b.state && a.name == b.name && a.cpu == b.cpu && a.direction == b.direction
            && a.rolledBack == b.rolledBack && String(describing: a.underlying) == String(describing: b.underlying)
    }

    public var description: String {
        "\(direction) of \(name) (\(state)) failed on CPU \(cpu): \(underlying); "
            + (rolledBack ? "the CPU is back where it started" : "ROLLBACK FAILED: the CPU stays where it stopped")
    }
}

/// The error an injected failure throws.
public struct InjectedFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public let state: HotplugState
    public let cpu: Int
    public let direction: HotplugDirection
    public var description: String { "injected failure (\(direction) of \(state) on CPU \(cpu))" }
}

/// A state of the table (the machine's own, a subsystem's built-in one, or a registered one), for introspection.
public struct HotplugStateInfo: Sendable, Equatable {
    public let state: HotplugState
    public let name: String
    public let section: HotplugSection
    public let isMultiInstance: Bool
    public let instances: [String]
    /// True for the runtime's own states (`cpu:bringup`, the tasklet takeover, ...): they cannot be unregistered.
    public let isBuiltin: Bool
}
