// elastic-http: a Hummingbird server whose handlers do their work on swift-hotplug's logical CPUs
// (docs/ARCHITECTURE.md, "Swift executors"; the DocC article "Swift concurrency on logical CPUs").
//
// Routes:
// - PUT /kv/{key}: adds one to the key's counter, answers the new value; GET /kv/{key}: the counter (404 when the
//   key was never put). The store has one shard actor per logical CPU, pinned to the CPU's executor; the handler's
//   task prefers the shard's executor, so its own code runs on that CPU too and never hops to the global executor.
// - POST /work?rounds=N: hashes the body N times (FNV-1a) on the machine's pool executor; answers the hash, the
//   rounds and the logical CPU that ran it.
// - GET /metrics: Prometheus text, the library's `hotplug_*` metrics (sampled first) and the server's own.
//
// With `--executor logical` the whole server runs with a task executor preference for the machine's pool, which
// Hummingbird's connection tasks inherit: a request's code runs on logical CPUs from the moment NIO hands it over
// (`--connection-executor global` keeps the connection tasks on the global executor instead, for comparison).
// `--executor global` runs the same handlers on Swift's default executors (default actors, no preference), the
// peer to compare with; `--follow` makes the machine follow the CPUs the process may use and its cgroup quota.
import ArgumentParser
import Hotplug
import Hummingbird
import Logging
import Metrics
import Prometheus
import Synchronization

@main
struct ElasticHTTP: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "elastic-http",
        abstract: "An HTTP key-value and work server whose handlers run on logical CPUs.")

    /// Where the handlers run.
    enum ExecutorKind: String, ExpressibleByArgument, CaseIterable {
        /// Shards pinned to the logical CPUs' executors, work on the machine's pool.
        case logical
        /// Default actors and Swift's global executor: the peer.
        case global
    }

    @Option(help: "Where the handlers run: logical (the machine's CPUs) or global (Swift's default executor).")
    var executor: ExecutorKind = .logical

    @Flag(inversion: .prefixedNo,
          help: "Follow the CPUs the process may use and its cgroup CPU quota (detach and attach logical CPUs).")
    var follow = false

    @Option(help: "Logical CPUs (default: one per CPU the process may use).")
    var cpus: Int?

    @Option(help: "TCP port (0: any free port, printed at start).")
    var port = 8080

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: .hidden)
    var debugDropPut: Int?

    /// Where the logical server's connection tasks run.
    enum ConnectionExecutor: String, ExpressibleByArgument, CaseIterable {
        /// The machine's pool: the whole request runs on logical CPUs (the task executor preference is inherited
        /// by Hummingbird's connection tasks).
        case pool
        /// Swift's global executor: each request hops to a logical CPU for the store and `/work`, and back.
        case global
    }

    @Option(help: ArgumentHelp(
        "With --executor logical: where the connection tasks run: pool (the machine's pool: the whole request on "
            + "logical CPUs) or global (Swift's global executor, hopping to the logical CPUs and back)."))
    var connectionExecutor: ConnectionExecutor = .pool

    @Option(help: "With --follow: milliseconds between two polls of the follower (1...1000).")
    var followInterval = 10

    /// The most rounds one `POST /work` may ask for, and the largest body it reads: a request stays well under a
    /// second on one CPU, so that no job holds a CPU's safe points for long (jobs are never preempted).
    static let maximumRounds = 100_000
    static let maximumBody = 64 * 1024
    static let defaultRounds = 1_000

    func validate() throws {
        if let cpus, !(1...Machine.maximumCPUs).contains(cpus) {
            throw ValidationError("--cpus must be in 1...\(Machine.maximumCPUs), got \(cpus)")
        }
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535, got \(port)") }
        guard (1...1000).contains(followInterval) else {
            throw ValidationError("--follow-interval must be in 1...1000, got \(followInterval)")
        }
        if let debugDropPut, debugDropPut < 1 {
            throw ValidationError("--debug-drop-put must be 1 or more, got \(debugDropPut)")
        }
    }

    func run() async throws {
        // The backend first: the machine makes its metric objects once, from `MetricsSystem.factory` at creation.
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))

        let machine = try Machine(cpus: cpus)
        defer { machine.shutdown() }
        // 10 ms, not the library's 1 ms: every poll re-reads the affinity mask, /proc/self/cgroup and the cpuset and
        // quota files, about 130 us of CPU here, 13% of a CPU at 1 ms (README, "Where the time goes").
        let follower = follow ? try machine.follow(.init(interval: .milliseconds(followInterval))) : nil
        defer { follower?.stop() }

        let logical = executor == .logical
        let store = try Store(machine: machine, pinned: logical)
        let router = Router()
        Routes(machine: machine, store: store, registry: registry,
               workExecutor: logical ? machine.pool : nil,
               dropper: debugDropPut.map(PutDropper.init(every:))).add(to: router)

        var logger = Logger(label: "elastic-http")
        logger.logLevel = .notice
        let host = host, executor = executor, follow = follow, announcer = logger, connectionExecutor = connectionExecutor
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "elastic-http"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? -1
                // Through the logger (standard error, unbuffered): a script waiting for this line sees it at once.
                let connections = executor == .logical ? ", connections on \(connectionExecutor.rawValue)" : ""
                let line = "elastic-http listening on \(host):\(port), executor \(executor.rawValue)\(connections), "
                    + "\(machine.possibleCount) logical CPUs (\(machine.online.count) online), follow \(follow ? "on" : "off")"
                announcer.notice("\(line)")
            },
            logger: logger)
        if logical && connectionExecutor == .pool {
            // The preference is inherited by the service group's and the server's child tasks, so each connection's
            // task runs on the pool: a request's code stays on logical CPUs, and calls into a shard hop only when the
            // shard is on another CPU (README, "Where the time goes").
            try await withTaskExecutorPreference(machine.pool) { try await app.runService() }
        } else {
            try await app.runService()
        }
    }
}

/// The handlers.
struct Routes: Sendable {
    let machine: Machine
    let store: Store
    let registry: PrometheusCollectorRegistry
    /// The executor `POST /work` runs on: the machine's pool, or nil for the global executor.
    let workExecutor: (any TaskExecutor)?

    /// Requests answered, per route: the server's own metric beside the library's.
    let requests: [String: Metrics.Counter]
    /// `--debug-drop-put`: a broken server, for showing that load.sh's check fails.
    let dropper: PutDropper?

    init(machine: Machine, store: Store, registry: PrometheusCollectorRegistry, workExecutor: (any TaskExecutor)?,
         dropper: PutDropper? = nil) {
        self.machine = machine
        self.store = store
        self.registry = registry
        self.workExecutor = workExecutor
        self.dropper = dropper
        var requests: [String: Metrics.Counter] = [:]
        for route in ["kv_put", "kv_get", "work", "metrics"] {
            requests[route] = Metrics.Counter(label: "elastic_http_requests_total", dimensions: [("route", route)])
        }
        self.requests = requests
    }

    func add(to router: Router<BasicRequestContext>) {
        router.put("/kv/:key") { _, context -> String in
            let key = try context.parameters.require("key")
            if let dropper, dropper.drops() {
                // The broken server: answers as if it had counted the PUT, and does not count it.
                requests["kv_put"]?.increment()
                return "\((await store.value(of: key) ?? 0) + 1)\n"
            }
            let value = await store.increment(key)
            requests["kv_put"]?.increment()
            return "\(value)\n"
        }
        router.get("/kv/:key") { _, context -> String in
            let key = try context.parameters.require("key")
            guard let value = await store.value(of: key) else {
                throw HTTPError(.notFound, message: "no key \(key)")
            }
            requests["kv_get"]?.increment()
            return "\(value)\n"
        }
        router.post("/work") { request, _ -> String in
            let rounds = try Self.rounds(request.uri.queryParameters.get("rounds"))
            let buffer = try await request.body.collect(upTo: ElasticHTTP.maximumBody)
            var bytes = Array(buffer.readableBytesView)
            if bytes.isEmpty { bytes = Array(repeating: 0x61, count: 64) }   // no body: hash 64 bytes all the same
            let input = bytes
            let (hash, cpu) = await withTaskExecutorPreference(workExecutor) {
                (FNV.rounds(input, rounds), machine.currentCPU)
            }
            requests["work"]?.increment()
            return "hash=\(String(hash, radix: 16)) rounds=\(rounds) bytes=\(input.count) cpu=\(cpu.map(String.init) ?? "none")\n"
        }
        router.get("/metrics") { _, _ -> Response in
            requests["metrics"]?.increment()
            machine.sampleMetrics()
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers,
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
        }
    }

    /// The `rounds` query parameter: absent means the default; anything but an integer in range is a 400.
    static func rounds(_ text: String?) throws -> Int {
        guard let text else { return ElasticHTTP.defaultRounds }
        guard let rounds = Int(text), (1...ElasticHTTP.maximumRounds).contains(rounds) else {
            throw HTTPError(.badRequest, message: "rounds must be an integer in 1...\(ElasticHTTP.maximumRounds), got \(text)")
        }
        return rounds
    }
}

/// `--debug-drop-put N` (hidden): every Nth PUT is answered 200 and not applied, a lost write on purpose, so that the
/// load script's check can be seen to fail (CI runs it so).
final class PutDropper: Sendable {
    let every: Int
    private let puts = Atomic<Int>(0)

    init(every: Int) { self.every = every }

    /// Whether this PUT is one to drop.
    func drops() -> Bool {
        // Relaxed: a count, which publishes nothing.
        puts.add(1, ordering: .relaxed).newValue % every == 0
    }
}
