/// The checks every public entry point makes on the numbers it is given, and the one conversion of a timeout.
///
/// Timeouts follow one rule (`docs/ARCHITECTURE.md`, "Layers", "Timeouts"):
/// - nil: the machine's ``Machine/Configuration/responseTimeout``;
/// - `.zero` or a negative duration: no wait, the operation is tried once (a deadline already passed);
/// - `Duration.noTimeout` (or any duration of 2^63 nanoseconds, about 292 years, or more): no limit.
///
/// The conversion saturates, so no duration traps with an overflow.
extension Duration {
    /// A timeout that never expires: pass it where an API takes a `timeout` to wait without a bound (nil means the
    /// configured default, not "no limit"). Any duration of at least 2^63 nanoseconds (about 292 years) means the
    /// same.
    public static var noTimeout: Duration { .seconds(Int64.max) }

    /// The duration in nanoseconds, saturated to `Int64.min...Int64.max` (no overflow trap).
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, overflowAdding) = whole.addingReportingOverflow(attoseconds / 1_000_000_000)
        if overflowAdding { return seconds < 0 ? .min : .max }
        return sum
    }

    /// The duration as a timeout in nanoseconds: negative is 0 (try once), `Int64.max` is no limit.
    var timeoutNanoseconds: Int64 { Swift.max(0, nanoseconds) }

    /// The duration as a CPU's poll time: ``timeoutNanoseconds``, at most `Int64.max / 2` (about 146 years, still
    /// no limit), so that the poll's deadline (now plus this) cannot overflow.
    var pollNanoseconds: Int64 { Swift.min(timeoutNanoseconds, Int64.max / 2) }
}

/// Timeout arithmetic shared by every wait.
enum Timeout {
    /// The nanoseconds of a `timeout` argument: nil is `defaultNanoseconds`; otherwise see
    /// `Duration.timeoutNanoseconds`.
    static func nanoseconds(_ timeout: Duration?, default defaultNanoseconds: Int64) -> Int64 {
        timeout?.timeoutNanoseconds ?? Swift.max(0, defaultNanoseconds)
    }

    /// The monotonic deadline `nanoseconds` after `start` (``Shim/monotonicNanoseconds()``); `Int64.max` (no
    /// deadline) when the sum does not fit or `nanoseconds` is itself `Int64.max`.
    static func deadline(after nanoseconds: Int64, from start: Int64) -> Int64 {
        guard nanoseconds < .max else { return .max }
        let (sum, overflow) = start.addingReportingOverflow(Swift.max(0, nanoseconds))
        return overflow ? .max : sum
    }
}

extension Machine {
    /// The most possible logical CPUs a machine may have (`cpus` of ``init(topology:cpus:configuration:logger:)``),
    /// as Linux's `NR_CPUS` bounds a kernel's. Ids are far below ``CPUSet/largestID``.
    public static let maximumCPUs = 4_096

    /// Whether ``shutdown()`` has completed.
    var isShutDown: Bool { state.withLock { $0.isShutDown } }

    /// Throws ``HotplugError/shutDown`` once ``shutdown()`` has completed.
    func ensureNotShutDown() throws(HotplugError) {
        if isShutDown { throw .shutDown }
    }

    /// Refuses a configuration whose numbers cannot work, before anything is created.
    static func validate(cpus: Int, configuration: Configuration) throws(HotplugError) {
        guard (1...maximumCPUs).contains(cpus) else {
            throw cpus < 1 ? .invalidConfiguration("a machine needs at least one possible CPU")
                : .invalidArgument(name: "cpus", value: "\(cpus)", valid: "1...\(maximumCPUs)")
        }
        guard configuration.resendInterval > .zero else {
            throw .invalidArgument(name: "resendInterval", value: "\(configuration.resendInterval)",
                                   valid: "a positive duration")
        }
    }
}

/// Checks an interval (the time between two runs of a periodic thread): positive, and at most `UInt32.max`
/// microseconds (about 71 minutes), the longest sleep of the thread.
/// - Throws: ``HotplugError/invalidArgument(name:value:valid:)``.
func validateInterval(_ interval: Duration, name: String = "interval") throws(HotplugError) {
    guard interval > .zero, interval <= .microseconds(UInt32.max) else {
        throw .invalidArgument(name: name, value: "\(interval)", valid: "0 < \(name) <= \(Duration.microseconds(UInt32.max))")
    }
}

extension HotplugRegistry {
    /// The state registered under `name` (built-in states included), nil when there is none.
    func state(named name: String) -> HotplugState? {
        contents.withLock { contents in contents.entries.first { $0.value.name == name }?.key }
    }
}
