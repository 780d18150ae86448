import CNuma

/// libnuma, reached from here only.
enum Numa {
    /// True when the kernel and libnuma report NUMA support.
    static var isAvailable: Bool { numa_available() >= 0 }

    /// The node of a physical CPU (0 where NUMA is not available or the kernel does not say).
    static func node(ofPhysicalCPU cpu: Int) -> Int {
        guard isAvailable else { return 0 }
        let node = numa_node_of_cpu(Int32(cpu))
        return node < 0 ? 0 : Int(node)
    }

    /// The distance between two nodes as the kernel reports it (10 local); 10 / 20 where it does not.
    static func distance(_ a: Int, _ b: Int) -> Int {
        if isAvailable {
            let value = numa_distance(Int32(a), Int32(b))
            if value > 0 { return Int(value) }
        }
        return a == b ? 10 : 20
    }
}
