// async-shards: a sharded key-value store on Swift concurrency, one actor per logical CPU, while CPUs are detached
// and attached under it (docs/ARCHITECTURE.md, "Swift executors"; the DocC article "Swift concurrency on logical
// CPUs").
//
// What runs:
// - one `Shard` actor per logical CPU, pinned to that CPU's executor with `unownedExecutor`: its jobs run on the
//   CPU's thread, and while the CPU is detached on a stand-in CPU, in the same order and one at a time;
// - --clients client tasks, each preferring an executor of the machine (even ones the pool, odd ones a CPU's
//   executor), so that their own code runs on the machine's CPUs and never hops to the global executor; each sends
//   `add(amount, to: key)` requests, one after the other, to the shard that owns the key;
// - a plain thread that detaches and attaches random CPUs every 0-2 ms, never the last online one.
//
// Checked at the end (exit 0 only when all held, else a FAILED line with the --seed value):
// - every request was answered exactly once: per client, requests issued == answered == applied by the shards,
//   each answer names its request, and no shard saw a client's request id twice (ids only grow);
// - every shard job ran on one of the machine's CPUs (its own, or a stand-in while its own was detached);
// - every key's counter in its shard equals the sum the clients wrote to it;
// - every detach and attach succeeded, and at least one CPU was detached.
// A watchdog ends a run that hangs (a lost request never gets its answer) with a FAILED line, after listing the
// clients still waiting.
import ArgumentParser
import ExampleSupport
import Hotplug
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One shard of the store: the counters of the keys it owns, pinned to one logical CPU.
actor Shard {
    let executor: CPUExecutor
    let machine: Machine
    /// The pinning: this actor's jobs run on `executor`, on its CPU (or the CPU's stand-in while it is detached).
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    private var counters: [Int: Int] = [:]
    /// Per client, its last request seen here: a client's ids only grow, so one seen again is a duplicate.
    private var lastRequest: [Int]
    private var applied: [Int]
    private var duplicates = 0
    private var onStandIn = 0
    private var offMachine = 0

    init(machine: Machine, cpu: Int, clients: Int) throws(HotplugError) {
        self.machine = machine
        executor = try machine.executor(cpu: cpu)
        lastRequest = Array(repeating: 0, count: clients)
        applied = Array(repeating: 0, count: clients)
    }

    /// Adds `amount` to `key`'s counter; answers with the request's id.
    func add(_ amount: Int, to key: Int, client: Int, request: Int) -> Int {
        if request <= lastRequest[client] { duplicates += 1 } else { lastRequest[client] = request }
        switch machine.currentCPU {
        case executor.cpu: break
        case nil: offMachine += 1
        default: onStandIn += 1
        }
        counters[key, default: 0] += amount
        applied[client] += 1
        return request
    }

    struct Snapshot: Sendable {
        let counters: [Int: Int], applied: [Int], duplicates: Int, onStandIn: Int, offMachine: Int
    }

    func snapshot() -> Snapshot {
        Snapshot(counters: counters, applied: applied, duplicates: duplicates, onStandIn: onStandIn,
                 offMachine: offMachine)
    }
}

/// A client's request counts, published as it goes for the watchdog. Relaxed: plain counters, read by the
/// watchdog (any value will do) or after the client's task has ended (which orders them).
final class ClientProgress: Sendable {
    let issued = Atomic<Int>(0)
    let answered = Atomic<Int>(0)
}

/// What one client did.
struct ClientReport: Sendable {
    let id: Int
    var written: [Int]
    var wrongAnswers = 0
    var latencies = Latencies()
}

/// Sends requests to the shards until `deadline`, one at a time; records what it wrote and each request's latency.
func runClient(_ id: Int, shards: [Shard], keys: Int, seed: UInt64, progress: ClientProgress,
               until deadline: ContinuousClock.Instant) async -> ClientReport {
    var rng = SplitMix64(seed: seed, stream: UInt64(id))
    var report = ClientReport(id: id, written: Array(repeating: 0, count: keys))
    var request = 0
    while ContinuousClock.now < deadline {
        let key = Int.random(in: 0..<keys, using: &rng), amount = Int.random(in: 1...9, using: &rng)
        request += 1
        progress.issued.add(1, ordering: .relaxed)
        let start = ContinuousClock.now
        let answer = await shards[key % shards.count].add(amount, to: key, client: id, request: request)
        report.latencies.record((ContinuousClock.now - start).nanoseconds)
        progress.answered.add(1, ordering: .relaxed)
        if answer != request { report.wrongAnswers += 1 }
        report.written[key] += amount
    }
    return report
}

/// Detaches and attaches random CPUs, from a plain thread: lifecycle calls block (stop_machine), so they stay off
/// the executors' CPUs and off Swift's cooperative pool.
final class Hotplugger: Sendable {
    let machine: Machine
    let seed: UInt64
    let stop = Atomic<Bool>(false)
    let detaches = Atomic<Int>(0)
    let attaches = Atomic<Int>(0)
    let failures = Mutex<[String]>([])

    init(machine: Machine, seed: UInt64) {
        self.machine = machine
        self.seed = seed
    }

    func run() {
        var rng = SplitMix64(seed: seed, stream: .max)
        // Relaxed: a stop flag; the join that follows orders everything else.
        while !stop.load(ordering: .relaxed) {
            let cpu = Int.random(in: 0..<machine.possibleCount, using: &rng)
            do {
                // Relaxed counters: read after the join.
                if !machine.online.contains(cpu) {
                    try machine.online(cpu)
                    attaches.add(1, ordering: .relaxed)
                } else if machine.online.count > 1 {
                    try machine.offline(cpu)
                    detaches.add(1, ordering: .relaxed)
                }
            } catch {
                failures.withLock { $0.append("CPU \(cpu): \(error)") }
            }
            usleep(UInt32.random(in: 0...2_000, using: &rng))
        }
    }
}

/// Request latencies in a log histogram (16 buckets per power of two: about 4% resolution), so that memory stays
/// bounded however long the run.
struct Latencies: Sendable {
    private var counts = [Int](repeating: 0, count: 64 * 16)
    private(set) var count = 0
    private(set) var max: Int64 = 0

    private static func bucket(_ nanoseconds: Int64) -> Int { Int(log2(Double(Swift.max(nanoseconds, 1))) * 16) }

    mutating func record(_ nanoseconds: Int64) {
        counts[Self.bucket(nanoseconds)] += 1
        count += 1
        max = Swift.max(max, nanoseconds)
    }

    mutating func merge(_ other: Latencies) {
        for index in counts.indices { counts[index] += other.counts[index] }
        count += other.count
        max = Swift.max(max, other.max)
    }

    /// The `fraction` quantile (nearest rank), as the upper bound of its bucket.
    func quantile(_ fraction: Double) -> Int64 {
        let rank = Swift.max(1, Int((fraction * Double(count)).rounded(.up)))
        var seen = 0
        for (bucket, n) in counts.enumerated() {
            seen += n
            if seen >= rank { return Swift.min(max, Int64(exp2(Double(bucket + 1) / 16))) }
        }
        return max
    }
}

@main
struct AsyncShards: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "async-shards",
        abstract: "A sharded key-value store, one actor per logical CPU, while CPUs are detached and attached.")

    @Option(help: "Logical CPUs, one shard each (default: one per CPU this process may use, at least 2).")
    var cpus: Int?
    @Option(help: "How long the clients send requests, in seconds.")
    var seconds: Double = 3
    @Option(help: "Client tasks.")
    var clients: Int = 16
    @Option(help: "Keys of the store.")
    var keys: Int = 1024
    @Option(help: "Seed of the clients' keys and amounts and of the CPUs detached and attached.")
    var seed: UInt64 = 1
    @Option(help: "Log level of the library: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .warning

    func validate() throws {
        if let cpus, cpus < 2 { throw ValidationError("--cpus must be at least 2 (one stays online)") }
        guard seconds > 0 else { throw ValidationError("--seconds must be positive") }
        guard clients >= 1 else { throw ValidationError("--clients must be at least 1") }
        guard keys >= 1 else { throw ValidationError("--keys must be at least 1") }
    }

    func run() async throws {
        bootstrapLogging(level: logLevel)
        let (seed, keys, clients) = (seed, keys, clients)
        let count = try cpus ?? max(2, setUp("read the topology", seed: seed) { try Topology.current() }.cpus.count)
        let machine = try setUp("create the machine", seed: seed) { try Machine(cpus: count) }
        let shards = try setUp("pin the shards", seed: seed) {
            try (0..<count).map { cpu throws(HotplugError) in try Shard(machine: machine, cpu: cpu, clients: clients) }
        }
        let progress = (0..<clients).map { _ in ClientProgress() }
        Watchdog.start(afterSeconds: seconds + 60, program: "async-shards", seed: seed) { line in
            for (id, client) in progress.enumerated() {
                let issued = client.issued.load(ordering: .relaxed), answered = client.answered.load(ordering: .relaxed)
                if issued != answered { report("client \(id): \(issued) requests issued, \(answered) answered") }
            }
            report(line)
        }
        report("async-shards: \(count) logical CPUs (one shard each), clients \(clients), keys \(keys), "
               + "\(fixed(seconds, 1)) s, seed \(seed)")

        let hotplug = Hotplugger(machine: machine, seed: seed)
        let thread = try setUp("start the hotplug thread", seed: seed) { try OSThread { hotplug.run() } }
        let started = ContinuousClock.now
        let deadline = started + .seconds(seconds)
        let reports = await withTaskGroup(of: ClientReport.self) { group in
            for id in 0..<clients {
                // The preference runs the client's own code on the machine's CPUs: without it, each answer would
                // resume it on the global executor.
                let preference: any TaskExecutor = id % 2 == 0 ? machine.pool : machine.executors[id % count]
                group.addTask(executorPreference: preference) {
                    await runClient(id, shards: shards, keys: keys, seed: seed, progress: progress[id], until: deadline)
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        let elapsed = ContinuousClock.now - started
        hotplug.stop.store(true, ordering: .relaxed)
        thread.join()

        // After shutdown no CPU is left: the shards' jobs run on a fallback thread, one at a time, and still answer.
        let online = machine.online
        machine.shutdown()
        var snapshots: [Shard.Snapshot] = []
        for shard in shards { snapshots.append(await shard.snapshot()) }

        let hotplugFailures = hotplug.failures.withLock { $0 }
        var failures = hotplugFailures.map { "hotplug operation failed: \($0)" }
        var latencies = Latencies()
        var written = [Int](repeating: 0, count: keys)
        var answered = 0
        for client in reports.sorted(by: { $0.id < $1.id }) {
            let issued = progress[client.id].issued.load(ordering: .relaxed)
            let answers = progress[client.id].answered.load(ordering: .relaxed)
            let applied = snapshots.reduce(0) { $0 + $1.applied[client.id] }
            if issued != answers || answers != applied || client.wrongAnswers > 0 {
                failures.append("client \(client.id): \(issued) requests issued, \(answers) answered, \(applied) "
                                + "applied by the shards, \(client.wrongAnswers) answers naming another request")
            }
            answered += answers
            latencies.merge(client.latencies)
            for key in 0..<keys { written[key] += client.written[key] }
        }
        for (cpu, snapshot) in snapshots.enumerated() {
            if snapshot.duplicates > 0 { failures.append("shard \(cpu) saw \(snapshot.duplicates) requests twice") }
            if snapshot.offMachine > 0 {
                failures.append("shard \(cpu) ran \(snapshot.offMachine) requests off the machine's CPUs")
            }
        }
        let stored = snapshots.reduce(into: [Int](repeating: 0, count: keys)) { stored, snapshot in
            for (key, value) in snapshot.counters { stored[key] += value }
        }
        let wrongKeys = (0..<keys).filter { stored[$0] != written[$0] }
        if let key = wrongKeys.first {
            failures.append("\(wrongKeys.count) keys hold another total than the clients wrote (key \(key): "
                            + "\(stored[key]) stored, \(written[key]) written)")
        }
        let detaches = hotplug.detaches.load(ordering: .relaxed), attaches = hotplug.attaches.load(ordering: .relaxed)
        if detaches == 0 { failures.append("no CPU was detached: the run proved nothing about hotplug") }

        let micros = { (nanoseconds: Int64) in fixed(Double(nanoseconds) / 1_000, 1) }
        let perSecond = Double(answered) / (Double(elapsed.nanoseconds) / 1e9)
        report("requests: \(answered) answered in \(fixed(Double(elapsed.nanoseconds) / 1e9, 2)) s, "
               + "\(fixed(perSecond, 0)) per second")
        report("latency, us: p50 \(micros(latencies.quantile(0.5)))  p99 \(micros(latencies.quantile(0.99)))  "
               + "max \(micros(latencies.max))")
        report("hotplug: \(detaches) detaches, \(attaches) attaches, \(hotplugFailures.count) failed; "
               + "online at the end: \(online); \(snapshots.reduce(0) { $0 + $1.onStandIn }) requests ran on a stand-in")
        report("totals: \(keys - wrongKeys.count) of \(keys) keys match what the clients wrote "
               + "(\(stored.reduce(0, +)) in all), read after shutdown on the fallback thread")
        if let first = failures.first {
            report("FAILED: \(first)\(failures.count > 1 ? " (and \(failures.count - 1) more)" : "") "
                   + "-- reproduce with --seed \(seed)")
            throw ExitCode.failure
        }
        report("OK: every request answered exactly once, every total matches (seed \(seed))")
    }
}
