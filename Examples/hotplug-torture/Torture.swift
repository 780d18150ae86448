import ExampleSupport
import Hotplug
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What a run is asked to do (the command's options, validated).
struct Settings: Sendable {
    var cpus: Int
    var seconds: Double
    var seed: UInt64
    var onoffIntervalMilliseconds: Double
    var failRate: Double
    var workers: Int
    var json: Bool
    var dropOneTaskletRun: Bool
    var sigpToSelf: Bool
    /// `--follow`: the deadline of each follower operation, in milliseconds; nil without `--follow`.
    var followDeadlineMilliseconds: Double?
    /// `--follow-realtime`: SCHED_FIFO priority of the follower's thread.
    var followPriority: Int32?
    /// `--misuse`: wrong calls at random, STOP storms, and the shutdown with a busy CPU at the end (Misuse.swift).
    var misuse: Bool
    /// `--executors`: tasks and actors on the CPUs' executors and the pool (ExecutorWorkload.swift).
    var executors = true
    /// `--debug-drop-job`: one continuation is never resumed, so the executor jobs invariant must break.
    var dropOneJob = false
}

/// One torture run: the machine, the workload on it, the on/off thread, and the final checks.
final class Torture {
    let settings: Settings
    let machine: Machine
    let checks: Checks
    let slab: SlabChurn
    let storm: TaskletStorm
    let sigp: SIGPLoad
    let states: TortureStates
    let onoff: OnOffDriver
    let workload: Workload
    /// `--misuse` only.
    let misuse: MisuseLoad?
    /// Unless `--executors off`.
    let executorLoad: ExecutorLoad?
    let topology: Topology
    let status: StatusLine
    let started: Int64

    /// Tasklets per logical CPU (at least 32 in all).
    static let taskletsPerCPU = 8
    /// Bounds of the final phase.
    static let drainMilliseconds: Int64 = 30_000
    static let settleMilliseconds: Int64 = 5_000
    static let executorDrainMilliseconds: Int64 = 20_000
    /// No attach or detach completing for this long is a livelock.
    static let progressDeadline: Int64 = 20_000_000_000

    init(settings: Settings, topology: Topology, logger: Logger, status: StatusLine) throws(HotplugError) {
        self.settings = settings
        self.status = status
        started = monotonicNanoseconds()
        let checks = Checks(started: started)
        let sigp = SIGPLoad(cpus: settings.cpus, checks: checks, stopsPending: settings.misuse)
        let configuration = Machine.Configuration(interruptHandler: { cpu, interruption in
            sigp.handle(cpu: cpu, interruption)
        })
        machine = try Machine(topology: topology, cpus: settings.cpus, configuration: configuration, logger: logger)
        slab = try SlabChurn(machine: machine, checks: checks)
        storm = TaskletStorm(machine: machine, count: max(32, Torture.taskletsPerCPU * settings.cpus),
                             seed: settings.seed, checks: checks, slab: slab, dropOneRun: settings.dropOneTaskletRun)
        let misuse = settings.misuse ? MisuseLoad(machine: machine, checks: checks, seed: settings.seed) : nil
        self.misuse = misuse
        self.topology = topology
        states = try TortureStates(machine: machine, slab: slab, checks: checks, misuse: misuse)
        executorLoad = settings.executors
            ? try ExecutorLoad(machine: machine, checks: checks, seed: settings.seed, dropOneJob: settings.dropOneJob)
            : nil
        onoff = OnOffDriver(machine: machine, checks: checks, slab: slab, states: states, misuse: misuse,
                            seed: settings.seed,
                            intervalMilliseconds: settings.onoffIntervalMilliseconds, failRate: settings.failRate,
                            followDeadlineMilliseconds: settings.followDeadlineMilliseconds,
                            followPriority: settings.followPriority,
                            output: settings.json ? reportToStandardError : report)
        workload = Workload(machine: machine, checks: checks, storm: storm, slab: slab, sigp: sigp,
                            detachesPerCPU: onoff.stats.detachesPerCPU, seed: settings.seed,
                            sigpToSelf: settings.sigpToSelf, follow: settings.followDeadlineMilliseconds != nil)
        self.checks = checks
        self.sigp = sigp
    }

    var elapsedSeconds: Double { Double(monotonicNanoseconds() - started) / 1e9 }

    /// Runs the workload for `--seconds` (or until an invariant breaks), then the final phase; returns the report.
    func run() throws(OSThread.SpawnError) -> Outcome {
        let onoffThread = try OSThread { [onoff] in onoff.run() }
        var workers: [OSThread] = []
        for index in 0..<settings.workers {
            workers.append(try OSThread { [workload] in workload.run(worker: index) })
        }
        executorLoad?.start()
        var misuseThreads: [OSThread] = []
        if let misuse {
            misuse.callbacksMisbehave.store(true, ordering: .relaxed)
            misuseThreads.append(try OSThread { misuse.run() })
            misuseThreads.append(try OSThread { misuse.probe() })
        }
        watch(until: started + Int64(settings.seconds * 1e9))
        let runSeconds = elapsedSeconds

        // The end, in an order where each step finds the previous one finished: no new work, every CPU online,
        // every tasklet run, every interruption delivered, every object freed.
        workload.stop.store(true, ordering: .relaxed)
        executorLoad?.stop.store(true, ordering: .relaxed)
        for worker in workers { worker.join() }
        misuse?.stop.store(true, ordering: .relaxed)
        for thread in misuseThreads { thread.join() }
        // While CPUs still come and go: a job stranded by a detach must not be rescued by the final attaches.
        let executorTally = executorLoad?.finish(timeoutMilliseconds: Torture.executorDrainMilliseconds)
        misuse?.callbacksMisbehave.store(false, ordering: .relaxed)
        onoff.stop.store(true, ordering: .relaxed)
        onoffThread.join()
        let drained = storm.drain(timeoutMilliseconds: Torture.drainMilliseconds)
        let tasklets = storm.tally(drained: drained)
        // Interruptions accepted by a CPU left parked (follow mode: its physical CPU is gone) wait for its attach.
        sigp.settle(cpus: settings.cpus, except: onoff.leftParkedAtEnd.withLock { $0 },
                    timeoutMilliseconds: Torture.settleMilliseconds)
        var slabTally = slab.finish(machine: machine)
        machine.shutdown()
        slabTally = slab.finishAfterShutdown(slabTally)
        if misuse != nil { MisuseLoad.shutdownWithBusyCPU(topology: topology, checks: checks) }
        status.finish()
        return Outcome(torture: self, runSeconds: runSeconds, finalSeconds: elapsedSeconds - runSeconds,
                       tasklets: tasklets, slab: slabTally, executors: executorTally)
    }

    /// The main thread while the run goes on: the status line, the deadline, the livelock check.
    private func watch(until deadline: Int64) {
        var rate = RateMeter(total: operationCount)
        var lastCount = operationCount, lastGrowth = monotonicNanoseconds()
        while monotonicNanoseconds() < deadline && !checks.failed.load(ordering: .relaxed) {
            usleep(50_000)
            let now = monotonicNanoseconds()
            executorLoad?.watchdog(now: now)
            if settings.followDeadlineMilliseconds == nil {
                checks.check(.progress, now - onoff.stats.lastProgress.load(ordering: .relaxed) <= Torture.progressDeadline,
                             "no attach or detach completed in \(Torture.progressDeadline / 1_000_000_000) s")
            } else {
                // Follow mode: attaches and detaches come from outside, when they come; the workload must go on.
                let count = operationCount
                if count != lastCount { (lastCount, lastGrowth) = (count, now) }
                checks.check(.progress, now - lastGrowth <= Torture.progressDeadline,
                             "the workload did nothing for \(Torture.progressDeadline / 1_000_000_000) s")
            }
            if status.isDue(now) {
                status.show(statusText(opsPerSecond: rate.perSecond(total: operationCount, now: now)), now: now)
            }
        }
    }

    /// Everything the run did, for the ops/s figure.
    var operationCount: Int {
        storm.ledgers.reduce(0) { $0 + $1.executed.load(ordering: .relaxed) } + slab.allocated.load + slab.freed.load
            + workload.crossCalls.load + workload.runOnEachCalls.load + workload.stopMachines.load + sigp.total
            + onoff.stats.operations + (executorLoad?.actions.load ?? 0)
    }

    private func statusText(opsPerSecond: Double) -> String {
        let stats = onoff.stats
        let attach = stats.attach.latencies.withLock { Percentiles($0) }
        let detach = stats.detach.latencies.withLock { Percentiles($0) }
        return "[\(fixed(elapsedSeconds, 1)) s] \(Int(opsPerSecond)) ops/s, online \(machine.online), "
            + "attaches \(stats.attach.successes.load), detaches \(stats.detach.successes.load), bulk "
            + "\(stats.bulkAttach.calls.load + stats.bulkDetach.calls.load) (\(stats.bulkAttach.cpus.successes.load) / "
            + "\(stats.bulkDetach.cpus.successes.load) CPUs), "
            + "rollbacks \(stats.rollbacks), p50 attach \(attach.microseconds(0.5)) us / detach "
            + "\(detach.microseconds(0.5)) us"
            + (checks.totalViolations > 0 ? ", VIOLATIONS \(checks.totalViolations)" : "")
    }
}

/// Operations per second over the last status interval.
struct RateMeter {
    private var lastTotal: Int
    private var lastTime = monotonicNanoseconds()

    init(total: Int) { lastTotal = total }

    mutating func perSecond(total: Int, now: Int64) -> Double {
        defer { lastTotal = total; lastTime = now }
        let elapsed = Double(now - lastTime) / 1e9
        return elapsed > 0 ? Double(total - lastTotal) / elapsed : 0
    }
}
