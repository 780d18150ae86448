import Synchronization

/// The errors of a stop_machine body, by CPU.
public struct StopMachineError: Error, CustomStringConvertible {
    /// Each CPU whose body threw, with its error.
    public let failures: [Int: any Error]
    public var description: String {
        "stop_machine: " + failures.keys.sorted().map { "CPU \($0): \(failures[$0]!)" }.joined(separator: "; ")
    }
}

/// The states of a stop_machine run (Linux's `multi_stop_state`).
public enum StopMachineState: Int, Sendable, Comparable {
    case none = 0, prepare, disableInterrupts, run, exit
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// One stop_machine run: every participating CPU arrives, then all go through PREPARE -> DISABLE_IRQ -> RUN -> EXIT
/// on the shim's barrier, the last to acknowledge a state advancing to the next.
///
/// Gathering is separate from the barrier: each CPU that reaches its safe point registers its arrival and waits
/// for the controller's decision, so that a CPU that never arrives (busy in a long cross-call, no safe point) turns
/// into an abort with nothing changed instead of a barrier that never completes.
final class StopMachineRun: Sendable {
    let barrier: SpinBarrier
    let expected: Int
    let activeCPUs: CPUSet
    let body: @Sendable (Int) throws -> Void
    let arrivals = Locked(CPUSet())
    let allArrived = Completion()
    let decision = Atomic<Int>(0)   // 0 pending, 1 go, 2 abort
    let decided = Completion()
    let state = Atomic<Int>(StopMachineState.none.rawValue)
    let failures = Locked([Int: any Error]())
    let finished = Atomic<Int>(0)
    let allFinished = Completion()

    init(participants: CPUSet, active: CPUSet, body: @escaping @Sendable (Int) throws -> Void) {
        expected = participants.count
        barrier = SpinBarrier(participants: max(1, participants.count))
        activeCPUs = active
        self.body = body
    }

    /// Runs on each participating CPU (at its safe point, or inline on the caller's own CPU after the decision).
    /// Registers `cpu` as arrived.
    func arrive(_ cpu: Int) {
        let count = arrivals.withLock { set -> Int in set.insert(cpu); return set.count }
        if count == expected { allArrived.signal() }
    }

    func participate(_ cpu: Int, arriving: Bool = true) {
        if arriving {
            arrive(cpu)
            _ = decided.wait()
            // Acquire: partner of the controller's release store of the decision.
            guard decision.load(ordering: .acquiring) == 1 else { return }
        }
        var me = barrier.makeParticipant()
        for next in [StopMachineState.prepare, .disableInterrupts, .run, .exit] {
            switch next {
            case .disableInterrupts: try? Shim.blockSIGP(true)   // interrupts off: cannot fail for a valid signal
            case .run:
                if activeCPUs.contains(cpu) {
                    do { try body(cpu) } catch { failures.withLock { $0[cpu] = error } }
                }
            case .exit: try? Shim.blockSIGP(false)
            default: break
            }
            // The last CPU to acknowledge this state advances the run to the next one.
            if barrier.wait(&me) { state.store(next.rawValue, ordering: .releasing) }
        }
        if finished.add(1, ordering: .acquiringAndReleasing).newValue == expected { allFinished.signal() }
    }
}

extension Machine {
    /// Brings every online CPU, at its next safe point, into a spinning barrier, then through PREPARE ->
    /// DISABLE_IRQ (the SIGP signal blocked: "interrupts off") -> RUN (`body` runs on the active CPUs, or on the
    /// first online CPU when `active` is nil) -> EXIT. While the body runs, every other online CPU spins (then
    /// parks, if it takes long) in the barrier with its signal blocked. Calls are serialised. The online mask is
    /// stable for the whole call.
    ///
    /// A CPU busy in a long cross-call has no safe point and delays stop_machine, as a non-preemptible section
    /// delays the kernel's; after `timeout` the run is abandoned before any CPU entered the barrier, so nothing
    /// changed, and ``HotplugError/timeout(cpu:operation:waitedNanoseconds:)`` names a CPU that did not arrive.
    ///
    /// Called on a logical CPU, that CPU takes part inline.
    /// - Parameters:
    ///   - active: the CPUs that run `body`; nil: the first online CPU. CPUs not online are ignored.
    ///   - timeout: how long the CPUs may take to arrive; nil: ``Configuration/responseTimeout``.
    ///   - body: runs with every online CPU stopped; receives the CPU it runs on.
    /// - Throws: ``StopMachineError`` with every body's error; ``HotplugError/timeout(cpu:operation:waitedNanoseconds:)``.
    public func stopMachine(active: CPUSet? = nil, timeout: Duration? = nil,
                            _ body: @escaping @Sendable (_ cpu: Int) throws -> Void) throws {
        try hotplugLock.withReadLock { () throws in
            try stopMachineLocked(active: active, timeout: timeout, body)
        }
    }

    /// stop_machine over the current online CPUs; the caller keeps the online mask stable (read or write lock).
    ///
    /// A caller that is not one of this machine's CPUs hands the run to the first online CPU, which takes part
    /// inline: an outside controller would compete with the participants for their cores and sleep through
    /// futex wake-ups (measured: 3-5 us coordinated by a CPU, about 200 us by an outside thread, 2 cores).
    func stopMachineLocked(active: CPUSet?, timeout: Duration?,
                           _ body: @escaping @Sendable (Int) throws -> Void) throws {
        try stopMachineSerial.withLock { () throws in
            guard currentCPU == nil, let coordinator = online.first(where: { _ in true }) else {
                return try stopMachineSerialised(active: active, timeout: timeout, body)
            }
            do {
                try run(on: coordinator, timeout: timeout) { [self] in   // strong: shutdown may run from deinit, where an unowned read traps; the call drops it before completing
                    try stopMachineSerialised(active: active, timeout: timeout, body)
                }
            } catch HotplugError.timeout(let cpu, "cross-call", let waited) where cpu == coordinator {
                // The coordinator itself did not reach a safe point in time: nothing started.
                throw HotplugError.timeout(cpu: coordinator, operation: "stop_machine", waitedNanoseconds: waited)
            }
        }
    }

    /// The run itself; the caller holds `stopMachineSerial`.
    private func stopMachineSerialised(active: CPUSet?, timeout: Duration?,
                                       _ body: @escaping @Sendable (Int) throws -> Void) throws {
        do {
            let participants = online
            guard let first = participants.first(where: { _ in true }) else { return }
            let runners = active.map { CPUSet($0.filter { participants.contains($0) }) } ?? [first]
            let run = StopMachineRun(participants: participants, active: runners, body: body)
            let me = currentCPU.flatMap { participants.contains($0) ? $0 : nil }
            let started = Shim.monotonicNanoseconds()
            let limit = timeout?.nanoseconds ?? responseNanoseconds
            var calls: [CrossCall] = []
            var refused: Int?
            for cpu in participants where cpu != me {
                do {
                    calls.append(try submit(on: cpu) { run.participate(cpu) })
                } catch {
                    refused = cpu
                    break
                }
            }
            if let me { run.arrive(me) }
            let arrived = refused == nil && waitServingCalls(run.allArrived, deadline: started + limit)
            run.decision.store(arrived ? 1 : 2, ordering: .releasing)   // release: partner of participate's acquire
            run.decided.signal()
            guard arrived else {
                for call in calls { _ = call.request.cancel() }   // those that never started never will
                let missing = participants.first { cpu in !run.arrivals.withLock { $0.contains(cpu) } } ?? first
                throw HotplugError.timeout(cpu: refused ?? missing, operation: "stop_machine",
                                           waitedNanoseconds: Shim.monotonicNanoseconds() - started)
            }
            if let me { run.participate(me, arriving: false) }
            _ = waitServingCalls(run.allFinished, deadline: .max)
            let failures = run.failures.withLock { $0 }
            if !failures.isEmpty { throw StopMachineError(failures: failures) }
        }
    }

    /// Runs `body` on one CPU with its SIGP signal blocked, the others undisturbed (Linux's `stop_one_cpu`).
    /// - Throws: the body's error; the errors of ``run(on:timeout:_:)``.
    public func stopOne<T: Sendable>(_ cpu: Int, timeout: Duration? = nil,
                                     _ body: @escaping @Sendable () throws -> T) throws -> T {
        try run(on: cpu, timeout: timeout) {
            try Shim.blockSIGP(true)
            defer { try? Shim.blockSIGP(false) }
            return try body()
        }
    }

    /// Waits for `event`; a logical CPU keeps serving its own cross-calls meanwhile.
    func waitServingCalls(_ event: Completion, deadline: Int64) -> Bool {
        let me = CPUCore.current
        while true {
            let left = deadline == .max ? Int64(50_000_000) : deadline - Shim.monotonicNanoseconds()
            if left <= 0 { return event.isSet }
            if event.wait(timeoutNanoseconds: me == nil ? min(left, 50_000_000) : min(left, 100_000)) { return true }
            me?.serveCallsWhileWaiting()
        }
    }
}
