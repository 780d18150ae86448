import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// Every processor is owned by at most one partition, every partition keeps one, and every online CPU's thread is
/// pinned to exactly its processor's CPU (read from the kernel).
private func expectConsistent(_ pool: CPUPool, _ partitions: [Partition], sourceLocation: SourceLocation = #_sourceLocation) throws {
    var owners = [Int](repeating: 0, count: pool.processorCount)
    for partition in partitions {
        #expect(!partition.ownedProcessors.isEmpty, "partition \(partition.name) owns nothing", sourceLocation: sourceLocation)
        for cpu in partition.machine.online {
            let processor = partition.processor(of: cpu)
            owners[processor] += 1
            let tid = try #require(try partition.machine.threadID(of: cpu))
            #expect(try allowedCPUs(ofThread: tid) == "\(pool.physicalCPU(of: processor))", sourceLocation: sourceLocation)
        }
    }
    #expect(owners.allSatisfy { $0 <= 1 }, "processors owned twice: \(owners)", sourceLocation: sourceLocation)
}

@Suite struct PartitionTests {
    @Test func aMoveHandsAProcessorOverAndItsWorkStaysInThePartition() throws {
        let pool = try CPUPool(processors: 4)
        let a = try pool.makePartition("a", owning: [0, 1])
        let b = try pool.makePartition("b", owning: [2, 3])
        try expectConsistent(pool, [a, b])
        #expect(pool.ownership().map { $0?.name } == ["a", "a", "b", "b"])

        // Work queued on the CPU that leaves runs on a's other CPU; its slab objects come home.
        let cache = try SlabCache(name: "a-objects", objectSize: 64, machine: a.machine)
        let leaving = a.logicalCPU(of: 1)
        let objects = try a.machine.run(on: leaving) { try (0..<500).map { _ in UInt(bitPattern: try cache.allocate()) } }
        let ran = Atomic<Int>(0)
        let tasklets = (0..<50).map { _ in Tasklet(a.machine) { ran.add(1, ordering: .relaxed) } }
        try a.machine.run(on: leaving) { for t in tasklets { _ = try t.schedule(on: leaving) } }

        let move = try pool.move(1, from: a, to: b)
        #expect(move.processor == 1 && move.from == "a" && move.to == "b")
        #expect(a.ownedProcessors == [0] && b.ownedProcessors == [1, 2, 3])
        try expectConsistent(pool, [a, b])
        #expect(eventually { ran.load(ordering: .relaxed) == 50 })
        #expect(cache.statistics().cachedPerCPU[leaving] == 0)
        try a.machine.run(on: a.logicalCPU(of: 0)) { for o in objects { cache.free(UnsafeMutableRawPointer(bitPattern: o)!) } }
        #expect(cache.statistics().inUse == 0)

        // The last processor stays; bad moves are typed errors and change nothing.
        #expect(throws: HotplugError.self) { try pool.move(0, from: a, to: b) }
        #expect(throws: HotplugError.self) { try pool.move(2, from: a, to: b) }   // a does not own 2
        #expect(throws: HotplugError.self) { try pool.move(2, from: b, to: b) }
        #expect(throws: HotplugError.self) { _ = try pool.makePartition("c", owning: [3]) }   // owned by b
        #expect(throws: HotplugError.self) { _ = try pool.makePartition("c", owning: [9]) }
        #expect(a.ownedProcessors == [0] && b.ownedProcessors == [1, 2, 3])
        try pool.move(1, from: b, to: a)
        try expectConsistent(pool, [a, b])
    }

    @Test func aFailedAttachGivesTheProcessorBack() throws {
        let pool = try CPUPool(processors: 3)
        let a = try pool.makePartition("a", owning: [0, 1])
        let b = try pool.makePartition("b", owning: [2])
        try b.machine.hotplug.injectFailure(cpu: b.logicalCPU(of: 1), at: .bringup, direction: .startup)
        #expect(throws: HotplugError.self) { try pool.move(1, from: a, to: b) }
        #expect(a.ownedProcessors == [0, 1] && b.ownedProcessors == [2])
        try expectConsistent(pool, [a, b])
        // A failed detach changes nothing either.
        try a.machine.hotplug.injectFailure(cpu: a.logicalCPU(of: 1), at: .teardownCPU, direction: .teardown)
        #expect(throws: HotplugError.self) { try pool.move(1, from: a, to: b) }
        #expect(a.ownedProcessors == [0, 1] && b.ownedProcessors == [2])
        try pool.move(1, from: a, to: b)
        #expect(b.ownedProcessors == [1, 2])
    }

    @Test func seededMovesWithFaultInjectionLoseNothing() throws {
        let seed = ProcessInfo.processInfo.environment["HOTPLUG_SEED"].flatMap { UInt64($0) } ?? 0x1_9A2_2000
        let moves = stressIterations(2_000, long: 10_000)
        var rng = SeededGenerator(seed: seed)
        let pool = try CPUPool(processors: 5)
        let partitions = [try pool.makePartition("p0", owning: [0, 1]), try pool.makePartition("p1", owning: [2, 3]),
                          try pool.makePartition("p2", owning: [4])]
        let caches = try partitions.map { try SlabCache(name: "\($0.name)-objects", objectSize: 48, machine: $0.machine) }
        // Objects held per partition, and tasklet runs expected per partition.
        var held: [[UInt]] = [[], [], []]
        let ran = partitions.map { _ in Counter() }
        var scheduled = [0, 0, 0]
        var succeeded = 0, failed = 0
        for step in 0..<moves {
            // Work on a random CPU of every partition: allocate, free some, schedule tasklets.
            for (index, partition) in partitions.enumerated() {
                guard let cpu = Array(partition.machine.online).randomElement(using: &rng) else { continue }
                let frees = Array(held[index].shuffled(using: &rng).prefix(Int.random(in: 0...4, using: &rng)))
                held[index].removeAll { frees.contains($0) }
                let cache = caches[index]
                let counter = ran[index]
                let count = Int.random(in: 0...4, using: &rng)
                let result = try partition.machine.run(on: cpu) { () -> ([UInt], Int) in
                    for o in frees { cache.free(UnsafeMutableRawPointer(bitPattern: o)!) }
                    let made = try (0..<count).map { _ in UInt(bitPattern: try cache.allocate()) }
                    var newly = 0
                    for _ in 0..<2 where try Tasklet(partition.machine, { counter.value.add(1, ordering: .relaxed) }).schedule() {
                        newly += 1
                    }
                    return (made, newly)
                }
                held[index] += result.0
                scheduled[index] += result.1
            }
            // A random move, sometimes with an injected failure on either side.
            let from = partitions.filter { $0.ownedProcessors.count > 1 }.randomElement(using: &rng)!
            let to = partitions.filter { $0 !== from }.randomElement(using: &rng)!
            let processor = from.ownedProcessors.randomElement(using: &rng)!
            switch Int.random(in: 0..<8, using: &rng) {
            case 0: try to.machine.hotplug.injectFailure(cpu: to.logicalCPU(of: processor), at: .bringup, direction: .startup)
            case 1: try from.machine.hotplug.injectFailure(cpu: from.logicalCPU(of: processor), at: .teardownCPU, direction: .teardown)
            case 2: try to.machine.hotplug.injectFailure(cpu: to.logicalCPU(of: processor), at: .slabPrepare, direction: .startup)
            default: break
            }
            do { try pool.move(processor, from: from, to: to); succeeded += 1 } catch { failed += 1 }
            try expectConsistent(pool, partitions)
            for (index, cache) in caches.enumerated() {
                #expect(cache.statistics().inUse == held[index].count, "step \(step), seed \(seed)")
            }
        }
        #expect(succeeded > moves / 3 && failed > 0, "succeeded \(succeeded), failed \(failed)")
        // Nothing lost: every tasklet ran once per schedule, every object comes home.
        for index in partitions.indices {
            #expect(eventually { ran[index].value.load(ordering: .relaxed) == scheduled[index] }, "partition \(index), seed \(seed)")
            let partition = partitions[index], cache = caches[index], objects = held[index]
            try partition.machine.run(on: partition.machine.online.first { _ in true }!) {
                for o in objects { cache.free(UnsafeMutableRawPointer(bitPattern: o)!) }
            }
            let stats = cache.statistics()
            #expect(stats.inUse == 0 && stats.accountedInUse == 0, "\(stats)")
        }
        print("partition moves: seed \(seed), \(succeeded) moves, \(failed) failed (injected), scheduled \(scheduled)")
    }

    @Test func theBalancerMovesProcessorsTowardsALoadedPartition() throws {
        let pool = try CPUPool(processors: 4)
        let idle = try pool.makePartition("idle", owning: [0, 1, 2])
        let busy = try pool.makePartition("busy", owning: [3])
        let balancer = try Balancer(pool: pool, partitions: [idle, busy],
                                    policy: try HysteresisPolicy(high: 0.5, low: 0.3, patience: 2, cooldown: 1))
        // Nothing is loaded: hysteresis moves nothing.
        for _ in 0..<10 {
            if case .moved(let move, _) = balancer.step() { Issue.record("moved without load: \(move)") }
            usleep(10_000)
        }
        #expect(idle.ownedProcessors == [0, 1, 2] && busy.ownedProcessors == [3])
        // Load: every CPU of `busy` spins in tasklets that reschedule themselves until told to stop.
        let stop = Atomic<Bool>(false)
        let spinning = Locked<[Tasklet]>([])
        for _ in 0..<8 {
            let box = Locked<Tasklet?>(nil)
            let tasklet = Tasklet(busy.machine) {
                let until = ContinuousClock.now + .milliseconds(2)
                while ContinuousClock.now < until {}
                if !stop.load(ordering: .relaxed), let me = box.withLock({ $0 }) { _ = try? me.schedule() }
            }
            box.withLock { $0 = tasklet }
            spinning.withLock { $0.append(tasklet) }
            _ = try tasklet.schedule()
        }
        let started = ContinuousClock.now
        var firstMove: Duration?
        var outcomes: [String] = []   // what happened instead, for the message
        while ContinuousClock.now - started < .seconds(10), busy.ownedProcessors.count < 2 {
            let outcome = balancer.step()
            if case .moved = outcome, firstMove == nil { firstMove = ContinuousClock.now - started }
            if case .failed = outcome { outcomes.append("\(outcome)") }
            usleep(20_000)
        }
        let lastLoads = balancer.sample()
        stop.store(true, ordering: .relaxed)
        let reached = try #require(firstMove, "no processor moved to the loaded partition in 10 s; failed steps: \(outcomes.suffix(3)); loads at the end: \(lastLoads)")
        #expect(busy.ownedProcessors.count >= 2 && idle.ownedProcessors.count >= 1)
        print("balancer: first move towards the loaded partition after \(reached)")
        #expect(eventually { spinning.withLock { $0.allSatisfy { !$0.isScheduled && !$0.isRunning } } })
    }
}

@Suite struct BalancerArgumentTests {
    @Test func policyNumbersAreValidated() throws {
        #expect(throws: HotplugError.invalidArgument(name: "patience", value: "0", valid: ">= 1")) {
            try HysteresisPolicy(patience: 0)
        }
        #expect(throws: HotplugError.invalidArgument(name: "cooldown", value: "-1", valid: ">= 0")) {
            try HysteresisPolicy(cooldown: -1)
        }
        #expect(throws: HotplugError.invalidArgument(name: "low", value: "nan", valid: "a finite number >= 0")) {
            try HysteresisPolicy(low: .nan)
        }
        #expect(throws: HotplugError.invalidArgument(name: "low", value: "-0.1", valid: "a finite number >= 0")) {
            try HysteresisPolicy(low: -0.1)
        }
        #expect(throws: HotplugError.invalidArgument(name: "high", value: "0.2", valid: "a finite number >= low (0.3)")) {
            try HysteresisPolicy(high: 0.2, low: 0.3)
        }
        #expect(throws: HotplugError.invalidArgument(name: "high", value: "inf", valid: "a finite number >= low (0.3)")) {
            try HysteresisPolicy(high: .infinity)
        }
        let policy = try HysteresisPolicy(high: 0.5, low: 0.5, patience: 1, cooldown: 0)
        #expect(policy.high == 0.5 && policy.patience == 1 && policy.cooldown == 0)
        #expect(HysteresisPolicy.standard.high == 0.6 && HysteresisPolicy.standard.low == 0.3)
        #expect(throws: HotplugError.invalidArgument(name: "maxStep", value: "0", valid: ">= 1")) {
            try HysteresisPolicy(maxStep: 0)
        }
        #expect(HysteresisPolicy.standard.maxStep == 8)
    }

    /// How many processors one decision moves: enough for the receiver's work to sit at the middle pressure, as far
    /// as the donor can give, at most `maxStep`, at least one.
    @Test func thePolicyMovesAsManyProcessorsAsTheLoadAsks() throws {
        func load(_ processors: Int, _ pressure: Double) -> PartitionLoad {
            PartitionLoad(name: "p", processors: processors, queuedTasklets: 0, busy: min(1, pressure), pressure: pressure)
        }
        func decision(_ policy: HysteresisPolicy, _ loads: [PartitionLoad]) -> BalancerDecision? {
            var policy = policy
            return policy.decide(loads)
        }
        let one = try HysteresisPolicy(high: 0.6, low: 0.3, patience: 1, cooldown: 0)   // middle 0.45
        // Saturated on 1 processor: work 1 -> 3 processors at 0.45: 2 more.
        #expect(decision(one, [load(6, 0), load(1, 1)]) == BalancerDecision(from: 0, to: 1, count: 2))
        // Queued far beyond its 2 processors (work 8): wants 16 more, maxStep 8 gives 5 (the donor keeps 1).
        #expect(decision(one, [load(6, 0), load(2, 4)]) == BalancerDecision(from: 0, to: 1, count: 5))
        #expect(decision(one, [load(12, 0), load(2, 4)]) == BalancerDecision(from: 0, to: 1, count: 8))
        // The donor's own work bounds it: 6 processors at 0.3 (work 1.8) keep 4.
        #expect(decision(one, [load(6, 0.3), load(2, 4)]) == BalancerDecision(from: 0, to: 1, count: 2))
        // maxStep 1: one processor per move, as before.
        let single = try HysteresisPolicy(high: 0.6, low: 0.3, patience: 1, cooldown: 0, maxStep: 1)
        #expect(decision(single, [load(12, 0), load(2, 4)]) == BalancerDecision(from: 0, to: 1, count: 1))
        // Nothing pressed: no move.
        #expect(decision(one, [load(6, 0), load(1, 0.5)]) == nil)
    }

    /// A policy that asks for a fixed move.
    struct FixedPolicy: BalancerPolicy {
        let decision: BalancerDecision
        mutating func decide(_ loads: [PartitionLoad]) -> BalancerDecision? { decision }
    }

    /// One step moves several processors in one bulk move, keeps the donor's last, and reports a processor whose
    /// attach fails apart while the others move.
    @Test func aStepMovesSeveralProcessorsInOneBulkMove() throws {
        let pool = try CPUPool(processors: 5)
        let a = try pool.makePartition("a", owning: [0, 1, 2, 3])
        let b = try pool.makePartition("b", owning: [4])
        let balancer = try Balancer(pool: pool, partitions: [a, b],
                                    policy: FixedPolicy(decision: BalancerDecision(from: 0, to: 1, count: 9)))
        // The attach of processor 2 in b fails: 3 and 1 move, 2 goes back to a.
        try b.machine.hotplug.injectFailure(cpu: b.logicalCPU(of: 2), at: .bringup, direction: .startup)
        guard case .moved(let moves, let failures) = balancer.step() else {
            Issue.record("the step moved nothing")
            return
        }
        #expect(Set(moves.map(\.processor)) == [1, 3] && moves.allSatisfy { $0.from == "a" && $0.to == "b" })
        #expect(Array(failures.keys) == [2])
        #expect(a.ownedProcessors == [0, 2] && b.ownedProcessors == [1, 3, 4])
        try expectConsistent(pool, [a, b])
        // Asked for more than the donor can give: it keeps one.
        guard case .moved(let more, let none) = balancer.step() else {
            Issue.record("the second step moved nothing")
            return
        }
        #expect(more.map(\.processor) == [2] && none.isEmpty)
        #expect(a.ownedProcessors == [0] && b.ownedProcessors == [1, 2, 3, 4])
        // Nothing left to give: the step stays.
        if case .stayed = balancer.step() {} else { Issue.record("a partition with one processor gave it away") }
        try expectConsistent(pool, [a, b])
    }

    @Test func balancerQueueScaleIsValidated() throws {
        let pool = try CPUPool(processors: 2)
        let a = try pool.makePartition("a", owning: [0])
        let b = try pool.makePartition("b", owning: [1])
        for bad in [0, -1, Double.nan, .infinity] {
            #expect(throws: HotplugError.invalidArgument(name: "queueScale", value: "\(bad)", valid: "a finite number > 0")) {
                _ = try Balancer(pool: pool, partitions: [a, b], queueScale: bad)
            }
        }
        _ = try Balancer(pool: pool, partitions: [a, b], queueScale: 0.5)
    }
}

@Suite struct BulkPartitionMoveTests {
    @Test func severalProcessorsMoveInOneBulkOperationEachWay() throws {
        let pool = try CPUPool(processors: 5)
        let a = try pool.makePartition("a", owning: [0, 1, 2, 3])
        let b = try pool.makePartition("b", owning: [4])
        let move = try pool.move([1, 2, 3], from: a, to: b)
        #expect(move.moved == [1, 2, 3] && move.failures.isEmpty)
        #expect(a.ownedProcessors == [0] && b.ownedProcessors == [1, 2, 3, 4])
        try expectConsistent(pool, [a, b])
        // Every processor of a, at once: refused whole, nothing moved.
        #expect(throws: HotplugError.self) { try pool.move([0], from: a, to: b) }
        #expect(a.ownedProcessors == [0])
        // A processor whose attach fails in the target goes back; the others move.
        try a.machine.hotplug.injectFailure(cpu: a.logicalCPU(of: 2), at: .bringup, direction: .startup)
        let back = try pool.move([2, 3], from: b, to: a)
        #expect(back.moved == [3])
        #expect(Set(back.failures.keys) == [2])
        #expect(a.ownedProcessors == [0, 3] && b.ownedProcessors == [1, 2, 4])
        try expectConsistent(pool, [a, b])
    }
}
