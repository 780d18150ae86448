import Synchronization

/// A NUMA-aware per-CPU slab allocator of fixed-size objects, drained when a CPU is detached.
///
/// Three layers, as in Bonwick's magazines over SLUB's per-node lists:
///
/// ```
///   CPU i:   loaded + previous magazine      only CPU i touches them: no atomics, no locks, no allocation
///              |  refill / full magazine out (slow path, under the node's lock)
///   node n:  depot (full and empty magazines), slab lists (partial / full / free), remote-free stack
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
/// - Free of another node's object (on a CPU of another node) or from a thread that is not one of the machine's
///   CPUs (a foreign thread) pushes the object on its home node's remote-free stack (one CAS); the next refill on
///   that node, a foreign thread's allocation there, the drain of a CPU of that node, or ``shrink()`` takes it. An object is never leaked, whoever frees it, even after the CPU
///   that allocated it was detached. A foreign thread allocates under the lock of the node it runs on.
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
/// (a node's remote-free stack or home list), or free in its slab. ``statistics()`` reports each, and ``Statistics/inUse`` (from the
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
        /// Bytes per slab, a power of two of at least a page (and 4096); nil: the smallest power of two of at least 64 KiB
        /// that holds 16 objects.
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

    struct DebugState {
        var slabs: Set<UInt> = []
        var live: Set<UInt> = []
    }

    static let poison: UInt8 = 0x6b
    /// The bytes of a free object that hold its link (on a slab's free list or a remote-free stack): not poisoned.
    static let link = MemoryLayout<UInt>.size

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
            guard requested >= page, requested & (requested - 1) == 0, requested >= header + stride else {
                throw .invalidConfiguration("slab cache '\(name)': slabBytes must be a power of two >= \(page) (a page) holding at least one object, got \(requested)")
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
            return SlabNode(id: node, memoryNode: topology.isSynthetic ? Numa.node(ofPhysicalCPU: physical) : node)
        }
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
    /// the caller; on another node's CPU or a foreign thread, one CAS onto the home node's remote-free stack.
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
                slot.counters.pointee.freedRemote.bump()
                nodes[home].pushRemote(object)
                return
            }
        }
        if !push(object, slot) { freeSlow(cpu, slot, object) }
    }

    // MARK: Slow paths on a CPU

    private func allocateSlow(_ cpu: Int, _ slot: UnsafeMutablePointer<CPUMagazines>) throws(HotplugError) -> UnsafeMutableRawPointer {
        let node = nodes[slot.pointee.nodeIndex]
        if slot.pointee.loaded == nil { giveMagazines(slot, node) }
        var loaded = slot.pointee.loaded!
        if loaded.pointee.count == 0 {
            if let previous = slot.pointee.previous, previous.pointee.count > 0 {
                slot.pointee.previous = loaded
                slot.pointee.loaded = previous
                loaded = previous
            } else {
                try node.lock.withLock { () throws(HotplugError) in
                    if let full = node.fullMagazines.pop() {
                        if let previous = slot.pointee.previous { stashEmpty(previous, node) }
                        slot.pointee.previous = loaded
                        slot.pointee.loaded = full
                        slot.counters.pointee.received.bump(full.pointee.count)
                        loaded = full
                    } else {
                        let taken = try take(from: node, count: magazineCapacity, into: loaded.objects)
                        loaded.pointee.count = taken
                        slot.counters.pointee.received.bump(taken)
                    }
                }
            }
        }
        return pop(slot)!   // the loaded magazine holds at least one object now
    }

    private func freeSlow(_ cpu: Int, _ slot: UnsafeMutablePointer<CPUMagazines>, _ object: UnsafeMutableRawPointer) {
        let node = nodes[slot.pointee.nodeIndex]
        if slot.pointee.loaded == nil { giveMagazines(slot, node) }
        var loaded = slot.pointee.loaded!
        if loaded.pointee.count == magazineCapacity {
            if let previous = slot.pointee.previous, previous.pointee.count == 0 {
                slot.pointee.previous = loaded
                slot.pointee.loaded = previous
                loaded = previous
            } else {
                node.lock.withLock {
                    if let previous = slot.pointee.previous {
                        slot.counters.pointee.returned.bump(previous.pointee.count)
                        stashFull(previous, node)
                    }
                    slot.pointee.previous = loaded
                    let empty = node.emptyMagazines.pop() ?? .make(capacity: magazineCapacity)
                    slot.pointee.loaded = empty
                    loaded = empty
                }
            }
        }
        let pushed = push(object, slot)   // the loaded magazine has room now
        assert(pushed)
    }

    /// Gives a CPU without magazines its pair: a full one from the depot when there is one, and an empty one.
    private func giveMagazines(_ slot: UnsafeMutablePointer<CPUMagazines>, _ node: SlabNode) {
        node.lock.withLock {
            if let full = node.fullMagazines.pop() {
                slot.pointee.loaded = full
                slot.counters.pointee.received.bump(full.pointee.count)
            } else {
                slot.pointee.loaded = node.emptyMagazines.pop() ?? .make(capacity: magazineCapacity)
            }
            slot.pointee.previous = node.emptyMagazines.pop() ?? .make(capacity: magazineCapacity)
        }
    }

    // MARK: Foreign threads

    private func foreignNode() -> SlabNode {
        if nodes.count == 1 { return nodes[0] }
        return nodes[physicalNodeIndex[Shim.currentPhysicalCPU()] ?? 0]
    }

    private func allocateForeign() throws(HotplugError) -> UnsafeMutableRawPointer {
        let node = foreignNode()
        var object = UnsafeMutableRawPointer(bitPattern: 1)!
        try node.lock.withLock { () throws(HotplugError) in
            _ = try take(from: node, count: 1, into: &object)
            node.foreignAllocated += 1
        }
        if isDebug { debugHandOut(object) }
        return object
    }

    // MARK: Node operations (the caller holds the node's lock)

    /// Moves up to `count` objects out of the node into `output`: objects sent home first, then partial slabs,
    /// then free slabs, then a new slab. Returns how many (at least 1, or it throws).
    private func take(from node: SlabNode, count: Int, into output: UnsafeMutablePointer<UnsafeMutableRawPointer>) throws(HotplugError) -> Int {
        var taken = 0
        while taken < count, let object = node.popHome() {
            output[taken] = object
            taken += 1
        }
        if taken < count {
            node.takeRemote { object in
                if taken < count { output[taken] = object; taken += 1 } else { node.pushHome(object) }
            }
        }
        while taken < count {
            let slab: UnsafeMutablePointer<SlabHeader>
            if let partial = node.partial.head { slab = partial }
            else if let free = node.free.head { slab = free }
            else {
                do { slab = try mapSlab(node) } catch {
                    if taken > 0 { break }
                    throw error
                }
            }
            taken += carve(slab, node, count - taken, output + taken)
        }
        return taken
    }

    /// Takes up to `count` objects out of one slab and moves it to the list it now belongs on.
    private func carve(_ slab: UnsafeMutablePointer<SlabHeader>, _ node: SlabNode, _ count: Int,
                       _ output: UnsafeMutablePointer<UnsafeMutableRawPointer>) -> Int {
        var taken = 0
        let base = UnsafeMutableRawPointer(slab) - SlabHeader.offset + headerBytes
        while taken < count {
            if let object = slab.pointee.freeList {
                slab.pointee.freeList = object.load(as: UnsafeMutableRawPointer?.self)
                output[taken] = object
            } else if slab.pointee.bump < objectsPerSlab {
                output[taken] = base + slab.pointee.bump * objectStride
                slab.pointee.bump += 1
            } else {
                break
            }
            taken += 1
        }
        slab.pointee.outstanding += taken
        node.outstanding += taken
        move(slab, node, to: slab.pointee.outstanding == objectsPerSlab ? .full : .partial)
        return taken
    }

    /// Returns one object to its slab.
    private func giveBack(_ object: UnsafeMutableRawPointer, _ node: SlabNode) {
        let slab = slabHeader(of: object)
        object.storeBytes(of: slab.pointee.freeList, as: UnsafeMutableRawPointer?.self)
        slab.pointee.freeList = object
        slab.pointee.outstanding -= 1
        node.outstanding -= 1
        move(slab, node, to: slab.pointee.outstanding == 0 ? .free : .partial)
    }

    private func move(_ slab: UnsafeMutablePointer<SlabHeader>, _ node: SlabNode, to kind: SlabKind) {
        guard slab.pointee.kind != kind else { return }
        switch slab.pointee.kind {
        case .free: node.free.remove(slab)
        case .partial: node.partial.remove(slab)
        case .full: node.full.remove(slab)
        }
        slab.pointee.kind = kind
        switch kind {
        case .free: node.free.push(slab)
        case .partial: node.partial.push(slab)
        case .full: node.full.push(slab)
        }
    }

    private func mapSlab(_ node: SlabNode) throws(HotplugError) -> UnsafeMutablePointer<SlabHeader> {
        let memory = try Numa.allocateAligned(bytes: slabBytes, onNode: node.memoryNode)
        memory.storeBytes(of: nodes.firstIndex { $0 === node }!, as: Int.self)
        let slab = (memory + SlabHeader.offset).bindMemory(to: SlabHeader.self, capacity: 1)
        slab.initialize(to: SlabHeader(freeList: nil,
                                       bump: 0, outstanding: 0, kind: .free, previous: nil, next: nil))
        node.free.push(slab)
        node.bytesMapped += slabBytes
        if let debugState {
            // Every object starts poisoned, so that a hand-out can check the poison whatever its history.
            (memory + headerBytes).initializeMemory(as: UInt8.self, repeating: SlabCache.poison,
                                                    count: objectsPerSlab * objectStride)
            debugState.withLock { _ = $0.slabs.insert(UInt(bitPattern: memory)) }
        }
        return slab
    }

    /// Unmaps free slabs until the node keeps `keep` of them.
    private func trim(_ node: SlabNode, keeping keep: Int) {
        while node.free.count > keep, let slab = node.free.popFirst() {
            let memory = UnsafeMutableRawPointer(slab) - SlabHeader.offset
            let base = UInt(bitPattern: memory)
            slab.deinitialize(count: 1)
            Numa.free(memory, bytes: slabBytes)
            node.bytesMapped -= slabBytes
            debugState?.withLock { _ = $0.slabs.remove(base) }
        }
    }

    /// Puts a full magazine in the depot, or, when the depot is at its limit, its objects back in their slabs.
    private func stashFull(_ magazine: Magazine, _ node: SlabNode) {
        if node.fullMagazines.count < depotLimit {
            node.fullMagazines.push(magazine)
        } else {
            empty(magazine, node)
            stashEmpty(magazine, node)
            trim(node, keeping: options.minimumFreeSlabsPerNode)
        }
    }

    private func stashEmpty(_ magazine: Magazine, _ node: SlabNode) {
        if node.emptyMagazines.count < depotLimit { node.emptyMagazines.push(magazine) } else { magazine.destroy() }
    }

    private func empty(_ magazine: Magazine, _ node: SlabNode) {
        for index in 0..<magazine.pointee.count { giveBack(magazine.objects[index], node) }
        magazine.pointee.count = 0
    }

    /// Everything in the depot and on the remote-free stack back to the slabs.
    private func emptyDepotAndRemote(_ node: SlabNode) {
        node.takeAllHome { giveBack($0, node) }
        while let magazine = node.fullMagazines.pop() {
            empty(magazine, node)
            stashEmpty(magazine, node)
        }
    }

    // MARK: Hotplug

    /// `slab:prepare` startup: gives an attaching CPU its magazines before it starts.
    func prepare(cpu: Int) {
        let slot = slot(cpu)
        if slot.pointee.loaded == nil { giveMagazines(slot, nodes[slot.pointee.nodeIndex]) }
    }

    /// `slab:dead` teardown (and ``shrink()`` on each CPU): the CPU's magazines go to the depot (full ones, while
    /// it has room) or back to their slabs; empty slabs beyond the per-node minimum are unmapped. Runs on the CPU
    /// itself or while it is not running. Idempotent.
    func release(cpu: Int, keepMagazines: Bool) {
        let slot = slot(cpu)
        let node = nodes[slot.pointee.nodeIndex]
        for magazine in [slot.pointee.loaded, slot.pointee.previous].compactMap({ $0 }) {
            node.lock.withLock {
                let count = magazine.pointee.count
                slot.counters.pointee.returned.bump(count)
                if count == magazineCapacity && keepMagazines {
                    stashFull(magazine, node)
                } else {
                    empty(magazine, node)
                    if keepMagazines { stashEmpty(magazine, node) } else { magazine.destroy() }
                }
                trim(node, keeping: options.minimumFreeSlabsPerNode)
            }
        }
        // What other nodes and foreign threads sent home waits for a refill; a node whose CPUs all went away would
        // keep it until shrink(): the drain takes it back to the slabs.
        node.lock.withLock {
            node.takeAllHome { giveBack($0, node) }
            trim(node, keeping: options.minimumFreeSlabsPerNode)
        }
        slot.pointee.loaded = nil
        slot.pointee.previous = nil
    }

    // MARK: Shrinking and statistics

    /// Returns every cached object to its slab and every free slab to the system: each online CPU empties its
    /// magazines (on its own thread), then every node empties its depot and remote-free stack and unmaps its free
    /// slabs. After everything was freed, ``Statistics/bytesMapped`` is 0.
    /// - Throws: the errors of ``Machine/runOnEach(timeout:_:)`` (a CPU that does not reach a safe point in time).
    /// - Warning: takes the hotplug read lock: not from a hotplug callback.
    public func shrink() throws(HotplugError) {
        do {
            _ = try machine.withCPUsReadLocked {
                try machine.runOnEach { [self] cpu in release(cpu: cpu, keepMagazines: false) }
            }
        } catch let error as HotplugError {
            throw error
        } catch {
            preconditionFailure("shrink: unexpected error \(error)")
        }
        for node in nodes {
            node.lock.withLock {
                emptyDepotAndRemote(node)
                while let magazine = node.emptyMagazines.pop() { magazine.destroy() }
                trim(node, keeping: 0)
            }
        }
    }

    /// A snapshot of where the cache's objects are. Exact when no operation is in flight.
    public struct Statistics: Sendable, Equatable {
        /// One node's slabs and depot.
        public struct Node: Sendable, Equatable {
            public var node: Int
            public var fullSlabs: Int
            public var partialSlabs: Int
            public var freeSlabs: Int
            /// Full magazines in the depot, and the objects they hold.
            public var depotMagazines: Int
            public var depotObjects: Int
            /// Objects sent home by other nodes and foreign threads, not yet handed out again nor returned to their
            /// slabs (on the remote-free stack or the node's home list).
            public var remotePending: Int
            /// Objects out of this node's slabs (with users, in magazines, in the depot, remote-pending).
            public var outstanding: Int
        }

        /// Objects handed out and not freed (from the counters of the allocation and free paths).
        public var inUse: Int
        /// Objects out of their slabs and not cached anywhere (from the lists): equals ``inUse`` when quiescent.
        public var accountedInUse: Int
        /// Objects in each logical CPU's magazines, indexed by CPU id.
        public var cachedPerCPU: [Int]
        public var nodes: [Node]
        /// Bytes of slab memory mapped.
        public var bytesMapped: Int
        /// Objects allocated and freed by threads that are not logical CPUs.
        public var foreignAllocated: Int
        public var foreignFreed: Int
    }

    /// Where the cache's objects are now (see ``Statistics``).
    public func statistics() -> Statistics {
        var cached: [Int] = []
        var inUse = 0
        for cpu in 0..<machine.possibleCount {
            let slot = slot(cpu)
            inUse += slot.counters.pointee.allocated.load(ordering: .relaxed) - slot.counters.pointee.freedLocal.load(ordering: .relaxed)
                - slot.counters.pointee.freedRemote.load(ordering: .relaxed)
            cached.append(slot.counters.pointee.cached)
        }
        var perNode: [Statistics.Node] = []
        var accounted = -cached.reduce(0, +)
        var bytesMapped = 0, foreignAllocated = 0, foreignFreed = 0
        for node in nodes {
            let entry = node.lock.withLock {
                bytesMapped += node.bytesMapped
                foreignAllocated += node.foreignAllocated
                foreignFreed += node.foreignFreed.load(ordering: .relaxed)
                return Statistics.Node(node: node.id, fullSlabs: node.full.count, partialSlabs: node.partial.count,
                                freeSlabs: node.free.count, depotMagazines: node.fullMagazines.count,
                                depotObjects: node.fullMagazines.count * magazineCapacity,
                                remotePending: node.pendingHome,
                                outstanding: node.outstanding)
            }
            accounted += entry.outstanding - entry.depotObjects - entry.remotePending
            perNode.append(entry)
        }
        return Statistics(inUse: inUse + foreignAllocated - foreignFreed, accountedInUse: accounted,
                          cachedPerCPU: cached, nodes: perNode, bytesMapped: bytesMapped,
                          foreignAllocated: foreignAllocated, foreignFreed: foreignFreed)
    }

    /// The node an object's slab was mapped on (its home node).
    /// - Warning: `object` must be an object of this cache.
    public func homeNode(of object: UnsafeRawPointer) -> Int {
        nodes[homeNodeIndex(of: object)].id
    }

    /// The NUMA node the kernel actually placed the page holding `object` on
    /// (`get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)`): what the hardware does, where ``homeNode(of:)`` is what the
    /// cache intended (the node its own bookkeeping mapped the slab for, read from the slab header without a system
    /// call). On a real topology the two agree for every object; with a synthetic topology ``homeNode(of:)`` is a
    /// synthetic node id and this is the real node that node's slabs are mapped on. One system call per object: a
    /// check for tests and tools, not for hot paths.
    /// - Parameter object: an object of this cache that the caller has written to (any byte of its page will do).
    /// - Returns: the node id; 0 where NUMA is not available (everything is node 0 then); nil when the kernel does
    ///   not say (the address is not mapped).
    /// - Warning: the default mode does not write to an object it hands out for the first time (a new slab is not
    ///   threaded up front): until someone writes to its page, the page has no memory of its own, and the kernel
    ///   answers for whatever a read maps there (the shared zero page), not for where the slab's memory goes. Write
    ///   to the object first. Debug mode poisons every object when it maps the slab, so it is always touched there.
    public func memoryNode(of object: UnsafeRawPointer) -> Int? {
        Numa.node(ofAddress: object)
    }

    // MARK: Debug mode

    private func debugFailure(_ message: String) -> Never {
        fatalError("SlabCache '\(name)': \(message)")
    }

    /// Checks a pointer being freed: an object of this cache, live; then poisons it.
    private func debugTakeBack(_ object: UnsafeMutableRawPointer) {
        let address = UInt(bitPattern: object)
        let base = address & ~UInt(slabBytes - 1)
        debugState!.withLock { state in
            guard state.slabs.contains(base) else {
                debugFailure("free of a foreign pointer \(hex(address)): it is not in any slab of this cache")
            }
            let offset = Int(address - base) - headerBytes
            guard offset >= 0, offset % objectStride == 0, offset / objectStride < objectsPerSlab else {
                debugFailure("free of a foreign pointer \(hex(address)): it is inside slab \(hex(base)) but not at the start of an object")
            }
            guard state.live.remove(address) != nil else {
                debugFailure("double free of object \(hex(address)) (object \(offset / objectStride) of slab \(hex(base)))")
            }
        }
        if objectSize > SlabCache.link {
            (object + SlabCache.link).initializeMemory(as: UInt8.self, repeating: SlabCache.poison,
                                                       count: objectSize - SlabCache.link)
        }
    }

    /// Checks an object being handed out: still poisoned (nobody wrote to it while it was free); marks it live.
    private func debugHandOut(_ object: UnsafeMutableRawPointer) {
        if objectSize > SlabCache.link {
            let bytes = (object + SlabCache.link).assumingMemoryBound(to: UInt8.self)
            for index in 0..<(objectSize - SlabCache.link) where bytes[index] != SlabCache.poison {
                debugFailure("object \(hex(UInt(bitPattern: object))) was written after it was freed (byte \(index + SlabCache.link) is \(hex(UInt(bytes[index]))), the poison is 0x6b)")
            }
        }
        debugState!.withLock { _ = $0.live.insert(UInt(bitPattern: object)) }
    }

    private func hex(_ value: UInt) -> String { "0x" + String(value, radix: 16) }
}
