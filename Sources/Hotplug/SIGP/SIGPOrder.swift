/// A SIGP order code, numbered as on S/390. Any code can be sent; those the runtime does not model answer
/// condition code 1 with ``SIGPStatus/invalidOrder``.
public struct SIGPOrder: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Reports the CPU's status: cc 0 when there is nothing to report, else cc 1 with stopped / external call
    /// pending / check stop.
    public static let sense = SIGPOrder(rawValue: 1)
    /// An external call carrying a 32-bit parameter, handled at the target's next safe point. Only one may be
    /// pending: a second answers cc 1 with ``SIGPStatus/externalCallPending``.
    public static let externalCall = SIGPOrder(rawValue: 2)
    /// An emergency signal, handled at the target's next safe point. These queue.
    public static let emergencySignal = SIGPOrder(rawValue: 3)
    /// Resumes a CPU stopped by an order (no effect on an operating one). An offline CPU answers cc 1 with
    /// ``SIGPStatus/incorrectState`` unless the lifecycle is attaching it.
    public static let start = SIGPOrder(rawValue: 4)
    /// Stops the CPU wherever it is (inside the signal handler when it runs code, at its safe point when it
    /// polls or idles) until START or RESTART.
    public static let stop = SIGPOrder(rawValue: 5)
    /// Starts a stopped CPU (or interrupts an operating one) and runs the restart handler at its next safe point.
    public static let restart = SIGPOrder(rawValue: 6)
    /// Like STOP, and stores the instruction and stack pointer where it stopped into the CPU's status area.
    public static let stopAndStoreStatus = SIGPOrder(rawValue: 9)
    /// CPU reset, and clears the status area and check stop.
    public static let initialCPUReset = SIGPOrder(rawValue: 11)
    /// Clears pending interruptions and orders and places the CPU in the stopped state. Accepted even while a
    /// STOP or RESTART is pending.
    public static let cpuReset = SIGPOrder(rawValue: 12)
    /// An emergency signal generated only when the target is not running code (polling, idle, stopped or
    /// offline); otherwise cc 1 with ``SIGPStatus/incorrectState``.
    public static let conditionalEmergencySignal = SIGPOrder(rawValue: 19)
    /// cc 0 when the CPU's thread is running (executing or polling), cc 1 with ``SIGPStatus/notRunning``
    /// otherwise.
    public static let senseRunning = SIGPOrder(rawValue: 21)

    public var description: String {
        switch self {
        case .sense: return "SENSE"
        case .externalCall: return "EXTERNAL_CALL"
        case .emergencySignal: return "EMERGENCY_SIGNAL"
        case .start: return "START"
        case .stop: return "STOP"
        case .restart: return "RESTART"
        case .stopAndStoreStatus: return "STOP_AND_STORE_STATUS"
        case .initialCPUReset: return "INITIAL_CPU_RESET"
        case .cpuReset: return "CPU_RESET"
        case .conditionalEmergencySignal: return "COND_EMERGENCY_SIGNAL"
        case .senseRunning: return "SENSE_RUNNING"
        default: return "order \(rawValue)"
        }
    }
}

/// SIGP status bits, stored with condition code 1 (valued as on S/390).
public struct SIGPStatus: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let invalidOrder = SIGPStatus(rawValue: 0x2)
    public static let checkStop = SIGPStatus(rawValue: 0x10)
    public static let stopped = SIGPStatus(rawValue: 0x40)
    public static let externalCallPending = SIGPStatus(rawValue: 0x80)
    /// Reserved: no modelled order validates its parameter yet.
    public static let invalidParameter = SIGPStatus(rawValue: 0x100)
    public static let incorrectState = SIGPStatus(rawValue: 0x200)
    public static let notRunning = SIGPStatus(rawValue: 0x400)

    public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// The outcome of a SIGP order.
public struct SIGPResult: Hashable, Sendable, CustomStringConvertible {
    /// S/390 condition codes.
    public enum ConditionCode: Int, Sendable {
        /// Order accepted.
        case accepted = 0
        /// Status stored (see ``SIGPResult/status``).
        case statusStored = 1
        /// Busy: a STOP or RESTART is pending on the target.
        case busy = 2
        /// Not operational: no such CPU, or the CPU is in standby.
        case notOperational = 3
    }

    public let conditionCode: ConditionCode
    /// The status bits; empty unless the condition code is 1.
    public let status: SIGPStatus

    public init(conditionCode: ConditionCode, status: SIGPStatus = []) {
        self.conditionCode = conditionCode
        self.status = status
    }

    public var description: String {
        conditionCode == .statusStored ? "cc 1, status \(status)" : "cc \(conditionCode.rawValue)"
    }
}

/// What a SIGP order leaves for the target's next safe point, handed to ``Machine/Configuration/interruptHandler``
/// on the target CPU's own thread.
public enum SIGPInterruption: Sendable, Equatable {
    /// An external call with its parameter and the sending logical CPU (nil for a foreign thread).
    case externalCall(parameter: UInt32, source: Int?)
    /// One emergency signal (also for the conditional variant).
    case emergencySignal
    /// The CPU was restarted.
    case restart
}

/// Where a CPU stopped by STOP_AND_STORE_STATUS was.
public struct StoredStatus: Sendable, Equatable {
    public let instructionPointer: UInt64
    public let stackPointer: UInt64
}

/// How orders reached a CPU: counters kept by the signal layer.
public struct DeliveryStatistics: Sendable, Equatable {
    /// Real signals sent to the CPU's thread (`tgkill`), resends included.
    public var signalsSent: UInt64
    /// Entries into the signal handler on the CPU's thread.
    public var signalsReceived: UInt64
    /// Futex wakes of the CPU's idle wait.
    public var futexWakes: UInt64
    /// Signals sent again because no acknowledgement came in time.
    public var resends: UInt64
    /// Stops taken inside the signal handler (the CPU was running code).
    public var stopsInHandler: UInt64
    /// Stops taken at a safe point (the CPU was polling or idle).
    public var stopsAtSafePoint: UInt64
}
