/// Where a logical CPU is in its lifecycle (docs/ARCHITECTURE.md, "Logical CPUs and their threads"):
/// `standby` -> configure -> `parked` -> online -> `online` -> offline -> `parked` -> deconfigure -> `standby`.
public enum LogicalCPUState: String, Sendable, Equatable, CustomStringConvertible {
    /// No thread exists.
    case standby
    /// The thread exists and is blocked in the kernel (configured, offline).
    case parked
    /// The thread runs its CPU loop, pinned to one physical CPU.
    case online

    public var description: String { rawValue }
}

/// What a logical CPU's thread is doing right now, as the signal layer sees it.
public enum RunState: Sendable, Equatable {
    /// No thread (standby).
    case none
    /// Parked in the kernel by the lifecycle (offline).
    case offline
    /// Executing code (a cross-call, a handler, the loop): a signal interrupts it.
    case running
    /// Spinning on its mailbox: it sees any order without a wake-up.
    case polling
    /// Parked in the kernel on its mailbox (the wait state): a futex wake brings it back.
    case idle
    /// Stopped by a SIGP order, blocked in the kernel until START or RESTART.
    case stopped
}
