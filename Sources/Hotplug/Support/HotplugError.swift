/// The typed errors of swift-hotplug: every error the library itself throws is one of these.
///
/// Environmental failures (the kernel said no) and bad requests (an unknown CPU, an operation in the wrong state)
/// throw one of these. Programmer errors that cannot be reported as a value (a broken invariant inside the
/// runtime) trap with a message instead.
///
/// Bodies the library runs for the caller (``Machine/run(on:timeout:_:)``, ``Machine/runOnEach(timeout:_:)``,
/// ``Machine/stopMachine(active:timeout:_:)``, ``Machine/stopOne(_:timeout:_:)``, ``PerCPU/withSlot(of:_:)``)
/// follow one rule: the body's own error is never wrapped, it comes out unchanged, and everything the library adds
/// is a `HotplugError`. Each of these APIs has two forms: with a body that cannot throw it is
/// `throws(HotplugError)` (the compiler picks that form for a closure that does not throw), so a `catch` can
/// switch over every case; with a body that throws it is `throws`, and an error that is not a `HotplugError` is
/// the body's. Hotplug callbacks are different: their errors are reported inside
/// ``callbackFailed(_:)``, which also says whether the CPU went back to where it started.
public enum HotplugError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The logical CPU id is not in `0..<possible`.
    case invalidCPU(Int)
    /// The logical CPU is in standby (it has no thread): configure it first.
    case notPresent(cpu: Int)
    /// The logical CPU is configured but not online.
    case notOnline(cpu: Int)
    /// `operation` does not apply to the CPU's current lifecycle state (configuring a configured CPU,
    /// deconfiguring an online one).
    case incorrectState(cpu: Int, state: LogicalCPUState, operation: HotplugOperation)
    /// The logical CPU is stopped by a SIGP STOP order, so it cannot go offline: START (or RESTART) it first.
    case stoppedByOrder(cpu: Int)
    /// The operation cannot proceed now; `cpu` is the logical CPU concerned, nil when there is none.
    case busy(cpu: Int?, reason: BusyReason)
    /// A running CPU did not acknowledge a SIGP order's signal within the response bound (the signal was resent
    /// meanwhile). The CPU is reported check-stopped until it next reaches a safe point.
    case notResponding(cpu: Int, order: SIGPOrder, waitedNanoseconds: Int64)
    /// A CPU did not reach a safe point in time: a cross-call did not start (it was cancelled and never runs;
    /// `operation` is ``HotplugOperation/crossCall``), or stop_machine gave up before any CPU entered its barrier
    /// (``HotplugOperation/stopMachine``, also for an attach or detach, which run one). Nothing was changed.
    case timeout(cpu: Int, operation: HotplugOperation, waitedNanoseconds: Int64)
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

    // MARK: Calls from where they would wait for themselves
    /// `operation` was called from where it would wait for the caller itself (on the CPU it would take offline,
    /// inside a hotplug callback, inside a stop_machine body, on a CPU on its way offline), so it did nothing and
    /// failed at once instead of deadlocking. docs/ARCHITECTURE.md, "Rules for callbacks and bodies", says what
    /// may be called where.
    case wouldDeadlock(operation: HotplugOperation, reason: DeadlockReason)
    // MARK: Argument validation
    /// A number passed to a public entry point is out of range: `name` is the parameter (or configuration
    /// field), `value` what was passed, `valid` the accepted range.
    case invalidArgument(name: String, value: String, valid: String)
    /// A hotplug state of this name is already registered (as `existing`): names identify states in logs and
    /// errors, so each is registered once.
    case duplicateStateName(String, existing: HotplugState)

    public var description: String {
        switch self {
        case .invalidCPU(let cpu): return "invalid logical CPU id \(cpu)"
        case .notPresent(let cpu): return "logical CPU \(cpu) is not present (standby): configure it first"
        case .notOnline(let cpu): return "logical CPU \(cpu) is not online"
        case .incorrectState(let cpu, let state, let operation):
            return "cannot \(operation) logical CPU \(cpu): it is \(state)"
        case .stoppedByOrder(let cpu):
            return "cannot offline logical CPU \(cpu): it is stopped by a SIGP order; START it first"
        case .busy(let cpu?, let reason): return "logical CPU \(cpu) is busy: \(reason)"
        case .busy(nil, let reason): return "busy: \(reason)"
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
        case .wouldDeadlock(let operation, let reason):
            return "\(operation) would deadlock: \(reason); nothing was done"
        case .invalidArgument(let name, let value, let valid): return "invalid \(name) \(value): valid is \(valid)"
        case .duplicateStateName(let name, let existing):
            return "a hotplug state named \"\(name)\" is already registered (\(existing))"
        }
    }
}

/// The operation an error names (``HotplugError/incorrectState(cpu:state:operation:)``,
/// ``HotplugError/timeout(cpu:operation:waitedNanoseconds:)``, ``Follower/Event/failed(cpu:operation:error:)``).
public enum HotplugOperation: String, Sendable, CaseIterable, CustomStringConvertible {
    /// ``Machine/configure(_:)``: standby to parked.
    case configure
    /// ``Machine/deconfigure(_:)``: parked to standby.
    case deconfigure
    /// ``Machine/online(_:)``: the attach, parked to online.
    case online
    /// ``Machine/offline(_:)``: the detach, online to parked.
    case offline
    /// A cross-call: ``Machine/run(on:timeout:_:)``, ``Machine/runOnEach(timeout:_:)``,
    /// ``Machine/stopOne(_:timeout:_:)``, and the ONLINE hotplug callbacks that run on their CPU.
    case crossCall = "cross-call"
    /// ``Machine/stopMachine(active:timeout:_:)``, and the attach and detach steps that run inside one.
    case stopMachine = "stop_machine"
    /// ``Machine/Hotplug-swift.struct/register(_:section:invokeOnExisting:startup:teardown:)`` and the other
    /// changes of the state table: ``Machine/Hotplug-swift.struct/registerMultiInstance(_:section:startup:teardown:)``,
    /// ``Machine/Hotplug-swift.struct/unregister(_:invokeTeardown:)``,
    /// ``Machine/Hotplug-swift.struct/addInstance(_:to:invoke:)``,
    /// ``Machine/Hotplug-swift.struct/removeInstance(_:from:invoke:)``.
    case registration
    // MARK: Tasklet drain
    /// ``Machine/drainTasklets(timeout:)``.
    case taskletDrain = "tasklet drain"

    public var description: String { rawValue }
}

/// Why an operation cannot proceed now (``HotplugError/busy(cpu:reason:)``).
public enum BusyReason: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Hotplug is disabled (``Machine/Hotplug-swift.struct/disable()``): attach and detach wait for the matching
    /// ``Machine/Hotplug-swift.struct/enable()``.
    case hotplugDisabled = "hotplug is disabled"
    /// The CPU is the machine's last online CPU (for a partition: its last processor), which never goes offline.
    case lastOnlineCPU = "it is the last online CPU"
    /// The thread the call would start already runs (``Balancer/start(interval:onOutcome:)``).
    case alreadyRunning = "it already runs"

    public var description: String { rawValue }
}

/// Why a call would have waited for its caller (``HotplugError/wouldDeadlock(operation:reason:)``).
public enum DeadlockReason: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Called on the logical CPU it would take offline or deconfigure: the operation waits until that CPU parks,
    /// which it can do only once the caller's code has returned. Call it from another CPU or thread (for example
    /// with ``Machine/submit(on:_:)`` to another CPU).
    case calledOnTargetCPU = "it runs on the CPU it would take down"
    /// Called from a hotplug callback (or from a cross-call that a callback waits for): the operation in progress
    /// holds the operations lock and the hotplug write lock, and waits for the callback.
    case insideHotplugCallback = "it runs inside a hotplug callback"
    /// Called from a stop_machine body (or a STARTING callback of an attach, which runs inside one): every other
    /// online CPU waits in the barrier with its signal blocked until the body returns.
    case insideStopMachine = "it runs inside a stop_machine body"
    /// Called on a CPU on its way offline (running the cross-calls it accepted before it parks): the detach taking
    /// it down holds the locks and waits for it to park.
    case callerGoingOffline = "it runs on a CPU that is going offline"
    // MARK: Tasklet drain
    /// Called on one of the machine's logical CPUs (in a tasklet or a cross-call): the CPU runs tasklets only at
    /// its safe point, after the caller's code returns, so a wait for every queued tasklet would wait for the
    /// caller. Drain from a thread that is not one of the machine's CPUs.
    case onLogicalCPU = "it runs on a logical CPU, which runs tasklets only once the caller returns"

    public var description: String { rawValue }
}
