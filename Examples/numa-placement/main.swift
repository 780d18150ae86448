// numa-placement: proves, on whatever NUMA topology it runs on, that the slab allocator puts an object's memory on the
// node of the logical CPU that allocated it, and that an object freed on another node's CPU goes home to its own node
// and comes back out only there (docs/ARCHITECTURE.md, "The slab allocator"). Made for a qemu guest with two real NUMA
// nodes (CPUs 0-1 on node 0, CPUs 2-3 on node 1), where it runs as `numa-placement --require-nodes 2`; on an ordinary
// one-node host it checks the same things where they apply and says what it cannot stage. Exits 0 when every check
// held; otherwise the last line starts with `FAILED` and names the first broken check, and the exit code is 1.
//
// How: one logical CPU per physical CPU of the affinity mask (`Topology.current()`, each pinned to its CPU), and
// one SlabCache per run: first with the default options, then with one-page slabs and tiny magazines and depots, so
// that refills, magazine swaps, depot overflows and slab mapping all take their slow paths thousands of times.
// Each run has four phases, every logical CPU working at once in cross-calls (`runOnEach`):
// 1. placement: every CPU allocates `--objects` objects and writes to all of each one (the kernel places a page when
//    it is first written), then asks the kernel where each object's page sits, `SlabCache.memoryNode(of:)`
//    (`get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)`), and the cache where it mapped the slab, `homeNode(of:)`: both must
//    be the node the topology gives the CPU, for every object. Also: the CPU ran on its own physical CPU, and the
//    objects of all CPUs are distinct and still hold the tags their CPUs wrote (nothing was handed out twice);
// 2. remote frees go home: with several nodes, every object is freed by a CPU of another node (node 0's by node 1's
//    CPUs, node 1's by node 0's; more nodes: the next node). `statistics()` must then show every freed object on its
//    home node's remote-free stack or home list (`remotePending` = objects freed there), the home node's
//    `outstanding` unchanged and equal to pending + depot + its own CPUs' magazines (so no magazine holds another
//    node's object), every CPU's magazines exactly as before (the freeing CPUs took nothing), and nothing in use.
//    On one node there is nothing remote to stage: each CPU's objects are freed by the next CPU of the node instead
//    (the same-node path), and the checks are that nothing went to a remote-free stack and the freeing CPUs'
//    magazines took the objects;
// 3. they come back out at home only: every CPU allocates `--objects` again and writes them. Every object must again
//    sit on the CPU's node (kernel and bookkeeping), none may be an address freed from another node, and each
//    node must reuse its own freed addresses. With several nodes that reuse is exact: the documented refill order
//    (a CPU's magazines, then what other nodes sent home, then slabs) makes a node hand out exactly its freed
//    objects once its CPUs' magazines are empty, and map no new slab meanwhile;
// 4. everything is freed on its own CPU, then `shrink()`: nothing in use, nothing cached, no byte mapped.
// Every check prints one line with its figures. With the defaults the whole program takes about 0.15 s on a 2-CPU
// host and about 1.2 s in the 4-CPU, 2-node qemu guest under TCG. A watchdog ends a run that hangs after 90 s with a
// FAILED line. Nothing here is random, so there is no --seed: a rerun repeats the same work.
import ArgumentParser
import Dispatch
import ExampleSupport
import Hotplug
import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct NumaPlacement: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "numa-placement",
        abstract: "Check that slab objects sit on the allocating CPU's NUMA node and that remote frees go home.",
        discussion: """
            One logical CPU per physical CPU of the affinity mask. Exits 0 when every check held; otherwise the \
            last line starts with FAILED and names the broken check, and the exit code is 1. On a one-node host \
            the remote-free checks become same-node checks (it says so); --require-nodes 2 refuses such a host.
            """
    )

    @Option(help: "Fail unless Topology.current() has at least this many NUMA nodes.")
    var requireNodes: Int = 1

    @Option(help: "Objects each logical CPU allocates per phase (the default spans several slabs and overflows the magazines).")
    var objects: Int = 4000

    @Option(help: "Object size in bytes (at least 8: each object holds an 8-byte tag).")
    var objectSize: Int = 64

    @Option(help: "Log level: trace, debug (the library's lifecycle transitions), info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .warning

    func validate() throws {
        guard requireNodes >= 1 else { throw ValidationError("--require-nodes must be at least 1") }
        guard objects >= 1 else { throw ValidationError("--objects must be at least 1") }
        guard (8...(1 << 20)).contains(objectSize) else { throw ValidationError("--object-size must be in 8...1048576") }
    }

    func run() throws {
        bootstrapLogging(level: logLevel)
        let started = monotonicNanoseconds()
        DispatchQueue.global().asyncAfter(deadline: .now() + 90) {
            report("FAILED watchdog: numa-placement did not finish within 90 s")
            exitProcess(1)
        }

        let topology = try prepare("read the topology") { try Topology.current() }
        let layout = topology.nodes.map { node in
            "node \(node): CPUs \(CPUSet(topology.cpus.filter { $0.node == node }.map(\.physicalID)))"
        }.joined(separator: ", ")
        let nodeCount = topology.nodes.count
        report("numa-placement: \(topology.cpus.count) logical CPU\(topology.cpus.count == 1 ? "" : "s"), one per "
               + "physical CPU, \(nodeCount) NUMA node\(nodeCount == 1 ? "" : "s") (\(layout)); \(objects) objects "
               + "of \(objectSize) bytes per CPU and phase")
        guard nodeCount >= requireNodes else {
            report("FAILED: require-nodes: the topology has \(nodeCount) NUMA node\(nodeCount == 1 ? "" : "s") "
                   + "(\(layout)), --require-nodes \(requireNodes) asks for at least \(requireNodes)")
            throw ExitCode.failure
        }
        let machine = try prepare("create a machine of \(topology.cpus.count) logical CPUs") {
            try Machine(topology: topology, cpus: topology.cpus.count, logger: Logger(label: "numa-placement"))
        }
        defer { machine.shutdown() }

        let page = max(4096, Int(sysconf(Int32(_SC_PAGESIZE))))
        let runs: [(title: String, options: SlabCache.Options)] = [
            ("default options", SlabCache.Options()),
            ("one-page slabs, magazines of 4, depots of 1, no free slab kept",
             SlabCache.Options(magazineCapacity: 4, slabBytes: page, minimumFreeSlabsPerNode: 0, depotMagazinesPerNode: 1)),
        ]
        let checks = Checks()
        var totals = Totals()
        for (index, run) in runs.enumerated() {
            let cache = try prepare("create the slab cache of run \(index + 1)") {
                try SlabCache(name: "numa-placement-\(index + 1)", objectSize: objectSize, machine: machine,
                              options: run.options)
            }
            report("run \(index + 1) (\(run.title)): slabs of \(cache.slabBytes / 1024) KiB holding "
                   + "\(cache.objectsPerSlab) objects, magazines of \(cache.magazineCapacity)")
            let placement = Placement(machine: machine, cache: cache, perCPU: objects, checks: checks)
            do {
                try placement.run(totals: &totals)
            } catch {
                checks.check("run \(index + 1) completes", false, "\(error)")
            }
        }

        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        if let failure = checks.failures.first {
            report("FAILED: \(failure)")
            throw ExitCode.failure
        }
        report("numa-placement: OK (\(runs.count) runs, \(topology.cpus.count) CPUs on \(nodeCount) "
               + "node\(nodeCount == 1 ? "" : "s"), \(checks.count) checks, \(totals.placed) objects placed, "
               + "0 mismatches, \(totals.freed) freed \(nodeCount > 1 ? "remotely" : "on another CPU of the node"), "
               + "\(totals.reused) of them reused at home, 0 from another node, \(fixed(seconds, 2)) s)")
    }

    /// Runs one setup step; when it throws, prints `FAILED setup: cannot <what>: <error>` and exits 1.
    func prepare<T>(_ what: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            report("FAILED setup: cannot \(what): \(error)")
            throw ExitCode.failure
        }
    }
}

/// `exit` of the C library (inside the command, `exit` names ArgumentParser's).
func exitProcess(_ status: Int32) -> Never { exit(status) }

/// Figures summed over the runs, for the final line.
struct Totals {
    var placed = 0
    var freed = 0
    var reused = 0
}

/// Prints one line per check and remembers the ones that failed.
final class Checks {
    private(set) var failures: [String] = []
    private(set) var count = 0

    func check(_ name: String, _ passed: Bool, _ figures: String) {
        count += 1
        report("  \(passed ? "ok  " : "FAIL") \(name): \(figures)")
        if !passed { failures.append("\(name) (\(figures))") }
    }
}

/// What one logical CPU allocated in a phase, and what it found checking each object.
struct Allocated: Sendable {
    var objects: [UInt] = []
    /// Where the CPU's thread ran, before and after (ProcFS: the kernel's view).
    var ranOn: [Int] = []
    /// memoryNode(of:) != the CPU's node, and the subset of those where the kernel did not say (nil).
    var memoryMismatches = 0
    var unknown = 0
    /// homeNode(of:) != the CPU's node.
    var homeMismatches = 0
    var firstMismatch: String?
    /// Objects at an address freed from this node's objects (reuse), and from another node's.
    var reused = 0
    var fromOtherNode = 0
}

/// The four phases of one run on one cache.
struct Placement {
    let machine: Machine
    let cache: SlabCache
    let perCPU: Int
    let checks: Checks

    var topology: Topology { machine.topology }
    var cpus: [Int] { Array(machine.online) }
    func node(_ cpu: Int) -> Int { topology.cpus[cpu].node }
    func cpus(of node: Int) -> [Int] { cpus.filter { self.node($0) == node } }
    func nodeStats(_ stats: SlabCache.Statistics, _ node: Int) -> SlabCache.Statistics.Node {
        stats.nodes.first { $0.node == node }!
    }
    func slabs(_ stats: SlabCache.Statistics, _ node: Int) -> Int {
        let entry = nodeStats(stats, node)
        return entry.fullSlabs + entry.partialSlabs + entry.freeSlabs
    }
    func cached(_ stats: SlabCache.Statistics, on node: Int) -> Int {
        cpus(of: node).reduce(0) { $0 + stats.cachedPerCPU[$1] }
    }

    /// On every CPU at once: allocate `count` objects, fill each and tag it, then check where each one sits.
    /// `freedHere[node]` / `freedElsewhere[node]`: addresses freed in phase 2 of the CPU's node / of other nodes.
    func allocateEverywhere(freedHere: [Int: Set<UInt>] = [:], freedElsewhere: [Int: Set<UInt>] = [:],
                            phase: UInt64) throws -> [Int: Allocated] {
        let cache = self.cache, count = perCPU, topology = self.topology
        return try machine.runOnEach { cpu in
            let node = topology.cpus[cpu].node
            var result = Allocated()
            result.ranOn.append(ProcFS.currentPhysicalCPU())
            result.objects.reserveCapacity(count)
            for index in 0..<count {
                let object = try cache.allocate()
                object.initializeMemory(as: UInt8.self, repeating: 0xA5, count: cache.objectSize)
                object.storeBytes(of: Placement.tag(phase: phase, cpu: cpu, index: index), as: UInt64.self)
                result.objects.append(UInt(bitPattern: object))
            }
            result.ranOn.append(ProcFS.currentPhysicalCPU())
            let here = freedHere[node] ?? [], elsewhere = freedElsewhere[node] ?? []
            for bits in result.objects {
                let object = UnsafeRawPointer(bitPattern: bits)!
                let memory = cache.memoryNode(of: object)
                let home = cache.homeNode(of: object)
                if memory != node || home != node {
                    if memory != node { result.memoryMismatches += 1 }
                    if memory == nil { result.unknown += 1 }
                    if home != node { result.homeMismatches += 1 }
                    if result.firstMismatch == nil {
                        result.firstMismatch = "object 0x\(String(bits, radix: 16)): memoryNode "
                            + "\(memory.map(String.init) ?? "nil"), homeNode \(home), expected \(node)"
                    }
                }
                if here.contains(bits) { result.reused += 1 }
                if elsewhere.contains(bits) { result.fromOtherNode += 1 }
            }
            return result
        }
    }

    static func tag(phase: UInt64, cpu: Int, index: Int) -> UInt64 {
        phase << 56 | UInt64(cpu) << 32 | UInt64(index)
    }

    /// One line per CPU: its objects sit on its node, by the kernel's word and by the cache's, and it ran pinned.
    func checkPlacement(_ allocated: [Int: Allocated], _ what: String) {
        for cpu in cpus {
            let result = allocated[cpu]!
            let physical = topology.cpus[cpu].physicalID
            var figures = "CPU \(cpu) (physical \(physical), node \(node(cpu))): \(result.objects.count) objects, "
                + "memoryNode mismatches \(result.memoryMismatches) (unknown \(result.unknown)), homeNode "
                + "mismatches \(result.homeMismatches)"
            if let first = result.firstMismatch { figures += "; first: \(first)" }
            let pinned = result.ranOn.allSatisfy { $0 == physical }
            if !pinned { figures += "; ran on physical CPUs \(result.ranOn), not \(physical)" }
            checks.check(what, result.memoryMismatches == 0 && result.homeMismatches == 0 && pinned
                         && result.objects.count == perCPU, figures)
        }
    }

    func run(totals: inout Totals) throws {
        let cache = self.cache
        let nodes = topology.nodes
        let multiNode = nodes.count > 1

        // 1. Placement.
        let first = try allocateEverywhere(phase: 1)
        checkPlacement(first, "placement")
        var all = Set<UInt>()
        var tagsIntact = 0
        for cpu in cpus {
            for (index, bits) in first[cpu]!.objects.enumerated() {
                all.insert(bits)
                let tag = UnsafeRawPointer(bitPattern: bits)!.load(as: UInt64.self)
                if tag == Placement.tag(phase: 1, cpu: cpu, index: index) { tagsIntact += 1 }
            }
        }
        let total = cpus.count * perCPU
        checks.check("distinct objects", all.count == total && tagsIntact == total,
                     "\(total) objects, \(all.count) distinct addresses, \(tagsIntact) tags intact")
        totals.placed += total

        // 2. Frees from another node (or, on one node, from another CPU of the node).
        var freer: [Int: Int] = [:]
        for (position, node) in nodes.enumerated() {
            let own = cpus(of: node)
            if multiNode {
                let other = cpus(of: nodes[(position + 1) % nodes.count])
                for (index, cpu) in own.enumerated() { freer[cpu] = other[index % other.count] }
            } else {
                for (index, cpu) in own.enumerated() { freer[cpu] = own[(index + 1) % own.count] }
            }
        }
        var plan: [Int: [UInt]] = [:]
        var freedByNode: [Int: Set<UInt>] = [:]
        for cpu in cpus {
            plan[freer[cpu]!, default: []] += first[cpu]!.objects
            freedByNode[node(cpu), default: []].formUnion(first[cpu]!.objects)
        }
        let pairs = cpus.map { "\($0)->\(freer[$0]!)" }.joined(separator: ", ")
        if multiNode {
            report("  remote frees: each CPU's objects freed by a CPU of another node (allocating->freeing CPU: \(pairs))")
        } else {
            report("  one node only: no remote free to stage; each CPU's objects freed by the next CPU of the node "
                   + "instead, the same-node path (allocating->freeing CPU: \(pairs))")
        }
        let before = cache.statistics()
        let freePlan = plan
        let freedCounts = try machine.runOnEach { cpu in
            let objects = freePlan[cpu] ?? []
            for bits in objects { cache.free(UnsafeMutableRawPointer(bitPattern: bits)!) }
            return objects.count
        }
        let after = cache.statistics()
        let freed = freedCounts.values.reduce(0, +)
        totals.freed += freed
        checks.check("frees counted", after.inUse == 0 && after.accountedInUse == 0 && freed == total,
                     "\(freed) freed of \(total); in use \(after.inUse) (counters), \(after.accountedInUse) (lists)")
        if multiNode {
            for node in nodes {
                let was = nodeStats(before, node), now = nodeStats(after, node)
                let sent = freedByNode[node]!.count
                checks.check("sent home to node \(node)", was.remotePending == 0 && now.remotePending == sent,
                             "remotePending \(was.remotePending) -> \(now.remotePending), objects of node \(node) "
                             + "freed on another node \(sent)")
                let own = cached(after, on: node)
                checks.check("node \(node) keeps its objects",
                             now.outstanding == was.outstanding
                                && now.outstanding == now.remotePending + now.depotObjects + own,
                             "outstanding \(was.outstanding) -> \(now.outstanding) = remotePending "
                             + "\(now.remotePending) + depot \(now.depotObjects) + its CPUs' magazines \(own)")
            }
            let changed = cpus.filter { before.cachedPerCPU[$0] != after.cachedPerCPU[$0] }
            checks.check("freeing CPUs' magazines took no other node's object", changed.isEmpty,
                         "magazines per CPU \(cpus.map { before.cachedPerCPU[$0] }) -> "
                         + "\(cpus.map { after.cachedPerCPU[$0] })"
                         + (changed.isEmpty ? "" : "; changed on CPUs \(changed)"))
        } else {
            let node = nodes[0]
            let now = nodeStats(after, node)
            checks.check("same-node frees stay local", now.remotePending == 0,
                         "remotePending on node \(node): \(now.remotePending)")
            let freeing = Set(freer.values).sorted()
            let holding = freeing.map { after.cachedPerCPU[$0] }
            checks.check("freeing CPUs' magazines took the objects",
                         holding.allSatisfy { $0 > 0 }
                            && now.outstanding == now.depotObjects + cached(after, on: node),
                         "magazines of freeing CPUs \(freeing): \(holding); node \(node) outstanding "
                         + "\(now.outstanding) = depot \(now.depotObjects) + magazines \(cached(after, on: node))")
        }

        // 3. Back out at home only.
        var elsewhere: [Int: Set<UInt>] = [:]
        for node in nodes {
            elsewhere[node] = nodes.filter { $0 != node }.reduce(into: Set<UInt>()) { $0.formUnion(freedByNode[$1]!) }
        }
        let second = try allocateEverywhere(freedHere: freedByNode, freedElsewhere: elsewhere, phase: 2)
        let reallocated = cache.statistics()
        checkPlacement(second, "placement after the frees")
        totals.placed += total
        for node in nodes {
            let mine = cpus(of: node)
            let reused = mine.reduce(0) { $0 + second[$1]!.reused }
            let foreign = mine.reduce(0) { $0 + second[$1]!.fromOtherNode }
            totals.reused += reused
            let allocated = mine.count * perCPU
            checks.check("node \(node) hands out no other node's object", foreign == 0,
                         "\(allocated) objects on CPUs \(CPUSet(mine)), \(foreign) at addresses freed from "
                         + (multiNode ? "another node's objects" : "another node (there is none)"))
            if multiNode {
                // Magazines first, then what other nodes sent home: exactly the freed objects beyond the magazines.
                let expected = min(allocated - cached(after, on: node), freedByNode[node]!.count)
                checks.check("node \(node) reuses what came home", reused == expected && reused > 0
                                && slabs(reallocated, node) == slabs(after, node),
                             "\(reused) of \(allocated) objects at addresses freed remotely (expected \(expected): "
                             + "all beyond the \(cached(after, on: node)) in its CPUs' magazines); slabs "
                             + "\(slabs(after, node)) -> \(slabs(reallocated, node))"
                             + (slabs(after, node) == slabs(reallocated, node) ? " (none mapped)" : "") + ", remotePending "
                             + "\(nodeStats(after, node).remotePending) -> \(nodeStats(reallocated, node).remotePending)")
            } else {
                checks.check("node \(node) reuses the freed objects", reused > 0,
                             "\(reused) of \(allocated) objects at addresses freed on another CPU")
            }
        }

        // 4. Everything freed on its own CPU, then shrink.
        _ = try machine.runOnEach { cpu in
            for bits in second[cpu]!.objects { cache.free(UnsafeMutableRawPointer(bitPattern: bits)!) }
        }
        try cache.shrink()
        let end = cache.statistics()
        checks.check("shrink returns everything",
                     end.inUse == 0 && end.accountedInUse == 0 && end.bytesMapped == 0
                        && end.cachedPerCPU.allSatisfy { $0 == 0 },
                     "in use \(end.inUse) (lists \(end.accountedInUse)), cached \(end.cachedPerCPU.reduce(0, +)), "
                     + "bytes mapped \(end.bytesMapped)")
    }
}

NumaPlacement.main()
