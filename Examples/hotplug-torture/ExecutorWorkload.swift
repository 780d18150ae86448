import ExampleSupport
import Hotplug
import Synchronization

/// The executor workload (on unless `--executors off`): Swift tasks and actors on the machine's executors while the
/// on/off thread attaches and detaches CPUs (docs/ARCHITECTURE.md, "Swift executors").
///
/// What runs:
/// - two actors pinned to each logical CPU's ``CPUExecutor`` (so that two actors share every executor, and call each
///   other inline or across CPUs);
/// - driver tasks (two per logical CPU, at most ``maximumDrivers``), each drawing actions from its own seeded stream:
///   calls into the pinned actors (also actor to actor, with `Task.yield()` storms inside the actor), hops of the
///   task itself onto a CPU's executor, onto the pool and back (`withTaskExecutorPreference`), task groups whose
///   children prefer random executors, unstructured tasks and continuations resumed from a CPU's executor, and async
///   cross-calls (`machine.run(on:) async`). A driver starts on a CPU's executor, on the pool or on the global
///   executor, and comes back there between its hops.
///
/// Every action issues units of work with an id (`WorkUnit`); the job that runs a unit counts its runs. The
/// invariants, checked in every job and at the end:
/// - `executorJobs`: every unit ran exactly once and the task awaiting it resumed: a unit that runs twice fails at
///   once; a driver whose unit has not completed within ``stuckNanoseconds`` fails during the run, and at the end,
///   after a bounded wait for every driver, issued == completed + refused (a refused async cross-call never ran).
/// - `executorSerial`: no serial executor ran two jobs at once: every stretch of a job of CPU n's executor (an actor
///   method between two suspension points, or a preferring task's code) raises that executor's in-flight count on
///   entry and lowers it on exit; it must be 1 after the raise and 0 after the lowering, and the executor must say
///   that the calling thread is isolated to it (`isIsolatingCurrentContext`).
/// - `executorPlacement`: every job ran on a logical CPU that was online; a job of CPU n's executor ran on CPU n
///   while n was online, on a stand-in (another online CPU) while it was not; a pool job ran on some online CPU.
///   "Online" is exact inside a job: the online mask changes only inside stop_machine, which waits until every
///   online CPU has finished its job (a job is never preempted), so the mask read inside a job holds for the whole
///   job. It is read from ``OnlineMirror`` (two relaxed loads, not the machine's lock), checked against
///   `machine.online` now and then.
///
/// `--debug-drop-job` resumes one continuation never (a lost wake-up, as a runtime that drops a job would cause):
/// the `executorJobs` check must report the driver that waits for it.
final class ExecutorLoad: Sendable {
    let machine: Machine
    let checks: Checks
    let executors: [CPUExecutor]
    let shards: [PinnedShard]
    let drivers: [DriverState]
    let mirror: OnlineMirror
    let stop = Atomic<Bool>(false)
    private let watches: [ExecutorWatch]
    private let seed: UInt64
    private let started: Int64
    /// `--debug-drop-job`: the next continuation unit is never resumed.
    private let dropOneJob: Atomic<Bool>
    private let nextID = Counter()
    private let lastWatchdog = Atomic<Int64>(0)

    // What the workload did (figures of the report).
    let serialJobs = Counter()
    let poolJobs = Counter()
    let issued = Counter()
    let completed = Counter()
    let refused = Counter()
    let tasks = Counter()
    let yields = Counter()
    let hops = Counter()
    let standInJobs = Counter()
    let rehomes = Counter()
    let actorCalls = Counter()
    let asyncCrossCalls = Counter()
    let actions = Counter()
    /// Units issued to the executor of a CPU that was offline then (read outside a job: an estimate).
    let toOfflineExecutor = Counter()
    let maximumWait = Atomic<Int64>(0)
    /// The longest wait for a unit and what the unit was.
    let longestWait = Mutex<(nanoseconds: Int64, what: String)>((0, ""))

    static let actorsPerCPU = 2
    static let driversPerCPU = 2
    static let maximumDrivers = 256
    /// A unit not completed this long after it was issued is lost (during the run). As long as the torture's
    /// livelock bound: a machine stalled by its host (a hotplug operation of 2 s has been seen on a loaded 2-core
    /// machine, and no job runs while it holds every CPU) must not pass for a lost job.
    static let stuckNanoseconds: Int64 = Torture.progressDeadline
    /// A unit queued on the executor of a CPU that stays offline must run on a stand-in within this (the same
    /// bound; the check only names the cause when it is that).
    static let strandedNanoseconds: Int64 = stuckNanoseconds
    /// How often a driver sleeps between two actions (so that the rest of the torture keeps its share of the CPUs).
    static let sleepProbability = 0.2
    /// Yields of one storm, at most.
    static let maximumYields = 24

    init(machine: Machine, checks: Checks, seed: UInt64, dropOneJob: Bool) throws(HotplugError) {
        self.machine = machine
        self.checks = checks
        self.seed = seed
        self.dropOneJob = Atomic(dropOneJob)
        started = monotonicNanoseconds()
        let cpus = machine.possibleCount
        mirror = try OnlineMirror(machine: machine)
        executors = machine.executors
        watches = (0..<cpus).map { _ in ExecutorWatch() }
        drivers = (0..<min(ExecutorLoad.maximumDrivers, max(4, ExecutorLoad.driversPerCPU * cpus))).map { _ in DriverState() }
        let link = ExecutorLoadLink()
        shards = (0..<(cpus * ExecutorLoad.actorsPerCPU)).map { index in
            PinnedShard(executor: machine.executors[index % cpus], index: index, link: link)
        }
        link.load = self
    }

    // MARK: Start and end

    /// Starts the driver tasks: a third on a CPU's executor, a third on the pool, a third on the global executor.
    func start() {
        for index in drivers.indices {
            let preference: (any TaskExecutor)? = switch index % 3 {
            case 0: executors[(index / 3) % executors.count]
            case 1: machine.pool
            default: nil
            }
            tasks.add()
            Task(executorPreference: preference) { [self] in
                await drive(index, home: preference == nil ? .global
                                         : preference is PoolExecutor ? .pool : .cpu((index / 3) % executors.count))
            }
        }
    }

    /// Called by the main thread while the run goes on: a unit that has waited too long is lost.
    func watchdog(now: Int64) {
        guard now - lastWatchdog.load(ordering: .relaxed) >= 500_000_000 else { return }
        lastWatchdog.store(now, ordering: .relaxed)
        for (index, driver) in drivers.enumerated() {
            let waiting = driver.outstanding.withLock { $0 }
            for unit in waiting where isStranded(unit, now: now) && !driver.reported.exchange(true, ordering: .relaxed) {
                checks.fail(.executorPlacement, "logical CPU \(unit.target) has stayed offline for "
                            + "\(fixed(Double(now - unit.issuedAt) / 1e9, 1)) s and no stand-in ran its executor's job: "
                            + "driver task \(index) waits for \(describe(unit, now: now))")
            }
            guard let oldest = waiting.min(by: { $0.issuedAt < $1.issuedAt }),
                  now - oldest.issuedAt > ExecutorLoad.stuckNanoseconds,
                  !driver.reported.exchange(true, ordering: .relaxed) else { continue }
            checks.fail(.executorJobs, "driver task \(index) waits for \(describe(oldest, now: now))")
        }
    }

    /// After `stop`: waits (bounded) until every driver has finished its last action; then the final tally.
    func finish(timeoutMilliseconds: Int64) -> ExecutorTally {
        stop.store(true, ordering: .relaxed)
        let done = waitUntil(timeoutMilliseconds) { drivers.allSatisfy { $0.finished.load(ordering: .acquiring) } }
        let now = monotonicNanoseconds()
        var stuck = 0
        for (index, driver) in drivers.enumerated() where !driver.finished.load(ordering: .acquiring) {
            stuck += 1
            let waiting = driver.outstanding.withLock { $0 }
            guard !driver.reported.exchange(true, ordering: .relaxed) else { continue }
            checks.fail(.executorJobs, "driver task \(index) did not finish within \(timeoutMilliseconds) ms of the end: "
                        + (waiting.isEmpty ? "it waits for no unit of this run (a sleep or a hop never resumed)"
                           : "it waits for " + waiting.prefix(3).map { describe($0, now: now) }.joined(separator: "; ")))
        }
        var tally = ExecutorTally(load: self)
        tally.stuckDrivers = stuck
        // Units went to offline CPUs' executors all run long: some of their jobs must have run on a stand-in.
        checks.check(.executorPlacement, tally.toOfflineExecutor < 100 || tally.standInJobs > 0,
                     "\(tally.toOfflineExecutor) units were issued to the executors of offline CPUs, and no job ran on a "
                     + "stand-in")
        if done {
            checks.check(.executorJobs, tally.issued == tally.completed + tally.refused,
                         "\(tally.issued) units issued, \(tally.completed) completed, \(tally.refused) refused: "
                         + "\(tally.issued - tally.completed - tally.refused) missing")
        }
        return tally
    }

    /// A unit issued to the executor of an offline CPU that has not run, while the CPU has stayed offline since
    /// (its generation has not changed), for longer than ``strandedNanoseconds``: no stand-in hosts the executor.
    private func isStranded(_ unit: WorkUnit, now: Int64) -> Bool {
        unit.generation >= 0 && unit.generation & 1 == 0 && unit.kind != .crossCall
            && mirror.generation(unit.target) == unit.generation && unit.runs.load(ordering: .relaxed) == 0
            && now - unit.issuedAt > ExecutorLoad.strandedNanoseconds
    }

    private func describe(_ unit: WorkUnit, now: Int64) -> String {
        let runs = unit.runs.load(ordering: .relaxed)
        return "unit \(unit.id) (\(unit.kind.text(unit.target))), issued \(fixed(Double(unit.issuedAt - started) / 1e9, 2)) s "
            + "into the run and \(fixed(Double(now - unit.issuedAt) / 1e9, 1)) s ago: "
            + (runs == 0 ? "its job never ran" : "its job ran \(runs) time(s), the task awaiting it never resumed")
    }

    // MARK: Units

    func issue(_ kind: UnitKind, target: Int, by driver: DriverState) -> WorkUnit {
        let generation = target >= 0 ? mirror.generation(target) : -1
        let unit = WorkUnit(id: nextID.add(), kind: kind, target: target, issuedAt: monotonicNanoseconds(),
                            generation: generation)
        issued.add()
        if kind != .crossCall && generation >= 0 && generation & 1 == 0 { toOfflineExecutor.add() }
        driver.outstanding.withLock { $0.append(unit) }
        return unit
    }

    /// The job that runs `unit` counts the run; a second run fails at once.
    func ran(_ unit: WorkUnit) {
        // Relaxed: the run's count is read by the task that awaits the unit, after the resume that follows this
        // job (the runtime's enqueue and the executor's dequeue order the two).
        let runs = unit.runs.add(1, ordering: .relaxed).newValue
        checks.check(.executorJobs, runs == 1, "unit \(unit.id) (\(unit.kind.text(unit.target))) ran \(runs) times")
    }

    /// The awaiting task has resumed: the unit must have run exactly once.
    func complete(_ unit: WorkUnit, by driver: DriverState) {
        let runs = unit.runs.load(ordering: .relaxed)
        checks.check(.executorJobs, runs == 1,
                     "the task awaiting unit \(unit.id) (\(unit.kind.text(unit.target))) resumed after \(runs) runs")
        completed.add()
        let wait = monotonicNanoseconds() - unit.issuedAt
        if wait > maximumWait.load(ordering: .relaxed) {   // rare after the first seconds: a lock is fine
            longestWait.withLock { longest in
                guard wait > longest.nanoseconds else { return }
                longest = (wait, unit.kind.text(unit.target))
                maximumWait.store(wait, ordering: .relaxed)
            }
        }
        driver.outstanding.withLock { list in list.removeAll { $0 === unit } }
    }

    /// A refused async cross-call: it must never run.
    func withdraw(_ unit: WorkUnit, by driver: DriverState, _ why: String) {
        refused.add()
        let runs = unit.runs.load(ordering: .relaxed)
        checks.check(.crossCalls, runs == 0, "an async run(on: \(unit.target)) refused with \(why) ran \(runs) times")
        driver.outstanding.withLock { list in list.removeAll { $0 === unit } }
    }

    // MARK: Checks inside a job

    /// One stretch of a job of logical CPU `cpu`'s executor that runs without suspending: the serial and placement
    /// checks around `body`. `trail` counts the moves of the task that runs it.
    @inline(__always)
    func onExecutor<T>(_ cpu: Int, _ trail: inout Trail, _ body: () -> T) -> T {
        let watch = watches[cpu]
        // Relaxed: read-modify-writes of one location are totally ordered; two jobs inside at once see 2 whatever
        // the order. The job hand-over of the executor (its host's queue) orders everything else.
        let entered = watch.inFlight.add(1, ordering: .relaxed).newValue
        checks.check(.executorSerial, entered == 1,
                     "logical CPU \(cpu)'s executor runs \(entered) jobs at once (on entry, on "
                     + "\(machine.currentCPU.map { "logical CPU \($0)" } ?? "no logical CPU"))")
        checks.check(.executorSerial, executors[cpu].isIsolatingCurrentContext() == true,
                     "a job of logical CPU \(cpu)'s executor runs where the executor says it is not isolated")
        let here = placeSerial(cpu, watch)
        trail.at(here, hops)
        checks.checkNoStopMachineBody("a job of logical CPU \(cpu)'s executor")
        let result = body()
        let work = spin(UInt64(truncatingIfNeeded: here))
        let left = watch.inFlight.subtract(1, ordering: .relaxed).newValue
        checks.check(.executorSerial, left == 0 && work != 0,
                     "logical CPU \(cpu)'s executor runs \(left + 1) jobs at once (on exit, on logical CPU \(here))")
        serialJobs.add()
        return result
    }

    /// One stretch of a pool job: it runs on some online CPU.
    @inline(__always)
    func onPool<T>(_ trail: inout Trail, _ body: () -> T) -> T {
        let here = machine.currentCPU
        checks.checkNoStopMachineBody("a pool job")
        if let here {
            checks.check(.executorPlacement, mirror.contains(here),
                         "a pool job ran on logical CPU \(here), which is not online")
            crossCheckMirror(here, nil)
            trail.at(here, hops)
        } else {
            checks.fail(.executorPlacement, "a pool job ran off the machine's logical CPUs")
        }
        poolJobs.add()
        return body()
    }

    /// Where a job of CPU `cpu`'s executor runs: an online CPU; `cpu` itself while it is online, else a stand-in.
    private func placeSerial(_ cpu: Int, _ watch: ExecutorWatch) -> Int {
        guard let here = machine.currentCPU else {
            checks.fail(.executorPlacement, "a job of logical CPU \(cpu)'s executor ran off the machine's logical CPUs")
            return -1
        }
        checks.check(.executorPlacement, mirror.contains(here),
                     "a job of logical CPU \(cpu)'s executor ran on logical CPU \(here), which is not online")
        if mirror.contains(cpu) {
            checks.check(.executorPlacement, here == cpu,
                         "a job of logical CPU \(cpu)'s executor ran on logical CPU \(here) while CPU \(cpu) is online")
        } else {
            standInJobs.add()
        }
        crossCheckMirror(here, cpu)
        // Relaxed: a statistic; the jobs of one executor run one at a time (checked above).
        let before = watch.lastHost.exchange(here, ordering: .relaxed)
        if before >= 0 && before != here { rehomes.add() }
        return here
    }

    /// Now and then, the mirror against the machine's own mask (exact too inside a job, but it takes a lock).
    private func crossCheckMirror(_ here: Int, _ home: Int?) {
        guard (serialJobs.load &+ poolJobs.load) % 512 == 0 else { return }
        let online = machine.online
        for cpu in [here] + (home.map { [$0] } ?? []) {
            checks.check(.executorPlacement, online.contains(cpu) == mirror.contains(cpu),
                         "inside a job, logical CPU \(cpu) is \(online.contains(cpu) ? "" : "not ")in the online mask "
                         + "but the run's STARTING state says \(mirror.contains(cpu) ? "online" : "offline")")
        }
    }

    /// A few hundred nanoseconds of work inside a job, so that two jobs of one executor running at once overlap.
    @inline(never)
    private func spin(_ value: UInt64) -> UInt64 {
        var x = value | 1
        for _ in 0..<48 { x = x &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407 }
        return x | 1
    }

    // MARK: The drivers

    enum Home { case cpu(Int), pool, global }

    /// One driver task's body.
    private func drive(_ index: Int, home: Home) async {
        var rng = SplitMix64(seed: seed, stream: 20_000 + UInt64(index))
        let driver = drivers[index]
        var trail = Trail()
        while !stop.load(ordering: .relaxed) {
            // Back where the driver runs between actions, and checked there (see `hop` for why the yield).
            await Task.yield()
            yields.add()
            switch home {
            case .cpu(let cpu): onExecutor(cpu, &trail) {}
            case .pool: onPool(&trail) {}
            case .global: break
            }
            await perform(ExecutorAction.random(using: &rng), driver, &rng, &trail)
            actions.add()
            // Leave the cores to the rest of the torture now and then (2 cores, oversubscribed).
            if rng.chance(ExecutorLoad.sleepProbability) {
                try? await Task.sleep(nanoseconds: UInt64.random(in: 50_000...500_000, using: &rng))
            }
        }
        // Release: partner of `finish`'s acquire (the driver's counts are final).
        driver.finished.store(true, ordering: .releasing)
    }

    private func randomShard(_ rng: inout SplitMix64) -> PinnedShard { shards[Int.random(in: 0..<shards.count, using: &rng)] }
    private func randomCPU(_ rng: inout SplitMix64) -> Int { Int.random(in: 0..<executors.count, using: &rng) }

    private func perform(_ action: ExecutorAction, _ driver: DriverState, _ rng: inout SplitMix64,
                         _ trail: inout Trail) async {
        switch action {
        case .actorCall:
            let shard = randomShard(&rng)
            let unit = issue(.actor, target: shard.cpu, by: driver)
            actorCalls.add()
            await shard.apply(unit)
            complete(unit, by: driver)
        case .actorRelay:
            let first = randomShard(&rng)
            var second = randomShard(&rng)
            if second === first { second = shards[(first.index + executors.count) % shards.count] }   // same CPU
            let unit = issue(.relay, target: second.cpu, by: driver)
            let yields = Int.random(in: 0...4, using: &rng)
            actorCalls.add(2)
            if rng.chance(0.5) {
                // Preferring the first actor's CPU: its yields stay on that CPU instead of going to the global executor.
                await withTaskExecutorPreference(first.executor) { await first.relay(unit, to: second, yields: yields) }
            } else {
                await first.relay(unit, to: second, yields: yields)
            }
            complete(unit, by: driver)
        case .actorYields:
            let shard = randomShard(&rng)
            let unit = issue(.actorYields, target: shard.cpu, by: driver)
            let count = Int.random(in: 1...ExecutorLoad.maximumYields, using: &rng)
            actorCalls.add()
            let preference: (any TaskExecutor)? = rng.chance(0.75) ? shard.executor : nil
            await withTaskExecutorPreference(preference) {
                await shard.yieldStorm(unit, count: count)
            }
            complete(unit, by: driver)
        case .cpuHop:
            let cpu = randomCPU(&rng)
            let unit = issue(.cpuHop, target: cpu, by: driver)
            let count = Int.random(in: 0...ExecutorLoad.maximumYields, using: &rng)
            await withTaskExecutorPreference(executors[cpu]) {
                await Task.yield()   // onto the executor before the first check (see `hop`)
                yields.add()
                onExecutor(cpu, &trail) { ran(unit) }
                for _ in 0..<count {
                    await Task.yield()
                    yields.add()
                    onExecutor(cpu, &trail) {}
                }
            }
            complete(unit, by: driver)
        case .poolHop:
            let unit = issue(.poolHop, target: -1, by: driver)
            let count = Int.random(in: 0...ExecutorLoad.maximumYields, using: &rng)
            await withTaskExecutorPreference(machine.pool) {
                await Task.yield()
                yields.add()
                onPool(&trail) { ran(unit) }
                for _ in 0..<count {
                    await Task.yield()
                    yields.add()
                    onPool(&trail) {}
                }
            }
            complete(unit, by: driver)
        case .hopChain:
            // The task itself moves: pool, a CPU, another CPU (maybe offline: its stand-in), the pool, the global
            // executor, and back to where it started.
            let unit = issue(.hopChain, target: -1, by: driver)
            let route = (0..<Int.random(in: 2...6, using: &rng)).map { _ in rng.chance(0.3) ? -1 : randomCPU(&rng) }
            for (step, cpu) in route.enumerated() {
                await hop(to: cpu, &trail) { if step == 0 { ran(unit) } }
            }
            complete(unit, by: driver)
        case .fanOut:
            let count = Int.random(in: 2...8, using: &rng)
            let plan = (0..<count).map { _ -> (cpu: Int, yields: Int) in
                (rng.chance(0.25) ? -1 : randomCPU(&rng), Int.random(in: 0...3, using: &rng))
            }
            let units = plan.map { issue(.child, target: $0.cpu, by: driver) }
            tasks.add(count)
            await withTaskGroup(of: Void.self) { group in
                for (unit, step) in zip(units, plan) {
                    let preference: any TaskExecutor = step.cpu < 0 ? machine.pool : executors[step.cpu]
                    group.addTask(executorPreference: preference) { [self] in
                        var trail = Trail()
                        for round in 0...step.yields {
                            if step.cpu < 0 { onPool(&trail) { if round == 0 { ran(unit) } } }
                            else { onExecutor(step.cpu, &trail) { if round == 0 { ran(unit) } } }
                            if round < step.yields {
                                await Task.yield()
                                yields.add()
                            }
                        }
                    }
                }
                await group.waitForAll()
            }
            for unit in units { complete(unit, by: driver) }
        case .unstructured:
            let cpu = randomCPU(&rng)
            let unit = issue(.unstructured, target: cpu, by: driver)
            let priority: TaskPriority = [.low, .medium, .high, .userInitiated, .utility].randomElement(using: &rng) ?? .medium
            tasks.add()
            let task = Task(executorPreference: executors[cpu], priority: priority) { [self] in
                var trail = Trail()
                onExecutor(cpu, &trail) { ran(unit) }
            }
            await task.value
            complete(unit, by: driver)
        case .continuation:
            let cpu = randomCPU(&rng)
            let unit = issue(.continuation, target: cpu, by: driver)
            tasks.add()
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                Task(executorPreference: executors[cpu]) { [self] in
                    var trail = Trail()
                    onExecutor(cpu, &trail) { ran(unit) }
                    // Relaxed: one flag, taken once.
                    if dropOneJob.load(ordering: .relaxed), dropOneJob.exchange(false, ordering: .relaxed) {
                        return   // --debug-drop-job: the wake-up is lost; the driver must be reported
                    }
                    continuation.resume()
                }
            }
            complete(unit, by: driver)
        case .asyncCrossCall:
            let cpu = randomCPU(&rng)
            let unit = issue(.crossCall, target: cpu, by: driver)
            asyncCrossCalls.add()
            let machine = self.machine
            do {
                let ranOn = try await machine.run(on: cpu) { [self] () -> Int? in
                    ran(unit)
                    return machine.currentCPU
                }
                checks.check(.crossCalls, ranOn == cpu,
                             "async run(on: \(cpu)) ran on \(ranOn.map { "logical CPU \($0)" } ?? "no logical CPU")")
                complete(unit, by: driver)
            } catch HotplugError.notOnline {
                withdraw(unit, by: driver, "notOnline")
            } catch {
                if case HotplugError.notResponding = error {
                    checks.fail(.progress, "async run(on: \(cpu)): \(error)")
                } else {
                    checks.fail(.crossCalls, "async run(on: \(cpu)) threw \(error)")
                }
                withdraw(unit, by: driver, "\(error)")
            }
        }
    }

    /// Moves the calling task onto CPU `cpu`'s executor (-1: the pool), runs one checked stretch there, and comes
    /// back. The yield puts the task on its new executor: `withTaskExecutorPreference` itself does not hop, the
    /// task's next enqueue does, and code before that would still run where the task was.
    private func hop(to cpu: Int, _ trail: inout Trail, _ body: () -> Void) async {
        if cpu < 0 {
            await withTaskExecutorPreference(machine.pool) {
                await Task.yield()
                yields.add()
                onPool(&trail, body)
            }
        } else {
            await withTaskExecutorPreference(executors[cpu]) {
                await Task.yield()
                yields.add()
                onExecutor(cpu, &trail, body)
            }
        }
    }
}

/// Lets the actors reach the load that owns them, which does not exist yet when they are created.
final class ExecutorLoadLink: @unchecked Sendable {
    // @unchecked: `load` is written once, in ExecutorLoad.init, before any task exists (the tasks that call the
    // actors are created after, which publishes it). Weak: the load owns the actors.
    weak var load: ExecutorLoad?
}

/// An actor pinned to one logical CPU's executor. Every stretch of its methods between two suspension points is
/// checked as a job of that executor.
actor PinnedShard {
    let executor: CPUExecutor
    nonisolated let cpu: Int
    nonisolated let index: Int
    private let link: ExecutorLoadLink
    /// Units applied here (actor state: mutated only on the executor).
    private var applied = 0

    init(executor: CPUExecutor, index: Int, link: ExecutorLoadLink) {
        self.executor = executor
        cpu = executor.cpu
        self.index = index
        self.link = link
    }

    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    func apply(_ unit: WorkUnit) {
        guard let load = link.load else { return }
        var trail = Trail()
        load.onExecutor(cpu, &trail) { load.ran(unit) }
        applied += 1
    }

    /// A call to another actor (on this CPU: the runtime may switch to it inline; on another: two hops), then yields.
    func relay(_ unit: WorkUnit, to other: PinnedShard, yields: Int) async {
        guard let load = link.load else { return }
        var trail = Trail()
        load.onExecutor(cpu, &trail) {}
        await other.apply(unit)
        load.onExecutor(cpu, &trail) {}
        for _ in 0..<yields {
            await Task.yield()
            load.yields.add()
            load.onExecutor(cpu, &trail) {}
        }
        applied += 1
    }

    /// A `Task.yield()` storm inside the actor: other callers interleave between the yields.
    func yieldStorm(_ unit: WorkUnit, count: Int) async {
        guard let load = link.load else { return }
        var trail = Trail()
        load.onExecutor(cpu, &trail) { load.ran(unit) }
        for _ in 0..<count {
            await Task.yield()
            load.yields.add()
            load.onExecutor(cpu, &trail) {}
        }
        applied += 1
    }
}

/// One unit of executor work: the job that runs it counts its runs; the task that awaits it completes it.
final class WorkUnit: Sendable {
    let id: Int
    let kind: UnitKind
    /// The CPU whose executor runs it; -1 for the pool or several places.
    let target: Int
    let issuedAt: Int64
    /// The target CPU's online generation when the unit was issued (see ``OnlineMirror``); -1 without a target.
    let generation: Int
    let runs = Atomic<Int>(0)

    init(id: Int, kind: UnitKind, target: Int, issuedAt: Int64, generation: Int) {
        self.id = id
        self.kind = kind
        self.target = target
        self.issuedAt = issuedAt
        self.generation = generation
    }
}

enum UnitKind: Sendable {
    case actor, relay, actorYields, cpuHop, poolHop, hopChain, child, unstructured, continuation, crossCall

    /// What the unit is, for a violation's detail.
    func text(_ cpu: Int) -> String {
        let executor = cpu < 0 ? "the pool" : "logical CPU \(cpu)'s executor"
        return switch self {
        case .actor: "a call to an actor on \(executor)"
        case .relay: "an actor-to-actor call, to an actor on \(executor)"
        case .actorYields: "a yield storm in an actor on \(executor)"
        case .cpuHop: "a task's hop onto \(executor)"
        case .poolHop: "a task's hop onto the pool"
        case .hopChain: "a task's chain of hops"
        case .child: "a child task on \(executor)"
        case .unstructured: "an unstructured task on \(executor)"
        case .continuation: "a continuation resumed from a task on \(executor)"
        case .crossCall: "an async run(on: \(cpu))"
        }
    }
}

/// What a driver draws.
enum ExecutorAction: CaseIterable {
    case actorCall, actorRelay, actorYields, cpuHop, poolHop, hopChain, fanOut, unstructured, continuation, asyncCrossCall

    var weight: Int {
        switch self {
        case .actorCall: 20
        case .actorRelay: 10
        case .actorYields: 6
        case .cpuHop: 10
        case .poolHop: 8
        case .hopChain: 8
        case .fanOut: 6
        case .unstructured: 8
        case .continuation: 8
        case .asyncCrossCall: 4
        }
    }

    static let totalWeight = allCases.reduce(0) { $0 + $1.weight }

    static func random(using rng: inout SplitMix64) -> ExecutorAction {
        var draw = Int.random(in: 0..<totalWeight, using: &rng)
        for action in allCases {
            if draw < action.weight { return action }
            draw -= action.weight
        }
        return .actorCall
    }
}

/// One driver's state, read by the watchdog and the final check.
final class DriverState: Sendable {
    /// Units issued and not yet completed (a driver awaits one action at a time: a few units at most).
    let outstanding = Mutex<[WorkUnit]>([])
    let finished = Atomic<Bool>(false)
    /// Set once its violation is reported (one report per driver).
    let reported = Atomic<Bool>(false)
}

/// One executor's in-flight count and the CPU that ran its last job.
final class ExecutorWatch: Sendable {
    let inFlight = Atomic<Int>(0)
    let lastHost = Atomic<Int>(-1)
}

/// The CPUs a task's checked stretches ran on: a change between two is a move (a hop, a stand-in, a pool steal).
struct Trail {
    var last = -1

    @inline(__always)
    mutating func at(_ cpu: Int, _ moves: Counter) {
        if last >= 0 && cpu >= 0 && cpu != last { moves.add() }
        last = cpu
    }
}

/// The online mask, as a job sees it: kept by a STARTING state of this run's own, whose startup runs on the CPU
/// while every other online CPU is stopped, right after the CPU enters the online mask, and whose teardown runs the
/// same way right before it leaves (docs/ARCHITECTURE.md, "The hotplug walk"). No job runs meanwhile, and the
/// stop_machine that surrounds both orders the store before every later job on every CPU (its barrier releases and
/// acquires), so a relaxed load inside a job reads the mask as exactly as the machine's own (which takes a lock).
///
/// Each CPU's word is a generation: raised by every startup and every teardown, so it is odd while the CPU is online,
/// and a CPU whose generation has not changed has stayed online, or offline, all the while.
final class OnlineMirror: Sendable {
    final class Generation: Sendable { let value = Atomic<Int>(0) }
    private let generations: [Generation]

    init(machine: Machine) throws(HotplugError) {
        let generations = (0..<machine.possibleCount).map { _ in Generation() }
        self.generations = generations
        // Relaxed: ordered by the stop_machine around the STARTING section (see the type's documentation).
        try machine.hotplug.register("torture:executors", section: .starting,
                                     startup: { cpu in generations[cpu].value.add(1, ordering: .relaxed) },
                                     teardown: { cpu in generations[cpu].value.add(1, ordering: .relaxed) })
    }

    @inline(__always)
    func contains(_ cpu: Int) -> Bool { generation(cpu) & 1 == 1 }

    @inline(__always)
    func generation(_ cpu: Int) -> Int { generations[cpu].value.load(ordering: .relaxed) }
}

/// The executor figures of the report.
struct ExecutorTally: Sendable {
    var drivers = 0, actors = 0
    var serialJobs = 0, poolJobs = 0
    var issued = 0, completed = 0, refused = 0, stuckDrivers = 0
    var tasks = 0, yields = 0, hops = 0, standInJobs = 0, rehomes = 0
    var actorCalls = 0, asyncCrossCalls = 0, actions = 0, toOfflineExecutor = 0
    var maximumWaitMilliseconds = 0.0
    var longestWaitFor = ""

    init(load: ExecutorLoad) {
        drivers = load.drivers.count
        actors = load.shards.count
        serialJobs = load.serialJobs.load
        poolJobs = load.poolJobs.load
        issued = load.issued.load
        completed = load.completed.load
        refused = load.refused.load
        tasks = load.tasks.load
        yields = load.yields.load
        hops = load.hops.load
        standInJobs = load.standInJobs.load
        rehomes = load.rehomes.load
        actorCalls = load.actorCalls.load
        asyncCrossCalls = load.asyncCrossCalls.load
        actions = load.actions.load
        toOfflineExecutor = load.toOfflineExecutor.load
        (maximumWaitMilliseconds, longestWaitFor) = load.longestWait.withLock { (Double($0.nanoseconds) / 1e6, $0.what) }
    }

    var jobs: Int { serialJobs + poolJobs }
}
