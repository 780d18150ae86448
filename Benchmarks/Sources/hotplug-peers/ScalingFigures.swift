import BenchSupport
import CPeers
import Hotplug
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// The scaling figures: how stop_machine and hotplug cost grows with many idle logical CPUs (more than the physical
// ones, all sharing them), bulk attach / detach, the hand-over a plain thread pays, and a tasklet's own cost. Each
// compares two of our own configurations measured in the same run (or ours with one atomic add), so the "peer"
// column names our other configuration.

/// The logical CPUs of the large machines (all on the physical CPUs of the affinity mask; the idle ones park).
let scalingCPUs = 64
/// The logical CPUs of the small machine the large one's attach and detach are compared with.
let scalingBaseCPUs = 4
/// The logical CPU kept busy (stop_machine) or detached and attached (the others): logical CPU 1, on the second
/// physical CPU, like the other figures' target.
private let scalingTarget = 1

extension HotplugPeers {
    /// The plans of the scaling figures (see `Benchmarks/README.md`, "The scaling figures").
    func scalingPlans(_ figure: FigureID, layout: Layout) -> [Plan] {
        switch figure {
        case .scaleStopMachine:
            var plan = Plan("stop_machine, 2 busy CPUs among \(scalingCPUs) online (\(scalingCPUs - 2) idle), called on CPU 0",
                            ours: oursBusyStopMachine(cpus: scalingCPUs), peers: [
                (Contender(name: "ours: 2 busy CPUs, 2 online", measure: oursBusyStopMachine(cpus: 2)),
                 Goal(limit: 1.5)),
            ])
            plan.slow = true
            return profiled([plan])
        case .scaleAttachDetach:
            return profiled(HotplugOperationKind.allCases.map { kind in
                var plan = Plan("\(kind.title), \(scalingCPUs) CPUs online (\(scalingCPUs - 2) idle), called on CPU 0",
                                ours: oursSingleHotplug(kind, cpus: scalingCPUs, onCPU: true), peers: [
                    (Contender(name: "ours: the same, \(scalingBaseCPUs) CPUs online",
                               measure: oursSingleHotplug(kind, cpus: scalingBaseCPUs, onCPU: true)),
                     Goal(limit: 1.5)),
                ])
                plan.slow = true
                return plan
            })
        case .bulkHotplug:
            // A sample grows (or shrinks) by 63 CPUs: about a hundred times a single operation, so a tenth of the
            // slow figures' samples, and up to 20 ms each before the watchdog calls the figure hung.
            let samples = max(rounds, slowIterations / 10)
            return profiled(HotplugOperationKind.allCases.map { kind in
                let title = kind == .attach
                    ? "bulk grow 1 -> \(scalingCPUs) CPUs: online(CPUSet 1..<\(scalingCPUs)), called on CPU 0"
                    : "bulk shrink \(scalingCPUs) -> 1 CPUs: offline(CPUSet 1..<\(scalingCPUs)), called on CPU 0"
                var plan = Plan(title, ours: oursBulkHotplug(kind, cpus: scalingCPUs), peers: [
                    (Contender(name: "ours: one \(kind.title), \(scalingBaseCPUs) CPUs online, on CPU 0",
                               measure: oursSingleHotplug(kind, cpus: scalingBaseCPUs, onCPU: true)),
                     Goal(limit: 8)),
                ])
                plan.samples = samples
                plan.msPerSample = 20
                return plan
            })
        case .plainThreadHotplug:
            return profiled(HotplugOperationKind.allCases.map { kind in
                var plan = Plan("\(kind.title), \(scalingBaseCPUs) CPUs, called from a plain thread",
                                ours: oursSingleHotplug(kind, cpus: scalingBaseCPUs, onCPU: false), peers: [
                    (Contender(name: "ours: the same on CPU 0 + raw futex wake round trip",
                               measure: onCPUPlusFutex(kind, cpus: scalingBaseCPUs)),
                     Goal(limit: 1.1)),
                ])
                plan.slow = true
                return plan
            })
        case .taskletAtomic:
            var plan = Plan("tasklet schedule + run on one CPU (CPU 1, clock on CPU 1): ns/op",
                            ours: oursTaskletOneCPU, peers: [
                (Contender(name: "one uncontended atomic add (lock xadd, same CPU)", measure: peerAtomicAdd),
                 Goal(limit: 8)),
                (Contender(name: "DispatchQueue.async, serial queue", measure: peerDispatchThroughput(onCPU: true)),
                 Goal(limit: nil)),
            ])
            plan.batches = true
            return profiled([plan])
        default:
            preconditionFailure("not a scaling figure: \(figure)")
        }
    }

    /// For `perf record` on the runner, like the executor figures' switch: HOTPLUG_PEERS_PROFILE=ours leaves out
    /// every peer (the row shows our side alone), HOTPLUG_PEERS_PROFILE=peer measures each plan's first peer alone
    /// (as the row's "ours", the peer column saying so), so that a profile holds one side alone.
    private func profiled(_ plans: [Plan]) -> [Plan] {
        let profile = getenv("HOTPLUG_PEERS_PROFILE").map { String(cString: $0) }
        switch profile {
        case "ours":
            return plans.map { plan in
                var plan = plan
                plan.peers = []
                plan.alone = [(peer: "not measured: HOTPLUG_PEERS_PROFILE=ours", goal: Goal(limit: nil))]
                return plan
            }
        case "peer":
            return plans.compactMap { plan in
                guard let (peer, _) = plan.peers.first else { return nil }
                var alone = Plan(plan.titles[0] + " [its peer alone: \(peer.name)]", ours: peer.measure, peers: [])
                alone.alone = [(peer: "HOTPLUG_PEERS_PROFILE=peer", goal: Goal(limit: nil))]
                alone.slow = plan.slow
                alone.batches = plan.batches
                alone.samples = plan.samples
                alone.msPerSample = plan.msPerSample
                return alone
            }
        default:
            return plans
        }
    }
}

/// Which single operation a side times.
enum HotplugOperationKind: CaseIterable, Sendable {
    case detach, attach

    var title: String { self == .detach ? "detach: offline(1)" : "attach: online(1)" }
}

/// Waits until every CPU of `cpus` is parked in its idle wait (`.idle`), so that a block starts with the idle CPUs
/// where they stay between samples.
private func waitUntilParked(_ machine: Machine, _ cpus: Range<Int>, timeoutNs: Int64) throws(BenchFailure) {
    for cpu in cpus {
        try spin(until: "logical CPU \(cpu) parked idle", timeoutNs: timeoutNs) {
            (try? machine.runState(of: cpu)) == .idle
        }
    }
}

// MARK: stop_machine with two busy CPUs among many idle ones

/// Keeps one logical CPU busy: a tasklet that schedules itself again from its body (one release increment), so the
/// CPU runs one short job after another with a safe point between them and never parks: it is never claimed idle,
/// so a stop_machine must reach it with a cross-call and it takes part.
private final class BusyStream: @unchecked Sendable {
    // @unchecked: `tasklet` is written once, before its first schedule (whose release publishes it to the body);
    // the words are C memory touched through ordered atomics.
    let stop = SharedFlag()
    let runs = SharedWord64()
    var tasklet: Tasklet?
    let cpu: Int

    init(_ machine: Machine, cpu: Int) throws(BenchFailure) {
        self.cpu = cpu
        tasklet = Tasklet(machine, priority: .normal) { [unowned(unsafe) self] in
            self.runs.bump()   // Release: partner of the reader's acquire (cpr_wait_change).
            if !self.stop.isSet { _ = try? self.tasklet!.schedule(on: self.cpu) }
        }
        do { try tasklet!.schedule(on: cpu) } catch { throw BenchFailure("busy tasklet: \(error)") }
    }

    /// Stops the stream and waits until its last run finished (the body touches `self` until then).
    func finish(timeoutNs: Int64) {
        stop.set()
        let tasklet = self.tasklet!
        try? spin(until: "the busy tasklet to stop", timeoutNs: timeoutNs) { !tasklet.isScheduled && !tasklet.isRunning }
    }

    func deallocate() {
        stop.deallocate()
        runs.deallocate()
    }
}

/// A sample: one `stopMachine { _ in }` called on logical CPU 0 (the timed loop runs in `run(on: 0)`, so CPU 0 is
/// busy with it) while logical CPU 1 runs a stream of self-rescheduling tasklets; the other `cpus - 2` logical
/// CPUs are online and idle (parked before the block starts). Fails when CPU 1 ran fewer tasklets than there
/// were samples (it was not kept busy).
func oursBusyStopMachine(cpus: Int) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let machine = try makeAllOnlineMachine(cpus: cpus, timeoutNs: settings.timeoutNs)
        let busy: BusyStream
        do throws(BenchFailure) { busy = try BusyStream(machine, cpu: scalingTarget) } catch {
            machine.shutdown()
            throw error
        }
        defer {
            busy.finish(timeoutNs: settings.timeoutNs)
            machine.shutdown()
            busy.deallocate()
        }
        try waitUntilParked(machine, 2..<cpus, timeoutNs: settings.timeoutNs)
        let samples = SampleBlock(out)
        let timeout = Duration.nanoseconds(settings.timeoutNs)
        let before = busy.runs.value
        try runTimedLoop(machine, onCPU: true, layout: layout) {
            for i in 0..<(settings.warmup + samples.count) {
                let t0 = cpr_now_ns()
                do { try machine.stopMachine(timeout: timeout, emptyScalingBody) } catch {
                    throw BenchFailure("stopMachine: \(error)")
                }
                let t1 = cpr_now_ns()
                if i >= settings.warmup { samples[i - settings.warmup] = t1 - t0 }
            }
        }
        let ran = busy.runs.value - before
        guard ran >= UInt64(samples.count) else {
            throw BenchFailure("logical CPU 1 ran \(ran) busy tasklets over \(samples.count) samples: it was not kept busy")
        }
    }
}

/// The body of every timed stop_machine here: nothing (a global, so the timed loop creates no closure).
private let emptyScalingBody: @Sendable (Int) throws -> Void = { _ in }

// MARK: single attach / detach on a machine of `cpus` logical CPUs

/// A sample: one `offline(1)` (`.detach`; the `online(1)` after it untimed) or one `online(1)` (`.attach`; the
/// `offline(1)` before it untimed) on `Machine(cpus: cpus)`, every CPU online, the CPUs other than 0 and 1 parked
/// idle before the block; called on logical CPU 0 (`onCPU`) or from a plain thread pinned to CPU 0's physical CPU.
func oursSingleHotplug(_ kind: HotplugOperationKind, cpus: Int, onCPU: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let machine = try makeAllOnlineMachine(cpus: cpus, timeoutNs: settings.timeoutNs)
        defer { machine.shutdown() }
        try waitUntilParked(machine, 2..<cpus, timeoutNs: settings.timeoutNs)
        let samples = SampleBlock(out)
        try runTimedLoop(machine, onCPU: onCPU, layout: layout) {
            for i in 0..<(settings.warmup + samples.count) {
                let t0 = cpr_now_ns()
                do { try machine.offline(scalingTarget) } catch { throw BenchFailure("offline(1): \(error)") }
                let t1 = cpr_now_ns()
                do { try machine.online(scalingTarget) } catch { throw BenchFailure("online(1): \(error)") }
                let t2 = cpr_now_ns()
                if i >= settings.warmup { samples[i - settings.warmup] = kind == .detach ? t1 - t0 : t2 - t1 }
            }
        }
    }
}

/// The plain thread's peer: per sample index, the same operation called on logical CPU 0 plus one raw futex wake
/// round trip (the "SIGP waking a parked CPU" peer: a store + FUTEX_WAKE to a thread asleep on the target CPU,
/// until its acknowledgement), both measured in this block, one after the other; a sample is their sum.
func onCPUPlusFutex(_ kind: HotplugOperationKind, cpus: Int) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        try oursSingleHotplug(kind, cpus: cpus, onCPU: true)(layout, settings, out)
        let futex = SampleBuffer(count: out.count)
        defer { futex.deallocate() }
        try peerFutex(layout, settings, into: futex.storage)
        for i in out.indices { out[i] += futex.storage[i] }
    }
}

// MARK: bulk grow and shrink

/// A sample: `online(CPUSet(1..<cpus))` (`.attach`: grow from 1 to `cpus`) or `offline(CPUSet(1..<cpus))`
/// (`.detach`: shrink to 1), one call each, on logical CPU 0 of `Machine(cpus: cpus, initiallyOnline: 1)` whose
/// other CPUs were configured first (present: threads parked offline); the opposite call between two samples is untimed, and before a timed shrink every CPU is parked idle. Every call
/// must complete (`isComplete`), or the figure fails.
func oursBulkHotplug(_ kind: HotplugOperationKind, cpus: Int) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let machine: Machine
        do {
            machine = try Machine(cpus: cpus, configuration: .init(initiallyOnline: 1,
                                                                   responseTimeout: .nanoseconds(settings.timeoutNs)))
        } catch {
            throw BenchFailure("machine: \(error)")
        }
        defer { machine.shutdown() }
        // Present (their threads made and parked offline), as a grow finds them: the figure times the attach, not
        // thread creation.
        for cpu in 1..<cpus {
            do { try machine.configure(cpu) } catch { throw BenchFailure("configure(\(cpu)): \(error)") }
        }
        let others = CPUSet(1..<cpus)
        let samples = SampleBlock(out)
        // A tenth of the warm-up: each sample is a hundred single operations.
        let warmup = max(1, settings.warmup / 10)
        try runTimedLoop(machine, onCPU: true, layout: layout) {
            for i in 0..<(warmup + samples.count) {
                let t0 = cpr_now_ns()
                let grown: HotplugBatchResult
                do { grown = try machine.online(others) } catch { throw BenchFailure("online(1..<\(cpus)): \(error)") }
                let t1 = cpr_now_ns()
                guard grown.isComplete, grown.changed == others else {
                    throw BenchFailure("online(1..<\(cpus)) did not complete: \(grown.failures)")
                }
                if kind == .detach { try waitUntilParked(machine, 1..<cpus, timeoutNs: settings.timeoutNs) }
                let t2 = cpr_now_ns()
                let shrunk: HotplugBatchResult
                do { shrunk = try machine.offline(others) } catch { throw BenchFailure("offline(1..<\(cpus)): \(error)") }
                let t3 = cpr_now_ns()
                guard shrunk.isComplete, shrunk.changed == others else {
                    throw BenchFailure("offline(1..<\(cpus)) did not complete: \(shrunk.failures)")
                }
                if i >= warmup { samples[i - warmup] = kind == .attach ? t1 - t0 : t3 - t2 }
            }
        }
    }
}

// MARK: tasklet schedule + run on one CPU vs one atomic add

/// Ours: `Machine(cpus: 2)`, `batchSize` tasklets made up front, each body one release increment of a shared
/// counter that nobody reads meanwhile (like the peer's word); the last body also reads the clock and then raises
/// a separate `done` word, the only one the measuring thread polls (polling the counter itself would pull its cache
/// line away from CPU 1 at every increment). A sample is one batch: in one cross-call on logical CPU 1 the clock is
/// read and every tasklet scheduled once on CPU 1; they run at CPU 1's next safe point, after the call returned;
/// the last body's clock reading ends the sample (both readings on CPU 1), / the batch size. Afterwards the counter
/// must have moved by the batch size.
///
/// The cross-call walks the tasklets through unretained references (the array keeps them alive): calling a method
/// on each element of an array of class references costs the caller a retain and a release per element (about
/// 6 ns on the 2-core VM, two more atomic read-modify-writes), which is the loop's, not the schedule's. The peer's
/// loop has none, and code that schedules a tasklet it holds in a stored property pays none either.
func oursTaskletOneCPU(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let counter = SharedWord64(), done = SharedWord64()
    defer {
        counter.deallocate()
        done.deallocate()
    }
    let stamp = ClockStamp()
    let machine = try makeAllOnlineMachine(cpus: 2, timeoutNs: settings.timeoutNs)
    defer { machine.shutdown() }
    let size = settings.batchSize
    let tasklets = (0..<size).map { index in
        index == size - 1
            ? Tasklet(machine, priority: .normal) {
                counter.bump()
                // Release: partner of the measuring thread's acquire load after it saw `done`.
                stamp.value.store(cpr_now_ns(), ordering: .releasing)
                done.bump()   // Release: partner of cpr_wait_at_least's acquire (the counter's increments too).
            }
            : Tasklet(machine, priority: .normal) { counter.bump() }
    }
    let unretained = tasklets.map { Unmanaged.passUnretained($0) }
    let samples = SampleBlock(out)
    try PinnedThread.run(pinnedTo: layout.sender) { () throws(BenchFailure) in
        for i in 0..<(settings.batchWarmup + samples.count) {
            let before = counter.value
            let t0: Int64
            do {
                t0 = try machine.run(on: scalingTarget, timeout: .nanoseconds(settings.timeoutNs)) {
                    let start = cpr_now_ns()
                    for tasklet in unretained {
                        _ = try tasklet._withUnsafeGuaranteedRef { t throws(HotplugError) in try t.schedule(on: scalingTarget) }
                    }
                    return start
                }
            } catch {
                throw BenchFailure("run(on: 1) { schedule(on: 1) x \(size) }: \(error)")
            }
            withExtendedLifetime(tasklets) {}   // `unretained` holds no reference: the array keeps them alive
            guard cpr_wait_at_least(done.pointer, UInt64(i + 1), settings.timeoutNs) == 0 else {
                throw BenchFailure("the batch's \(size) tasklets did not all run within \(settings.timeoutNs / 1_000_000) ms")
            }
            guard counter.value == before + UInt64(size) else {
                throw BenchFailure("the batch ran \(counter.value - before) of \(size) tasklets before its last one")
            }
            // Acquire: partner of the last body's release store.
            let t1 = stamp.value.load(ordering: .acquiring)
            if i >= settings.batchWarmup {
                samples[i - settings.batchWarmup] = (t1 - t0) * picosecondsPerNanosecond / Int64(size)
            }
        }
    }
}

/// A clock reading handed from a tasklet body to the measuring thread.
private final class ClockStamp: Sendable {
    let value = Atomic<Int64>(0)
}

/// The peer: a thread pinned to CPU 1's physical CPU; a sample is `batchSize` release increments of one word
/// (`lock xadd`, uncontended: nobody else touches its cache line), / the batch size.
func peerAtomicAdd(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let counter = SharedWord64()
    defer { counter.deallocate() }
    let samples = SampleBlock(out)
    let size = settings.batchSize
    try PinnedThread.run(pinnedTo: layout.target) {
        for i in 0..<(settings.batchWarmup + samples.count) {
            let t0 = cpr_now_ns()
            for _ in 0..<size { counter.bump() }
            let t1 = cpr_now_ns()
            if i >= settings.batchWarmup {
                samples[i - settings.batchWarmup] = (t1 - t0) * picosecondsPerNanosecond / Int64(size)
            }
        }
    }
}
