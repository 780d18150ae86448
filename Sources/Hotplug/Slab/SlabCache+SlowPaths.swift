// The slow paths of allocate() and free(_:): on a logical CPU when its loaded magazine is empty (or full), and on
// threads that are not logical CPUs of the machine. Out of line; they take the node's lock.

extension SlabCache {
    /// An allocation on CPU `cpu` whose loaded magazine is empty: swap in the previous magazine if it holds objects,
    /// else take a full one from the node's depot, else fill the loaded one from the node.
    func allocateSlow(_ cpu: Int, _ slot: UnsafeMutablePointer<CPUMagazines>) throws(HotplugError) -> UnsafeMutableRawPointer {
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

    /// A free on CPU `cpu` whose loaded magazine is full: swap in the previous magazine if it is empty, else move the
    /// previous one to the depot and load an empty one.
    func freeSlow(_ cpu: Int, _ slot: UnsafeMutablePointer<CPUMagazines>, _ object: UnsafeMutableRawPointer) {
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
    func giveMagazines(_ slot: UnsafeMutablePointer<CPUMagazines>, _ node: SlabNode) {
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

    /// The node a foreign thread allocates from: the node of the physical CPU it runs on.
    private func foreignNode() -> SlabNode {
        if nodes.count == 1 { return nodes[0] }
        return nodes[physicalNodeIndex[Shim.currentPhysicalCPU()] ?? 0]
    }

    /// An allocation on a thread that is not a logical CPU of the machine: one object, under the node's lock.
    func allocateForeign() throws(HotplugError) -> UnsafeMutableRawPointer {
        let node = foreignNode()
        var object = UnsafeMutableRawPointer(bitPattern: 1)!
        try node.lock.withLock { () throws(HotplugError) in
            _ = try take(from: node, count: 1, into: &object)
            node.foreignAllocated += 1
        }
        if isDebug { debugHandOut(object) }
        return object
    }
}
