/// A cross-call in flight, returned by ``Machine/submit(on:_:)``.
public struct CrossCall: Sendable {
    let request: CrossCallRequest
    let target: Int

    /// Waits until the call has run. Returns false when it did not start within `timeout` and was cancelled
    /// (it will then never run).
    public func wait(timeout: Duration? = nil) -> Bool {
        CrossCall.wait(for: request, timeoutNanoseconds: timeout?.nanoseconds ?? -1)
    }

    static func wait(for request: CrossCallRequest, timeoutNanoseconds: Int64) -> Bool {
        let deadline = timeoutNanoseconds < 0 ? Int64.max : Shim.monotonicNanoseconds() + timeoutNanoseconds
        // A logical CPU that waits keeps serving its own cross-calls, so two CPUs calling each other cannot
        // deadlock (like a CPU that waits for a call-function IPI with interrupts enabled).
        let me = CPUCore.current
        while true {
            let slice: Int64 = me == nil ? 50_000_000 : 100_000
            let left = deadline - Shim.monotonicNanoseconds()
            if request.done.wait(timeoutNanoseconds: max(0, min(slice, left))) { return true }
            me?.serveCallsWhileWaiting()
            if Shim.monotonicNanoseconds() >= deadline {
                if request.cancel() { return false }
                // It started: it will finish; wait for it.
                while !request.done.wait(timeoutNanoseconds: 100_000) { me?.serveCallsWhileWaiting() }
                return true
            }
        }
    }
}

extension Machine {
    /// Queues `body` on a logical CPU without waiting (like `smp_call_function_single` with `wait = 0`). It runs
    /// at the CPU's next safe point, delivered with the cheapest sufficient wake-up (see ``sigp(_:_:parameter:)``).
    /// Calls accepted before the CPU goes offline still run, on that CPU, before it parks.
    /// - Throws: ``HotplugError/invalidCPU(_:)``, ``HotplugError/notOnline(cpu:)``,
    ///   ``HotplugError/notResponding(cpu:order:waitedNanoseconds:)``.
    @discardableResult
    public func submit(on cpu: Int, _ body: @escaping @Sendable () -> Void) throws(HotplugError) -> CrossCall {
        try validate(cpu)
        let request = CrossCallRequest(body)
        let core = cores[cpu]
        guard core.enqueue(request) else { throw .notOnline(cpu: cpu) }
        let delivery = core.control.post(.call)
        try core.control.deliver(delivery, order: .emergencySignal, cpu: cpu, resendNanoseconds: resendNanoseconds,
                                 timeoutNanoseconds: responseNanoseconds)
        return CrossCall(request: request, target: cpu)
    }

    /// Runs `body` on a logical CPU's thread and returns its result (like `smp_call_function_single` with
    /// `wait = 1`). Called on that CPU itself, it runs inline.
    /// - Parameters:
    ///   - cpu: the target logical CPU.
    ///   - timeout: how long the call may wait to start; nil: ``Configuration/responseTimeout``. Once started,
    ///     it runs to completion.
    ///   - body: the work; its error is rethrown to the caller.
    /// - Throws: the body's error; ``HotplugError/invalidCPU(_:)``, ``HotplugError/notOnline(cpu:)``,
    ///   ``HotplugError/timeout(cpu:operation:waitedNanoseconds:)`` (the call was cancelled and never runs).
    public func run<T: Sendable>(on cpu: Int, timeout: Duration? = nil,
                                 _ body: @escaping @Sendable () throws -> T) throws -> T {
        try validate(cpu)
        if currentCPU == cpu { return try body() }
        let box = ResultBox<T>()
        let started = Shim.monotonicNanoseconds()
        let call = try submit(on: cpu) { box.result = Result { try body() } }
        let limit = timeout?.nanoseconds ?? responseNanoseconds
        guard CrossCall.wait(for: call.request, timeoutNanoseconds: limit) else {
            throw HotplugError.timeout(cpu: cpu, operation: "cross-call",
                                       waitedNanoseconds: Shim.monotonicNanoseconds() - started)
        }
        return try box.result!.get()
    }

    /// Runs `body` on every online CPU (each on its own thread, concurrently) and returns the results by CPU id.
    /// CPUs that go offline before the call reaches them are skipped. Called on a logical CPU, that CPU's own
    /// share runs inline.
    /// - Throws: the error of the lowest-numbered CPU whose body threw (after every call finished);
    ///   ``HotplugError/timeout(cpu:operation:waitedNanoseconds:)`` when a CPU did not start its call in time.
    public func runOnEach<T: Sendable>(timeout: Duration? = nil,
                                       _ body: @escaping @Sendable (_ cpu: Int) throws -> T) throws -> [Int: T] {
        let me = currentCPU
        var pending: [(cpu: Int, call: CrossCall, box: ResultBox<T>)] = []
        for cpu in online where cpu != me {
            let box = ResultBox<T>()
            let submitted: Result<CrossCall, HotplugError> = Result { () throws(HotplugError) in
                try submit(on: cpu) { box.result = Result { try body(cpu) } }
            }
            switch submitted {
            case .success(let call): pending.append((cpu, call, box))
            case .failure(.notOnline): continue   // it went offline since the snapshot
            case .failure(let error): throw error
            }
        }
        var results: [Int: Result<T, any Error>] = [:]
        if let me { results[me] = Result { try body(me) } }
        let started = Shim.monotonicNanoseconds()
        let limit = timeout?.nanoseconds ?? responseNanoseconds
        var timedOut: Int?
        for entry in pending {
            let left = max(0, limit - (Shim.monotonicNanoseconds() - started))
            if CrossCall.wait(for: entry.call.request, timeoutNanoseconds: left) {
                results[entry.cpu] = entry.box.result!
            } else if timedOut == nil {
                timedOut = entry.cpu
            }
        }
        if let cpu = timedOut {
            throw HotplugError.timeout(cpu: cpu, operation: "cross-call",
                                       waitedNanoseconds: Shim.monotonicNanoseconds() - started)
        }
        var values: [Int: T] = [:]
        for cpu in results.keys.sorted() { values[cpu] = try results[cpu]!.get() }
        return values
    }
}

/// Carries a cross-call's result from the target CPU to the caller.
final class ResultBox<T>: @unchecked Sendable {
    // @unchecked: written once by the target before it signals the request's completion (release) and read by
    // the caller only after waiting on it (acquire).
    var result: Result<T, any Error>?
}
