import Synchronization

/// One stop_machine run: every participating CPU arrives, then all go through DISABLE_IRQ -> RUN -> EXIT (Linux's
/// `multi_stop_state` without its PREPARE: arrival, below, already gathers everyone), with one barrier after
/// DISABLE_IRQ (nobody runs the body before every participant has blocked SIGP) and one after RUN (nobody leaves
/// before every body has returned). Linux also ends PREPARE and EXIT with a barrier; here the decision ends
/// PREPARE, and EXIT needs none (each participant only unblocks SIGP and counts itself finished). Two barrier
/// episodes, not four: when the participants outnumber the cores each episode is a futex wake of every one of them.
///
/// Gathering is separate from the barrier: each CPU that reaches its safe point registers its arrival and waits
/// for the controller's decision, so that a CPU that never arrives (busy in a long cross-call, no safe point) turns
/// into an abort with nothing changed instead of a barrier that never completes.
final class StopMachineRun: Sendable {
    let barrier: SpinBarrier
    let expected: Int
    let activeCPUs: CPUSet
    let body: @Sendable (Int) -> Void
    /// The machine's id: the body runs in the thread's stop_machine context (``ThreadContext``).
    let machineID: UInt64
    let arrivals = Locked(CPUSet())
    let allArrived = Completion()
    let decision = Atomic<Int>(0)   // 0 pending, 1 go, 2 abort
    let decided = Completion()
    let finished = Atomic<Int>(0)
    let allFinished = Completion()

    /// Pause iterations a participant spins in the barrier before it parks: the default while the participants
    /// fit on the physical CPUs; none when they outnumber them (a spinner would take the core from a participant
    /// still on its way, as in a bulk detach of many CPUs sharing few cores).
    let spinBudget: UInt32

    init(participants: CPUSet, active: CPUSet, machineID: UInt64, physicalCPUs: Int,
         body: @escaping @Sendable (Int) -> Void) {
        expected = participants.count
        barrier = SpinBarrier(participants: max(1, participants.count))
        spinBudget = participants.count <= max(1, physicalCPUs) ? SpinBarrier.defaultSpinBudget : 0
        activeCPUs = active
        self.machineID = machineID
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
            _ = decided.wait(spins: spinBudget == 0 ? 0 : 2_000)   // more participants than cores: a spin takes the core of the one being waited for
            // Acquire: partner of the controller's release store of the decision.
            guard decision.load(ordering: .acquiring) == 1 else { return }
        }
        var me = barrier.makeParticipant()
        // DISABLE_IRQ: interrupts off (cannot fail for a valid signal); the barrier: every participant has them off.
        try? Shim.blockSIGP(true)
        barrier.wait(&me, spinBudget: spinBudget)
        // RUN. In the stop_machine context: what would wait for a stopped CPU (a hotplug operation, another
        // stop_machine, a cross-call to another CPU) fails at once instead (two thread-local stores). The barrier:
        // every body has returned before anyone leaves.
        if activeCPUs.contains(cpu) { ThreadContext.stopMachineBody.enter(machineID: machineID) { body(cpu) } }
        barrier.wait(&me, spinBudget: spinBudget)
        // EXIT.
        try? Shim.blockSIGP(false)
        if finished.add(1, ordering: .acquiringAndReleasing).newValue == expected { allFinished.signal() }
    }
}

extension Machine {
    /// Brings every online CPU, at its next safe point, into a spinning barrier, then through (arrival as PREPARE)
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
    ///
    /// What the body may call (docs/ARCHITECTURE.md, "Rules for callbacks and bodies"): code that does not wait
    /// for another CPU, ``run(on:timeout:_:)`` on its own CPU, ``submit(on:_:)`` (the call runs after the
    /// stop_machine), ``Tasklet/schedule(on:)``, ``sigp(_:_:parameter:)``, ``withCPUsReadLocked(_:)`` (the mask is
    /// already stable: it runs at once). A hotplug operation, a registration, a nested stop_machine, and a
    /// cross-call it would wait for on another CPU (every other CPU is stopped) throw
    /// ``HotplugError/wouldDeadlock(operation:reason:)`` with ``DeadlockReason/insideStopMachine`` at once.
    /// - Parameters:
    ///   - active: the CPUs that run `body`; nil: the first online CPU. CPUs not online are ignored.
    ///   - timeout: how long the CPUs may take to arrive; nil: ``Configuration/responseTimeout``; zero or
    ///     negative: every CPU must have arrived at the first look; `Duration.noTimeout`: no limit.
    ///   - body: runs with every online CPU stopped; receives the CPU it runs on. It cannot throw (see the form
    ///     with a throwing body).
    /// - Throws: ``HotplugError/timeout(cpu:operation:waitedNanoseconds:)`` with ``HotplugOperation/stopMachine``
    ///   (the body ran nowhere); ``HotplugError/notResponding(cpu:order:waitedNanoseconds:)`` when the first
    ///   online CPU, which coordinates a run called from outside the machine's CPUs, was not reached;
    ///   ``HotplugError/wouldDeadlock(operation:reason:)`` with ``HotplugOperation/stopMachine`` when called from a
    ///   stop_machine body, a hotplug callback or a CPU going offline; ``HotplugError/shutDown`` (the body ran
    ///   nowhere).
    public func stopMachine(active: CPUSet? = nil, timeout: Duration? = nil,
                            _ body: @escaping @Sendable (_ cpu: Int) -> Void) throws(HotplugError) {
        try ensureNotShutDown()
        try refuseReentry(.stopMachine)
        try hotplugLock.withReadLock { () throws(HotplugError) in
            try stopMachineLocked(active: active, timeout: timeout, body)
        }
    }

    /// ``stopMachine(active:timeout:_:)`` with a body that throws: every active CPU's body runs to its end, then
    /// the error of the lowest-numbered CPU whose body threw comes out unchanged (as Linux's `stop_machine`
    /// returns one error).
    /// - Throws: the body's error; the ``HotplugError``s of the form with a body that cannot throw.
    public func stopMachine(active: CPUSet? = nil, timeout: Duration? = nil,
                            _ body: @escaping @Sendable (_ cpu: Int) throws -> Void) throws {
        try ensureNotShutDown()
        try refuseReentry(.stopMachine)
        try hotplugLock.withReadLock { () throws in
            try stopMachineLocked(active: active, timeout: timeout, body)
        }
    }

    /// stop_machine with a throwing body, over the current online CPUs; the caller keeps the online mask stable.
    /// Throws the lowest-numbered failing CPU's error unchanged, or a ``HotplugError``.
    func stopMachineLocked(active: CPUSet?, timeout: Duration?, anywhere: Bool = false,
                           _ body: @escaping @Sendable (Int) throws -> Void) throws {
        let failures = Locked([Int: any Error]())
        try stopMachineLocked(active: active, timeout: timeout, anywhere: anywhere) { cpu in
            do { try body(cpu) } catch { failures.withLock { $0[cpu] = error } }
        }
        if let first = failures.withLock({ $0.min { $0.key < $1.key } }) { throw first.value }
    }

    /// stop_machine over the current online CPUs; the caller keeps the online mask stable (read or write lock).
    ///
    /// A caller that is not one of this machine's CPUs hands the run to the first online CPU, which takes part
    /// inline: an outside controller would compete with the participants for their cores and sleep through
    /// futex wake-ups (measured: 3-5 us coordinated by a CPU, about 200 us by an outside thread, 2 cores).
    ///
    /// From outside, when every online CPU that runs no body is idle, the caller coordinates itself instead: it
    /// claims them (one CAS each; see `stopMachineSerialised`) and nobody is woken to coordinate. With `anywhere`
    /// (the machine's own bodies, which may run on any thread: `cpu:bringup`), an `active: nil` body then runs
    /// right here, on the calling thread, with every online CPU claimed: no CPU is woken at all.
    func stopMachineLocked(active: CPUSet?, timeout: Duration?, anywhere: Bool = false,
                           _ body: @escaping @Sendable (Int) -> Void) throws(HotplugError) {
        try stopMachineSerial.withLock { () throws(HotplugError) in
            guard currentCPU == nil, let coordinator = online.first(where: { _ in true }) else {
                return try stopMachineSerialised(active: active, timeout: timeout, body)
            }
            let inline = anywhere && active == nil
            let runners = inline ? CPUSet() : active.map { CPUSet($0.filter { online.contains($0) }) } ?? [coordinator]
            if let claimed = claimAll(besides: runners) {
                return try stopMachineSerialised(active: inline ? [] : active, timeout: timeout, claimed: claimed,
                                                 inlineCPU: inline ? coordinator : nil, body)
            }
            // The run's own errors come back as a value, so a timeout thrown by `run` is the hand-over's.
            let outcome: Result<Void, HotplugError>
            do throws(HotplugError) {
                // Strong: shutdown may run from deinit, where an unowned read traps; the call drops it before
                // completing.
                outcome = try run(on: coordinator, timeout: timeout) { [self] in
                    Result { () throws(HotplugError) in try stopMachineSerialised(active: active, timeout: timeout, body) }
                }
            } catch .timeout(_, _, let waited) {
                // The coordinator itself did not reach a safe point in time: nothing started.
                throw .timeout(cpu: coordinator, operation: .stopMachine, waitedNanoseconds: waited)
            }
            try outcome.get()
        }
    }

    /// Claims every online CPU outside `runners` (see `stopMachineSerialised`); nil, with nothing claimed, when
    /// one of them is not idle.
    private func claimAll(besides runners: CPUSet) -> CPUSet? {
        var claimed = CPUSet()
        for cpu in online where !runners.contains(cpu) {
            guard cores[cpu].control.claimIdle() else {
                for held in claimed { cores[held].control.releaseClaim() }
                return nil
            }
            claimed.insert(cpu)
        }
        return claimed
    }

    /// The run itself; the caller holds `stopMachineSerial`. `claimed`: CPUs the caller has claimed already (the
    /// run releases them); `inlineCPU`: the body runs on the calling thread, as that CPU's, with every online CPU
    /// claimed.
    private func stopMachineSerialised(active: CPUSet?, timeout: Duration?, claimed preclaimed: CPUSet? = nil,
                                       inlineCPU: Int? = nil,
                                       _ body: @escaping @Sendable (Int) -> Void) throws(HotplugError) {
        let online = self.online
        guard let first = online.first(where: { _ in true }) else { return }
        let runners = active.map { CPUSet($0.filter { online.contains($0) }) } ?? [first]
        let me = currentCPU.flatMap { online.contains($0) ? $0 : nil }
        // Idle CPUs that run no body are claimed where they park instead of being woken (docs/ARCHITECTURE.md,
        // "stop_machine and the barrier"): one CAS each, and they count as stopped. A claimed CPU sits in its idle
        // wait at a safe point, between two jobs or tasklets, holding no lock; whatever is posted to it meanwhile
        // stays pending until the claim is released, after every participant has left the barrier.
        var claimed = preclaimed ?? CPUSet()
        if preclaimed == nil {
            for cpu in online where cpu != me && !runners.contains(cpu) && cores[cpu].control.claimIdle() {
                claimed.insert(cpu)
            }
        }
        defer { for cpu in claimed { cores[cpu].control.releaseClaim() } }
        if let inlineCPU {
            ThreadContext.stopMachineBody.enter(machineID: id) { body(inlineCPU) }
            return
        }
        let participants = CPUSet(online.filter { !claimed.contains($0) })
        // Every online CPU claimed and none to run a body (an active set with no online CPU, called from outside):
        // the body runs nowhere, and every CPU was held meanwhile.
        if participants.isEmpty { return }
        let run = StopMachineRun(participants: participants, active: runners, machineID: id,
                                 physicalCPUs: physicalCPUCount, body: body)
        let waiter = currentCore
        let started = Shim.monotonicNanoseconds()
        let limit = Timeout.nanoseconds(timeout, default: responseNanoseconds)
        var calls: [CrossCall] = []
        var refused: Int?
        for cpu in participants where cpu != me {
            do throws(HotplugError) {
                calls.append(try submit(on: cpu) { run.participate(cpu) })
            } catch {
                refused = cpu
                break
            }
        }
        if let me { run.arrive(me) }
        let deadline = Timeout.deadline(after: limit, from: started)
        let arrived = refused == nil && ServingWait.wait(for: run.allArrived, until: deadline, serving: waiter)
        run.decision.store(arrived ? 1 : 2, ordering: .releasing)   // release: partner of participate's acquire
        run.decided.signal()
        guard arrived else {
            for call in calls { _ = call.request.cancel() }   // those that never started never will
            let missing = participants.first { cpu in !run.arrivals.withLock { $0.contains(cpu) } } ?? first
            throw .timeout(cpu: refused ?? missing, operation: .stopMachine,
                           waitedNanoseconds: Shim.monotonicNanoseconds() - started)
        }
        if let me { run.participate(me, arriving: false) }
        _ = ServingWait.wait(for: run.allFinished, until: .max, serving: waiter)
    }

    /// Runs `body` on one CPU with its SIGP signal blocked, the others undisturbed (Linux's `stop_one_cpu`).
    /// - Parameters:
    ///   - timeout: how long the call may wait to start, as for ``run(on:timeout:_:)``.
    ///   - body: the work; it cannot throw (see the form with a throwing body).
    /// - Throws: the errors of ``run(on:timeout:_:)``: a timeout names ``HotplugOperation/crossCall``.
    public func stopOne<T: Sendable>(_ cpu: Int, timeout: Duration? = nil,
                                     _ body: @escaping @Sendable () -> T) throws(HotplugError) -> T {
        try run(on: cpu, timeout: timeout) { () -> Result<T, HotplugError> in
            do throws(HotplugError) { try Shim.blockSIGP(true) } catch { return .failure(error) }
            defer { try? Shim.blockSIGP(false) }
            return .success(body())
        }.get()
    }

    /// ``stopOne(_:timeout:_:)`` with a body that throws: the body's error comes out unchanged.
    /// - Throws: the body's error; the ``HotplugError``s of the form with a body that cannot throw.
    public func stopOne<T: Sendable>(_ cpu: Int, timeout: Duration? = nil,
                                     _ body: @escaping @Sendable () throws -> T) throws -> T {
        try stopOne(cpu, timeout: timeout) { () -> Result<T, any Error> in Result { try body() } }.get()
    }
}
