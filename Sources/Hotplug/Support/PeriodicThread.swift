import Synchronization

/// A thread of the runtime's own that runs `body` every `interval` (a sleep between runs) until ``stop()``, which
/// waits for it to finish. Used by the balancer and the follower.
final class PeriodicThread: Sendable {
    private let running = Atomic<Bool>(true)
    private let finished = Completion()

    /// - Parameters:
    ///   - interval: positive, at most `UInt32.max` microseconds (the longest sleep).
    ///   - realtimePriority: SCHED_FIFO priority for the thread (nil: the default policy).
    /// - Throws: ``HotplugError/invalidArgument(name:value:valid:)`` for an interval out of range;
    ///   ``HotplugError/system(call:errno:)`` when the thread cannot start or the priority is refused (the thread
    ///   is stopped again then).
    init(interval: Duration, realtimePriority: Int32? = nil, _ body: @escaping @Sendable () -> Void) throws(HotplugError) {
        try validateInterval(interval)
        let microseconds = UInt32(clamping: max(1, interval.nanoseconds / 1_000))
        let thread = try Shim.spawnThread { [self] in
            while running.load(ordering: .acquiring) {
                body()
                Shim.sleep(microseconds: microseconds)
            }
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
    func stop() {
        guard running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        _ = finished.wait()
    }
}
