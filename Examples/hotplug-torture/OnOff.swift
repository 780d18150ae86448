import ExampleSupport
import Hotplug
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the on/off thread did, readable by the status line while it runs.
final class OnOffStats: Sendable {
    final class Direction: Sendable {
        let attempts = Counter()
        let successes = Counter()
        let rollbacks = Counter()
        let timeouts = Counter()
        /// `--misuse`: detaches refused because a STOP storm held the CPU.
        let refusedStopped = Counter()
        /// Wall time of each successful operation, in nanoseconds.
        let latencies = Mutex<[Int64]>([])
    }

    /// Bulk operations of one direction (`Machine.online(_: CPUSet)`, `Machine.offline(_: CPUSet)`).
    final class Bulk: Sendable {
        /// Calls made (the refused ones included).
        let calls = Counter()
        /// Per CPU of the sets: attempts are the CPUs asked to move (not already at the target), successes the
        /// CPUs moved, rollbacks, timeouts and refusals as for single operations, latencies the call's wall time
        /// divided by the CPUs it moved.
        let cpus = Direction()
        /// CPUs of a set already at the target (the call must leave them alone).
        let alreadyThere = Counter()
        /// Detach sets holding every online CPU, refused whole as documented.
        let refusedWhole = Counter()
        /// The most CPUs one call moved.
        let mostMoved = Counter()
        /// Wall time of each call that moved at least one CPU, in nanoseconds.
        let latencies = Mutex<[Int64]>([])
    }

    let attach = Direction()
    let detach = Direction()
    let bulkAttach = Bulk()
    let bulkDetach = Bulk()
    let injected = Counter()
    let injectedAt = Mutex<[String: Int]>([:])
    /// Successful attaches of a CPU this run had detached before: detach + attach cycles.
    let cycles = Counter()
    /// Completed detaches per CPU (the held tasklets compare it before and after).
    let detachesPerCPU: [Counter]
    /// Parked windows measured, their total and largest thread CPU time growth (ns), and windows that could not
    /// be measured (the thread was not yet seen blocked when the CPU was attached again).
    let parkedWindows = Counter()
    let parkedGrowth = Counter()
    let parkedMaxGrowth = Counter()
    let parkedUnmeasured = Counter()
    let pinningChecks = Counter()
    /// When the last operation completed (monotonic ns), for the livelock check.
    let lastProgress: Atomic<Int64>

    init(cpus: Int) {
        detachesPerCPU = (0..<cpus).map { _ in Counter() }
        lastProgress = Atomic(monotonicNanoseconds())
    }

    var operations: Int { attach.attempts.load + detach.attempts.load + bulkAttach.calls.load + bulkDetach.calls.load }
    /// CPUs rolled back after an injected failure, by single and bulk operations.
    var rollbacks: Int {
        attach.rollbacks.load + detach.rollbacks.load + bulkAttach.cpus.rollbacks.load + bulkDetach.cpus.rollbacks.load
    }
    /// Detaches refused because a STOP storm held the CPU (`--misuse`), single and bulk.
    var refusedStopped: Int { detach.refusedStopped.load + bulkDetach.cpus.refusedStopped.load }
}

/// The on/off thread (rcutorture's onoff): attaches and detaches random CPUs every `--onoff-interval`, one at a time
/// or (a third of the operations, OnOffBulk.swift) a set at a time, injects a failure into an operation (each CPU of
/// a set) with probability `--fail-rate`, and between two operations, when it alone could change the masks and
/// nothing is in flight, checks what must hold then.
///
/// It is the only thread that attaches or detaches, so between its operations the online mask is stable without
/// any lock: the checks of offline caches, callback balances, pinning, parked CPU time and the slab's quiescent
/// ledger all run here.
///
/// Fault injection points (where the hotplug walk lets a failure happen, docs/ARCHITECTURE.md, "The hotplug walk"): on
/// attach, the bring-up, the built-in `slab:prepare` startup, and the startups of `torture:prepare` (PREPARE) and
/// `torture:online` (ONLINE); on detach, the teardown of the CPU (it refuses to die) and the teardown of
/// `torture:online`. An operation with an injected failure must throw `callbackFailed` at exactly that state with
/// `rolledBack: true` and leave the CPU where it was; an operation without one must succeed.
final class OnOffDriver: Sendable {
    let machine: Machine
    let checks: Checks
    let slab: SlabChurn
    let states: TortureStates
    let stats: OnOffStats
    let stop = Atomic<Bool>(false)
    /// Follow mode: logical CPUs left parked at the end (their physical CPU was not usable), set by `finish`.
    let leftParkedAtEnd = Mutex<Set<Int>>([])
    private let seed: UInt64
    private let intervalMicroseconds: Double
    private let failRate: Double
    private let attachPoints: [InjectionPoint]
    private let detachPoints: [InjectionPoint]
    /// Set with `--follow`: the machine follows the real CPUs, this thread only checks (FollowMode.swift).
    let follow: FollowMode?
    /// Set with `--misuse`: its STOP storms may hold a CPU this thread detaches.
    let misuse: MisuseLoad?

    /// A state where a failure may be injected, with its name for the report.
    struct InjectionPoint {
        let state: HotplugState
        let name: String
    }

    /// A parked thread that is not blocked in the kernel this long after its detach is a violation.
    static let blockDeadline: Int64 = 2_000_000_000
    /// How often the slab ledger is compared with the cache's statistics (the churn pauses for it).
    static let quiescentInterval: Int64 = 250_000_000
    /// Slack on the parked-time check beyond the source's resolution: a wake-up that the runtime documents as
    /// harmless (a spurious futex return re-checks the word and waits again) costs a few microseconds.
    static let parkedSlack: Int64 = 50_000

    init(machine: Machine, checks: Checks, slab: SlabChurn, states: TortureStates, misuse: MisuseLoad?, seed: UInt64,
         intervalMilliseconds: Double, failRate: Double, followDeadlineMilliseconds: Double?, followPriority: Int32?,
         output: @escaping @Sendable (String) -> Void) {
        self.machine = machine
        self.checks = checks
        self.slab = slab
        self.states = states
        self.misuse = misuse
        self.seed = seed
        self.intervalMicroseconds = intervalMilliseconds * 1_000
        self.failRate = failRate
        let stats = OnOffStats(cpus: machine.possibleCount)
        self.stats = stats
        follow = followDeadlineMilliseconds.map {
            FollowMode(machine: machine, checks: checks, stats: stats, deadlineMilliseconds: $0,
                       realtimePriority: followPriority, output: output)
        }
        let slabPrepare = machine.hotplug.states.first { $0.name == "slab:prepare" }
        attachPoints = [InjectionPoint(state: .bringup, name: "cpu:bringup"),
                        InjectionPoint(state: states.prepare.state, name: states.prepare.name),
                        InjectionPoint(state: states.online.state, name: states.online.name)]
            + (slabPrepare.map { [InjectionPoint(state: $0.state, name: $0.name)] } ?? [])
        detachPoints = [InjectionPoint(state: .teardownCPU, name: "cpu:teardown"),
                        InjectionPoint(state: states.online.state, name: states.online.name)]
    }

    /// The thread's body: operations (or, in follow mode, the follower's events) until told to stop, then every CPU
    /// back online.
    func run() {
        var local = Local(rng: SplitMix64(seed: seed, stream: 1))
        follow?.start()
        while !stop.load(ordering: .relaxed) {
            if let follow {
                followStep(follow, &local)
                followChecks(follow, &local)
            } else {
                if local.rng.chance(OnOffDriver.bulkShare) { bulkStep(&local) } else { step(&local) }
                betweenOperations(&local)
            }
            pause(&local)
        }
        if let follow {
            followStep(follow, &local)
            local.leftParked = follow.settleAndStop()
            followStep(follow, &local)
        }
        finish(&local)
    }

    /// What only the on/off thread touches.
    struct Local {
        var rng: SplitMix64
        var watches: [Int: ParkedWatch] = [:]
        /// Injections armed for an operation that failed before reaching them (they fire on the next one).
        var pending: [Int: InjectionPoint] = [:]
        var everDetached = Set<Int>()
        var operations = 0
        var lastQuiescent = monotonicNanoseconds()
        /// Follow mode: since when a logical CPU has been on the wrong side of its physical CPU's usability.
        var staleSince: [Int: Int64] = [:]
        /// Follow mode: logical CPUs left parked at the end because their physical CPU is not usable.
        var leftParked = Set<Int>()
    }

    /// A parked CPU's thread being watched: from `armed` on, its CPU time must not grow.
    struct ParkedWatch {
        let tid: Int32
        let detachedAt: Int64
        /// How the CPU came to be parked (a detach, or an attach that failed), for the diagnosis of a violation.
        let cause: String
        /// The first reading of the thread asleep, until a later one confirms that it stayed asleep.
        var candidate: ThreadProbe.SleepReading?
        /// The confirmed reading: the window starts here.
        var armed: ThreadProbe.SleepReading?
        var reported = false
        /// For the diagnosis of a violation: what woke the thread while it was parked, if anything.
        var evidence: Evidence?
        /// Follow mode: the CPU time growth and window length of the last check while still parked.
        var soFar: (growth: Int64, elapsed: Int64)?
    }

    /// Context switches and SIGP deliveries of a parked thread at the start of its window.
    struct Evidence {
        let switches: (voluntary: Int, involuntary: Int)?
        let delivery: DeliveryStatistics?
        let syscall: String?

        init(_ machine: Machine, cpu: Int, tid: Int32) {
            switches = ProcFS.contextSwitches(tid)
            delivery = try? machine.deliveryStatistics(of: cpu)
            syscall = ProcFS.blockedSyscall(tid)
        }

        /// What changed since, in words.
        func changes(_ now: Evidence) -> String {
            var parts: [String] = []
            if let before = switches, let after = now.switches {
                parts.append("context switches +\(after.voluntary - before.voluntary) voluntary, "
                             + "+\(after.involuntary - before.involuntary) involuntary")
            }
            if let before = delivery, let after = now.delivery {
                parts.append("signals sent +\(after.signalsSent - before.signalsSent), received "
                             + "+\(after.signalsReceived - before.signalsReceived), futex wakes "
                             + "+\(after.futexWakes - before.futexWakes), resends +\(after.resends - before.resends)")
            }
            parts.append("blocked in [\(syscall ?? "?")] when the window began, [\(now.syscall ?? "?")] at its end")
            return parts.joined(separator: "; ")
        }
    }

    // MARK: One operation

    private func step(_ local: inout Local) {
        let cpu = Int.random(in: 0..<machine.possibleCount, using: &local.rng)
        let online = machine.online
        let attach = !online.contains(cpu)
        if !attach && online.count == 1 { return }   // the last online CPU stays
        let expected = injection(cpu: cpu, attach: attach, &local)
        if attach { finishWatch(cpu, &local) }   // measured before the thread is woken
        let side = attach ? stats.attach : stats.detach
        side.attempts.add()
        let mark = misuse?.stopMark(cpu)
        let started = monotonicNanoseconds()
        let outcome = Result { () throws(HotplugError) in
            if attach { try machine.online(cpu) } else { try machine.offline(cpu) }
        }
        let latency = monotonicNanoseconds() - started
        local.operations += 1
        let what = "\(attach ? "attach" : "detach") of CPU \(cpu)"
        switch outcome {
        case .success:
            side.successes.add()
            side.latencies.withLock { $0.append(latency) }
            moved(cpu, attach: attach, expected: expected, what: what, &local)
        case .failure(let error):
            notMoved(cpu, attach: attach, error, expected: expected, mark: mark, side: side, what: what, &local)
        }
        checkWhere(cpu, online: attach == outcome.isSuccess)
    }

    /// The failure this operation must meet: one left armed by an earlier operation that did not reach it, or,
    /// with probability `--fail-rate`, one injected now at a random point of the operation's direction.
    func injection(cpu: Int, attach: Bool, _ local: inout Local) -> InjectionPoint? {
        if let left = local.pending.removeValue(forKey: cpu * 2 + (attach ? 1 : 0)) { return left }
        guard local.rng.chance(failRate),
              let point = (attach ? attachPoints : detachPoints).randomElement(using: &local.rng) else { return nil }
        let direction: HotplugDirection = attach ? .startup : .teardown
        do {
            try machine.hotplug.injectFailure(cpu: cpu, at: point.state, direction: direction)
        } catch {
            checks.fail(.rollback, "injectFailure(cpu: \(cpu), at: \(point.name), \(direction)) threw \(error)")
            return nil
        }
        stats.injected.add()
        stats.injectedAt.withLock { $0["\(point.name) \(direction)", default: 0] += 1 }
        return point
    }

    /// A CPU an operation (single or bulk) moved: it had no failure to meet; an attached CPU is pinned, a detached
    /// one is watched.
    func moved(_ cpu: Int, attach: Bool, expected: InjectionPoint?, what: String, _ local: inout Local) {
        stats.lastProgress.store(monotonicNanoseconds(), ordering: .relaxed)
        checks.check(.rollback, expected == nil,
                     "\(what) succeeded although a failure was injected at \(expected?.name ?? "")")
        if attach {
            if local.everDetached.contains(cpu) { stats.cycles.add() }
            checkPinning(cpu)
        } else {
            stats.detachesPerCPU[cpu].add()
            local.everDetached.insert(cpu)
            startWatch(cpu, after: "its detach", &local)
        }
    }

    /// A CPU an operation (single or bulk) did not move: it must be the injected failure, rolled back, at the
    /// injected state; or, with `--misuse`, a detach refused because a STOP storm held the CPU (`mark`, taken before
    /// the operation, tells whether one may have).
    func notMoved(_ cpu: Int, attach: Bool, _ error: HotplugError, expected: InjectionPoint?,
                  mark: (held: Bool, sent: Int)?, side: OnOffStats.Direction, what: String, _ local: inout Local) {
        let key = cpu * 2 + (attach ? 1 : 0)
        switch error {
        case .stoppedByOrder(cpu) where !attach && mark.map({ misuse?.wasStopped(cpu, since: $0) == true }) == true:
            // --misuse: a STOP storm held the CPU; the detach was refused before it began (a failure injected
            // for it is still armed, and the next detach of the CPU meets it).
            side.refusedStopped.add()
            stats.lastProgress.store(monotonicNanoseconds(), ordering: .relaxed)
            if let expected { local.pending[key] = expected }
        case .callbackFailed(let failure):
            let injected = failure.underlying is InjectedFailure
            if let expected, injected, failure.state == expected.state, failure.rolledBack, failure.cpu == cpu {
                side.rollbacks.add()
                stats.lastProgress.store(monotonicNanoseconds(), ordering: .relaxed)
            } else {
                checks.fail(.rollback, "\(what) failed: \(failure) (injected: \(expected?.name ?? "nothing"))")
            }
        case .timeout:
            side.timeouts.add()
            if let expected { local.pending[key] = expected }
            checks.fail(.progress, "\(what): \(error)")
        default:
            checks.fail(.rollback, "\(what) threw \(error)")
        }
        if attach { startWatch(cpu, after: "a failed attach (\(error))", &local) }   // it may have run meanwhile
    }

    /// After an operation: the CPU is where it should be, in its state and in the masks.
    func checkWhere(_ cpu: Int, online: Bool) {
        let state = try? machine.state(of: cpu)
        let hotplugState = try? machine.hotplug.currentState(of: cpu)
        let masks = machine.online, active = machine.active
        checks.check(.rollback, state == (online ? .online : .parked) && masks.contains(cpu) == online,
                     "logical CPU \(cpu) should be \(online ? "online" : "parked"): state "
                     + "\(state.map { "\($0)" } ?? "?"), online mask \(masks)")
        checks.check(.rollback, hotplugState == (online ? .online : .offline),
                     "logical CPU \(cpu) should be at hotplug state \(online ? "online" : "offline"), is at "
                     + "\(hotplugState.map { "\($0)" } ?? "?")")
        checks.check(.rollback, active == masks, "between operations active \(active) != online \(masks)")
    }

    // MARK: Between operations

    private func betweenOperations(_ local: inout Local) {
        let online = machine.online
        for cpu in 0..<machine.possibleCount where local.operations % 16 == 0 || !online.contains(cpu) {
            states.checkBalance(machine, cpu: cpu, checks: checks)
        }
        slab.checkOfflineCaches(online: online)
        if local.operations % 16 == 0 {
            for cpu in 0..<machine.possibleCount { checkPinning(cpu) }
        }
        pollWatches(&local)
        let now = monotonicNanoseconds()
        if now - local.lastQuiescent >= OnOffDriver.quiescentInterval {
            local.lastQuiescent = now
            quiescentSlabCheck(online: online)
        }
    }

    private func quiescentSlabCheck(online: CPUSet) {
        guard slab.pause(timeoutMilliseconds: 2_000) else {
            checks.fail(.progress, "the slab churn did not pause within 2 s")
            return
        }
        slab.quiescentCheck(online: online)
        slab.resume()
    }

    private func pause(_ local: inout Local) {
        guard intervalMicroseconds > 0 else { return }
        let jittered = intervalMicroseconds * Double.random(in: 0.5...1.5, using: &local.rng)
        usleep(UInt32(min(jittered, 1e9)))
    }

    // MARK: Pinning

    /// A present CPU's thread is allowed on exactly its physical CPU (online or parked: it is pinned for life).
    func checkPinning(_ cpu: Int) {
        guard (try? machine.threadID(of: cpu)) != nil else { return }
        stats.pinningChecks.add()
        let problem = ThreadProbe.pinningProblem(machine, cpu: cpu)
        checks.check(.pinning, problem == nil, problem ?? "")
    }

    // MARK: Parked CPU time

    func startWatch(_ cpu: Int, after cause: String, _ local: inout Local) {
        guard let tid = (try? machine.threadID(of: cpu)) ?? nil else {
            checks.fail(.parkedCPUTime, "parked logical CPU \(cpu) has no thread")
            return
        }
        local.watches[cpu] = ParkedWatch(tid: tid, detachedAt: monotonicNanoseconds(), cause: cause)
        arm(cpu, &local)   // a first reading; the next look (an iteration later) confirms it
    }

    /// Starts the measurement once the thread is asleep in the kernel and stays so for
    /// ``ThreadProbe/settleNanoseconds``: state S shows before the thread is off its CPU, and the CPU time it used
    /// since the last tick reaches schedstat only when it is (see ``ThreadProbe/isBlocked(_:)``).
    @discardableResult
    func arm(_ cpu: Int, _ local: inout Local) -> Bool {
        guard var watch = local.watches[cpu] else { return false }
        if watch.armed != nil { return true }
        defer { local.watches[cpu] = watch }
        guard let reading = ThreadProbe.sleepReading(watch.tid) else {
            watch.candidate = nil
            return false
        }
        guard let candidate = watch.candidate else {
            watch.candidate = reading
            return false
        }
        guard reading.wall - candidate.wall >= ThreadProbe.settleNanoseconds else { return false }
        guard ThreadProbe.isSettled(candidate, reading) else {
            watch.candidate = reading
            return false
        }
        watch.armed = candidate
        watch.evidence = Evidence(machine, cpu: cpu, tid: watch.tid)
        return true
    }

    func pollWatches(_ local: inout Local) {
        let now = monotonicNanoseconds()
        for cpu in local.watches.keys.sorted() where !arm(cpu, &local) {
            guard var watch = local.watches[cpu], !watch.reported, now - watch.detachedAt > OnOffDriver.blockDeadline
            else { continue }
            watch.reported = true
            local.watches[cpu] = watch
            checks.fail(.parkedCPUTime, "parked logical CPU \(cpu) (tid \(watch.tid)) did not stay asleep in the "
                        + "kernel for 1 ms within \((now - watch.detachedAt) / 1_000_000) ms after \(watch.cause) (state "
                        + "\(ProcFS.threadState(watch.tid).map(String.init) ?? "?"))")
        }
    }

    /// Ends a parked window (before the CPU is attached again): the thread's CPU time may have grown by at most
    /// 0.1% of the window, plus the source's resolution and ``parkedSlack``.
    func finishWatch(_ cpu: Int, _ local: inout Local) {
        arm(cpu, &local)
        guard let watch = local.watches.removeValue(forKey: cpu) else { return }
        guard let armed = watch.armed, let time = ProcFS.threadCPUTimeWithResolution(watch.tid) else {
            stats.parkedUnmeasured.add()
            return
        }
        let growth = time.nanoseconds - armed.cpuTime
        let elapsed = monotonicNanoseconds() - armed.wall
        stats.parkedWindows.add()
        stats.parkedGrowth.add(Int(growth))
        if Int(growth) > stats.parkedMaxGrowth.load { stats.parkedMaxGrowth.value.store(Int(growth), ordering: .relaxed) }
        checks.check(.parkedCPUTime,
                     ThreadProbe.isIdle(growth: growth, elapsed: elapsed, slack: armed.resolution + OnOffDriver.parkedSlack),
                     "parked logical CPU \(cpu) (tid \(watch.tid)) used \(growth / 1_000) us of CPU time in "
                     + "\(elapsed / 1_000_000) ms while parked after \(watch.cause), window from "
                     + "\((armed.wall - watch.detachedAt) / 1_000) us after it"
                     + (watch.evidence.map { " (\($0.changes(Evidence(machine, cpu: cpu, tid: watch.tid))))" } ?? ""))
    }

    /// Follow mode: the window of a CPU that stays parked, checked so far (the follower attaches it on its own
    /// schedule, so the window cannot be closed just before the attach).
    func checkWatchSoFar(_ cpu: Int, _ local: inout Local) {
        guard var watch = local.watches[cpu], let armed = watch.armed,
              let time = ProcFS.threadCPUTimeWithResolution(watch.tid) else { return }
        let growth = time.nanoseconds - armed.cpuTime, elapsed = monotonicNanoseconds() - armed.wall
        watch.soFar = (growth, elapsed)
        local.watches[cpu] = watch
        checks.check(.parkedCPUTime,
                     ThreadProbe.isIdle(growth: growth, elapsed: elapsed, slack: armed.resolution + OnOffDriver.parkedSlack),
                     "parked logical CPU \(cpu) (tid \(watch.tid)) used \(growth / 1_000) us of CPU time in "
                     + "\(elapsed / 1_000_000) ms while parked after \(watch.cause)")
    }

    /// Follow mode: the CPU is online again; its window counts with what its last check while parked measured.
    func closeWatchSoFar(_ cpu: Int, _ local: inout Local) {
        guard let watch = local.watches.removeValue(forKey: cpu) else { return }
        guard let soFar = watch.soFar else {
            stats.parkedUnmeasured.add()
            return
        }
        stats.parkedWindows.add()
        stats.parkedGrowth.add(Int(soFar.growth))
        if Int(soFar.growth) > stats.parkedMaxGrowth.load {
            stats.parkedMaxGrowth.value.store(Int(soFar.growth), ordering: .relaxed)
        }
    }

    // MARK: The end

    /// Measures every parked window, brings every CPU back online (so that what was posted to parked CPUs is
    /// delivered, and the end state is the start state), and checks everything once more.
    private func finish(_ local: inout Local) {
        for cpu in local.watches.keys.sorted() { finishWatch(cpu, &local) }
        for cpu in 0..<machine.possibleCount where !machine.online.contains(cpu) && !local.leftParked.contains(cpu) {
            var lastError: HotplugError?
            for _ in 0..<3 {   // an injection left armed by a timed-out operation may fail the first attempt
                do {
                    try machine.online(cpu)
                    lastError = nil
                    break
                } catch {
                    lastError = error
                }
            }
            if let lastError { checks.fail(.progress, "the final attach of CPU \(cpu) failed: \(lastError)") }
        }
        meetArmedDetachFailures(&local)
        for cpu in 0..<machine.possibleCount {
            states.checkBalance(machine, cpu: cpu, checks: checks)
            if let follow { checkPinning(follow, cpu) } else { checkPinning(cpu) }
        }
        leftParkedAtEnd.withLock { $0 = local.leftParked }
        slab.checkOfflineCaches(online: machine.online)
    }
}

extension OnOffDriver {
    /// Failures left armed for a detach (by a bulk detach refused whole, or a detach refused while a STOP storm held
    /// the CPU) must still fire, at their state, on the CPU's next detach: each CPU with one is detached once more
    /// (every CPU is online now, so none is the last), which must fail and roll the CPU forward to online.
    func meetArmedDetachFailures(_ local: inout Local) {
        for key in local.pending.keys.sorted() where key % 2 == 0 {
            let cpu = key / 2
            guard let point = local.pending.removeValue(forKey: key), machine.online.contains(cpu) else { continue }
            stats.detach.attempts.add()
            let what = "the final detach of CPU \(cpu) (a failure left armed at \(point.name))"
            switch Result(catching: { () throws(HotplugError) in try machine.offline(cpu) }) {
            case .success:
                checks.fail(.rollback, "\(what) succeeded")
                _ = try? machine.online(cpu)
            case .failure(let error):
                notMoved(cpu, attach: false, error, expected: point, mark: nil, side: stats.detach, what: what, &local)
            }
            checkWhere(cpu, online: true)
        }
    }
}

extension Result {
    var isSuccess: Bool { if case .success = self { true } else { false } }
}
