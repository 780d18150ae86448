import Synchronization

/// One logical CPU: its control block (shared with the signal handler), its cross-call queue and its thread's
/// main loop.
///
/// The thread model (docs/ARCHITECTURE.md, "Logical CPUs and their threads"):
/// ```
/// configure:  thread created -> binds to the control block, pins itself, blocks SIGP ("interrupts off")
///             -> acknowledges -> parks on its lifecycle word (run state OFFLINE)
/// online:     lifecycle ONLINE + SIGP START -> leaves the park, unblocks SIGP, acknowledges -> CPU loop
/// CPU loop:   safe point (mailbox: lifecycle, stop, restart, external call, emergency signals, cross-calls,
///             tasklets, executor jobs)
///             -> poll the mailbox briefly (POLLING) -> park on it in the kernel (IDLE)
/// offline:    lifecycle OFFLINE + mailbox bit -> at its safe point: blocks SIGP, closes and drains its
///             cross-call queue, absorbs a pending STOP, acknowledges -> parks again
/// deconfigure: lifecycle EXIT + wake -> the thread unbinds and returns; the controller joins it
/// ```
/// The thread retains this object (not the machine), so a machine can be deinitialised while CPUs exist.
final class CPUCore: @unchecked Sendable {
    // @unchecked: `control` is C memory touched only through the shim's ordered atomics; `startError` is written
    // by the CPU thread before it signals `ack` and read by the controller after waiting on `ack` (release /
    // acquire in chp_event_set / chp_event_wait); everything else is immutable or a Mutex.
    let id: Int
    let slot: Topology.CPU
    let machineID: UInt64
    let control: ControlBlock
    /// Acknowledgements of lifecycle steps, one at a time (lifecycle operations are serialised).
    let ack = Completion()
    let calls = Locked(CallQueue())
    let pollNanoseconds: Int64
    let interruptHandler: (@Sendable (Int, SIGPInterruption) -> Void)?
    /// Walks the STARTING startups on this CPU's thread, its signal still blocked, right after SIGP START (the
    /// second half of `cpu:bringup`).
    let startingHook: @Sendable (Int) -> Void
    /// Runs this CPU's tasklets (set once by the tasklet subsystem, before the thread starts).
    nonisolated(unsafe) var taskletHook: (@Sendable (Int) -> Void)?
    /// Runs the executor jobs this CPU hosts (set once by the executor subsystem, before the thread starts).
    nonisolated(unsafe) var jobHook: (@Sendable (Int) -> Void)?
    nonisolated(unsafe) var startError: HotplugError?
    /// Set by a bulk attach before SIGP START (published by the START post, read after it) and cleared by the CPU
    /// itself once passed: a CPU it started waits here, after acknowledging, until every CPU of the batch has
    /// started and the stop_machine has ended, so that the next CPU's STARTING callbacks still run with every
    /// other online CPU held.
    nonisolated(unsafe) var startHold: Completion?

    init(id: Int, slot: Topology.CPU, machineID: UInt64, pollNanoseconds: Int64,
         interruptHandler: (@Sendable (Int, SIGPInterruption) -> Void)?,
         startingHook: @escaping @Sendable (Int) -> Void) throws(HotplugError) {
        self.id = id
        self.slot = slot
        self.machineID = machineID
        self.pollNanoseconds = pollNanoseconds
        self.interruptHandler = interruptHandler
        self.startingHook = startingHook
        self.control = try ControlBlock.create()
    }

    deinit { control.destroy() }

    /// The id of the logical CPU of machine `machineID` the caller runs on, nil elsewhere: two inlined
    /// thread-local loads (the slab allocator's paths call it once per operation). The one way the runtime asks
    /// which CPU it runs on (``Machine/currentCPU`` and ``current(in:machineID:)`` are built on it).
    @inline(__always)
    static func currentID(machineID: UInt64) -> Int? {
        let cpu = Shim.currentLogicalCPU(machineID: machineID)
        return cpu >= 0 ? cpu : nil
    }

    /// The core of `cores` (the CPUs of machine `machineID`) the caller runs on, nil elsewhere.
    @inline(__always)
    static func current(in cores: [CPUCore], machineID: UInt64) -> CPUCore? {
        currentID(machineID: machineID).map { cores[$0] }
    }

    var isStoppedByOrder: Bool { !control.mailbox.isDisjoint(with: [.stopped, .stop]) }

    // MARK: The thread

    func threadMain() {
        // "hotplug/N" (as the kernel names its cpuhp/N threads): without it the thread keeps its creator's name,
        // which in a Swift task is the concurrency pool's, and profiles of a server read wrong.
        Shim.nameCurrentThread("hotplug/\(id)")
        do {
            try control.bindCurrentThread(machineID: machineID, cpu: id)
            try Shim.pin(thread: 0, to: slot.physicalID)
            try Shim.blockSIGP(true)   // interrupts stay off while offline
        } catch {
            startError = error
            control.unbindCurrentThread()
            ack.signal()
            return
        }
        control.enterOffline()   // records where it parks (the status a STOP_AND_STORE_STATUS stores)
        ack.signal()   // configured
        while true {
            if control.parkOffline() == .exit { break }
            startingHook(id)             // STARTING startups, interrupts still off
            try? Shim.blockSIGP(false)   // interrupts on; cannot fail for a valid signal
            ack.signal()   // online
            if let hold = startHold {   // a bulk attach holds it until the whole batch is up
                startHold = nil
                _ = hold.wait(spins: 0)   // park at once: the batch's other CPUs need the cores meanwhile
            }
            runOnline()
            ack.signal()   // offline (run state OFFLINE already, SIGP blocked)
        }
        control.setRunState(.none)
        control.unbindCurrentThread()
    }

    /// The CPU loop; returns when the lifecycle takes the CPU offline.
    private func runOnline() {
        while true {
            let bits = control.safePoint()
            let goingOffline = bits.contains(.lifecycle) && (control.lifecycle == .offline || control.lifecycle == .exit)
            // A STOP that meets an offline request is absorbed by going offline (an offline CPU is stopped).
            if bits.contains(.stop) && !goingOffline { control.stopHere() }   // blocks until START / RESTART
            // Interruptions taken at this safe point are handled even when the CPU goes offline right after, like
            // a dying CPU that still handles the IPIs pending on it: nothing accepted is dropped.
            if bits.contains(.restart) { interruptHandler?(id, .restart) }
            if bits.contains(.externalCall), let call = control.takeExternalCall() {
                interruptHandler?(id, .externalCall(parameter: call.parameter, source: call.source))
            }
            if bits.contains(.emergency) {
                let count = control.takeEmergencySignals()
                if let handler = interruptHandler {
                    for _ in 0..<count { handler(id, .emergencySignal) }
                }
            }
            if bits.contains(.call) { runPendingCalls() }
            if bits.contains(.tasklet) && !goingOffline { taskletHook?(id) }
            if bits.contains(.job) && !goingOffline { jobHook?(id) }
            if goingOffline {
                goOffline()
                return
            }
            control.waitForOrders(pollNanoseconds: pollNanoseconds)
        }
    }

    private func goOffline() {
        try? Shim.blockSIGP(true)   // interrupts off while dying; cannot fail for a valid signal
        // Close the queue, then run what was accepted before (like flushing the call-function queue of a dying
        // CPU): nothing accepted is ever dropped.
        let remaining = calls.withLock { queue -> [CrossCallRequest] in
            queue.accepting = false
            defer { queue.pending.removeAll() }
            return queue.pending
        }
        for request in remaining { request.execute() }
        control.absorbStop()
        control.enterOffline()
    }

    // MARK: Cross-calls

    /// Queues a request; false when the CPU does not accept calls (not online, or going offline).
    func enqueue(_ request: CrossCallRequest) -> Bool {
        calls.withLock { queue in
            guard queue.accepting else { return false }
            queue.pending.append(request)
            return true
        }
    }

    func setAcceptingCalls(_ accepting: Bool) {
        calls.withLock { $0.accepting = accepting }
    }

    /// Runs the queued cross-calls on the calling thread (the CPU's own).
    func runPendingCalls() {
        let batch = calls.withLock { queue -> [CrossCallRequest] in
            defer { queue.pending.removeAll(keepingCapacity: true) }
            return queue.pending
        }
        for request in batch { request.execute() }
    }

    /// Called by this CPU's own thread while it waits for another CPU: serves its own cross-calls so that two
    /// CPUs calling each other cannot deadlock.
    func serveCallsWhileWaiting() {
        if !control.retract(.call).isEmpty { runPendingCalls() }
    }

}

struct CallQueue {
    var accepting = false
    var pending: [CrossCallRequest] = []
}

/// One cross-call: queued on the target, run at its safe point, cancellable until it starts.
final class CrossCallRequest: @unchecked Sendable {
    // @unchecked: `work` is touched only by the one thread that wins the phase CAS (it runs it, then clears it
    // before signalling completion); the phase is an Atomic; completion is a futex event.
    enum Phase: Int { case queued = 0, running, done, cancelled }

    /// Touched only by the thread that wins the phase CAS (then nil'ed before completion is signalled).
    private nonisolated(unsafe) var work: (@Sendable () -> Void)?
    private let phase = Atomic<Int>(Phase.queued.rawValue)
    let done = Completion()

    init(_ work: @escaping @Sendable () -> Void) { self.work = work }

    func execute() {
        // Acquire: partner of the submitter's release in `cancel` (a cancelled call never runs).
        guard phase.compareExchange(expected: Phase.queued.rawValue, desired: Phase.running.rawValue,
                                    ordering: .acquiring).exchanged else { return }
        work?()
        // Drop what the closure captured while the waiter still waits: a machine captured by it is then never
        // released last on this CPU's thread (its deinit would have to take this very CPU down).
        work = nil
        phase.store(Phase.done.rawValue, ordering: .releasing)
        done.signal()   // release: partner of the waiter's acquire in Completion.wait
    }

    /// Succeeds only while the call has not started.
    func cancel() -> Bool {
        phase.compareExchange(expected: Phase.queued.rawValue, desired: Phase.cancelled.rawValue,
                              ordering: .releasing).exchanged
    }
}
