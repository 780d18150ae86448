import Metrics
import Synchronization
import Testing
@testable import Hotplug

/// The machine's metrics, recorded into an in-memory backend given to each machine through its configuration (no
/// process-wide bootstrap: the suites run in parallel, each machine with its own factory).
@Suite struct MetricsTests {
    @Test func lifecycleOperationsRecordMasksDurationsAndRollbacks() throws {
        let metrics = TestMetrics()
        let m = try Machine(cpus: 4, configuration: .init(initiallyOnline: 1, metricsFactory: metrics))
        defer { m.shutdown() }
        #expect(metrics.gauge("hotplug_cpus_online") == 1)
        #expect(metrics.gauge("hotplug_cpus_present") == 1)
        #expect(metrics.timings("hotplug_attach_duration_seconds", ("outcome", "success")).count == 1)   // CPU 0

        try m.configure(1)
        #expect(metrics.gauge("hotplug_cpus_present") == 2)
        #expect(metrics.gauge("hotplug_cpus_online") == 1)
        try m.online(1)
        #expect(metrics.gauge("hotplug_cpus_online") == 2)
        #expect(metrics.gauge("hotplug_cpus_active") == 2)
        let attaches = metrics.timings("hotplug_attach_duration_seconds", ("outcome", "success"))
        #expect(attaches.count == 2 && attaches.allSatisfy { $0 > 0 })
        try m.offline(1)
        #expect(metrics.gauge("hotplug_cpus_online") == 1)
        #expect(metrics.timings("hotplug_detach_duration_seconds", ("outcome", "success")).count == 1)

        // An injected failure: rolled back, counted, timed with its outcome; the masks did not move.
        try m.hotplug.injectFailure(cpu: 1, at: .bringup, direction: .startup)
        #expect(throws: HotplugError.self) { try m.online(1) }
        #expect(metrics.gauge("hotplug_cpus_online") == 1)
        #expect(metrics.timings("hotplug_attach_duration_seconds", ("outcome", "rolledBack")).count == 1)
        #expect(metrics.timings("hotplug_attach_duration_seconds", ("outcome", "failed")).isEmpty)
        #expect(metrics.counter("hotplug_rollbacks_total") == 1)
        #expect(metrics.counter("hotplug_injected_failures_total") == 1)
        #expect(metrics.counter("hotplug_rollback_failures_total") == 0)

        // A bulk attach with one injected failure: one sample for the call, rolled back; one more rollback.
        for cpu in 2..<4 { try m.configure(cpu) }
        try m.hotplug.injectFailure(cpu: 3, at: .bringup, direction: .startup)
        let result = try m.online([1, 2, 3])
        #expect(result.changed == [1, 2] && Set(result.failures.keys) == [3])
        #expect(metrics.gauge("hotplug_cpus_online") == 3)
        #expect(metrics.gauge("hotplug_cpus_present") == 4)
        #expect(metrics.timings("hotplug_attach_duration_seconds", ("outcome", "rolledBack")).count == 2)
        #expect(metrics.counter("hotplug_rollbacks_total") == 2)
        #expect(metrics.counter("hotplug_injected_failures_total") == 2)

        // Shutdown leaves the gauges at zero.
        m.shutdown()
        #expect(metrics.gauge("hotplug_cpus_online") == 0)
        #expect(metrics.gauge("hotplug_cpus_present") == 0)
        // One object per metric and machine: the operations reused them.
        #expect(metrics.made("hotplug_cpus_online") == 1)
        #expect(metrics.made("hotplug_attach_duration_seconds") == 3)
    }

    @Test func sampleMetricsReportsQueueDepthsAndSlabFigures() throws {
        let metrics = TestMetrics()
        let m = try Machine(cpus: 2, configuration: .init(metricsFactory: metrics))
        defer { m.shutdown() }
        let cache = try SlabCache(name: "metrics", objectSize: 64, machine: m)
        // Hold CPU 1 in a cross-call so that what is queued on it stays queued.
        let gate = Gate()
        defer { gate.release() }
        try m.submit(on: 1) { gate.spin() }
        #expect(eventually { gate.hasEntered })
        let tasklets = (0..<3).map { _ in Tasklet(m) {} }
        for tasklet in tasklets { #expect(try tasklet.schedule(on: 1)) }
        let executor = try m.executor(cpu: 1)
        for _ in 0..<2 { Task(executorPreference: executor) {} }
        #expect(eventually { (try? m.queuedJobs(on: 1)) == 2 })
        let objects = try (0..<10).map { _ in try cache.allocate() }

        m.sampleMetrics()
        #expect(metrics.gauge("hotplug_tasklets_queued", ("cpu", "1")) == 3)
        #expect(metrics.gauge("hotplug_tasklets_queued", ("cpu", "0")) == 0)
        #expect(metrics.gauge("hotplug_executor_jobs_queued", ("cpu", "1")) == 2)
        #expect(metrics.gauge("hotplug_slab_objects_in_use") == 10)
        #expect((metrics.gauge("hotplug_slab_bytes_mapped") ?? 0) > 0)

        gate.release()
        for object in objects { cache.free(object) }
        try m.drainTasklets()
        #expect(eventually { (try? m.queuedJobs(on: 1)) == 0 })
        m.sampleMetrics()
        #expect(metrics.gauge("hotplug_tasklets_queued", ("cpu", "1")) == 0)
        #expect(metrics.gauge("hotplug_executor_jobs_queued", ("cpu", "1")) == 0)
        #expect(metrics.gauge("hotplug_slab_objects_in_use") == 0)
    }

    @Test func followerEventsAreCountedBySource() throws {
        let metrics = TestMetrics()
        let m = try Machine(cpus: 2, configuration: .init(metricsFactory: metrics))
        defer { m.shutdown() }
        let follower = try m.follow(.init(maxCPUs: 1))
        defer { follower.stop() }
        #expect(eventually { metrics.counter("hotplug_follower_events_total", ("event", "resized"), ("source", "cap")) >= 1 })
        #expect(metrics.counter("hotplug_follower_events_total", ("event", "detached"), ("source", "cap")) == 1)
        #expect(metrics.gauge("hotplug_cpus_online") == 1)
        #expect(metrics.timings("hotplug_detach_duration_seconds", ("outcome", "success")).count == 1)
    }

    @Test func withoutAFactoryTheMachineUsesTheGlobalNoOpBackend() throws {
        // Nothing bootstrapped in this process: the operations record into the no-op backend and still work.
        let m = try Machine(cpus: 2, configuration: .init(initiallyOnline: 1))
        defer { m.shutdown() }
        try m.configure(1)
        try m.online(1)
        m.sampleMetrics()
        #expect(m.online == [0, 1])
    }
}

// MARK: An in-memory metrics backend

/// Keeps every metric it makes, by label and dimensions, for the tests to read.
final class TestMetrics: MetricsFactory {
    final class Handler: CounterHandler, FloatingPointCounterHandler, RecorderHandler, MeterHandler, TimerHandler,
                         Sendable {
        let values = Mutex<[Int64]>([])
        func increment(by amount: Int64) { values.withLock { $0 = [($0.first ?? 0) + amount] } }
        func increment(by amount: Double) { increment(by: Int64(amount)) }
        func record(_ value: Int64) { values.withLock { $0.append(value) } }
        func record(_ value: Double) { record(Int64(value)) }
        func set(_ value: Int64) { record(value) }
        func set(_ value: Double) { record(value) }
        func decrement(by amount: Double) { increment(by: -amount) }
        func recordNanoseconds(_ duration: Int64) { record(duration) }
        func reset() { values.withLock { $0 = [] } }
    }

    private let handlers = Mutex<[String: Handler]>([:])
    private let makes = Mutex<[String: Int]>([:])

    private static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        ([label] + dimensions.sorted { $0.0 < $1.0 }.map { "\($0.0)=\($0.1)" }).joined(separator: ",")
    }

    private func make(_ label: String, _ dimensions: [(String, String)]) -> Handler {
        makes.withLock { $0[label, default: 0] += 1 }
        return handlers.withLock { handlers in
            let key = TestMetrics.key(label, dimensions)
            if let handler = handlers[key] { return handler }
            let handler = Handler()
            handlers[key] = handler
            return handler
        }
    }

    private func values(_ label: String, _ dimensions: [(String, String)]) -> [Int64] {
        handlers.withLock { $0[TestMetrics.key(label, dimensions)] }?.values.withLock { $0 } ?? []
    }

    /// The last value a gauge recorded, nil when it recorded none.
    func gauge(_ label: String, _ dimensions: (String, String)...) -> Int64? { values(label, dimensions).last }
    /// A counter's total.
    func counter(_ label: String, _ dimensions: (String, String)...) -> Int64 { values(label, dimensions).first ?? 0 }
    /// Every duration a timer recorded, in nanoseconds.
    func timings(_ label: String, _ dimensions: (String, String)...) -> [Int64] { values(label, dimensions) }
    /// How many metric objects were made with this label (any dimensions).
    func made(_ label: String) -> Int { makes.withLock { $0[label] ?? 0 } }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler { make(label, dimensions) }
    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        make(label, dimensions)
    }
    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler { make(label, dimensions) }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        make(label, dimensions)
    }
    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler { make(label, dimensions) }
    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyMeter(_ handler: any MeterHandler) {}
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}
}
