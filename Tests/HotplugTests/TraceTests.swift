import Logging
import Testing
@testable import Hotplug

/// Collects log records, for checking the library's trace.
struct CollectingLogHandler: LogHandler {
    let records: Locked<[(level: Logger.Level, message: String, metadata: Logger.Metadata)]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        records.withLock { $0.append((event.level, "\(event.message)", event.metadata ?? [:])) }
    }
}

@Suite struct TraceTests {
    @Test func everyTransitionIsTracedAtDebugLevel() throws {
        let records = Locked<[(level: Logger.Level, message: String, metadata: Logger.Metadata)]>([])
        let logger = Logger(label: "hotplug-test") { _ in CollectingLogHandler(records: records) }
        let m = try Machine(cpus: 2, logger: logger)
        defer { m.shutdown() }
        try m.hotplug.register("trace:online", section: .online, startup: { _ in }, teardown: { _ in })
        records.withLock { $0.removeAll() }
        try m.offline(1)
        let callbacks = records.withLock { $0 }.filter { $0.message == "hotplug callback" }
        let teardown = try #require(callbacks.first { $0.metadata["state"] == "trace:online" })
        #expect(teardown.level == .debug)
        #expect(teardown.metadata["cpu"] == "1")
        #expect(teardown.metadata["direction"] == "teardown")
        #expect(Double("\(teardown.metadata["duration_us"] ?? "")") != nil)
        let detach = records.withLock { $0 }.first { $0.message == "hotplug transition" && $0.metadata["operation"] == "detach" }
        #expect(detach?.metadata["cpu"] == "1")
        try m.online(1)
        #expect(records.withLock { $0 }.contains {
            $0.message == "hotplug callback" && $0.metadata["state"] == "trace:online" && $0.metadata["direction"] == "startup"
        })
    }
}
