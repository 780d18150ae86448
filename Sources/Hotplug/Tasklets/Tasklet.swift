import Synchronization

/// Deferred work that runs on a logical CPU at its next safe point, with Linux's tasklet semantics:
///
/// - after ``schedule(on:)`` it runs at least once;
/// - scheduled again before it starts, it still runs once (schedules coalesce);
/// - it never runs concurrently with itself (scheduled on another CPU while running, it waits its turn);
/// - a disabled tasklet stays queued and runs after ``enable()``;
/// - ``kill()`` removes a queued run and waits for a running one.
///
/// High-priority tasklets run before normal ones on the same CPU. When a CPU is detached, its pending tasklets
/// are appended, in order, to the tail of a surviving CPU's lists (the built-in `tasklets:dead` state): nothing
/// scheduled is lost or run twice, and none runs on an offline CPU.
///
/// Dropping the last reference to a scheduled or running tasklet is safe: the queued run still happens (or is
/// dropped, at shutdown), and the body is released only after it.
public final class Tasklet: Sendable {
    // The handle users hold. What the lists link and the CPUs run is its `TaskletCore`, which outlives the
    // handle while a run is queued or in progress (see `TaskletCore`, "Lifetime").

    /// Where a tasklet runs among the tasklets queued on the same CPU.
    public enum Priority: Sendable {
        /// Runs before every normal-priority tasklet queued on the same CPU (Linux's `tasklet_hi_schedule`).
        case high
        /// Runs after the high-priority ones, in schedule order.
        case normal
    }

    /// Where it runs among the tasklets queued on the same CPU.
    public let priority: Priority
    let core: TaskletCore
    let engine: TaskletEngine

    /// - Parameters:
    ///   - machine: whose CPUs run it.
    ///   - priority: `.high` runs before `.normal` on the same CPU.
    ///   - body: the work; it runs on a logical CPU's thread at a safe point.
    public init(_ machine: Machine, priority: Priority = .normal, _ body: @escaping @Sendable () -> Void) {
        self.priority = priority
        self.engine = machine.tasklets
        self.core = TaskletCore(priority: priority, state: 0, body)
    }

    deinit {
        // The handle is gone: nobody can schedule, disable, enable or kill it any more. The core goes now, or once
        // the run that is queued or in progress ends (whoever ends it releases the lists' reference).
        core.orphan()
    }

    /// Queues the tasklet on a logical CPU (Linux's `tasklet_schedule`). No lock, no allocation and no reference
    /// count on this path: one read-modify-write on the tasklet's state, then, on the CPU itself, an append to
    /// the CPU's own list (plain stores), elsewhere one CAS onto the target's list.
    /// - Parameter cpu: the target; nil: the calling CPU when called on one of the machine's CPUs, otherwise the
    ///   online CPU with the fewest queued tasklets. A CPU that is not online is never used: the tasklet is
    ///   redirected to the online CPU with the fewest queued tasklets.
    /// - Returns: false when it was already scheduled (this schedule coalesced with that one) or is being killed.
    /// - Throws: ``HotplugError/invalidCPU(_:)`` for an id outside `0..<possible`; ``HotplugError/shutDown``
    ///   when no CPU is online any more.
    @discardableResult
    public func schedule(on cpu: Int? = nil) throws(HotplugError) -> Bool {
        if let cpu, UInt(bitPattern: cpu) >= UInt(bitPattern: engine.possible) { throw .invalidCPU(cpu) }
        // SCHED set by a CAS that expects the idle state first (the common case: one CAS, no load before it).
        // Coalesced when SCHED is already set; ignored while KILLED is (the kill waits for no run of it).
        var expected: UInt8 = 0
        while true {
            // Acquire: partner of the release that cleared SCHED or RUN before (the last run's effects are
            // visible). Release: publishes what the caller wrote before the schedule to a CPU that takes it from
            // its own list (a shared list's CAS publishes it too).
            let (exchanged, seen) = core.state.compareExchange(
                expected: expected, desired: expected | TaskletCore.scheduledBit,
                successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            if exchanged { break }
            if seen & (TaskletCore.scheduledBit | TaskletCore.killedBit) != 0 { return false }
            expected = seen
        }
        try engine.enqueue(core, preferred: cpu)
        return true
    }

    /// Disables the tasklet (nesting, Linux's `tasklet_disable`): a queued run stays queued until the matching
    /// ``enable()``. Waits for a run in progress to finish, unless called from inside the tasklet itself.
    public func disable() {
        // Sequentially consistent, with the first load of the wait: the second half of the Dekker pair with a
        // CPU that sets RUN, then reads the count (`TaskletEngine.runOne`).
        core.disableCount.add(1, ordering: .sequentiallyConsistent)
        waitUntilNotRunning()
    }

    /// Undoes one ``disable()``; a run that waited is then taken by its CPU.
    /// - Warning: traps when the tasklet is not disabled (an unbalanced call is a programmer error).
    public func enable() {
        let count = core.disableCount.subtract(1, ordering: .acquiringAndReleasing).newValue
        precondition(count >= 0, "Tasklet.enable() without a matching disable()")
        if count == 0, core.state.load(ordering: .acquiring) & TaskletCore.scheduledBit != 0 {
            engine.kick(core.queuedOn.load(ordering: .acquiring))
        }
    }

    /// Removes a queued run (it will not run) and waits for a run in progress to finish (Linux's
    /// `tasklet_kill`). Schedules made while it is being killed are ignored; afterwards it may be scheduled again.
    /// - Throws: ``HotplugError/taskletKillsItself`` when called from inside the tasklet (it would wait for
    ///   itself forever, which Linux reports as a bug).
    public func kill() throws(HotplugError) {
        if core.runner.load(ordering: .acquiring) == Shim.currentThreadID { throw .taskletKillsItself }
        core.state.bitwiseOr(TaskletCore.killedBit, ordering: .acquiringAndReleasing)
        // A queued run is dropped by its CPU when it meets the killed bit; make sure that CPU looks.
        while core.state.load(ordering: .acquiring) & (TaskletCore.scheduledBit | TaskletCore.runningBit) != 0 {
            engine.kick(core.queuedOn.load(ordering: .acquiring))
            Shim.sleep(microseconds: 50)
        }
        core.state.bitwiseAnd(~TaskletCore.killedBit, ordering: .releasing)
    }

    /// True while queued (not yet started).
    public var isScheduled: Bool { core.state.load(ordering: .acquiring) & TaskletCore.scheduledBit != 0 }
    /// True while its body runs.
    public var isRunning: Bool { core.state.load(ordering: .acquiring) & TaskletCore.runningBit != 0 }

    private func waitUntilNotRunning() {
        guard core.runner.load(ordering: .acquiring) != Shim.currentThreadID else { return }
        while core.state.load(ordering: .sequentiallyConsistent) & TaskletCore.runningBit != 0 { Shim.yield() }
    }
}

/// What the per-CPU lists link and the CPUs run: a tasklet's state word, body and intrusive link. It is kept
/// apart from the public ``Tasklet`` handle so that a schedule and a run cost no reference count.
///
/// Lifetime: a core is created with two references, the handle's (its `core` field) and one that stands for
/// the lists (taken once, at creation: "the lists' reference"). The lists and the CPUs hold it by a plain pointer
/// (its `link`) and never retain or release it per schedule or run. The lists' reference is released exactly
/// once, by whoever performs the read-modify-write on `state` that leaves it ORPHANED with neither SCHED nor RUN:
///
/// - the handle's deinit sets ORPHANED; when neither SCHED nor RUN was set, it releases at once;
/// - otherwise the CPU side does, with the RMW that ends the last of them: clearing RUN after a run
///   (`TaskletEngine.runOne`), or clearing SCHED when a queued run is removed (killed while queued, dropped at
///   shutdown: ``unschedule()``).
///
/// Why it is memory-safe: while a core is linked in a list, SCHED is set (it is set before the link is made and
/// cleared only when a CPU takes the run out of the list or removes it), and while a body runs, RUN is set; with
/// either bit set, nobody releases the lists' reference. Once ORPHANED is set the handle is gone, so nothing can
/// set SCHED again (only ``Tasklet/schedule(on:)`` sets it on a user's tasklet; a drain marker is born ORPHANED
/// and SCHED), and the transition to "ORPHANED, neither SCHED nor RUN" happens once. Every party touches the core
/// only before its own RMW that clears SCHED or RUN: a CPU reads the next link of a run before running it, and a
/// takeover or a re-queue only moves runs whose SCHED is still set. The releasing RMW acquires (partner of every
/// other party's releasing RMW on `state`), so the deinit of the body sees every earlier access finished.
final class TaskletCore: @unchecked Sendable {
    // @unchecked: `state`, `disableCount`, `queuedOn` and `runner` are atomics; `next` is written only by the one
    // thread that holds the run (SCHED set, not in any list yet; or the list's consumer), and published by a list's
    // release CAS (read after the consumer's acquire exchange) or, on a CPU's own list, by program order; `body`
    // and `priority` are immutable.
    static let scheduledBit: UInt8 = 1
    static let runningBit: UInt8 = 2
    static let killedBit: UInt8 = 4
    /// The handle is gone (or never existed: a drain marker).
    static let orphanedBit: UInt8 = 8

    let body: @Sendable () -> Void
    /// Intrusive link of the per-CPU lists (the `link` of the next core, 0 at the end).
    @exclusivity(unchecked) nonisolated(unsafe) var next: UInt = 0
    let disableCount = Atomic<Int>(0)
    /// The CPU whose list holds it (while scheduled).
    let queuedOn = Atomic<Int>(-1)
    /// Kernel tid of the thread running it (0 when not running), to refuse a kill from inside itself.
    let runner = Atomic<Int32>(0)
    let state: Atomic<UInt8>
    let priority: Tasklet.Priority

    /// A core with the lists' reference taken (see "Lifetime"); `state` is its initial state word.
    init(priority: Tasklet.Priority, state: UInt8, _ body: @escaping @Sendable () -> Void) {
        self.priority = priority
        self.state = Atomic(state)
        self.body = body
        _ = Unmanaged.passRetained(self)   // the lists' reference, released once (see "Lifetime")
    }

    /// The value the lists store: the core's address (never 0, never `TaskletEngine.closed`).
    @inline(__always)
    var link: UInt { UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque()) }

    /// The core a list entry names, unretained: valid while its SCHED or RUN bit holds it (see "Lifetime").
    @inline(__always)
    static func at(_ link: UInt) -> Unmanaged<TaskletCore> {
        Unmanaged<TaskletCore>.fromOpaque(UnsafeRawPointer(bitPattern: link)!)
    }

    /// True when the RMW on `state` that returned `old` and cleared `cleared` (SCHED or RUN) left the core
    /// ORPHANED with neither SCHED nor RUN: its caller then releases the lists' reference, and touches the core no
    /// more. Exactly one RMW can do so (see "Lifetime").
    @inline(__always)
    static func endsLastHold(old: UInt8, cleared: UInt8) -> Bool {
        let holds = TaskletCore.scheduledBit | TaskletCore.runningBit
        return old & TaskletCore.orphanedBit != 0 && old & holds != 0 && old & holds & ~cleared == 0
    }

    /// Clears SCHED without a run (removed while queued, dropped at shutdown); true when the caller must release
    /// the lists' reference (it was the last hold of an orphan).
    @inline(__always)
    func unscheduleEndsLastHold() -> Bool {
        // Acquire and release: partner of every other party's RMW on `state` when this ends the last hold (see
        // "Lifetime"); release: partner of the next schedule's acquire.
        let old = state.bitwiseAnd(~TaskletCore.scheduledBit, ordering: .acquiringAndReleasing).oldValue
        return TaskletCore.endsLastHold(old: old, cleared: TaskletCore.scheduledBit)
    }

    /// ``unscheduleEndsLastHold()`` for a caller that holds a reference of its own (a handle, a drain): releases
    /// the lists' reference itself when needed.
    func unschedule() {
        if unscheduleEndsLastHold() { Unmanaged.passUnretained(self).release() }
    }

    /// The handle is gone: releases the lists' reference now when no run is queued or in progress, otherwise
    /// leaves it to the CPU side that ends the last one.
    func orphan() {
        // Acquire and release: the releasing side's partner (see "Lifetime").
        let old = state.bitwiseOr(TaskletCore.orphanedBit, ordering: .acquiringAndReleasing).oldValue
        if old & (TaskletCore.scheduledBit | TaskletCore.runningBit) == 0 {
            Unmanaged.passUnretained(self).release()
        }
    }
}
