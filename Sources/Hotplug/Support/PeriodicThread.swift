import Synchronization

/// A thread of the runtime's own that runs `body` every `interval` (a sleep between runs) until ``stop()``, or until
/// `body` returns false. Used by the balancer and the follower.
///
/// Lifetime: the thread retains this object and `body`, and nothing else. An owner that its thread must not keep
/// alive (a follower, a balancer) captures itself weakly in `body`, returns false once it is gone, and calls
/// ``stop()`` from its `deinit`: a dropped owner then stops its thread instead of leaking it.
final class PeriodicThread: Sendable {
    private let running = Atomic<Bool>(true)
    private let finished = Completion()
    /// The thread's kernel id (0 until the thread has started), so that ``stop()`` knows when it runs on it.
    private let threadID = Atomic<Int32>(0)

    /// - Parameters:
    ///   - interval: positive, at most `UInt32.max` microseconds (the longest sleep).
    ///   - realtimePriority: SCHED_FIFO priority for the thread (nil: the default policy).
    /// - Throws: ``HotplugError/invalidArgument(name:value:valid:)`` for an interval out of range;
    ///   ``HotplugError/system(call:errno:)`` when the thread cannot start or the priority is refused (the thread
    ///   is stopped again then).
    init(interval: Duration, realtimePriority: Int32? = nil, _ body: @escaping @Sendable () -> Bool) throws(HotplugError) {
        try validateInterval(interval)
        let microseconds = UInt32(clamping: max(1, interval.nanoseconds / 1_000))
        let thread = try Shim.spawnThread { [self] in
            // Relaxed: read only by this thread's own calls to stop() (a foreign thread never equals it).
            threadID.store(Shim.currentThreadID, ordering: .relaxed)
            while running.load(ordering: .acquiring) {
                guard body() else { break }
                Shim.sleep(microseconds: microseconds)
            }
            running.store(false, ordering: .relaxed)
            finished.signal()
        }
        Shim.detach(thread)
        if let realtimePriority {
            do {
                try Shim.setRealtimePriority(thread, realtimePriority)
            } catch {
                stop()
                throw error
            }
        }
    }

    /// Stops the loop after its current run and waits for the thread. Idempotent.
    ///
    /// Called on the thread itself (from `body`, or from an owner's `deinit` that runs there), it only asks the loop
    /// to end after the current run and returns at once: a thread cannot wait for itself.
    func stop() {
        // Release: partner of the loop's acquire load (it sees the request at its next check).
        running.store(false, ordering: .releasing)
        if threadID.load(ordering: .relaxed) == Shim.currentThreadID { return }
        _ = finished.wait()   // returns at once once the thread has finished (a later call, or a loop that ended)
    }
}
