import BenchSupport
import CPeers
import Hotplug
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: j. follow: the process affinity mask shrinks and comes back

/// Every row title of the follow figure starts with this (the report's follow line looks for it).
let followTitlePrefix = "follow ("

/// The goal (docs/ARCHITECTURE.md, "Performance goals": "shrinking the process affinity mask makes the runtime follow within 10 ms"): our p99
/// from the change to the follower's event, in ns.
let followGoalNs: Int64 = 10_000_000

/// How long a cycle waits for the follower's event before it counts a miss; a missed cycle's samples are this bound
/// in every series.
let followMissBoundNs: Int64 = 2_000_000_000

/// A block is abandoned (the figure fails) past this many misses: each costs up to two bounds.
let followMaxMisses = 10

/// Untimed cycles before every block of the follow figure (at most `--warmup`).
func followWarmupCycles(_ settings: Settings) -> Int { min(settings.warmup, 20) }

/// The follower's poll interval in the figure (the default of `Machine.FollowOptions`).
private let followIntervalNs: Int64 = 1_000_000

/// The peer column of the deciding rows: no peer is measured; Go's runtime is named for information.
let followGoPeer = "Go runtime: re-reads every 1000 ms (info, not measured)"

/// What the report says about that peer.
let followGoNote = "information, not measured: Go's runtime (1.25 and later) re-reads the affinity mask and the cgroup "
    + "CPU limit for its default GOMAXPROCS at most once a second (sysmon: lastgomaxprocs + 1e9 in runtime/proc.go), "
    + "and follows them as a count of Ps, not CPU by CPU"

/// The six series of one follow row, in the order of its titles (`followTitles`).
func followTitles(_ policy: String) -> [String] {
    [
        "follow (\(policy)): taskset -a shrink -> .detached(1)",
        "follow (\(policy)): taskset -a restore -> .attached(1)",
        "follow (\(policy)): .detached(1) latency (follower's bound)",
        "follow (\(policy)): .detached(1) operation (offline(1))",
        "follow (\(policy)): .attached(1) latency (follower's bound)",
        "follow (\(policy)): .attached(1) operation (re-pin + online(1))",
    ]
}

/// The peers and goals of those series: the two change-to-event series decide (p99 <= 10 ms, absolute); the
/// follower's own figures inform.
let followSeries: [(peer: String, goal: Goal)] = [
    (followGoPeer, Goal(limit: nil, maxOursP99: followGoalNs, text: "p99 <= 10 ms")),
    (followGoPeer, Goal(limit: nil, maxOursP99: followGoalNs, text: "p99 <= 10 ms")),
    ("none", Goal(limit: nil)),
    ("none", Goal(limit: nil)),
    ("none", Goal(limit: nil)),
    ("none", Goal(limit: nil)),
]

/// Misses per follow row (its policy), for the notes.
enum FollowLog {
    private static let misses = Mutex<[String: Int]>([:])

    static func recordMiss(_ policy: String) { misses.withLock { $0[policy, default: 0] += 1 } }
    static func misses(_ policy: String) -> Int { misses.withLock { $0[policy] ?? 0 } }
}

/// Why the realtime row cannot run here (follow with `realtimePriority: 1` throws EPERM), or nil. Any other error
/// is left to the row itself, which then fails visibly.
func followRealtimeRefusal() -> String? {
    let machine: Machine
    do { machine = try Machine(cpus: 1) } catch { return nil }
    defer { machine.shutdown() }
    do {
        let follower = try machine.follow(.init(realtimePriority: 1))
        follower.stop()
        return nil
    } catch {
        if case .system(let call, let code) = error, code == EPERM {
            return "skipped: follow(realtimePriority: 1) throws EPERM (\(call)): SCHED_FIFO needs CAP_SYS_NICE"
        }
        return nil
    }
}

/// What the follower reported about logical CPU 1 (taken on the follower's thread, in its `onEvent`).
private final class FollowRecorder: Sendable {
    struct Seen {
        /// Events so far.
        var count = 0
        /// The last one's: CLOCK_MONOTONIC when onEvent began, and the event's `latency` and `operation` in ns.
        var at: Int64 = 0
        var latency: Int64 = 0
        var operation: Int64 = 0
    }

    let detached = Mutex(Seen())
    let attached = Mutex(Seen())
    /// The first event that should not happen here (a failure, a detach not caused by the affinity mask).
    let unexpected = Mutex<String?>(nil)

    func record(_ event: Follower.Event) {
        let now = cpr_now_ns()
        switch event {
        case .detached(cpu: 1, physicalCPU: _, sources: let sources, latency: let latency, operation: let operation):
            if !sources.contains(.affinity) { note("detached(1) for \(sources), not the affinity mask") }
            detached.withLock { $0 = Seen(count: $0.count + 1, at: now, latency: nanoseconds(latency),
                                          operation: nanoseconds(operation)) }
        case .attached(cpu: 1, physicalCPU: _, latency: let latency, operation: let operation):
            attached.withLock { $0 = Seen(count: $0.count + 1, at: now, latency: nanoseconds(latency),
                                          operation: nanoseconds(operation)) }
        case .detached(cpu: let cpu, physicalCPU: _, sources: _, latency: _, operation: _),
             .attached(cpu: let cpu, physicalCPU: _, latency: _, operation: _):
            note("an event for logical CPU \(cpu): \(event)")
        case .failed(let cpu, let operation, let error):
            note("\(operation) of logical CPU \(cpu) failed: \(error)")
        case .resized, .quotaUnusable:
            note("a CPU limit event: \(event)")
        case .repinned:
            break   // CPU 0's thread after each restore (the restore replaced its mask), and CPU 1's after a late one
        }
    }

    private func note(_ message: String) { unexpected.withLock { $0 = $0 ?? message } }

    /// Sleeps (20 us steps) until `which` counted more than `count` events, for at most `boundNs`; the event, or
    /// nil (a miss).
    func wait(_ which: borrowing Mutex<Seen>, after count: Int, boundNs: Int64) -> Seen? {
        let start = cpr_now_ns()
        while true {
            let seen = which.withLock { $0 }
            if seen.count > count { return seen }
            if cpr_now_ns() - start >= boundNs { return nil }
            sleep(nanoseconds: 20_000)
        }
    }
}

/// Ours: `Machine(cpus: 2)`, both online (logical CPU 0 on `layout.cpus[0]`, 1 on `layout.target`), and
/// `machine.follow(.init(realtimePriority:))` (default interval 1 ms). A cycle, from a plain thread: a pause of a
/// fixed fraction of the interval (golden-ratio sequence, so changes land at every phase of the polls), then, from
/// t0, `sched_setaffinity` of every thread of the process to logical CPU 0's physical CPU (`taskset -a -p`), until
/// the follower reports `.detached(1)`: `blocks[0]` = the event's clock reading (in onEvent) - t0; the same pause,
/// then the original mask on every thread from t1, until `.attached(1)`: `blocks[1]` = its reading - t1. `blocks[2]`
/// ... `blocks[5]`: the events' own latency and operation (detach, then attach). A cycle without its event within
/// `followMissBoundNs` is a miss: every series gets the bound, the machine is waited for until CPU 1 is online
/// again, and the block fails past `followMaxMisses`. Every thread gets the original mask back at the end.
func oursFollow(realtimePriority: Int32?, policy: String) -> MultiSide {
    { (layout: Layout, settings: Settings, blocks: [UnsafeMutableBufferPointer<Int64>]) throws(BenchFailure) in
        let count = blocks[0].count
        guard count > 0 else { return }
        // The process's mask: the main thread's (this one), which is what the follower reads.
        let original = try affinity(of: getpid())
        let machine = try makeAllOnlineMachine(cpus: 2, timeoutNs: settings.timeoutNs)
        defer { machine.shutdown() }
        let kept: Int, dropped: Int
        do {
            kept = try machine.physicalCPU(of: 0)
            dropped = try machine.physicalCPU(of: 1)
        } catch {
            throw BenchFailure("physicalCPU(of:): \(error)")
        }
        guard kept != dropped else { throw BenchFailure("logical CPUs 0 and 1 share physical CPU \(kept)") }
        guard original.contains(Int32(kept)), original.contains(Int32(dropped)) else {
            throw BenchFailure("the affinity mask \(original) lacks physical CPU \(kept) or \(dropped)")
        }
        let recorder = FollowRecorder()
        let follower: Follower
        do {
            follower = try machine.follow(.init(realtimePriority: realtimePriority)) { recorder.record($0) }
        } catch {
            throw BenchFailure("follow(realtimePriority: \(realtimePriority.map(String.init) ?? "nil")): \(error)")
        }
        defer { follower.stop() }
        // Runs first: every thread gets its mask back, whatever happened (the next figures need it).
        defer { _ = try? setEveryThread(original) }
        let samples = blocks.map(SampleBlock.init)
        let shrunk: [Int32] = [Int32(kept)]
        let warmup = followWarmupCycles(settings)
        try PinnedThread.run(pinnedTo: nil) { () throws(BenchFailure) in
            var misses = 0
            for cycle in 0..<(warmup + count) {
                sleep(nanoseconds: phase(2 * cycle))
                let detachedBefore = recorder.detached.withLock { $0.count }
                let t0 = cpr_now_ns()
                try setEveryThread(shrunk)
                let detached = recorder.wait(recorder.detached, after: detachedBefore, boundNs: followMissBoundNs)
                sleep(nanoseconds: phase(2 * cycle + 1))
                let attachedBefore = recorder.attached.withLock { $0.count }
                let t1 = cpr_now_ns()
                try setEveryThread(original)
                let attached = detached == nil ? nil
                    : recorder.wait(recorder.attached, after: attachedBefore, boundNs: followMissBoundNs)
                if let unexpected = recorder.unexpected.withLock({ $0 }) {
                    throw BenchFailure("follower (cycle \(cycle)): \(unexpected)")
                }
                let sample = cycle - warmup
                guard let detached, let attached else {
                    misses += 1
                    if sample >= 0 {
                        FollowLog.recordMiss(policy)
                        for block in samples { block[sample] = followMissBoundNs }
                    }
                    if misses > followMaxMisses {
                        throw BenchFailure("the follower missed \(misses) changes (no event within "
                                           + "\(followMissBoundNs / 1_000_000) ms)")
                    }
                    // Back in step: CPU 1 online again (attached late, or never detached).
                    let start = cpr_now_ns()
                    while (try? machine.state(of: 1)) != .online || !follower.detachedCPUs.isEmpty {
                        if cpr_now_ns() - start >= 2 * followMissBoundNs {
                            throw BenchFailure("logical CPU 1 not online again \(2 * followMissBoundNs / 1_000_000) ms "
                                               + "after a miss")
                        }
                        sleep(nanoseconds: 100_000)
                    }
                    continue
                }
                if sample >= 0 {
                    samples[0][sample] = detached.at - t0
                    samples[1][sample] = attached.at - t1
                    samples[2][sample] = detached.latency
                    samples[3][sample] = detached.operation
                    samples[4][sample] = attached.latency
                    samples[5][sample] = attached.operation
                }
            }
        }
    }
}

/// The pause before change `index`: frac(index * golden ratio) of the follower's interval.
private func phase(_ index: Int) -> Int64 {
    let fraction = (Double(index) * 0.618_033_988_749_895).truncatingRemainder(dividingBy: 1)
    return Int64(fraction * Double(followIntervalNs))
}

/// Thread `tid`'s affinity mask (the process id: the main thread's).
private func affinity(of tid: pid_t) throws(BenchFailure) -> [Int32] {
    var cpus = [Int32](repeating: 0, count: 8192)
    var found = 0
    let rc = cpus.withUnsafeMutableBufferPointer { cpr_affinity_get(tid, $0.baseAddress, $0.count, &found) }
    if rc != 0 { throw .errno("sched_getaffinity(\(tid))", rc) }
    return Array(cpus.prefix(found))
}

/// `taskset -a -p`: every thread of the process gets the mask of `cpus`.
private func setEveryThread(_ cpus: [Int32]) throws(BenchFailure) {
    let rc = cpus.withUnsafeBufferPointer { cpr_affinity_set_every_thread($0.baseAddress, $0.count, nil) }
    if rc != 0 { throw .errno("sched_setaffinity of every thread (/proc/self/task)", rc) }
}

/// nanosleep for `ns`, resumed after a signal.
private func sleep(nanoseconds ns: Int64) {
    guard ns > 0 else { return }
    var request = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    var left = timespec()
    while nanosleep(&request, &left) != 0 && errno == EINTR { request = left }
}
