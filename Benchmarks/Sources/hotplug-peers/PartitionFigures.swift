import BenchSupport
import CPeers
import Hotplug

// MARK: i. partition move vs pthread_create + pthread_join

/// The processor moved back and forth: the one on `layout.target` (slot 1), like attach / detach's logical CPU 1.
let partitionMoveProcessor = 1

/// The processors of the partition move figure's pool: one per CPU of the affinity mask, plus one, so that partition
/// a can own one per CPU (`0..<cpus`) and b the extra one (`cpus`, on slot 0 again): each keeps one while the moved
/// processor is the other's. On a single CPU, 3 (a needs processor 1 and another).
func partitionMoveProcessors(_ layout: Layout) -> Int { max(2, layout.cpus.count) + 1 }

/// Ours: `CPUPool(processors: n)` (n = `partitionMoveProcessors`), partition a owning `0..<n-1`, b owning `[n-1]`
/// (each a machine with the settings' response timeout, default poll time); from a plain thread pinned to
/// `layout.cpu(0)` (the attach / detach peer's thread), alternately `move(1, from: a, to: b)` and
/// `move(1, from: b, to: a)`, each one sample: its wall time into `blocks[0]`, the `Move`'s detach and attach
/// durations (timed inside the move) into `blocks[1]` and `blocks[2]`.
func oursPartitionMove(_ layout: Layout, _ settings: Settings,
                       _ blocks: [UnsafeMutableBufferPointer<Int64>]) throws(BenchFailure) {
    let total = SampleBlock(blocks[0]), detach = SampleBlock(blocks[1]), attach = SampleBlock(blocks[2])
    let processors = partitionMoveProcessors(layout)
    let configuration = Machine.Configuration(responseTimeout: .nanoseconds(settings.timeoutNs))
    let pool: CPUPool
    let a: Partition, b: Partition
    do {
        pool = try CPUPool(processors: processors)
        a = try pool.makePartition("a", owning: Array(0..<(processors - 1)), configuration: configuration)
    } catch {
        throw BenchFailure("CPUPool / makePartition(a): \(error)")
    }
    do {
        b = try pool.makePartition("b", owning: [processors - 1], configuration: configuration)
    } catch {
        a.machine.shutdown()
        throw BenchFailure("makePartition(b): \(error)")
    }
    defer {
        b.machine.shutdown()
        a.machine.shutdown()
    }
    let p = partitionMoveProcessor
    try PinnedThread.run(pinnedTo: layout.cpu(0)) { () throws(BenchFailure) in
        for i in 0..<(settings.warmup + total.count) {
            let (from, to) = i % 2 == 0 ? (a, b) : (b, a)
            let t0 = cpr_now_ns()
            let move: CPUPool.Move
            do { move = try pool.move(p, from: from, to: to) } catch {
                throw BenchFailure("move(\(p), from: \(from.name), to: \(to.name)): \(error)")
            }
            let t1 = cpr_now_ns()
            if i >= settings.warmup {
                total[i - settings.warmup] = t1 - t0
                detach[i - settings.warmup] = nanoseconds(move.detach)
                attach[i - settings.warmup] = nanoseconds(move.attach)
            }
        }
        // Back where it started (an even number of moves) or with b: either way each partition owns one at least.
        guard a.owns(p) != b.owns(p) else { throw BenchFailure("processor \(p) owned by \(a.owns(p) ? "both" : "neither") partition") }
    }
}

/// A duration in whole nanoseconds.
@inline(__always)
func nanoseconds(_ duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
}
