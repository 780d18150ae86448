import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// `Machine.idleTime(of:)` counts the time a CPU sat parked with nothing to do, so that the interval less its
/// growth is demand: a CPU with work all the time is busy even when other threads take most of its physical CPU,
/// where its thread's CPU time says it barely ran. The balancer judges partitions by it.
@Suite struct IdleTimeTests {
    /// Threads pinned to `physical` that spin until `stop` holds a non-zero value (or 30 s, a bound for a test that
    /// failed before it set it): they take most of that CPU's time.
    private func crowd(_ physical: Int, threads: Int, until stop: Counter) throws -> [pthread_t] {
        try (0..<threads).map { _ in
            try Shim.spawnThread {
                try? Shim.setAffinity(thread: 0, cpus: [physical])
                let deadline = ContinuousClock.now + .seconds(30)
                var i: UInt64 = 0
                while stop.value.load(ordering: .relaxed) == 0 {
                    i &+= 1
                    if i & 0xFFFF == 0, ContinuousClock.now > deadline { break }
                }
            }
        }
    }

    @Test func anIdleCPUsIdleTimeGrowsWithTheClock() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        #expect(eventually { m.cores[1].control.runState == .idle })
        let before = try m.idleTime(of: 1)
        let started = ContinuousClock.now
        usleep(200_000)
        let grown = try m.idleTime(of: 1) - before
        let elapsed = ContinuousClock.now - started
        // Parked throughout: it grew with the clock, the park in progress included (nothing woke the CPU).
        #expect(grown >= elapsed * 0.9 && grown <= elapsed + .milliseconds(5), "idle \(grown) in \(elapsed)")
        #expect(throws: HotplugError.invalidCPU(2)) { try m.idleTime(of: 2) }
        #expect(throws: HotplugError.invalidCPU(-1)) { try m.idleTime(of: -1) }
    }

    @Test func aCPUWithWorkGainsNoIdleTimeWhileOtherThreadsTakeItsPhysicalCPU() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let stop = Counter()
        let gate = Gate()
        try m.submit(on: 1) { gate.spin(limit: .seconds(30)) }   // work: CPU 1 never reaches its idle wait
        #expect(eventually { gate.hasEntered })
        let crowd = try crowd(try m.physicalCPU(of: 1), threads: 3, until: stop)
        let idleBefore = try m.idleTime(of: 1)
        let ranBefore = try #require(try m.cpuTime(of: 1))
        let started = ContinuousClock.now
        usleep(300_000)
        let idle = try m.idleTime(of: 1) - idleBefore
        let ran = try #require(try m.cpuTime(of: 1)) - ranBefore
        let elapsed = ContinuousClock.now - started
        stop.value.store(1, ordering: .relaxed)
        gate.release()
        for thread in crowd { try Shim.join(thread) }
        #expect(idle < elapsed * 0.05, "a CPU with work counted \(idle) idle in \(elapsed)")
        print("idle time: a CPU with work sharing its physical CPU with 3 threads: idle \(idle), ran \(ran) of \(elapsed)")
    }

    /// The balancer's busy share is demand: a partition whose CPU has work all the time reads as busy although
    /// three other threads leave its thread about a quarter of the physical CPU (by CPU time it would read ~0.25,
    /// below the default policy's `high`, and never get a processor).
    @Test func aPartitionWithWorkButLittleCPUTimeReadsAsBusy() throws {
        let pool = try CPUPool(processors: 2)
        let quiet = try pool.makePartition("quiet", owning: [0])
        let loaded = try pool.makePartition("loaded", owning: [1])
        let balancer = try Balancer(pool: pool, partitions: [quiet, loaded])
        let stop = Counter()
        let gate = Gate()
        try loaded.machine.submit(on: loaded.logicalCPU(of: 1)) { gate.spin(limit: .seconds(30)) }
        #expect(eventually { gate.hasEntered })
        let crowd = try crowd(pool.physicalCPU(of: 1), threads: 3, until: stop)
        _ = balancer.sample()
        let started = ContinuousClock.now
        usleep(300_000)
        let loads = balancer.sample()
        let elapsed = ContinuousClock.now - started
        stop.value.store(1, ordering: .relaxed)
        gate.release()
        for thread in crowd { try Shim.join(thread) }
        #expect(loads.count == 2)
        #expect(loads[1].busy >= 0.8, "the loaded partition read as \(loads[1].busy) busy over \(elapsed)")
        #expect(loads[0].busy <= 0.3, "the quiet partition read as \(loads[0].busy) busy")
    }
}
