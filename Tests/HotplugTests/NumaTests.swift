import Testing
@testable import Hotplug

/// Node memory, the ground floor of the slab allocator: pages come from the node asked for, and the kernel says
/// so (get_mempolicy on a touched page).
@Suite struct NumaTests {
    @Test func pagesComeFromTheNodeAskedFor() throws {
        let topology = try Topology.current()
        let bytes = 64 * 1024
        for node in topology.nodes {
            let memory = try Numa.allocate(bytes: bytes, onNode: node)
            defer { Numa.free(memory, bytes: bytes) }
            #expect(Int(bitPattern: memory) % 4096 == 0, "not page aligned")
            memory.initializeMemory(as: UInt8.self, repeating: 0xA5, count: bytes)   // touch every page
            for offset in stride(from: 0, to: bytes, by: 4096) {
                #expect(Numa.node(ofAddress: memory + offset) == node, "page at +\(offset) not on node \(node)")
            }
            #expect(memory.load(fromByteOffset: bytes - 1, as: UInt8.self) == 0xA5)
        }
    }

    @Test func everyLogicalCPUsNodeIsARealNodeOfTheMachine() throws {
        let machine = try Machine(cpus: 2, configuration: .init(initiallyOnline: 1))
        defer { machine.shutdown() }
        let nodes = Set(machine.topology.nodes)
        for cpu in 0..<machine.possibleCount { #expect(nodes.contains(try machine.node(of: cpu))) }
    }

    @Test func aZeroSizeTraps() async {
        await #expect(processExitsWith: .failure) {
            _ = try Numa.allocate(bytes: 0, onNode: 0)
        }
    }
}
