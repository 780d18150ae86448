import Logging
import Synchronization

extension HotplugState {
    /// Built-in: the CPU runs executor jobs (startup: its executor comes home from its stand-in, its pool queue
    /// opens) / stops running them (teardown), while every other online CPU is stopped.
    static let executorsStarting = HotplugState(rawValue: 42)
    /// Built-in: the executor takeover (teardown after the CPU is dead): the executors it hosted get a stand-in,
    /// its pool jobs move to a survivor. Below `tasklets:dead`, above the slab drain: jobs it moves may still
    /// free slab objects on their new CPU.
    static let executorsDead = HotplugState(rawValue: 29)
}

/// The executor subsystem of a machine: one ``CPUExecutor`` per logical CPU, the ``PoolExecutor``, the CPU side
/// that runs their jobs at each safe point, and the hotplug states that move them (docs/ARCHITECTURE.md, "Swift
/// executors").
///
/// Hand-over of a serial executor, the reason two of its jobs never run at the same time:
/// - Only the CPU named by the executor's `host` runs its jobs, and only at its safe points, one job at a time.
/// - Detach of the host: `executors:starting`'s teardown (on the dying CPU, everyone else stopped) makes it run
///   no more jobs; `executors:dead` (control thread, after the CPU is dead and has acknowledged: everything it
///   wrote is visible) names a stand-in as host with a sequentially consistent store, then wakes it if jobs wait.
///   The jobs are not copied: the stand-in continues the same queue in the same order.
/// - Attach of the executor's own CPU: `executors:starting`'s startup runs on that CPU while the stand-in is held
///   in stop_machine at a safe point, between two jobs; the host becomes the CPU itself, and the stand-in, when
///   released (the barrier orders the store before its next look), no longer finds the executor among its own.
/// - An enqueue racing with a change of host: see ``JobHub/push(_:on:)``.
final class ExecutorEngine: HotplugSubsystem {
    let hub: JobHub
    let cores: [CPUCore]
    /// One per logical CPU, by id.
    let executors: [CPUExecutor]
    let pool: PoolExecutor
    /// True until the first CPU has come online and taken every executor without a host (touched only by the
    /// hotplug walk, which is serialised).
    nonisolated(unsafe) private var unhosted = true

    init(_ context: HotplugSubsystemContext) {
        cores = context.cores
        let hub = JobHub(cores: context.cores, machineID: context.machineID, logger: context.logger)
        self.hub = hub
        executors = context.cores.indices.map { CPUExecutor(cpu: $0, hub: hub) }
        pool = PoolExecutor(hub: hub)
        hub.poolReference = pool.asUnownedTaskExecutor()
        hub.fallback.poolReference = hub.poolReference
        for core in cores {
            // Weak: the machine keeps the engine; a CPU thread keeps neither alive.
            core.jobHook = { [weak self] cpu in self?.run(cpu: cpu) }
        }
    }

    /// `executors:starting` (STARTING) and `executors:dead` (PREPARE, teardown only).
    var hotplugStates: [HotplugBuiltinState] {
        [HotplugBuiltinState(state: .executorsStarting, name: "executors:starting",
                             startup: { [weak self] cpu in self?.cpuStarting(cpu) },
                             teardown: { [weak self] cpu in self?.cpuDying(cpu) }),
         HotplugBuiltinState(state: .executorsDead, name: "executors:dead",
                             startup: nil,
                             teardown: { [weak self] cpu in self?.takeOver(from: cpu) })]
    }

    // MARK: The CPU side

    /// Runs jobs on CPU `cpu` (its own thread, at a safe point): its own executor's while it hosts it, those of
    /// the executors it stands in for, then its pool jobs; when none are left, it takes pool jobs from a busy
    /// CPU before it parks. Each queue runs at most ``JobHub/runBudget`` jobs and stops early when an order is pending; the
    /// CPU posts itself a new look when jobs remain. Allocates nothing.
    func run(cpu: Int) {
        let state = hub.cpus[cpu]
        // Acquire: partner of the STARTING startup's release (the queues it handed over are visible).
        guard state.active.load(ordering: .acquiring) else { return }
        let control = cores[cpu].control
        var ran = 0
        var more = false
        let own = executors[cpu]
        // Acquire: partner of the host's store by the hand-over (the queue's buckets are visible).
        if own.host.load(ordering: .acquiring) == cpu {
            let result = runSerial(own, on: cpu, state: state, control: control)
            ran += result.ran
            more = more || result.more
        }
        if state.guests.load(ordering: .relaxed) > 0 {
            for executor in executors where executor.cpu != cpu && executor.host.load(ordering: .acquiring) == cpu {
                let result = runSerial(executor, on: cpu, state: state, control: control)
                ran += result.ran
                more = more || result.more
            }
        }
        let pooled = runPool(on: cpu, control: control)
        ran += pooled.ran
        more = more || pooled.more
        // Out of work (also right after a batch): take a share of a busy CPU's pool jobs before parking.
        if !more { more = steal(into: cpu, state: state) }
        if more { control.postAndWakeIfIdle(.job) }   // running: a post, no wake
    }

    @inline(__always)
    private func ordersPending(_ control: ControlBlock) -> Bool {
        !control.mailbox.isDisjoint(with: ExecutorEngine.interrupting)
    }

    /// Mailbox bits that end a batch of jobs early (anything but more work).
    static let interrupting = ControlBlock.Bits.orders.subtracting([.job, .tasklet])

    private func runSerial(_ executor: CPUExecutor, on cpu: Int, state: CPUJobState,
                           control: ControlBlock) -> (ran: Int, more: Bool) {
        var ran = 0
        while ran < JobHub.runBudget {
            if !executor.inbox.isEmpty {
                executor.buckets.append(chain: JobLink.reverse(executor.inbox.takeAll()).first)
            }
            let link = executor.buckets.popHighest()
            if link == 0 { return (ran, false) }
            executor.queued.subtract(1, ordering: .relaxed)
            state.running = executor.cpu
            JobRunner.run(link, executor: executor, pool: nil)
            state.running = -1
            ran += 1
            if ordersPending(control) { break }
        }
        executor.ran.add(ran, ordering: .relaxed)
        return (ran, !executor.buckets.isEmpty || !executor.inbox.isEmpty)
    }

    private func runPool(on cpu: Int, control: ControlBlock) -> (ran: Int, more: Bool) {
        let queue = hub.pools[cpu]
        var ran = 0
        while ran < JobHub.runBudget {
            let link = queue.next()
            if queue.offered {
                queue.offered = false
                hub.wakeIdlePoolCPU(besides: cpu)
            }
            if link == 0 { return (ran, false) }
            queue.queued.subtract(1, ordering: .relaxed)
            JobRunner.run(link, executor: nil, pool: hub.poolReference)
            ran += 1
            if ordersPending(control) { break }
        }
        return (ran, queue.hasWork)
    }

    /// A CPU with nothing to run takes a busy CPU's pool backlog (or its unread inbox), keeps one batch and offers
    /// the rest as its own backlog. True when it took something.
    private func steal(into cpu: Int, state: CPUJobState) -> Bool {
        let count = hub.pools.count
        guard count > 1, hub.stealing else { return false }
        for step in 0..<count {
            let victim = (state.stealCursor + step) % count
            guard victim != cpu, hub.pools[victim].queued.load(ordering: .relaxed) > 0 else { continue }
            let (chain, taken) = hub.pools[victim].steal()
            guard chain != 0 else { continue }
            hub.pools[victim].queued.subtract(taken, ordering: .relaxed)
            hub.pools[cpu].queued.add(taken, ordering: .relaxed)
            hub.pools[cpu].keepBatch(of: chain)
            if hub.pools[cpu].offered {
                hub.pools[cpu].offered = false
                hub.wakeIdlePoolCPU(besides: cpu)
            }
            state.stealCursor = victim
            return true
        }
        return false
    }

    // MARK: Hotplug

    /// STARTING startup (on the CPU, everyone else stopped): its executor comes home, its pool queue opens, it
    /// runs jobs from now on. The first CPU ever to come online also hosts every executor that has none yet.
    func cpuStarting(_ cpu: Int) {
        let state = hub.cpus[cpu]
        hub.pools[cpu].inbox.open()
        var work = false
        for executor in executors where executor.cpu == cpu || unhosted {
            let host = executor.host.load(ordering: .relaxed)
            if executor.cpu == cpu {
                guard host != cpu else { continue }
                if host >= 0 { hub.cpus[host].guests.subtract(1, ordering: .relaxed) }
            } else {
                guard host == JobHub.noHost else { continue }
                state.guests.add(1, ordering: .relaxed)
            }
            // Sequentially consistent: against the producers' push-then-read-host (see `JobHub.push`).
            executor.host.store(cpu, ordering: .sequentiallyConsistent)
            work = work || executor.hasWork
        }
        unhosted = false
        // Release: partner of the acquire at the top of `run(cpu:)`.
        state.active.store(true, ordering: .releasing)
        if work || hub.pools[cpu].hasWork { cores[cpu].control.postAndWakeIfIdle(.job) }
    }

    /// STARTING teardown (on the dying CPU, everyone else stopped): it runs no job any more. What it hosts and
    /// holds stays where it is until `executors:dead` hands it on.
    func cpuDying(_ cpu: Int) {
        hub.cpus[cpu].active.store(false, ordering: .releasing)
    }

    /// `executors:dead` teardown (control thread, the CPU is dead): a stand-in for every executor it hosted, its
    /// pool jobs (in order) to a surviving CPU; both to the fallback thread when no CPU survives (shutdown).
    func takeOver(from dead: Int) {
        hub.cpus[dead].guests.store(0, ordering: .relaxed)
        // Acquire: partner of the hand-over that named `dead` as host.
        for executor in executors where executor.host.load(ordering: .acquiring) == dead {
            if let standIn = standIn(for: executor.cpu, excluding: dead) {
                hub.cpus[standIn].guests.add(1, ordering: .relaxed)   // before the post that wakes it (release)
                executor.host.store(standIn, ordering: .sequentiallyConsistent)
                if executor.hasWork { cores[standIn].control.postAndWakeIfIdle(.job) }
            } else {
                executor.host.store(JobHub.fallbackHost, ordering: .sequentiallyConsistent)
                if executor.hasWork { hub.fallback.schedule(executor) }
            }
        }
        let (newest, oldest, count) = hub.pools[dead].takeEverything()
        guard newest != 0 else { return }
        // One splice onto a survivor's inbox, whatever the count (the chain is already newest first).
        if let survivor = standIn(for: dead, excluding: dead),
           hub.pools[survivor].inbox.push(first: newest, last: oldest) != nil {
            hub.pools[survivor].queued.add(count, ordering: .relaxed)
            cores[survivor].control.postAndWakeIfIdle(.job)
            return
        }
        // No CPU left (shutdown): the fallback thread, oldest first.
        var link = JobLink.reverse(newest).first
        while link != 0 {
            let next = JobLink.next(link)
            hub.fallback.schedule(job: link)
            link = next
        }
    }

    /// The online CPU that stands in for `cpu`: the next one after it in id order on the same NUMA node, else the
    /// next one on any node (so that the executors of several detached CPUs spread over the survivors).
    private func standIn(for cpu: Int, excluding dead: Int) -> Int? {
        let count = cores.count
        let node = cores[cpu].slot.node
        var fallback: Int?
        for step in 1...count {
            let candidate = (cpu + step) % count
            guard candidate != dead, hub.cpus[candidate].active.load(ordering: .acquiring) else { continue }
            if cores[candidate].slot.node == node { return candidate }
            if fallback == nil { fallback = candidate }
        }
        return fallback
    }
}
