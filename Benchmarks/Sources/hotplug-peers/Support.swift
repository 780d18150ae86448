import BenchSupport
import CPeers
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: Samples

/// Preallocated sample storage of one side of one figure; blocks of it are filled by one thread at a time.
struct SampleBuffer: @unchecked Sendable {
    // @unchecked: each block is written by exactly one thread, and handed back to the reader through pthread_join
    // (which orders the writes before the read).
    let storage: UnsafeMutableBufferPointer<Int64>

    init(count: Int) {
        storage = .allocate(capacity: count)
        storage.initialize(repeating: 0)
    }

    func block(_ range: Range<Int>) -> UnsafeMutableBufferPointer<Int64> {
        UnsafeMutableBufferPointer(rebasing: storage[range])
    }

    func deallocate() { storage.deallocate() }
}

/// Order statistics of a sample set, in nanoseconds.
struct Stats: Sendable {
    let count: Int
    let min: Int64
    let p50: Int64
    let p99: Int64
    let max: Int64

    /// Nearest-rank percentiles of the sorted samples.
    init(_ samples: UnsafeMutableBufferPointer<Int64>) {
        let sorted = samples.sorted()
        precondition(!sorted.isEmpty, "no samples")
        func rank(_ q: Double) -> Int64 {
            let index = Int((Double(sorted.count) * q).rounded(.up)) - 1
            return sorted[Swift.max(0, Swift.min(sorted.count - 1, index))]
        }
        count = sorted.count
        min = sorted[0]
        p50 = rank(0.50)
        p99 = rank(0.99)
        max = sorted[sorted.count - 1]
    }
}

// MARK: Watchdog

/// Bounds the waits that have no timeout of their own (barrier episodes, thread joins): when a figure runs past its
/// deadline, the process says which and exits non-zero instead of hanging.
enum Watchdog {
    private static let deadline = Atomic<Int64>(0)
    private static let figure = Mutex("")

    static func start() {
        var thread = pthread_t()
        _ = pthread_create(&thread, nil, { _ in
            while true {
                var pause = timespec(tv_sec: 0, tv_nsec: 100_000_000)
                _ = nanosleep(&pause, nil)
                // Relaxed: a late look only delays the verdict by one period.
                let limit = Watchdog.deadline.load(ordering: .relaxed)
                if limit != 0 && cpr_now_ns() > limit {
                    let name = Watchdog.figure.withLock { $0 }
                    let message = "FAILED: \(name) did not finish in time (a wait without a bound hung)\n"
                    _ = message.withCString { write(2, $0, strlen($0)) }
                    exit(3)
                }
            }
        }, nil)
        _ = pthread_detach(thread)
    }

    /// Arms the watchdog for one figure.
    static func arm(_ name: String, seconds: Int64) {
        figure.withLock { $0 = name }
        deadline.store(cpr_now_ns() + seconds * 1_000_000_000, ordering: .relaxed)
    }

    static func disarm() { deadline.store(0, ordering: .relaxed) }
}

/// Part `index` of `count` samples split into `parts` nearly equal, consecutive parts (the first `count % parts`
/// one longer): the blocks of a figure's rounds, and each CPU's share of an every-CPU block.
func shareRange(_ index: Int, of count: Int, parts: Int) -> Range<Int> {
    let base = count / parts, extra = count % parts
    let start = index * base + min(index, extra)
    return start..<(start + base + (index < extra ? 1 : 0))
}
