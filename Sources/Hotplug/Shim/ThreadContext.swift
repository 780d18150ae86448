import CHotplug

/// What the calling thread runs inside, for one machine: a hotplug callback, a stop_machine body. Calls that would
/// wait for the thread itself (an attach from a callback, a stop_machine inside a stop_machine) read it and fail
/// at once with ``HotplugError/wouldDeadlock(operation:reason:)`` (docs/ARCHITECTURE.md, "Rules for callbacks and
/// bodies").
///
/// Kept in a thread-local of the C shim (`chp_thread_context`), written only by the thread itself around the
/// callbacks and bodies the runtime runs (cold paths: the hotplug walk, a stop_machine's RUN step, a cross-call
/// made from inside one); nothing is written on the paths of ordinary cross-calls and tasklets.
struct ThreadContext: OptionSet, Sendable {
    let rawValue: UInt32

    /// A hotplug callback of the machine runs on this thread (any section, or a cross-call it waits for).
    static let hotplugCallback = ThreadContext(rawValue: 1 << 0)
    /// A stop_machine body of the machine runs on this thread (or a STARTING walk, which every other online CPU
    /// waits for in stop_machine's barrier).
    static let stopMachineBody = ThreadContext(rawValue: 1 << 1)

    /// The calling thread's context for machine `machineID`; empty when it runs inside nothing of that machine.
    @inline(__always)
    static func current(machineID: UInt64) -> ThreadContext {
        ThreadContext(rawValue: chp_context_flags(machineID))
    }

    /// Runs `body` with `self` added to the calling thread's context for machine `machineID`, then restores the
    /// context it had (also when `body` throws). A thread in another machine's context leaves it meanwhile: the
    /// thread-local holds one machine at a time.
    func enter<T, E: Error>(machineID: UInt64, _ body: () throws(E) -> T) throws(E) -> T {
        let saved = chp_context_get()
        let inherited = saved.machine == machineID ? saved.flags : 0
        chp_context_set(chp_context_t(machine: machineID, flags: inherited | rawValue))
        defer { chp_context_set(saved) }
        return try body()
    }
}
