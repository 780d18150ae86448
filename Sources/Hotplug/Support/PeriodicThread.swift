import Synchronization

/// A thread of the runtime's own that runs `body` every `interval` (a sleep between runs) until ``stop()``, which
/// waits for it to finish. Used by the balancer and the follower.
final class PeriodicThread: Sendable {
    private let running = Atomic<Bool>(true)
    private let finished = Completion()

    /// - Throws: ``HotplugError/system(call:errno:)`` when the thread cannot start.
    init(interval: Duration, _ body: @escaping @Sendable () -> Void) throws(HotplugError) {
        let microseconds = UInt32(clamping: max(1, interval.components.seconds * 1_000_000
            + interval.components.attoseconds / 1_000_000_000_000))
        let thread = try Shim.spawnThread { [self] in
            while running.load(ordering: .acquiring) {
                body()
                Shim.sleep(microseconds: microseconds)
            }
            finished.signal()
        }
        Shim.detach(thread)
    }

    /// Stops the loop after its current run and waits for the thread. Idempotent.
    func stop() {
        guard running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        _ = finished.wait()
    }
}
