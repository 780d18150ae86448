/// A cross-call in flight, returned by ``Machine/submit(on:_:)``.
public struct CrossCall: Sendable {
    let request: CrossCallRequest
    let target: Int
    /// The machine's CPUs and id, so that a waiter that is one of them serves its own calls.
    let cores: [CPUCore]
    let machineID: UInt64
    /// The machine's response timeout, the default of ``wait(timeout:)``.
    let defaultTimeout: Int64

    /// Waits until the call has run. Returns false when it did not start within `timeout` and was cancelled
    /// (it will then never run). A logical CPU of the same machine keeps serving its own cross-calls meanwhile.
    /// - Parameter timeout: how long the call may wait to start: nil: the machine's
    ///   ``Machine/Configuration/responseTimeout``; zero or negative: it must have started already (one look);
    ///   `Duration.noTimeout`: no limit. Once started, it is waited for to its end.
    ///
    /// In a stop_machine body (or a STARTING callback), a call to another CPU cannot start before the stop_machine
    /// ends, which waits for the caller: it is cancelled at once and `wait` returns false (docs/ARCHITECTURE.md,
    /// "Rules for callbacks and bodies").
    public func wait(timeout: Duration? = nil) -> Bool {
        let me = CPUCore.currentID(machineID: machineID)
        if me != target, ThreadContext.current(machineID: machineID).contains(.stopMachineBody), request.cancel() {
            return false
        }
        return CrossCall.wait(for: request, timeoutNanoseconds: Timeout.nanoseconds(timeout, default: defaultTimeout),
                              serving: me.map { cores[$0] })
    }

    /// Waits for `request` until `timeoutNanoseconds` (`Int64.max`: no limit; zero or negative: one look) has
    /// passed, then cancels it; a call that started by then is waited for to the end. False when it was cancelled
    /// (it never runs).
    static func wait(for request: CrossCallRequest, timeoutNanoseconds: Int64, serving core: CPUCore?) -> Bool {
        let deadline = Timeout.deadline(after: timeoutNanoseconds, from: Shim.monotonicNanoseconds())
        if ServingWait.wait(for: request.done, until: deadline, serving: core) { return true }
        if request.cancel() { return false }
        // It started: it will finish; wait for it.
        return ServingWait.wait(for: request.done, until: .max, serving: core)
    }
}

extension Machine {
    /// Queues `body` on a logical CPU without waiting (like `smp_call_function_single` with `wait = 0`). It runs
    /// at the CPU's next safe point, delivered with the cheapest sufficient wake-up (see ``sigp(_:_:parameter:)``).
    /// Calls accepted before the CPU goes offline still run, on that CPU, before it parks.
    ///
    /// From a stop_machine body the call is posted without a signal (every other CPU waits in the barrier with its
    /// signal blocked and would not acknowledge one): it runs at the target's first safe point after the
    /// stop_machine.
    /// - Throws: ``HotplugError/invalidCPU(_:)``, ``HotplugError/notOnline(cpu:)``,
    ///   ``HotplugError/notResponding(cpu:order:waitedNanoseconds:)``, ``HotplugError/shutDown``.
    @discardableResult
    public func submit(on cpu: Int, _ body: @escaping @Sendable () -> Void) throws(HotplugError) -> CrossCall {
        try validate(cpu)
        let request = CrossCallRequest(body)
        let core = cores[cpu]
        // Shut down is looked at only when the call is refused: the accepted path takes no lock for it.
        guard core.enqueue(request) else { throw isShutDown ? .shutDown : .notOnline(cpu: cpu) }
        if ThreadContext.current(machineID: id).contains(.stopMachineBody) {
            core.control.postAndWakeIfIdle(.call)   // taken at its safe point after the barrier
        } else {
            let delivery = core.control.post(.call)
            try core.control.deliver(delivery, order: .emergencySignal, cpu: cpu, resendNanoseconds: resendNanoseconds,
                                     timeoutNanoseconds: responseNanoseconds)
        }
        return CrossCall(request: request, target: cpu, cores: cores, machineID: id, defaultTimeout: responseNanoseconds)
    }

    /// Runs `body` on a logical CPU's thread and returns its result (like `smp_call_function_single` with
    /// `wait = 1`). Called on that CPU itself, it runs inline. While the caller waits, a caller that is one of this
    /// machine's CPUs keeps serving its own cross-calls.
    ///
    /// Called from a hotplug callback, `body` runs in the callback's context: the operation in progress waits for
    /// it too, so what `body` calls is refused as it would be in the callback. Called from a stop_machine body for
    /// another CPU, it fails at once: that CPU is stopped until the body returns (docs/ARCHITECTURE.md, "Rules for
    /// callbacks and bodies").
    /// - Parameters:
    ///   - cpu: the target logical CPU.
    ///   - timeout: how long the call may wait to start; nil: ``Configuration/responseTimeout``; zero or
    ///     negative: it must start at the first look; `Duration.noTimeout`: no limit. Once started, it runs to
    ///     completion.
    ///   - body: the work; it cannot throw (see the form with a throwing body).
    /// - Throws: ``HotplugError/invalidCPU(_:)``, ``HotplugError/notOnline(cpu:)``,
    ///   ``HotplugError/notResponding(cpu:order:waitedNanoseconds:)``, ``HotplugError/timeout(cpu:operation:waitedNanoseconds:)``
    ///   with ``HotplugOperation/crossCall`` (the call was cancelled and never runs), ``HotplugError/shutDown``;
    ///   ``HotplugError/wouldDeadlock(operation:reason:)`` with ``DeadlockReason/insideStopMachine`` for another CPU
    ///   from a stop_machine body.
    public func run<T: Sendable>(on cpu: Int, timeout: Duration? = nil,
                                 _ body: @escaping @Sendable () -> T) throws(HotplugError) -> T {
        try validate(cpu)
        if currentCPU == cpu { return body() }
        let context = ThreadContext.current(machineID: id)
        if context.contains(.stopMachineBody) { throw .wouldDeadlock(operation: .crossCall, reason: .insideStopMachine) }
        let box = ResultBox<T>()
        let started = Shim.monotonicNanoseconds()
        let call = try submit(on: cpu, inContext(context) { box.value = body() })
        let limit = Timeout.nanoseconds(timeout, default: responseNanoseconds)
        guard CrossCall.wait(for: call.request, timeoutNanoseconds: limit, serving: currentCore) else {
            throw .timeout(cpu: cpu, operation: .crossCall, waitedNanoseconds: Shim.monotonicNanoseconds() - started)
        }
        return box.value!
    }

    /// ``run(on:timeout:_:)`` with a body that throws: the body's error comes out unchanged.
    /// - Throws: the body's error; the ``HotplugError``s of the form with a body that cannot throw.
    public func run<T: Sendable>(on cpu: Int, timeout: Duration? = nil,
                                 _ body: @escaping @Sendable () throws -> T) throws -> T {
        try run(on: cpu, timeout: timeout) { () -> Result<T, any Error> in Result { try body() } }.get()
    }

    /// Runs `body` on every online CPU (each on its own thread, concurrently) and returns the results by CPU id.
    /// CPUs that go offline before the call reaches them are skipped. Called on a logical CPU, that CPU's own
    /// share runs inline. From a hotplug callback, each share runs in the callback's context (see
    /// ``run(on:timeout:_:)``).
    /// - Parameter timeout: the time all the calls together may wait to start, as for ``run(on:timeout:_:)``.
    /// - Throws: ``HotplugError/timeout(cpu:operation:waitedNanoseconds:)`` with ``HotplugOperation/crossCall``
    ///   when a CPU did not start its call in time (the others still ran theirs);
    ///   ``HotplugError/notResponding(cpu:order:waitedNanoseconds:)``; ``HotplugError/shutDown``;
    ///   ``HotplugError/wouldDeadlock(operation:reason:)`` with ``DeadlockReason/insideStopMachine`` from a
    ///   stop_machine body (nothing ran).
    public func runOnEach<T: Sendable>(timeout: Duration? = nil,
                                       _ body: @escaping @Sendable (_ cpu: Int) -> T) throws(HotplugError) -> [Int: T] {
        let (targets, down) = state.withLock { ($0.online, $0.isShutDown) }
        if down { throw .shutDown }
        let me = currentCPU
        let context = ThreadContext.current(machineID: id)
        if context.contains(.stopMachineBody) { throw .wouldDeadlock(operation: .crossCall, reason: .insideStopMachine) }
        var pending: [(cpu: Int, call: CrossCall, box: ResultBox<T>)] = []
        for cpu in targets where cpu != me {
            let box = ResultBox<T>()
            do throws(HotplugError) {
                pending.append((cpu, try submit(on: cpu, inContext(context) { box.value = body(cpu) }), box))
            } catch .notOnline {
                continue   // it went offline since the snapshot
            }
        }
        var results: [Int: T] = [:]
        if let me { results[me] = body(me) }
        let started = Shim.monotonicNanoseconds()
        let limit = Timeout.nanoseconds(timeout, default: responseNanoseconds)
        let waiter = currentCore
        var timedOut: Int?
        for entry in pending {
            let left = limit == .max ? .max : max(0, limit - (Shim.monotonicNanoseconds() - started))
            if CrossCall.wait(for: entry.call.request, timeoutNanoseconds: left, serving: waiter) {
                results[entry.cpu] = entry.box.value!
            } else if timedOut == nil {
                timedOut = entry.cpu
            }
        }
        if let cpu = timedOut {
            throw .timeout(cpu: cpu, operation: .crossCall, waitedNanoseconds: Shim.monotonicNanoseconds() - started)
        }
        return results
    }

    /// ``runOnEach(timeout:_:)`` with a body that throws: every CPU's body runs to its end, then the error of the
    /// lowest-numbered CPU whose body threw comes out unchanged.
    /// - Throws: the body's error; the ``HotplugError``s of the form with a body that cannot throw (they come
    ///   first: no result is looked at when a CPU did not start its call).
    public func runOnEach<T: Sendable>(timeout: Duration? = nil,
                                       _ body: @escaping @Sendable (_ cpu: Int) throws -> T) throws -> [Int: T] {
        let results = try runOnEach(timeout: timeout) { cpu -> Result<T, any Error> in Result { try body(cpu) } }
        var values: [Int: T] = [:]
        for cpu in results.keys.sorted() { values[cpu] = try results[cpu]!.get() }
        return values
    }
}

extension Machine {
    /// `work` as a cross-call body that runs in `context` (the caller's, which waits for it: a hotplug callback's);
    /// `work` itself when the context is empty, so that ordinary cross-calls run exactly as before.
    private func inContext(_ context: ThreadContext,
                           _ work: @escaping @Sendable () -> Void) -> @Sendable () -> Void {
        if context.isEmpty { return work }
        let machineID = id
        return { context.enter(machineID: machineID) { () -> Void in work() } }
    }
}

/// Carries a cross-call's result from the target CPU to the caller.
final class ResultBox<T>: @unchecked Sendable {
    // @unchecked: written once by the target before it signals the request's completion (release) and read by
    // the caller only after waiting on it (acquire).
    var value: T?
}
