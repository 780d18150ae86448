// The cache and CPU hotplug: `slab:prepare` gives an attaching CPU its magazines, `slab:dead` drains a detached
// CPU's, and shrink() drains every CPU and node.

extension SlabCache {
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

    /// Returns every cached object to its slab and every free slab to the system: each online CPU empties its
    /// magazines (on its own thread), then every node empties its depot, remote-free ring and stack and unmaps its
    /// free slabs. After everything was freed, ``Statistics/bytesMapped`` is 0.
    /// - Throws: the errors of ``Machine/runOnEach(timeout:_:)`` (a CPU that does not reach a safe point in time);
    ///   after ``Machine/shutdown()`` it throws nothing and empties the nodes.
    /// - Warning: takes the hotplug read lock: not from a hotplug callback.
    public func shrink() throws(HotplugError) {
        do throws(HotplugError) {
            _ = try machine.withCPUsReadLocked { () throws(HotplugError) in
                try machine.runOnEach { [self] cpu in release(cpu: cpu, keepMagazines: false) }
            }
        } catch .shutDown {
            // Every CPU emptied its magazines on its way down (`slab:dead`): only the nodes are left to empty.
        }
        for node in nodes {
            node.lock.withLock {
                emptyDepotAndRemote(node)
                while let magazine = node.emptyMagazines.pop() { magazine.destroy() }
                trim(node, keeping: 0)
            }
        }
    }
}
