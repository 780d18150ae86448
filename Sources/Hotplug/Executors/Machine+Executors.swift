import Synchronization

extension Machine {
    /// The executor subsystem (one executor per logical CPU, the pool).
    var executorEngine: ExecutorEngine { subsystems.executors }

    /// The serial executor of logical CPU `cpu`: pin an actor to the CPU by returning
    /// `executor.asUnownedSerialExecutor()` from its `unownedExecutor`, or run a task's code there with
    /// `Task(executorPreference:)` / `withTaskExecutorPreference`. It exists for every possible CPU, online or not:
    /// while its CPU is offline a stand-in CPU runs its jobs (see ``CPUExecutor``). Always the same object for a CPU.
    /// - Throws: ``HotplugError/invalidCPU(_:)`` for a CPU outside ``possible``.
    public func executor(cpu: Int) throws(HotplugError) -> CPUExecutor {
        try validate(cpu)
        return executorEngine.executors[cpu]
    }

    /// Every logical CPU's serial executor, by CPU id (see ``executor(cpu:)``).
    public var executors: [CPUExecutor] { executorEngine.executors }

    /// The task executor over the online logical CPUs (see ``PoolExecutor``).
    public var pool: PoolExecutor { executorEngine.pool }

    /// Executor jobs queued on logical CPU `cpu` and not yet started: those of the executors it hosts (its own,
    /// and those it stands in for) and its pool jobs.
    /// - Throws: ``HotplugError/invalidCPU(_:)``.
    public func queuedJobs(on cpu: Int) throws(HotplugError) -> Int {
        try validate(cpu)
        let engine = executorEngine
        var count = max(0, engine.hub.pools[cpu].queued.load(ordering: .relaxed))
        for executor in engine.executors where executor.host.load(ordering: .relaxed) == cpu {
            count += executor.queuedJobs
        }
        return count
    }

    /// Runs `body` on logical CPU `cpu` at its next safe point, like ``run(on:timeout:_:)``, but suspends the
    /// calling task instead of blocking its thread. A call accepted before the CPU goes offline still runs, on that
    /// CPU, before it parks.
    /// - Throws: the body's error unchanged; ``HotplugError/invalidCPU(_:)``, ``HotplugError/notOnline(cpu:)``,
    ///   ``HotplugError/shutDown`` when the call is refused (it never runs then);
    ///   ``HotplugError/notResponding(cpu:order:waitedNanoseconds:)`` when the CPU does not acknowledge the wake
    ///   (the call stays queued and still runs; this call returns the error without waiting for it).
    public func run<T: Sendable>(on cpu: Int, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<T, any Error>) in
            let resumed = ResumeOnce(continuation)
            do {
                try submit(on: cpu) { resumed.resume(with: Result { try body() }) }
            } catch {
                resumed.resume(with: .failure(error))
            }
        }
    }
}

/// Resumes a continuation at most once (an async cross-call can fail to be delivered after it was queued, and
/// then still run).
private final class ResumeOnce<T: Sendable>: Sendable {
    private let continuation: UnsafeContinuation<T, any Error>
    private let done = Atomic<Bool>(false)

    init(_ continuation: UnsafeContinuation<T, any Error>) { self.continuation = continuation }

    func resume(with result: Result<T, any Error>) {
        // Relaxed is enough: the exchange only elects one resumer; the continuation carries the result.
        guard !done.exchange(true, ordering: .relaxed) else { return }
        continuation.resume(with: result)
    }
}
