import ExampleSupport
import Synchronization

/// A counter shared between threads. Every use is a statistic or a ledger entry whose ordering is given by
/// something else (a tasklet's state, a lock, a join), so the counter itself is relaxed unless a caller says
/// otherwise.
final class Counter: Sendable {
    let value = Atomic<Int>(0)

    init(_ initial: Int = 0) { value.store(initial, ordering: .relaxed) }

    @discardableResult
    func add(_ amount: Int = 1) -> Int { value.add(amount, ordering: .relaxed).newValue }
    var load: Int { value.load(ordering: .relaxed) }
}

/// The invariants the torture run checks, in the order the summary lists them. The first five are those of
/// docs/ARCHITECTURE.md, "Invariants"; the others check the rest of what the workload touches.
enum Invariant: Int, CaseIterable, Sendable {
    case tasklets, slab, offlineCaches, parkedCPUTime, pinning
    case taskletPlacement, rollback, callbacks, crossCalls, sigp, stopMachine, progress, follow
    /// `--misuse` only (Misuse.swift).
    case misuse, stopStorm, busyShutdown
    /// The executor workload (ExecutorWorkload.swift; off with `--executors off`).
    case executorJobs, executorSerial, executorPlacement

    /// What holds when the invariant holds; the FAILED line names it.
    var title: String {
        switch self {
        case .tasklets: "tasklets ran exactly once per schedule"
        case .slab: "every slab object is accounted for"
        case .offlineCaches: "no per-CPU cache of an offline CPU holds anything"
        case .parkedCPUTime: "a parked CPU's thread burns no CPU time"
        case .pinning: "every CPU's thread is pinned to its physical CPU"
        case .taskletPlacement: "tasklets run only on online CPUs, never concurrently with themselves"
        case .rollback: "each operation leaves its CPU where it should (an injected failure rolls it back)"
        case .callbacks: "hotplug callbacks are balanced and run where their section says"
        case .crossCalls: "cross-calls run on their target CPU"
        case .sigp: "SIGP orders answer as documented and deliver each interruption once"
        case .stopMachine: "stop_machine runs where asked, stops every other CPU; it and the read lock hold the online mask still"
        case .progress: "the run makes progress (no livelock, no timeout)"
        case .follow: "the machine follows the CPUs the process may use (--follow), each change within the deadline"
        case .misuse: "misuse is refused with the documented error, at once (--misuse)"
        case .stopStorm: "cross-calls keep their timeouts while a busy CPU is stopped and started (--misuse)"
        case .busyShutdown: "shutdown with a busy CPU leaves only it running and the process alive (--misuse)"
        case .executorJobs: "executor jobs ran exactly once and every task awaiting one resumed"
        case .executorSerial: "no serial executor ran two jobs at once"
        case .executorPlacement: "executor jobs ran on online CPUs: CPU n's on n while it is online, else a stand-in"
        }
    }

    /// The name in the JSON report.
    var key: String {
        switch self {
        case .tasklets: "tasklets"
        case .slab: "slab"
        case .offlineCaches: "offline_caches"
        case .parkedCPUTime: "parked_cpu_time"
        case .pinning: "pinning"
        case .taskletPlacement: "tasklet_placement"
        case .rollback: "rollback"
        case .callbacks: "hotplug_callbacks"
        case .crossCalls: "cross_calls"
        case .sigp: "sigp"
        case .stopMachine: "stop_machine"
        case .progress: "progress"
        case .follow: "follow"
        case .misuse: "misuse"
        case .stopStorm: "stop_storm"
        case .busyShutdown: "busy_shutdown"
        case .executorJobs: "executor_jobs"
        case .executorSerial: "executor_serial"
        case .executorPlacement: "executor_placement"
        }
    }
}

/// One broken invariant, as found.
struct Violation: Sendable {
    let invariant: Invariant
    let detail: String
    /// Seconds into the run.
    let at: Double
}

/// Counts every check by invariant and keeps the violations. Checks run on every thread of the run (logical
/// CPUs inside tasklets and callbacks included), so counting is one relaxed atomic add; a violation takes a lock.
final class Checks: Sendable {
    private let counts = Invariant.allCases.map { _ in Counter() }
    private let broken = Invariant.allCases.map { _ in Counter() }
    private let kept = Mutex<[Violation]>([])
    private let started: Int64
    /// Set by the first violation: the run stops early (what follows a broken invariant is noise).
    let failed = Atomic<Bool>(false)
    /// stop_machine bodies of the workload running now: while one runs, every other CPU is stopped (in the
    /// barrier, or claimed where it parked), so no tasklet and no executor job may run anywhere.
    let stopMachineBodies = Counter()

    /// Checks, from a tasklet or a job, that no stop_machine body runs meanwhile.
    @inline(__always)
    func checkNoStopMachineBody(_ what: @autoclosure () -> String) {
        if stopMachineBodies.load != 0 {
            fail(.stopMachine, "\(what()) ran while a stop_machine body ran (every CPU must be stopped)")
        }
    }

    /// Violations kept in full; later ones are only counted.
    static let keptLimit = 100

    init(started: Int64) { self.started = started }

    /// Counts one check of `invariant`; records a violation with `detail` when `condition` is false.
    @discardableResult
    func check(_ invariant: Invariant, _ condition: Bool, _ detail: @autoclosure () -> String) -> Bool {
        counts[invariant.rawValue].add()
        if !condition { fail(invariant, detail()) }
        return condition
    }

    /// Records a violation (and counts it as a check).
    func fail(_ invariant: Invariant, _ detail: String) {
        broken[invariant.rawValue].add()
        let at = Double(monotonicNanoseconds() - started) / 1e9
        kept.withLock { if $0.count < Checks.keptLimit { $0.append(Violation(invariant: invariant, detail: detail, at: at)) } }
        failed.store(true, ordering: .relaxed)
    }

    func checks(_ invariant: Invariant) -> Int { counts[invariant.rawValue].load }
    func violations(_ invariant: Invariant) -> Int { broken[invariant.rawValue].load }
    var all: [Violation] { kept.withLock { $0 } }
    var totalViolations: Int { broken.reduce(0) { $0 + $1.load } }
}
