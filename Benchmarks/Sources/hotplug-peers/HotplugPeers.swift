import ArgumentParser
import BenchSupport
import CPeers
import Hotplug
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Measures each figure of swift-hotplug beside its raw peer, in the same run, and prints the ratios.
@main
struct HotplugPeers: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hotplug-peers",
        abstract: "Measure swift-hotplug's figures beside their raw peers, in the same run.",
        discussion: """
            Each figure alternates blocks of ours and of its peer (--rounds of each), so drift on a noisy machine \
            hits both sides alike. A sample is one round trip, barrier episode, stop_machine, membarrier, hotplug \
            operation, partition move or pthread_create + pthread_join, or (tasklet throughput, slab figures) one batch divided by its \
            size, timed with CLOCK_MONOTONIC, or (parked CPU time) a parked thread's CPU time growth over a window, \
            in percent of one core, or (follow) the time from an affinity change of every thread to the follower's \
            event; p50 and p99 are nearest-rank percentiles of the sorted samples. \
            ratio = ours / peer, for p50 and for p99; a goal is met when the p50 ratio is within it (parked CPU \
            time: when our p99 is under 0.1% of a core; follow, which has no measured peer: when our p99 is at most \
            10 ms). The barrier \
            and stop_machine figures run for every N from 2 to the CPUs of the affinity mask (--max-threads).
            """)

    @Option(help: "Timed samples per side of each figure.")
    var iterations: Int = 20_000

    @Option(name: .customLong("slow-iterations"),
            help: "Timed samples per side of the slow figures (stop-machine, attach-detach, partition-move).")
    var slowIterations: Int = 5_000

    @Option(help: "Untimed warm-up samples before every block.")
    var warmup: Int = 300

    @Option(help: "Timed batches per side of the batch figure (tasklet-throughput).")
    var batches: Int = 1_000

    @Option(name: .customLong("batch-size"),
            help: "Operations per batch of the batch figure (also the number of tasklets created up front).")
    var batchSize: Int = 10_000

    @Option(name: .customLong("batch-warmup"), help: "Untimed batches before every block of the batch figure.")
    var batchWarmup: Int = 20

    @Option(name: .customLong("slab-batch"),
            help: "Operations per sample of the slab figures (alloc+free pairs; objects per remote-free round).")
    var slabBatch: Int = 1_000

    @Option(name: .customLong("cpu-time-windows"),
            help: "Windows sampled per side of the parked CPU time figure (each a sample).")
    var cpuTimeWindows: Int = 8

    @Option(name: .customLong("cpu-time-window-ms"), help: "Length of one window of the parked CPU time figure.")
    var cpuTimeWindowMilliseconds: Int = 200

    @Option(name: .customLong("follow-cycles"),
            help: "Shrink / restore cycles per row of the follow figure (each gives one sample per series).")
    var followCycles: Int = 1_000

    @Option(help: "Blocks per side of each figure, alternating ours and the peer.")
    var rounds: Int = 4

    @Option(name: .customLong("timeout-ms"), help: "Bound of every single wait (an acknowledgement, a state).")
    var timeoutMilliseconds: Int = 1_000

    @Option(name: .customLong("settle-us"), help: "Time given a parked CPU to fall asleep before each sample.")
    var settleMicroseconds: Int = 20

    @Option(name: .customLong("figure"),
            help: "Run only these figures: polling, running, parked, barrier, stop-machine, attach-detach, tasklet-throughput, tasklet-latency, slab-pair-1cpu, slab-pair-allcpus, slab-remote-free, parked-cpu-time, partition-move, follow, follow-quota, executor-yield, executor-round-trip, executor-cross-cpu, executor-detach, scale-stop-machine, scale-attach-detach, bulk-hotplug, plain-thread-hotplug, tasklet-atomic, slab (the three slab figures), executors (the four executor figures), or scaling (the five scaling figures).")
    var figures: [FigureSelection] = []

    @Option(name: .customLong("max-threads"),
            help: "Largest N of the N-thread figures (barrier, stop-machine; attach-detach's machine size); default and cap: the CPUs of the affinity mask.")
    var maxThreads: Int?

    @Option(help: "Also write the results as JSON to this file.")
    var json: String?

    @Flag(help: "Exit non-zero when a goal is not met.")
    var requireGoals = false

    /// Internal: this process is a malloc peer's child ("peer:figure"), started by the slab figures with
    /// LD_PRELOAD; it measures `--iterations` samples and prints them as JSON.
    @Option(name: .customLong("malloc-peer-child"), help: .hidden)
    var mallocPeerChild: String?

    mutating func validate() throws {
        guard iterations >= 1 else { throw ValidationError("--iterations must be at least 1") }
        guard slowIterations >= 1 else { throw ValidationError("--slow-iterations must be at least 1") }
        guard batches >= 1 else { throw ValidationError("--batches must be at least 1") }
        guard followCycles >= 1 else { throw ValidationError("--follow-cycles must be at least 1") }
        guard rounds >= 1, rounds <= min(iterations, slowIterations, batches, followCycles) else {
            throw ValidationError("--rounds must be in 1...min(iterations, slow-iterations, batches, follow-cycles)")
        }
        guard warmup >= 0 else { throw ValidationError("--warmup must not be negative") }
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be at least 1") }
        guard batchWarmup >= 0 else { throw ValidationError("--batch-warmup must not be negative") }
        guard slabBatch >= 1 else { throw ValidationError("--slab-batch must be at least 1") }
        guard cpuTimeWindows >= 1 else { throw ValidationError("--cpu-time-windows must be at least 1") }
        guard cpuTimeWindowMilliseconds >= 1 else { throw ValidationError("--cpu-time-window-ms must be at least 1") }
        guard timeoutMilliseconds >= 1 else { throw ValidationError("--timeout-ms must be at least 1") }
        guard settleMicroseconds >= 0 else { throw ValidationError("--settle-us must not be negative") }
        if let maxThreads, maxThreads < 2 { throw ValidationError("--max-threads must be at least 2") }
    }

    func run() throws {
        Watchdog.start()
        let settings = Settings(warmup: warmup, timeoutNs: Int64(timeoutMilliseconds) * 1_000_000,
                                settleNs: Int64(settleMicroseconds) * 1_000, batchSize: batchSize,
                                batchWarmup: batchWarmup, slabBatch: slabBatch,
                                cpuTimeWindowNs: Int64(cpuTimeWindowMilliseconds) * 1_000_000)
        if let mallocPeerChild {
            Watchdog.arm("malloc peer \(mallocPeerChild)", seconds: 60 + Int64(iterations / 1_000))
            MallocPeerChild.run(mallocPeerChild, samples: iterations, settings: settings)
        }
        let layout: Layout
        do {
            layout = try Layout.current()
        } catch {
            print("FAILED: \(error)")
            throw ExitCode.failure
        }
        // N-thread figures: every N from 2 to the CPUs of the affinity mask (at most --max-threads); 2 on one CPU.
        let mostThreads = max(2, min(maxThreads ?? layout.cpus.count, layout.cpus.count))
        let threadCounts = 2...mostThreads
        let chosen = figures.flatMap(\.figures)
        let selected = chosen.isEmpty ? FigureID.allCases : FigureID.allCases.filter(chosen.contains)
        var rows: [Row] = []
        for figure in selected {
            for plan in plans(figure, layout: layout, threadCounts: threadCounts) {
                rows += measure(plan, layout: layout, settings: settings)
            }
        }
        let clock = clockOverhead(layout)
        let report = Report(rows: rows, layout: layout, iterations: iterations, slowIterations: slowIterations,
                            batches: batches, batchSize: batchSize, batchWarmup: batchWarmup,
                            slabBatch: slabBatch, cpuTimeWindows: cpuTimeWindows,
                            cpuTimeWindowMs: cpuTimeWindowMilliseconds, mallocPeers: MallocPeerLog.lines,
                            followCycles: followCycles, followWarmup: followWarmupCycles(settings),
                            rounds: rounds, warmup: warmup,
                            threadCounts: threadCounts, clockP50: clock.p50, clockP99: clock.p99)
        print(report.table())
        if let json {
            if let failure = report.writeJSON(to: json) {
                print("FAILED: \(failure)")
                throw ExitCode.failure
            }
        }
        if let failed = rows.first(where: { $0.error != nil }) {
            print("FAILED: \(failed.figure) vs \(failed.peerName): \(failed.error!)")
            throw ExitCode.failure
        }
        if requireGoals, let missed = rows.first(where: { $0.met == false }) {
            print("FAILED: goal not met: \(missed.figure) vs \(missed.peerName) (\(missed.goal.text))")
            throw ExitCode.failure
        }
    }

    // MARK: Running a figure

    /// One side of a comparison: a name and how to fill a block of samples.
    struct Contender {
        let name: String
        let measure: Side
        var available = true
        var unavailableNote = "not available here"
    }

    /// One figure as it is measured: our series (one figure title each; attach / detach has two, measured together)
    /// beside every peer.
    struct Plan {
        let titles: [String]
        let ours: MultiSide
        var peers: [(Contender, Goal)]
        /// Peers whose names start with `prefix` compete: only the best (lowest p50) keeps its goal and gets `note`,
        /// the others inform.
        var bestOf: (prefix: String, note: String)?
        /// Measured with `--slow-iterations` samples per side instead of `--iterations`.
        var slow = false
        /// A batch figure: `--batches` samples per side, each one batch's time per operation, in picoseconds.
        var batches = false
        /// The parked CPU time figure: `--cpu-time-windows` samples per side, each a share of one core
        /// (`cpuShareUnitsPerPercent` per percent).
        var cpuTimeWindows = false
        /// A per-operation figure with `--iterations` samples per side (the slab figures): samples in picoseconds
        /// per operation, like the batch figures', in this unit (for the JSON).
        var unit: String?
        /// A figure with no measured peer (follow): `peers` is empty, and each title has its own row with this peer
        /// column and goal (absolute, or `(info)`). The peer is named for information; nothing of it is measured.
        var alone: [(peer: String, goal: Goal)]?
        /// The follow figure: `--follow-cycles` samples per series.
        var followCycles = false
        /// Why this figure cannot run here: its rows are left unmeasured with this note.
        var skipped: String?
        /// A note for series `index`'s row, given its statistics (alone figures only).
        var seriesNote: (@Sendable (_ index: Int, _ stats: Stats) -> String?)?
        /// Samples per side when the figure sets its own count (the executor figures), and the time a sample may
        /// take on average before the watchdog calls the figure hung.
        var samples: Int?
        var msPerSample: Int64 = 1

        init(_ title: String, ours: @escaping Side, peers: [(Contender, Goal)],
             bestOf: (prefix: String, note: String)? = nil) {
            self.init(titles: [title], ours: { layout, settings, blocks throws(BenchFailure) in
                try ours(layout, settings, blocks[0])
            }, peers: peers, bestOf: bestOf)
        }

        init(titles: [String], ours: @escaping MultiSide, peers: [(Contender, Goal)],
             bestOf: (prefix: String, note: String)? = nil) {
            self.titles = titles
            self.ours = ours
            self.peers = peers
            self.bestOf = bestOf
        }
    }

    /// The plans of one figure: one per thread count for the N-thread figures.
    private func plans(_ figure: FigureID, layout: Layout, threadCounts: ClosedRange<Int>) -> [Plan] {
        switch figure {
        case .polling:
            return [Plan(figure.title, ours: oursPolling, peers: [
                (Contender(name: "cache-line ping-pong round trip", measure: peerPingPong), Goal(limit: 4)),
            ])]
        case .running:
            return [Plan(figure.title, ours: oursRunning, peers: [
                (Contender(name: "raw tgkill + handler round trip", measure: peerSignal), Goal(limit: 1.1)),
            ])]
        case .parked:
            return [Plan(figure.title, ours: oursParked, peers: [
                (Contender(name: "raw futex wake round trip", measure: peerFutex), Goal(limit: 1.2)),
            ])]
        case .barrier:
            return threadCounts.map { threads in
                var peers = [(Contender(name: "glibc pthread_barrier_wait",
                                        measure: peerBarrier(CPR_BARRIER_PTHREAD, threads: threads)),
                              Goal(limit: 1.0 / 15, text: "<= 0.067x (>= 15x faster)"))]
                let ck: [(String, cpr_barrier_kind_t)] = [
                    ("ck centralized barrier", CPR_BARRIER_CK_CENTRALIZED),
                    ("ck dissemination barrier", CPR_BARRIER_CK_DISSEMINATION),
                    ("ck tournament barrier", CPR_BARRIER_CK_TOURNAMENT),
                    ("ck MCS barrier", CPR_BARRIER_CK_MCS),
                ]
                for (name, kind) in ck {
                    var contender = Contender(name: name, measure: peerBarrier(kind, threads: threads))
                    // Concurrency Kit barriers only spin: on a single CPU each episode would wait for a time slice.
                    contender.available = cpr_barrier_available(kind) && layout.sender != nil
                    contender.unavailableNote = "not available here (Concurrency Kit missing, or a single CPU)"
                    peers.append((contender, Goal(limit: 1.0, text: "<= 1.0x best ck")))
                }
                return Plan("barrier episode, \(threads) threads", ours: oursBarrier(threads: threads), peers: peers,
                            bestOf: ("ck ", "best ck barrier"))
            }
        case .stopMachine:
            let registered = cpr_membarrier_register()
            return threadCounts.map { threads in
                let others = threads - 1
                var peers: [(Contender, Goal)] = [
                    (Contender(name: "membarrier expedited, \(others) thread\(others == 1 ? "" : "s") spinning",
                               measure: peerMembarrier(threads: threads, spinning: true)),
                     Goal(limit: 1.0)),
                    (Contender(name: "membarrier expedited, \(others) thread\(others == 1 ? "" : "s") idle",
                               measure: peerMembarrier(threads: threads, spinning: false)),
                     Goal(limit: nil)),
                ]
                if registered != 0 {
                    for index in peers.indices {
                        peers[index].0.available = false
                        peers[index].0.unavailableNote = "not available here: MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: "
                            + String(cString: strerror(registered))
                    }
                }
                // Deciding: called on a CPU of the machine (N threads, like the peer's). Information: called from a
                // plain thread that shares CPU 0 with logical CPU 0 (N + 1 threads on N CPUs).
                var onCPU = Plan("stop_machine, \(threads) CPUs, called on CPU 0",
                                 ours: oursStopMachine(threads: threads, onCPU: true), peers: peers)
                onCPU.slow = true
                var outside = Plan("stop_machine, \(threads) CPUs, called from a plain thread",
                                   ours: oursStopMachine(threads: threads, onCPU: false),
                                   peers: peers.map { ($0.0, Goal(limit: nil)) })
                outside.slow = true
                return [onCPU, outside]
            }.flatMap { $0 }
        case .attachDetach:
            let cpus = threadCounts.upperBound
            let goal = Goal(limit: 0.5, maxOursP50: 20_000, text: "<= 0.5x and <= 20 us")
            var plan = Plan(titles: ["detach: offline(1), \(cpus) CPUs, called on CPU 0",
                                     "attach: online(1), \(cpus) CPUs, called on CPU 0"],
                            ours: oursAttachDetach(cpus: cpus, onCPU: true), peers: [
                (Contender(name: "pthread_create + pthread_join", measure: peerThreadCreateJoin), goal),
            ])
            plan.slow = true
            var outside = Plan(titles: ["detach: offline(1), \(cpus) CPUs, called from a plain thread",
                                        "attach: online(1), \(cpus) CPUs, called from a plain thread"],
                               ours: oursAttachDetach(cpus: cpus, onCPU: false), peers: [
                (Contender(name: "pthread_create + pthread_join", measure: peerThreadCreateJoin), Goal(limit: nil)),
            ])
            outside.slow = true
            return [plan, outside]
        case .taskletThroughput:
            // Deciding: the schedules are made on logical CPU 1 itself; the peer's producer runs on CPU 1's physical
            // CPU. Information: both from a plain thread on the other physical CPU.
            var onCPU = Plan("tasklet schedule -> run throughput, per CPU: ns/op, scheduled on CPU 1",
                             ours: oursTaskletThroughput(onCPU: true), peers: [
                // Information: the goal on a tasklet's cost is against one atomic add (tasklet-atomic).
                (Contender(name: "DispatchQueue.async, serial queue", measure: peerDispatchThroughput(onCPU: true)),
                 Goal(limit: nil)),
            ])
            onCPU.batches = true
            var outside = Plan("tasklet schedule -> run throughput, per CPU: ns/op, from a plain thread",
                               ours: oursTaskletThroughput(onCPU: false), peers: [
                (Contender(name: "DispatchQueue.async, serial queue", measure: peerDispatchThroughput(onCPU: false)),
                 Goal(limit: nil)),
            ])
            outside.batches = true
            return [onCPU, outside]
        case .taskletLatency:
            return [
                Plan("tasklet cross-CPU schedule -> run, parked CPU", ours: oursTaskletLatency(polling: false), peers: [
                    (Contender(name: "raw futex wake round trip", measure: peerFutex), Goal(limit: nil)),
                ]),
                Plan("tasklet cross-CPU schedule -> run, polling CPU", ours: oursTaskletLatency(polling: true), peers: [
                    (Contender(name: "cache-line ping-pong round trip", measure: peerPingPong), Goal(limit: nil)),
                ]),
            ]
        case .slabPair1CPU, .slabPairAllCPUs:
            // Deciding against the best (lowest p50) of glibc, jemalloc and tcmalloc.
            let cpus = figure == .slabPair1CPU ? 1 : layout.cpus.count
            let goal = Goal(limit: 0.8, text: "<= 0.8x best malloc")
            var plan = Plan(cpus == 1 ? "slab alloc+free pair, 1 CPU: ns/pair" : "slab alloc+free pair, \(cpus) CPUs at once: ns/pair",
                            ours: oursSlabPairs(cpus: cpus),
                            peers: MallocPeer.allCases.map { ($0.contender(figure), goal) },
                            bestOf: (MallocPeer.namePrefix, "best malloc peer"))
            plan.unit = slabPairUnit
            return [plan]
        case .slabRemoteFree:
            // Deciding against tcmalloc's (a free from another thread into its per-thread cache, the cheapest
            // remote free of the three); glibc and jemalloc inform.
            var plan = Plan("slab alloc on CPU 0 + free on CPU 1 (other node): ns/object", ours: oursSlabRemoteFree,
                            peers: MallocPeer.allCases.map { peer in
                                (peer.contender(figure),
                                 peer == .tcmalloc ? Goal(limit: 1.0, text: "<= 1.0x tcmalloc") : Goal(limit: nil))
                            })
            plan.unit = slabRemoteUnit
            return [plan]
        case .parkedCPUTime:
            // An absolute goal: under 0.1% of a core (< 1 ms of CPU time per second) in every window but the worst
            // 1%. The peer, a thread blocked in futex_wait, shows what "does not grow" looks like.
            let goal = Goal(limit: nil, maxOursP99: cpuShareUnitsPerPercent / 10 - 1, text: "< 0.1% of a core (p99)")
            var plan = Plan(titles: ["parked CPU time: detached CPU (offline(1)), % of a core",
                                     "parked CPU time: idle online CPU (parked on its mailbox), % of a core"],
                            ours: oursParkedCPUTime, peers: [
                (Contender(name: "a thread blocked in futex_wait", measure: peerParkedCPUTime), goal),
            ])
            plan.cpuTimeWindows = true
            plan.unit = cpuShareUnit
            return [plan]
        case .partitionMove:
            // Information: the move latency's p50/p99; no goal is set. The peer is attach /
            // detach's, on the same thread.
            let processors = partitionMoveProcessors(layout)
            let on = "\(processors) processors on \(layout.cpus.count) CPU\(layout.cpus.count == 1 ? "" : "s")"
            var plan = Plan(titles: ["partition move: pool.move(\(partitionMoveProcessor), a <-> b), \(on), from a plain thread",
                                     "partition move: its detach part (Move.detach, from's offline)",
                                     "partition move: its attach part (Move.attach, to's online)"],
                            ours: oursPartitionMove, peers: [
                (Contender(name: "pthread_create + pthread_join", measure: peerThreadCreateJoin), Goal(limit: nil)),
            ])
            plan.slow = true
            return [plan]
        case .executorYield, .executorRoundTrip, .executorCrossCPU, .executorDetach:
            return executorPlans(figure, layout: layout)
        case .scaleStopMachine, .scaleAttachDetach, .bulkHotplug, .plainThreadHotplug, .taskletAtomic:
            return scalingPlans(figure, layout: layout)
        case .follow:
            // No measured peer: the goal is absolute (p99 <= 10 ms from the change to the event); Go's runtime is
            // named beside the deciding rows for information. One row per follower policy.
            let realtimeRefusal = followRealtimeRefusal()
            return [("default policy", nil as Int32?), ("SCHED_FIFO 1", 1)].map { policy, priority in
                var plan = Plan(titles: followTitles(policy),
                                ours: oursFollow(realtimePriority: priority, policy: policy), peers: [])
                plan.alone = followSeries
                plan.followCycles = true
                if layout.cpus.count < 2 {
                    plan.skipped = "skipped: the affinity mask has \(layout.cpus.count) CPU; the figure needs logical "
                        + "CPUs 0 and 1 on two physical CPUs"
                } else if priority != nil {
                    plan.skipped = realtimeRefusal
                }
                let cycles = followCycles
                plan.seriesNote = { index, stats in
                    guard followSeries[index].goal.decides else { return nil }
                    let misses = FollowLog.misses(policy)
                    return "max \(fixed(Double(stats.max) / 1e6, 3)) ms, \(misses) miss\(misses == 1 ? "" : "es") in "
                        + "\(cycles) cycles"
                }
                return plan
            }
        case .followQuota:
            // No measured peer: p99 <= 3 ms from the quota write to the event (QuotaFigures.swift).
            var plan = Plan(titles: quotaTitles, ours: oursQuota(), peers: [])
            plan.alone = quotaSeries
            plan.followCycles = true
            plan.skipped = quotaSkipReason(layout)
            let cycles = followCycles
            plan.seriesNote = { index, stats in
                guard quotaSeries[index].goal.decides else { return nil }
                let misses = quotaMisses.withLock { $0 }
                return "max \(fixed(Double(stats.max) / 1e6, 3)) ms, \(misses) miss\(misses == 1 ? "" : "es") in \(cycles) cycles"
            }
            return [plan]
        }
    }

    private func measure(_ plan: Plan, layout: Layout, settings: Settings) -> [Row] {
        if let skipped = plan.skipped {
            // One note for the figure's rows, on the first.
            let note = plan.titles.count == 1 ? skipped : skipped + " (this row and the \(plan.titles.count - 1) below)"
            return plan.titles.enumerated().map { index, title in
                Row(figure: title, peerName: plan.alone?[index].peer ?? "-", ours: nil, peerStats: nil,
                    goal: plan.alone?[index].goal ?? Goal(limit: nil), error: nil, note: index == 0 ? note : nil)
            }
        }
        let peers = plan.peers
        let live = peers.filter { $0.0.available }
        var rows: [Row] = []
        for title in plan.titles {
            rows += peers.filter { !$0.0.available }.map { peer in
                Row(figure: title, peerName: peer.0.name, ours: nil, peerStats: nil, goal: peer.1,
                    error: nil, note: peer.0.unavailableNote)
            }
        }

        let count = plan.samples ?? (plan.followCycles ? followCycles : plan.cpuTimeWindows ? cpuTimeWindows
            : plan.batches ? batches : plan.slow ? slowIterations : iterations)
        // Allow 1 ms a sample on average (10 ms for the slow figures, 20 ms a cycle for the follow figure, 5 us an
        // operation for the batch figures, the windows themselves for the parked CPU time figure) before calling a
        // figure hung.
        let secondsPerSide = plan.samples != nil ? Int64(count) * plan.msPerSample / 1_000
            : plan.followCycles ? Int64(count / 50)
            : plan.cpuTimeWindows ? Int64(count * cpuTimeWindowMilliseconds) / 1_000
            : plan.batches ? Int64(count) * Int64(batchSize) / 200_000
            : Int64(count / (plan.slow ? 100 : 1_000))
        Watchdog.arm(plan.titles.joined(separator: " / "),
                     seconds: 60 + secondsPerSide * Int64(plan.titles.count + live.count))
        defer { Watchdog.disarm() }
        let oursSamples = plan.titles.map { _ in SampleBuffer(count: count) }
        let peerSamples = live.map { _ in SampleBuffer(count: count) }
        defer {
            oursSamples.forEach { $0.deallocate() }
            peerSamples.forEach { $0.deallocate() }
        }
        var failure: (side: String, error: BenchFailure)?
        rounds: for round in 0..<rounds {
            let range = blockRange(round, of: count)
            do {
                try plan.ours(layout, settings, oursSamples.map { $0.block(range) })
            } catch {
                failure = ("ours", error)
                break rounds
            }
            for (index, peer) in live.enumerated() {
                do {
                    try peer.0.measure(layout, settings, peerSamples[index].block(range))
                } catch {
                    failure = (peer.0.name, error)
                    break rounds
                }
            }
        }
        if let alone = plan.alone {
            return plan.titles.enumerated().map { index, title in
                if let failure {
                    return Row(figure: title, peerName: alone[index].peer, ours: nil, peerStats: nil,
                               goal: alone[index].goal, error: "\(failure.side): \(failure.error)", note: nil)
                }
                let stats = Stats(oursSamples[index].storage)
                return Row(figure: title, peerName: alone[index].peer, ours: stats, peerStats: nil,
                           goal: alone[index].goal, error: nil, note: plan.seriesNote?(index, stats))
            }
        }
        if let failure {
            let message = "\(failure.side): \(failure.error)"
            for title in plan.titles {
                rows += live.map { peer in
                    Row(figure: title, peerName: peer.0.name, ours: nil, peerStats: nil, goal: peer.1, error: message,
                        note: nil)
                }
            }
            return rows
        }
        let peerStats = peerSamples.map { Stats($0.storage) }
        for (series, title) in plan.titles.enumerated() {
            let oursStats = Stats(oursSamples[series].storage)
            var measured = live.enumerated().map { index, peer in
                Row(figure: title, peerName: peer.0.name, ours: oursStats, peerStats: peerStats[index], goal: peer.1,
                    error: nil, note: nil,
                    scale: plan.cpuTimeWindows ? cpuShareUnitsPerPercent
                        : plan.batches || plan.unit != nil ? picosecondsPerNanosecond : 1,
                    unit: plan.unit, percent: plan.cpuTimeWindows)
            }
            if let (prefix, note) = plan.bestOf {
                // The goal is against the best of these peers (lowest p50): only that row decides; the others inform.
                let competing = measured.indices.filter { measured[$0].peerName.hasPrefix(prefix) }
                if let best = competing.min(by: { measured[$0].peerStats!.p50 < measured[$1].peerStats!.p50 }) {
                    for index in competing where index != best {
                        measured[index].goal = Goal(limit: nil, text: "(info)")
                    }
                    measured[best].note = note
                }
            }
            rows += measured
        }
        return rows
    }

    /// The samples of block `round`: `count` split into `rounds` nearly equal blocks.
    private func blockRange(_ round: Int, of count: Int) -> Range<Int> {
        shareRange(round, of: count, parts: rounds)
    }

    /// What one reading of the clock costs (it is inside every sample, on both sides).
    private func clockOverhead(_ layout: Layout) -> (p50: Int64, p99: Int64) {
        let buffer = SampleBuffer(count: 10_000)
        defer { buffer.deallocate() }
        let block = SampleBlock(buffer.storage)
        do {
            try PinnedThread.run(pinnedTo: layout.sender) {
                for i in 0..<block.count {
                    let t0 = cpr_now_ns()
                    let t1 = cpr_now_ns()
                    block[i] = t1 - t0
                }
            }
        } catch {
            return (-1, -1)
        }
        let stats = Stats(buffer.storage)
        return (stats.p50, stats.p99)
    }
}

/// The figures of this runner.
enum FigureID: String, CaseIterable, ExpressibleByArgument, Sendable {
    case polling, running, parked, barrier
    case stopMachine = "stop-machine"
    case attachDetach = "attach-detach"
    case taskletThroughput = "tasklet-throughput"
    case taskletLatency = "tasklet-latency"
    case slabPair1CPU = "slab-pair-1cpu"
    case slabPairAllCPUs = "slab-pair-allcpus"
    case slabRemoteFree = "slab-remote-free"
    case parkedCPUTime = "parked-cpu-time"
    case partitionMove = "partition-move"
    case follow
    case followQuota = "follow-quota"
    case executorYield = "executor-yield"
    case executorRoundTrip = "executor-round-trip"
    case executorCrossCPU = "executor-cross-cpu"
    case executorDetach = "executor-detach"
    case scaleStopMachine = "scale-stop-machine"
    case scaleAttachDetach = "scale-attach-detach"
    case bulkHotplug = "bulk-hotplug"
    case plainThreadHotplug = "plain-thread-hotplug"
    case taskletAtomic = "tasklet-atomic"

    /// The slab allocator's figures (`--figure slab` selects them all).
    var isSlab: Bool { self == .slabPair1CPU || self == .slabPairAllCPUs || self == .slabRemoteFree }

    /// The Swift executor figures (`--figure executors` selects them all).
    var isExecutor: Bool { rawValue.hasPrefix("executor-") }

    /// The scaling figures (`--figure scaling` selects them all; ScalingFigures.swift).
    var isScaling: Bool {
        [.scaleStopMachine, .scaleAttachDetach, .bulkHotplug, .plainThreadHotplug, .taskletAtomic].contains(self)
    }

    /// The title of a single-series figure (the N-thread ones name N in theirs).
    var title: String {
        switch self {
        case .polling: return "SIGP to a polling CPU"
        case .running: return "SIGP to a running CPU"
        case .parked: return "SIGP waking a parked CPU"
        case .barrier: return "barrier episode, N threads"
        case .stopMachine: return "stop_machine, N CPUs"
        case .attachDetach: return "attach / detach"
        case .taskletThroughput: return "tasklet schedule -> run throughput, per CPU"
        case .taskletLatency: return "tasklet cross-CPU schedule -> run latency"
        case .slabPair1CPU: return "slab alloc+free pair, 1 CPU"
        case .slabPairAllCPUs: return "slab alloc+free pair, every CPU at once"
        case .slabRemoteFree: return "slab alloc + remote free"
        case .parkedCPUTime: return "parked CPU time"
        case .partitionMove: return "partition move"
        case .follow: return "follow: process affinity shrink / restore"
        case .followQuota: return "follow quota: cgroup CPU quota shrink / lift"
        case .executorYield: return "executor: Task.yield on one CPU"
        case .executorRoundTrip: return "executor: actor round trip on one CPU"
        case .executorCrossCPU: return "executor: actor round trip across two CPUs"
        case .executorDetach: return "executor: detach with 10,000 queued jobs"
        case .scaleStopMachine: return "stop_machine, 2 busy CPUs among many idle"
        case .scaleAttachDetach: return "attach / detach with many idle CPUs"
        case .bulkHotplug: return "bulk grow / shrink"
        case .plainThreadHotplug: return "attach / detach from a plain thread"
        case .taskletAtomic: return "tasklet schedule + run vs one atomic add"
        }
    }
}

/// What `--figure` accepts: one figure, or `slab` for the three slab figures.
struct FigureSelection: ExpressibleByArgument, Sendable {
    let figures: [FigureID]

    init?(argument: String) {
        if argument == "slab" {
            figures = FigureID.allCases.filter(\.isSlab)
        } else if argument == "executors" {
            figures = FigureID.allCases.filter(\.isExecutor)
        } else if argument == "scaling" {
            figures = FigureID.allCases.filter(\.isScaling)
        } else if let figure = FigureID(rawValue: argument) {
            figures = [figure]
        } else {
            return nil
        }
    }

    static var allValueStrings: [String] { FigureID.allCases.map(\.rawValue) + ["slab", "executors", "scaling"] }
}

