import Logging

/// A pool of processors shared by several machines ("partitions"), as S/390 LPARs share their machine's processors:
/// every processor is owned by at most one partition's online logical CPU at a time, and ``move(_:from:to:)`` takes
/// one from a partition and gives it to another while both run (see `docs/ARCHITECTURE.md`, "Origin").
///
/// Processor `p` of a pool runs on slot `p % topology.cpus.count` of its topology, so a pool may hold more processors
/// than the machine has CPUs (oversubscription, as for a ``Machine``): where it holds at most one processor per
/// physical CPU, "owned by one partition" is "pinned by one online logical CPU".
///
/// Each partition is a ``Machine`` with one possible logical CPU per processor of the pool, all configured (parked
/// threads pinned to their processor's CPU); the processors it owns are exactly its online CPUs. A move:
///
/// ```
///   from.offline(its CPU on p)   its tasklets migrate to its other CPUs, its slab caches drain; p is now free
///   to.online(its CPU on p)      p's thread in `to` starts
/// ```
///
/// The detach comes first, so a processor never has two online owners, not even for an instant. When the attach
/// fails (rolled back), the processor goes back to `from`; when that fails too, it stays unowned and the error says
/// so. A partition keeps at least one processor. Moves are serialised. Do not online or offline a partition's CPUs
/// directly: go through the pool.
public final class CPUPool: Sendable {
    /// The topology the processors run on.
    public let topology: Topology
    /// The number of processors (`0..<processorCount`).
    public let processorCount: Int
    let logger: Logger
    private let partitions = Locked<[WeakPartition]>([])
    /// Serialises moves and partition creation.
    private let operations = Lock()

    private struct WeakPartition {
        weak var partition: Partition?
    }

    /// - Parameters:
    ///   - topology: the CPUs and nodes; nil: ``Topology/current()``.
    ///   - processors: how many processors; nil: one per slot of the topology.
    ///   - logger: receives moves at debug level, and a processor left without owner at critical level.
    /// - Throws: ``HotplugError/invalidConfiguration(_:)`` for fewer than one processor;
    ///   ``HotplugError/invalidArgument(name:value:valid:)`` for more than ``Machine/maximumCPUs`` (each partition
    ///   is a machine of that many CPUs); or a system error.
    public init(topology: Topology? = nil, processors: Int? = nil,
                logger: Logger = Logger(label: "hotplug.pool")) throws(HotplugError) {
        var resolved: Topology
        if let topology { resolved = topology } else { resolved = try Topology.current() }
        let count = processors ?? resolved.cpus.count
        guard count >= 1 else { throw .invalidConfiguration("a CPU pool needs at least one processor, got \(count)") }
        guard count <= Machine.maximumCPUs else {
            throw .invalidArgument(name: "processors", value: "\(count)", valid: "1...\(Machine.maximumCPUs)")
        }
        self.topology = resolved
        self.processorCount = count
        self.logger = logger
    }

    /// The physical CPU processor `p` runs on.
    /// - Precondition: `processor` is in `0..<processorCount`; otherwise it traps with a message naming it and
    ///   the range (a mapping, like a subscript).
    public func physicalCPU(of processor: Int) -> Int {
        checkProcessor(processor, processorCount)
        return topology.cpus[processor % topology.cpus.count].physicalID
    }

    /// Creates a partition owning `processors` (none of which another partition owns).
    /// - Throws: ``HotplugError/invalidConfiguration(_:)`` for an empty or out-of-range list, or a processor
    ///   already owned; the errors of ``Machine/init(topology:cpus:configuration:logger:)``.
    public func makePartition(_ name: String, owning processors: [Int],
                              configuration: Machine.Configuration = Machine.Configuration(),
                              logger: Logger? = nil) throws(HotplugError) -> Partition {
        try operations.withLock { () throws(HotplugError) -> Partition in
            guard !processors.isEmpty, Set(processors).count == processors.count,
                  processors.allSatisfy({ (0..<processorCount).contains($0) }) else {
                throw .invalidConfiguration("partition '\(name)' needs distinct processors in 0..<\(processorCount), got \(processors)")
            }
            let owned = ownership()
            if let taken = processors.first(where: { owned[$0] != nil }) {
                throw .invalidConfiguration("processor \(taken) is owned by partition '\(owned[taken]!.name)'")
            }
            let partition = try Partition(name: name, pool: self, owning: processors, configuration: configuration,
                                          logger: logger ?? Logger(label: "hotplug.\(name)"))
            partitions.withLock { list in
                list.removeAll { $0.partition == nil }
                list.append(WeakPartition(partition: partition))
            }
            return partition
        }
    }

    /// The live partitions, in creation order.
    public var livePartitions: [Partition] { partitions.withLock { $0.compactMap(\.partition) } }

    /// Which partition owns each processor now (nil: none).
    public func ownership() -> [Partition?] {
        var owners = [Partition?](repeating: nil, count: processorCount)
        for partition in livePartitions {
            for processor in partition.ownedProcessors { owners[processor] = partition }
        }
        return owners
    }

    /// What one move did.
    public struct Move: Sendable, CustomStringConvertible {
        public let processor: Int
        public let from: String
        public let to: String
        /// The detach in `from` and the attach in `to`.
        public let detach: Duration
        public let attach: Duration
        public var total: Duration { detach + attach }
        public var description: String { "processor \(processor): \(from) -> \(to) in \(total)" }
    }

    /// Moves processor `processor` from partition `from` to partition `to`: detaches `from`'s CPU there (its work
    /// migrates, its caches drain), then attaches `to`'s CPU there.
    /// - Throws: ``HotplugError/invalidConfiguration(_:)`` when `from` does not own the processor or the two are
    ///   the same partition or not of this pool; ``HotplugError/busy(cpu:reason:)`` with
    ///   ``BusyReason/lastOnlineCPU`` (naming `from`'s CPU) when it is `from`'s last processor; the detach's errors
    ///   (nothing changed then: the detach rolled forward); the attach's errors (the processor went back to `from`,
    ///   or, when that failed too, is owned by nobody: a critical log message says so).
    @discardableResult
    public func move(_ processor: Int, from: Partition, to: Partition) throws(HotplugError) -> Move {
        try operations.withLock { () throws(HotplugError) -> Move in
            guard from.pool === self, to.pool === self, from !== to else {
                throw .invalidConfiguration("a move needs two different partitions of this pool")
            }
            guard (0..<processorCount).contains(processor), from.owns(processor) else {
                throw .invalidConfiguration("partition '\(from.name)' does not own processor \(processor)")
            }
            let leaving = from.logicalCPU(of: processor)
            guard from.machine.online.count > 1 else {
                throw .busy(cpu: leaving, reason: .lastOnlineCPU)
            }
            let clock = ContinuousClock()
            let started = clock.now
            try from.machine.offline(leaving)
            let detached = clock.now
            let arriving = to.logicalCPU(of: processor)
            do throws(HotplugError) {
                try to.machine.online(arriving)
            } catch {
                // A failed attach may still have left the CPU online in `to` (a failed rollback past bring-up):
                // then `to` owns it. Otherwise it goes back to `from`.
                if to.machine.online.contains(arriving) { throw error }
                do {
                    try from.machine.online(leaving)
                } catch let back {
                    logger.critical("processor \(processor) is owned by no partition: attach in '\(to.name)' failed (\(error)), and so did the return to '\(from.name)' (\(back))")
                }
                throw error
            }
            let move = Move(processor: processor, from: from.name, to: to.name,
                            detach: detached - started, attach: clock.now - detached)
            logger.debug("move", metadata: ["move": "\(move)"])
            return move
        }
    }
}

extension CPUPool {
    /// What a bulk move did: the processors that moved, and those that did not with the reason (each back with
    /// `from`, or owned by nobody when even that failed: a critical log message says so).
    public struct BulkMove: Sendable {
        public var moved: [Int] = []
        public var failures: [Int: HotplugError] = [:]
        /// The bulk detach in `from` and the bulk attach in `to`.
        public var detach: Duration = .zero
        public var attach: Duration = .zero
    }

    /// Moves several processors from `from` to `to` with one bulk detach there and one bulk attach here
    /// (``Machine/offline(_:)-(CPUSet)`` and ``Machine/online(_:)-(CPUSet)``: one stop_machine on each side, not one
    /// per processor). A processor whose detach fails stays with `from`; one whose attach fails goes back to
    /// `from` (one bulk attach there); the others move regardless.
    /// - Throws: ``HotplugError/invalidConfiguration(_:)`` when `from` does not own one of the processors or the
    ///   partitions are the same or not of this pool; ``HotplugError/busy(cpu:reason:)`` with
    ///   ``BusyReason/lastOnlineCPU`` when `from` would be left with none (nothing moved then).
    @discardableResult
    public func move(_ processors: [Int], from: Partition, to: Partition) throws(HotplugError) -> BulkMove {
        try operations.withLock { () throws(HotplugError) -> BulkMove in
            guard from.pool === self, to.pool === self, from !== to else {
                throw .invalidConfiguration("a move needs two different partitions of this pool")
            }
            for processor in processors where !(0..<processorCount).contains(processor) || !from.owns(processor) {
                throw .invalidConfiguration("partition '\(from.name)' does not own processor \(processor)")
            }
            var result = BulkMove()
            let clock = ContinuousClock()
            let started = clock.now
            let leaving = CPUSet(processors.map { from.logicalCPU(of: $0) })
            let detached = try from.machine.offline(leaving)   // refused whole if it would leave `from` empty
            for processor in processors {
                if let error = detached.failures[from.logicalCPU(of: processor)] { result.failures[processor] = error }
            }
            let gone = processors.filter { detached.changed.contains(from.logicalCPU(of: $0)) }
            let middle = clock.now
            result.detach = middle - started
            guard !gone.isEmpty else { return result }
            let arrived: HotplugBatchResult
            do throws(HotplugError) {
                arrived = try to.machine.online(CPUSet(gone.map { to.logicalCPU(of: $0) }))
            } catch {
                arrived = HotplugBatchResult()
                for processor in gone { result.failures[processor] = error }
            }
            var back: [Int] = []
            for processor in gone {
                if arrived.changed.contains(to.logicalCPU(of: processor)) {
                    result.moved.append(processor)
                } else {
                    if let error = arrived.failures[to.logicalCPU(of: processor)] { result.failures[processor] = error }
                    if !to.machine.online.contains(to.logicalCPU(of: processor)) { back.append(processor) }
                }
            }
            result.attach = clock.now - middle
            if !back.isEmpty {
                let returned = try? from.machine.online(CPUSet(back.map { from.logicalCPU(of: $0) }))
                for processor in back where returned?.changed.contains(from.logicalCPU(of: processor)) != true {
                    logger.critical("processor \(processor) is owned by no partition: its attach in '\(to.name)' and its return to '\(from.name)' failed")
                }
            }
            return result
        }
    }
}

/// One partition of a ``CPUPool``: a ``Machine`` whose online CPUs are the processors it owns.
public final class Partition: Sendable {
    public let name: String
    /// The partition's machine: one possible logical CPU per processor of the pool.
    public let machine: Machine
    /// The pool (kept: a partition's moves need it; the pool keeps its partitions weakly).
    public let pool: CPUPool
    /// `processorOf[i]`: the processor logical CPU `i` runs on; `logicalOf[p]` the inverse.
    private let processorOf: [Int]
    private let logicalOf: [Int]

    init(name: String, pool: CPUPool, owning processors: [Int], configuration: Machine.Configuration,
         logger: Logger) throws(HotplugError) {
        // Owned processors first: they are the machine's initially online CPUs 0..<n.
        let order = processors + (0..<pool.processorCount).filter { !processors.contains($0) }
        var inverse = [Int](repeating: 0, count: order.count)
        for (logical, processor) in order.enumerated() { inverse[processor] = logical }
        // A topology with one slot per processor, in this partition's order.
        let topology = pool.topology.repeated(to: pool.processorCount).reordered(order)
        var configuration = configuration
        configuration.initiallyOnline = processors.count
        let machine = try Machine(topology: topology, cpus: pool.processorCount, configuration: configuration,
                                  logger: logger)
        // Every other processor's thread exists, parked and pinned: a move only has to wake it.
        for logical in processors.count..<pool.processorCount {
            do { try machine.configure(logical) } catch { machine.shutdown(); throw error }
        }
        self.name = name
        self.machine = machine
        self.pool = pool
        self.processorOf = order
        self.logicalOf = inverse
    }

    /// The logical CPU of this partition that runs on `processor`.
    /// - Precondition: `processor` is in `0..<processorCount` of the pool; otherwise it traps with a message
    ///   naming it and the range (a mapping, like a subscript).
    public func logicalCPU(of processor: Int) -> Int {
        checkProcessor(processor, logicalOf.count)
        return logicalOf[processor]
    }

    /// The processor logical CPU `cpu` runs on.
    /// - Precondition: `cpu` is in `0..<possible` of ``machine``; otherwise it traps with a message naming it and
    ///   the range.
    public func processor(of cpu: Int) -> Int {
        precondition(processorOf.indices.contains(cpu), "Partition '\(name)': logical CPU \(cpu) is outside 0..<\(processorOf.count)")
        return processorOf[cpu]
    }

    /// Whether this partition owns `processor` now (its CPU there is online); false for an id that is not a
    /// processor of the pool.
    public func owns(_ processor: Int) -> Bool {
        logicalOf.indices.contains(processor) && machine.online.contains(logicalOf[processor])
    }

    /// The processors this partition owns now, ascending.
    public var ownedProcessors: [Int] { machine.online.map { processorOf[$0] }.sorted() }
}

/// Traps with a message naming `processor` and the valid range when it is not in `0..<count`.
private func checkProcessor(_ processor: Int, _ count: Int) {
    precondition((0..<count).contains(processor), "CPUPool: processor \(processor) is outside 0..<\(count)")
}
