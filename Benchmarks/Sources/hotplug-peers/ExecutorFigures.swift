import BenchSupport
import CPeers
import Dispatch
import Hotplug
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// The Swift executor figures: a task preferring a logical CPU's executor, actors pinned to logical CPUs, and a
// detach with jobs queued, each beside the executors Swift programs use today: the default global executor, a
// serial DispatchQueue behind a `SerialExecutor`, and swift-nio's event loops (serial executors; a thin adapter
// makes a loop a `TaskExecutor`).

/// Every executor figure's title starts with this (the report's notes and the slab note tell them apart by it).
let executorTitlePrefix = "executor: "

/// Operations per sample of the yield and round-trip figures: the clock (or the allocation counters) is read once
/// per batch, and a sample is the batch's time (or count) divided by the batch, in picoseconds (or thousandths of an
/// allocation) per operation, like the tasklet and slab figures' per-operation samples.
let executorBatch = 16

/// Jobs queued on the detached CPU in the detach figure.
let detachQueuedJobs = 10_000

/// How far a detach with jobs queued may lie above the empty detach, at p99.
let detachGoalAboveNs: Int64 = 100_000

/// The logical CPU the one-CPU figures run on, and that the detach figure takes down.
private let executorCPU = 1

extension HotplugPeers {
    /// The plans of one executor figure.
    func executorPlans(_ figure: FigureID, layout: Layout) -> [Plan] {
        let counting = mallocCountingRefusal()
        let timeUnit = "ns per operation (batch of \(executorBatch) / \(executorBatch))"
        let mallocUnit = "allocations per operation (batch of \(executorBatch) / \(executorBatch))"
        // Samples per side: the yield and one-CPU round trips take --iterations batches; the cross-CPU round trip a
        // tenth (a NIO round trip wakes two sleeping threads); the allocation rows a twentieth (every allocation
        // traps into the kernel while it is counted); the detach figure a twenty-fifth of --slow-iterations (each
        // sample queues and runs 10,000 tasks).
        let fast = max(rounds, iterations), cross = max(rounds, iterations / 10), counted = max(rounds, iterations / 20)
        let detaches = max(rounds, slowIterations / 25)
        func timed(_ plan: Plan, samples: Int, msPerSample: Int64) -> Plan {
            var plan = plan
            plan.unit = timeUnit
            plan.samples = samples
            plan.msPerSample = msPerSample
            return plan
        }
        func allocations(_ plan: Plan) -> Plan {
            var plan = plan
            plan.unit = mallocUnit
            plan.samples = counted
            plan.msPerSample = 20
            if let counting { plan.skipped = counting }
            return plan
        }
        // For `perf record` on the runner: HOTPLUG_PEERS_PROFILE=timed leaves out the allocation rows (whose
        // counters trap every allocation into the kernel); HOTPLUG_PEERS_PROFILE=ours also every peer (its rows say
        // "not measured"), so that the profile holds our side alone.
        let profile = getenv("HOTPLUG_PEERS_PROFILE").map { String(cString: $0) }
        func plans(_ plans: [Plan]) -> [Plan] {
            guard profile == "timed" || profile == "ours" else { return plans }
            return plans.filter { $0.unit != mallocUnit }.map { plan in
                guard profile == "ours" else { return plan }
                var plan = plan
                plan.peers = plan.peers.map { peer, goal in
                    var peer = peer
                    peer.available = false
                    peer.unavailableNote = "not measured: HOTPLUG_PEERS_PROFILE=ours"
                    return (peer, goal)
                }
                return plan
            }
        }
        let twoCPUs = layout.cpus.count >= 2 ? nil
            : "skipped: the affinity mask has 1 CPU; the figure needs logical CPUs 0 and 1 on two physical CPUs"
        switch figure {
        case .executorYield:
            let preferring = timed(Plan("executor: Task.yield on one CPU: ns/yield, task preferring CPU 1's executor",
                                        ours: oursYield(counting: false), peers: [
                (Contender(name: "global executor (Task.detached)", measure: peerGlobalYield(counting: false)),
                 Goal(limit: 0.1)),
                (Contender(name: "NIO event loop via a TaskExecutor adapter", measure: peerNIOYield(counting: false)),
                 Goal(limit: 0.25)),
            ]), samples: fast, msPerSample: 2)
            let pinned = timed(Plan("executor: Task.yield on one CPU: ns/yield, actor pinned to CPU 1, no task preference",
                                    ours: oursPinnedActorYield, peers: [
                (Contender(name: "global executor (Task.detached)", measure: peerGlobalYield(counting: false)),
                 Goal(limit: nil)),
                (Contender(name: "actor on a serial DispatchQueue executor", measure: peerDispatchActorYield),
                 Goal(limit: nil)),
            ]), samples: fast, msPerSample: 2)
            let mallocs = allocations(Plan("executor: Task.yield on one CPU: allocations/yield, task preferring CPU 1's executor",
                                           ours: oursYield(counting: true), peers: [
                (Contender(name: "global executor (Task.detached)", measure: peerGlobalYield(counting: true)),
                 Goal(limit: nil, maxOursP99: 1_000, text: "<= 1 allocation/yield (p99)")),
                (Contender(name: "NIO event loop via a TaskExecutor adapter", measure: peerNIOYield(counting: true)),
                 Goal(limit: nil)),
            ]))
            return plans([preferring, pinned, mallocs])
        case .executorRoundTrip:
            let time = timed(Plan("executor: actor round trip on one CPU: ns, two actors pinned to CPU 1",
                                  ours: oursRoundTripOneCPU(counting: false), peers: [
                (Contender(name: "two default actors (global executor)", measure: peerDefaultActors(counting: false)),
                 Goal(limit: 1.0)),
                (Contender(name: "two actors on one serial DispatchQueue executor",
                           measure: peerDispatchActors(crossing: false)),
                 Goal(limit: nil)),
            ]), samples: fast, msPerSample: 2)
            let mallocs = allocations(Plan("executor: actor round trip on one CPU: allocations/round trip, two actors pinned to CPU 1",
                                           ours: oursRoundTripOneCPU(counting: true), peers: [
                (Contender(name: "two default actors (global executor)", measure: peerDefaultActors(counting: true)),
                 Goal(limit: nil, maxOursP99: 0, text: "0 allocations (p99)")),
            ]))
            return plans([time, mallocs])
        case .executorCrossCPU:
            var time = timed(Plan("executor: actor round trip across two CPUs: ns, actors pinned to CPUs 0 and 1",
                                  ours: oursRoundTripCrossCPU(counting: false), peers: [
                (Contender(name: "two NIO event loops (loop threads pinned to the same CPUs)",
                           measure: peerNIOActorsCrossCPU(counting: false)),
                 Goal(limit: 0.1)),
                (Contender(name: "two actors on two serial DispatchQueue executors",
                           measure: peerDispatchActors(crossing: true)),
                 Goal(limit: nil)),
                (Contender(name: "SIGP to a polling CPU round trip (floor)", measure: peerSIGPFloor), Goal(limit: nil)),
                (Contender(name: "cache-line ping-pong round trip (physical floor)", measure: peerPingPongFloor),
                 Goal(limit: nil)),
            ]), samples: cross, msPerSample: 5)
            time.skipped = twoCPUs
            var mallocs = allocations(Plan("executor: actor round trip across two CPUs: allocations/round trip, actors pinned to CPUs 0 and 1",
                                           ours: oursRoundTripCrossCPU(counting: true), peers: [
                (Contender(name: "two NIO event loops (loop threads pinned to the same CPUs)",
                           measure: peerNIOActorsCrossCPU(counting: true)),
                 Goal(limit: nil)),
            ]))
            mallocs.skipped = mallocs.skipped ?? twoCPUs
            return plans([time, mallocs])
        case .executorDetach:
            // Deciding: CPU 1 is held until the stop_machine of the detach has asked it in, so it takes part before it
            // looks at its queue. Information: CPU 1 is let go as the detach starts, so it may reach its safe point
            // first and start on its queue (the worst case for the stop_machine's wait).
            func detachPlan(_ release: HoldRelease, samples: Int, goal: Goal) -> Plan {
                let how = release == .afterRequest ? "CPU 1 held until asked in" : "CPU 1 let go as the detach starts"
                var plan = Plan(titles: ["executor: detach of CPU 1 with \(detachQueuedJobs) jobs queued on its executor, \(how), called on CPU 0",
                                         "executor: detach of CPU 1 with \(detachQueuedJobs) pool jobs queued on it, \(how), called on CPU 0"],
                                ours: oursDetachWithJobs(release), peers: [
                    (Contender(name: "empty detach (same protocol, nothing queued)", measure: peerEmptyDetach(release)), goal),
                ])
                plan.samples = samples
                plan.msPerSample = 100
                plan.skipped = twoCPUs
                return plan
            }
            return plans([
                detachPlan(.afterRequest, samples: detaches,
                           goal: Goal(limit: nil, maxP99AbovePeer: detachGoalAboveNs, text: "p99 <= empty p99 + 100 us")),
                detachPlan(.atStart, samples: max(rounds, detaches / 2), goal: Goal(limit: nil)),
            ])
        default:
            return []
        }
    }
}

// MARK: Sampling inside a task

/// Fills a block of samples from inside a task or an actor: each sample is `executorBatch` operations, as the
/// time per operation in picoseconds, or (`counting`) the allocations per operation in thousandths, counted by the
/// uprobe counters of every thread of the process (`malloc_count.c`: entries into malloc, calloc and realloc; the
/// entries into the aligned family are tallied apart for the report's notes, under `label`).
struct ExecutorSampler: Sendable {
    let block: SampleBlock
    let warmup: Int
    let counting: Bool
    let label: String
    let tally = AllocationTally()

    var total: Int { warmup + block.count }

    /// The start of a sample: the clock, or the counts (after covering the threads that appeared).
    @inline(__always)
    func begin() throws(BenchFailure) -> (Int64, Int64) {
        if counting {
            let rc = cpr_mcount_cover_threads()   // allocates (opendir): before the counts are read
            guard rc == 0 else { throw .errno("uprobe allocation counters", rc) }
            return (Int64(cpr_mcount_read(false)), Int64(cpr_mcount_read(true)))
        }
        return (cpr_now_ns(), 0)
    }

    /// The end of sample `index`: records it unless it is a warm-up sample; after the last, the tally goes to the
    /// report's notes.
    @inline(__always)
    func end(_ index: Int, _ start: (Int64, Int64)) {
        guard counting else {
            if index >= warmup { block[index - warmup] = (cpr_now_ns() - start.0) * 1_000 / Int64(executorBatch) }
            return
        }
        let allocations = Int64(cpr_mcount_read(false)) - start.0, aligned = Int64(cpr_mcount_read(true)) - start.1
        guard index >= warmup else { return }
        block[index - warmup] = allocations * 1_000 / Int64(executorBatch)
        tally.add(allocations: allocations, aligned: aligned)
        if index == total - 1 { ExecutorLog.recordAllocations(label, tally, operations: block.count * executorBatch) }
    }
}

/// The allocation and aligned-entry counts of one counted block.
final class AllocationTally: Sendable {
    let allocations = Atomic<Int64>(0)
    let aligned = Atomic<Int64>(0)

    func add(allocations: Int64, aligned: Int64) {
        // Relaxed: read after the block's task has been waited for.
        self.allocations.add(allocations, ordering: .relaxed)
        self.aligned.add(aligned, ordering: .relaxed)
    }
}

/// The outcome of a task that fills samples, handed to the thread that waits for it.
final class TaskOutcome: @unchecked Sendable {
    // @unchecked: the semaphore is thread-safe; `failure` is behind a Mutex.
    private let semaphore = DispatchSemaphore(value: 0)
    private let failure = Mutex<BenchFailure?>(nil)

    /// Runs `body` and reports how it ended.
    func finish(_ body: () async throws(BenchFailure) -> Void) async {
        do {
            try await body()
        } catch {
            failure.withLock { $0 = error }
        }
        semaphore.signal()
    }

    /// Waits (asleep) for `finish`, at most `seconds`; rethrows the body's failure.
    func wait(_ what: String, seconds: Int) throws(BenchFailure) {
        guard semaphore.wait(timeout: .now() + .seconds(seconds)) == .success else {
            throw BenchFailure("\(what) did not finish within \(seconds) s")
        }
        if let error = failure.withLock({ $0 }) { throw error }
    }
}

/// How long a block's task may take before the waiting thread gives up (the watchdog usually fires first).
private let blockBoundSeconds = 600

/// The sampler of one block. A block that does not count allocations first closes the counters that the
/// allocation blocks before it left open: they stay open from one counting block to the next (closing a uprobe
/// counter waits for a kernel grace period, so the counters are not closed and opened again per block), and no timed
/// block ever runs with them (a counted allocation traps into the kernel).
private func sampler(_ out: UnsafeMutableBufferPointer<Int64>, _ settings: Settings, counting: Bool,
                     _ label: String) -> ExecutorSampler {
    if !counting { cpr_mcount_close() }
    return ExecutorSampler(block: SampleBlock(out), warmup: settings.warmup, counting: counting, label: label)
}

/// Why allocations cannot be counted here (nil: they can): the uprobe PMU is missing, or creating a uprobe is not
/// allowed (root, or CAP_PERFMON and CAP_SYS_ADMIN, is needed).
func mallocCountingRefusal() -> String? { mallocCountingProbe }

/// Tried once per process (a try opens and closes counters, which takes a kernel grace period).
private let mallocCountingProbe: String? = {
    var rc = cpr_mcount_prepare()
    if rc == 0 { rc = cpr_mcount_cover_threads() }
    cpr_mcount_close()
    guard rc != 0 else { return nil }
    return "not available here: allocations are counted with uprobe perf events on the C library's allocating "
        + "functions, which failed (\(String(cString: strerror(rc))), errno \(rc)); they need the uprobe PMU and "
        + "root or CAP_PERFMON + CAP_SYS_ADMIN"
}()

// MARK: Yield

/// `executorBatch` yields per sample, in the calling task (nonisolated: it runs where the task's executor
/// preference, or the global executor, puts it).
private func yieldLoop(_ sampler: ExecutorSampler) async throws(BenchFailure) {
    for i in 0..<sampler.total {
        let start = try sampler.begin()
        for _ in 0..<executorBatch { await Task.yield() }
        sampler.end(i, start)
    }
}

/// Ours: `Machine(cpus: 2)`, both online; a task preferring logical CPU 1's executor
/// (`Task(executorPreference:)`) runs `executorBatch` `Task.yield()` per sample. It checks that it runs on CPU 1
/// before and after.
func oursYield(counting: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let machine = try makeAllOnlineMachine(cpus: 2, timeoutNs: settings.timeoutNs)
        defer { machine.shutdown() }
        let executor = try cpuExecutor(machine, executorCPU)
        let sampler = sampler(out, settings, counting: counting, "ours, task preferring CPU 1: Task.yield")
        let outcome = TaskOutcome()
        Task(executorPreference: executor) {
            await outcome.finish { () async throws(BenchFailure) in
                try expectCPU(machine, executorCPU, "the preferring task, before")
                try await yieldLoop(sampler)
                try expectCPU(machine, executorCPU, "the preferring task, after")
            }
        }
        try outcome.wait("the yielding task", seconds: blockBoundSeconds)
    }
}

/// Peer: a task on the default global executor (`Task.detached`, no preference) runs the same loop.
func peerGlobalYield(counting: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let sampler = sampler(out, settings, counting: counting, "global executor: Task.yield")
        let outcome = TaskOutcome()
        Task.detached {
            await outcome.finish { () async throws(BenchFailure) in try await yieldLoop(sampler) }
        }
        try outcome.wait("the yielding task", seconds: blockBoundSeconds)
    }
}

/// Peer: a one-thread `MultiThreadedEventLoopGroup` whose loop thread is pinned to the physical CPU of our logical
/// CPU 1, and a task preferring it through `NIOLoopTaskExecutor`, running the same loop.
func peerNIOYield(counting: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        try pin(loop, to: layout.target)
        let executor = NIOLoopTaskExecutor(loop)
        let sampler = sampler(out, settings, counting: counting, "NIO adapter: Task.yield")
        let outcome = TaskOutcome()
        Task(executorPreference: executor) {
            await outcome.finish { () async throws(BenchFailure) in
                guard loop.inEventLoop else { throw BenchFailure("the task preferring the NIO adapter is not on its loop") }
                try await yieldLoop(sampler)
                guard loop.inEventLoop else { throw BenchFailure("the task left the NIO loop") }
            }
        }
        try outcome.wait("the yielding task", seconds: blockBoundSeconds)
    }
}

/// An actor on a given serial executor (kept alive here: `UnownedSerialExecutor` does not retain it).
actor ExecutorYielder {
    private let keeper: any SerialExecutor
    private let executor: UnownedSerialExecutor
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor }

    init(_ keeper: any SerialExecutor, _ executor: UnownedSerialExecutor) {
        self.keeper = keeper
        self.executor = executor
    }

    /// `executorBatch` yields per sample, isolated to the actor (no task preference).
    func yields(_ sampler: ExecutorSampler, check: @Sendable () throws(BenchFailure) -> Void) async throws(BenchFailure) {
        try check()
        for i in 0..<sampler.total {
            let start = try sampler.begin()
            for _ in 0..<executorBatch { await Task.yield() }
            sampler.end(i, start)
        }
        try check()
    }
}

/// Ours, for information: an actor pinned to logical CPU 1 (`unownedExecutor` is its executor's
/// `asUnownedSerialExecutor()`), called from a task without a preference, yields in its own method.
func oursPinnedActorYield(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let machine = try makeAllOnlineMachine(cpus: 2, timeoutNs: settings.timeoutNs)
    defer { machine.shutdown() }
    let executor = try cpuExecutor(machine, executorCPU)
    let actor = ExecutorYielder(executor, executor.asUnownedSerialExecutor())
    let sampler = sampler(out, settings, counting: false, "")
    let outcome = TaskOutcome()
    Task.detached {
        await outcome.finish { () async throws(BenchFailure) in
            try await actor.yields(sampler) { () throws(BenchFailure) in
                try expectCPU(machine, executorCPU, "the pinned actor")
            }
        }
    }
    try outcome.wait("the pinned actor's yields", seconds: blockBoundSeconds)
}

/// Peer, for information: the same actor on a serial `DispatchQueue` executor.
func peerDispatchActorYield(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let executor = DispatchQueueExecutor(label: "hotplug-peers.actor")
    let actor = ExecutorYielder(executor, executor.asUnownedSerialExecutor())
    let sampler = sampler(out, settings, counting: false, "")
    let outcome = TaskOutcome()
    Task.detached {
        await outcome.finish { () async throws(BenchFailure) in try await actor.yields(sampler) { () throws(BenchFailure) in } }
    }
    try outcome.wait("the Dispatch actor's yields", seconds: blockBoundSeconds)
}

// MARK: Actor round trips

/// The answering actor of a round trip, on a given serial executor.
actor ExecutorPonger {
    private let keeper: any SerialExecutor
    private let executor: UnownedSerialExecutor
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor }
    private var count = 0

    init(_ keeper: any SerialExecutor, _ executor: UnownedSerialExecutor) {
        self.keeper = keeper
        self.executor = executor
    }

    func pong() { count &+= 1 }

    /// Runs `check` isolated to the actor (where it runs).
    func run(_ check: @Sendable () throws(BenchFailure) -> Void) throws(BenchFailure) { try check() }
}

/// The calling actor of a round trip: `executorBatch` calls of its partner per sample, timed on its own executor.
actor ExecutorPinger {
    private let keeper: any SerialExecutor
    private let executor: UnownedSerialExecutor
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor }

    init(_ keeper: any SerialExecutor, _ executor: UnownedSerialExecutor) {
        self.keeper = keeper
        self.executor = executor
    }

    func roundTrips(_ partner: ExecutorPonger, _ sampler: ExecutorSampler) async throws(BenchFailure) {
        for i in 0..<sampler.total {
            let start = try sampler.begin()
            for _ in 0..<executorBatch { await partner.pong() }
            sampler.end(i, start)
        }
    }

    func run(_ check: @Sendable () throws(BenchFailure) -> Void) throws(BenchFailure) { try check() }
}

/// The peer's answering actor: a default actor.
actor DefaultPonger {
    private var count = 0
    func pong() { count &+= 1 }
}

/// The peer's calling actor: a default actor, the same loop.
actor DefaultPinger {
    func roundTrips(_ partner: DefaultPonger, _ sampler: ExecutorSampler) async throws(BenchFailure) {
        for i in 0..<sampler.total {
            let start = try sampler.begin()
            for _ in 0..<executorBatch { await partner.pong() }
            sampler.end(i, start)
        }
    }
}

/// Runs the round trips of `pinger` with `ponger` from a task without a preference and waits for them, after
/// checking where each actor runs.
private func runRoundTrips(_ pinger: ExecutorPinger, _ ponger: ExecutorPonger, _ sampler: ExecutorSampler,
                           pingerCheck: @escaping @Sendable () throws(BenchFailure) -> Void,
                           pongerCheck: @escaping @Sendable () throws(BenchFailure) -> Void) throws(BenchFailure) {
    let outcome = TaskOutcome()
    Task.detached {
        await outcome.finish { () async throws(BenchFailure) in
            try await pinger.run(pingerCheck)
            try await ponger.run(pongerCheck)
            try await pinger.roundTrips(ponger, sampler)
        }
    }
    try outcome.wait("the round trips", seconds: blockBoundSeconds)
}

/// Ours: `Machine(cpus: 2)`, both online; two actors pinned to logical CPU 1's executor; the calling one runs
/// `executorBatch` calls of the other per sample (the runtime switches between them inline: same executor).
func oursRoundTripOneCPU(counting: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let machine = try makeAllOnlineMachine(cpus: 2, timeoutNs: settings.timeoutNs)
        defer { machine.shutdown() }
        let executor = try cpuExecutor(machine, executorCPU)
        let pinger = ExecutorPinger(executor, executor.asUnownedSerialExecutor())
        let ponger = ExecutorPonger(executor, executor.asUnownedSerialExecutor())
        let check: @Sendable () throws(BenchFailure) -> Void = { () throws(BenchFailure) in
            try expectCPU(machine, executorCPU, "a pinned actor")
        }
        try runRoundTrips(pinger, ponger, sampler(out, settings, counting: counting, "ours, two actors on CPU 1: round trip"),
                          pingerCheck: check,
                          pongerCheck: check)
    }
}

/// Peer: two default actors (the global executor runs them), the same loop.
func peerDefaultActors(counting: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let pinger = DefaultPinger(), ponger = DefaultPonger()
        let sampler = sampler(out, settings, counting: counting, "two default actors: round trip")
        let outcome = TaskOutcome()
        Task.detached {
            await outcome.finish { () async throws(BenchFailure) in try await pinger.roundTrips(ponger, sampler) }
        }
        try outcome.wait("the round trips", seconds: blockBoundSeconds)
    }
}

/// Peer, for information: the two actors on serial `DispatchQueue` executors, one shared (`crossing` false) or one
/// each (true; Dispatch's threads are its own, not pinned).
func peerDispatchActors(crossing: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let first = DispatchQueueExecutor(label: "hotplug-peers.actor.0")
        let second = crossing ? DispatchQueueExecutor(label: "hotplug-peers.actor.1") : first
        let pinger = ExecutorPinger(first, first.asUnownedSerialExecutor())
        let ponger = ExecutorPonger(second, second.asUnownedSerialExecutor())
        try runRoundTrips(pinger, ponger, sampler(out, settings, counting: false, ""), pingerCheck: { () throws(BenchFailure) in },
                          pongerCheck: { () throws(BenchFailure) in })
    }
}

/// Ours: `Machine(cpus: 2)`, both online (default poll time: a CPU polls its mailbox 20 us after its last job, so
/// back-to-back round trips find it polling); the calling actor pinned to logical CPU 0, the answering one to
/// logical CPU 1 (each on its own physical CPU); a round trip is two hand-overs between the CPUs.
func oursRoundTripCrossCPU(counting: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let machine = try makeAllOnlineMachine(cpus: 2, timeoutNs: settings.timeoutNs)
        defer { machine.shutdown() }
        let calling = try cpuExecutor(machine, 0), answering = try cpuExecutor(machine, 1)
        let pinger = ExecutorPinger(calling, calling.asUnownedSerialExecutor())
        let ponger = ExecutorPonger(answering, answering.asUnownedSerialExecutor())
        try runRoundTrips(pinger, ponger, sampler(out, settings, counting: counting, "ours, actors on CPUs 0 and 1: round trip"),
                          pingerCheck: { () throws(BenchFailure) in try expectCPU(machine, 0, "the calling actor") },
                          pongerCheck: { () throws(BenchFailure) in try expectCPU(machine, 1, "the answering actor") })
    }
}

/// Peer: a two-thread `MultiThreadedEventLoopGroup`, loop threads pinned to the physical CPUs of our logical CPUs 0
/// and 1; the calling actor's `unownedExecutor` is the first loop's `executor`, the answering one's the second's.
/// An idle NIO loop sleeps in epoll_wait, so each hand-over wakes it (an eventfd write).
func peerNIOActorsCrossCPU(counting: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        var loops = group.makeIterator()
        guard let first = loops.next(), let second = loops.next(), first !== second else {
            throw BenchFailure("the NIO group has no two loops")
        }
        try pin(first, to: layout.cpu(0))
        try pin(second, to: layout.target)
        let pinger = ExecutorPinger(first.executor, first.executor.asUnownedSerialExecutor())
        let ponger = ExecutorPonger(second.executor, second.executor.asUnownedSerialExecutor())
        try runRoundTrips(pinger, ponger, sampler(out, settings, counting: counting, "two NIO loops: round trip"),
                          pingerCheck: { () throws(BenchFailure) in
                              guard first.inEventLoop else { throw BenchFailure("the calling actor is not on its loop") }
                          },
                          pongerCheck: { () throws(BenchFailure) in
                              guard second.inEventLoop else { throw BenchFailure("the answering actor is not on its loop") }
                          })
    }
}

/// The floor, for information: the "SIGP to a polling CPU" figure's own side (`oursPolling`), one round trip per
/// sample, kept in picoseconds like the rows it stands beside.
func peerSIGPFloor(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    cpr_mcount_close()   // no allocation counter stays open through a timed block (see `sampler`)
    try oursPolling(layout, settings, into: out)
    for i in out.indices { out[i] *= picosecondsPerNanosecond }
}

/// The physical floor, for information: the "SIGP to a polling CPU" figure's peer (`peerPingPong`), one cache-line
/// round trip between the two physical CPUs per sample, in picoseconds.
func peerPingPongFloor(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    cpr_mcount_close()   // no allocation counter stays open through a timed block (see `sampler`)
    try peerPingPong(layout, settings, into: out)
    for i in out.indices { out[i] *= picosecondsPerNanosecond }
}

// MARK: Detach with queued jobs

/// What the detach figure queues on logical CPU 1 before it takes it down.
enum QueuedJobs: Sendable {
    /// Nothing: the peer.
    case none
    /// Tasks preferring CPU 1's executor: their first jobs wait in the executor's queue, which a stand-in CPU takes
    /// over as it is (nothing is copied).
    case executor
    /// Tasks preferring the pool, made on CPU 1 (so they stay there): the takeover moves them to a survivor.
    case pool
}

/// When the call holding CPU 1 lets it go, once the jobs are queued.
enum HoldRelease: Sendable {
    /// When the detach reaches `cpu:teardown` (its stop_machine is about to ask CPU 1 in): CPU 1 may get back to
    /// its safe point before the request and start on its queue.
    case atStart
    /// When the stop_machine's request has reached CPU 1 (its delivery signal was received: the request is queued
    /// before the call returns), so CPU 1 takes part before it looks at its queue.
    case afterRequest
}

/// Ours: series 0 with `detachQueuedJobs` jobs queued on CPU 1's executor, series 1 with as many pool jobs on
/// CPU 1, alternating sample by sample, on one `Machine(cpus: 2)` per block.
func oursDetachWithJobs(_ release: HoldRelease) -> MultiSide {
    { (layout: Layout, settings: Settings, blocks: [UnsafeMutableBufferPointer<Int64>]) throws(BenchFailure) in
        let rig = try DetachRig(settings, release)
        defer { rig.close() }
        let serial = SampleBlock(blocks[0]), pool = SampleBlock(blocks[1])
        for i in 0..<(detachWarmup + serial.count) {
            let a = try rig.sample(.executor, jobs: detachQueuedJobs)
            let b = try rig.sample(.pool, jobs: detachQueuedJobs)
            if i >= detachWarmup {
                serial[i - detachWarmup] = a
                pool[i - detachWarmup] = b
            }
        }
    }
}

/// The peer: the same protocol with nothing queued.
func peerEmptyDetach(_ release: HoldRelease) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let rig = try DetachRig(settings, release)
        defer { rig.close() }
        let samples = SampleBlock(out)
        for i in 0..<(detachWarmup + samples.count) {
            let ns = try rig.sample(.none, jobs: 0)
            if i >= detachWarmup { samples[i - detachWarmup] = ns }
        }
    }
}

/// Untimed detaches before every block of the detach figure (each sample makes 10,000 tasks: --warmup would be
/// too many).
private let detachWarmup = 5

/// One machine and the words of the detach figure's protocol. A sample:
/// 1. a cross-call holds logical CPU 1 (it spins); it waits for a go, then makes the jobs (tasks preferring CPU
///    1's executor, or the pool), says so, and spins on until the detach has reached `cpu:teardown` (its
///    stop_machine is about to ask CPU 1 in) and, with `.afterRequest`, until that request has reached CPU 1 (a
///    delivery signal more than before), then returns;
/// 2. a cross-call on logical CPU 0 gives the go, waits until the jobs are queued (CPU 0 is busy meanwhile, so it
///    cannot take pool jobs from CPU 1), then times `offline(1)`, called on CPU 0 like the attach / detach figure's
///    deciding rows;
/// 3. untimed: `online(1)`, and every job must have run (a counter) with nothing left queued.
final class DetachRig: @unchecked Sendable {
    // @unchecked: the words are C memory touched only through the `cpr_` atomics; the rest is immutable.
    let machine: Machine
    let settings: Settings
    /// The jobs' counter (each job's body is one release increment).
    let ran = SharedWord64()
    /// The sequence numbers of the go (CPU 0 to CPU 1) and of the jobs queued (CPU 1 to CPU 0).
    let go = SharedWord64()
    let queued = SharedWord64()
    /// Why the holding call on CPU 1 gave up (0: it did not).
    let holdFailure = SharedWord64()
    let release: HoldRelease
    private var sequence: UInt64 = 0

    init(_ settings: Settings, _ release: HoldRelease) throws(BenchFailure) {
        cpr_mcount_close()   // no allocation counter stays open through a timed block (see `sampler`)
        machine = try makeAllOnlineMachine(cpus: 2, timeoutNs: settings.timeoutNs)
        self.settings = settings
        self.release = release
    }

    func close() {
        machine.shutdown()
        ran.deallocate()
        go.deallocate()
        queued.deallocate()
        holdFailure.deallocate()
    }

    /// One detach of CPU 1 with `jobs` jobs of `kind` queued on it; returns the detach's time in ns.
    func sample(_ kind: QueuedJobs, jobs: Int) throws(BenchFailure) -> Int64 {
        sequence += 1
        let seq = sequence, machine = self.machine, timeoutNs = settings.timeoutNs, release = self.release
        let ran = self.ran, go = self.go, queued = self.queued, holdFailure = self.holdFailure
        let before = ran.value
        let executor = try cpuExecutor(machine, executorCPU)
        let pool = machine.pool
        let hold: CrossCall
        do {
            hold = try machine.submit(on: executorCPU) {
                guard waitWord(go, equals: seq, timeoutNs: timeoutNs) else {
                    cpr_store_release_u64(holdFailure.pointer, 1)
                    return
                }
                for _ in 0..<jobs {
                    switch kind {
                    case .none: break
                    case .executor: Task(executorPreference: executor) { ran.bump() }
                    case .pool: Task(executorPreference: pool) { ran.bump() }
                    }
                }
                let signals = (try? machine.deliveryStatistics(of: executorCPU).signalsReceived) ?? 0
                cpr_store_release_u64(queued.pointer, seq)   // Release: partner of waitWord's acquire on CPU 0.
                // Hold on until the detach reaches cpu:teardown (atStart: the hotplug state, behind the registry's
                // lock, so looked at every 16th spin), or until stop_machine's cross-call has been delivered
                // (afterRequest: the only signal CPU 1 receives after the jobs are queued; it is sent to a running
                // CPU once the call is queued).
                let limit = cpr_now_ns() + timeoutNs
                var spins: UInt32 = 0
                while true {
                    if release == .afterRequest {
                        if ((try? machine.deliveryStatistics(of: executorCPU).signalsReceived) ?? 0) > signals { break }
                    } else if spins % 16 == 0,
                              ((try? machine.hotplug.currentState(of: executorCPU))?.rawValue ?? 0)
                                < HotplugState.teardownCPU.rawValue {
                        break
                    }
                    cpr_spin_step(spins)
                    spins &+= 1
                    if spins % UInt32(CPR_CHECK_EVERY) == 0 && cpr_now_ns() > limit {
                        cpr_store_release_u64(holdFailure.pointer, 2)
                        return
                    }
                }
            }
        } catch {
            throw BenchFailure("submit(on: 1) (the holding call): \(error)")
        }
        let timed: (ns: Int64, ranBefore: UInt64, queuedSeen: Int)
        do {
            timed = try machine.run(on: 0, timeout: .nanoseconds(timeoutNs)) { () throws -> (Int64, UInt64, Int) in
                cpr_store_release_u64(go.pointer, seq)   // Release: partner of waitWord's acquire on CPU 1.
                guard waitWord(queued, equals: seq, timeoutNs: timeoutNs) else {
                    throw BenchFailure("the holding call on CPU 1 did not queue its \(jobs) jobs within \(timeoutNs / 1_000_000) ms")
                }
                let queuedSeen = (try? machine.queuedJobs(on: executorCPU)) ?? -1
                let t0 = cpr_now_ns()
                do { try machine.offline(executorCPU) } catch { throw BenchFailure("offline(1): \(error)") }
                let t1 = cpr_now_ns()
                return (t1 - t0, ran.value - before, queuedSeen)
            }
        } catch let failure as BenchFailure {
            _ = hold.wait(timeout: .seconds(5))
            throw failure
        } catch {
            _ = hold.wait(timeout: .seconds(5))
            throw BenchFailure("run(on: 0): \(error)")
        }
        guard hold.wait(timeout: .nanoseconds(timeoutNs)) else { throw BenchFailure("the holding call on CPU 1 did not end") }
        switch holdFailure.value {
        case 0: break
        case 1: throw BenchFailure("the holding call on CPU 1 got no go within \(timeoutNs / 1_000_000) ms")
        default:
            throw BenchFailure("the detach did not reach cpu:teardown" + (release == .afterRequest ? " (its request did not reach CPU 1)" : "")
                               + " within \(timeoutNs / 1_000_000) ms")
        }
        guard timed.queuedSeen >= jobs else {
            throw BenchFailure("\(timed.queuedSeen) jobs queued on CPU 1 before the detach, not \(jobs)")
        }
        do { try machine.online(executorCPU) } catch { throw BenchFailure("online(1): \(error)") }
        let target = before + UInt64(jobs)
        let bound = max(timeoutNs, 5_000_000_000)
        let start = cpr_now_ns()
        while ran.value < target {
            if cpr_now_ns() - start > bound {
                let left = ((try? machine.queuedJobs(on: 0)) ?? -1, (try? machine.queuedJobs(on: 1)) ?? -1)
                throw BenchFailure("\(target - ran.value) of \(jobs) jobs did not run within \(bound / 1_000_000) ms "
                                   + "after the detach (queued on CPU 0: \(left.0), on CPU 1: \(left.1))")
            }
            var pause = timespec(tv_sec: 0, tv_nsec: 50_000)
            _ = nanosleep(&pause, nil)
        }
        ExecutorLog.recordDetach(kind, release, ranBeforeDetach: Int(timed.ranBefore))
        return timed.ns
    }
}

/// Spins (pause hint, sched_yield past the budget) until `word` holds `value`, at most `timeoutNs`. Acquire:
/// partner of the release store that sets it.
private func waitWord(_ word: SharedWord64, equals value: UInt64, timeoutNs: Int64) -> Bool {
    let limit = cpr_now_ns() + timeoutNs
    var spins: UInt32 = 0
    while word.value != value {
        cpr_spin_step(spins)
        spins &+= 1
        if spins % UInt32(CPR_CHECK_EVERY) == 0 && cpr_now_ns() > limit { return false }
    }
    return true
}

/// What the detach figure saw besides its times: how many of the queued jobs ran on CPU 1 itself between its
/// release and its death (the rest ran after the detach, on the stand-in or the survivor).
enum ExecutorLog {
    private struct Detaches {
        var samples = 0
        var total = 0
        var most = 0
    }
    private static let detaches = Mutex<[String: Detaches]>([:])

    private struct Allocations {
        var operations = 0
        var allocations: Int64 = 0
        var aligned: Int64 = 0
    }
    private static let allocations = Mutex<[String: Allocations]>([:])

    static func recordAllocations(_ label: String, _ tally: AllocationTally, operations: Int) {
        allocations.withLock {
            var entry = $0[label, default: Allocations()]
            entry.operations += operations
            entry.allocations += tally.allocations.load(ordering: .relaxed)
            entry.aligned += tally.aligned.load(ordering: .relaxed)
            $0[label] = entry
        }
    }

    static func recordDetach(_ kind: QueuedJobs, _ release: HoldRelease, ranBeforeDetach: Int) {
        guard kind != .none else { return }
        let key = "\(kind == .pool ? "pool jobs" : "jobs on the executor"), "
            + (release == .afterRequest ? "CPU 1 held until asked in" : "CPU 1 let go as the detach starts")
        detaches.withLock {
            var entry = $0[key, default: Detaches()]
            entry.samples += 1
            entry.total += ranBeforeDetach
            entry.most = max(entry.most, ranBeforeDetach)
            $0[key] = entry
        }
    }

    /// The notes under the table when an executor figure was measured.
    static func reportLines() -> [String] {
        var lines = ["executor figures: yield and round-trip samples are batches of \(executorBatch) operations (ns per "
                     + "operation = batch time / \(executorBatch), picosecond precision; allocation rows: allocations "
                     + "per operation, counted by uprobe perf events on the C library's malloc, calloc, realloc, "
                     + "posix_memalign and aligned_alloc for every thread of the process, in separate untimed blocks); "
                     + "ours on Machine(cpus: 2); the global executor and Dispatch use their own threads; NIO loop "
                     + "threads are pinned to the same physical CPUs as our logical CPUs; the NIO task-preference peer "
                     + "is an adapter TaskExecutor whose enqueue is the loop's own closure-free enqueue; the detach "
                     + "figure: \(detachWarmup) untimed detaches per block, goal on our p99 against the empty "
                     + "detach's p99 (+ \(detachGoalAboveNs / 1_000) us)"]
        for (label, entry) in allocations.withLock({ $0 }).sorted(by: { $0.key < $1.key }) where entry.operations > 0 {
            let per = { (count: Int64) in fixed(Double(count) / Double(entry.operations), 3) }
            lines.append("  allocations, \(label): \(per(entry.allocations)) per operation (malloc, calloc, realloc); "
                         + "entries into posix_memalign / aligned_alloc / memalign: \(per(entry.aligned)) per operation "
                         + "(glibc relays an alignment of at most 16 bytes to malloc, so these are among the allocations)")
        }
        for (kind, entry) in detaches.withLock({ $0 }).sorted(by: { $0.key < $1.key }) where entry.samples > 0 {
            lines.append("  detach with \(detachQueuedJobs) \(kind): "
                         + "jobs that ran on CPU 1 between its release and its detach: mean "
                         + "\(fixed(Double(entry.total) / Double(entry.samples), 1)), max \(entry.most) "
                         + "(\(entry.samples) samples)")
        }
        return lines
    }
}

// MARK: Executors of the peers

/// What Swift programs write today to pin an actor to a serial `DispatchQueue`.
final class DispatchQueueExecutor: SerialExecutor, @unchecked Sendable {
    // @unchecked: immutable; DispatchQueue is thread-safe.
    let queue: DispatchQueue

    init(label: String) { queue = DispatchQueue(label: label) }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedSerialExecutor()) }
    }

    func asUnownedSerialExecutor() -> UnownedSerialExecutor { UnownedSerialExecutor(ordinary: self) }
}

/// NIO has no `TaskExecutor`: this adapter makes a loop one, handing each job to the loop's own enqueue (a
/// `SelectableEventLoop` queues the job itself, no closure; the job then runs as one of the loop's serial jobs).
final class NIOLoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop

    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) { loop.enqueue(job) }
}

// MARK: Helpers

private func cpuExecutor(_ machine: Machine, _ cpu: Int) throws(BenchFailure) -> CPUExecutor {
    do { return try machine.executor(cpu: cpu) } catch { throw BenchFailure("executor(cpu: \(cpu)): \(error)") }
}

/// Fails unless the calling code runs on logical CPU `cpu` of `machine`.
private func expectCPU(_ machine: Machine, _ cpu: Int, _ what: String) throws(BenchFailure) {
    let current = machine.currentCPU
    guard current == cpu else {
        throw BenchFailure("\(what) runs on \(current.map { "logical CPU \($0)" } ?? "a thread off the machine"), not on CPU \(cpu)")
    }
}

/// Pins a NIO loop's thread to physical CPU `cpu` (nil: leaves it unpinned).
private func pin(_ loop: any EventLoop, to cpu: Int?) throws(BenchFailure) {
    guard let cpu else { return }
    let rc: Int32
    do {
        rc = try loop.submit { () -> Int32 in cpr_pin_self(Int32(cpu)) == 0 ? 0 : errno }.wait()
    } catch {
        throw BenchFailure("pinning a NIO loop: \(error)")
    }
    if rc != 0 { throw .errno("sched_setaffinity of a NIO loop thread (\(cpu))", rc) }
}
