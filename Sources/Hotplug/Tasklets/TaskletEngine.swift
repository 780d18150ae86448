import Synchronization

/// One CPU's tasklet lists. Two kinds, each split into high and normal priority:
///
/// - the shared lists: lock-free multi-producer stacks (Treiber; a push is one CAS, no allocation) for schedules
///   made anywhere but on the CPU itself, taken whole by the CPU and reversed into schedule order;
/// - the CPU's own lists: FIFO lists through the same intrusive links, for schedules the CPU makes on itself
///   (Linux's per-CPU tasklet lists), appended with plain stores: only the CPU's own thread touches them.
///
/// Plus the runs its CPU deferred because the tasklet was disabled. The own lists, the deferred runs and
/// `threadID` are touched only by the owning CPU's thread, or by the takeover on the control thread once that
/// CPU is dead (the hotplug walk orders the two: the CPU parks, and acknowledges, before the takeover runs).
final class TaskletQueue: @unchecked Sendable {
    // @unchecked: the shared stacks and the counters are atomics; the rest is confined as said above.
    let high = Atomic<UInt>(TaskletEngine.closed)
    let normal = Atomic<UInt>(TaskletEngine.closed)
    /// Runs pushed on the shared lists and not yet taken (an estimate, for "the CPU with the fewest queued
    /// tasklets"; deferred runs are not counted).
    let pending = Atomic<Int>(0)
    /// Runs on the own lists, not yet taken: stored by the CPU (no read-modify-write), read by anyone.
    let ownPending = Atomic<Int>(0)
    /// True while the CPU is online for tasklets (set and cleared by the built-in STARTING state, which runs on
    /// the CPU's own thread: that thread reads it exactly).
    let active = Atomic<Bool>(false)
    @exclusivity(unchecked) nonisolated(unsafe) var ownHighHead: UInt = 0
    @exclusivity(unchecked) nonisolated(unsafe) var ownHighTail: UInt = 0
    @exclusivity(unchecked) nonisolated(unsafe) var ownNormalHead: UInt = 0
    @exclusivity(unchecked) nonisolated(unsafe) var ownNormalTail: UInt = 0
    /// Runs on the own lists (the value `ownPending` publishes).
    @exclusivity(unchecked) nonisolated(unsafe) var ownCount = 0
    /// The kernel tid of the CPU's thread (set by `tasklets:starting` on that thread), recorded as a run's runner.
    @exclusivity(unchecked) nonisolated(unsafe) var threadID: Int32 = 0
    nonisolated(unsafe) var deferredHigh: [UInt] = []
    nonisolated(unsafe) var deferredNormal: [UInt] = []

    /// Runs queued and not yet taken, own and shared lists together (an estimate).
    var queued: Int { max(0, pending.load(ordering: .relaxed)) + ownPending.load(ordering: .relaxed) }
}

extension HotplugState {
    /// Built-in: the CPU takes tasklets (startup) / stops taking them (teardown), while everyone else is stopped.
    static let taskletsStarting = HotplugState(rawValue: 41)
    /// Built-in: the tasklet takeover (teardown after the CPU is dead). Above the slab drain's slot, so it runs
    /// first on detach.
    static let taskletsDead = HotplugState(rawValue: 30)
}

/// The tasklet subsystem of a machine: per-CPU lists, the CPU side that runs them, the takeover on detach.
/// It keeps the CPU cores, not the machine, so CPU threads keep no machine alive.
final class TaskletEngine: HotplugSubsystem {
    /// The head value of a dead CPU's stacks: producers seeing it go elsewhere.
    static let closed: UInt = 1

    let queues: [TaskletQueue]
    /// `queues.count`: the possible CPUs (one load where the schedule checks its argument).
    let possible: Int
    /// The same queues, unretained, for the schedule path: reading an element of `queues` there costs a retain
    /// and a release (the compiler cannot prove the array keeps it alive across the calls that follow). `queues`
    /// keeps them alive for the engine's lifetime.
    private let unretainedQueues: [Unmanaged<TaskletQueue>]
    let cores: [CPUCore]
    let machineID: UInt64
    /// Runs still pending when the last CPU went down at shutdown (reported by the machine's log).
    let droppedAtShutdown = Atomic<Int>(0)
    /// Runs a CPU took while their tasklet ran elsewhere and queued again, behind what was queued meanwhile: a
    /// drain that sees it change looks again (`Machine.drainTasklets`). Touched only on that rare path.
    let requeues = Atomic<Int>(0)

    /// Creates the lists (closed until each CPU's `tasklets:starting`) and sets each core's tasklet hook.
    init(_ context: HotplugSubsystemContext) {
        cores = context.cores
        machineID = context.machineID
        queues = cores.map { _ in TaskletQueue() }
        unretainedQueues = queues.map { Unmanaged.passUnretained($0) }
        possible = queues.count
        for core in cores {
            // Weak: the engine keeps the cores; a CPU thread keeps no engine (nor machine) alive.
            core.taskletHook = { [weak self] cpu in self?.run(cpu: cpu) }
        }
    }

    /// `tasklets:starting` (STARTING) and `tasklets:dead` (PREPARE, teardown only).
    var hotplugStates: [HotplugBuiltinState] {
        [HotplugBuiltinState(state: .taskletsStarting, name: "tasklets:starting",
                             startup: { [weak self] cpu in self?.cpuStarting(cpu) },
                             teardown: { [weak self] cpu in self?.cpuDying(cpu) }),
         HotplugBuiltinState(state: .taskletsDead, name: "tasklets:dead",
                             startup: nil,
                             teardown: { [weak self] cpu in self?.takeOver(from: cpu) })]
    }

    /// The logical CPU of this machine the caller runs on.
    func currentCPU() -> Int? {
        CPUCore.currentID(machineID: machineID)
    }

    // MARK: Producers

    /// Queues a run whose SCHED bit the caller just set: on the calling CPU's own list when the caller is the
    /// target (or names none) and that CPU takes tasklets; otherwise on `preferred`'s shared list, or on the least
    /// loaded online CPU's when `preferred` is nil, not online, or closes under us.
    @inline(__always)
    func enqueue(_ core: TaskletCore, preferred: Int?) throws(HotplugError) {
        if let here = currentCPU(), preferred == nil || preferred == here {
            let appended = unretainedQueues[here]._withUnsafeGuaranteedRef { queue in
                // Relaxed: `active` is written only on this very thread (the `tasklets:starting` callbacks run
                // here).
                guard queue.active.load(ordering: .relaxed) else { return false }
                appendOwn(core, on: here, queue: queue)
                return true
            }
            if !appended { try enqueueShared(core, preferred: nil) }   // this CPU is going offline: elsewhere
            return
        }
        try enqueueShared(core, preferred: preferred)
    }

    /// Appends to the calling CPU's own list: plain stores, no read-modify-write but the mailbox post when the list
    /// was empty (a later append finds the post of the first one still pending, or the run it led to still
    /// ahead: a take empties the list). Only the CPU's own thread calls this, while it takes tasklets.
    @inline(__always)
    private func appendOwn(_ core: TaskletCore, on cpu: Int, queue: TaskletQueue) {
        // Release: partner of kill()'s and enable()'s acquiring loads (they kick this CPU).
        core.queuedOn.store(cpu, ordering: .releasing)
        core.next = 0
        let link = core.link
        let wasEmpty: Bool
        if core.priority == .high {
            wasEmpty = queue.ownHighTail == 0
            if wasEmpty {
                queue.ownHighHead = link
            } else {
                TaskletCore.at(queue.ownHighTail)._withUnsafeGuaranteedRef { $0.next = link }   // SCHED holds it
            }
            queue.ownHighTail = link
        } else {
            wasEmpty = queue.ownNormalTail == 0
            if wasEmpty {
                queue.ownNormalHead = link
            } else {
                TaskletCore.at(queue.ownNormalTail)._withUnsafeGuaranteedRef { $0.next = link }   // SCHED holds it
            }
            queue.ownNormalTail = link
        }
        queue.ownCount += 1
        queue.ownPending.store(queue.ownCount, ordering: .relaxed)   // a load estimate: no order needed
        if wasEmpty { cores[cpu].control.postAndWakeIfIdle(.tasklet) }   // to itself: no wake-up, one RMW
    }

    /// Takes the whole own list of one priority, in schedule order (0 when empty).
    @inline(__always)
    private func takeOwn(_ priority: Tasklet.Priority, _ queue: TaskletQueue) -> UInt {
        if priority == .high {
            let first = queue.ownHighHead
            queue.ownHighHead = 0
            queue.ownHighTail = 0
            return first
        }
        let first = queue.ownNormalHead
        queue.ownNormalHead = 0
        queue.ownNormalTail = 0
        return first
    }

    /// Pushes onto `preferred`'s shared list, or the least loaded online CPU's (see ``enqueue(_:preferred:)``);
    /// undoes the schedule and throws when no CPU takes tasklets any more.
    func enqueueShared(_ core: TaskletCore, preferred: Int?) throws(HotplugError) {
        var target = preferred.flatMap { queues[$0].active.load(ordering: .relaxed) ? $0 : nil }
        for _ in 0..<(queues.count * 4 + 4) {
            guard let cpu = target ?? leastLoaded() else { break }
            if push(core, on: cpu) { return }
            target = nil   // closed under us: redirect
        }
        // No CPU takes tasklets any more (the machine shut down): undo the schedule. The caller holds the handle,
        // so this never releases the core.
        core.unschedule()
        throw .shutDown
    }

    /// One CAS onto the CPU's shared list; kicks the CPU when the list was empty. False when the list is closed.
    @inline(__always)
    func push(_ core: TaskletCore, on cpu: Int) -> Bool {
        let queue = queues[cpu]
        // Release: partner of kill()'s and enable()'s acquiring loads (they kick this CPU).
        core.queuedOn.store(cpu, ordering: .releasing)
        let pushed = core.priority == .high ? push(core, onto: queue.high) : push(core, onto: queue.normal)
        guard let wasEmpty = pushed else { return false }
        queue.pending.add(1, ordering: .relaxed)   // a load estimate: no order needed
        if wasEmpty { cores[cpu].control.postAndWakeIfIdle(.tasklet) }   // it was empty: tell the CPU
        return true
    }

    /// The CAS loop of ``push(_:on:)``: nil when the stack is closed, else whether it was empty.
    @inline(__always)
    private func push(_ core: TaskletCore, onto stack: borrowing Atomic<UInt>) -> Bool? {
        let link = core.link
        var head = stack.load(ordering: .relaxed)
        while true {
            if head == TaskletEngine.closed { return nil }
            core.next = head   // published by the release CAS below
            // Release: partner of the consumer's acquiring exchange in `takeInOrder`.
            let (exchanged, seen) = stack.compareExchange(expected: head, desired: link,
                                                          successOrdering: .releasing, failureOrdering: .relaxed)
            if exchanged { return seen == 0 }
            head = seen
        }
    }

    /// Queues a drain marker (born SCHED and ORPHANED) on `cpu`'s shared list, never elsewhere (it must run behind
    /// what that CPU's lists hold). False when that CPU's lists are closed (offline: what they held was moved to a
    /// survivor by its takeover); the marker is then released.
    func pushMarker(_ marker: TaskletCore, on cpu: Int) -> Bool {
        if push(marker, on: cpu) { return true }
        marker.unschedule()   // the last hold of an orphan: releases it
        return false
    }

    /// Makes a CPU look at its tasklets again (after an enable or a kill).
    func kick(_ cpu: Int) {
        guard (0..<cores.count).contains(cpu) else { return }
        cores[cpu].control.postAndWakeIfIdle(.tasklet)
    }

    private func leastLoaded() -> Int? {
        Hotplug.leastLoaded(queues.count, eligible: { queues[$0].active.load(ordering: .relaxed) },
                            load: { queues[$0].queued })
    }

    // MARK: The CPU side

    /// Takes a whole shared stack and reverses it in place through the intrusive links: returns the first link
    /// in schedule order (oldest first), 0 when empty. No allocation.
    private func takeInOrder(_ stack: borrowing Atomic<UInt>, closing: Bool = false) -> UInt {
        // An empty stack is left alone (no write on a line producers CAS): a push after this load is taken by
        // the CPU's next look, which its post asks for.
        if !closing && stack.load(ordering: .relaxed) == 0 { return 0 }
        // Acquire: partner of the producers' release CAS (their `next` links are visible).
        var head = stack.exchange(closing ? TaskletEngine.closed : 0, ordering: .acquiring)
        if head == TaskletEngine.closed { return 0 }
        var ordered: UInt = 0
        while head != 0 {
            let core = TaskletCore.at(head)
            let next = core._withUnsafeGuaranteedRef { $0.next }
            core._withUnsafeGuaranteedRef { $0.next = ordered }
            ordered = head
            head = next
        }
        return ordered
    }

    private func links(from first: UInt) -> [UInt] {
        var links: [UInt] = []
        var link = first
        while link != 0 {
            links.append(link)
            link = TaskletCore.at(link)._withUnsafeGuaranteedRef { $0.next }
        }
        return links
    }

    /// Runs the CPU's tasklets: high before normal; deferred (disabled) runs before new ones. Called by the CPU's
    /// own thread at a safe point. Allocates nothing unless a tasklet was deferred.
    func run(cpu: Int) {
        let queue = queues[cpu]
        guard queue.active.load(ordering: .acquiring) else { return }   // going or gone offline: the takeover has them
        runDeferred(.high, cpu: cpu, queue: queue)
        runQueued(.high, cpu: cpu, queue: queue)
        runDeferred(.normal, cpu: cpu, queue: queue)
        runQueued(.normal, cpu: cpu, queue: queue)
    }

    /// Runs what one priority's lists hold: the shared list is taken first, then the own list, and the own list
    /// runs first. So a run this CPU queued on itself before a drain's marker reached the shared list is in the
    /// own list when that marker is taken, and runs ahead of it (`Machine.drainTasklets`); runs queued on the own
    /// list while these run wait for the next look (its post is pending), so a tasklet that schedules itself
    /// from its body leaves the CPU a safe point between its runs.
    @inline(__always)
    private func runQueued(_ priority: Tasklet.Priority, cpu: Int, queue: TaskletQueue) {
        let shared = priority == .high ? takeInOrder(queue.high) : takeInOrder(queue.normal)
        let own = takeOwn(priority, queue)
        if own != 0 {
            let taken = runChain(own, cpu: cpu, queue: queue)
            queue.ownCount -= taken
            queue.ownPending.store(queue.ownCount, ordering: .relaxed)   // a load estimate: no order needed
        }
        if shared != 0 {
            let taken = runChain(shared, cpu: cpu, queue: queue)
            queue.pending.subtract(taken, ordering: .relaxed)   // once per batch
        }
    }

    /// Retries the runs deferred because their tasklet was disabled (a run may defer itself again meanwhile, so
    /// the list is taken out first).
    private func runDeferred(_ priority: Tasklet.Priority, cpu: Int, queue: TaskletQueue) {
        let retry: [UInt]
        if priority == .high {
            guard !queue.deferredHigh.isEmpty else { return }
            retry = queue.deferredHigh
            queue.deferredHigh = []
        } else {
            guard !queue.deferredNormal.isEmpty else { return }
            retry = queue.deferredNormal
            queue.deferredNormal = []
        }
        for link in retry { runOne(link, cpu: cpu, queue: queue) }
    }

    /// Runs a taken chain; returns how many runs it held.
    @inline(__always)
    private func runChain(_ first: UInt, cpu: Int, queue: TaskletQueue) -> Int {
        var link = first
        var taken = 0
        while link != 0 {
            // Read before the run: once its SCHED is cleared it may be queued again (or released).
            let next = TaskletCore.at(link)._withUnsafeGuaranteedRef { $0.next }
            runOne(link, cpu: cpu, queue: queue)
            link = next
            taken += 1
        }
        return taken
    }

    /// Runs (or defers, re-queues, drops) one taken run. The common case costs two atomic read-modify-writes on
    /// the state (SCHED -> RUN in one CAS, RUN cleared after the body) and no reference count: the run's SCHED,
    /// then RUN, bit keeps the core alive (see `TaskletCore`, "Lifetime").
    @inline(__always)
    private func runOne(_ link: UInt, cpu: Int, queue: TaskletQueue) {
        let unmanaged = TaskletCore.at(link)
        // The state word the RMW that ended the run (or removed it) returned, and which bit it cleared: decides
        // below, once the core is no longer borrowed, whether this released the last hold of an orphan.
        let (old, cleared) = unmanaged._withUnsafeGuaranteedRef { core -> (UInt8, UInt8) in
            // The common state of a taken run is SCHED alone: the CAS below expects it without a load first.
            var old = TaskletCore.scheduledBit
            while true {
                if old & TaskletCore.runningBit != 0 {
                    // Running on another CPU right now: it must not run concurrently with itself; queue it again.
                    if !push(core, on: cpu) { queue.append(deferred: link, core.priority) }
                    // Release, after the push: partner of the drain's acquiring loads. A drain whose first load saw
                    // this count finds the run ahead of its markers; one whose markers this run passed sees the
                    // count change once they have run (this CPU ran the markers after this line).
                    requeues.add(1, ordering: .releasing)
                    return (0, 0)
                }
                if old & TaskletCore.killedBit != 0 {
                    // Killed while queued: removed, never run. Acquire and release: see `TaskletCore.unschedule`.
                    return (core.state.bitwiseAnd(~TaskletCore.scheduledBit, ordering: .acquiringAndReleasing).oldValue,
                            TaskletCore.scheduledBit)
                }
                if core.disableCount.load(ordering: .acquiring) > 0 {
                    queue.append(deferred: link, core.priority)   // stays queued until enabled
                    return (0, 0)
                }
                // SCHED cleared and RUN set together: a schedule from now on queues it again (it runs at least
                // once more), and nobody else runs it meanwhile. Acquire (also on failure, where `seen` decides):
                // partner of the release that cleared RUN after the previous run, wherever it ran. Sequentially
                // consistent: the first half of the Dekker pair with disable() below.
                let (exchanged, seen) = core.state.compareExchange(
                    expected: old, desired: (old & ~TaskletCore.scheduledBit) | TaskletCore.runningBit,
                    successOrdering: .sequentiallyConsistent, failureOrdering: .acquiring)
                if exchanged { break }
                old = seen
            }
            // disable() raises the count, then waits for RUN to clear; this set RUN, then reads the count (all four
            // sequentially consistent): either disable sees RUN and waits for this run, or this sees the count and
            // does not run. The check above alone let a run start after a disable() had returned.
            if core.disableCount.load(ordering: .sequentiallyConsistent) > 0 {
                return undoRun(core, link: link, queue: queue)
            }
            core.runner.store(queue.threadID, ordering: .relaxed)   // for kill(); no system call
            core.body()
            core.runner.store(0, ordering: .relaxed)
            // RUN cleared by a CAS that expects RUN alone first (nobody scheduled, killed or dropped it meanwhile).
            // Release: partner of the acquire of the next run, and of kill()/disable() waiting for RUN to clear.
            // Acquire: when this releases the core, partner of the handle's deinit (see `TaskletCore`).
            var running = TaskletCore.runningBit
            while true {
                let (exchanged, seen) = core.state.compareExchange(
                    expected: running, desired: running & ~TaskletCore.runningBit,
                    successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
                if exchanged { return (running, TaskletCore.runningBit) }
                running = seen
            }
        }
        if cleared != 0, TaskletCore.endsLastHold(old: old, cleared: cleared) { unmanaged.release() }
    }

    /// Puts back a run that met a disable() after setting RUN: queued again and deferred, as if the CPU had seen
    /// the count first; unless a schedule made meanwhile (while RUN was set) queued a run of its own, which then
    /// stands for this one. Never the last hold of an orphan (SCHED stays set either way).
    private func undoRun(_ core: TaskletCore, link: UInt, queue: TaskletQueue) -> (UInt8, UInt8) {
        var current = core.state.load(ordering: .relaxed)
        while true {
            let requeued = current & TaskletCore.scheduledBit != 0
            let desired = (current | TaskletCore.scheduledBit) & ~TaskletCore.runningBit
            // Release: partner of disable()'s wait and of the next run's acquire, like the end of a run.
            let (exchanged, seen) = core.state.compareExchange(expected: current, desired: desired,
                                                               successOrdering: .acquiringAndReleasing,
                                                               failureOrdering: .relaxed)
            if exchanged {
                if !requeued { queue.append(deferred: link, core.priority) }   // stays queued until enabled
                return (0, 0)
            }
            current = seen
        }
    }

    // MARK: Hotplug

    /// STARTING startup (on the CPU, everyone else stopped): it takes tasklets from now on.
    func cpuStarting(_ cpu: Int) {
        let queue = queues[cpu]
        queue.threadID = cores[cpu].control.threadID
        _ = queue.high.compareExchange(expected: TaskletEngine.closed, desired: 0, ordering: .acquiringAndReleasing)
        _ = queue.normal.compareExchange(expected: TaskletEngine.closed, desired: 0, ordering: .acquiringAndReleasing)
        queue.active.store(true, ordering: .releasing)
    }

    /// STARTING teardown (on the dying CPU, everyone else stopped): it runs no tasklet any more. Its lists stay
    /// open, so nothing scheduled meanwhile is refused; the takeover collects them once the CPU is dead.
    func cpuDying(_ cpu: Int) {
        queues[cpu].active.store(false, ordering: .releasing)
    }

    /// `tasklets:dead` teardown (control thread, the CPU is dead): closes its lists, and appends what was pending
    /// there, in order (deferred, own list, shared list, as the CPU would have run them), to the tail of a
    /// surviving CPU's shared lists, then wakes that CPU.
    func takeOver(from dead: Int) {
        let queue = queues[dead]
        let high = queue.deferredHigh + links(from: takeOwn(.high, queue))
            + links(from: takeInOrder(queue.high, closing: true))
        let normal = queue.deferredNormal + links(from: takeOwn(.normal, queue))
            + links(from: takeInOrder(queue.normal, closing: true))
        queue.deferredHigh.removeAll()
        queue.deferredNormal.removeAll()
        queue.ownCount = 0
        queue.ownPending.store(0, ordering: .relaxed)
        queue.pending.store(0, ordering: .relaxed)
        guard !high.isEmpty || !normal.isEmpty else { return }
        var candidates = queues.indices.filter { $0 != dead && queues[$0].active.load(ordering: .acquiring) }
        guard !candidates.isEmpty else {
            // Only at shutdown (the last online CPU cannot be detached otherwise): nowhere left to run them.
            for link in high + normal {
                let unmanaged = TaskletCore.at(link)
                if unmanaged._withUnsafeGuaranteedRef({ $0.unscheduleEndsLastHold() }) { unmanaged.release() }
            }
            droppedAtShutdown.add(high.count + normal.count, ordering: .relaxed)
            return
        }
        for link in high + normal {
            let unmanaged = TaskletCore.at(link)
            while let survivor = candidates.first {
                if unmanaged._withUnsafeGuaranteedRef({ push($0, on: survivor) }) { break }
                candidates.removeFirst()   // closed meanwhile (it cannot be: hotplug is serialised)
            }
            precondition(!candidates.isEmpty, "tasklet takeover from CPU \(dead): no surviving CPU takes tasklets")
        }
    }
}

extension TaskletQueue {
    func append(deferred link: UInt, _ priority: Tasklet.Priority) {
        if priority == .high { deferredHigh.append(link) } else { deferredNormal.append(link) }
    }
}
