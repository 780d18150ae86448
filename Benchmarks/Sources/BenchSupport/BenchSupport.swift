// What the peer runner and the package-benchmark target share: failures, words in C memory, bounded spins and
// pinned threads.
import CPeers
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Why a figure was abandoned.
package struct BenchFailure: Error, CustomStringConvertible {
    package let description: String
    package init(_ description: String) { self.description = description }

    package static func errno(_ call: String, _ code: Int32) -> BenchFailure {
        BenchFailure("\(call): \(String(cString: strerror(code))) (errno \(code))")
    }
}

// MARK: Shared words in C memory

/// A 64-bit word on a cache line of its own, in C memory, touched only through the `cpr_` atomics (so that ours and
/// the peers wait on acknowledgements with the very same C spin).
package struct SharedWord64: @unchecked Sendable {
    // @unchecked: the pointee is only accessed through explicitly ordered C atomics.
    @usableFromInline
    package let pointer: UnsafeMutablePointer<UInt64>

    package init() {
        guard let raw = cpr_alloc_lines(64) else { fatalError("hotplug-peers: out of memory") }
        pointer = raw.bindMemory(to: UInt64.self, capacity: 1)
    }

    /// Release increment: partner of the acquire load in `cpr_wait_change`.
    @inlinable package func bump() { cpr_bump_release_u64(pointer) }
    /// Acquire load: partner of `bump()`.
    @inlinable package var value: UInt64 { cpr_load_acquire_u64(pointer) }
    package func deallocate() { cpr_free(pointer) }
}

/// A 32-bit flag on a cache line of its own, in C memory.
package struct SharedFlag: @unchecked Sendable {
    // @unchecked: the pointee is only accessed through explicitly ordered C atomics.
    @usableFromInline
    package let pointer: UnsafeMutablePointer<UInt32>

    package init() {
        guard let raw = cpr_alloc_lines(64) else { fatalError("hotplug-peers: out of memory") }
        pointer = raw.bindMemory(to: UInt32.self, capacity: 1)
    }

    /// Release store: partner of `isSet` (and of the acquire load in `cpr_busy_until`).
    @inlinable package func set() { cpr_store_release_u32(pointer, 1) }
    /// Acquire load: partner of `set()`.
    @inlinable package var isSet: Bool { cpr_load_acquire_u32(pointer) != 0 }
    package func deallocate() { cpr_free(pointer) }
}

// MARK: Bounded spinning

/// Spins until `condition` holds: a pause hint each iteration, sched_yield past the budget, at most `timeoutNs`.
package func spin(until what: @autoclosure () -> String, timeoutNs: Int64, _ condition: () -> Bool) throws(BenchFailure) {
    var spins: UInt32 = 0
    var start: Int64 = 0
    while !condition() {
        cpr_spin_step(spins)
        spins &+= 1
        if spins % UInt32(CPR_CHECK_EVERY) == 0 {
            let now = cpr_now_ns()
            if start == 0 {
                start = now
            } else if now - start >= timeoutNs {
                throw BenchFailure("\(what()) did not happen within \(timeoutNs / 1_000_000) ms")
            }
        }
    }
}

/// Spins for `ns` nanoseconds (pause hint, sched_yield past the budget).
package func spin(forNanoseconds ns: Int64) {
    let until = cpr_now_ns() + ns
    var spins: UInt32 = 0
    while cpr_now_ns() < until {
        cpr_spin_step(spins)
        spins &+= 1
    }
}

// MARK: Threads

/// A plain pthread, pinned to one physical CPU before it runs its body.
package final class PinnedThread: @unchecked Sendable {
    // @unchecked: `failure` is written by the thread before it ends and read by `join()` only after pthread_join,
    // which orders the two; everything else is immutable after `start`.
    private let cpu: Int?
    private let body: @Sendable () throws(BenchFailure) -> Void
    private var failure: BenchFailure?
    private var handle = pthread_t()

    private init(cpu: Int?, body: @escaping @Sendable () throws(BenchFailure) -> Void) {
        self.cpu = cpu
        self.body = body
    }

    /// Starts `body` on a new thread pinned to `cpu` (nil: not pinned).
    package static func start(pinnedTo cpu: Int?, _ body: @escaping @Sendable () throws(BenchFailure) -> Void)
        throws(BenchFailure) -> PinnedThread
    {
        let thread = PinnedThread(cpu: cpu, body: body)
        let context = Unmanaged.passRetained(thread).toOpaque()
        let rc = pthread_create(&thread.handle, nil, { raw in
            let thread = Unmanaged<PinnedThread>.fromOpaque(raw!).takeRetainedValue()
            thread.main()
            return nil
        }, context)
        if rc != 0 {
            Unmanaged<PinnedThread>.fromOpaque(context).release()
            throw .errno("pthread_create", rc)
        }
        return thread
    }

    private func main() {
        if let cpu, cpr_pin_self(Int32(cpu)) != 0 {
            failure = .errno("sched_setaffinity(\(cpu))", errno)
            return
        }
        do { try body() } catch { failure = error }
    }

    /// Waits for the thread and rethrows its failure.
    package func join() throws(BenchFailure) {
        let rc = pthread_join(handle, nil)
        if rc != 0 { throw .errno("pthread_join", rc) }
        if let failure { throw failure }
    }

    /// Runs `body` on a pinned thread and waits for it.
    package static func run(pinnedTo cpu: Int?, _ body: @escaping @Sendable () throws(BenchFailure) -> Void)
        throws(BenchFailure)
    {
        try start(pinnedTo: cpu, body).join()
    }
}

