import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// Seeded churn: logical CPUs of two (synthetic) nodes allocate and free objects handed between them, a foreign
/// thread frees and allocates too, while another thread attaches and detaches CPUs with injected failures. The
/// in-use count is exact after every operation; at every pause of the hotplug thread the lists agree with it and
/// no offline CPU caches anything; at the end everything is freed and shrunk to zero bytes mapped.
@Suite struct SlabStressTests {
    /// The hotplug side: attaches and detaches CPUs 1...3 until told to stop, injecting failures, and pauses on
    /// request so that the lists can be checked while nothing moves.
    final class HotplugDriver: @unchecked Sendable {
        // @unchecked: `rng` is used by the driver's thread only.
        let stop = Atomic<Bool>(false)
        let pauseRequested = Atomic<Bool>(false)
        let paused = Atomic<Bool>(false)
        let attaches = Atomic<Int>(0)
        let detaches = Atomic<Int>(0)
        let failures = Atomic<Int>(0)
        let done = DispatchSemaphore(value: 0)
        var rng: SeededGenerator

        init(seed: UInt64) { rng = SeededGenerator(seed: seed) }

        func run(_ m: Machine, onlineState: HotplugState) {
            while !stop.load(ordering: .acquiring) {
                if pauseRequested.load(ordering: .acquiring) {
                    paused.store(true, ordering: .releasing)
                    while pauseRequested.load(ordering: .acquiring) && !stop.load(ordering: .acquiring) { usleep(50) }
                    paused.store(false, ordering: .releasing)
                    continue
                }
                let cpu = Int.random(in: 1...3, using: &rng)
                let inject = Int.random(in: 0..<4, using: &rng) == 0
                do {
                    if (try m.state(of: cpu)) == .online {
                        if inject {
                            let point = [HotplugState.teardownCPU, onlineState].randomElement(using: &rng)!
                            try m.hotplug.injectFailure(cpu: cpu, at: point, direction: .teardown)
                        }
                        try m.offline(cpu)
                        detaches.add(1, ordering: .relaxed)
                    } else {
                        if inject {
                            let point = [HotplugState.bringup, .slabPrepare, onlineState].randomElement(using: &rng)!
                            try m.hotplug.injectFailure(cpu: cpu, at: point, direction: .startup)
                        }
                        try m.online(cpu)
                        attaches.add(1, ordering: .relaxed)
                    }
                } catch {
                    failures.add(1, ordering: .relaxed)
                }
                usleep(UInt32.random(in: 0...300, using: &rng))
            }
            done.signal()
        }

        /// Waits until the driver sits between two operations.
        func pause() {
            pauseRequested.store(true, ordering: .releasing)
            while !paused.load(ordering: .acquiring) { usleep(50) }
        }

        func resume() { pauseRequested.store(false, ordering: .releasing) }
    }

    @Test func churnAcrossCPUsWhileCPUsComeAndGoKeepsExactCounts() throws {
        let seed = ProcessInfo.processInfo.environment["HOTPLUG_SEED"].flatMap { UInt64($0) } ?? 0x51AB_2000
        let operations = stressIterations(1_500, long: 20_000)
        var rng = SeededGenerator(seed: seed)
        let m = try Machine(topology: try Topology.synthetic(nodes: 2, cpusPerNode: 2))
        defer { m.shutdown() }
        let onlineState = try m.hotplug.register("stress:online", section: .online, startup: { _ in }, teardown: { _ in })
        // Small magazines, slabs and depots: every slow path runs often.
        let cache = try SlabCache(name: "stress", objectSize: 48, machine: m,
                                  options: .init(magazineCapacity: 8, slabBytes: 8192, minimumFreeSlabsPerNode: 0,
                                                 depotMagazinesPerNode: 2))
        let pool = Locked<[UInt]>([])
        let driver = HotplugDriver(seed: seed &+ 1)
        Thread { driver.run(m, onlineState: onlineState) }.start()
        var crossCalls = 0, foreignOps = 0, concurrentRounds = 0, pauses = 0

        for operation in 0..<operations {
            let kind = Int.random(in: 0..<20, using: &rng)
            if kind == 0 {
                // This (foreign) thread frees a few objects from the pool and allocates a few.
                let frees = Int.random(in: 0...5, using: &rng)
                let allocations = Int.random(in: 0...5, using: &rng)
                let victims = pool.withLock { pool in (0..<min(frees, pool.count)).map { _ in pool.removeLast() } }
                for object in victims { cache.free(UnsafeMutableRawPointer(bitPattern: object)!) }
                let made = try (0..<allocations).map { _ in UInt(bitPattern: try cache.allocate()) }
                pool.withLock { $0 += made }
                foreignOps += 1
            } else if kind == 1 {
                // Every online CPU churns at once (net zero), racing the others' remote frees.
                let rounds = Int.random(in: 50...200, using: &rng)
                do {
                    _ = try m.runOnEach { cpu in
                        var local: [UInt] = []
                        var generator = SeededGenerator(seed: seed ^ UInt64(cpu * 7919 + rounds))
                        for _ in 0..<rounds {
                            if local.isEmpty || Bool.random(using: &generator) {
                                local.append(UInt(bitPattern: try cache.allocate()))
                            } else {
                                cache.free(UnsafeMutableRawPointer(bitPattern: local.removeLast())!)
                            }
                        }
                        for object in local { cache.free(UnsafeMutableRawPointer(bitPattern: object)!) }
                    }
                    concurrentRounds += 1
                } catch {}   // a CPU went offline under us: the bodies that ran were net zero
            } else {
                // One CPU allocates some objects and frees some that others allocated (often on the other node).
                let cpu = Int.random(in: 0...3, using: &rng)
                let allocations = Int.random(in: 0...24, using: &rng)
                let frees = Int.random(in: 0...24, using: &rng)
                let pick = UInt64.random(in: 0...UInt64.max, using: &rng)
                do {
                    try m.run(on: cpu) {
                        let victims = pool.withLock { pool -> [UInt] in
                            var generator = SeededGenerator(seed: pick)
                            return (0..<min(frees, pool.count)).map { _ in
                                pool.remove(at: Int.random(in: 0..<pool.count, using: &generator))
                            }
                        }
                        for object in victims { cache.free(UnsafeMutableRawPointer(bitPattern: object)!) }
                        let made = try (0..<allocations).map { _ in UInt(bitPattern: try cache.allocate()) }
                        pool.withLock { $0 += made }
                    }
                    crossCalls += 1
                } catch {}   // not online right now
            }
            let held = pool.withLock { $0.count }
            let inUse = cache.statistics().inUse
            #expect(inUse == held, "operation \(operation), seed \(seed)")
            if inUse != held { break }

            if operation % 150 == 149 {
                driver.pause()
                let stats = cache.statistics()
                let online = m.online
                #expect(stats.accountedInUse == held, "operation \(operation), seed \(seed): \(stats)")
                for cpu in 0..<4 where !online.contains(cpu) {
                    #expect(stats.cachedPerCPU[cpu] == 0, "offline CPU \(cpu) caches objects, seed \(seed)")
                }
                pauses += 1
                driver.resume()
            }
        }
        driver.stop.store(true, ordering: .releasing)
        driver.done.wait()

        // The run exercised what it claims to.
        #expect(crossCalls > operations / 4)
        #expect(foreignOps > 0 && concurrentRounds > 0 && pauses > 0)
        #expect(driver.attaches.load(ordering: .relaxed) > 0 && driver.detaches.load(ordering: .relaxed) > 0)
        #expect(driver.failures.load(ordering: .relaxed) > 0, "no injected failure was hit")

        print("slab stress: seed \(seed), \(operations) operations, \(crossCalls) cross-calls, \(foreignOps) foreign, \(concurrentRounds) concurrent rounds, \(pauses) pauses; \(driver.attaches.load(ordering: .relaxed)) attaches, \(driver.detaches.load(ordering: .relaxed)) detaches, \(driver.failures.load(ordering: .relaxed)) failed operations")

        // Everything freed (by the CPUs still online and this thread), then shrunk: nothing in use, nothing mapped.
        let rest = pool.withLock { pool -> [UInt] in defer { pool.removeAll() }; return pool }
        let online = Array(m.online)
        for (index, object) in rest.enumerated() {
            if index % 2 == 0 { cache.free(UnsafeMutableRawPointer(bitPattern: object)!) } else {
                try m.run(on: online[index % online.count]) { cache.free(UnsafeMutableRawPointer(bitPattern: object)!) }
            }
        }
        let stats = cache.statistics()
        #expect(stats.inUse == 0 && stats.accountedInUse == 0, "\(stats)")
        try cache.shrink()
        #expect(cache.statistics().bytesMapped == 0)
    }
}
