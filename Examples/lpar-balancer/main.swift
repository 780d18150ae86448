// lpar-balancer: partitions of one processor pool, whose load shifts over time, and a balancer that moves processors
// towards the loaded one while everything runs (the S/390 scenario of docs/ARCHITECTURE.md, "Origin": processors
// taken from one partition and given to another under load, nothing restarted).
//
// What runs:
// - a CPUPool of --processors processors (processor p on physical CPU slot p % n: oversubscribed where there are
//   fewer CPUs) and --partitions partitions, the processors dealt out round-robin;
// - per partition, a workload of tasklets that each spin 1 ms per run and reschedule themselves while their partition
//   is loaded; the load moves to the next partition every --phase-seconds;
// - a Balancer (HysteresisPolicy) sampling every --interval-ms and moving processors from idle to loaded partitions.
//
// Checked, during the run and at the end (exit 0 only when all held, else a FAILED line with the `--seed` value):
// - no processor is owned by two partitions, every partition keeps one, and every online CPU's thread is pinned to
//   exactly its processor's physical CPU (read from /proc/self/task/TID/status);
// - no tasklet is lost: every run scheduled ran exactly once (the workloads' own counts);
// - every partition gave and received a processor at least once (with two partitions: a move each way), when the
//   run is long enough for the load to visit every partition and come back.
import ArgumentParser
import ExampleSupport
import Hotplug
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@main
struct LparBalancer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lpar-balancer",
        abstract: "Partitions sharing a processor pool, with a balancer moving processors towards the loaded one.")

    @Option(help: "How long to run, in seconds.")
    var seconds: Double = 20
    @Option(help: "Partitions (2 or 3).")
    var partitions: Int = 2
    @Option(help: "Processors in the pool (default: two per partition).")
    var processors: Int?
    @Option(name: .customLong("phase-seconds"), help: "Seconds before the load moves to the next partition.")
    var phaseSeconds: Double = 4
    @Option(name: .customLong("interval-ms"), help: "Balancer sampling interval in milliseconds.")
    var intervalMilliseconds: Int = 20
    @Option(help: "Seed of the tasklet counts (the run is otherwise driven by the load).")
    var seed: UInt64 = 1

    func validate() throws {
        guard seconds > 0 else { throw ValidationError("--seconds must be positive") }
        guard (2...3).contains(partitions) else { throw ValidationError("--partitions must be 2 or 3") }
        if let processors, processors < partitions + 1 {
            throw ValidationError("--processors must be at least partitions + 1 (\(partitions + 1)), so that one can move")
        }
        guard phaseSeconds > 0 else { throw ValidationError("--phase-seconds must be positive") }
        guard intervalMilliseconds >= 1 else { throw ValidationError("--interval-ms must be at least 1") }
    }

    func run() throws {
        let count = processors ?? partitions * 2
        let names = ["a", "b", "c"].prefix(partitions)
        let pool = try setUp("create the processor pool", seed: seed) { try CPUPool(processors: count) }
        let parts = try setUp("create the partitions", seed: seed) {
            try names.enumerated().map { index, name in
                try pool.makePartition(name, owning: Array(stride(from: index, to: count, by: partitions)))
            }
        }
        var rng = SplitMix64(seed: seed)
        let workloads = parts.map { Workload($0, tasklets: 2 * count + Int.random(in: 0...3, using: &rng)) }
        let log = MoveLog()
        let balancer = try setUp("create the balancer", seed: seed) {
            try Balancer(pool: pool, partitions: parts, policy: HysteresisPolicy(high: 0.5, low: 0.3, patience: 3, cooldown: 2))
        }
        try setUp("start the balancer", seed: seed) {
            try balancer.start(interval: .milliseconds(intervalMilliseconds)) { outcome in
                switch outcome {
                case .moved(let moves, let failures):
                    // One bulk move per step: every processor of it gets the step's time.
                    let now = monotonicNanoseconds()
                    log.moves.withLock { $0.append(contentsOf: moves) }
                    log.times.withLock { $0.append(contentsOf: Array(repeating: now, count: moves.count)) }
                    log.failed.add(failures.count, ordering: .relaxed)
                case .failed(_, _, let processors, _): log.failed.add(processors.count, ordering: .relaxed)
                case .stayed: break
                }
            }
        }

        let view = LiveView()
        let started = monotonicNanoseconds()
        let total = Int64(seconds * 1e9)
        var phase = -1
        var phaseStarts: [(start: Int64, loaded: String)] = []
        var violations: [String] = []
        while monotonicNanoseconds() - started < total {
            let elapsed = monotonicNanoseconds() - started
            let now = Int(Double(elapsed) / 1e9 / phaseSeconds)
            if now != phase {
                phase = now
                phaseStarts.append((monotonicNanoseconds(), workloads[phase % partitions].partition.name))
                for (index, workload) in workloads.enumerated() { workload.setLoaded(index == phase % partitions) }
            }
            if let problem = ownershipProblem(pool, parts) { violations.append(problem); break }
            let loads = balancer.sample()
            view.show(status(elapsed, phase: phase, pool: pool, loads: loads, workloads: workloads,
                             moves: log.moves.withLock { $0.count }))
            usleep(250_000)
        }
        balancer.stop()
        for workload in workloads { workload.setLoaded(false) }
        view.finish()

        // The end: everything drained, then the checks.
        for workload in workloads where !workload.drain(timeoutSeconds: 10) {
            violations.append("tasklets of partition \(workload.partition.name) still queued 10 s after the load stopped")
        }
        if let problem = ownershipProblem(pool, parts) { violations.append(problem) }
        for workload in workloads {
            let scheduled = workload.scheduled.load(ordering: .relaxed), executed = workload.executed.load(ordering: .relaxed)
            if scheduled != executed {
                violations.append("tasklets of partition \(workload.partition.name) ran \(executed) times for \(scheduled) schedules")
            }
        }
        let done = log.moves.withLock { $0 }
        let pairs = Dictionary(grouping: done, by: { "\($0.from) -> \($0.to)" })
        // Long enough for the load to visit every partition and come back: each must have given and received.
        if seconds >= Double(partitions) * phaseSeconds + 1 {
            for name in names where !done.contains(where: { $0.from == name }) || !done.contains(where: { $0.to == name }) {
                violations.append("partition \(name) did not both give and receive a processor (moves: \(pairs.keys.sorted()))")
            }
        }
        printSummary(done, pairs: pairs, failed: log.failed.load(ordering: .relaxed), workloads: workloads,
                     violations: violations)
        // Reaction: from each load shift to the first move towards the newly loaded partition.
        let times = log.times.withLock { $0 }
        var reactions: [Double] = []
        for (index, shift) in phaseStarts.enumerated() where index > 0 {
            let end = index + 1 < phaseStarts.count ? phaseStarts[index + 1].start : Int64.max
            if let first = zip(done, times).first(where: { $0.0.to == shift.loaded && $0.1 >= shift.start && $0.1 < end }) {
                reactions.append(Double(first.1 - shift.start) / 1e6)
            }
        }
        if !reactions.isEmpty {
            report("balancer reaction (load shift -> first move towards it), ms: \(reactions.map { fixed($0, 0) }.joined(separator: " ")); max \(fixed(reactions.max()!, 0)) over \(reactions.count) of \(phaseStarts.count - 1) shifts")
        }
        if let first = violations.first {
            report("FAILED: \(first) -- reproduce with --seed \(seed)")
            throw ExitCode.failure
        }
        report("OK: every invariant held (seed \(seed))")
    }

    /// The ownership invariant, from the partitions' online masks and the kernel's affinity of every online thread.
    func ownershipProblem(_ pool: CPUPool, _ parts: [Partition]) -> String? {
        var owner = [String?](repeating: nil, count: pool.processorCount)
        for partition in parts {
            if partition.ownedProcessors.isEmpty { return "partition \(partition.name) owns no processor" }
            for cpu in partition.machine.online {
                let processor = partition.processor(of: cpu)
                if let other = owner[processor] { return "processor \(processor) is owned by \(other) and \(partition.name)" }
                owner[processor] = partition.name
                guard let tid = (try? partition.machine.threadID(of: cpu)) ?? nil,
                      let allowed = ProcFS.cpusAllowed(tid) else { continue }
                if allowed != [pool.physicalCPU(of: processor)] {
                    return "partition \(partition.name)'s CPU \(cpu) on processor \(processor) is pinned to \(allowed), not [\(pool.physicalCPU(of: processor))]"
                }
            }
        }
        return nil
    }

    func status(_ elapsed: Int64, phase: Int, pool: CPUPool, loads: [PartitionLoad], workloads: [Workload],
                moves: Int) -> String {
        let owners = pool.ownership().map { $0?.name ?? "-" }.joined(separator: " ")
        let parts = loads.map { "\($0.name): \($0.processors) cpu q=\($0.queuedTasklets) busy \(Int($0.busy * 100))%" }
        return "\(fixed(Double(elapsed) / 1e9, 1))s  load on \(workloads[phase % workloads.count].partition.name)  [\(owners)]  "
            + parts.joined(separator: "  ") + "  moves \(moves)"
    }

    func printSummary(_ moves: [CPUPool.Move], pairs: [String: [CPUPool.Move]], failed: Int, workloads: [Workload],
                      violations: [String]) {
        report("")
        report("moves: \(moves.count) (\(failed) failed)")
        for key in pairs.keys.sorted() { report("  \(pad(key, 10)) \(pairs[key]!.count)") }
        let micros = moves.map { Double($0.total.nanoseconds) / 1e3 }.sorted()
        if !micros.isEmpty {
            func at(_ q: Double) -> String { fixed(micros[min(micros.count - 1, Int(q * Double(micros.count)))], 0) }
            report("move latency (detach + attach), us: min \(fixed(micros[0], 0))  p50 \(at(0.5))  p99 \(at(0.99))  max \(fixed(micros.last!, 0))")
        }
        report("work done per partition (tasklet runs of 1 ms):")
        for workload in workloads {
            report("  \(pad(workload.partition.name, 4)) \(workload.executed.load(ordering: .relaxed)) runs, scheduled \(workload.scheduled.load(ordering: .relaxed))")
        }
        report("invariants: \(violations.isEmpty ? "all held" : "\(violations.count) broken")")
    }
}

/// What the balancer's thread reports.
final class MoveLog: Sendable {
    let moves = Mutex<[CPUPool.Move]>([])
    /// When each move ended (monotonic nanoseconds), in the order of `moves`.
    let times = Mutex<[Int64]>([])
    let failed = Atomic<Int>(0)
}

/// One partition's load: tasklets that spin for 1 ms per run and reschedule themselves while the partition is loaded.
final class Workload: Sendable {
    let partition: Partition
    let loaded = Atomic<Bool>(false)
    /// Schedules that newly queued a run, and runs.
    let scheduled = Atomic<Int>(0)
    let executed = Atomic<Int>(0)
    private let tasklets: Mutex<[Tasklet]>

    init(_ partition: Partition, tasklets count: Int) {
        self.partition = partition
        tasklets = Mutex([])
        let made = (0..<count).map { _ in Box() }
        for box in made {
            box.tasklet = Tasklet(partition.machine) { [self] in
                executed.add(1, ordering: .relaxed)
                let until = monotonicNanoseconds() + 1_000_000
                while monotonicNanoseconds() < until {}
                if loaded.load(ordering: .relaxed), let me = box.tasklet { schedule(me) }
            }
        }
        tasklets.withLock { $0 = made.compactMap(\.tasklet) }
    }

    private final class Box: @unchecked Sendable {
        // @unchecked: written once before any tasklet runs.
        var tasklet: Tasklet?
    }

    private func schedule(_ tasklet: Tasklet) {
        if (try? tasklet.schedule()) == true { scheduled.add(1, ordering: .relaxed) }
    }

    func setLoaded(_ on: Bool) {
        let was = loaded.exchange(on, ordering: .relaxed)
        if on && !was { for tasklet in tasklets.withLock({ $0 }) { schedule(tasklet) } }
    }

    /// Waits until no tasklet is queued or running.
    func drain(timeoutSeconds: Int64) -> Bool {
        let deadline = monotonicNanoseconds() + timeoutSeconds * 1_000_000_000
        while monotonicNanoseconds() < deadline {
            if tasklets.withLock({ $0.allSatisfy { !$0.isScheduled && !$0.isRunning } }) { return true }
            usleep(1_000)
        }
        return false
    }
}

/// One status line, redrawn in place on a terminal; a plain line every second otherwise.
final class LiveView {
    private let isTerminal = isatty(STDOUT_FILENO) == 1
    private var lastPlain: Int64 = 0

    func show(_ line: String) {
        if isTerminal {
            writeAll(Array(("\r\u{1B}[K" + line).utf8), to: STDOUT_FILENO)
        } else if monotonicNanoseconds() - lastPlain >= 1_000_000_000 {
            lastPlain = monotonicNanoseconds()
            report(line)
        }
    }

    func finish() { if isTerminal { writeAll(Array("\n".utf8), to: STDOUT_FILENO) } }
}
