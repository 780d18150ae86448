/// # CPU hotplug states
///
/// A logical CPU is attached and detached by walking an ordered list of states, each with an optional startup
/// and teardown callback and a mandatory name ("subsys:mode"). The startups run in ascending order on attach
/// (``Machine/online(_:)``), the teardowns in descending order on detach (``Machine/offline(_:)``). This is the
/// generalisation of the 2000 proposal's "every part with per-CPU data registers two functions", as Linux's
/// cpuhp state machine made it.
///
/// ```
///   offline (0)
///   PREPARE   1...39   control thread; before the CPU starts / after it is dead   startup may fail
///                      (1...19 dynamic, 20...39 built-in: 22 slab:prepare gives the CPU its magazines;
///                      25 slab:dead drains them; 30 tasklets:dead, the takeover)
///   bringup   40       synchronise all CPUs (stop_machine), unpark the CPU's thread, SIGP START
///   STARTING  41...59  the target CPU, with its SIGP signal blocked, while every    must not fail
///                      (41 built-in: tasklets:starting; 42...59 dynamic)
///                      other online CPU is stopped
///   teardown  60       the CPU is in the online mask ("AP online"); its teardown is the CPU's death:
///                      stop_machine, the STARTING teardowns on the dying CPU, out of the online mask, park
///   ONLINE    61...99  the target CPU, at a safe point (a cross-call)                may fail
///   online    100      the CPU is active
/// ```
///
/// Attach, as the seed describes it: synchronise all CPUs, create (unpark) the CPU's thread, run the callbacks,
/// start it with SIGP START. Here: PREPARE startups on the control thread; then, inside stop_machine, the lifecycle
/// permits the thread to run and SIGP START wakes it; the CPU runs the STARTING startups with its signal blocked
/// and enters the online mask while everyone else is stopped; then the ONLINE startups run on it at a safe point;
/// then it becomes active.
///
/// Detach: it leaves the active mask first; the ONLINE teardowns run on it; then stop_machine: on the dying CPU,
/// the STARTING teardowns, out of the online mask, and the lifecycle asks it to park (the seed's SIGP STOP); when
/// its thread is parked, the PREPARE teardowns run on the control thread ("dead" callbacks).
///
/// What may fail, and what rollback does:
/// - a failed startup during attach rolls the CPU back to where it was: the teardowns of every completed step,
///   in reverse order;
/// - a failed teardown during detach rolls the CPU forward again: the startups of the steps already torn down;
/// - STARTING callbacks and PREPARE teardowns may not fail (a throw there traps: it is a programmer error);
/// - a failure during rollback is reported loudly (logged at critical level, and the error says the rollback
///   failed) and leaves the CPU where it stopped; the next attach or detach continues from there.
///
/// Fault injection (``Machine/Hotplug-swift.struct/injectFailure(cpu:at:direction:)``) makes one callback fail once, so that every
/// rollback path is testable. It is accepted where a failure is allowed: PREPARE and ONLINE startups, ONLINE
/// teardowns, the bring-up (the CPU does not start) and the teardown (the CPU refuses to die).
///
/// Locks: lifecycle operations and registrations are serialised; an attach or detach holds the hotplug write lock
/// for its whole walk, so ``Machine/withCPUsReadLocked(_:)`` sees a stable online mask. Callbacks must not take
/// the read lock (they run under the write lock) and must not start hotplug operations.
public struct HotplugState: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// The CPU is parked (or in standby): nothing is set up for it.
    public static let offline = HotplugState(rawValue: 0)
    /// The boundary where the CPU's thread is started (attach) or has died (detach).
    public static let bringup = HotplugState(rawValue: 40)
    /// The boundary where the CPU is in the online mask; its teardown takes the CPU down.
    public static let teardownCPU = HotplugState(rawValue: 60)
    /// The CPU is online and active.
    public static let online = HotplugState(rawValue: 100)

    static let prepareDynamic = 1...19
    static let prepareBuiltin = 20...39
    static let startingDynamic = 42...59
    /// Built-in: the tasklet takeover (teardown after the CPU is dead). Above the slab drain's slot, so it runs
    /// first on detach.
    static let taskletsDead = HotplugState(rawValue: 30)
    /// Built-in: the slab allocator drains a dead CPU's magazines (teardown). Below `tasklets:dead`, so it runs
    /// after the takeover on detach.
    static let slabDead = HotplugState(rawValue: 25)
    /// Built-in: the slab allocator gives an attaching CPU its magazines (startup, before the CPU starts).
    static let slabPrepare = HotplugState(rawValue: 22)
    /// Built-in: the CPU takes tasklets (startup) / stops taking them (teardown), while everyone else is stopped.
    static let taskletsStarting = HotplugState(rawValue: 41)
    static let onlineDynamic = 61...99

    /// The section a state belongs to (boundaries report the section they close).
    public var section: HotplugSection {
        if rawValue < HotplugState.bringup.rawValue { return .prepare }
        if rawValue < HotplugState.teardownCPU.rawValue { return .starting }
        return .online
    }

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "state \(rawValue)" }
}

/// Where a state's callbacks run (see ``HotplugState``).
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

/// A registered state, for introspection.
public struct HotplugStateInfo: Sendable, Equatable {
    public let state: HotplugState
    public let name: String
    public let section: HotplugSection
    public let isMultiInstance: Bool
    public let instances: [String]
    /// True for the runtime's own states (the tasklet takeover, ...): they cannot be unregistered.
    public let isBuiltin: Bool
}
