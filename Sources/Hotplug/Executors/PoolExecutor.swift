import Synchronization

/// A task executor over the machine's online logical CPUs: `Task(executorPreference: machine.pool)` or
/// `withTaskExecutorPreference(machine.pool)` runs a task's nonisolated code on whichever online CPU has room.
///
/// Placement and balance (docs/ARCHITECTURE.md, "Swift executors"):
/// - A job enqueued on one of the machine's online CPUs stays on that CPU (a task that resumes keeps its cache).
///   A job enqueued from anywhere else goes to the online CPU with the fewest queued pool jobs.
/// - A CPU takes its pool jobs in batches of at most 16; the rest wait in a backlog that any CPU
///   may take. A CPU that runs dry takes the backlog of a busy CPU (or, if that is empty, the jobs queued there
///   and not yet looked at), keeps one batch and offers the rest as its own backlog, where a third CPU can take
///   them in turn. When a CPU's queue grows past one waiting job, and whenever a CPU offers a backlog, it wakes
///   one online CPU whose pool queue is empty to come and take it; a CPU that finishes its batch looks for a
///   backlog before it parks. So no CPU idles while another has more than a batch waiting.
/// - FIFO per CPU, roughly FIFO overall (a taken backlog runs before newer jobs of its new CPU). Priorities are not
///   ordered in the pool; a task that needs them prefers a ``CPUExecutor``.
/// - Detaching a CPU moves its queued pool jobs, in order, to a surviving CPU; after ``Machine/shutdown()`` they
///   run on a fallback thread.
public final class PoolExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked: immutable; the queues it uses are made of atomics (see `PoolQueue`).
    let hub: JobHub

    init(hub: JobHub) { self.hub = hub }

    /// A job of a task that prefers the pool.
    public func enqueue(_ job: consuming ExecutorJob) {
        hub.pushPool(JobLink.take(job, kind: .pool))
    }
}

/// One CPU's pool jobs: an inbox (lock-free stack, closed while the CPU is offline), a backlog any CPU may take
/// whole (a FIFO chain that only its own CPU stores), and the batch its CPU runs now (touched by that CPU only).
final class PoolQueue: @unchecked Sendable {
    // @unchecked: `inbox`, `backlog` and `queued` are atomics; `batchHead`/`batchTail` are touched only by the
    // owning CPU's thread, or by the takeover once that CPU is dead (the hotplug walk orders the two).

    /// Jobs a CPU takes out of its queue at a time; the rest stay where other CPUs can take them.
    static let batch = 16

    let inbox = JobStack(closed: true)
    /// Oldest first; stored only by the owning CPU (into an empty slot), taken whole by anyone with an exchange.
    let backlog = Atomic<UInt>(0)
    /// Jobs in this CPU's inbox, backlog and batch (an estimate: steals and runs adjust it after the fact).
    let queued = Atomic<Int>(0)
    nonisolated(unsafe) var batchHead: UInt = 0
    nonisolated(unsafe) var batchTail: UInt = 0
    /// Set by the owner when it has just offered a backlog (its CPU then wakes an idle one to take it).
    nonisolated(unsafe) var offered = false

    /// The next job of the batch, refilled from the backlog, then from the inbox, when empty; 0 when none.
    @inline(__always)
    func next() -> UInt {
        if batchHead == 0 && !refill() { return 0 }
        let link = batchHead
        batchHead = JobLink.next(link)
        if batchHead == 0 { batchTail = 0 }
        return link
    }

    /// Owner only: takes the backlog, else the inbox, into the batch; false when both are empty.
    private func refill() -> Bool {
        // Acquire: partner of the release that stored the chain (its links are visible).
        var chain = backlog.exchange(0, ordering: .acquiring)
        if chain == 0 {
            chain = JobLink.reverse(inbox.takeAll()).first
            if chain == 0 { return false }
        }
        keepBatch(of: chain)
        return true
    }

    /// Owner only: keeps the first ``batch`` jobs of `chain` (oldest first) as the batch; the rest become the
    /// backlog (empty now: only the owner stores it, and it has just taken it).
    func keepBatch(of chain: UInt) {
        var last = chain
        var kept = 1
        while kept < PoolQueue.batch, JobLink.next(last) != 0 {
            last = JobLink.next(last)
            kept += 1
        }
        let rest = JobLink.next(last)
        JobLink.setNext(last, 0)
        if batchHead == 0 { batchHead = chain } else { JobLink.setNext(batchTail, chain) }
        batchTail = last
        // Release: partner of the taker's acquiring exchange.
        if rest != 0 {
            backlog.store(rest, ordering: .releasing)
            offered = true
        }
    }

    /// Whether jobs wait here (any part).
    var hasWork: Bool { batchHead != 0 || backlog.load(ordering: .relaxed) != 0 || !inbox.isEmpty }

    /// Another CPU's take: the backlog, else the inbox, whole (oldest first), and how many jobs it holds.
    func steal() -> (first: UInt, count: Int) {
        // Acquire: partner of the owner's release store.
        let chain = backlog.exchange(0, ordering: .acquiring)
        if chain != 0 {
            var count = 0
            var link = chain
            while link != 0 { count += 1; link = JobLink.next(link) }
            return (chain, count)
        }
        return JobLink.reverse(inbox.takeAll())
    }

    /// The dead CPU's jobs as one chain, newest first (ready to push onto another CPU's inbox as one splice),
    /// with its last (oldest) link and its length; its inbox is closed now, so nothing comes in after. No
    /// allocation: the inbox is already newest first; the backlog and the batch (oldest first) are reversed in place
    /// and linked behind it.
    func takeEverything() -> (newest: UInt, oldest: UInt, count: Int) {
        let stack = inbox.close()
        // Acquire: partner of the owner's release store.
        let backlogOldest = backlog.exchange(0, ordering: .acquiring)
        let batchOldest = batchHead
        batchHead = 0
        batchTail = 0
        queued.store(0, ordering: .relaxed)
        var newest: UInt = 0, oldest: UInt = 0, count = 0
        // Appends a newest-first chain whose last link is `last`.
        func append(_ first: UInt, last: UInt, length: Int) {
            guard first != 0 else { return }
            if newest == 0 { newest = first } else { JobLink.setNext(oldest, first) }
            oldest = last
            count += length
        }
        var stackLast = stack
        var stackCount = stack == 0 ? 0 : 1
        while stackLast != 0, JobLink.next(stackLast) != 0 {
            stackLast = JobLink.next(stackLast)
            stackCount += 1
        }
        append(stack, last: stackLast, length: stackCount)
        let backlogNewest = JobLink.reverse(backlogOldest)
        append(backlogNewest.first, last: backlogOldest, length: backlogNewest.count)
        let batchNewest = JobLink.reverse(batchOldest)
        append(batchNewest.first, last: batchOldest, length: batchNewest.count)
        return (newest, oldest, count)
    }
}
