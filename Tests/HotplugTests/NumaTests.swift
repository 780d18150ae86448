import Foundation
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

    /// Every logical CPU's node is the node the kernel gives its physical CPU. The kernel's answer is read here from
    /// sysfs (`/sys/devices/system/node/nodeN/cpulist`), not through libnuma as the library reads it, so a wrong
    /// mapping fails wherever it differs from the kernel's: a node id shifted, and on a NUMA machine every CPU put
    /// on node 0, or a CPU given another CPU's node.
    @Test func everyLogicalCPUsNodeIsTheKernelsNodeOfItsPhysicalCPU() throws {
        let machine = try Machine(configuration: .init(initiallyOnline: 1))
        defer { machine.shutdown() }
        // Without NUMA support (libnuma's own probe, or no node directory in sysfs) everything is node 0.
        let kernel = Numa.isAvailable ? Self.kernelNodes() : [:]
        let nodes = Set(machine.topology.nodes)
        for cpu in 0..<machine.possibleCount {
            let physical = try machine.physicalCPU(of: cpu)
            let node = try machine.node(of: cpu)
            #expect(nodes.contains(node), "logical CPU \(cpu): node \(node) is not in the topology's \(nodes.sorted())")
            #expect(node == kernel[physical] ?? 0,
                    "logical CPU \(cpu) on physical CPU \(physical): node \(node), the kernel says \(kernel[physical] ?? 0)")
        }
    }

    /// The node of every CPU the kernel lists in `/sys/devices/system/node/nodeN/cpulist` (empty when there is no
    /// such directory).
    static func kernelNodes() -> [Int: Int] {
        let root = "/sys/devices/system/node"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        var nodeOfCPU: [Int: Int] = [:]
        for entry in entries where entry.hasPrefix("node") {
            guard let node = Int(entry.dropFirst(4)),
                  let list = try? String(contentsOfFile: "\(root)/\(entry)/cpulist", encoding: .utf8) else { continue }
            for cpu in parseCPUList(list) { nodeOfCPU[cpu] = node }
        }
        return nodeOfCPU
    }

    /// The CPUs of a kernel CPU list such as `0-3,8,10-11`.
    static func parseCPUList(_ text: String) -> [Int] {
        text.split(whereSeparator: { $0 == "," || $0.isWhitespace }).flatMap { range -> [Int] in
            let bounds = range.split(separator: "-").compactMap { Int($0) }
            switch bounds.count {
            case 1: return [bounds[0]]
            case 2 where bounds[0] <= bounds[1]: return Array(bounds[0]...bounds[1])
            default: return []
            }
        }
    }

    @Test func theKernelsCPUListsParse() {
        #expect(Self.parseCPUList("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11])
        #expect(Self.parseCPUList("5") == [5])
        #expect(Self.parseCPUList("\n").isEmpty)
    }

    @Test func aZeroSizeTraps() async {
        await #expect(processExitsWith: .failure) {
            _ = try Numa.allocate(bytes: 0, onNode: 0)
        }
    }
}
