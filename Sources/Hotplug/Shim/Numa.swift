import CNuma
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

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

    /// Page-aligned memory placed on `node` (`numa_alloc_onnode`): the kernel places each page there when it is
    /// first touched. Where NUMA is not available, anonymous `mmap` memory (everything is node 0 then).
    /// - Throws: ``HotplugError/system(call:errno:)`` when the kernel refuses the mapping.
    static func allocate(bytes: Int, onNode node: Int) throws(HotplugError) -> UnsafeMutableRawPointer {
        precondition(bytes > 0, "Numa.allocate needs a positive size, got \(bytes)")
        if isAvailable {
            guard let memory = numa_alloc_onnode(bytes, Int32(node)) else {
                let code = errno   // before the message below allocates
                throw .system(call: "numa_alloc_onnode(\(bytes), node \(node))", errno: code)
            }
            return memory
        }
        let memory = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let memory, memory != MAP_FAILED else {
            let code = errno   // before the message below allocates
            throw .system(call: "mmap(\(bytes))", errno: code)
        }
        return memory
    }

    /// `bytes` of memory placed on `node` whose address is a multiple of `bytes` (a power of two, at least a
    /// page): ``allocate(bytes:onNode:)`` of twice the size, the unaligned head and tail unmapped at once (only the
    /// aligned middle is ever touched, so only it gets pages). Free it with ``free(_:bytes:)``.
    static func allocateAligned(bytes: Int, onNode node: Int) throws(HotplugError) -> UnsafeMutableRawPointer {
        precondition(bytes > 0 && bytes & (bytes - 1) == 0, "Numa.allocateAligned needs a power of two, got \(bytes)")
        let raw = try allocate(bytes: bytes * 2, onNode: node)
        let start = UInt(bitPattern: raw)
        let aligned = (start + UInt(bytes) - 1) & ~(UInt(bytes) - 1)
        let head = Int(aligned - start)
        if head > 0 { munmap(raw, head) }
        let tail = bytes - head
        if tail > 0 { munmap(raw + head + bytes, tail) }
        return raw + head
    }

    /// Returns memory from ``allocate(bytes:onNode:)`` to the system.
    static func free(_ memory: UnsafeMutableRawPointer, bytes: Int) {
        if isAvailable { numa_free(memory, bytes) } else { munmap(memory, bytes) }
    }

    /// The node the page holding `address` sits on (`get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)`); the page must have
    /// been touched. 0 where NUMA is not available; nil when the kernel does not say.
    static func node(ofAddress address: UnsafeRawPointer) -> Int? {
        guard isAvailable else { return 0 }
        var node: Int32 = -1
        let rc = get_mempolicy(&node, nil, 0, UnsafeMutableRawPointer(mutating: address),
                               UInt32(MPOL_F_NODE | MPOL_F_ADDR))
        return rc == 0 && node >= 0 ? Int(node) : nil
    }
}

