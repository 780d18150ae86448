// Where the cache's objects are: the statistics snapshot, and an object's home node as the cache and the kernel
// see it.

extension SlabCache {
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
            /// slabs (on the remote-free ring, the remote-free stack or the node's home list).
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
}
