extension Machine {
    /// What ``shutdown(drainingTasklets:)`` did: the drain's error, if it did not finish, and the CPUs left running.
    public struct ShutdownReport: Sendable, Equatable {
        /// Why the tasklet drain before the shutdown did not finish (it timed out, or it could not run where it was
        /// asked: see ``Machine/drainTasklets(timeout:)``); nil when it finished or the machine was already shut
        /// down. The shutdown went on regardless.
        public let drainError: HotplugError?
        /// What ``Machine/shutdown()`` returned: the CPUs left running (empty when every CPU went down).
        public let leftRunning: CPUSet
    }

    /// Waits for the tasklet runs scheduled so far (``drainTasklets(timeout:)``), then shuts the machine down
    /// (``shutdown()``), both on a thread of the runtime's own: the calling task is suspended, not its thread.
    ///
    /// Why a thread of its own: the drain waits and the shutdown joins every CPU thread, which may take up to
    /// ``Configuration/responseTimeout`` per CPU that is slow to reach its safe point. Done inline in an async
    /// function it would hold one of the few threads of Swift's cooperative pool all that time (a server's request
    /// handlers would queue behind it). When no thread can be started, it runs on the caller's thread.
    ///
    /// - Parameter drainTimeout: the bound of the drain; nil: ``Configuration/responseTimeout``.
    public func shutdown(drainingTasklets drainTimeout: Duration?) async -> ShutdownReport {
        await withCheckedContinuation { (continuation: CheckedContinuation<ShutdownReport, Never>) in
            let work: @Sendable () -> Void = { [self] in
                var drainError: HotplugError?
                do throws(HotplugError) {
                    try drainTasklets(timeout: drainTimeout)
                } catch .shutDown {
                    // Already shut down by someone else: nothing left to drain.
                } catch {
                    drainError = error
                }
                let left = shutdown()
                continuation.resume(returning: ShutdownReport(drainError: drainError, leftRunning: left))
            }
            do {
                Shim.detach(try Shim.spawnThread(work))
            } catch {
                logger.warning("shutdown(drainingTasklets:): no thread of its own (\(error)); draining and shutting down on the caller's thread")
                work()
            }
        }
    }
}
