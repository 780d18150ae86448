import BenchSupport
import CPeers
import Hotplug
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: k. follow quota: a cgroup CPU quota shrinks to 1 CPU and is lifted

/// The goal (docs/ARCHITECTURE.md, "Performance goals"): our p99 from the quota write to the follower's `resized`
/// event, in ns.
let quotaGoalNs: Int64 = 3_000_000

/// The peer column of the deciding rows: nothing is measured; Go's runtime and the JDK are named for information.
let quotaPeer = "Go 1.25: up to 1000 ms; JDK: 20 ms cache, no pool resized (info, not measured)"

/// What the report says about those peers.
let quotaNote = "information, not measured: Go's runtime (1.25 and later) re-reads the cgroup CPU limit for its "
    + "default GOMAXPROCS at most once a second, and applies it with a stop-the-world; the JDK caches the container "
    + "CPU limit for 20 ms (availableProcessors) but never resizes a pool it sized; .NET, tokio and Seastar read it "
    + "once at start"

/// The series of the quota figure, in order.
let quotaTitles = [
    "follow quota: cpu.cfs_quota_us 2 -> 1 CPU -> .resized (1 detached)",
    "follow quota: cpu.cfs_quota_us 1 CPU -> -1 -> .resized (1 attached)",
    "follow quota: shrink, the follower's latency bound",
    "follow quota: grow, the follower's latency bound",
]

/// Their peers and goals: the two write-to-event series decide (p99 <= 3 ms, absolute).
let quotaSeries: [(peer: String, goal: Goal)] = [
    (quotaPeer, Goal(limit: nil, maxOursP99: quotaGoalNs, text: "p99 <= 3 ms")),
    (quotaPeer, Goal(limit: nil, maxOursP99: quotaGoalNs, text: "p99 <= 3 ms")),
    ("none", Goal(limit: nil)),
    ("none", Goal(limit: nil)),
]

/// Misses of the quota figure, for its note.
let quotaMisses = Mutex(0)

/// Why the quota figure cannot run here, or nil: it needs a cgroup v1 `cpu` hierarchy it may write (root) and two
/// CPUs.
func quotaSkipReason(_ layout: Layout) -> String? {
    if layout.cpus.count < 2 { return "skipped: the figure needs logical CPUs 0 and 1 on two physical CPUs" }
    guard QuotaCgroup.cpuMount() != nil else { return "skipped: no cgroup v1 cpu hierarchy in /proc/self/mountinfo" }
    if getuid() != 0 { return "skipped: creating a cgroup in the cpu hierarchy needs root" }
    return nil
}

/// What the follower reported (its `onEvent`): the resizes, with CLOCK_MONOTONIC at the handler.
private final class ResizeRecorder: Sendable {
    struct Seen {
        var count = 0
        var at: Int64 = 0
        var latency: Int64 = 0
        var target: Int?
    }

    let resizes = Mutex(Seen())
    let unexpected = Mutex<String?>(nil)

    func record(_ event: Follower.Event) {
        let now = cpr_now_ns()
        switch event {
        case .resized(let resize):
            resizes.withLock { $0 = Seen(count: $0.count + 1, at: now, latency: nanoseconds(resize.latency),
                                         target: resize.target) }
        case .failed, .quotaUnusable:
            unexpected.withLock { $0 = $0 ?? "\(event)" }
        case .detached, .attached, .repinned:
            break
        }
    }

    /// Sleeps (20 us steps) until a resize after the first `count` has `target`, for at most `boundNs`.
    func wait(after count: Int, target: Int?, boundNs: Int64) -> Seen? {
        let start = cpr_now_ns()
        while true {
            let seen = resizes.withLock { $0 }
            if seen.count > count && seen.target == target { return seen }
            if cpr_now_ns() - start >= boundNs { return nil }
            quotaSleep(nanoseconds: 20_000)
        }
    }
}

/// Ours: the benchmark process moves into a cgroup it creates in the v1 `cpu` hierarchy (and leaves and removes at
/// the end); `Machine(cpus: 2)`, both online, follows with the default options (interval 1 ms, rounding up). A
/// cycle, from a plain thread: a pause of a fixed fraction of the interval (golden-ratio sequence), then from t0 a
/// write of `100000` to `cpu.cfs_quota_us` (period 100000 us: 1 CPU) until the `.resized` event with target 1
/// (CPU 1 detached): `blocks[0]` = its clock reading in onEvent - t0; the same pause, then from t1 a write of `-1`
/// until the `.resized` event without a limit (CPU 1 attached): `blocks[1]`. `blocks[2]`, `blocks[3]`: the events'
/// own latency bounds. A cycle without its event within `followMissBoundNs` is a miss (every series gets the bound).
func oursQuota() -> MultiSide {
    { (layout: Layout, settings: Settings, blocks: [UnsafeMutableBufferPointer<Int64>]) throws(BenchFailure) in
        let count = blocks[0].count
        guard count > 0 else { return }
        let group = try QuotaCgroup(name: "hotplug-bench-quota-\(getpid())")
        defer { group.remove() }
        try group.enter()
        let machine = try makeAllOnlineMachine(cpus: 2, timeoutNs: settings.timeoutNs)
        defer { machine.shutdown() }
        let recorder = ResizeRecorder()
        let follower: Follower
        do {
            follower = try machine.follow { recorder.record($0) }
        } catch {
            throw BenchFailure("follow(): \(error)")
        }
        defer { follower.stop() }
        let samples = blocks.map(SampleBlock.init)
        let warmup = followWarmupCycles(settings)
        try PinnedThread.run(pinnedTo: nil) { () throws(BenchFailure) in
            var misses = 0
            for cycle in 0..<(warmup + count) {
                quotaSleep(nanoseconds: quotaPhase(2 * cycle))
                let before = recorder.resizes.withLock { $0.count }
                let t0 = cpr_now_ns()
                try group.setQuota("100000")
                let shrunk = recorder.wait(after: before, target: 1, boundNs: followMissBoundNs)
                quotaSleep(nanoseconds: quotaPhase(2 * cycle + 1))
                let middle = recorder.resizes.withLock { $0.count }
                let t1 = cpr_now_ns()
                try group.setQuota("-1")
                let grown = recorder.wait(after: middle, target: nil, boundNs: followMissBoundNs)
                if let unexpected = recorder.unexpected.withLock({ $0 }) {
                    throw BenchFailure("follower (cycle \(cycle)): \(unexpected)")
                }
                let sample = cycle - warmup
                guard let shrunk, let grown else {
                    misses += 1
                    if sample >= 0 {
                        quotaMisses.withLock { $0 += 1 }
                        for block in samples { block[sample] = followMissBoundNs }
                    }
                    if misses > followMaxMisses {
                        throw BenchFailure("the follower missed \(misses) quota changes")
                    }
                    // Back in step: the quota lifted, both CPUs online again.
                    let start = cpr_now_ns()
                    while machine.online.count != 2 {
                        if cpr_now_ns() - start >= 2 * followMissBoundNs {
                            throw BenchFailure("logical CPU 1 not online again after a miss")
                        }
                        quotaSleep(nanoseconds: 100_000)
                    }
                    continue
                }
                if sample >= 0 {
                    samples[0][sample] = shrunk.at - t0
                    samples[1][sample] = grown.at - t1
                    samples[2][sample] = shrunk.latency
                    samples[3][sample] = grown.latency
                }
            }
        }
    }
}

/// A cgroup of the v1 `cpu` hierarchy made for this process, beside its own cgroup; `remove()` moves the process
/// back and deletes it.
private struct QuotaCgroup {
    let directory: String
    let home: String

    /// The mount point of the v1 hierarchy with the cpu controller (from `/proc/self/mountinfo`), if any.
    static func cpuMount() -> String? {
        for line in (KernelFile.read("/proc/self/mountinfo") ?? "").split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard let dash = fields.firstIndex(of: "-"), dash >= 5, fields.count > dash + 3,
                  fields[dash + 1] == "cgroup", fields[dash + 3].split(separator: ",").contains("cpu"),
                  fields[3] == "/" else { continue }
            return String(fields[4])
        }
        return nil
    }

    init(name: String) throws(BenchFailure) {
        guard let mount = QuotaCgroup.cpuMount() else { throw BenchFailure("no cgroup v1 cpu hierarchy") }
        var own = "/"
        for line in (KernelFile.read("/proc/self/cgroup") ?? "").split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            if parts.count == 3 && parts[1].split(separator: ",").contains("cpu") {
                own = String(parts[2])
                break
            }
        }
        home = mount + (own == "/" ? "" : own)
        directory = home + "/" + name
        if mkdir(directory, 0o755) != 0 { throw .errno("mkdir(\(directory))", errno) }
    }

    func enter() throws(BenchFailure) { try write("\(getpid())", to: directory + "/cgroup.procs") }

    func setQuota(_ value: String) throws(BenchFailure) { try write(value, to: directory + "/cpu.cfs_quota_us") }

    func remove() {
        try? write("\(getpid())", to: home + "/cgroup.procs")
        rmdir(directory)
    }

    private func write(_ text: String, to path: String) throws(BenchFailure) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        if fd < 0 { throw .errno("open(\(path))", errno) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if written != bytes.count { throw .errno("write(\(path), \(text))", errno) }
    }
}

/// The pause before change `index`: frac(index * golden ratio) of the follower's 1 ms interval.
private func quotaPhase(_ index: Int) -> Int64 {
    let fraction = (Double(index) * 0.618_033_988_749_895).truncatingRemainder(dividingBy: 1)
    return Int64(fraction * 1_000_000)
}

/// nanosleep for `ns`, resumed after a signal.
private func quotaSleep(nanoseconds ns: Int64) {
    guard ns > 0 else { return }
    var request = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    var left = timespec()
    while nanosleep(&request, &left) != 0 && errno == EINTR { request = left }
}
