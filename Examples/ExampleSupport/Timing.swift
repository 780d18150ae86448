import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public func monotonicNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

extension Duration {
    /// The duration in whole nanoseconds.
    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// Polls `condition` every 200 us for at most `milliseconds`; true as soon as it holds.
public func waitUntil(_ milliseconds: Int64, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = monotonicNanoseconds() + milliseconds * 1_000_000
    while true {
        if try condition() { return true }
        if monotonicNanoseconds() >= deadline { return false }
        usleep(200)
    }
}

/// Ends the process with a FAILED line if the run takes far longer than asked: an example never hangs.
public enum Watchdog {
    /// - Parameters:
    ///   - seconds: how long the run may take in all.
    ///   - program: named in the FAILED line.
    ///   - seed: named in the FAILED line, to reproduce the run.
    ///   - output: where the FAILED line goes (standard output by default).
    public static func start(afterSeconds seconds: Double, program: String, seed: UInt64,
                             output: @escaping @Sendable (String) -> Void = report) {
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds) {
            output("FAILED watchdog: \(program) did not finish within \(fixed(seconds, 0)) s (seed \(seed))")
            exit(1)
        }
    }
}
