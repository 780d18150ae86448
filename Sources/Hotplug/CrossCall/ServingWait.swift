/// The one way the runtime waits for another CPU: a caller that is itself a logical CPU keeps serving its own
/// cross-calls meanwhile, so that two CPUs waiting on each other cannot deadlock (like a CPU that waits for a
/// call-function IPI with interrupts enabled). Cross-calls wait for their target this way, stop_machine for its
/// participants.
enum ServingWait {
    /// How long a waiting logical CPU sleeps on the completion before it looks at its own cross-call queue again.
    /// A call to it (another CPU's cross-call, a stop_machine arrival) waits at most this long on top of its
    /// delivery; a shorter slice costs more wake-ups while the wait lasts (each one a futex timeout).
    static let servingSliceNanoseconds: Int64 = 100_000

    /// Waits until `event` is signalled or `deadline` passes; true when it was signalled.
    /// - Parameters:
    ///   - deadline: monotonic nanoseconds (``Shim/monotonicNanoseconds()``); `.max`: no deadline.
    ///   - core: the waiter's own logical CPU, nil when the waiter is not one of the machine's CPUs. Only that
    ///     CPU's calls are served: a CPU of another machine waits without serving, like a CPU busy in a long call.
    static func wait(for event: Completion, until deadline: Int64, serving core: CPUCore?) -> Bool {
        guard let core else {
            // Nothing to serve: one futex wait, which `signal()` ends at once.
            if deadline == .max { return event.wait() }
            return event.wait(timeoutNanoseconds: max(0, deadline - Shim.monotonicNanoseconds()))
        }
        while true {
            let left = deadline == .max ? servingSliceNanoseconds : deadline - Shim.monotonicNanoseconds()
            if left <= 0 { return event.isSet }
            if event.wait(timeoutNanoseconds: min(left, servingSliceNanoseconds)) { return true }
            core.serveCallsWhileWaiting()
        }
    }
}

extension Machine {
    /// The core of this machine's logical CPU the caller runs on, nil on any other thread (see ``currentCPU``).
    var currentCore: CPUCore? { CPUCore.current(in: cores, machineID: id) }
}
