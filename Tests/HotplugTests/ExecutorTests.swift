import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// An actor pinned to a logical CPU's executor; records where its methods ran.
actor PinnedCounter {
    let executor: CPUExecutor
    let machine: Machine
    var value = 0
    var cpus: [Int?] = []

    init(_ machine: Machine, cpu: Int) throws {
        self.machine = machine
        executor = try machine.executor(cpu: cpu)
    }

    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    func increment() -> Int {
        value += 1
        cpus.append(machine.currentCPU)
        return value
    }

    func other(_ peer: PinnedCounter) async -> Int { await peer.increment() }
}

@Suite struct ExecutorTests {
    @Test func aPinnedActorRunsOnItsCPU() async throws {
        try await bounded {
            let m = try Machine(cpus: 2)
            defer { m.shutdown() }
            let counter = try PinnedCounter(m, cpu: 1)
            for _ in 0..<100 { _ = await counter.increment() }
            #expect(await counter.cpus == Array(repeating: 1, count: 100))
            #expect(await counter.value == 100)
        }
    }

    @Test func assumeIsolatedHoldsOnlyInsideTheExecutorsJobs() async throws {
        try await bounded {
            let m = try Machine(cpus: 2)
            defer { m.shutdown() }
            let executor = try m.executor(cpu: 1)
            #expect(executor.isIsolatingCurrentContext() == false)
            let inside = await withTaskExecutorPreference(executor) { executor.isIsolatingCurrentContext() }
            #expect(inside == true)
            let counter = try PinnedCounter(m, cpu: 1)
            let cpu = await counter.other(counter)
            #expect(cpu == 1)
            // The CPU's thread outside a job of the executor (a cross-call) is not isolated to it.
            let inCall = try m.run(on: 1, timeout: .seconds(5)) { executor.isIsolatingCurrentContext() }
            #expect(inCall == false)
        }
    }

    @Test func aTaskPreferringTheCPURunsThere() async throws {
        try await bounded {
            let m = try Machine(cpus: 2)
            defer { m.shutdown() }
            let executor = try m.executor(cpu: 1)
            let seen = await Task(executorPreference: executor) { () -> [Int?] in
                var seen: [Int?] = []
                for _ in 0..<50 {
                    await Task.yield()
                    seen.append(m.currentCPU)
                }
                return seen
            }.value
            #expect(seen == Array(repeating: 1, count: 50))
        }
    }

    @Test func detachMovesAnExecutorToAStandInAndAttachBringsItHome() async throws {
        try await bounded {
            let m = try Machine(cpus: 3)
            defer { m.shutdown() }
            let counter = try PinnedCounter(m, cpu: 2)
            _ = await counter.increment()
            try m.offline(2)
            _ = await counter.increment()
            try m.online(2)
            _ = await counter.increment()
            let cpus = await counter.cpus
            #expect(cpus.count == 3)
            #expect(cpus[0] == 2)
            #expect(cpus[1] != nil && cpus[1] != 2)
            #expect(cpus[2] == 2)
        }
    }

    @Test func poolJobsRun() async throws {
        try await bounded {
            let m = try Machine(cpus: 2)
            defer { m.shutdown() }
            let total = await withTaskGroup(of: Int?.self) { group in
                for _ in 0..<200 {
                    group.addTask(executorPreference: m.pool) { m.currentCPU }
                }
                var count = 0
                for await cpu in group where cpu != nil { count += 1 }
                return count
            }
            #expect(total == 200)
        }
    }

    @Test func asyncCrossCallSuspends() async throws {
        try await bounded {
            let m = try Machine(cpus: 2)
            defer { m.shutdown() }
            let cpu = try await m.run(on: 1) { m.currentCPU }
            #expect(cpu == 1)
            try m.offline(1)
            await #expect(throws: HotplugError.notOnline(cpu: 1)) { try await m.run(on: 1) { 0 } }
        }
    }

    @Test func jobsAfterShutdownStillRun() async throws {
        try await bounded {
            let m = try Machine(cpus: 2)
            let counter = try PinnedCounter(m, cpu: 1)
            _ = await counter.increment()
            m.shutdown()
            let value = await counter.increment()
            #expect(value == 2)
            #expect(await counter.cpus.last == .some(nil))
        }
    }
}

/// Records job runs in order: an id and the logical CPU each ran on.
final class JobLog: Sendable {
    private let entries = Locked<[(id: Int, cpu: Int?)]>([])
    func record(_ id: Int, _ cpu: Int?) { entries.withLock { $0.append((id, cpu)) } }
    var ids: [Int] { entries.withLock { $0.map(\.id) } }
    var cpus: [Int?] { entries.withLock { $0.map(\.cpu) } }
    var count: Int { entries.withLock { $0.count } }
}

/// An actor pinned to a CPU's executor that checks, in every method, that no other job of its executor runs at the
/// same time (an in-flight counter shared by every actor on that executor).
actor GuardedShard {
    let executor: CPUExecutor
    let inFlight: Counter
    let overlaps: Counter
    var total = 0

    init(executor: CPUExecutor, inFlight: Counter, overlaps: Counter) {
        self.executor = executor
        self.inFlight = inFlight
        self.overlaps = overlaps
    }

    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    func add(_ amount: Int) -> Int {
        if inFlight.value.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue != 1 {
            overlaps.value.add(1, ordering: .relaxed)
        }
        // A little work in the middle (about a microsecond), so that a second job running now would overlap.
        let until = ContinuousClock.now + .microseconds(1)
        while ContinuousClock.now < until {}
        total += amount
        inFlight.value.subtract(1, ordering: .acquiringAndReleasing)
        return total
    }
}

/// Runs `body` in a task of its own and waits at most `limit` for it: a job the executors lose makes the test
/// fail (with the time it waited) instead of hanging it. The body's error comes out unchanged.
///
/// The limit counts from the moment the body's task starts, not from the call: in a parallel run of every suite the
/// cooperative pool may be taken by blocking tests for tens of seconds before the task gets a thread, and that wait
/// is no lost job. A task that never starts at all is reported after `limit` plus `startLimit`.
func bounded(_ limit: Duration = .seconds(60), startLimit: Duration = .seconds(240),
             _ body: @escaping @Sendable () async throws -> Void) async throws {
    let started = Counter()   // 1 once the body's task runs
    let outcome = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, any Error>?, Never>) in
        let once = Once()
        Task {
            started.value.store(1, ordering: .releasing)   // partner: the watchdog's acquiring load
            do { try await body(); once.run { continuation.resume(returning: .success(())) } }
            catch { once.run { continuation.resume(returning: .failure(error)) } }
        }
        Thread.detachNewThread {
            let waitingSince = ContinuousClock.now
            while started.value.load(ordering: .acquiring) == 0, ContinuousClock.now - waitingSince < startLimit { usleep(10_000) }
            Thread.sleep(forTimeInterval: Double(limit.components.seconds))
            once.run { continuation.resume(returning: nil) }
        }
    }
    guard let outcome else {
        let when = started.value.load(ordering: .acquiring) != 0 ? "\(limit) after it started" : "\(startLimit + limit): it never started"
        Issue.record("did not finish within \(when): a job was lost or never resumed")
        return
    }
    try outcome.get()
}

/// Runs a closure at most once, whichever caller comes first.
final class Once: Sendable {
    private let done = Atomic<Bool>(false)
    func run(_ body: () -> Void) {
        if !done.exchange(true, ordering: .acquiringAndReleasing) { body() }
    }
}

/// Runs blocking `work` on a thread of its own (never on the cooperative pool, which a blocked hotplug operation
/// would starve), and returns once it has returned.
private func onThread(_ work: @escaping @Sendable () throws -> Void) async throws {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
        Thread.detachNewThread { continuation.resume(with: Result { try work() }) }
    }
}

/// Detaches `cpu` while its jobs wait behind gates: the detach starts on a thread of its own, and the gates open
/// 50 ms later (the detach's stop_machine waits for them).
private func detach(_ m: Machine, _ cpu: Int, releasing gates: [Gate]) async throws {
    releaseLater(gates)
    try await onThread { try m.offline(cpu) }
}

/// Opens `gates` 50 ms from now, from a thread of its own.
private func releaseLater(_ gates: [Gate]) {
    Thread.detachNewThread {
        usleep(50_000)
        for gate in gates { gate.release() }
    }
}

/// Keeps `cpu` busy in a cross-call (no safe point: its jobs wait) until the gate opens.
private func occupy(_ m: Machine, _ cpu: Int) throws -> Gate {
    let gate = Gate()
    try m.submit(on: cpu) { gate.spin() }
    #expect(eventually { gate.hasEntered })
    return gate
}

@Suite struct ExecutorOrderTests {
    @Test func higherPriorityFirstAndFIFOWithinAPriority() async throws {
        try await bounded {
            let m = try Machine(cpus: 2)
            defer { m.shutdown() }
            let executor = try m.executor(cpu: 1)
            let log = JobLog()
            let gate = try occupy(m, 1)
            // Enqueued while CPU 1 is busy: they wait in its executor's queue.
            let plan: [(Int, TaskPriority)] = [(0, .low), (1, .high), (2, .medium), (3, .high), (4, .low),
                                               (5, .background), (6, .medium), (7, .high)]
            var tasks: [Task<Void, Never>] = []
            for (id, priority) in plan {
                tasks.append(Task(executorPreference: executor, priority: priority) { log.record(id, m.currentCPU) })
            }
            #expect(executor.queuedJobs == plan.count)
            gate.release()
            for task in tasks { await task.value }
            #expect(log.ids == [1, 3, 7, 2, 6, 0, 4, 5])
            #expect(log.cpus.allSatisfy { $0 == 1 })
        }
    }

    @Test func jobsQueuedOnADetachedCPUMoveInOrderAndRunOnce() async throws {
        try await bounded {
            let m = try Machine(cpus: 3)
            defer { m.shutdown() }
            let executor = try m.executor(cpu: 2)
            let log = JobLog()
            let gate = try occupy(m, 2)
            let count = 500
            var tasks: [Task<Void, Never>] = []
            for id in 0..<count {
                tasks.append(Task(executorPreference: executor) { log.record(id, m.currentCPU) })
            }
            // Detach CPU 2 while its jobs wait; its stop_machine waits for the gate, which opens meanwhile.
            try await detach(m, 2, releasing: [gate])
            for task in tasks { await task.value }
            #expect(log.ids == Array(0..<count))   // each once, in order
            // At most the one job that ran before CPU 2 saw the stop ran there; the rest ran on a stand-in.
            #expect(log.cpus.filter { $0 == 2 }.count <= 1)
            #expect(log.cpus.allSatisfy { $0 != nil })
            // Attached again, the executor is home.
            try m.online(2)
            let home = await Task(executorPreference: executor) { m.currentCPU }.value
            #expect(home == 2)
        }
    }

    @Test func aStandInRunsOnlyTheExecutorsItHosts() async throws {
        try await bounded {
            let m = try Machine(cpus: 3)
            defer { m.shutdown() }
            try m.offline(2)   // CPU 0 stands in for CPU 2's executor
            let log = JobLog()
            let gate = try occupy(m, 1)
            let home = try m.executor(cpu: 1)
            let tasks = (0..<50).map { id in Task(executorPreference: home) { log.record(id, m.currentCPU) } }
            // CPU 0 runs its own and its guest's jobs meanwhile; CPU 1's executor is not its guest.
            for _ in 0..<20 {
                _ = await Task(executorPreference: try m.executor(cpu: 2)) { m.currentCPU }.value
                _ = await Task(executorPreference: try m.executor(cpu: 0)) { m.currentCPU }.value
            }
            #expect(log.count == 0)
            gate.release()
            for task in tasks { await task.value }
            #expect(log.ids == Array(0..<50))
            #expect(log.cpus.allSatisfy { $0 == 1 })
        }
    }

    @Test func aSerialExecutorIsNeverConcurrentAcrossSeededDetachAttachWithFaults() async throws {
        try await bounded {
            let cycles = stressIterations(1_000, long: 10_000)
            let m = try Machine(cpus: 3)
            defer { m.shutdown() }
            let overlaps = Counter()
            var shards: [GuardedShard] = []
            for cpu in 0..<3 {
                // Two actors per executor: they share its in-flight counter.
                let inFlight = Counter()
                for _ in 0..<2 {
                    shards.append(GuardedShard(executor: try m.executor(cpu: cpu), inFlight: inFlight, overlaps: overlaps))
                }
            }
            let stop = Flag()
            let sent = Counter()
            let targets = shards
            let clients = (0..<16).map { client in
                Task.detached { () -> Int in
                    var done = 0
                    var i = client
                    while !stop.isSet {
                        let shard = targets[i % targets.count]
                        _ = await shard.add(1)
                        sent.value.add(1, ordering: .relaxed)
                        done += 1
                        i &+= 7
                    }
                    return done
                }
            }
            var rng = SeededGenerator(seed: 17)
            let points: [HotplugState] = [.bringup, .executorsDead, .teardownCPU]
            for _ in 0..<cycles {
                let cpu = 1 + Int(rng.next() % 2)
                if rng.next() % 4 == 0 {
                    let point = points[Int(rng.next() % UInt64(points.count))]
                    try? m.hotplug.injectFailure(cpu: cpu, at: point, direction: point == .teardownCPU ? .teardown : .startup)
                }
                if m.online.contains(cpu) { try? m.offline(cpu) } else { try? m.online(cpu) }
            }
            stop.set()
            var done = 0
            for client in clients { done += await client.value }
            var total = 0
            for shard in shards { total += await shard.total }
            #expect(overlaps.value.load(ordering: .relaxed) == 0)
            #expect(total == done)
            #expect(sent.value.load(ordering: .relaxed) == done)
        }
    }
}

/// A flag set once, read by many.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}


@Suite struct PoolExecutorTests {
    @Test func aJobEnqueuedOnACPUStaysThere() async throws {
        try await bounded {
            let m = try Machine(cpus: 2)
            defer { m.shutdown() }
            let log = JobLog()
            let gate = try occupy(m, 0)   // CPU 0 cannot take a share meanwhile
            let executor = try m.executor(cpu: 1)
            let tasks = await Task(executorPreference: executor) { () -> [Task<Void, Never>] in
                (0..<50).map { id in Task(executorPreference: m.pool) { log.record(id, m.currentCPU) } }
            }.value
            for task in tasks { await task.value }
            gate.release()
            #expect(log.count == 50)
            #expect(log.cpus.allSatisfy { $0 == 1 })
        }
    }

    @Test func jobsFromOutsideGoToTheLeastLoadedCPU() async throws {
        try await bounded {
            let m = try Machine(cpus: 2)
            defer { m.shutdown() }
            let log = JobLog()
            let gates = [try occupy(m, 0), try occupy(m, 1)]
            let tasks = (0..<40).map { id in Task(executorPreference: m.pool) { log.record(id, m.currentCPU) } }
            // Both CPUs are busy: placement alone spreads them, one each in turn.
            #expect(eventually { (try? m.queuedJobs(on: 0)) == 20 && (try? m.queuedJobs(on: 1)) == 20 })
            for gate in gates { gate.release() }
            for task in tasks { await task.value }
            #expect(log.count == 40)
        }
    }

    @Test func aCPUThatRunsDryTakesJobsFromABusyOne() async throws {
        try await bounded {
            let m = try Machine(cpus: 2)
            defer { m.shutdown() }
            let log = JobLog()
            let executor = try m.executor(cpu: 1)
            // 200 jobs of about 200 us each, all enqueued on CPU 1: CPU 0 is woken and takes a share.
            let tasks = await Task(executorPreference: executor) { () -> [Task<Void, Never>] in
                (0..<200).map { id in
                    Task(executorPreference: m.pool) {
                        let until = ContinuousClock.now + .microseconds(200)
                        while ContinuousClock.now < until {}
                        log.record(id, m.currentCPU)
                    }
                }
            }.value
            for task in tasks { await task.value }
            #expect(log.count == 200)
            #expect(Set(log.ids).count == 200)
            let onZero = log.cpus.filter { $0 == 0 }.count
            #expect(onZero >= 20, "CPU 0 ran \(onZero) of 200")
        }
    }

    @Test func poolJobsOfADetachedCPURunOnASurvivor() async throws {
        try await bounded {
            let m = try Machine(cpus: 3)
            defer { m.shutdown() }
            m.executorEngine.hub.stealing = false   // CPU 2's jobs stay there until its takeover
            let log = JobLog()
            let gates = [try occupy(m, 0), try occupy(m, 1), try occupy(m, 2)]
            let tasks = (0..<30).map { id in Task(executorPreference: m.pool) { log.record(id, m.currentCPU) } }
            #expect(eventually { (try? m.queuedJobs(on: 2)) == 10 })
            // What `executors:starting`'s teardown does on a dying CPU: it runs no job from now on, so its 10 pool
            // jobs are still queued when it is dead, and only the takeover can run them.
            m.executorEngine.hub.cpus[2].active.store(false, ordering: .releasing)
            try await detach(m, 2, releasing: gates)
            for task in tasks { await task.value }
            #expect(log.count == 30)
            #expect(Set(log.ids).count == 30)
            #expect(log.cpus.allSatisfy { $0 == 0 || $0 == 1 })
        }
    }
}

@Suite struct ExecutorShutdownTests {
    @Test func queuedAndLateJobsRunSeriallyAfterShutdown() async throws {
        try await bounded {
            let m = try Machine(cpus: 2)
            let executor = try m.executor(cpu: 1)
            let overlaps = Counter()
            let inFlight = Counter()
            let shard = GuardedShard(executor: executor, inFlight: inFlight, overlaps: overlaps)
            let gate = try occupy(m, 1)
            let queued = (0..<100).map { _ in Task(executorPreference: executor) { await shard.add(1) } }
            #expect(eventually { executor.queuedJobs > 0 })
            releaseLater([gate])
            try await onThread { _ = m.shutdown() }
            for task in queued { _ = await task.value }
            // Enqueued after shutdown: they still run, on the fallback thread, still one at a time.
            let late = (0..<100).map { _ in Task(executorPreference: executor) { await shard.add(1) } }
            for task in late { _ = await task.value }
            #expect(await shard.total == 200)
            #expect(overlaps.value.load(ordering: .relaxed) == 0)
            let isolated = await Task(executorPreference: executor) { executor.isIsolatingCurrentContext() }.value
            #expect(isolated == true)
        }
    }

    @Test func anAsyncCrossCallPassesTheBodysErrorThrough() async throws {
        try await bounded {
            struct Refused: Error, Equatable {}
            let m = try Machine(cpus: 2)
            defer { m.shutdown() }
            await #expect(throws: Refused()) { try await m.run(on: 1) { () throws -> Int in throw Refused() } }
            await #expect(throws: HotplugError.invalidCPU(9)) { try await m.run(on: 9) { 0 } }
        }
    }
}
