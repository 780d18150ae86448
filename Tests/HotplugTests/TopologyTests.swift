import Foundation
import Testing
@testable import Hotplug

@Suite struct TopologyTests {
    @Test func currentFollowsTheAffinityMask() throws {
        let topology = try Topology.current()
        let expected = try allowedCPUs(ofThread: Shim.currentThreadID)
        #expect(CPUSet(topology.cpus.map(\.physicalID)).description == expected)
        #expect(!topology.isSynthetic)
        for node in topology.nodes { #expect(topology.distance(from: node, to: node) == 10) }
        #expect(Set(topology.cpus.map(\.node)) == Set(topology.nodes))
    }

    @Test func syntheticFourByFour() throws {
        let topology = try Topology.synthetic(nodes: 4, cpusPerNode: 4)
        #expect(topology.cpus.count == 16)
        #expect(topology.nodes == [0, 1, 2, 3])
        #expect(topology.isSynthetic)
        #expect(topology.cpus.map(\.node) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
        #expect(topology.distance(from: 1, to: 1) == 10)
        #expect(topology.distance(from: 0, to: 3) == 20)
        let physical = try Topology.current().physicalCPUs
        #expect(Set(topology.cpus.map(\.physicalID)).isSubset(of: Set(physical)))
        #expect(topology.physicalCPUs == physical.prefix(min(16, physical.count)).sorted())
    }

    @Test func syntheticRejectsEmpty() {
        #expect(throws: HotplugError.invalidConfiguration("a synthetic topology needs at least 1 node and 1 CPU per node")) {
            try Topology.synthetic(nodes: 0, cpusPerNode: 4)
        }
    }

    @Test func machineUsesSyntheticNodes() throws {
        let machine = try Machine(topology: .synthetic(nodes: 2, cpusPerNode: 2), configuration: .init(initiallyOnline: 1))
        defer { machine.shutdown() }
        #expect(machine.possibleCount == 4)
        #expect(try (0..<4).map { try machine.node(of: $0) } == [0, 0, 1, 1])
    }

    @Test func cpuSetListFormat() {
        #expect(CPUSet([0, 1, 2, 3, 8, 10, 11]).description == "0-3,8,10-11")
        #expect(CPUSet().description == "(none)")
        var set: CPUSet = [3, 200]
        #expect(set.count == 2 && set.contains(200) && !set.contains(4))
        set.remove(200)
        #expect(set == [3])
    }

    @Test func distanceOfUnknownNodeTraps() async {
        await #expect(processExitsWith: .failure) {
            let topology = try Topology.synthetic(nodes: 2, cpusPerNode: 1)
            _ = topology.distance(from: 0, to: 7)
        }
    }
}
