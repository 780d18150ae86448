/// The physical CPUs a ``Machine`` may use, their NUMA nodes and the distances between nodes.
///
/// ``current()`` reads the process's affinity mask (`sched_getaffinity`: ids may be sparse, never `nproc`) and
/// libnuma; where libnuma reports no NUMA support every CPU is on node 0. ``synthetic(nodes:cpusPerNode:)``
/// describes a made-up machine (4 nodes x 4 CPUs, say) whose slots map many-to-one onto the real CPUs, so that
/// node-aware logic is testable on a one-node machine: node ids then come from the synthetic description.
public struct Topology: Sendable, Equatable {
    /// One slot of the topology: the physical CPU it runs on and the node it belongs to.
    public struct CPU: Sendable, Equatable {
        /// The kernel's CPU id (what pinning uses).
        public let physicalID: Int
        /// The NUMA node this slot belongs to (synthetic or real).
        public let node: Int
    }

    /// The slots, in order. Logical CPU `i` of a machine uses slot `i % cpus.count`.
    public let cpus: [CPU]
    /// The node ids that hold at least one slot, ascending.
    public let nodes: [Int]
    /// True for a synthetic topology.
    public let isSynthetic: Bool
    private let distances: [[Int]]   // indexed by position in `nodes`

    /// The topology of this process: its affinity mask and the NUMA layout of those CPUs.
    /// - Throws: ``HotplugError/system(call:errno:)`` when the affinity mask cannot be read.
    public static func current() throws(HotplugError) -> Topology {
        let physical = try Shim.affinity()
        guard !physical.isEmpty else { throw .invalidConfiguration("the process affinity mask is empty") }
        let cpus = physical.map { CPU(physicalID: $0, node: Numa.node(ofPhysicalCPU: $0)) }
        let nodes = Array(Set(cpus.map(\.node))).sorted()
        let distances = nodes.map { a in nodes.map { b in Numa.distance(a, b) } }
        return Topology(cpus: cpus, nodes: nodes, isSynthetic: false, distances: distances)
    }

    /// A synthetic topology of `nodes` x `cpusPerNode` slots mapped round-robin onto the CPUs of the affinity
    /// mask. Distances are 10 within a node and 20 between nodes.
    /// - Throws: ``HotplugError/invalidConfiguration(_:)`` for zero nodes or CPUs;
    ///   ``HotplugError/invalidArgument(name:value:valid:)`` for more than ``Machine/maximumCPUs`` slots in all.
    public static func synthetic(nodes: Int, cpusPerNode: Int) throws(HotplugError) -> Topology {
        guard nodes >= 1, cpusPerNode >= 1 else {
            throw .invalidConfiguration("a synthetic topology needs at least 1 node and 1 CPU per node")
        }
        let (slots, overflow) = nodes.multipliedReportingOverflow(by: cpusPerNode)
        guard !overflow, slots <= Machine.maximumCPUs else {
            throw .invalidArgument(name: "nodes x cpusPerNode", value: "\(nodes) x \(cpusPerNode)",
                                   valid: "at most \(Machine.maximumCPUs) slots")
        }
        let physical = try Shim.affinity()
        guard !physical.isEmpty else { throw .invalidConfiguration("the process affinity mask is empty") }
        var cpus: [CPU] = []
        for node in 0..<nodes {
            for index in 0..<cpusPerNode {
                let slot = node * cpusPerNode + index
                cpus.append(CPU(physicalID: physical[slot % physical.count], node: node))
            }
        }
        let ids = Array(0..<nodes)
        return Topology(cpus: cpus, nodes: ids, isSynthetic: true,
                        distances: ids.map { a in ids.map { b in a == b ? 10 : 20 } })
    }

    /// The same slots in another order: slot `i` of the result is slot `order[i]` of this topology (a partition of a
    /// ``CPUPool`` puts the processors it owns first, so that they are its initially online logical CPUs).
    /// - Warning: traps when `order` is not a permutation of the slot indices (a programmer error).
    func reordered(_ order: [Int]) -> Topology {
        precondition(order.sorted() == Array(cpus.indices), "reordered needs a permutation of 0..<\(cpus.count), got \(order)")
        return Topology(cpus: order.map { cpus[$0] }, nodes: nodes, isSynthetic: isSynthetic, distances: distances)
    }

    /// `count` slots: slot `i` is this topology's slot `i % cpus.count` (a pool of more processors than CPUs).
    func repeated(to count: Int) -> Topology {
        Topology(cpus: (0..<count).map { cpus[$0 % cpus.count] }, nodes: nodes, isSynthetic: isSynthetic,
                 distances: distances)
    }

    /// The distance between two nodes (10 for a node to itself, as the kernel reports it).
    /// - Warning: traps for a node that is not in ``nodes``.
    public func distance(from a: Int, to b: Int) -> Int {
        guard let i = nodes.firstIndex(of: a), let j = nodes.firstIndex(of: b) else {
            preconditionFailure("node \(a) or \(b) is not in this topology (nodes: \(nodes))")
        }
        return distances[i][j]
    }

    /// The distinct physical CPUs of this topology, ascending.
    public var physicalCPUs: [Int] { Array(Set(cpus.map(\.physicalID))).sorted() }
}
