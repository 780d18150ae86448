// package-benchmark (ordo-one) benchmarks of swift-hotplug, for regression tracking against baselines:
//   swift package --allow-writing-to-package-directory benchmark
// The side-by-side comparison with the raw peers is the `hotplug-peers` executable.
import Benchmark
import BenchSupport
import CPeers
import Hotplug
import Synchronization

/// Where the measuring thread and the other side run (different physical CPUs whenever there are two).
struct Placement: Sendable {
    let target: Int
    let sender: Int?

    static func current() throws -> Placement {
        let topology = try Topology.current()
        let target = topology.cpus[1 % topology.cpus.count].physicalID   // logical CPU 1 runs on slot 1 % slots
        return Placement(target: target, sender: topology.physicalCPUs.first { $0 != target })
    }

    /// Pins the calling (benchmark) thread to the sender CPU.
    func pinCaller() {
        if let sender { _ = cpr_pin_self(Int32(sender)) }
    }
}

/// Bound of every wait in these benchmarks.
let timeoutNs: Int64 = 1_000_000_000

// MARK: SIGP to a polling CPU

/// A machine whose only online CPU (logical 1) polls its mailbox, and the acknowledgement its interrupt handler bumps.
final class PollingRig: Sendable {
    let machine: Machine
    let ack = SharedWord64()
    let placement: Placement

    init() throws {
        placement = try Placement.current()
        let ack = self.ack
        machine = try Machine(cpus: 2, configuration: .init(
            initiallyOnline: 2, pollTime: .seconds(10), responseTimeout: .seconds(1),
            interruptHandler: { _, interruption in
                if interruption == .emergencySignal { ack.bump() }   // Release: partner of cpr_wait_change's acquire.
            }))
        try machine.offline(0)
    }

    func close() {
        machine.shutdown()
    }

    deinit { ack.deallocate() }
}

/// The rig alive between a benchmark's setup and teardown (teardown gets no setup state).
let currentPollingRig = Mutex<PollingRig?>(nil)

// MARK: Barrier episodes

/// A SpinBarrier and a partner thread pinned to the target CPU that runs as many episodes as each sample asks for.
final class BarrierRig: @unchecked Sendable {
    // @unchecked: `measuring` is used only by the benchmark thread (one sample at a time); the rest is immutable or
    // C memory touched through explicitly ordered atomics.
    let barrier = SpinBarrier(participants: 2)
    var measuring: SpinBarrier.Participant
    let placement: Placement
    let request = SharedWord64()   // episodes requested so far (release by the benchmark thread)
    let done = SharedWord64()      // episodes the partner finished (release by the partner)
    let stop = SharedFlag()
    let requested = Atomic<UInt64>(0)
    private var partner: PinnedThread?

    init() throws {
        placement = try Placement.current()
        measuring = barrier.makeParticipant()
        let other = barrier.makeParticipant()
        let (barrier, request, done, stop) = (self.barrier, self.request, self.done, self.stop)
        partner = try PinnedThread.start(pinnedTo: placement.target) { () throws(BenchFailure) in
            var participant = other
            var finished: UInt64 = 0
            while true {
                // Acquire: partner of the release store of `request` in `episodes(_:)`.
                try spin(until: "a barrier request", timeoutNs: 600 * timeoutNs) {
                    stop.isSet || request.value != finished
                }
                if stop.isSet { return }
                let target = request.value
                while finished < target {
                    barrier.wait(&participant)
                    finished += 1
                }
                cpr_store_release_u64(done.pointer, finished)   // Release: partner of the acquire in `episodes(_:)`.
            }
        }
    }

    /// Asks the partner for `count` episodes plus one untimed synchronising episode, runs the synchronising one,
    /// then measures `count` episodes.
    func episodes(_ benchmark: Benchmark, count: Int) throws {
        let target = requested.add(UInt64(count) + 1, ordering: .relaxed).newValue
        cpr_store_release_u64(request.pointer, target)
        barrier.wait(&measuring)   // the partner is in: from here on every episode is a full one
        benchmark.startMeasurement()
        for _ in 0..<count { barrier.wait(&measuring) }
        benchmark.stopMeasurement()
        try spin(until: "the barrier partner to finish", timeoutNs: timeoutNs) { done.value == target }
    }

    func close() {
        stop.set()
        try? partner?.join()
        partner = nil
    }
}

let currentBarrierRig = Mutex<BarrierRig?>(nil)

// MARK: The benchmarks

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        // No CPU-time metric: reading it inside the measured region allocates, which would hide ours (none).
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        timeUnits: .nanoseconds,
        warmupIterations: 100,
        maxDuration: .seconds(3),
        maxIterations: 50_000)

    Benchmark("SIGP to a polling CPU (round trip)") { (benchmark: Benchmark, rig: PollingRig) in
        rig.placement.pinCaller()
        let ack = rig.ack
        for _ in benchmark.scaledIterations {
            // Untimed: each round trip starts with the target polling again.
            do {
                try spin(until: "logical CPU 1 polling", timeoutNs: timeoutNs) {
                    (try? rig.machine.runState(of: 1)) == .polling
                }
            } catch {
                fatalError("\(error)")
            }
            let before = ack.value
            benchmark.startMeasurement()
            let result = try? rig.machine.sigp(1, .emergencySignal)
            let waited = cpr_wait_change(ack.pointer, before, timeoutNs)
            benchmark.stopMeasurement()
            precondition(result?.conditionCode == .accepted && waited == 0,
                         "SIGP to a polling CPU: \(String(describing: result)), wait \(waited)")
        }
    } setup: {
        let rig = try PollingRig()
        currentPollingRig.withLock { $0 = rig }
        return rig
    } teardown: {
        currentPollingRig.withLock {
            $0?.close()
            $0 = nil
        }
    }

    Benchmark("barrier episode, 2 threads (SpinBarrier)",
              configuration: .init(scalingFactor: .kilo)) { (benchmark: Benchmark, rig: BarrierRig) in
        rig.placement.pinCaller()
        do {
            try rig.episodes(benchmark, count: benchmark.scaledIterations.count)
        } catch {
            fatalError("\(error)")
        }
    } setup: {
        let rig = try BarrierRig()
        currentBarrierRig.withLock { $0 = rig }
        return rig
    } teardown: {
        currentBarrierRig.withLock {
            $0?.close()
            $0 = nil
        }
    }
}
