import Hotplug
import Logging
import ServiceLifecycle

/// A ``Machine`` as a swift-service-lifecycle `Service`: it runs until the group shuts down gracefully (or is
/// cancelled), then waits for the tasklet runs scheduled so far (``Machine/drainTasklets(timeout:)``) and shuts
/// the machine down (``Machine/shutdown()``).
///
/// List it **before** the services that use the machine (``FollowerService``, ``BalancerService``, the
/// application's own): a `ServiceGroup` shuts its services down in reverse order, so those stop first and the
/// machine last.
///
/// With a `metricsInterval`, it also calls ``Machine/sampleMetrics()`` at that interval while it runs (the
/// sampled gauges of the DocC article "Metrics").
///
/// The drain and the shutdown (which joins the machine's CPU threads) run on a thread of the runtime's own
/// (``Machine/shutdown(drainingTasklets:)``): the service's task waits for them suspended, and no thread of the
/// concurrency pool is held meanwhile.
public struct MachineService: Service {
    /// The machine this service shuts down.
    public let machine: Machine
    /// How often to sample the machine's metrics while it runs; nil: never (the operations still record theirs).
    public let metricsInterval: Duration?
    /// The bound of the tasklet drain before the shutdown; nil: the machine's response timeout.
    public let drainTimeout: Duration?
    private let logger: Logger

    /// - Parameters:
    ///   - machine: the machine to run and shut down.
    ///   - metricsInterval: positive, how often to call ``Machine/sampleMetrics()``; nil: never.
    ///   - drainTimeout: the bound of the tasklet drain at the end; nil: the machine's response timeout.
    ///   - logger: receives a drain that did not finish (the shutdown goes on regardless).
    public init(machine: Machine, metricsInterval: Duration? = nil, drainTimeout: Duration? = nil,
                logger: Logger = Logger(label: "hotplug.service")) {
        if let metricsInterval {
            precondition(metricsInterval > .zero, "MachineService: metricsInterval must be positive, got \(metricsInterval)")
        }
        self.machine = machine
        self.metricsInterval = metricsInterval
        self.drainTimeout = drainTimeout
        self.logger = logger
    }

    /// Runs until graceful shutdown or cancellation, then drains the tasklets and shuts the machine down.
    public func run() async throws {
        if let interval = metricsInterval {
            let machine = self.machine
            // Ends (CancellationError swallowed) at graceful shutdown or cancellation.
            try? await cancelWhenGracefulShutdown {
                while !Task.isCancelled {
                    machine.sampleMetrics()
                    try await Task.sleep(for: interval)
                }
            }
        } else {
            try? await gracefulShutdown()   // throws only on cancellation: shut down then too
        }
        let report = await machine.shutdown(drainingTasklets: drainTimeout)
        if let error = report.drainError {
            logger.warning("tasklet drain before shutdown did not finish: \(error); shut down regardless")
        }
        if !report.leftRunning.isEmpty {
            logger.error("machine shutdown left logical CPUs running: \(report.leftRunning)")
        }
        machine.sampleMetrics()
    }
}

/// A ``Follower`` as a swift-service-lifecycle `Service`: following stops (``Follower/stop()``) at graceful
/// shutdown or cancellation. CPUs it detached stay detached.
public struct FollowerService: Service {
    /// The follower this service stops.
    public let follower: Follower

    /// Wraps a follower already started with ``Machine/follow(_:onEvent:)``.
    public init(_ follower: Follower) {
        self.follower = follower
    }

    /// Starts following `machine` (``Machine/follow(_:onEvent:)``) and wraps the follower.
    /// - Throws: what ``Machine/follow(_:onEvent:)`` throws.
    public init(machine: Machine, options: Machine.FollowOptions = Machine.FollowOptions(),
                onEvent: @escaping @Sendable (Follower.Event) -> Void = { _ in }) throws(HotplugError) {
        follower = try machine.follow(options, onEvent: onEvent)
    }

    /// Waits for graceful shutdown or cancellation, then stops the follower.
    public func run() async throws {
        try? await gracefulShutdown()
        follower.stop()
    }
}

/// A ``Balancer`` as a swift-service-lifecycle `Service`: it runs its steps (``Balancer/start(interval:onOutcome:)``)
/// until graceful shutdown or cancellation, then stops them (``Balancer/stop()``).
public struct BalancerService: Service {
    /// The balancer this service runs.
    public let balancer: Balancer
    /// The interval between steps.
    public let interval: Duration
    private let onOutcome: @Sendable (Balancer.Outcome) -> Void

    /// - Parameters:
    ///   - balancer: the balancer to run; it must not be running already (``run()`` throws then).
    ///   - interval: between steps, as ``Balancer/start(interval:onOutcome:)`` takes it.
    ///   - onOutcome: receives each outcome but `.stayed`, on the balancer's thread.
    public init(_ balancer: Balancer, interval: Duration = .milliseconds(20),
                onOutcome: @escaping @Sendable (Balancer.Outcome) -> Void = { _ in }) {
        self.balancer = balancer
        self.interval = interval
        self.onOutcome = onOutcome
    }

    /// Starts the balancer's steps, waits for graceful shutdown or cancellation, then stops them.
    /// - Throws: what ``Balancer/start(interval:onOutcome:)`` throws (the balancer already runs, a bad interval).
    public func run() async throws {
        try balancer.start(interval: interval, onOutcome: onOutcome)
        try? await gracefulShutdown()
        balancer.stop()
    }
}
