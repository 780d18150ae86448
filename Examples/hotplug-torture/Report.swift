import ExampleSupport
import Hotplug
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - The status line

/// Progress while the run goes on. On a terminal: one status line, rewritten in place four times a second. Off a
/// terminal (a pipe, a CI log): a plain line every few seconds. With `--json` it goes to standard error, so that
/// standard output holds the JSON object alone.
final class StatusLine {
    let fd: Int32
    let isLive: Bool
    private let interval: Int64
    private var next: Int64
    private var shown = false

    static let liveInterval: Int64 = 250_000_000
    static let plainInterval: Int64 = 3_000_000_000

    init(toStandardError: Bool) {
        fd = toStandardError ? STDERR_FILENO : STDOUT_FILENO
        isLive = isatty(fd) == 1
        interval = isLive ? StatusLine.liveInterval : StatusLine.plainInterval
        next = monotonicNanoseconds() + interval
    }

    func isDue(_ now: Int64) -> Bool { now >= next }

    func show(_ text: String, now: Int64) {
        next = now + interval
        fflush(nil)
        if isLive {
            // Carriage return, erase the line, and no more than fits: a wrapped line could not be rewritten.
            writeAll(Array(("\r\u{1B}[2K" + String(text.prefix(max(20, terminalWidth - 1)))).utf8), to: fd)
            shown = true
        } else {
            writeAll(Array((text + "\n").utf8), to: fd)
        }
    }

    /// Ends the live line, so that what follows starts on a line of its own.
    func finish() {
        if isLive && shown { writeAll(Array("\n".utf8), to: fd) }
        shown = false
    }

    private var terminalWidth: Int {
        var size = winsize()
        guard ioctl(fd, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 else { return 120 }
        return Int(size.ws_col)
    }
}

// MARK: - Latency figures

/// Nearest-rank percentiles of a set of latencies in nanoseconds.
struct Percentiles {
    let sorted: [Int64]

    init(_ values: [Int64]) { sorted = values.sorted() }

    func nanoseconds(_ fraction: Double) -> Int64? {
        guard !sorted.isEmpty else { return nil }
        let rank = Int((fraction * Double(sorted.count)).rounded(.up))
        return sorted[min(sorted.count - 1, max(0, rank - 1))]
    }

    func microsecondsValue(_ fraction: Double) -> Int? { nanoseconds(fraction).map { Int($0 / 1_000) } }
    func microseconds(_ fraction: Double) -> String { microsecondsValue(fraction).map(String.init) ?? "-" }
    var minimum: String { sorted.first.map { "\($0 / 1_000)" } ?? "-" }
    var maximum: String { sorted.last.map { "\($0 / 1_000)" } ?? "-" }
}

/// A small text histogram of latencies, one row per power of two of microseconds.
enum Histogram {
    static let barWidth = 40

    static func lines(_ latencies: Percentiles) -> [String] {
        guard let low = latencies.sorted.first, let high = latencies.sorted.last else { return ["  (no samples)"] }
        let first = bucket(low), last = bucket(high)
        var counts = [Int](repeating: 0, count: last - first + 1)
        for value in latencies.sorted { counts[bucket(value) - first] += 1 }
        let largest = max(1, counts.max() ?? 1)
        return counts.enumerated().map { offset, count in
            let from = 1 << (first + offset), to = 1 << (first + offset + 1)
            let bar = String(repeating: "#", count: (count * barWidth + largest - 1) / largest)
            return "  " + padLeft("\(from)", 7) + " .. " + pad("\(to)", 8) + pad(bar, barWidth + 1) + "\(count)"
        }
    }

    /// The power of two of microseconds below the value.
    private static func bucket(_ nanoseconds: Int64) -> Int {
        let microseconds = max(1, nanoseconds / 1_000)
        return 63 - microseconds.leadingZeroBitCount
    }
}

// MARK: - The outcome

/// Every figure of a finished run, for the summary table and the JSON object.
struct Outcome {
    struct Direction {
        let attempts: Int, successes: Int, rollbacks: Int, timeouts: Int
        let latencies: Percentiles

        init(_ stats: OnOffStats.Direction) {
            attempts = stats.attempts.load
            successes = stats.successes.load
            rollbacks = stats.rollbacks.load
            timeouts = stats.timeouts.load
            latencies = stats.latencies.withLock { Percentiles($0) }
        }
    }

    /// Bulk operations of one direction.
    struct Bulk {
        let calls: Int, cpusAsked: Int, moved: Int, alreadyThere: Int, rollbacks: Int, timeouts: Int
        let refusedWhole: Int, refusedStopped: Int, mostMoved: Int
        /// Wall time of each call that moved a CPU.
        let latencies: Percentiles
        /// The same divided by the CPUs each moved.
        let perCPU: Percentiles

        init(_ stats: OnOffStats.Bulk) {
            calls = stats.calls.load
            cpusAsked = stats.cpus.attempts.load
            moved = stats.cpus.successes.load
            alreadyThere = stats.alreadyThere.load
            rollbacks = stats.cpus.rollbacks.load
            timeouts = stats.cpus.timeouts.load
            refusedWhole = stats.refusedWhole.load
            refusedStopped = stats.cpus.refusedStopped.load
            mostMoved = stats.mostMoved.load
            latencies = stats.latencies.withLock { Percentiles($0) }
            perCPU = stats.cpus.latencies.withLock { Percentiles($0) }
        }

        /// CPUs moved per call that moved any.
        var meanMoved: Double { latencies.sorted.isEmpty ? 0 : Double(moved) / Double(latencies.sorted.count) }
    }

    let settings: Settings
    let physicalCPUs: Int
    let runSeconds: Double
    /// The final phase: stopping the threads, the drain, the last checks, the shutdown.
    let finalSeconds: Double
    let attach: Direction
    let detach: Direction
    let bulkAttach: Bulk
    let bulkDetach: Bulk
    let cycles: Int
    let injected: Int
    let injectedAt: [String: Int]
    let tasklets: TaskletTally
    let slab: SlabTally
    let slabShrinks: Int, slabQuiescentChecks: Int, slabSkipped: Int
    let parkedWindows: Int, parkedUnmeasured: Int, parkedGrowthNanoseconds: Int, parkedMaxGrowthNanoseconds: Int
    let pinningChecks: Int
    let sigpAnswers: [(order: SIGPOrder, byCode: [Int])]
    let externalCalls: (accepted: Int, received: Int)
    let emergencySignals: (accepted: Int, received: Int)
    let crossCalls: Int, crossCallsRefused: Int, runOnEachCalls: Int
    let stopMachines: Int, stopMachineBodies: Int, readLockedChecks: Int
    let workerActions: Int
    let invariants: [(invariant: Invariant, checks: Int, violations: Int)]
    let violations: [Violation]
    /// Follow mode only.
    let follow: FollowFigures?
    /// `--misuse` only.
    let misuse: MisuseFigures?
    /// Unless `--executors off`.
    let executors: ExecutorTally?

    struct MisuseFigures {
        let refusals: Int, fromCrossCalls: Int, fromTasklets: Int, fromCallbacks: Int, fromStopMachine: Int
        let storms: Int, probes: Int, detachesRefusedStopped: Int
    }

    struct FollowFigures {
        let sources: [String], deadlineMilliseconds: Double, repins: Int, failures: Int, leftParked: [Int]
    }
    let totalViolations: Int

    init(torture: Torture, runSeconds: Double, finalSeconds: Double, tasklets: TaskletTally, slab: SlabTally,
         executors: ExecutorTally?) {
        let stats = torture.onoff.stats, workload = torture.workload, checks = torture.checks
        settings = torture.settings
        physicalCPUs = torture.machine.topology.physicalCPUs.count
        self.runSeconds = runSeconds
        self.finalSeconds = finalSeconds
        attach = Direction(stats.attach)
        detach = Direction(stats.detach)
        bulkAttach = Bulk(stats.bulkAttach)
        bulkDetach = Bulk(stats.bulkDetach)
        cycles = stats.cycles.load
        injected = stats.injected.load
        injectedAt = stats.injectedAt.withLock { $0 }
        self.tasklets = tasklets
        self.slab = slab
        self.executors = executors
        slabShrinks = torture.slab.shrinks.load
        slabQuiescentChecks = torture.slab.quiescentChecks.load
        slabSkipped = torture.slab.skipped.load
        parkedWindows = stats.parkedWindows.load
        parkedUnmeasured = stats.parkedUnmeasured.load
        parkedGrowthNanoseconds = stats.parkedGrowth.load
        parkedMaxGrowthNanoseconds = stats.parkedMaxGrowth.load
        pinningChecks = stats.pinningChecks.load
        sigpAnswers = torture.sigp.answerCounts
        externalCalls = (torture.sigp.accepted(.externalCall), torture.sigp.receivedTotal(.externalCall))
        emergencySignals = (torture.sigp.accepted(.emergencySignal), torture.sigp.receivedTotal(.emergencySignal))
        crossCalls = workload.crossCalls.load
        crossCallsRefused = workload.crossCallsRefused.load
        runOnEachCalls = workload.runOnEachCalls.load
        stopMachines = workload.stopMachines.load
        stopMachineBodies = workload.stopMachineBodies.load
        readLockedChecks = workload.readLockedChecks.load
        workerActions = workload.actions.load
        invariants = Invariant.allCases.map { ($0, checks.checks($0), checks.violations($0)) }
        violations = checks.all
        totalViolations = checks.totalViolations
        misuse = torture.misuse.map { load in
            MisuseFigures(refusals: load.refusals.load, fromCrossCalls: load.fromCrossCalls.load,
                          fromTasklets: load.taskletsRan.load, fromCallbacks: load.fromCallbacks.load,
                          fromStopMachine: load.fromStopMachine.load, storms: load.storms.load, probes: load.probes.load,
                          detachesRefusedStopped: stats.refusedStopped)
        }
        follow = torture.onoff.follow.map { mode in
            FollowFigures(sources: mode.sources.withLock { $0.map(\.rawValue) },
                          deadlineMilliseconds: Double(mode.deadline) / 1e6, repins: mode.repins.load,
                          failures: mode.failures.load, leftParked: torture.onoff.leftParkedAtEnd.withLock { $0.sorted() })
        }
    }

    var passed: Bool { totalViolations == 0 }
    var rollbacks: Int { attach.rollbacks + detach.rollbacks + bulkAttach.rollbacks + bulkDetach.rollbacks }

    /// The line that ends a failed run: the first broken invariant, what broke, the other invariants that broke,
    /// and how to reproduce it.
    var failedLine: String? {
        guard let first = violations.first else { return passed ? nil : "FAILED: \(totalViolations) violations" }
        let others = invariants.filter { $0.violations > 0 && $0.invariant != first.invariant }.map(\.invariant.title)
        return "FAILED: \(first.invariant.title) (\(first.detail))"
            + (totalViolations > 1 ? "; \(totalViolations) violations in all" : "")
            + (others.isEmpty ? "" : "; also broken: " + others.joined(separator: ", "))
            + " -- reproduce with --seed \(settings.seed)"
    }

    var okLine: String {
        "OK: every invariant held: \(cycles) detach+attach cycles, "
            + (follow == nil ? "\(bulkAttach.calls + bulkDetach.calls) bulk operations, " : "") + "\(rollbacks) rollbacks, "
            + "\(tasklets.executed) tasklet runs, \(slab.allocated) slab objects"
            + (executors.map { ", \($0.jobs) executor jobs" } ?? "") + " (seed \(settings.seed))"
    }

    // MARK: Summary table

    func summary() -> [String] {
        var lines: [String] = []
        let s = settings
        lines.append("--- hotplug-torture: \(fixed(runSeconds, 1)) s (+\(fixed(finalSeconds, 1)) s of final checks), \(s.cpus) logical CPUs on \(physicalCPUs) physical "
                     + "(\(s.cpus > physicalCPUs ? "oversubscribed" : "one each")), \(s.workers) workers, seed \(s.seed), "
                     + (follow == nil ? "--fail-rate \(s.failRate), --onoff-interval \(s.onoffIntervalMilliseconds) ms ---"
                                      : "following the machine ---"))
        lines.append("  " + pad("hotplug", 10) + ["attempts", "successes", "rollbacks", "timeouts", "min us", "p50 us",
                                                  "p99 us", "max us"].map { padLeft($0, 10) }.joined())
        for (name, side) in [("attach", attach), ("detach", detach)] {
            let p = side.latencies
            lines.append("  " + pad(name, 10) + ["\(side.attempts)", "\(side.successes)", "\(side.rollbacks)",
                                                 "\(side.timeouts)", p.minimum, p.microseconds(0.5),
                                                 p.microseconds(0.99), p.maximum].map { padLeft($0, 10) }.joined())
        }
        if follow == nil {
            lines.append("  " + pad("bulk", 10) + ["calls", "CPUs asked", "moved", "already", "rollbacks", "refused",
                                                   "p50 us", "p99 us", "max us", "us/CPU p50", "us/CPU p99"]
                .map { padLeft($0, 11) }.joined())
            for (name, side) in [("attach", bulkAttach), ("detach", bulkDetach)] {
                let p = side.latencies
                lines.append("  " + pad(name, 10) + ["\(side.calls)", "\(side.cpusAsked)", "\(side.moved)",
                                                     "\(side.alreadyThere)", "\(side.rollbacks)",
                                                     "\(side.refusedWhole + side.refusedStopped)", p.microseconds(0.5),
                                                     p.microseconds(0.99), p.maximum, side.perCPU.microseconds(0.5),
                                                     side.perCPU.microseconds(0.99)].map { padLeft($0, 11) }.joined())
            }
            lines.append("  bulk: CPUs moved per call \(fixed(bulkAttach.meanMoved, 1)) (attach) / "
                         + "\(fixed(bulkDetach.meanMoved, 1)) (detach) on average, at most \(bulkAttach.mostMoved) / "
                         + "\(bulkDetach.mostMoved); \(bulkDetach.refusedWhole) detaches of every online CPU refused "
                         + "whole, \(bulkDetach.refusedStopped) CPUs refused while a STOP storm held them, "
                         + "\(bulkAttach.timeouts + bulkDetach.timeouts) timeouts; \"already\": CPUs of a set already at "
                         + "the target, left alone")
        }
        if let follow {
            lines.append("  follow: sources \(follow.sources.joined(separator: ", ")); latencies are from the last poll "
                         + "that saw the CPU in its old condition (deadline \(follow.deadlineMilliseconds) ms); "
                         + "\(follow.repins) threads re-pinned, \(follow.failures) failed operations"
                         + (follow.leftParked.isEmpty ? "" : "; left parked at the end (physical CPU not usable): "
                            + "\(follow.leftParked)"))
        }
        lines.append("  detach+attach cycles \(cycles); injected failures \(injected)"
                     + (injectedAt.isEmpty ? "" : " (" + injectedAt.sorted { $0.key < $1.key }
                        .map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ")"))
        for (name, side) in [("attach", attach), ("detach", detach)] {
            lines.append("\(name) latency (us), successful operations:")
            lines += Histogram.lines(side.latencies)
        }
        if follow == nil {
            for (name, side) in [("attach", bulkAttach), ("detach", bulkDetach)] {
                lines.append("bulk \(name) latency (us), calls that moved CPUs:")
                lines += Histogram.lines(side.latencies)
            }
        }
        lines.append("tasklets: \(tasklets.scheduled) scheduled, \(tasklets.executed) executed, lost \(tasklets.lost), "
                     + "duplicated \(tasklets.duplicated); \(tasklets.coalesced) coalesced, \(tasklets.chained) "
                     + "scheduled by tasklets, \(tasklets.toOfflineCPU) aimed at CPUs not online, "
                     + "\(tasklets.heldAcrossDetach) held (disabled) on a CPU across its detach")
        lines.append("slab: \(slab.allocated) allocated, \(slab.freed) freed, in use at the end \(slab.inUseEnd), "
                     + "leaked \(slab.leaked), bytes mapped after shrink \(slab.bytesMappedEnd.map(String.init) ?? "?"); "
                     + "\(slabQuiescentChecks) quiescent checks, \(slabShrinks) shrinks, \(slabSkipped) churns skipped "
                     + "while paused")
        lines.append("parked CPUs: \(parkedWindows) windows measured (\(parkedUnmeasured) not), CPU time growth "
                     + "\(parkedGrowthNanoseconds / 1_000) us in all, at most \(parkedMaxGrowthNanoseconds / 1_000) us "
                     + "in one; \(pinningChecks) pinning checks")
        let answers = sigpAnswers.map { "\($0.order) \($0.byCode.map(String.init).joined(separator: "/"))" }
        lines.append("SIGP orders by cc 0/1/2/3: " + answers.joined(separator: ", ") + "; external calls "
                     + "\(externalCalls.accepted) accepted / \(externalCalls.received) received, emergency signals "
                     + "\(emergencySignals.accepted) / \(emergencySignals.received)")
        lines.append("cross-calls \(crossCalls) (\(crossCallsRefused) refused: CPU not online), runOnEach "
                     + "\(runOnEachCalls), stop_machine \(stopMachines) (\(stopMachineBodies) bodies), read-locked "
                     + "mask checks \(readLockedChecks); worker actions \(workerActions)")
        if let executors {
            lines.append("executors: \(executors.jobs) jobs checked (\(executors.serialJobs) on CPU executors, "
                         + "\(executors.poolJobs) on the pool); \(executors.issued) units issued, \(executors.completed) "
                         + "completed, \(executors.refused) refused (async run(on:) to a CPU not online); "
                         + "\(executors.tasks) tasks, \(executors.drivers) drivers, \(executors.actors) pinned actors, "
                         + "\(executors.actorCalls) actor calls, \(executors.asyncCrossCalls) async cross-calls, "
                         + "\(executors.yields) yields; moves: \(executors.hops) task hops between CPUs, "
                         + "\(executors.standInJobs) jobs on a stand-in, \(executors.rehomes) executor host changes; "
                         + "longest wait for a unit \(fixed(executors.maximumWaitMilliseconds, 1)) ms ("
                         + "\(executors.longestWaitFor))")
        }
        if let misuse {
            lines.append("misuse: \(misuse.refusals) wrong calls refused (from \(misuse.fromCrossCalls) cross-calls, "
                         + "\(misuse.fromTasklets) tasklets, \(misuse.fromCallbacks) hotplug callbacks, "
                         + "\(misuse.fromStopMachine) stop_machine bodies); \(misuse.storms) STOP/START storms on busy "
                         + "CPUs, \(misuse.probes) 5 ms cross-calls beside them, \(misuse.detachesRefusedStopped) detaches "
                         + "refused (CPU stopped by the storm)")
        }
        lines.append("  " + pad("invariant", 96) + padLeft("checks", 12) + padLeft("violations", 12))
        for entry in invariants {
            lines.append("  " + pad(entry.invariant.title, 96) + padLeft("\(entry.checks)", 12)
                         + padLeft("\(entry.violations)", 12))
        }
        for violation in violations.prefix(10) {
            lines.append("  violation at \(fixed(violation.at, 2)) s: \(violation.invariant.title): \(violation.detail)")
        }
        return lines
    }

    // MARK: JSON

    struct LatencyJSON: Encodable {
        let attempts: Int, count: Int, rollbacks: Int, timeouts: Int
        let minUs: Int?, p50Us: Int?, p99Us: Int?, maxUs: Int?

        enum CodingKeys: String, CodingKey {
            case attempts, count, rollbacks, timeouts
            case minUs = "min_us", p50Us = "p50_us", p99Us = "p99_us", maxUs = "max_us"
        }
    }

    struct BulkJSON: Encodable {
        let calls: Int, cpusAsked: Int, moved: Int, alreadyThere: Int, rollbacks: Int, timeouts: Int
        let refusedWhole: Int, refusedStopped: Int, mostMoved: Int, meanMoved: Double
        let minUs: Int?, p50Us: Int?, p99Us: Int?, maxUs: Int?, p50UsPerCpu: Int?, p99UsPerCpu: Int?

        enum CodingKeys: String, CodingKey {
            case calls, moved, rollbacks, timeouts
            case cpusAsked = "cpus_asked", alreadyThere = "already_there", refusedWhole = "refused_whole"
            case refusedStopped = "refused_stopped", mostMoved = "most_moved", meanMoved = "mean_moved"
            case minUs = "min_us", p50Us = "p50_us", p99Us = "p99_us", maxUs = "max_us"
            case p50UsPerCpu = "p50_us_per_cpu", p99UsPerCpu = "p99_us_per_cpu"
        }

        init(_ side: Bulk) {
            calls = side.calls
            cpusAsked = side.cpusAsked
            moved = side.moved
            alreadyThere = side.alreadyThere
            rollbacks = side.rollbacks
            timeouts = side.timeouts
            refusedWhole = side.refusedWhole
            refusedStopped = side.refusedStopped
            mostMoved = side.mostMoved
            meanMoved = (side.meanMoved * 100).rounded() / 100
            minUs = side.latencies.microsecondsValue(0)
            p50Us = side.latencies.microsecondsValue(0.5)
            p99Us = side.latencies.microsecondsValue(0.99)
            maxUs = side.latencies.microsecondsValue(1)
            p50UsPerCpu = side.perCPU.microsecondsValue(0.5)
            p99UsPerCpu = side.perCPU.microsecondsValue(0.99)
        }
    }

    struct BulkPairJSON: Encodable { let attach: BulkJSON, detach: BulkJSON }

    struct TaskletsJSON: Encodable {
        let scheduled: Int, executed: Int, lost: Int, duplicated: Int, coalesced: Int, chained: Int
        let heldAcrossDetach: Int

        enum CodingKeys: String, CodingKey {
            case scheduled, executed, lost, duplicated, coalesced, chained
            case heldAcrossDetach = "held_across_detach"
        }
    }

    struct SlabJSON: Encodable {
        let allocated: Int, freed: Int, inUseEnd: Int, leaked: Int, bytesMappedEnd: Int?, quiescentChecks: Int

        enum CodingKeys: String, CodingKey {
            case allocated, freed, leaked
            case inUseEnd = "in_use_end", bytesMappedEnd = "bytes_mapped_end", quiescentChecks = "quiescent_checks"
        }
    }

    struct InvariantJSON: Encodable { let name: String, title: String, checks: Int, violations: Int }

    struct FollowJSON: Encodable {
        let sources: [String], deadlineMs: Double, repins: Int, failures: Int, leftParked: [Int]

        enum CodingKeys: String, CodingKey {
            case sources, repins, failures
            case deadlineMs = "deadline_ms", leftParked = "left_parked"
        }
    }
    struct ViolationJSON: Encodable { let invariant: String, detail: String, at: Double }

    struct MisuseJSON: Encodable {
        let refusals: Int, fromCrossCalls: Int, fromTasklets: Int, fromCallbacks: Int, fromStopMachine: Int
        let storms: Int, probes: Int

        enum CodingKeys: String, CodingKey {
            case refusals, storms, probes
            case fromCrossCalls = "from_cross_calls", fromTasklets = "from_tasklets", fromCallbacks = "from_callbacks"
            case fromStopMachine = "from_stop_machine"
        }
    }

    struct ExecutorsJSON: Encodable {
        let jobs: Int, serialJobs: Int, poolJobs: Int, issued: Int, completed: Int, refused: Int, stuckDrivers: Int
        let tasks: Int, drivers: Int, actors: Int, actorCalls: Int, asyncCrossCalls: Int, yields: Int
        let hops: Int, standInJobs: Int, rehomes: Int, maxWaitMs: Double

        enum CodingKeys: String, CodingKey {
            case jobs, issued, completed, refused, tasks, drivers, actors, yields, hops, rehomes
            case serialJobs = "serial_jobs", poolJobs = "pool_jobs", stuckDrivers = "stuck_drivers"
            case actorCalls = "actor_calls", asyncCrossCalls = "async_cross_calls", standInJobs = "stand_in_jobs"
            case maxWaitMs = "max_wait_ms"
        }

        init(_ tally: ExecutorTally) {
            jobs = tally.jobs
            serialJobs = tally.serialJobs
            poolJobs = tally.poolJobs
            issued = tally.issued
            completed = tally.completed
            refused = tally.refused
            stuckDrivers = tally.stuckDrivers
            tasks = tally.tasks
            drivers = tally.drivers
            actors = tally.actors
            actorCalls = tally.actorCalls
            asyncCrossCalls = tally.asyncCrossCalls
            yields = tally.yields
            hops = tally.hops
            standInJobs = tally.standInJobs
            rehomes = tally.rehomes
            maxWaitMs = (tally.maximumWaitMilliseconds * 10).rounded() / 10
        }
    }

    struct ReportJSON: Encodable {
        let seed: UInt64, seconds: Double, elapsedSeconds: Double, finalSeconds: Double, cpus: Int, physicalCpus: Int, workers: Int
        let failRate: Double, onoffIntervalMs: Double
        let cycles: Int
        let attach: LatencyJSON, detach: LatencyJSON
        /// Nil in follow mode (the on/off thread makes no operation then).
        let bulk: BulkPairJSON?
        let injectedFailures: Int, rollbacks: Int
        let tasklets: TaskletsJSON
        let slab: SlabJSON
        let parkedCpuTimeGrowthUs: Int, parkedWindows: Int
        let crossCalls: Int, stopMachine: Int, sigpOrders: Int
        let invariants: [InvariantJSON]
        let violations: [ViolationJSON]
        let follow: FollowJSON?
        let misuse: MisuseJSON?
        let executors: ExecutorsJSON?
        let passed: Bool

        enum CodingKeys: String, CodingKey {
            case seed, seconds, cpus, workers, cycles, attach, detach, bulk, rollbacks, tasklets, slab, invariants
            case violations, passed, follow, misuse, executors
            case elapsedSeconds = "elapsed_seconds", finalSeconds = "final_seconds", physicalCpus = "physical_cpus", failRate = "fail_rate"
            case onoffIntervalMs = "onoff_interval_ms", injectedFailures = "injected_failures"
            case parkedCpuTimeGrowthUs = "parked_cpu_time_growth_us", parkedWindows = "parked_windows"
            case crossCalls = "cross_calls", stopMachine = "stop_machine", sigpOrders = "sigp_orders"
        }
    }

    private static func latencyJSON(_ side: Direction) -> LatencyJSON {
        LatencyJSON(attempts: side.attempts, count: side.successes, rollbacks: side.rollbacks, timeouts: side.timeouts,
                    minUs: side.latencies.microsecondsValue(0), p50Us: side.latencies.microsecondsValue(0.5),
                    p99Us: side.latencies.microsecondsValue(0.99), maxUs: side.latencies.microsecondsValue(1))
    }

    /// The one JSON object of `--json`.
    func json() throws -> String {
        let report = ReportJSON(
            seed: settings.seed, seconds: settings.seconds, elapsedSeconds: (runSeconds * 10).rounded() / 10,
            finalSeconds: (finalSeconds * 10).rounded() / 10,
            cpus: settings.cpus, physicalCpus: physicalCPUs, workers: settings.workers, failRate: settings.failRate,
            onoffIntervalMs: settings.onoffIntervalMilliseconds, cycles: cycles,
            attach: Outcome.latencyJSON(attach), detach: Outcome.latencyJSON(detach),
            bulk: follow == nil ? BulkPairJSON(attach: BulkJSON(bulkAttach), detach: BulkJSON(bulkDetach)) : nil,
            injectedFailures: injected, rollbacks: rollbacks,
            tasklets: TaskletsJSON(scheduled: tasklets.scheduled, executed: tasklets.executed, lost: tasklets.lost,
                                   duplicated: tasklets.duplicated, coalesced: tasklets.coalesced,
                                   chained: tasklets.chained, heldAcrossDetach: tasklets.heldAcrossDetach),
            slab: SlabJSON(allocated: slab.allocated, freed: slab.freed, inUseEnd: slab.inUseEnd, leaked: slab.leaked,
                           bytesMappedEnd: slab.bytesMappedEnd, quiescentChecks: slabQuiescentChecks),
            parkedCpuTimeGrowthUs: parkedGrowthNanoseconds / 1_000, parkedWindows: parkedWindows,
            crossCalls: crossCalls, stopMachine: stopMachines,
            sigpOrders: sigpAnswers.reduce(0) { $0 + $1.byCode.reduce(0, +) },
            invariants: invariants.map { InvariantJSON(name: $0.invariant.key, title: $0.invariant.title,
                                                       checks: $0.checks, violations: $0.violations) },
            violations: violations.map { ViolationJSON(invariant: $0.invariant.key, detail: $0.detail,
                                                       at: ($0.at * 100).rounded() / 100) },
            follow: follow.map { FollowJSON(sources: $0.sources, deadlineMs: $0.deadlineMilliseconds, repins: $0.repins,
                                            failures: $0.failures, leftParked: $0.leftParked) },
            misuse: misuse.map { MisuseJSON(refusals: $0.refusals, fromCrossCalls: $0.fromCrossCalls,
                                            fromTasklets: $0.fromTasklets, fromCallbacks: $0.fromCallbacks,
                                            fromStopMachine: $0.fromStopMachine, storms: $0.storms, probes: $0.probes) },
            executors: executors.map(ExecutorsJSON.init), passed: passed)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(report), as: UTF8.self)
    }
}
