import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// Object addresses travel between threads as bit patterns (raw pointers are not Sendable).
private func pointer(_ bits: UInt) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: bits)! }

private func allocate(_ cache: SlabCache, _ count: Int, on cpu: Int) throws -> [UInt] {
    try cache.machine.run(on: cpu) { try (0..<count).map { _ in UInt(bitPattern: try cache.allocate()) } }
}

private func free(_ cache: SlabCache, _ objects: [UInt], on cpu: Int) throws {
    try cache.machine.run(on: cpu) { for object in objects { cache.free(pointer(object)) } }
}

/// An object's second word, where the race test's users write (a typed access, which the thread sanitizer sees).
private func tag(_ object: UInt) -> UnsafeMutablePointer<UInt64> {
    (pointer(object) + 8).assumingMemoryBound(to: UInt64.self)
}

/// Frees on a plain thread that is none of the machine's CPUs.
private func freeOnForeignThread(_ cache: SlabCache, _ objects: [UInt]) {
    let done = DispatchSemaphore(value: 0)
    Thread {
        for object in objects { cache.free(pointer(object)) }
        done.signal()
    }.start()
    done.wait()
}

/// Every object is in one place: the counters and the lists agree.
private func expectAccounted(_ cache: SlabCache, inUse expected: Int, sourceLocation: SourceLocation = #_sourceLocation) {
    let stats = cache.statistics()
    #expect(stats.inUse == expected, "in use (counters)", sourceLocation: sourceLocation)
    #expect(stats.accountedInUse == expected, "in use (lists): \(stats)", sourceLocation: sourceLocation)
}

@Suite struct SlabTests {
    @Test func badGeometryIsATypedError() throws {
        let m = try Machine(cpus: 1)
        for (size, alignment) in [(0, 16), (1 << 21, 16), (64, 3), (64, 8192)] {
            #expect(throws: HotplugError.self) { _ = try SlabCache(name: "bad", objectSize: size, alignment: alignment, machine: m) }
        }
        #expect(throws: HotplugError.self) {
            _ = try SlabCache(name: "bad", objectSize: 64, machine: m, options: .init(slabBytes: 5000))
        }
        #expect(throws: HotplugError.self) {
            _ = try SlabCache(name: "bad", objectSize: 64, machine: m, options: .init(magazineCapacity: 0))
        }
    }

    @Test func aShutDownMachineDrainsEveryCPUAndRefusesNewCaches() throws {
        let m = try Machine(cpus: 3)
        let cache = try SlabCache(name: "shutdown", objectSize: 64, machine: m)
        var kept: [UInt] = []
        for cpu in 0..<3 {
            let objects = try allocate(cache, 300, on: cpu)
            try free(cache, Array(objects[100...]), on: cpu)   // every CPU caches something
            kept += objects[..<100]
        }
        m.shutdown()
        #expect(cache.statistics().cachedPerCPU == [0, 0, 0])
        expectAccounted(cache, inUse: 300)
        #expect(throws: HotplugError.self) { _ = try SlabCache(name: "late", objectSize: 64, machine: m) }
        // The cache itself still serves threads that are not CPUs, and everything comes home.
        freeOnForeignThread(cache, kept)
        let more = try cache.allocate()
        cache.free(more)
        expectAccounted(cache, inUse: 0)
        try cache.shrink()
        #expect(cache.statistics().bytesMapped == 0)
    }

    @Test func objectsAreAlignedDistinctAndInsideTheirSlab() throws {
        let m = try Machine(cpus: 2)
        for alignment in [1, 8, 64, 256] {
            let cache = try SlabCache(name: "align", objectSize: 40, alignment: alignment, machine: m)
            let objects = try allocate(cache, 3 * cache.objectsPerSlab, on: 1)
            #expect(Set(objects).count == objects.count)
            #expect(objects.allSatisfy { $0 % UInt(alignment) == 0 })
            let slabs = Set(objects.map { $0 & ~UInt(cache.slabBytes - 1) })
            #expect(slabs.count >= 3)
            #expect(cache.statistics().bytesMapped == slabs.count * cache.slabBytes)
            try free(cache, objects, on: 0)
            expectAccounted(cache, inUse: 0)
        }
    }

    @Test func anObjectFreedByAnotherCPUIsReused() throws {
        let m = try Machine(cpus: 2)
        let cache = try SlabCache(name: "other-cpu", objectSize: 64, machine: m)
        let objects = try allocate(cache, 3000, on: 0)
        expectAccounted(cache, inUse: 3000)
        let mapped = cache.statistics().bytesMapped
        try free(cache, objects, on: 1)
        expectAccounted(cache, inUse: 0)
        // Again, on both CPUs: nothing new is mapped, and CPU 1 gets back objects it freed.
        let again = try allocate(cache, 3000, on: 1)
        #expect(cache.statistics().bytesMapped == mapped)
        #expect(Set(again).isSubset(of: Set(objects).union(again)))
        #expect(!Set(again).isDisjoint(with: Set(objects)))
        try free(cache, again, on: 0)
        expectAccounted(cache, inUse: 0)
    }

    @Test func anObjectFreedByAForeignThreadGoesHomeAndIsReused() throws {
        let m = try Machine(cpus: 2)
        let cache = try SlabCache(name: "foreign", objectSize: 64, machine: m)
        let objects = try allocate(cache, 3000, on: 1)
        let mapped = cache.statistics().bytesMapped
        freeOnForeignThread(cache, objects)
        let stats = cache.statistics()
        #expect(stats.foreignFreed == 3000)
        #expect(stats.nodes.map(\.remotePending).reduce(0, +) == 3000)   // on the home node's remote-free stack
        expectAccounted(cache, inUse: 0)
        let again = try allocate(cache, 3000, on: 0)
        #expect(cache.statistics().bytesMapped == mapped)
        #expect(cache.statistics().nodes.map(\.remotePending).reduce(0, +) < 3000)
        #expect(!Set(again).isDisjoint(with: Set(objects)))
        // A foreign thread allocates too (under the node's lock), and frees on a CPU.
        let foreign = try (0..<100).map { _ in UInt(bitPattern: try cache.allocate()) }
        expectAccounted(cache, inUse: 3100)
        try free(cache, again + foreign, on: 1)
        expectAccounted(cache, inUse: 0)
    }

    @Test func detachDrainsTheCPUsMagazinesAndItsObjectsAreReused() throws {
        let m = try Machine(cpus: 3)
        let cache = try SlabCache(name: "detach", objectSize: 96, machine: m)
        let kept = try allocate(cache, 2000, on: 2)
        let churn = try allocate(cache, 500, on: 2)
        try free(cache, churn, on: 2)                      // CPU 2's magazines now hold objects
        #expect(cache.statistics().cachedPerCPU[2] > 0)
        try m.offline(2)
        let stats = cache.statistics()
        #expect(stats.cachedPerCPU[2] == 0)
        expectAccounted(cache, inUse: 2000)
        // Objects of the detached CPU, freed by another CPU and by a foreign thread: home, never leaked.
        try free(cache, Array(kept[..<1000]), on: 1)
        freeOnForeignThread(cache, Array(kept[1000...]))
        expectAccounted(cache, inUse: 0)
        let mapped = cache.statistics().bytesMapped
        let again = try allocate(cache, 2500, on: 0)
        #expect(cache.statistics().bytesMapped <= mapped)
        #expect(!Set(again).isDisjoint(with: Set(kept)))
        // Attach again: slab:prepare gives it magazines (a full one from the depot when there is one).
        try free(cache, again, on: 0)
        try m.online(2)
        let back = try allocate(cache, 100, on: 2)
        #expect(cache.statistics().bytesMapped <= mapped)
        try free(cache, back, on: 2)
        expectAccounted(cache, inUse: 0)
    }

    @Test func attachGivesMagazinesAndARolledBackAttachLeavesNone() throws {
        let m = try Machine(cpus: 2, configuration: .init(initiallyOnline: 1))
        let cache = try SlabCache(name: "prepare", objectSize: 32, machine: m)
        let objects = try allocate(cache, 1000, on: 0)
        try free(cache, objects, on: 0)       // full magazines reach node 0's depot
        #expect(cache.statistics().nodes[0].depotMagazines > 0)
        // A failed bring-up rolls the attach back past slab:prepare: the magazines it gave go back.
        try m.configure(1)
        try m.hotplug.injectFailure(cpu: 1, at: .bringup, direction: .startup)
        #expect(throws: HotplugError.self) { try m.online(1) }
        #expect(cache.statistics().cachedPerCPU[1] == 0)
        expectAccounted(cache, inUse: 0)
        try m.online(1)
        #expect(cache.statistics().cachedPerCPU[1] == cache.magazineCapacity)   // a full magazine from the depot
        expectAccounted(cache, inUse: 0)
    }

    @Test func shrinkAfterEverythingIsFreedUnmapsEverything() throws {
        let m = try Machine(cpus: 3)
        let cache = try SlabCache(name: "shrink", objectSize: 200, machine: m)
        var all: [UInt] = []
        for cpu in 0..<3 { all += try allocate(cache, 1500, on: cpu) }
        try free(cache, Array(all[..<1500]), on: 1)            // into CPU 1's magazines and the depot
        freeOnForeignThread(cache, Array(all[1500..<3000]))    // onto the remote-free stack
        try free(cache, Array(all[3000...]), on: 0)
        #expect(cache.statistics().bytesMapped > 0)
        try cache.shrink()
        let stats = cache.statistics()
        #expect(stats.bytesMapped == 0)
        #expect(stats.cachedPerCPU.allSatisfy { $0 == 0 })
        #expect(stats.nodes.allSatisfy { $0.fullSlabs + $0.partialSlabs + $0.freeSlabs + $0.depotMagazines == 0 })
        expectAccounted(cache, inUse: 0)
        // The cache still works after a shrink.
        let more = try allocate(cache, 10, on: 2)
        try free(cache, more, on: 2)
        expectAccounted(cache, inUse: 0)
    }

    @Test func shrinkKeepsSlabsThatHoldObjectsInUse() throws {
        let m = try Machine(cpus: 2)
        let cache = try SlabCache(name: "shrink-partial", objectSize: 64, machine: m)
        let objects = try allocate(cache, 2 * cache.objectsPerSlab, on: 1)
        try free(cache, Array(objects.dropFirst()), on: 0)
        try cache.shrink()
        let stats = cache.statistics()
        #expect(stats.bytesMapped == cache.slabBytes)      // the one slab still holding objects[0]
        expectAccounted(cache, inUse: 1)
        try free(cache, [objects[0]], on: 1)
        try cache.shrink()
        #expect(cache.statistics().bytesMapped == 0)
    }

    @Test func objectsSitOnTheNodeOfTheAllocatingCPU() throws {
        let m = try Machine()   // the real topology
        let cache = try SlabCache(name: "placement", objectSize: 128, machine: m)
        for cpu in m.online {
            let objects = try m.run(on: cpu) {
                try (0..<64).map { _ in
                    let object = try cache.allocate()
                    object.storeBytes(of: UInt64(cpu), as: UInt64.self)   // touch it
                    return UInt(bitPattern: object)
                }
            }
            let expected = try m.node(of: cpu)
            for object in objects {
                #expect(Numa.node(ofAddress: pointer(object)) == expected, "CPU \(cpu)")
                #expect(cache.homeNode(of: pointer(object)) == expected)
            }
            try free(cache, objects, on: cpu)
        }
        expectAccounted(cache, inUse: 0)
    }

    @Test func memoryNodeIsTheNodeOfTheAllocatingCPUsPhysicalCPU() throws {
        let m = try Machine()   // the real topology: node 0 everywhere on a one-node host
        let cache = try SlabCache(name: "memory-node", objectSize: 64, machine: m)
        for cpu in m.online {
            // 200 objects span several pages of the slab (and a magazine refill); each one is written first.
            let objects = try m.run(on: cpu) {
                try (0..<200).map { _ in
                    let object = try cache.allocate()
                    object.storeBytes(of: UInt64(cpu), as: UInt64.self)
                    return UInt(bitPattern: object)
                }
            }
            let physical = try m.physicalCPU(of: cpu)
            let expected = Numa.node(ofPhysicalCPU: physical)
            let nodes = Set(objects.map { cache.memoryNode(of: pointer($0)) })
            #expect(nodes == [expected], "CPU \(cpu) (physical \(physical))")
            #expect(objects.allSatisfy { cache.homeNode(of: pointer($0)) == expected })
            try free(cache, objects, on: cpu)
        }
        expectAccounted(cache, inUse: 0)
    }

    @Test func memoryNodeIsTheRealNodeBehindASyntheticHomeNode() throws {
        // homeNode(of:) answers from the cache's bookkeeping (synthetic ids here); memoryNode(of:) asks the kernel,
        // which knows only the real node each synthetic node's slabs are mapped on.
        let m = try Machine(topology: try Topology.synthetic(nodes: 2, cpusPerNode: 2))
        let cache = try SlabCache(name: "memory-node-synthetic", objectSize: 64, machine: m)
        for cpu in [0, 3] {   // one CPU of each synthetic node
            let objects = try m.run(on: cpu) {
                try (0..<100).map { _ in
                    let object = try cache.allocate()
                    object.storeBytes(of: UInt64(cpu), as: UInt64.self)
                    return UInt(bitPattern: object)
                }
            }
            let synthetic = try m.node(of: cpu)
            #expect(Set(objects.map { cache.homeNode(of: pointer($0)) }) == [synthetic])
            let real = cache.nodes[cache.homeNodeIndex(of: pointer(objects[0]))].memoryNode
            let placed = Set(objects.map { cache.memoryNode(of: pointer($0)) })
            #expect(placed == [real], "CPU \(cpu), synthetic node \(synthetic)")
            try free(cache, objects, on: cpu)
        }
        expectAccounted(cache, inUse: 0)
    }

    @Test func syntheticNodesAllocateLocallyAndCrossNodeFreesGoHome() throws {
        let topology = try Topology.synthetic(nodes: 2, cpusPerNode: 2)
        let m = try Machine(topology: topology)
        let cache = try SlabCache(name: "numa", objectSize: 64, machine: m)
        let onNode0 = try allocate(cache, 1500, on: 0)
        let onNode1 = try allocate(cache, 1500, on: 3)
        #expect(onNode0.allSatisfy { cache.homeNode(of: pointer($0)) == 0 })
        #expect(onNode1.allSatisfy { cache.homeNode(of: pointer($0)) == 1 })
        let before = cache.statistics()
        // CPU 2 (node 1) frees node 0's objects: they go home to node 0, not into CPU 2's magazines.
        try free(cache, onNode0, on: 2)
        let after = cache.statistics()
        #expect(after.cachedPerCPU[2] == before.cachedPerCPU[2])
        #expect(after.nodes[0].remotePending == 1500)
        #expect(after.nodes[1].remotePending == 0)
        expectAccounted(cache, inUse: 1500)
        // Node 0's CPU 1 reuses them: node 0 maps nothing new; node 1's slabs are untouched.
        let node0Slabs = after.nodes[0].fullSlabs + after.nodes[0].partialSlabs + after.nodes[0].freeSlabs
        let reused = try allocate(cache, 1500, on: 1)
        let final = cache.statistics()
        #expect(final.nodes[0].fullSlabs + final.nodes[0].partialSlabs + final.nodes[0].freeSlabs == node0Slabs)
        #expect(reused.allSatisfy { cache.homeNode(of: pointer($0)) == 0 })
        #expect(!Set(reused).isDisjoint(with: Set(onNode0)))
        #expect(final.nodes[0].remotePending < 1500)
        // Node 1's objects freed on node 0, then everything freed and shrunk.
        try free(cache, onNode1, on: 0)
        #expect(cache.statistics().nodes[1].remotePending == 1500)
        try free(cache, reused, on: 1)
        expectAccounted(cache, inUse: 0)
        try cache.shrink()
        #expect(cache.statistics().bytesMapped == 0)
    }

    @Test func crossNodeFreesBeyondTheRingTakeTheStackAndAllComeHome() throws {
        let m = try Machine(topology: try Topology.synthetic(nodes: 2, cpusPerNode: 2))
        let cache = try SlabCache(name: "ring-overflow", objectSize: 64, machine: m)
        let ring = cache.nodes[0].ring
        // Whole magazines (so that no refill mixes in a slab's objects), 16 of them beyond the ring.
        let count = ring.capacity + 16 * cache.magazineCapacity
        let objects = try allocate(cache, count, on: 0)
        let before = cache.statistics()
        // CPU 2 (node 1) frees them all: the ring fills, the rest go onto node 0's linked stack.
        try free(cache, objects, on: 2)
        let after = cache.statistics()
        #expect(ring.pending == ring.capacity)
        #expect(after.nodes[0].remotePending == count)
        #expect(after.cachedPerCPU[2] == before.cachedPerCPU[2])
        #expect(after.nodes[1].outstanding == before.nodes[1].outstanding)
        expectAccounted(cache, inUse: 0)
        // CPU 1 (node 0, empty magazines) gets exactly those objects back, before anything from a slab.
        let again = try allocate(cache, count, on: 1)
        let sameObjects = Set(again) == Set(objects)
        #expect(sameObjects && Set(again).count == count)
        #expect(ring.pending == 0)
        #expect(cache.statistics().bytesMapped == after.bytesMapped)
        #expect(cache.statistics().nodes[0].remotePending == 0)
        // The ring wraps: a second pass through it, then everything back and unmapped.
        try free(cache, again, on: 3)
        #expect(cache.statistics().nodes[0].remotePending == count)
        let third = try allocate(cache, count, on: 0)
        let distinct = Set(third).count
        #expect(distinct == count)
        try free(cache, third, on: 0)
        expectAccounted(cache, inUse: 0)
        try cache.shrink()
        #expect(cache.statistics().bytesMapped == 0)
    }

    /// CPUs of node 1 free node 0's objects (ring and, when it is full, stack) while node 0's CPUs refill from them:
    /// no object is handed out twice, none is lost.
    @Test func remoteFreesRaceTheHomeNodesRefills() throws {
        let m = try Machine(topology: try Topology.synthetic(nodes: 2, cpusPerNode: 2))
        // Small magazines: a 512-slot ring, refills every 4 objects.
        let cache = try SlabCache(name: "ring-race", objectSize: 48, machine: m, options: .init(magazineCapacity: 4))
        #expect(cache.nodes[0].ring.capacity == 512)
        let perCPU = 700
        final class Progress: Sendable { let freed = Atomic<Int>(0) }
        for round in 0..<12 {
            // Node 0's objects, to be freed by node 1's CPUs (350 each per node-0 CPU).
            let pool = try allocate(cache, perCPU, on: 0) + allocate(cache, perCPU, on: 1)
            let progress = Progress()
            let results = try m.runOnEach { cpu -> Result<[UInt], HotplugError> in
                switch cpu {
                case 2, 3:
                    let share = cpu == 2 ? pool[..<perCPU] : pool[perCPU...]
                    // The user's last write before the free: only the ring's release and acquire (or the stack's)
                    // order it before the next user's writes (the thread sanitizer checks that).
                    for object in share {
                        tag(object).pointee = UInt64(cpu)
                        cache.free(pointer(object))
                        // Relaxed: orders nothing, so that the only order between the two users is the cache's.
                        progress.freed.add(1, ordering: .relaxed)
                    }
                    return .success([])
                default:
                    // Wait (bounded) until node 1's CPUs are halfway, so that the refills below find objects in
                    // the ring and on the stack, then allocate while more frees arrive; free every third again
                    // locally to mix the paths.
                    _ = eventually { progress.freed.load(ordering: .relaxed) >= perCPU }
                    var live: [UInt] = []
                    for index in 0..<perCPU {
                        do throws(HotplugError) {
                            let object = UInt(bitPattern: try cache.allocate())
                            tag(object).pointee = UInt64(cpu)
                            live.append(object)
                        } catch {
                            return .failure(error)
                        }
                        if index % 3 == 2 { cache.free(pointer(live.removeLast())) }
                    }
                    return .success(live)
                }
            }
            var live: [UInt] = []
            for (_, result) in results { live += try result.get() }
            let distinct = Set(live).count
            #expect(distinct == live.count, "an object was handed out twice in round \(round)")
            expectAccounted(cache, inUse: live.count)
            try free(cache, Array(live[..<(live.count / 2)]), on: 2)
            try free(cache, Array(live[(live.count / 2)...]), on: 1)
            expectAccounted(cache, inUse: 0)
        }
        try cache.shrink()
        #expect(cache.statistics().bytesMapped == 0)
        expectAccounted(cache, inUse: 0)
    }

    @Test func objectCacheCreatesAndDestroysValues() throws {
        struct Node { var key: Int; var name: String; var tag: AnyObject? }
        let m = try Machine(cpus: 2)
        let nodes = try ObjectCache<Node>(name: "typed", machine: m)
        #expect(nodes.slab.objectSize == MemoryLayout<Node>.size)
        #expect(nodes.slab.alignment == MemoryLayout<Node>.alignment)
        weak var watched: AnyObject?
        let keys = try m.run(on: 1) { () -> [Int] in
            var made: [UnsafeMutablePointer<Node>] = []
            for key in 0..<500 { made.append(try nodes.create(Node(key: key, name: "node \(key)", tag: nil))) }
            let keys = made.map(\.pointee.key)
            for node in made { nodes.destroy(node) }
            return keys
        }
        #expect(keys == Array(0..<500))
        // destroy deinitialises: a class held by a value is released.
        do {
            let tag = NSObject()
            watched = tag
            let node = try nodes.create(Node(key: 1, name: "x", tag: tag))
            #expect(nodes.statistics().inUse == 1)
            nodes.destroy(node)
        }
        #expect(watched == nil)
        #expect(nodes.statistics().inUse == 0)
    }

    // MARK: Debug mode

    @Test func debugModeAcceptsCorrectUse() throws {
        let m = try Machine(cpus: 2)
        let cache = try SlabCache(name: "debug-ok", objectSize: 48, machine: m, options: .init(debug: true))
        let objects = try allocate(cache, 2000, on: 0)
        try free(cache, Array(objects[..<1000]), on: 1)
        freeOnForeignThread(cache, Array(objects[1000...]))
        let again = try allocate(cache, 2000, on: 1)
        try free(cache, again, on: 1)
        expectAccounted(cache, inUse: 0)
    }

    @Test func debugModeStopsADoubleFree() async {
        await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let m = try Machine(cpus: 1)
            let cache = try SlabCache(name: "debug-double", objectSize: 64, machine: m, options: .init(debug: true))
            let object = try cache.allocate()
            cache.free(object)
            cache.free(object)
        }.map { result in
            let text = String(decoding: result.standardErrorContent, as: UTF8.self)
            #expect(text.contains("SlabCache 'debug-double': double free of object 0x"), "\(text)")
        }
    }

    @Test func debugModeStopsAForeignPointer() async {
        await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let m = try Machine(cpus: 1)
            let cache = try SlabCache(name: "debug-foreign", objectSize: 64, machine: m, options: .init(debug: true))
            _ = try cache.allocate()
            let stranger = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 16)
            cache.free(stranger)
        }.map { result in
            let text = String(decoding: result.standardErrorContent, as: UTF8.self)
            #expect(text.contains("SlabCache 'debug-foreign': free of a foreign pointer 0x"), "\(text)")
            #expect(text.contains("not in any slab of this cache"), "\(text)")
        }
        await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let m = try Machine(cpus: 1)
            let cache = try SlabCache(name: "debug-interior", objectSize: 64, machine: m, options: .init(debug: true))
            let object = try cache.allocate()
            cache.free(object + 8)
        }.map { result in
            let text = String(decoding: result.standardErrorContent, as: UTF8.self)
            #expect(text.contains("not at the start of an object"), "\(text)")
        }
    }

    @Test func debugModeStopsAWriteAfterFree() async {
        await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let m = try Machine(cpus: 1)
            let cache = try SlabCache(name: "debug-poison", objectSize: 64, machine: m, options: .init(debug: true))
            let object = try cache.allocate()
            cache.free(object)
            object.storeBytes(of: 42, toByteOffset: 16, as: UInt8.self)   // a write after free
            _ = try cache.allocate()                                      // the same object comes back: checked
        }.map { result in
            let text = String(decoding: result.standardErrorContent, as: UTF8.self)
            #expect(text.contains("was written after it was freed (byte 16 is 0x2a"), "\(text)")
        }
    }
}
