import Logging
import Synchronization

/// Per-CPU executor state that the CPU's own loop reads on every job run.
final class CPUJobState: @unchecked Sendable {
    // @unchecked: `active`, `guests` are atomics; `running` is written and read only by the CPU's own thread.
    /// True while the CPU runs jobs (set and cleared by the built-in STARTING state).
    let active = Atomic<Bool>(false)
    /// How many executors other than its own this CPU hosts (stand-in); its loop looks for them only when > 0.
    let guests = Atomic<Int>(0)
    /// The CPU whose executor's job this CPU's thread runs right now; -1 for none or a pool job.
    nonisolated(unsafe) var running = -1
    /// Where this CPU starts looking for pool jobs to take (round robin).
    nonisolated(unsafe) var stealCursor = 0
}

/// What an enqueue needs, shared by the executors (which keep it alive) and the executor subsystem: the CPU cores
/// to wake, each CPU's state and pool queue, the fallback thread. It keeps no executor: the subsystem does.
final class JobHub: @unchecked Sendable {
    // @unchecked: immutable arrays of objects that are themselves safe; `logger` is immutable.
    /// A host value: no CPU has come online yet (the first one to come online hosts the executor).
    static let noHost = -1
    /// A host value: the machine has shut down; the fallback thread runs the executor's jobs.
    static let fallbackHost = -2
    /// Jobs one queue runs before its CPU looks at its mailbox again (the CPU also stops a batch early when an
    /// order is pending).
    static let runBudget = 64

    let cores: [CPUCore]
    let machineID: UInt64
    let cpus: [CPUJobState]
    let pools: [PoolQueue]
    let fallback: FallbackRunner
    /// The pool executor's reference, for running its jobs (the subsystem keeps the executor).
    nonisolated(unsafe) var poolReference: UnownedTaskExecutor?
    /// Whether idle CPUs take pool jobs from busy ones. Always true but in tests that must see where a job was
    /// placed or moved, not where it was taken to (set before any pool job exists).
    nonisolated(unsafe) var stealing = true

    init(cores: [CPUCore], machineID: UInt64, logger: Logger) {
        self.cores = cores
        self.machineID = machineID
        cpus = cores.map { _ in CPUJobState() }
        pools = cores.map { _ in PoolQueue() }
        fallback = FallbackRunner(logger: logger)
    }

    // MARK: Enqueue (any thread; no lock, no allocation)

    /// Queues a job of `executor` and wakes its host when the queue was empty.
    ///
    /// The order of the three steps makes a concurrent re-homing safe: the count goes up before the push, the
    /// host is read after it, all sequentially consistent, and a re-homing stores the host before it reads the
    /// count. Either this push reads the new host (and wakes it), or the re-homing sees the count (and wakes the
    /// new host itself).
    @inline(__always)
    func push(_ link: UInt, on executor: CPUExecutor) {
        executor.queued.add(1, ordering: .sequentiallyConsistent)
        let seen = executor.inbox.push(first: link, last: link)
        guard seen == 0 else { return }   // not empty: whoever made it non-empty has woken the host
        wakeHost(of: executor)
    }

    @inline(__always)
    func wakeHost(of executor: CPUExecutor) {
        let host = executor.host.load(ordering: .sequentiallyConsistent)
        if host >= 0 {
            cores[host].control.postAndWakeIfIdle(.job)
        } else if host == JobHub.fallbackHost {
            fallback.schedule(executor)
        }
        // noHost: the first CPU to come online takes the executor and looks at its queue.
    }

    /// Queues a pool job: on the calling CPU when it is one of the machine's online CPUs, else on the online CPU
    /// with the fewest queued pool jobs; on the fallback thread when none is online.
    func pushPool(_ link: UInt) {
        if let cpu = CPUCore.currentID(machineID: machineID), cpus[cpu].active.load(ordering: .relaxed),
           pushPool(link, on: cpu, local: true) {
            return
        }
        for _ in 0..<(pools.count * 2 + 2) {
            guard let cpu = leastLoadedPool() else { break }
            if pushPool(link, on: cpu, local: false) { return }
        }
        fallback.schedule(job: link)
    }

    /// One CAS onto the CPU's pool inbox; wakes it when the inbox was empty. A local push that leaves more than
    /// one job waiting wakes an idle CPU to take a share. False when the inbox is closed (the CPU went offline).
    @inline(__always)
    private func pushPool(_ link: UInt, on cpu: Int, local: Bool) -> Bool {
        let pool = pools[cpu]
        guard let seen = pool.inbox.push(first: link, last: link) else { return false }
        let waiting = pool.queued.wrappingAdd(1, ordering: .relaxed).newValue
        if seen == 0 { cores[cpu].control.postAndWakeIfIdle(.job) }
        if local && (waiting == 2 || waiting % 32 == 0) { wakeIdlePoolCPU(besides: cpu) }
        return true
    }

    private func leastLoadedPool() -> Int? {
        leastLoaded(pools.count, eligible: { cpus[$0].active.load(ordering: .relaxed) },
                    load: { pools[$0].queued.load(ordering: .relaxed) })
    }

    /// Wakes one online CPU with no pool job queued (other than `busy`), so that it comes to take a share of the
    /// jobs waiting on `busy`.
    func wakeIdlePoolCPU(besides busy: Int) {
        guard stealing else { return }
        let count = pools.count
        for step in 1..<max(count, 1) {
            let cpu = (busy + step) % count
            if cpus[cpu].active.load(ordering: .relaxed) && pools[cpu].queued.load(ordering: .relaxed) <= 0 {
                cores[cpu].control.postAndWakeIfIdle(.job)
                return
            }
        }
    }

    // MARK: Isolation

    /// Whether the calling thread runs a job of `executor` right now: a CPU of this machine whose current job is
    /// one of the executor's, or the fallback thread running one of its jobs.
    func isRunning(_ executor: CPUExecutor) -> Bool {
        if let cpu = CPUCore.currentID(machineID: machineID) { return cpus[cpu].running == executor.cpu }
        return fallback.isRunning(executor.cpu)
    }
}

/// Runs executor jobs once the machine has no CPU left (after shutdown): one thread at a time, started when work
/// arrives and gone when there is none, so serial executors stay serial and every job still runs.
final class FallbackRunner: Sendable {
    private struct Pending {
        var executors: [CPUExecutor] = []
        var jobs: [UInt] = []
        var running = false
        var logged = false
    }
    private let pending = Mutex(Pending())
    /// The thread running now (0: none), and the CPU whose executor's job it runs (-1: none).
    private let thread = Atomic<Int32>(0)
    private let runningExecutor = Atomic<Int>(-1)
    private let logger: Logger
    /// The pool executor's reference, for running its jobs (set once, before any job exists).
    nonisolated(unsafe) var poolReference: UnownedTaskExecutor?

    init(logger: Logger) { self.logger = logger }

    func schedule(_ executor: CPUExecutor) { schedule { $0.executors.append(executor) } }
    func schedule(job link: UInt) { schedule { $0.jobs.append(link) } }

    private func schedule(_ add: (inout Pending) -> Void) {
        let (start, log) = pending.withLock { pending -> (Bool, Bool) in
            add(&pending)
            let log = !pending.logged
            pending.logged = true
            guard !pending.running else { return (false, log) }
            pending.running = true
            return (true, log)
        }
        if log {
            logger.notice("executor jobs arrived after the last logical CPU went down: they run on a fallback thread, one at a time")
        }
        if start { startThread() }
    }

    private func startThread() {
        do {
            let started = try Shim.spawnThread { [self] in
                // Relaxed: compared only by this very thread (a foreign thread never equals it).
                thread.store(Shim.currentThreadID, ordering: .relaxed)
                drain()
                thread.store(0, ordering: .relaxed)
            }
            Shim.detach(started)
        } catch {
            // No thread: run them here, on the enqueuing thread (still one at a time: `running` is held).
            logger.error("executor fallback: no thread (\(error)); jobs run on the enqueuing thread")
            drain()
        }
    }

    private func drain() {
        while true {
            let batch = pending.withLock { pending -> ([CPUExecutor], [UInt])? in
                if pending.executors.isEmpty && pending.jobs.isEmpty {
                    pending.running = false
                    return nil
                }
                defer { pending.executors.removeAll(); pending.jobs.removeAll() }
                return (pending.executors, pending.jobs)
            }
            guard let (executors, jobs) = batch else { return }
            for executor in executors {
                while true {
                    executor.buckets.append(chain: JobLink.reverse(executor.inbox.takeAll()).first)
                    let link = executor.buckets.popHighest()
                    if link == 0 { break }
                    executor.queued.subtract(1, ordering: .relaxed)
                    runningExecutor.store(executor.cpu, ordering: .relaxed)
                    run(link, executor: executor, pool: nil)
                    runningExecutor.store(-1, ordering: .relaxed)
                }
            }
            for link in jobs { run(link, executor: nil, pool: poolReference) }
        }
    }

    private func run(_ link: UInt, executor: CPUExecutor?, pool: UnownedTaskExecutor?) {
        JobRunner.run(link, executor: executor, pool: pool)
    }

    func isRunning(_ cpu: Int) -> Bool {
        thread.load(ordering: .relaxed) == Shim.currentThreadID && runningExecutor.load(ordering: .relaxed) == cpu
    }
}

/// Runs one taken job the way its kind asks (see ``JobKind``).
enum JobRunner {
    @inline(__always)
    static func run(_ link: UInt, executor: CPUExecutor?, pool: UnownedTaskExecutor?) {
        let job = JobLink.job(link)
        switch JobLink.kind(link) {
        case .serial:
            job.runSynchronously(on: executor!.asUnownedSerialExecutor())
        case .task:
            job.runSynchronously(on: executor!.asUnownedTaskExecutor())
        case .pool:
            if let pool { job.runSynchronously(on: pool) } else { job.runSynchronously(on: executor!.asUnownedSerialExecutor()) }
        }
    }
}
