import BenchSupport
import CPeers
import Dispatch
import Hotplug

/// The logical CPU the tasklet figures schedule on.
private let taskletCPU = 1

/// Samples of the batch figures are per-operation times in picoseconds (batch time * 1000 / batch size), so that
/// a per-operation time of a few nanoseconds keeps its precision; the table and the JSON print them in ns.
let picosecondsPerNanosecond: Int64 = 1_000

// MARK: g. tasklet schedule -> run throughput vs DispatchQueue.async

/// Ours: `Machine(cpus: 2)` (both online, default poll time), `batchSize` tasklets created up front (one per
/// schedule of a batch, so that no schedule coalesces with a run still pending), each body one release increment of
/// a shared counter. A sample is one batch: every tasklet scheduled once on logical CPU 1, until the counter moved
/// by the batch size, divided by the batch size.
///
/// `onCPU`: the schedules are made on logical CPU 1 itself, inside one cross-call (`run(on: 1)`); the tasklets run
/// at CPU 1's next safe point, once that call returned. The clock starts inside the call (its delivery is not
/// timed) and stops when the measuring thread (pinned to `layout.sender`) sees the counter reach its target.
/// Otherwise the schedules come from the measuring thread itself, a plain thread on the other physical CPU, while
/// CPU 1 runs the tasklets concurrently.
func oursTaskletThroughput(onCPU: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let counter = SharedWord64()
        defer { counter.deallocate() }
        let machine = try makeAllOnlineMachine(cpus: 2, timeoutNs: settings.timeoutNs)
        defer { machine.shutdown() }
        let body: @Sendable () -> Void = { counter.bump() }   // Release: partner of cpr_wait_at_least's acquire.
        let tasklets = (0..<settings.batchSize).map { _ in Tasklet(machine, priority: .normal, body) }
        let samples = SampleBlock(out)
        let size = settings.batchSize
        try PinnedThread.run(pinnedTo: layout.sender) { () throws(BenchFailure) in
            for i in 0..<(settings.batchWarmup + samples.count) {
                let target = counter.value + UInt64(size)
                let t0: Int64
                let coalesced: Int
                if onCPU {
                    do {
                        (t0, coalesced) = try machine.run(on: taskletCPU, timeout: .nanoseconds(settings.timeoutNs)) {
                            let start = cpr_now_ns()
                            return (start, try scheduleEach(tasklets, on: taskletCPU))
                        }
                    } catch {
                        throw BenchFailure("run(on: 1) { schedule(on: 1) x \(size) }: \(error)")
                    }
                } else {
                    t0 = cpr_now_ns()
                    do { coalesced = try scheduleEach(tasklets, on: taskletCPU) } catch {
                        throw BenchFailure("schedule(on: 1): \(error)")
                    }
                }
                guard coalesced == 0 else {
                    throw BenchFailure("\(coalesced) of \(size) schedules coalesced (a tasklet of the previous batch had not run)")
                }
                guard cpr_wait_at_least(counter.pointer, target, settings.timeoutNs) == 0 else {
                    throw BenchFailure("the batch's \(size) tasklets did not all run within \(settings.timeoutNs / 1_000_000) ms "
                                       + taskletDiagnosis(machine, tasklets, left: target - counter.value))
                }
                let t1 = cpr_now_ns()
                if i >= settings.batchWarmup {
                    samples[i - settings.batchWarmup] = (t1 - t0) * picosecondsPerNanosecond / Int64(size)
                }
            }
        }
    }
}

/// What a failed wait saw: runs missing, CPU 1's run state, tasklets still queued or running (the body of every
/// tasklet that is neither has run, so a run that is missing while none is queued was lost).
private func taskletDiagnosis(_ machine: Machine, _ tasklets: [Tasklet], left: UInt64) -> String {
    let state = (try? machine.runState(of: taskletCPU)).map { "\($0)" } ?? "unknown"
    let queued = tasklets.count(where: \.isScheduled), running = tasklets.count(where: \.isRunning)
    return "(\(left) runs missing; logical CPU 1 \(state); \(queued) tasklets still scheduled, \(running) running)"
}

/// Schedules every tasklet once on `cpu`; returns how many coalesced (returned false).
@inline(__always)
private func scheduleEach(_ tasklets: [Tasklet], on cpu: Int) throws(HotplugError) -> Int {
    var coalesced = 0
    for tasklet in tasklets {
        if !(try tasklet.schedule(on: cpu)) { coalesced += 1 }
    }
    return coalesced
}

/// The peer: a serial `DispatchQueue`; a sample is one batch of `queue.async(execute:)` of a block made once up front
/// (the peer's cheapest form: no closure or block is copied per call) that does the same release increment, until
/// the counter moved by the batch size, divided by the batch size. The producing thread also waits and takes the
/// clock; it is pinned to `layout.target` (`onCPU`: the physical CPU of our logical CPU 1) or to `layout.sender`.
/// Dispatch's worker threads are its own: they inherit the affinity of the thread that made its pool grow (in a
/// default run the deciding row's producer, so its busy worker then runs on `layout.target`, where our tasklets run).
func peerDispatchThroughput(onCPU: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let counter = SharedWord64()
        defer { counter.deallocate() }
        let queue = DispatchQueue(label: "hotplug-peers.serial")
        let work: @Sendable @convention(block) () -> Void = { counter.bump() }   // Release: as ours.
        let samples = SampleBlock(out)
        let size = settings.batchSize
        try PinnedThread.run(pinnedTo: onCPU ? layout.target : layout.sender) { () throws(BenchFailure) in
            for i in 0..<(settings.batchWarmup + samples.count) {
                let target = counter.value + UInt64(size)
                let t0 = cpr_now_ns()
                for _ in 0..<size { queue.async(execute: work) }
                guard cpr_wait_at_least(counter.pointer, target, settings.timeoutNs) == 0 else {
                    throw BenchFailure("the batch's \(size) blocks did not all run within \(settings.timeoutNs / 1_000_000) ms")
                }
                let t1 = cpr_now_ns()
                if i >= settings.batchWarmup {
                    samples[i - settings.batchWarmup] = (t1 - t0) * picosecondsPerNanosecond / Int64(size)
                }
            }
        }
    }
}

// MARK: h. tasklet cross-CPU schedule -> run latency vs futex wake / cache-line ping-pong

/// Ours: a two-CPU machine whose CPU 0 is taken offline (only logical CPU 1 runs, pinned to `layout.target`, as in
/// the SIGP figures) and one tasklet whose body is a release increment of the acknowledgement word. A sample is
/// `schedule(on: 1)` from a plain thread pinned to `layout.sender` until the body's increment is seen (one round
/// trip). `polling`: CPU 1 polls its mailbox (poll time 10 s) and each sample starts with it back in `.polling`;
/// otherwise the poll time is the default (20 us) and each sample starts with the CPU `.idle` (parked in the
/// kernel) plus `settleNs`, like the futex peer.
func oursTaskletLatency(polling: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let ack = SharedWord64()
        defer { ack.deallocate() }
        var configuration = Machine.Configuration(initiallyOnline: 2, responseTimeout: .nanoseconds(settings.timeoutNs))
        if polling { configuration.pollTime = .seconds(10) }
        let machine: Machine
        do {
            machine = try Machine(cpus: 2, configuration: configuration)
            try machine.offline(0)
        } catch {
            throw BenchFailure("machine: \(error)")
        }
        defer { machine.shutdown() }
        let tasklet = Tasklet(machine, priority: .normal) { ack.bump() }   // Release: partner of cpr_wait_change.
        let state: RunState = polling ? .polling : .idle
        let samples = SampleBlock(out)
        try PinnedThread.run(pinnedTo: layout.sender) { () throws(BenchFailure) in
            for i in 0..<(settings.warmup + samples.count) {
                try spin(until: "logical CPU 1 \(state)", timeoutNs: settings.timeoutNs) {
                    (try? machine.runState(of: taskletCPU)) == state
                }
                if !polling { spin(forNanoseconds: settings.settleNs) }
                let before = ack.value
                let t0 = cpr_now_ns()
                let scheduled: Bool
                do { scheduled = try tasklet.schedule(on: taskletCPU) } catch { throw BenchFailure("schedule(on: 1): \(error)") }
                let waited = scheduled ? cpr_wait_change(ack.pointer, before, settings.timeoutNs) : 0
                let t1 = cpr_now_ns()
                guard scheduled else { throw BenchFailure("schedule(on: 1) coalesced: the previous run was still queued") }
                guard waited == 0 else {
                    throw BenchFailure("the tasklet did not run within \(settings.timeoutNs / 1_000_000) ms")
                }
                if i >= settings.warmup { samples[i - settings.warmup] = t1 - t0 }
            }
        }
    }
}
