import BenchSupport
import CPeers
import Hotplug
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where the two sides run: the target (logical CPU 1 of our machines, the partner thread of a peer) and the
/// sender (a plain thread; the measuring one). They are different physical CPUs whenever there are two.
struct Layout: Sendable {
    let target: Int
    let sender: Int?

    static func current() throws(BenchFailure) -> Layout {
        let topology: Topology
        do { topology = try Topology.current() } catch { throw BenchFailure("topology: \(error)") }
        // Logical CPU i of a machine runs on slot i % slots.
        let target = topology.cpus[1 % topology.cpus.count].physicalID
        return Layout(target: target, sender: topology.physicalCPUs.first { $0 != target })
    }
}

/// Knobs shared by every figure.
struct Settings: Sendable {
    let warmup: Int
    let timeoutNs: Int64
    let settleNs: Int64
}

/// The logical CPU our figures aim at.
private let targetCPU = 1

/// A two-CPU machine whose CPU 0 is taken offline, so that only logical CPU 1 runs (pinned to `layout.target`).
private func makeMachine(pollTime: Duration, timeoutNs: Int64, ack: SharedWord64) throws(BenchFailure) -> Machine {
    let configuration = Machine.Configuration(
        initiallyOnline: 2, pollTime: pollTime, responseTimeout: .nanoseconds(timeoutNs),
        interruptHandler: { _, interruption in
            if interruption == .emergencySignal { ack.bump() }   // Release: partner of cpr_wait_change's acquire.
        })
    do {
        let machine = try Machine(cpus: 2, configuration: configuration)
        try machine.offline(0)
        return machine
    } catch {
        throw BenchFailure("machine: \(error)")
    }
}

/// Sends one emergency signal to CPU 1 and spins until its interrupt handler acknowledged it. Returns the round trip.
@inline(__always)
private func emergencyRoundTrip(_ machine: Machine, ack: SharedWord64, timeoutNs: Int64) throws(BenchFailure) -> Int64 {
    let before = ack.value
    let t0 = cpr_now_ns()
    let result: SIGPResult
    do { result = try machine.sigp(targetCPU, .emergencySignal) } catch { throw BenchFailure("sigp: \(error)") }
    let waited = cpr_wait_change(ack.pointer, before, timeoutNs)
    let t1 = cpr_now_ns()
    guard result.conditionCode == .accepted else { throw BenchFailure("sigp answered \(result)") }
    guard waited == 0 else {
        throw BenchFailure("no acknowledgement of the emergency signal within \(timeoutNs / 1_000_000) ms")
    }
    return t1 - t0
}

// MARK: a. SIGP to a polling CPU vs cache-line ping-pong

/// Ours: CPU 1 polls its mailbox (poll time 10 s); a sample is sigp(EMERGENCY_SIGNAL) until the interrupt handler's
/// acknowledgement is seen by the sender (a round trip), each starting with the CPU back in `.polling`.
func oursPolling(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let ack = SharedWord64()
    defer { ack.deallocate() }
    let machine = try makeMachine(pollTime: .seconds(10), timeoutNs: settings.timeoutNs, ack: ack)
    defer { machine.shutdown() }
    let samples = SampleBlock(out)
    try PinnedThread.run(pinnedTo: layout.sender) { () throws(BenchFailure) in
        for i in 0..<(settings.warmup + samples.count) {
            try spin(until: "logical CPU 1 polling", timeoutNs: settings.timeoutNs) {
                (try? machine.runState(of: targetCPU)) == .polling
            }
            let ns = try emergencyRoundTrip(machine, ack: ack, timeoutNs: settings.timeoutNs)
            if i >= settings.warmup { samples[i - settings.warmup] = ns }
        }
    }
}

func peerPingPong(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let samples = SampleBlock(out)
    try PinnedThread.run(pinnedTo: layout.sender) { () throws(BenchFailure) in
        let rc = cpr_pingpong(Int32(layout.target), samples.base, samples.count, settings.warmup, settings.timeoutNs)
        if rc != 0 { throw .errno("cache-line ping-pong", rc) }
    }
}

// MARK: b. SIGP to a running CPU vs raw tgkill + handler

/// Ours: CPU 1 runs a cross-call that spins in user code (run state `.running`); a sample is one
/// sigp(EMERGENCY_SIGNAL), which returns once the target's signal handler acknowledged (the round trip).
func oursRunning(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let ack = SharedWord64()
    let started = SharedFlag()
    let stop = SharedFlag()
    let machine = try makeMachine(pollTime: .microseconds(20), timeoutNs: settings.timeoutNs, ack: ack)
    let call: CrossCall
    do {
        call = try machine.submit(on: targetCPU) {
            started.set()
            cpr_busy_until(stop.pointer, 120_000_000_000)
        }
    } catch {
        machine.shutdown()
        throw BenchFailure("submit: \(error)")
    }
    defer {
        stop.set()
        _ = call.wait(timeout: .seconds(5))   // a call that started always finishes: the words outlive it
        machine.shutdown()
        ack.deallocate()
        started.deallocate()
        stop.deallocate()
    }
    let samples = SampleBlock(out)
    try PinnedThread.run(pinnedTo: layout.sender) { () throws(BenchFailure) in
        try spin(until: "the spinning cross-call to start", timeoutNs: settings.timeoutNs) { started.isSet }
        try spin(until: "logical CPU 1 running", timeoutNs: settings.timeoutNs) {
            (try? machine.runState(of: targetCPU)) == .running
        }
        for i in 0..<(settings.warmup + samples.count) {
            let t0 = cpr_now_ns()
            let result: SIGPResult
            do { result = try machine.sigp(targetCPU, .emergencySignal) } catch { throw BenchFailure("sigp: \(error)") }
            let t1 = cpr_now_ns()
            guard result.conditionCode == .accepted else { throw BenchFailure("sigp answered \(result)") }
            if i >= settings.warmup { samples[i - settings.warmup] = t1 - t0 }
        }
    }
}

func peerSignal(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let samples = SampleBlock(out)
    try PinnedThread.run(pinnedTo: layout.sender) { () throws(BenchFailure) in
        let rc = cpr_signal_roundtrip(Int32(layout.target), peerSignalNumber, samples.base, samples.count,
                                      settings.warmup, settings.timeoutNs)
        if rc != 0 { throw .errno("tgkill + handler round trip", rc) }
    }
}

/// The raw peer's signal: clear of the machines' SIGP signal (SIGRTMIN + 6 by default).
let peerSignalNumber: Int32 = cpr_sigrtmin() + 8

// MARK: c. SIGP waking a parked CPU vs raw futex wake

/// Ours: CPU 1 parks right away (poll time 0, run state `.idle`); a sample is sigp(EMERGENCY_SIGNAL) (a futex wake)
/// until the interrupt handler's acknowledgement, each starting with the CPU idle again and given `settleNs` to fall
/// asleep in the kernel.
func oursParked(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let ack = SharedWord64()
    defer { ack.deallocate() }
    let machine = try makeMachine(pollTime: .zero, timeoutNs: settings.timeoutNs, ack: ack)
    defer { machine.shutdown() }
    let samples = SampleBlock(out)
    try PinnedThread.run(pinnedTo: layout.sender) { () throws(BenchFailure) in
        for i in 0..<(settings.warmup + samples.count) {
            try spin(until: "logical CPU 1 idle", timeoutNs: settings.timeoutNs) {
                (try? machine.runState(of: targetCPU)) == .idle
            }
            spin(forNanoseconds: settings.settleNs)
            let ns = try emergencyRoundTrip(machine, ack: ack, timeoutNs: settings.timeoutNs)
            if i >= settings.warmup { samples[i - settings.warmup] = ns }
        }
    }
}

func peerFutex(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let samples = SampleBlock(out)
    try PinnedThread.run(pinnedTo: layout.sender) { () throws(BenchFailure) in
        let rc = cpr_futex_roundtrip(Int32(layout.target), settings.settleNs, samples.base, samples.count,
                                     settings.warmup, settings.timeoutNs)
        if rc != 0 { throw .errno("futex wake round trip", rc) }
    }
}

// MARK: d. Barrier episode, 2 threads

/// Ours: two plain threads (sender CPU and target CPU) run back-to-back SpinBarrier episodes; the sender takes the
/// clock after each, a sample is the time between two consecutive episode exits. The peers do exactly the same.
func oursBarrier(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let barrier = SpinBarrier(participants: 2)
    let measuring = barrier.makeParticipant()
    let other = barrier.makeParticipant()
    let samples = SampleBlock(out)
    let episodes = settings.warmup + samples.count
    let partner = try PinnedThread.start(pinnedTo: layout.target) {
        var participant = other
        for _ in 0..<episodes { barrier.wait(&participant) }
    }
    try PinnedThread.run(pinnedTo: layout.sender) {
        var participant = measuring
        var previous = cpr_now_ns()
        for i in 0..<episodes {
            barrier.wait(&participant)
            let now = cpr_now_ns()
            if i >= settings.warmup { samples[i - settings.warmup] = now - previous }
            previous = now
        }
    }
    try partner.join()
}

func peerBarrier(_ kind: cpr_barrier_kind_t) -> @Sendable (Layout, Settings, UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) -> Void {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let samples = SampleBlock(out)
        try PinnedThread.run(pinnedTo: layout.sender) { () throws(BenchFailure) in
            let rc = cpr_barrier_episodes(kind, Int32(layout.target), samples.base, samples.count, settings.warmup)
            if rc != 0 { throw .errno("barrier episodes", rc) }
        }
    }
}

/// One block of a sample buffer, handed to the measuring thread.
struct SampleBlock: @unchecked Sendable {
    // @unchecked: written only by the one measuring thread, read after it was joined (pthread_join orders them).
    let buffer: UnsafeMutableBufferPointer<Int64>
    init(_ buffer: UnsafeMutableBufferPointer<Int64>) { self.buffer = buffer }
    var count: Int { buffer.count }
    var base: UnsafeMutablePointer<Int64> { buffer.baseAddress! }
    @inline(__always) subscript(index: Int) -> Int64 {
        get { buffer[index] }
        nonmutating set { buffer[index] = newValue }
    }
}
