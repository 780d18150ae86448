import Synchronization

// The raw structures of the slab allocator: slab headers, magazines and the per-node lists. Everything here is
// plain memory guarded by a node's lock, except a CPU's magazines (touched only by that CPU, or by the drain once
// it is dead) and the node's remote-free ring and stack (lock-free). See ``SlabCache`` for the design.

/// Which list of its node a slab is on.
enum SlabKind: UInt8 {
    /// No object of the slab is out.
    case free
    /// Some objects are out, some are not.
    case partial
    /// Every object is out (with a user, in a magazine, in the depot, in the remote-free ring or on the stack).
    case full
}

/// A slab starts with its home node's index (an `Int`, never changed, alone on the first cache line: CPUs of other
/// nodes and foreign threads read it on every free and must not contend with the lock holder's writes), then, at
/// byte 64, this header, guarded by the node's lock. The slab is aligned to its own size, so an object's slab is its
/// address with the low bits cleared.
struct SlabHeader {
    /// Where the header sits in its slab.
    static let offset = 64
    /// Objects given back to this slab, linked through their first word.
    var freeList: UnsafeMutableRawPointer?
    /// Objects `bump..<objectsPerSlab` have never been handed out (a new slab is not threaded up front).
    var bump: Int
    /// Objects out of this slab: with users, in CPU magazines, in the depot, in the remote-free ring or on the stack.
    var outstanding: Int
    var kind: SlabKind
    var previous: UnsafeMutablePointer<SlabHeader>?
    var next: UnsafeMutablePointer<SlabHeader>?
}

/// A doubly linked list of slabs through their headers.
struct SlabList {
    private(set) var head: UnsafeMutablePointer<SlabHeader>?
    private(set) var count = 0

    mutating func push(_ slab: UnsafeMutablePointer<SlabHeader>) {
        slab.pointee.previous = nil
        slab.pointee.next = head
        head?.pointee.previous = slab
        head = slab
        count += 1
    }

    mutating func remove(_ slab: UnsafeMutablePointer<SlabHeader>) {
        if let previous = slab.pointee.previous { previous.pointee.next = slab.pointee.next } else { head = slab.pointee.next }
        slab.pointee.next?.pointee.previous = slab.pointee.previous
        slab.pointee.previous = nil
        slab.pointee.next = nil
        count -= 1
    }

    mutating func popFirst() -> UnsafeMutablePointer<SlabHeader>? {
        guard let first = head else { return nil }
        remove(first)
        return first
    }

    /// Every slab of the list (the list must not change meanwhile).
    func forEach(_ body: (UnsafeMutablePointer<SlabHeader>) -> Void) {
        var slab = head
        while let current = slab { slab = current.pointee.next; body(current) }
    }
}

/// A magazine: a stack of up to `capacity` object pointers (Bonwick). Its header is followed by the pointers.
@usableFromInline
struct MagazineHeader {
    @usableFromInline var count: Int
    @usableFromInline var next: UnsafeMutablePointer<MagazineHeader>?

    init(count: Int, next: UnsafeMutablePointer<MagazineHeader>?) {
        self.count = count
        self.next = next
    }
}

@usableFromInline
typealias Magazine = UnsafeMutablePointer<MagazineHeader>

extension UnsafeMutablePointer where Pointee == MagazineHeader {
    /// The magazine's object pointers (`count` of them are valid).
    @inlinable @inline(__always)
    var objects: UnsafeMutablePointer<UnsafeMutableRawPointer> {
        UnsafeMutableRawPointer(self + 1).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
    }

    static func make(capacity: Int) -> Magazine {
        let raw = UnsafeMutableRawPointer.allocate(
            byteCount: MemoryLayout<MagazineHeader>.stride + capacity * MemoryLayout<UnsafeMutableRawPointer>.stride,
            alignment: 64)
        let magazine = raw.bindMemory(to: MagazineHeader.self, capacity: 1)
        magazine.initialize(to: MagazineHeader(count: 0, next: nil))
        return magazine
    }

    func destroy() { UnsafeMutableRawPointer(self).deallocate() }
}

/// A stack of magazines (the depot's full or empty ones).
struct MagazineStack {
    private(set) var head: Magazine?
    private(set) var count = 0

    mutating func push(_ magazine: Magazine) {
        magazine.pointee.next = head
        head = magazine
        count += 1
    }

    mutating func pop() -> Magazine? {
        guard let top = head else { return nil }
        head = top.pointee.next
        top.pointee.next = nil
        count -= 1
        return top
    }
}

/// One CPU's magazines: touched only by that CPU (or by the drain once it is dead, or before it starts). The
/// first cache line of the CPU's slot; its counters (``CPUCounters``) are on the second, so that a reader of the
/// counters (``SlabCache/statistics()``) never touches what the CPU modifies.
@usableFromInline
struct CPUMagazines {
    @usableFromInline var loaded: Magazine?
    var previous: Magazine?
    /// The CPU's node, as an index into the cache's nodes (never changes).
    let nodeIndex: Int

    init(nodeIndex: Int) { self.nodeIndex = nodeIndex }
}

/// One CPU's counters: written only by the party that owns the magazines, read by anyone, hence relaxed atomics
/// written with a plain load and store (no read-modify-write).
@usableFromInline
struct CPUCounters: ~Copyable {
    /// Objects handed out from the magazines.
    @usableFromInline let allocated = Atomic<Int>(0)
    /// Objects freed into the magazines.
    @usableFromInline let freedLocal = Atomic<Int>(0)
    /// Objects this CPU freed to another node (the remote-free path).
    let freedRemote = Atomic<Int>(0)
    /// Objects that came into the magazines from the node (refills, full magazines from the depot).
    let received = Atomic<Int>(0)
    /// Objects that left the magazines for the node (full magazines to the depot, flushes, the drain).
    let returned = Atomic<Int>(0)

    init() {}

    /// Objects now in the magazines.
    var cached: Int {
        received.load(ordering: .relaxed) - returned.load(ordering: .relaxed)
            - allocated.load(ordering: .relaxed) + freedLocal.load(ordering: .relaxed)
    }
}

extension UnsafeMutablePointer where Pointee == CPUMagazines {
    /// The counters on the slot's second cache line.
    @inlinable @inline(__always)
    var counters: UnsafeMutablePointer<CPUCounters> {
        (UnsafeMutableRawPointer(self) + 64).assumingMemoryBound(to: CPUCounters.self)
    }
}

extension Atomic where Value == Int {
    /// `value += delta` by the only writer of this counter: a relaxed load and store, no read-modify-write.
    @inlinable @inline(__always)
    func bump(_ delta: Int = 1) { store(load(ordering: .relaxed) &+ delta, ordering: .relaxed) }
}

/// A node's remote-free ring: a bounded multi-producer queue of object pointers that logical CPUs of other nodes
/// send home, drained in order by the holder of the node's lock (the only consumer).
///
/// A free reserves a slot with one CAS on `tail`, then stores the pointer in it (release); the lock holder reads
/// slots from `head` while they are not 0 (acquire), stores 0 back and publishes the new `head` (release). Neither
/// side touches the object's memory: where a linked stack writes a link into every object on the freeing CPU and
/// chases the links on the home node (a cache-line transfer each way per object, one after the other), the ring
/// moves eight pointers per cache line, in order. A slot that is reserved and not yet written stops the drain
/// until its free completes (the objects behind it wait for the next drain); a full ring sends the free to the
/// linked stack instead (``SlabNode/pushRemote(_:)``). Foreign threads always use the linked stack, so that only
/// logical CPUs, which are never cancelled between the CAS and the store, hold a reservation.
///
/// Plain pointers to raw memory (the slots, and `tail` and `head` on cache lines of their own), so that a free
/// reaches the ring of any node without touching, or retaining, the node object. Made and destroyed by
/// ``SlabNode``.
struct RemoteRing {
    /// `capacity` pointers, 0 where empty.
    let slots: UnsafeMutablePointer<Atomic<UInt>>
    /// `tail` (slots reserved so far, written by CAS by any freeing CPU) at byte 0, `head` (slots drained so far,
    /// written only by the lock holder) at byte 64.
    let indices: UnsafeMutableRawPointer
    /// Slots (a power of two).
    let capacity: Int

    init(capacity: Int) {
        precondition(capacity > 0 && capacity & (capacity - 1) == 0, "remote-free ring capacity \(capacity)")
        self.capacity = capacity
        // Whole cache lines of their own: nothing else on the heap shares a line with the slots.
        slots = UnsafeMutableRawPointer.allocate(byteCount: capacity * MemoryLayout<UInt>.stride, alignment: 64)
            .bindMemory(to: Atomic<UInt>.self, capacity: capacity)
        for index in 0..<capacity { (slots + index).initialize(to: Atomic<UInt>(0)) }
        indices = .allocate(byteCount: 128, alignment: 64)
        indices.bindMemory(to: Atomic<Int>.self, capacity: 1).initialize(to: Atomic<Int>(0))
        (indices + 64).bindMemory(to: Atomic<Int>.self, capacity: 1).initialize(to: Atomic<Int>(0))
    }

    func destroy() {
        slots.deinitialize(count: capacity)
        UnsafeMutableRawPointer(slots).deallocate()
        tail.deinitialize(count: 1)
        head.deinitialize(count: 1)
        indices.deallocate()
    }

    @inline(__always)
    var tail: UnsafeMutablePointer<Atomic<Int>> { indices.assumingMemoryBound(to: Atomic<Int>.self) }
    @inline(__always)
    var head: UnsafeMutablePointer<Atomic<Int>> { (indices + 64).assumingMemoryBound(to: Atomic<Int>.self) }

    /// Sends an object home from a logical CPU: one CAS that reserves a slot, then a release store of the pointer.
    /// False when the ring is full (the caller pushes the object on the linked stack instead).
    @inline(__always)
    func push(_ object: UnsafeMutableRawPointer) -> Bool {
        var reserved = tail.pointee.load(ordering: .relaxed)
        while true {
            // Acquiring: partner of the drain's releasing store of `head`: every slot below that head was emptied
            // (stored 0) before, so the store below comes after the drain's 0 in the slot's modification order.
            // Signed: a stale `reserved` below `head` is not "full"; its CAS fails and takes the current tail.
            if reserved &- head.pointee.load(ordering: .acquiring) >= capacity { return false }
            // Relaxed: the reservation publishes nothing; the slot's release store does.
            let (exchanged, seen) = tail.pointee.compareExchange(expected: reserved, desired: reserved &+ 1,
                                                                 ordering: .relaxed)
            if exchanged { break }
            reserved = seen
        }
        // Releasing: partner of the drain's acquiring load of the slot (the user's last writes to the object reach
        // the CPU that hands it out next).
        slots[reserved & (capacity &- 1)].store(UInt(bitPattern: object), ordering: .releasing)
        return true
    }

    /// Takes up to `count` objects in order, stopping at the first slot not written yet (the caller holds the
    /// node's lock: the only consumer). Returns how many.
    func take(_ count: Int, into output: UnsafeMutablePointer<UnsafeMutableRawPointer>) -> Int {
        // Relaxed: only the lock holder writes `head`, and the lock orders the holders.
        let first = head.pointee.load(ordering: .relaxed)
        var taken = 0
        // At most `capacity`: the slot after the last one of a full ring is the first, emptied here.
        while taken < count {
            let slot = slots + ((first &+ taken) & (capacity &- 1))
            // Acquiring: partner of the free's releasing store of the pointer.
            let bits = slot.pointee.load(ordering: .acquiring)
            guard let object = UnsafeMutableRawPointer(bitPattern: bits) else { break }
            // Relaxed: published to the next free of this slot by the releasing store of `head` below.
            slot.pointee.store(0, ordering: .relaxed)
            output[taken] = object
            taken += 1
        }
        // Releasing: partner of the frees' acquiring load of `head` (the slots below it are 0 again).
        if taken > 0 { head.pointee.store(first &+ taken, ordering: .releasing) }
        return taken
    }

    /// Every object written so far, one by one (the caller holds the node's lock). At most `capacity` of them: a
    /// ring never holds more, and a slot left non-zero by a bug must not turn the drain into a loop that never ends.
    func takeAll(_ body: (UnsafeMutableRawPointer) -> Void) {
        var object = UnsafeMutableRawPointer(bitPattern: 1)!
        for _ in 0..<capacity {
            guard take(1, into: &object) == 1 else { return }
            body(object)
        }
    }

    /// Objects reserved or written and not drained (exact when no free is in flight).
    var pending: Int { tail.pointee.load(ordering: .relaxed) &- head.pointee.load(ordering: .relaxed) }

    /// The ring's capacity for a cache whose magazines hold `magazineCapacity` objects: 32 magazines' worth, a
    /// power of two in 512...4096 (a 64-object magazine gives 2,048 slots, 16 KiB per node).
    static func capacity(magazineCapacity: Int) -> Int {
        var capacity = 512
        while capacity < 32 * magazineCapacity && capacity < 4096 { capacity <<= 1 }
        return capacity
    }
}

/// The per-node part of a cache: slab lists and the depot (guarded by `lock`), the remote-free ring and stack
/// (lock-free: any CPU of another node reserves a ring slot with one CAS, any thread pushes on the stack with one
/// CAS, the lock holder drains both).
final class SlabNode: @unchecked Sendable {
    // @unchecked: every `var` is guarded by `lock`; `remote` and `foreignFreed` are atomics, `ring` is lock-free
    // (see ``RemoteRing``).
    /// The NUMA node id (synthetic or real, as the topology says).
    let id: Int
    /// The real node its slabs are mapped on (`id`, except in a synthetic topology).
    let memoryNode: Int
    let lock = Lock()
    var partial = SlabList()
    var full = SlabList()
    var free = SlabList()
    var fullMagazines = MagazineStack()
    var emptyMagazines = MagazineStack()
    /// Σ `outstanding` of this node's slabs.
    var outstanding = 0
    /// Bytes of slab memory mapped on this node.
    var bytesMapped = 0
    /// Objects foreign threads took from this node.
    var foreignAllocated = 0
    /// Objects of this node that foreign threads freed (kept here, not on the cache, so that foreign frees write
    /// no line that the CPUs' fast paths read).
    let foreignFreed = Atomic<Int>(0)
    /// Objects freed here from other nodes and foreign threads, linked through their first word (0: empty).
    let remote = Atomic<UInt>(0)
    /// Objects taken off `remote` by a refill that did not need them all, linked through their first word: the
    /// next refill starts here (they are home already; returning them to their slabs would only be undone).
    var home: UnsafeMutableRawPointer?
    var homeCount = 0
    /// Objects freed here from other nodes' logical CPUs (see ``RemoteRing``).
    let ring: RemoteRing

    init(id: Int, memoryNode: Int, ringCapacity: Int) {
        self.id = id
        self.memoryNode = memoryNode
        ring = RemoteRing(capacity: ringCapacity)
    }

    deinit { ring.destroy() }

    /// Pushes an object on the remote-free stack: one CAS, no lock.
    @inline(__always)
    func pushRemote(_ object: UnsafeMutableRawPointer) {
        var head = remote.load(ordering: .relaxed)
        while true {
            // The cheapest double free to catch: it would close the stack into a cycle (a hang under the lock).
            precondition(head != UInt(bitPattern: object), "slab allocator: double free of object \(object)")
            object.storeBytes(of: head, as: UInt.self)
            // Release: the object's link (and the user's last writes) reach the lock holder's acquiring exchange.
            let (exchanged, seen) = remote.compareExchange(expected: head, desired: UInt(bitPattern: object),
                                                           successOrdering: .releasing, failureOrdering: .relaxed)
            if exchanged { break }
            head = seen
        }
    }

    /// Takes the whole remote-free stack (the caller holds `lock`); calls `body` for each object.
    func takeRemote(_ body: (UnsafeMutableRawPointer) -> Void) {
        guard remote.load(ordering: .relaxed) != 0 else { return }
        var head = remote.exchange(0, ordering: .acquiring)
        while let object = UnsafeMutableRawPointer(bitPattern: head) {
            head = object.load(as: UInt.self)
            body(object)
        }
    }

    /// Puts an object on the home list (the caller holds `lock`).
    func pushHome(_ object: UnsafeMutableRawPointer) {
        object.storeBytes(of: home, as: UnsafeMutableRawPointer?.self)
        home = object
        homeCount += 1
    }

    /// Takes the home list's first object (the caller holds `lock`).
    func popHome() -> UnsafeMutableRawPointer? {
        guard let object = home else { return nil }
        home = object.load(as: UnsafeMutableRawPointer?.self)
        homeCount -= 1
        return object
    }

    /// Objects sent home and not yet taken: the home list, the ring and the remote-free stack. The caller holds
    /// `lock`, so nobody takes from the stack meanwhile: pushes only put new heads in front of the part walked here.
    var pendingHome: Int {
        var count = homeCount + ring.pending
        var head = remote.load(ordering: .acquiring)
        while let object = UnsafeMutableRawPointer(bitPattern: head) {
            head = object.load(as: UInt.self)
            count += 1
        }
        return count
    }

    /// Every object sent home, one by one, off the home list, the ring and the remote-free stack (the caller holds
    /// `lock`).
    func takeAllHome(_ body: (UnsafeMutableRawPointer) -> Void) {
        while let object = popHome() { body(object) }
        ring.takeAll(body)
        takeRemote(body)
    }
}
