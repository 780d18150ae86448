import Synchronization

/// One CPU's tasklet lists: two lock-free multi-producer stacks (Treiber; push is one CAS, no allocation), taken
/// whole by their CPU and reversed into schedule order; plus the runs its CPU deferred because the tasklet was
/// disabled (touched only by that CPU, or by the takeover once the CPU is dead).
final class TaskletQueue: @unchecked Sendable {
    // @unchecked: the stacks are atomics; `deferred*` are touched only by the owning CPU's thread, or by the
    // takeover on the control thread after that CPU is dead (the hotplug walk orders the two).
    let high = Atomic<UInt>(TaskletEngine.closed)
    let normal = Atomic<UInt>(TaskletEngine.closed)
    /// Runs pushed and not yet taken (an estimate, for "the CPU with the fewest queued tasklets"; deferred runs
    /// are not counted).
    let pending = Atomic<Int>(0)
    /// True while the CPU is online for tasklets (set and cleared by the built-in STARTING state).
    let active = Atomic<Bool>(false)
    nonisolated(unsafe) var deferredHigh: [UInt] = []
    nonisolated(unsafe) var deferredNormal: [UInt] = []
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

    /// Pushes a scheduled tasklet (holding the queue's reference `link`) on `preferred`, or on the least loaded
    /// online CPU when `preferred` is nil, not online, or closes under us.
    func enqueue(_ tasklet: Tasklet, link: UInt, preferred: Int?) throws(HotplugError) {
        var target = preferred.flatMap { queues[$0].active.load(ordering: .relaxed) ? $0 : nil }
        for _ in 0..<(queues.count * 4 + 4) {
            guard let cpu = target ?? leastLoaded() else { break }
            if push(tasklet, link: link, on: cpu) { return }
            target = nil   // closed under us: redirect
        }
        // No CPU takes tasklets any more (the machine shut down): undo the schedule.
        tasklet.state.bitwiseAnd(~Tasklet.scheduledBit, ordering: .releasing)
        Unmanaged<Tasklet>.fromOpaque(UnsafeRawPointer(bitPattern: link)!).release()
        throw .shutDown
    }

    /// One CAS onto the CPU's stack; kicks the CPU when the stack was empty. False when the stack is closed.
    @inline(__always)
    func push(_ tasklet: Tasklet, link: UInt, on cpu: Int) -> Bool {
        let queue = queues[cpu]
        tasklet.queuedOn.store(cpu, ordering: .releasing)
        var head = tasklet.priority == .high ? queue.high.load(ordering: .relaxed) : queue.normal.load(ordering: .relaxed)
        while true {
            if head == TaskletEngine.closed { return false }
            tasklet.next = head   // published by the release CAS below
            // Release: partner of the consumer's acquiring exchange in `takeInOrder`.
            let (exchanged, seen) = tasklet.priority == .high
                ? queue.high.compareExchange(expected: head, desired: link, successOrdering: .releasing, failureOrdering: .relaxed)
                : queue.normal.compareExchange(expected: head, desired: link, successOrdering: .releasing, failureOrdering: .relaxed)
            if exchanged {
                queue.pending.add(1, ordering: .relaxed)
                if seen == 0 { cores[cpu].control.postAndWakeIfIdle(.tasklet) }   // it was empty: tell the CPU
                return true
            }
            head = seen
        }
    }

    /// Queues a drain marker on `cpu` itself, never elsewhere (it must run behind what that CPU's lists hold).
    /// False when that CPU's lists are closed (offline: what they held was moved to a survivor by its takeover).
    func pushMarker(_ marker: Tasklet, on cpu: Int) -> Bool {
        marker.state.bitwiseOr(Tasklet.scheduledBit, ordering: .acquiringAndReleasing)
        let link = UInt(bitPattern: Unmanaged.passRetained(marker).toOpaque())   // the queue's reference
        if push(marker, link: link, on: cpu) { return true }
        marker.state.bitwiseAnd(~Tasklet.scheduledBit, ordering: .releasing)
        Unmanaged<Tasklet>.fromOpaque(UnsafeRawPointer(bitPattern: link)!).release()
        return false
    }

    /// Makes a CPU look at its tasklets again (after an enable or a kill).
    func kick(_ cpu: Int) {
        guard (0..<cores.count).contains(cpu) else { return }
        cores[cpu].control.postAndWakeIfIdle(.tasklet)
    }

    private func leastLoaded() -> Int? {
        Hotplug.leastLoaded(queues.count, eligible: { queues[$0].active.load(ordering: .relaxed) },
                            load: { queues[$0].pending.load(ordering: .relaxed) })
    }

    // MARK: The CPU side

    @inline(__always)
    static func tasklet(_ link: UInt) -> Tasklet {
        Unmanaged<Tasklet>.fromOpaque(UnsafeRawPointer(bitPattern: link)!).takeUnretainedValue()
    }

    /// Takes a whole stack and reverses it in place through the intrusive links: returns the first link in
    /// schedule order (oldest first), 0 when empty. No allocation.
    private func takeInOrder(_ stack: borrowing Atomic<UInt>, closing: Bool = false) -> UInt {
        // Acquire: partner of the producers' release CAS (their `next` links are visible).
        var head = stack.exchange(closing ? TaskletEngine.closed : 0, ordering: .acquiring)
        if head == TaskletEngine.closed { return 0 }
        var ordered: UInt = 0
        while head != 0 {
            let tasklet = TaskletEngine.tasklet(head)
            let next = tasklet.next
            tasklet.next = ordered
            ordered = head
            head = next
        }
        return ordered
    }

    private func links(from first: UInt) -> [UInt] {
        var links: [UInt] = []
        var link = first
        while link != 0 { links.append(link); link = TaskletEngine.tasklet(link).next }
        return links
    }

    /// Runs the CPU's tasklets: high before normal; deferred (disabled) runs before new ones. Called by the CPU's
    /// own thread at a safe point. Allocates nothing unless a tasklet was deferred.
    func run(cpu: Int) {
        let queue = queues[cpu]
        guard queue.active.load(ordering: .acquiring) else { return }   // going or gone offline: the takeover has them
        runDeferred(.high, cpu: cpu, queue: queue)
        runChain(takeInOrder(queue.high), cpu: cpu, queue: queue)
        runDeferred(.normal, cpu: cpu, queue: queue)
        runChain(takeInOrder(queue.normal), cpu: cpu, queue: queue)
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

    private func runChain(_ first: UInt, cpu: Int, queue: TaskletQueue) {
        var link = first
        var taken = 0
        while link != 0 {
            let next = TaskletEngine.tasklet(link).next   // read before the run: it may be queued again
            runOne(link, cpu: cpu, queue: queue)
            link = next
            taken += 1
        }
        if taken > 0 { queue.pending.subtract(taken, ordering: .relaxed) }   // once per batch
    }

    /// Runs (or defers, re-queues, drops) one taken tasklet. The common case costs two atomic read-modify-writes
    /// on its state (SCHED -> RUN in one CAS, RUN cleared after the body) and the release of the queue's reference.
    private func runOne(_ link: UInt, cpu: Int, queue: TaskletQueue) {
        let unmanaged = Unmanaged<Tasklet>.fromOpaque(UnsafeRawPointer(bitPattern: link)!)
        let tasklet = unmanaged.takeUnretainedValue()
        // Acquire: partner of the release that cleared RUN after the previous run, wherever it ran.
        var old = tasklet.state.load(ordering: .acquiring)
        while true {
            if old & Tasklet.runningBit != 0 {
                // Running on another CPU right now: it must not run concurrently with itself; queue it again.
                if !push(tasklet, link: link, on: cpu) { queue.append(deferred: link, tasklet.priority) }
                // Release, after the push: partner of the drain's acquiring loads. A drain whose first load saw
                // this count finds the run ahead of its markers; one whose markers this run passed sees the count
                // change once they have run (this CPU ran the markers after this line).
                requeues.add(1, ordering: .releasing)
                return
            }
            if old & Tasklet.killedBit != 0 {
                // Killed while queued: removed, never run.
                tasklet.state.bitwiseAnd(~Tasklet.scheduledBit, ordering: .releasing)
                unmanaged.release()
                return
            }
            if tasklet.disableCount.load(ordering: .acquiring) > 0 {
                queue.append(deferred: link, tasklet.priority)   // stays queued until enabled
                return
            }
            // SCHED cleared and RUN set together: a schedule from now on queues it again (it runs at least once
            // more), and nobody else runs it meanwhile.
            let (exchanged, seen) = tasklet.state.compareExchange(
                expected: old, desired: (old & ~Tasklet.scheduledBit) | Tasklet.runningBit,
                successOrdering: .acquiringAndReleasing, failureOrdering: .acquiring)
            if exchanged { break }
            old = seen
        }
        tasklet.runner.store(cores[cpu].control.threadID, ordering: .relaxed)   // for kill(); no system call
        tasklet.body()
        tasklet.runner.store(0, ordering: .relaxed)
        // Release: partner of the acquire of the next run, and of kill()/disable() waiting for RUN to clear.
        tasklet.state.bitwiseAnd(~Tasklet.runningBit, ordering: .releasing)
        unmanaged.release()   // the queue's reference
    }

    // MARK: Hotplug

    /// STARTING startup (on the CPU, everyone else stopped): it takes tasklets from now on.
    func cpuStarting(_ cpu: Int) {
        let queue = queues[cpu]
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
    /// there, in order, to the tail of a surviving CPU's lists, then wakes that CPU.
    func takeOver(from dead: Int) {
        let queue = queues[dead]
        let high = queue.deferredHigh + links(from: takeInOrder(queue.high, closing: true))
        let normal = queue.deferredNormal + links(from: takeInOrder(queue.normal, closing: true))
        queue.deferredHigh.removeAll()
        queue.deferredNormal.removeAll()
        queue.pending.store(0, ordering: .relaxed)
        guard !high.isEmpty || !normal.isEmpty else { return }
        var candidates = queues.indices.filter { $0 != dead && queues[$0].active.load(ordering: .acquiring) }
        guard !candidates.isEmpty else {
            // Only at shutdown (the last online CPU cannot be detached otherwise): nowhere left to run them.
            for link in high + normal {
                let tasklet = TaskletEngine.tasklet(link)
                tasklet.state.bitwiseAnd(~Tasklet.scheduledBit, ordering: .releasing)
                Unmanaged<Tasklet>.fromOpaque(UnsafeRawPointer(bitPattern: link)!).release()
            }
            droppedAtShutdown.add(high.count + normal.count, ordering: .relaxed)
            return
        }
        for link in high + normal {
            let tasklet = TaskletEngine.tasklet(link)
            while let survivor = candidates.first {
                if push(tasklet, link: link, on: survivor) { break }
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
