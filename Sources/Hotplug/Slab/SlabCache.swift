// SlabCache: the type, its construction and its inlined fast paths. The rest is in extensions by role:
// SlabCache+SlowPaths.swift (refills, full magazines, foreign threads), SlabCache+Nodes.swift (a node's slab lists,
// depot and remote frees; slab mapping), SlabCache+Hotplug.swift (prepare, drain, shrink), SlabCache+Statistics.swift
// and SlabCache+Debug.swift.
import Synchronization

/// A NUMA-aware per-CPU slab allocator of fixed-size objects, drained when a CPU is detached.
///
/// Three layers, as in Bonwick's magazines over SLUB's per-node lists:
///
/// ```
///   CPU i:   loaded + previous magazine      only CPU i touches them: no atomics, no locks, no allocation
///              |  refill / full magazine out (slow path, under the node's lock)
///   node n:  depot (full and empty magazines), slab lists (partial / full / free), remote-free ring and stack
///              |  numa_alloc_onnode(slab, n) / unmap
///   kernel
/// ```
///
/// - Allocation on a logical CPU pops its loaded magazine; when that is empty it swaps in the previous one if full,
///   else takes a full magazine from its node's depot, else fills the loaded one from the node (first the objects
///   other nodes sent home, then partial slabs, then free slabs, then a new slab mapped on the CPU's node). The pop
///   (and the free's push) is `@inlinable`: it runs inline in the caller; everything else is out of line.
/// - Free on a logical CPU of the object's home node pushes the loaded magazine; when that is full it swaps in the
///   previous one if empty, else moves the previous (full) one to the depot and takes an empty one.
/// - Free of another node's object on a CPU of another node puts its pointer in its home node's remote-free ring
///   (one CAS that reserves a slot, then a store; the object's memory is not touched), or, when that ring is full,
///   pushes the object on the home node's remote-free stack (one CAS, linked through the object's first word); a
///   free from a thread that is not one of the machine's CPUs (a foreign thread) always takes the stack. The next
///   refill on that node, a foreign thread's allocation there, the drain of a CPU of that node, or ``shrink()``
///   takes it. An object is never leaked, whoever frees it, even after the CPU that allocated it was detached. A
///   foreign thread allocates under the lock of the node it runs on.
/// - Slabs are aligned to their size, so an object's slab header (and home node) is its address with the low bits
///   cleared. Slab memory comes from `numa_alloc_onnode` on the node of the CPU that needs it; the kernel places
///   each page when it is first touched, which `get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)` can verify.
///
/// Hotplug: the built-in state `slab:prepare` gives an attaching CPU its magazines (a full one from the depot when
/// there is one) before it starts; `slab:dead` runs after `tasklets:dead` when a CPU has been detached: it drains
/// the dead CPU's magazines into the depot (full ones) and the slab lists (the rest), and returns empty slabs beyond
/// ``Options/minimumFreeSlabsPerNode`` to the system. A dead CPU's magazines are empty; nothing is lost.
///
/// Accounting: every object is in exactly one place: with a user, in a CPU magazine, in a depot magazine, sent home
/// (a node's remote-free ring, remote-free stack or home list), or free in its slab. ``statistics()`` reports each, and ``Statistics/inUse`` (from the
/// counters of the allocation and free paths) equals ``Statistics/accountedInUse`` (from the lists) whenever no
/// operation is in flight.
///
/// Debug mode (``Options/debug``): freed objects are poisoned (0x6b after their first word) and checked when handed
/// out again; a double free, a pointer that is not an object of this cache, or an object written after it was
/// freed stops the process with a message naming the cache and the address. Debug mode takes a lock per
/// operation (the set of live objects); the default mode checks nothing, like every fast allocator.
///
/// Thread safety: every method may be called from any thread. Do not call ``shrink()`` from a hotplug callback
/// (it takes the hotplug read lock).
public final class SlabCache: @unchecked Sendable {
    // @unchecked: CPU slots are touched only by their CPU or by the drain once that CPU is dead (the hotplug walk
    // orders the two); node state is guarded by the node's lock; the rest is immutable or atomic.

    /// How a cache is built. Every value has a sensible default.
    public struct Options: Sendable {
        /// Poisoning, double-free and foreign-pointer detection (slower: a lock per operation).
        public var debug: Bool
        /// Objects per magazine; nil: 64 for objects up to 256 bytes, 32 up to 1 KiB, 16 above.
        public var magazineCapacity: Int?
        /// Bytes per slab, a power of two of at least a page (and 4096) and at most 1 GiB
        /// (``SlabCache/largestSlabBytes``); nil: the smallest power of two of at least 64 KiB that holds 16 objects.
        public var slabBytes: Int?
        /// Empty slabs each node keeps mapped when objects come back; the rest go back to the system.
        public var minimumFreeSlabsPerNode: Int
        /// Full magazines each node's depot keeps (and, separately, spare empty ones); beyond that, a full
        /// magazine's objects go back to their slabs and a spare empty one is freed. nil: twice the logical CPUs of
        /// the largest node, at least 4.
        public var depotMagazinesPerNode: Int?

        public init(debug: Bool = false, magazineCapacity: Int? = nil, slabBytes: Int? = nil,
                    minimumFreeSlabsPerNode: Int = 1, depotMagazinesPerNode: Int? = nil) {
            self.debug = debug
            self.magazineCapacity = magazineCapacity
            self.slabBytes = slabBytes
            self.minimumFreeSlabsPerNode = minimumFreeSlabsPerNode
            self.depotMagazinesPerNode = depotMagazinesPerNode
        }
    }

    public let name: String
    public let machine: Machine
    /// The size users asked for.
    public let objectSize: Int
    public let alignment: Int
    /// Bytes from one object to the next (the size rounded up to the alignment, at least one pointer).
    public let objectStride: Int
    public let slabBytes: Int
    public let objectsPerSlab: Int
    public let magazineCapacity: Int
    public let options: Options

    let headerBytes: Int
    let depotLimit: Int
    @usableFromInline let machineID: UInt64
    let cacheID: UInt64
    @usableFromInline let isDebug: Bool
    /// More than one node: a free on a CPU must check the object's home node (out of line).
    @usableFromInline let isMultiNode: Bool
    let nodes: [SlabNode]
    /// `nodes[i].ring` for each node i, read by the remote free without touching (or retaining) the node object;
    /// the rings live as long as their nodes, which `nodes` keeps as long as the cache.
    let rings: UnsafeMutablePointer<RemoteRing>
    /// Node index of each logical CPU.
    let cpuNodeIndex: [Int]
    /// Node index of each physical CPU a foreign thread may run on.
    let physicalNodeIndex: [Int: Int]
    /// One ``CPUMagazines`` per possible CPU, ``slotStride`` bytes apart.
    @usableFromInline let slots: UnsafeMutableRawPointer
    /// Two cache lines per CPU (the adjacent-line prefetcher pairs lines).
    @inlinable static var slotStride: Int { 128 }
    let debugState: Locked<DebugState>?
    private static let cacheIDs = Atomic<UInt64>(0)

    /// The largest ``Options/slabBytes``: 1 GiB.
    public static let largestSlabBytes = 1 << 30

    /// Creates a cache of `objectSize`-byte objects aligned to `alignment`, for the logical CPUs of `machine`.
    /// - Throws: ``HotplugError/invalidConfiguration(_:)`` for a size outside 1...1 MiB, an alignment that is not a
    ///   power of two in 1...4096, or options out of range; ``HotplugError/shutDown`` for a machine shut down.
    public init(name: String, objectSize: Int, alignment: Int = 16, machine: Machine,
                options: Options = Options()) throws(HotplugError) {
        guard (1...(1 << 20)).contains(objectSize) else {
            throw .invalidConfiguration("slab cache '\(name)': object size must be in 1...1048576 bytes, got \(objectSize)")
        }
        guard (1...4096).contains(alignment), alignment & (alignment - 1) == 0 else {
            throw .invalidConfiguration("slab cache '\(name)': alignment must be a power of two in 1...4096, got \(alignment)")
        }
        let stride = (max(objectSize, MemoryLayout<UInt>.size) + alignment - 1) / alignment * alignment
        let header = (SlabHeader.offset + MemoryLayout<SlabHeader>.stride + max(64, alignment) - 1)
            / max(64, alignment) * max(64, alignment)
        var slab = 1 << 16
        while slab < header + 16 * stride { slab <<= 1 }
        if let requested = options.slabBytes {
            let page = max(4096, Shim.pageSize)
            guard requested >= page, requested <= SlabCache.largestSlabBytes, requested & (requested - 1) == 0,
                  requested >= header + stride else {
                throw .invalidConfiguration("slab cache '\(name)': slabBytes must be a power of two in \(page)...\(SlabCache.largestSlabBytes) (a page to 1 GiB) holding at least one object, got \(requested)")
            }
            slab = requested
        }
        let capacity = options.magazineCapacity ?? (objectSize <= 256 ? 64 : objectSize <= 1024 ? 32 : 16)
        guard (1...4096).contains(capacity) else {
            throw .invalidConfiguration("slab cache '\(name)': magazineCapacity must be in 1...4096, got \(capacity)")
        }
        guard options.minimumFreeSlabsPerNode >= 0, (options.depotMagazinesPerNode ?? 0) >= 0 else {
            throw .invalidConfiguration("slab cache '\(name)': minimumFreeSlabsPerNode and depotMagazinesPerNode must not be negative")
        }
        self.name = name
        self.machine = machine
        self.objectSize = objectSize
        self.alignment = alignment
        self.objectStride = stride
        self.slabBytes = slab
        self.headerBytes = header
        self.objectsPerSlab = (slab - header) / stride
        self.magazineCapacity = capacity
        self.options = options
        self.machineID = machine.id
        self.cacheID = SlabCache.cacheIDs.add(1, ordering: .relaxed).newValue
        self.isDebug = options.debug
        self.debugState = options.debug ? Locked(DebugState()) : nil
        let topology = machine.topology
        // A synthetic node's memory comes from the real node of its first physical CPU.
        nodes = topology.nodes.map { node in
            let physical = topology.cpus.first { $0.node == node }?.physicalID ?? 0
            return SlabNode(id: node, memoryNode: topology.isSynthetic ? Numa.node(ofPhysicalCPU: physical) : node,
                            ringCapacity: RemoteRing.capacity(magazineCapacity: capacity))
        }
        // On cache lines of their own (read by every remote free; nothing written shares them).
        let ringBytes = (nodes.count * MemoryLayout<RemoteRing>.stride + 63) / 64 * 64
        rings = UnsafeMutableRawPointer.allocate(byteCount: ringBytes, alignment: 64)
            .bindMemory(to: RemoteRing.self, capacity: nodes.count)
        rings.initialize(from: nodes.map(\.ring), count: nodes.count)
        isMultiNode = nodes.count > 1
        let cpuNodes = machine.cores.map { core in topology.nodes.firstIndex(of: core.slot.node) ?? 0 }
        cpuNodeIndex = cpuNodes
        var physical: [Int: Int] = [:]
        for cpu in topology.cpus where physical[cpu.physicalID] == nil {
            physical[cpu.physicalID] = topology.nodes.firstIndex(of: cpu.node) ?? 0
        }
        physicalNodeIndex = physical
        let perNode = Dictionary(grouping: cpuNodes, by: { $0 }).mapValues(\.count)
        depotLimit = options.depotMagazinesPerNode ?? max(4, 2 * (perNode.values.max() ?? 1))
        slots = .allocate(byteCount: SlabCache.slotStride * machine.possibleCount, alignment: 128)
        for cpu in 0..<machine.possibleCount {
            (slots + cpu * SlabCache.slotStride).bindMemory(to: CPUMagazines.self, capacity: 1)
                .initialize(to: CPUMagazines(nodeIndex: cpuNodes[cpu]))
            (slots + cpu * SlabCache.slotStride + 64).bindMemory(to: CPUCounters.self, capacity: 1)
                .initialize(to: CPUCounters())
        }
        try machine.slabs.register(self)
    }

    deinit {
        machine.slabs.unregister(cacheID)
        // No thread can be inside a method of this cache any more: every magazine and list may be walked.
        for cpu in 0..<machine.possibleCount {
            release(cpu: cpu, keepMagazines: false)
            slot(cpu).counters.deinitialize(count: 1)
            slot(cpu).deinitialize(count: 1)
        }
        slots.deallocate()
        rings.deinitialize(count: nodes.count)
        UnsafeMutableRawPointer(rings).deallocate()
        var leaked = 0
        for node in nodes {
            node.lock.withLock {
                emptyDepotAndRemote(node)
                trim(node, keeping: 0)
                while let magazine = node.emptyMagazines.pop() { magazine.destroy() }
                leaked += node.outstanding
            }
        }
        if leaked > 0 {
            machine.logger.error("slab cache '\(name)' destroyed with \(leaked) objects still in use: their slabs stay mapped")
        }
    }

    @inlinable @inline(__always)
    func slot(_ cpu: Int) -> UnsafeMutablePointer<CPUMagazines> {
        (slots + cpu &* SlabCache.slotStride).assumingMemoryBound(to: CPUMagazines.self)
    }

    @inline(__always)
    func slabHeader(of object: UnsafeRawPointer) -> UnsafeMutablePointer<SlabHeader> {
        (slabBase(of: object) + SlabHeader.offset).assumingMemoryBound(to: SlabHeader.self)
    }

    /// The start of an object's slab.
    @inline(__always)
    func slabBase(of object: UnsafeRawPointer) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(bitPattern: UInt(bitPattern: object) & ~UInt(slabBytes - 1))!
    }

    /// The index of an object's home node (a plain load of an immutable word).
    @inline(__always)
    func homeNodeIndex(of object: UnsafeRawPointer) -> Int { slabBase(of: object).load(as: Int.self) }

    // MARK: Fast paths

    /// An object of ``objectSize`` bytes (uninitialised memory, aligned to ``alignment``).
    ///
    /// On a logical CPU of the machine, usually a pop from the CPU's loaded magazine, inlined into the caller: no
    /// lock, no atomic read-modify-write, no allocation, no call. Elsewhere, under the lock of the node the thread
    /// runs on.
    /// - Throws: ``HotplugError/system(call:errno:)`` when a new slab cannot be mapped.
    @inlinable
    public func allocate() throws(HotplugError) -> UnsafeMutableRawPointer {
        let cpu = Shim.currentLogicalCPU(machineID: machineID)
        if cpu >= 0 && !isDebug, let object = pop(slot(cpu)) { return object }
        return try allocateOutOfLine()
    }

    /// Gives an object back. On a CPU of its home node, usually a push on the CPU's loaded magazine, inlined into
    /// the caller; on another node's CPU, one CAS that reserves a slot of the home node's remote-free ring; on a
    /// foreign thread, one CAS onto the home node's remote-free stack.
    /// - Warning: `object` must come from ``allocate()`` of this cache and not be freed twice; debug mode stops the
    ///   process with a message when it is not, the default mode does not check.
    @inlinable
    public func free(_ object: UnsafeMutableRawPointer) {
        let cpu = Shim.currentLogicalCPU(machineID: machineID)
        if cpu >= 0 && !isDebug && !isMultiNode && push(object, slot(cpu)) { return }
        freeOutOfLine(object)
    }

    /// Pops the CPU's loaded magazine; nil when it is empty (or the CPU has none yet).
    @inlinable @inline(__always)
    func pop(_ slot: UnsafeMutablePointer<CPUMagazines>) -> UnsafeMutableRawPointer? {
        guard let magazine = slot.pointee.loaded, magazine.pointee.count > 0 else { return nil }
        let count = magazine.pointee.count &- 1
        magazine.pointee.count = count
        slot.counters.pointee.allocated.bump()
        return magazine.objects[count]
    }

    /// Pushes the CPU's loaded magazine; false when it is full (or the CPU has none yet).
    @inlinable @inline(__always)
    func push(_ object: UnsafeMutableRawPointer, _ slot: UnsafeMutablePointer<CPUMagazines>) -> Bool {
        guard let magazine = slot.pointee.loaded, magazine.pointee.count < magazineCapacity else { return false }
        let count = magazine.pointee.count
        magazine.objects[count] = object
        magazine.pointee.count = count &+ 1
        slot.counters.pointee.freedLocal.bump()
        return true
    }

    /// ``allocate()`` when the inlined part cannot: a foreign thread, debug mode, an empty loaded magazine.
    @usableFromInline
    func allocateOutOfLine() throws(HotplugError) -> UnsafeMutableRawPointer {
        guard let cpu = CPUCore.currentID(machineID: machineID) else { return try allocateForeign() }
        let slot = slot(cpu)
        let object: UnsafeMutableRawPointer
        if let popped = pop(slot) { object = popped } else { object = try allocateSlow(cpu, slot) }
        if isDebug { debugHandOut(object) }
        return object
    }

    /// ``free(_:)`` when the inlined part cannot: a foreign thread, debug mode, several nodes, a full magazine.
    @usableFromInline
    func freeOutOfLine(_ object: UnsafeMutableRawPointer) {
        if isDebug { debugTakeBack(object) }
        guard let cpu = CPUCore.currentID(machineID: machineID) else {
            let home = nodes[homeNodeIndex(of: object)]
            home.foreignFreed.add(1, ordering: .relaxed)
            home.pushRemote(object)
            return
        }
        let slot = slot(cpu)
        if isMultiNode {
            let home = homeNodeIndex(of: object)
            if home != slot.pointee.nodeIndex {
                sendHome(object, to: home, slot)
                return
            }
        }
        if !push(object, slot) { freeSlow(cpu, slot, object) }
    }

    /// The remote free on a logical CPU: the object goes to its home node's ring (one CAS, then a store of the
    /// pointer; the object's memory is not touched), or, when that ring is full, onto the home node's linked stack.
    @inline(__always)
    private func sendHome(_ object: UnsafeMutableRawPointer, to home: Int, _ slot: UnsafeMutablePointer<CPUMagazines>) {
        // The one check the default mode keeps: a pointer that is not an object of this cache would index memory
        // outside `rings` here (the home index comes from whatever its "slab" starts with).
        precondition(UInt(bitPattern: home) < UInt(bitPattern: nodes.count),
                     "slab allocator: \(object) is not an object of cache '\(name)' (home node index \(home))")
        slot.counters.pointee.freedRemote.bump()
        if !rings[home].push(object) { nodes[home].pushRemote(object) }
    }
}
