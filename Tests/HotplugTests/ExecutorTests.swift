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
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let counter = try PinnedCounter(m, cpu: 1)
        for _ in 0..<100 { _ = await counter.increment() }
        #expect(await counter.cpus == Array(repeating: 1, count: 100))
        #expect(await counter.value == 100)
    }

    @Test func assumeIsolatedHoldsOnlyInsideTheExecutorsJobs() async throws {
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

    @Test func aTaskPreferringTheCPURunsThere() async throws {
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

    @Test func detachMovesAnExecutorToAStandInAndAttachBringsItHome() async throws {
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

    @Test func poolJobsRun() async throws {
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

    @Test func asyncCrossCallSuspends() async throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let cpu = try await m.run(on: 1) { m.currentCPU }
        #expect(cpu == 1)
        try m.offline(1)
        await #expect(throws: HotplugError.notOnline(cpu: 1)) { try await m.run(on: 1) { 0 } }
    }

    @Test func jobsAfterShutdownStillRun() async throws {
        let m = try Machine(cpus: 2)
        let counter = try PinnedCounter(m, cpu: 1)
        _ = await counter.increment()
        m.shutdown()
        let value = await counter.increment()
        #expect(value == 2)
        #expect(await counter.cpus.last == .some(nil))
    }
}
