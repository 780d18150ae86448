import Metrics

/// How a hotplug operation ended, as its duration metrics label it (`outcome` dimension).
enum HotplugOutcome: String, Sendable, CaseIterable {
    /// The CPU (every CPU of a bulk call) ended where it was asked to.
    case success
    /// A step failed and the CPU is back where it started (also: a CPU that did not reach a safe point in time,
    /// nothing changed).
    case rolledBack
    /// A step failed and the CPU could not be walked back: it stays where the failed rollback stopped (a detach
    /// rolled forward counts here too).
    case failed

    /// The outcome a failed single-CPU operation reports.
    init(_ error: HotplugError) {
        switch error {
        case .callbackFailed(let failure): self = failure.rolledBack ? .rolledBack : .failed
        // `failure(...)` returns a bare timeout only when the CPU is back where it started.
        case .timeout, .notResponding: self = .rolledBack
        default: self = .failed
        }
    }

    /// The outcome of a bulk call: success when every CPU ended where it was asked to, failed when one did not
    /// get back, rolled back otherwise.
    init(_ result: HotplugBatchResult) {
        if result.isComplete {
            self = .success
        } else if result.failures.values.contains(where: { HotplugOutcome($0) == .failed }) {
            self = .failed
        } else {
            self = .rolledBack
        }
    }
}

/// The metrics of one machine, reported through swift-metrics (the DocC article "Metrics" lists them).
///
/// Every metric object is created here, once per machine, from the factory the machine was configured with
/// (``Machine/Configuration/metricsFactory``, by default `MetricsSystem.factory`, a no-op until the application
/// bootstraps a backend). Only cold paths record: the end of a lifecycle operation, a follower event, a sampling
/// call. The hot paths (tasklet schedule and run, job enqueue and run, slab allocation and free, barrier, mailbox)
/// never touch a metric: the queue depths and slab figures are read from counters those paths keep anyway, when
/// an operation ends or ``Machine/sampleMetrics()`` runs (`docs/ARCHITECTURE.md`, "Performance goals").
final class HotplugMetrics: Sendable {
    /// Prefix of every label.
    static let prefix = "hotplug_"

    let factory: any MetricsFactory
    let cpusOnline: Gauge
    let cpusPresent: Gauge
    let cpusActive: Gauge
    /// By outcome (``HotplugOutcome``), for attaches and detaches.
    let attachDuration: [HotplugOutcome: Timer]
    let detachDuration: [HotplugOutcome: Timer]
    let rollbacks: Counter
    let rollbackFailures: Counter
    let injectedFailures: Counter
    /// Per logical CPU.
    let taskletsQueued: [Gauge]
    let jobsQueued: [Gauge]
    let slabBytesMapped: Gauge
    let slabObjectsInUse: Gauge
    /// Follower events by (event, source): created on first use (followers are cold), then reused.
    private let followerEvents = Locked<[String: Counter]>([:])

    init(factory: any MetricsFactory, possible: Int) {
        self.factory = factory
        let p = HotplugMetrics.prefix
        cpusOnline = Gauge(label: p + "cpus_online", factory: factory)
        cpusPresent = Gauge(label: p + "cpus_present", factory: factory)
        cpusActive = Gauge(label: p + "cpus_active", factory: factory)
        var attach: [HotplugOutcome: Timer] = [:], detach: [HotplugOutcome: Timer] = [:]
        for outcome in HotplugOutcome.allCases {
            let dimensions = [("outcome", outcome.rawValue)]
            attach[outcome] = Timer(label: p + "attach_duration_seconds", dimensions: dimensions, factory: factory)
            detach[outcome] = Timer(label: p + "detach_duration_seconds", dimensions: dimensions, factory: factory)
        }
        attachDuration = attach
        detachDuration = detach
        rollbacks = Counter(label: p + "rollbacks_total", factory: factory)
        rollbackFailures = Counter(label: p + "rollback_failures_total", factory: factory)
        injectedFailures = Counter(label: p + "injected_failures_total", factory: factory)
        taskletsQueued = (0..<possible).map {
            Gauge(label: p + "tasklets_queued", dimensions: [("cpu", "\($0)")], factory: factory)
        }
        jobsQueued = (0..<possible).map {
            Gauge(label: p + "executor_jobs_queued", dimensions: [("cpu", "\($0)")], factory: factory)
        }
        slabBytesMapped = Gauge(label: p + "slab_bytes_mapped", factory: factory)
        slabObjectsInUse = Gauge(label: p + "slab_objects_in_use", factory: factory)
    }

    /// Records the duration of an attach (`attach` true) or a detach that started at `started`
    /// (`Shim.monotonicNanoseconds()`).
    func recordOperation(attach: Bool, _ outcome: HotplugOutcome, started: Int64) {
        let timer = attach ? attachDuration[outcome] : detachDuration[outcome]
        timer?.recordNanoseconds(max(0, Shim.monotonicNanoseconds() - started))
    }

    /// Counts one CPU walked back after a failed step, and whether the step failed because it was injected.
    func recordRollback(injected: Bool) {
        rollbacks.increment()
        if injected { injectedFailures.increment() }
    }

    /// Counts a follower event: once per source it names (a detach may name several), with source `none` for an
    /// event that names none.
    func recordFollowerEvent(_ event: Follower.Event) {
        let name: String
        var sources: [String]
        switch event {
        case .detached(_, _, let from, _, _): name = "detached"; sources = from.map(\.rawValue)
        case .attached: name = "attached"; sources = []
        case .repinned: name = "repinned"; sources = []
        case .resized(let resize): name = "resized"; sources = [resize.source.rawValue]
        case .quotaUnusable: name = "quotaUnusable"; sources = [Follower.Source.quota.rawValue]
        case .failed: name = "failed"; sources = []
        }
        if sources.isEmpty { sources = ["none"] }
        for source in sources { followerCounter(event: name, source: source).increment() }
    }

    private func followerCounter(event: String, source: String) -> Counter {
        followerEvents.withLock { counters in
            let key = event + "/" + source
            if let counter = counters[key] { return counter }
            let counter = Counter(label: HotplugMetrics.prefix + "follower_events_total",
                                  dimensions: [("event", event), ("source", source)], factory: factory)
            counters[key] = counter
            return counter
        }
    }
}

extension Machine {
    /// Samples every gauge of this machine's metrics now: the CPU masks, the tasklet runs and executor jobs
    /// queued per logical CPU, and the bytes mapped and objects in use of its slab caches (summed over the caches).
    ///
    /// The masks and queue depths are also sampled at the end of every lifecycle operation; the slab figures only
    /// here (they take each cache's node locks). Call it from a periodic task of the application (or run the
    /// machine as a service of `HotplugServiceLifecycle`, which samples at an interval). It reads counters the hot
    /// paths keep anyway: they never touch a metric. Cheap enough for every few hundred milliseconds; a no-op
    /// recording until the application bootstraps a metrics backend (or configures a factory).
    public func sampleMetrics() {
        sampleOperationMetrics()
        var bytes = 0, inUse = 0
        for cache in slabs.liveCaches {
            let statistics = cache.statistics()
            bytes += statistics.bytesMapped
            inUse += statistics.inUse
        }
        metrics.slabBytesMapped.record(bytes)
        metrics.slabObjectsInUse.record(inUse)
    }

    /// The gauges sampled at the end of every lifecycle operation: masks and queue depths (relaxed loads only).
    /// With `cpu`, the queue depths of that CPU only (a single attach or detach: its queues filled or emptied; a
    /// survivor that took them over is seen at the next bulk operation or ``sampleMetrics()``), so that an operation
    /// does not record a gauge per possible CPU (a machine of 64 CPUs spent 4% of a detach doing that); without it,
    /// every CPU's.
    func sampleOperationMetrics(cpu: Int? = nil) {
        let (online, present, active) = state.withLock { ($0.online.count, $0.present.count, $0.active.count) }
        metrics.cpusOnline.record(online)
        metrics.cpusPresent.record(present)
        metrics.cpusActive.record(active)
        let engine = executorEngine
        if let cpu {
            var jobs = max(0, engine.hub.pools[cpu].queued.load(ordering: .relaxed))
            for executor in engine.executors where executor.host.load(ordering: .relaxed) == cpu {
                jobs += executor.queuedJobs
            }
            metrics.taskletsQueued[cpu].record(max(0, tasklets.queues[cpu].pending.load(ordering: .relaxed)))
            metrics.jobsQueued[cpu].record(jobs)
            return
        }
        // The jobs per CPU in one pass over the executors (as `queuedJobs(on:)` counts them for one CPU): linear in
        // the CPUs, not quadratic.
        var jobs = (0..<possibleCount).map { max(0, engine.hub.pools[$0].queued.load(ordering: .relaxed)) }
        for executor in engine.executors {
            let host = executor.host.load(ordering: .relaxed)
            if jobs.indices.contains(host) { jobs[host] += executor.queuedJobs }
        }
        for cpu in 0..<possibleCount {
            metrics.taskletsQueued[cpu].record(tasklets.queues[cpu].queued)
            metrics.jobsQueued[cpu].record(jobs[cpu])
        }
    }
}
