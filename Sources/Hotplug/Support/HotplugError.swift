/// The typed errors of swift-hotplug.
///
/// Environmental failures (the kernel said no) and bad requests (an unknown CPU, an operation in the wrong state)
/// throw one of these. Programmer errors that cannot be reported as a value (a broken invariant inside the
/// runtime) trap with a message instead.
public enum HotplugError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The logical CPU id is not in `0..<possible`.
    case invalidCPU(Int)
    /// The logical CPU is in standby (it has no thread): configure it first.
    case notPresent(cpu: Int)
    /// The logical CPU is configured but not online.
    case notOnline(cpu: Int)
    /// The operation does not apply to the CPU's current lifecycle state (configuring a configured CPU,
    /// deconfiguring an online one, offlining a CPU stopped by a SIGP STOP, ...).
    case incorrectState(cpu: Int, state: LogicalCPUState, operation: String)
    /// The operation cannot proceed now (for example: offlining the last online CPU).
    case busy(cpu: Int, reason: String)
    /// A running CPU did not acknowledge a SIGP order's signal within the response bound (the signal was resent
    /// meanwhile). The CPU is reported check-stopped until it next reaches a safe point.
    case notResponding(cpu: Int, order: SIGPOrder, waitedNanoseconds: Int64)
    /// A CPU did not reach a safe point in time for a lifecycle operation or a cross-call; nothing was changed.
    case timeout(cpu: Int, operation: String, waitedNanoseconds: Int64)
    /// The signal cannot carry SIGP orders (a synchronous fault signal, SIGKILL, SIGSTOP, out of range, ...).
    case invalidSignal(Int32)
    /// The application already installed its own handler on this signal.
    case signalInUse(Int32)
    /// The machine was shut down.
    case shutDown
    /// A topology or machine description that cannot work (no CPUs, zero nodes, ...).
    case invalidConfiguration(String)
    /// A system call failed.
    case system(call: String, errno: Int32)
    /// A hotplug callback failed; the failure says whether the CPU went back to where it started.
    case callbackFailed(HotplugCallbackFailure)
    /// The section's range of dynamic states is full.
    case noFreeState(section: HotplugSection)
    /// A failure cannot be injected there (the callback may not fail, or no such state).
    case cannotInject(state: HotplugState, direction: HotplugDirection, reason: String)
    /// No such registered state (or instance).
    case unknownState(HotplugState)
    /// ``Tasklet/kill()`` was called from inside the tasklet itself (it would wait for itself forever).
    case taskletKillsItself

    public var description: String {
        switch self {
        case .invalidCPU(let cpu): return "invalid logical CPU id \(cpu)"
        case .notPresent(let cpu): return "logical CPU \(cpu) is not present (standby): configure it first"
        case .notOnline(let cpu): return "logical CPU \(cpu) is not online"
        case .incorrectState(let cpu, let state, let operation):
            return "cannot \(operation) logical CPU \(cpu): it is \(state)"
        case .busy(let cpu, let reason): return "logical CPU \(cpu) is busy: \(reason)"
        case .notResponding(let cpu, let order, let waited):
            return "logical CPU \(cpu) did not acknowledge SIGP \(order) within \(waited / 1_000_000) ms"
        case .timeout(let cpu, let operation, let waited):
            return "logical CPU \(cpu) did not reach a safe point for \(operation) within \(waited / 1_000_000) ms"
        case .invalidSignal(let signo): return "signal \(signo) cannot carry SIGP orders"
        case .signalInUse(let signo):
            return "signal \(signo) already has an application handler; choose another signal for SIGP"
        case .shutDown: return "the machine was shut down"
        case .invalidConfiguration(let why): return "invalid configuration: \(why)"
        case .system(let call, let errno): return "\(call) failed: \(Shim.errnoDescription(errno)) (errno \(errno))"
        case .callbackFailed(let failure): return failure.description
        case .noFreeState(let section): return "no free \(section) hotplug state: the dynamic range is full"
        case .cannotInject(let state, let direction, let reason):
            return "cannot inject a \(direction) failure at \(state): \(reason)"
        case .unknownState(let state): return "no such hotplug state (or instance): \(state)"
        case .taskletKillsItself: return "a tasklet cannot kill itself: kill() would wait for its own run to end"
        }
    }
}
