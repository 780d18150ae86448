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
            hits both sides alike. A sample is one round trip (or one barrier episode), timed with \
            CLOCK_MONOTONIC; p50 and p99 are nearest-rank percentiles of the sorted samples. \
            ratio = ours / peer, for p50 and for p99; a goal is met when the p50 ratio is within it.
            """)

    @Option(help: "Timed samples per side of each figure.")
    var iterations: Int = 20_000

    @Option(help: "Untimed warm-up samples before every block.")
    var warmup: Int = 300

    @Option(help: "Blocks per side of each figure, alternating ours and the peer.")
    var rounds: Int = 4

    @Option(name: .customLong("timeout-ms"), help: "Bound of every single wait (an acknowledgement, a state).")
    var timeoutMilliseconds: Int = 1_000

    @Option(name: .customLong("settle-us"), help: "Time given a parked CPU to fall asleep before each sample.")
    var settleMicroseconds: Int = 20

    @Option(name: .customLong("figure"), help: "Run only these figures: polling, running, parked, barrier.")
    var figures: [FigureID] = []

    @Option(help: "Also write the results as JSON to this file.")
    var json: String?

    @Flag(help: "Exit non-zero when a goal is not met.")
    var requireGoals = false

    mutating func validate() throws {
        guard iterations >= 1 else { throw ValidationError("--iterations must be at least 1") }
        guard rounds >= 1, rounds <= iterations else { throw ValidationError("--rounds must be in 1...iterations") }
        guard warmup >= 0 else { throw ValidationError("--warmup must not be negative") }
        guard timeoutMilliseconds >= 1 else { throw ValidationError("--timeout-ms must be at least 1") }
        guard settleMicroseconds >= 0 else { throw ValidationError("--settle-us must not be negative") }
    }

    func run() throws {
        Watchdog.start()
        let layout: Layout
        do {
            layout = try Layout.current()
        } catch {
            print("FAILED: \(error)")
            throw ExitCode.failure
        }
        let settings = Settings(warmup: warmup, timeoutNs: Int64(timeoutMilliseconds) * 1_000_000,
                                settleNs: Int64(settleMicroseconds) * 1_000)
        let selected = figures.isEmpty ? FigureID.allCases : FigureID.allCases.filter(figures.contains)
        var rows: [Row] = []
        for figure in selected {
            rows += measure(figure, layout: layout, settings: settings)
        }
        let clock = clockOverhead(layout)
        let report = Report(rows: rows, layout: layout, iterations: iterations, rounds: rounds, warmup: warmup,
                            clockP50: clock.p50, clockP99: clock.p99)
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

    typealias Side = @Sendable (Layout, Settings, UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) -> Void

    /// One side of a comparison: a name and how to fill a block of samples.
    struct Contender {
        let name: String
        let measure: Side
        var available = true
    }

    private func measure(_ figure: FigureID, layout: Layout, settings: Settings) -> [Row] {
        let ours: Side
        var peers: [(Contender, Goal)]
        switch figure {
        case .polling:
            ours = oursPolling
            peers = [(Contender(name: "cache-line ping-pong round trip", measure: peerPingPong), Goal(limit: 4))]
        case .running:
            ours = oursRunning
            peers = [(Contender(name: "raw tgkill + handler round trip", measure: peerSignal), Goal(limit: 1.1))]
        case .parked:
            ours = oursParked
            peers = [(Contender(name: "raw futex wake round trip", measure: peerFutex), Goal(limit: 1.2))]
        case .barrier:
            ours = oursBarrier
            peers = [(Contender(name: "glibc pthread_barrier_wait", measure: peerBarrier(CPR_BARRIER_PTHREAD)),
                      Goal(limit: 1.0 / 15, text: "<= 0.067x (>= 15x faster)"))]
            let ck: [(String, cpr_barrier_kind_t)] = [
                ("ck centralized barrier", CPR_BARRIER_CK_CENTRALIZED),
                ("ck dissemination barrier", CPR_BARRIER_CK_DISSEMINATION),
                ("ck tournament barrier", CPR_BARRIER_CK_TOURNAMENT),
                ("ck MCS barrier", CPR_BARRIER_CK_MCS),
            ]
            for (name, kind) in ck {
                var contender = Contender(name: name, measure: peerBarrier(kind))
                // Concurrency Kit barriers only spin: on a single CPU each episode would wait for a time slice.
                contender.available = cpr_barrier_available(kind) && layout.sender != nil
                peers.append((contender, Goal(limit: 1.0, text: "<= 1.0x best ck")))
            }
        }
        let live = peers.filter { $0.0.available }
        let rows: [Row] = peers.filter { !$0.0.available }.map { peer in
            Row(figure: figure.title, peerName: peer.0.name, ours: nil, peerStats: nil, goal: peer.1,
                error: nil, note: "not available here (Concurrency Kit missing, or a single CPU)")
        }

        Watchdog.arm(figure.title, seconds: 60 + Int64(iterations / 1_000) * Int64(1 + live.count))
        defer { Watchdog.disarm() }
        let oursSamples = SampleBuffer(count: iterations)
        let peerSamples = live.map { _ in SampleBuffer(count: iterations) }
        defer {
            oursSamples.deallocate()
            peerSamples.forEach { $0.deallocate() }
        }
        var failure: (side: String, error: BenchFailure)?
        rounds: for round in 0..<rounds {
            let range = blockRange(round)
            do {
                try ours(layout, settings, oursSamples.block(range))
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
        if let failure {
            let message = "\(failure.side): \(failure.error)"
            return rows + live.map { peer in
                Row(figure: figure.title, peerName: peer.0.name, ours: nil, peerStats: nil, goal: peer.1, error: message, note: nil)
            }
        }
        let oursStats = Stats(oursSamples.storage)
        var measured = live.enumerated().map { index, peer in
            Row(figure: figure.title, peerName: peer.0.name, ours: oursStats, peerStats: Stats(peerSamples[index].storage),
                goal: peer.1, error: nil, note: nil)
        }
        if figure == .barrier {
            // The ck goal is against the best ck barrier (lowest p50): only that row decides; the others inform.
            let ckRows = measured.indices.filter { measured[$0].peerName.hasPrefix("ck ") }
            if let best = ckRows.min(by: { measured[$0].peerStats!.p50 < measured[$1].peerStats!.p50 }) {
                for index in ckRows where index != best {
                    measured[index].goal = Goal(limit: nil, text: "(info)")
                }
                measured[best].note = "best ck barrier"
            }
        }
        return rows + measured
    }

    /// The samples of block `round`: `iterations` split into `rounds` nearly equal blocks.
    private func blockRange(_ round: Int) -> Range<Int> {
        let base = iterations / rounds, extra = iterations % rounds
        let start = round * base + min(round, extra)
        return start..<(start + base + (round < extra ? 1 : 0))
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

    var title: String {
        switch self {
        case .polling: return "SIGP to a polling CPU"
        case .running: return "SIGP to a running CPU"
        case .parked: return "SIGP waking a parked CPU"
        case .barrier: return "barrier episode, 2 threads"
        }
    }
}
