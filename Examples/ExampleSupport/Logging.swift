import ArgumentParser
import Logging

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// The library only takes a `Logger`; the examples bootstrap the logging system: every message at `level` or
/// above goes to standard error.
public func bootstrapLogging(level: Logger.Level) {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
}

/// Runs one setup step; when it throws, prints `FAILED setup: cannot <what>: <error> (seed N)` and ends the
/// command with a failure exit code.
/// - Parameter output: where the FAILED line goes (standard output by default).
public func setUp<T>(_ what: String, seed: UInt64, output: (String) -> Void = report,
                     _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch {
        output("FAILED setup: cannot \(what): \(error) (seed \(seed))")
        throw ExitCode.failure
    }
}
