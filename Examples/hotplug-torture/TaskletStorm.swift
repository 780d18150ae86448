import ExampleSupport
import Hotplug
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One tortured tasklet's ledger.
///
/// - `credit`: schedules begun, less those that returned false (coalesced). It is raised *before* calling
///   ``Tasklet/schedule(on:)``, so a run always finds the credit of the schedule that queued it: the tasklet's
///   state word orders the two (the schedule's read-modify-write releases, the run's acquires). A run that finds
///   more runs than credit ran twice for one schedule.
/// - `scheduled`: schedules that returned true (each queued exactly one run).
/// - `executed`: runs.
/// - `inside`: runs in progress (more than one is a tasklet running concurrently with itself).
final class TaskletLedger: Sendable {
    let credit = Atomic<Int>(0)
    let scheduled = Counter()
    let executed = Atomic<Int>(0)
    let inside = Atomic<Int>(0)
    /// The tasklet's own random choices; never contended (a tasklet never runs concurrently with itself).
    let rng: Mutex<SplitMix64>

    init(seed: UInt64, index: Int) { rng = Mutex(SplitMix64(seed: seed, stream: 10_000 + UInt64(index))) }
}

/// Lets the tasklets' bodies reach the storm that owns them, which does not exist yet when they are created.
final class StormLink: @unchecked Sendable {
    // @unchecked: `storm` is written once, in TaskletStorm.init, before any tasklet is scheduled; every run comes
    // after a schedule, whose release on the tasklet's state word publishes it. Weak: the storm owns the tasklets.
    weak var storm: TaskletStorm?
}

/// Tasklet storms: many tasklets scheduled from worker threads, from logical CPUs (in cross-calls) and from each
/// other (a run schedules another one), on random CPUs, online or not, while CPUs come and go; some are held
/// disabled while queued so that the CPU they wait on may be detached under them (they must move to a survivor).
///
/// Invariant (Linux semantics): each schedule that returned true is followed by exactly one run, so at the end,
/// once nothing is scheduled or running, runs == such schedules for every tasklet (lost = the shortfall,
/// duplicated = the excess). During the run: a run never finds more runs than credit, never runs concurrently
/// with itself, and always runs on an online CPU (the online mask only changes inside stop_machine, when no
/// tasklet runs, so reading it inside a tasklet is exact).
final class TaskletStorm: Sendable {
    let machine: Machine
    let tasklets: [Tasklet]
    let ledgers: [TaskletLedger]
    private let checks: Checks
    private let slab: SlabChurn
    /// Runs schedule further tasklets while this is true (off while draining).
    let chaining = Atomic<Bool>(true)
    /// The hidden debug option: the next run is left out of the count, so the tasklet invariant must break.
    private let dropOneRun: Atomic<Bool>

    let coalesced = Counter()
    let chained = Counter()
    let toOfflineCPU = Counter()
    let heldAcrossDetach = Counter()

    /// Probabilities of what a run does besides counting itself.
    static let chainProbability = 0.2
    static let churnProbability = 0.25

    init(machine: Machine, count: Int, seed: UInt64, checks: Checks, slab: SlabChurn, dropOneRun: Bool) {
        self.machine = machine
        self.checks = checks
        self.slab = slab
        self.dropOneRun = Atomic(dropOneRun)
        let ledgers = (0..<count).map { TaskletLedger(seed: seed, index: $0) }
        self.ledgers = ledgers
        let link = StormLink()
        tasklets = (0..<count).map { index in
            Tasklet(machine, priority: index % 4 == 0 ? .high : .normal) { link.storm?.run(index) }
        }
        link.storm = self
    }

    // MARK: Scheduling

    /// Schedules tasklet `index` on `cpu` (nil: the caller's CPU, or the least loaded), keeping the ledger.
    /// - Returns: whether this schedule queued a run.
    @discardableResult
    func schedule(_ index: Int, on cpu: Int?) -> Bool {
        let ledger = ledgers[index]
        // Release: partner of the run's acquiring load (also ordered by the tasklet's state word).
        ledger.credit.add(1, ordering: .releasing)
        if let cpu, !machine.online.contains(cpu) { toOfflineCPU.add() }
        do {
            if try tasklets[index].schedule(on: cpu) {
                ledger.scheduled.add()
                return true
            }
            coalesced.add()
        } catch {
            checks.fail(.tasklets, "schedule(on: \(cpu.map(String.init) ?? "nil")) of tasklet \(index) threw \(error)")
        }
        ledger.credit.subtract(1, ordering: .relaxed)
        return false
    }

    /// Schedules `count` random tasklets on random CPUs (sometimes nil, sometimes not online).
    func burst(_ count: Int, using rng: inout SplitMix64) {
        for _ in 0..<count {
            let index = Int.random(in: 0..<tasklets.count, using: &rng)
            let cpu: Int? = rng.chance(0.125) ? nil : Int.random(in: 0..<machine.possibleCount, using: &rng)
            schedule(index, on: cpu)
        }
    }

    /// A tasklet a worker holds disabled while it is queued: if its CPU is detached meanwhile, the takeover must
    /// move the pending run to a survivor, where it runs once enabled.
    struct Held {
        let index: Int
        let cpu: Int
        /// The CPU's detach count when it was queued.
        let detaches: Int
        let queued: Bool
        let releaseAt: Int64
    }

    /// Disables tasklet `index` (waiting for a run in progress) and schedules it on `cpu`.
    func hold(_ index: Int, on cpu: Int, detaches: Int, forNanoseconds: Int64) -> Held {
        tasklets[index].disable()
        let queued = schedule(index, on: cpu)
        return Held(index: index, cpu: cpu, detaches: detaches, queued: queued,
                    releaseAt: monotonicNanoseconds() + forNanoseconds)
    }

    /// Enables a held tasklet; counts it when its CPU was detached while it waited there.
    func release(_ held: Held, detachesNow: Int) {
        if held.queued && detachesNow != held.detaches { heldAcrossDetach.add() }
        tasklets[held.index].enable()
    }

    // MARK: A run

    /// What every tortured tasklet runs: checks, counts, and sometimes churns the slab or schedules another one.
    func run(_ index: Int) {
        let ledger = ledgers[index]
        let cpu = machine.currentCPU
        let concurrent = ledger.inside.add(1, ordering: .acquiringAndReleasing).newValue
        checks.check(.taskletPlacement, concurrent == 1, "tasklet \(index) ran concurrently with itself")
        checks.checkNoStopMachineBody("tasklet \(index)")
        if let cpu {
            checks.check(.taskletPlacement, machine.online.contains(cpu),
                         "tasklet \(index) ran on logical CPU \(cpu), which is not online")
        } else {
            checks.fail(.taskletPlacement, "tasklet \(index) ran off the machine's logical CPUs")
        }
        if dropOneRun.load(ordering: .relaxed), dropOneRun.exchange(false, ordering: .relaxed) {
            // --debug-drop-tasklet: this run is not counted, so the final tally must show one lost run.
        } else {
            let runs = ledger.executed.add(1, ordering: .relaxed).newValue
            // Acquire: partner of schedule's release of the credit.
            let credit = ledger.credit.load(ordering: .acquiring)
            checks.check(.tasklets, runs <= credit,
                         "tasklet \(index) ran \(runs) times for at most \(credit) schedules (a schedule ran twice)")
        }
        let (churn, chainTo, chainCPU, pick) = ledger.rng.withLock { rng in
            (rng.chance(TaskletStorm.churnProbability),
             rng.chance(TaskletStorm.chainProbability) ? Int.random(in: 0..<tasklets.count, using: &rng) : nil,
             rng.chance(0.5) ? nil : Int.random(in: 0..<machine.possibleCount, using: &rng),
             rng.next())
        }
        if churn { slab.churn(frees: Int(pick % 3), allocations: Int((pick >> 8) % 3), pick: pick) }
        if let chainTo, chaining.load(ordering: .relaxed) {
            chained.add()
            schedule(chainTo, on: chainCPU)
        }
        ledger.inside.subtract(1, ordering: .acquiringAndReleasing)
    }

    // MARK: The end

    /// True when no tasklet is scheduled or running.
    var isIdle: Bool { tasklets.allSatisfy { !$0.isScheduled && !$0.isRunning } }

    /// Stops chaining and waits (bounded) until every tasklet is idle and stays so.
    func drain(timeoutMilliseconds: Int64) -> Bool {
        chaining.store(false, ordering: .relaxed)
        let deadline = monotonicNanoseconds() + timeoutMilliseconds * 1_000_000
        while monotonicNanoseconds() < deadline {
            let left = max(1, (deadline - monotonicNanoseconds()) / 1_000_000)
            guard waitUntil(left, { isIdle }) else { return false }
            // A run that read `chaining` just before it was cleared may still schedule one more: look again.
            usleep(5_000)
            if isIdle { return true }
        }
        return false
    }

    /// The final tally, checked: every tasklet ran exactly as often as a schedule queued it.
    func tally(drained: Bool) -> TaskletTally {
        var tally = TaskletTally()
        var worst: (index: Int, scheduled: Int, executed: Int)?
        for (index, ledger) in ledgers.enumerated() {
            let scheduled = ledger.scheduled.load, executed = ledger.executed.load(ordering: .acquiring)
            tally.scheduled += scheduled
            tally.executed += executed
            tally.lost += max(0, scheduled - executed)
            tally.duplicated += max(0, executed - scheduled)
            if scheduled != executed && worst == nil { worst = (index, scheduled, executed) }
        }
        tally.coalesced = coalesced.load
        tally.chained = chained.load
        tally.toOfflineCPU = toOfflineCPU.load
        tally.heldAcrossDetach = heldAcrossDetach.load
        checks.check(.tasklets, drained, "tasklets still scheduled or running after the drain timeout")
        checks.check(.tasklets, tally.lost == 0 && tally.duplicated == 0,
                     "lost \(tally.lost), duplicated \(tally.duplicated) of \(tally.scheduled) schedules"
                     + (worst.map { "; first: tasklet \($0.index) queued \($0.scheduled) runs, ran \($0.executed)" } ?? ""))
        return tally
    }
}

/// The tasklet figures of the report.
struct TaskletTally: Sendable {
    var scheduled = 0, executed = 0, lost = 0, duplicated = 0
    var coalesced = 0, chained = 0, toOfflineCPU = 0, heldAcrossDetach = 0
}
