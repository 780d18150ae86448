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
/// A queued tasklet is retained by its queue until it runs (or is removed), so dropping the last reference to a
/// scheduled tasklet is safe.
public final class Tasklet: @unchecked Sendable {
    // @unchecked: `state`, `disableCount`, `queuedOn` and `runner` are atomics; `next` is written only by the
    // one thread that holds the SCHED bit while the tasklet is not in any list, and published by the list's
    // release CAS (read after the consumer's acquire exchange); `body` is immutable.
    public enum Priority: Sendable {
        case high, normal
    }

    static let scheduledBit: UInt8 = 1
    static let runningBit: UInt8 = 2
    static let killedBit: UInt8 = 4

    public let priority: Priority
    let body: @Sendable () -> Void
    let engine: TaskletEngine
    let state = Atomic<UInt8>(0)
    let disableCount = Atomic<Int>(0)
    /// The CPU whose list holds it (while scheduled).
    let queuedOn = Atomic<Int>(-1)
    /// Kernel tid of the thread running it (0 when not running), to refuse a kill from inside itself.
    let runner = Atomic<Int32>(0)
    /// Intrusive link of the per-CPU lists (an unmanaged pointer to the next tasklet, 0 at the end).
    nonisolated(unsafe) var next: UInt = 0

    /// - Parameters:
    ///   - machine: whose CPUs run it.
    ///   - priority: `.high` runs before `.normal` on the same CPU.
    ///   - body: the work; it runs on a logical CPU's thread at a safe point.
    public init(_ machine: Machine, priority: Priority = .normal, _ body: @escaping @Sendable () -> Void) {
        self.priority = priority
        self.body = body
        self.engine = machine.tasklets
    }

    /// A tasklet of the engine itself (a drain marker).
    init(engine: TaskletEngine, priority: Priority, _ body: @escaping @Sendable () -> Void) {
        self.priority = priority
        self.body = body
        self.engine = engine
    }

    /// Queues the tasklet on a logical CPU (Linux's `tasklet_schedule`). No lock and no allocation on this path.
    /// - Parameter cpu: the target; nil: the calling CPU when called on one of the machine's CPUs, otherwise the
    ///   online CPU with the fewest queued tasklets. A CPU that is not online is never used: the tasklet is
    ///   redirected to the online CPU with the fewest queued tasklets.
    /// - Returns: false when it was already scheduled (this schedule coalesced with that one) or is being killed.
    /// - Throws: ``HotplugError/invalidCPU(_:)`` for an id outside `0..<possible`; ``HotplugError/shutDown``
    ///   when no CPU is online any more.
    @discardableResult
    public func schedule(on cpu: Int? = nil) throws(HotplugError) -> Bool {
        if let cpu, !(0..<engine.queues.count).contains(cpu) { throw .invalidCPU(cpu) }
        // Acquire: partner of the release that cleared SCHED before the last run (its effects are visible).
        let old = state.bitwiseOr(Tasklet.scheduledBit, ordering: .acquiringAndReleasing).oldValue
        if old & (Tasklet.scheduledBit | Tasklet.killedBit) != 0 {
            if old & Tasklet.scheduledBit == 0 { state.bitwiseAnd(~Tasklet.scheduledBit, ordering: .releasing) }
            return false
        }
        let retained = UInt(bitPattern: Unmanaged.passRetained(self).toOpaque())   // the queue's reference
        try engine.enqueue(self, link: retained, preferred: cpu ?? engine.currentCPU())
        return true
    }

    /// Disables the tasklet (nesting, Linux's `tasklet_disable`): a queued run stays queued until the matching
    /// ``enable()``. Waits for a run in progress to finish, unless called from inside the tasklet itself.
    public func disable() {
        disableCount.add(1, ordering: .acquiringAndReleasing)
        waitUntilNotRunning()
    }

    /// Undoes one ``disable()``; a run that waited is then taken by its CPU.
    /// - Warning: traps when the tasklet is not disabled (an unbalanced call is a programmer error).
    public func enable() {
        let count = disableCount.subtract(1, ordering: .acquiringAndReleasing).newValue
        precondition(count >= 0, "Tasklet.enable() without a matching disable()")
        if count == 0, state.load(ordering: .acquiring) & Tasklet.scheduledBit != 0 { engine.kick(queuedOn.load(ordering: .acquiring)) }
    }

    /// Removes a queued run (it will not run) and waits for a run in progress to finish (Linux's
    /// `tasklet_kill`). Schedules made while it is being killed are ignored; afterwards it may be scheduled again.
    /// - Throws: ``HotplugError/taskletKillsItself`` when called from inside the tasklet (it would wait for
    ///   itself forever, which Linux reports as a bug).
    public func kill() throws(HotplugError) {
        if runner.load(ordering: .acquiring) == Shim.currentThreadID { throw .taskletKillsItself }
        state.bitwiseOr(Tasklet.killedBit, ordering: .acquiringAndReleasing)
        // A queued run is dropped by its CPU when it meets the killed bit; make sure that CPU looks.
        while state.load(ordering: .acquiring) & (Tasklet.scheduledBit | Tasklet.runningBit) != 0 {
            engine.kick(queuedOn.load(ordering: .acquiring))
            Shim.sleep(microseconds: 50)
        }
        state.bitwiseAnd(~Tasklet.killedBit, ordering: .releasing)
    }

    /// True while queued (not yet started).
    public var isScheduled: Bool { state.load(ordering: .acquiring) & Tasklet.scheduledBit != 0 }
    /// True while its body runs.
    public var isRunning: Bool { state.load(ordering: .acquiring) & Tasklet.runningBit != 0 }

    private func waitUntilNotRunning() {
        guard runner.load(ordering: .acquiring) != Shim.currentThreadID else { return }
        while state.load(ordering: .acquiring) & Tasklet.runningBit != 0 { Shim.yield() }
    }
}
