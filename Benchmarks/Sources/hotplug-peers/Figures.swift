import BenchSupport
import CPeers
import Hotplug
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where the sides run: the target (logical CPU 1 of our machines, the partner thread of a peer) and the sender (a
/// plain thread; the measuring one). They are different physical CPUs whenever there are two. The N-thread figures
/// use `cpus`: every physical CPU of the affinity mask in the order of the topology's slots (logical CPU i of a
/// machine runs on slot i % slots), so `cpus[0]` is the sender and the CPU of logical CPU 0, `cpus[1]` the target.
struct Layout: Sendable {
    let target: Int
    let sender: Int?
    let cpus: [Int]

    static func current() throws(BenchFailure) -> Layout {
        let topology: Topology
        do { topology = try Topology.current() } catch { throw BenchFailure("topology: \(error)") }
        // Logical CPU i of a machine runs on slot i % slots.
        let target = topology.cpus[1 % topology.cpus.count].physicalID
        let sender = topology.physicalCPUs.first { $0 != target }
        var cpus: [Int] = []
        for cpu in [sender].compactMap({ $0 }) + [target] + topology.cpus.map(\.physicalID) where !cpus.contains(cpu) {
            cpus.append(cpu)
        }
        return Layout(target: target, sender: sender, cpus: cpus)
    }

    /// The physical CPU of thread `index` of an N-thread figure (thread 0 measures); nil (not pinned) on a single
    /// CPU or past the CPUs of the mask.
    func cpu(_ index: Int) -> Int? {
        cpus.count >= 2 && index < cpus.count ? cpus[index] : nil
    }

    /// `cpu(0..<threads)` for the C peers (-1: not pinned).
    func cpuArray(_ threads: Int) -> [Int32] {
        (0..<threads).map { Int32(cpu($0) ?? -1) }
    }
}

/// One side of a comparison: fills a block of samples.
typealias Side = @Sendable (Layout, Settings, UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) -> Void

/// Our side of a figure with several series measured together (attach / detach): fills one block per series.
typealias MultiSide = @Sendable (Layout, Settings, [UnsafeMutableBufferPointer<Int64>]) throws(BenchFailure) -> Void

/// Knobs shared by every figure.
struct Settings: Sendable {
    let warmup: Int
    let timeoutNs: Int64
    let settleNs: Int64
    /// Operations per sample of the batch figures (tasklet throughput).
    let batchSize: Int
    /// Untimed batches before every block of the batch figures.
    let batchWarmup: Int
    /// Operations per sample of the slab figures (alloc+free pairs, objects per remote-free round).
    let slabBatch: Int
    /// The length of one window of the parked CPU time figure.
    let cpuTimeWindowNs: Int64
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

/// `Machine(cpus: cpus)` with every CPU online (default poll time) and the settings' response timeout.
func makeAllOnlineMachine(cpus: Int, timeoutNs: Int64) throws(BenchFailure) -> Machine {
    do {
        return try Machine(cpus: cpus, configuration: .init(responseTimeout: .nanoseconds(timeoutNs)))
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

// MARK: d. Barrier episode, N threads

/// Ours: `threads` plain threads, thread i pinned to `layout.cpu(i)`, run back-to-back SpinBarrier episodes; thread 0
/// takes the clock after each, a sample is the time between two consecutive episode exits. The peers do exactly the
/// same.
func oursBarrier(threads: Int) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let barrier = SpinBarrier(participants: threads)
        let participants = (0..<threads).map { _ in barrier.makeParticipant() }
        let samples = SampleBlock(out)
        let episodes = settings.warmup + samples.count
        var partners: [PinnedThread] = []
        var failure: BenchFailure?
        for index in 1..<threads {
            do throws(BenchFailure) {
                let mine = participants[index]
                partners.append(try PinnedThread.start(pinnedTo: layout.cpu(index)) {
                    var participant = mine
                    for _ in 0..<episodes { barrier.wait(&participant) }
                })
            } catch {
                // The partners already started stay parked in the barrier for good; the figure fails.
                failure = error
                break
            }
        }
        if let failure { throw failure }
        let first = participants[0]
        try PinnedThread.run(pinnedTo: layout.cpu(0)) {
            var participant = first
            var previous = cpr_now_ns()
            for i in 0..<episodes {
                barrier.wait(&participant)
                let now = cpr_now_ns()
                if i >= settings.warmup { samples[i - settings.warmup] = now - previous }
                previous = now
            }
        }
        for partner in partners { try partner.join() }
    }
}

func peerBarrier(_ kind: cpr_barrier_kind_t, threads: Int) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let samples = SampleBlock(out)
        let cpus = layout.cpuArray(threads)
        try PinnedThread.run(pinnedTo: layout.cpu(0)) { () throws(BenchFailure) in
            let rc = cpus.withUnsafeBufferPointer {
                cpr_barrier_episodes(kind, $0.baseAddress, threads, samples.base, samples.count, settings.warmup)
            }
            if rc != 0 { throw .errno("barrier episodes", rc) }
        }
    }
}

// MARK: e. stop_machine, N CPUs vs membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)

/// The body of every timed stop_machine: nothing (a global, so the timed loop creates no closure).
private let emptyStopBody: @Sendable (Int) throws -> Void = { _ in }

/// Ours: `Machine(cpus: threads)`, all online and idle (each polls its mailbox for the default 20 us, then parks);
/// a sample is one `stopMachine { _ in }` (PREPARE -> DISABLE_IRQ -> RUN on one CPU -> EXIT), back to back.
/// `onCPU`: called on logical CPU 0 itself (pinned to `layout.cpu(0)`), so the run takes the same N threads as the
/// peer's, as the kernel's stop_machine is called from a CPU. Otherwise from a plain thread pinned to
/// `layout.cpu(0)`, which it then shares with logical CPU 0 (N + 1 threads on N CPUs).
func oursStopMachine(threads: Int, onCPU: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let machine = try makeAllOnlineMachine(cpus: threads, timeoutNs: settings.timeoutNs)
        defer { machine.shutdown() }
        let samples = SampleBlock(out)
        let timeout = Duration.nanoseconds(settings.timeoutNs)
        let loop: @Sendable () throws -> Void = {
            for i in 0..<(settings.warmup + samples.count) {
                let t0 = cpr_now_ns()
                do { try machine.stopMachine(timeout: timeout, emptyStopBody) } catch {
                    throw BenchFailure("stopMachine: \(error)")
                }
                let t1 = cpr_now_ns()
                if i >= settings.warmup { samples[i - settings.warmup] = t1 - t0 }
            }
        }
        try runTimedLoop(machine, onCPU: onCPU, layout: layout, loop)
    }
}

/// Runs a timed loop on logical CPU 0 (`onCPU`) or on a plain thread pinned to `layout.cpu(0)`.
func runTimedLoop(_ machine: Machine, onCPU: Bool, layout: Layout,
                  _ loop: @escaping @Sendable () throws -> Void) throws(BenchFailure) {
    if onCPU {
        do { try machine.run(on: 0, timeout: .seconds(60), loop) } catch let failure as BenchFailure {
            throw failure
        } catch {
            throw BenchFailure("run(on: 0): \(error)")
        }
    } else {
        try PinnedThread.run(pinnedTo: layout.cpu(0)) { () throws(BenchFailure) in
            do { try loop() } catch let failure as BenchFailure { throw failure } catch { throw BenchFailure("\(error)") }
        }
    }
}

/// How long the idle membarrier partners get to fall asleep in futex_wait, once per block.
let membarrierSettleNs: Int64 = 1_000_000

/// The peer: `threads - 1` plain threads pinned to `layout.cpu(1..<threads)`, spinning in user code (`spinning`) or
/// blocked in futex_wait, and the measuring thread on `layout.cpu(0)`; a sample is one
/// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0).
func peerMembarrier(threads: Int, spinning: Bool) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let samples = SampleBlock(out)
        let cpus = layout.cpuArray(threads)
        try PinnedThread.run(pinnedTo: layout.cpu(0)) { () throws(BenchFailure) in
            let rc = cpus.withUnsafeBufferPointer {
                cpr_membarrier_rounds($0.baseAddress, threads, spinning, membarrierSettleNs, samples.base,
                                      samples.count, settings.warmup, settings.timeoutNs)
            }
            if rc != 0 { throw .errno("membarrier", rc) }
        }
    }
}

// MARK: f. attach / detach vs pthread_create + pthread_join

/// Ours: `Machine(cpus: cpus, initiallyOnline: cpus)`; a detach sample is `offline(1)` (into `blocks[0]`), an
/// attach sample `online(1)` (into `blocks[1]`), alternating back to back; called on logical CPU 0 (`onCPU`) or from a
/// plain thread pinned to `layout.cpu(0)`.
func oursAttachDetach(cpus: Int, onCPU: Bool) -> MultiSide {
    { (layout: Layout, settings: Settings, blocks: [UnsafeMutableBufferPointer<Int64>]) throws(BenchFailure) in
        let machine = try makeAllOnlineMachine(cpus: cpus, timeoutNs: settings.timeoutNs)
        defer { machine.shutdown() }
        let detach = SampleBlock(blocks[0]), attach = SampleBlock(blocks[1])
        try runTimedLoop(machine, onCPU: onCPU, layout: layout) {
            for i in 0..<(settings.warmup + detach.count) {
                let t0 = cpr_now_ns()
                do { try machine.offline(attachDetachCPU) } catch { throw BenchFailure("offline(1): \(error)") }
                let t1 = cpr_now_ns()
                do { try machine.online(attachDetachCPU) } catch { throw BenchFailure("online(1): \(error)") }
                let t2 = cpr_now_ns()
                if i >= settings.warmup {
                    detach[i - settings.warmup] = t1 - t0
                    attach[i - settings.warmup] = t2 - t1
                }
            }
        }
    }
}

/// The logical CPU taken offline and back online.
private let attachDetachCPU = 1

/// The peer: from the measuring thread on `layout.cpu(0)`, a sample is pthread_create of a thread that returns at
/// once, with default attributes (so it inherits the measuring thread's affinity and runs on its CPU), +
/// pthread_join. (Pinning it to another CPU through its attributes costs about 3x more on a 2-core VM.)
func peerThreadCreateJoin(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let samples = SampleBlock(out)
    try PinnedThread.run(pinnedTo: layout.cpu(0)) { () throws(BenchFailure) in
        let rc = cpr_thread_create_join(-1, samples.base, samples.count, settings.warmup)
        if rc != 0 { throw .errno("pthread_create + pthread_join", rc) }
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
