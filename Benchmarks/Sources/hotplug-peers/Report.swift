#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A goal on the p50 ratio ours / peer, and optionally on our p50 or p99 itself (an absolute goal has no ratio).
struct Goal: Sendable {
    /// The highest p50 ratio that meets the goal; nil: no goal on the ratio.
    var limit: Double?
    /// The highest p50 of ours, in nanoseconds, that meets the goal (with the ratio); nil: none.
    var maxOursP50: Int64?
    /// The highest p99 of ours, in the row's sample units, that meets the goal; nil: none.
    var maxOursP99: Int64?
    /// How far our p99 may lie above the peer's p99, in the row's sample units (a cost added to the peer's
    /// operation, the executor detach figure); nil: none.
    var maxP99AbovePeer: Int64?
    var text: String

    init(limit: Double?, maxOursP50: Int64? = nil, maxOursP99: Int64? = nil, maxP99AbovePeer: Int64? = nil,
         text: String? = nil) {
        self.limit = limit
        self.maxOursP50 = maxOursP50
        self.maxOursP99 = maxOursP99
        self.maxP99AbovePeer = maxP99AbovePeer
        self.text = text ?? limit.map { "<= \(fixed($0, 2))x" } ?? "(info)"
    }

    /// False for an informational row: nothing to meet.
    var decides: Bool { limit != nil || maxOursP50 != nil || maxOursP99 != nil || maxP99AbovePeer != nil }
}

/// One line of the table: a figure of ours beside one peer.
struct Row: Sendable {
    let figure: String
    let peerName: String
    let ours: Stats?
    let peerStats: Stats?
    var goal: Goal
    let error: String?
    var note: String?
    /// Sample units per nanosecond: 1, or `picosecondsPerNanosecond` for the batch and slab figures (time per
    /// operation); for a share-of-a-core figure (`percent`), sample units per percent of one core.
    var scale: Int64 = 1
    /// The unit of a per-operation figure that is not a tasklet batch (the slab figures), or of a share-of-a-core
    /// figure, for the JSON.
    var unit: String?
    /// The samples are shares of one core (parked CPU time), printed in percent, not times.
    var percent = false

    /// A sample value in ns: whole for plain samples, one decimal (three in the JSON) for per-operation times; for a
    /// share of a core, in percent with three more decimals.
    func nanoseconds(_ value: Int64, digits: Int = 1) -> String {
        if percent { return fixed(Double(value) / Double(scale), digits + 3) }
        return scale == 1 ? "\(value)" : fixed(Double(value) / Double(scale), digits)
    }

    /// A sample value for the table: `nanoseconds(_:)`, with a percent sign for a share of a core.
    func cell(_ value: Int64) -> String { nanoseconds(value) + (percent ? "%" : "") }

    /// ours p50 / peer p50.
    var ratioP50: Double? {
        guard let ours, let peerStats, peerStats.p50 > 0 else { return nil }
        return Double(ours.p50) / Double(peerStats.p50)
    }

    /// ours p99 / peer p99.
    var ratioP99: Double? {
        guard let ours, let peerStats, peerStats.p99 > 0 else { return nil }
        return Double(ours.p99) / Double(peerStats.p99)
    }

    /// Whether the p50 ratio (and our p50 or p99, where the goal bounds them) is within the goal; nil when there is
    /// nothing to judge (informational row, peer not available), false when the figure failed.
    var met: Bool? {
        if error != nil { return false }
        guard goal.decides, let ours else { return nil }
        var met = true
        if let limit = goal.limit {
            guard let ratio = ratioP50 else { return nil }
            met = ratio <= limit
        }
        if let max = goal.maxOursP50, ours.p50 > max { met = false }
        if let max = goal.maxOursP99, ours.p99 > max { met = false }
        if let above = goal.maxP99AbovePeer {
            guard let peerStats else { return nil }
            if ours.p99 > peerStats.p99 + above { met = false }
        }
        return met
    }
}

/// Everything one run measured.
struct Report {
    let rows: [Row]
    let layout: Layout
    let iterations: Int
    let slowIterations: Int
    let batches: Int
    let batchSize: Int
    let batchWarmup: Int
    let slabBatch: Int
    let cpuTimeWindows: Int
    let cpuTimeWindowMs: Int
    /// One line per malloc peer measured (version, library), as its child process reported it.
    let mallocPeers: [String]
    /// Cycles per row of the follow figure, and its untimed cycles before every block.
    let followCycles: Int
    let followWarmup: Int
    let rounds: Int
    let warmup: Int
    let threadCounts: ClosedRange<Int>
    let clockP50: Int64
    let clockP99: Int64

    func table() -> String {
        let header = ["figure", "peer", "ours p50/p99 ns", "peer p50/p99 ns", "ratio p50", "ratio p99", "goal (p50)", "met"]
        var lines: [[String]] = [header]
        for row in rows {
            let met = row.met.map { $0 ? "yes" : "no" } ?? "-"
            lines.append([
                row.figure, row.peerName,
                row.ours.map { "\(row.cell($0.p50))/\(row.cell($0.p99))" } ?? "-",
                row.peerStats.map { "\(row.cell($0.p50))/\(row.cell($0.p99))" } ?? "-",
                row.ratioP50.map { ratio($0) } ?? "-",
                row.ratioP99.map { ratio($0) } ?? "-",
                row.goal.text, met,
            ])
        }
        var widths = header.map { _ in 0 }
        for line in lines {
            for (column, cell) in line.enumerated() { widths[column] = max(widths[column], cell.count) }
        }
        func render(_ line: [String]) -> String {
            line.enumerated().map { column, cell in
                column >= 2 && column <= 5
                    ? String(repeating: " ", count: widths[column] - cell.count) + cell
                    : cell + String(repeating: " ", count: widths[column] - cell.count)
            }.joined(separator: "  ")
        }
        var out = [render(lines[0]), String(repeating: "-", count: widths.reduce(2 * (widths.count - 1), +))]
        out += lines.dropFirst().map(render)
        out.append("")
        for row in rows {
            if let error = row.error { out.append("FAILED \(row.figure) vs \(row.peerName): \(error)") }
            if let note = row.note { out.append("note: \(row.figure) vs \(row.peerName): \(note)") }
        }
        let sender = layout.sender.map { "physical CPU \($0)" } ?? "unpinned (single CPU)"
        out.append("samples: \(iterations) per side per figure (\(slowIterations) for stop_machine, attach / detach and partition move), in \(rounds) alternating blocks of ours and each peer, "
                   + "\(warmup) warm-up samples before each block")
        if rows.contains(where: { $0.scale != 1 && $0.unit == nil }) {
            out.append("batch figures (ns/op): \(batches) batches of \(batchSize) operations per side, "
                       + "\(batchWarmup) warm-up batches before each block; a sample is one batch's time / \(batchSize)")
        }
        if rows.contains(where: { $0.unit != nil && !$0.percent && !$0.figure.hasPrefix(executorTitlePrefix) }) {
            out.append("slab figures (ns/op): \(iterations) samples per side, each \(slabBatch) alloc+free pairs of "
                       + "\(slabObjectBytes)-byte objects per CPU (remote free: \(slabBatch) objects allocated on one CPU "
                       + "and freed on the other per round); every CPU's samples pooled; each malloc peer runs in a "
                       + "process of its own (LD_PRELOAD), which checks which library serves malloc")
            for line in mallocPeers { out.append("  malloc peer: \(line)") }
        }
        if rows.contains(where: \.percent) {
            out.append("parked CPU time (% of one core): \(cpuTimeWindows) windows of \(cpuTimeWindowMs) ms per side, "
                       + "the first after \(parkSettleNs / 1_000_000) ms to park; a sample is the thread's CPU time growth "
                       + "in a window (/proc/self/task/TID/schedstat) / the window's wall time; the goal bounds our p99, "
                       + "not a ratio (a parked peer's CPU time hardly grows either; the ratio is '-' when it is 0)")
        }
        if rows.contains(where: { $0.figure.hasPrefix(followTitlePrefix) && $0.ours != nil }) {
            out.append("follow (ns): \(followCycles) cycles per row in \(rounds) blocks (a new machine and follower each), "
                       + "\(followWarmup) untimed cycles before each block; a cycle, from a plain thread: a pause (a fixed "
                       + "fraction of the follower's 1 ms interval), sched_setaffinity of every thread of the process "
                       + "(/proc/self/task, like taskset -a -p) to logical CPU 0's physical CPU until the follower reports "
                       + ".detached(1), a pause, the original mask on every thread until .attached(1); a sample is the time "
                       + "from just before the first sched_setaffinity to the clock reading at the start of onEvent; the "
                       + "latency and operation rows are the events' own figures; a cycle without its event within "
                       + "\(followMissBoundNs / 1_000_000) ms is a miss and counts \(followMissBoundNs / 1_000_000) ms in "
                       + "every series; the goal bounds our p99 (absolute), no peer is measured; the peer column: "
                       + followGoNote)
        }
        if rows.contains(where: { quotaTitles.contains($0.figure) && $0.ours != nil }) {
            out.append("follow quota (ns): \(followCycles) cycles in \(rounds) blocks, in a cgroup of the v1 cpu hierarchy "
                       + "that the run creates and removes; a cycle: a pause, cpu.cfs_quota_us = 100000 (1 CPU) until "
                       + ".resized with target 1, a pause, -1 until .resized without a limit; a sample runs from just before "
                       + "the write to the start of onEvent; the goal bounds our p99 (absolute); the peer column: " + quotaNote)
        }
        if rows.contains(where: { $0.figure.hasPrefix(executorTitlePrefix) }) { out += ExecutorLog.reportLines() }
        out.append("CPUs: target (logical CPU 1 / peer partner) physical CPU \(layout.target); sender \(sender)")
        let placement = layout.cpus.count >= 2 ? "on physical CPU \(layout.cpus)[i]" : "unpinned (single CPU)"
        out.append("N-thread figures: N = \(threadCounts.lowerBound)...\(threadCounts.upperBound) (\(layout.cpus.count) "
                   + "CPU\(layout.cpus.count == 1 ? "" : "s") in the affinity mask); thread i (0 measures; logical CPU i "
                   + "of our machines) \(placement)")
        out.append("clock: CLOCK_MONOTONIC, one reading costs p50 \(clockP50) ns / p99 \(clockP99) ns (inside every sample)")
        out.append("ratio = ours / peer (p50 and p99); met judges the p50 ratio (and our p50 or p99, where the goal "
                   + "names a bound) against the goal. SIGP figures are round trips on both sides, so the polling ratio is also ours "
                   + "one-way / one cache-line transfer.")
        return out.joined(separator: "\n")
    }

    /// Writes the report as JSON; returns a failure message, or nil.
    func writeJSON(to path: String) -> String? {
        func stats(_ s: Stats?, _ row: Row) -> String {
            guard let s else { return "null" }
            func ns(_ value: Int64) -> String { row.nanoseconds(value, digits: 3) }
            return "{\"samples\": \(s.count), \"min\": \(ns(s.min)), \"p50\": \(ns(s.p50)), \"p99\": \(ns(s.p99)), "
                + "\"max\": \(ns(s.max))}"
        }
        func number(_ value: Double?) -> String { value.map { fixed($0, 4) } ?? "null" }
        func string(_ value: String?) -> String { value.map(jsonString) ?? "null" }
        var figures: [String] = []
        for row in rows {
            figures.append("""
                    {"figure": \(jsonString(row.figure)), "peer": \(jsonString(row.peerName)), \
                "unit": \(jsonString(row.unit ?? (row.scale == 1 ? "ns per sample" : "ns per operation (batch time / batch size)"))), \
                "ours_ns": \(stats(row.ours, row)), "peer_ns": \(stats(row.peerStats, row)), \
                "ratio_p50": \(number(row.ratioP50)), "ratio_p99": \(number(row.ratioP99)), \
                "goal": \(jsonString(row.goal.text)), "goal_max_ratio_p50": \(number(row.goal.limit)), \
                "goal_max_ours_p50_ns": \(row.goal.maxOursP50.map(String.init) ?? "null"), \
                "goal_max_ours_p99": \(row.goal.maxOursP99.map { row.nanoseconds($0, digits: 3) } ?? "null"), \
                "goal_max_p99_above_peer": \(row.goal.maxP99AbovePeer.map { row.nanoseconds($0, digits: 3) } ?? "null"), \
                "met": \(row.met.map { $0 ? "true" : "false" } ?? "null"), \
                "error": \(string(row.error)), "note": \(string(row.note))}
                """)
        }
        let text = """
            {
              "samples_per_side": \(iterations),
              "samples_per_side_slow_figures": \(slowIterations),
              "batches_per_side_batch_figures": \(batches),
              "batch_size": \(batchSize),
              "warmup_batches_per_block": \(batchWarmup),
              "slab_batch": \(slabBatch),
              "slab_object_bytes": \(slabObjectBytes),
              "cpu_time_windows_per_side": \(cpuTimeWindows),
              "cpu_time_window_ms": \(cpuTimeWindowMs),
              "malloc_peers": [\(mallocPeers.map(jsonString).joined(separator: ", "))],
              "follow_cycles_per_row": \(followCycles),
              "follow_warmup_cycles_per_block": \(followWarmup),
              "follow_miss_bound_ms": \(followMissBoundNs / 1_000_000),
              "rounds": \(rounds),
              "warmup_per_block": \(warmup),
              "target_cpu": \(layout.target),
              "sender_cpu": \(layout.sender.map(String.init) ?? "null"),
              "cpus": [\(layout.cpus.map(String.init).joined(separator: ", "))],
              "thread_counts": [\(threadCounts.map(String.init).joined(separator: ", "))],
              "clock_reading_ns": {"p50": \(clockP50), "p99": \(clockP99)},
              "ratio": "ours / peer; met compares ratio_p50 with goal_max_ratio_p50 (and ours p50 with goal_max_ours_p50_ns, ours p99 with goal_max_ours_p99, ours p99 with peer p99 + goal_max_p99_above_peer, in the row's unit)",
              "figures": [
            \(figures.joined(separator: ",\n"))
              ]
            }

            """
        guard let file = fopen(path, "w") else { return "cannot open \(path): \(String(cString: strerror(errno)))" }
        let written = fputs(text, file)
        let closed = fclose(file)
        if written < 0 || closed != 0 { return "cannot write \(path): \(String(cString: strerror(errno)))" }
        return nil
    }
}

/// `value` with `digits` decimals.
func fixed(_ value: Double, _ digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = Int((value * scale).rounded())
    let whole = scaled / Int(scale), fraction = String(scaled % Int(scale))
    return digits == 0 ? "\(whole)" : "\(whole)." + String(repeating: "0", count: digits - fraction.count) + fraction
}

/// A ratio for the table: three decimals below 0.1, two above.
func ratio(_ value: Double) -> String { fixed(value, value < 0.1 ? 3 : 2) + "x" }

func jsonString(_ value: String) -> String {
    var out = "\""
    for scalar in value.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}
