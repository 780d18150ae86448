import Synchronization

/// The serial executor of one logical CPU: an actor whose `unownedExecutor` returns it runs on that CPU, and a task
/// that prefers it (`Task(executorPreference:)`, `withTaskExecutorPreference`) runs its nonisolated code there.
///
/// ```swift
/// actor Shard {
///     let executor: CPUExecutor
///     init(executor: CPUExecutor) { self.executor = executor }
///     nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
/// }
/// let shard = Shard(executor: try machine.executor(cpu: 1))
/// ```
///
/// What runs where (docs/ARCHITECTURE.md, "Swift executors"):
/// - Its jobs run one at a time on the thread of the CPU that hosts the executor, at that CPU's safe points:
///   higher `ExecutorJob.priority` first, FIFO within a priority. A job is not preempted: a long job delays the
///   CPU's safe points, so a stop_machine waits for it, like a tasklet.
/// - The host is the executor's own CPU while that CPU is online. When it is detached, a surviving CPU hosts the
///   executor (its *stand-in*) and runs its queued and later jobs, in order; when the CPU is attached again, the
///   executor goes home. Two jobs of one executor never run at the same time: the host changes only while the old
///   host runs none of its jobs (a dead CPU; a stand-in held at a safe point by the stop_machine of the attach).
/// - After ``Machine/shutdown()`` no CPU is left: queued and later jobs run, still one at a time, on a fallback
///   thread of the runtime's own.
///
/// It is both a `SerialExecutor` and a `TaskExecutor`, and the runtime gives both kinds of jobs to an executor's
/// `enqueue` without saying which is which. They are told apart by where they come in: as a task executor (a
/// task's preference) through this object, as a serial executor (an actor's job) through a second object, which
/// ``asUnownedSerialExecutor()`` names (so pin actors with it, never with `UnownedSerialExecutor(ordinary:)` on
/// this object). The task side keeps this object's identity because the runtime retains the executor a task
/// prefers and later releases the identity that `asUnownedTaskExecutor()` gave. Each kind is then run the way
/// that keeps it fast: an actor's job with `runSynchronously(on: UnownedSerialExecutor)` (two actors on one CPU
/// then call each other inline, without an enqueue), a task's job with `runSynchronously(on:
/// UnownedTaskExecutor)` (a preferring task's nonisolated code then continues on the CPU without hopping;
/// `Task.yield()` costs the runtime's two enqueues, no more).
///
/// Isolation: ``checkIsolated()`` and ``isIsolatingCurrentContext()`` answer by whether the calling thread runs a
/// job of this executor right now (of either kind: both run one at a time from one queue), not by which thread it
/// is: on a stand-in the executor's jobs run on another CPU's thread.
public final class CPUExecutor: SerialExecutor, TaskExecutor, @unchecked Sendable {
    // @unchecked: `inbox`, `host` and `queued` are atomics; `buckets` is touched only by the executor's current
    // host (one thread at a time, handed over by the hotplug walk); the rest is immutable.

    /// The logical CPU this executor belongs to.
    public let cpu: Int
    let hub: JobHub
    /// Jobs enqueued and not yet taken by the host (a lock-free stack: enqueue is one CAS, no allocation).
    let inbox = JobStack()
    /// Jobs taken from the inbox by the host, by priority.
    let buckets = JobBuckets()
    /// The CPU whose thread runs this executor's jobs; ``JobHub/noHost`` until the first CPU comes online,
    /// ``JobHub/fallbackHost`` after shutdown.
    let host = Atomic<Int>(JobHub.noHost)
    /// Jobs enqueued and not yet run (incremented before the push, decremented when a job starts).
    let queued = Atomic<Int>(0)
    /// Jobs run (statistics).
    let ran = Atomic<Int>(0)
    /// The serial-executor face (see the type's documentation); it refers back to this object `unowned`.
    private(set) var serialFace: SerialFace!

    init(cpu: Int, hub: JobHub) {
        self.cpu = cpu
        self.hub = hub
        serialFace = SerialFace(owner: self)
    }

    /// A job of a task that prefers this executor: queued as a task job.
    public func enqueue(_ job: consuming ExecutorJob) {
        hub.push(JobLink.take(job, kind: .task), on: self)
    }

    /// Names the serial-executor face, so that an actor's jobs come in through it (see the type's
    /// documentation). Return this from a pinned actor's `unownedExecutor`.
    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: serialFace)
    }

    /// True while the calling thread runs a job of this executor.
    public func isIsolatingCurrentContext() -> Bool? {
        hub.isRunning(self)
    }

    /// Traps unless the calling thread runs a job of this executor right now (what `assumeIsolated` relies on).
    public func checkIsolated() {
        precondition(hub.isRunning(self),
                     "not isolated to logical CPU \(cpu)'s executor: the calling thread runs no job of it now")
    }

    /// Jobs enqueued on this executor and not yet started.
    public var queuedJobs: Int { max(0, queued.load(ordering: .relaxed)) }

    /// Whether the executor holds jobs not yet started. Sequentially consistent: the re-homing's load (partner of
    /// the producers' increment, see ``JobHub/push(_:on:)``).
    var hasWork: Bool { queued.load(ordering: .sequentiallyConsistent) > 0 }

    /// The serial-executor face of a ``CPUExecutor``: the runtime gives it the jobs of actors pinned to the CPU,
    /// and asks it whether the current context is isolated to them.
    final class SerialFace: SerialExecutor, @unchecked Sendable {
        // @unchecked: immutable; `owner` is unowned(unsafe): the owner keeps this face and lives at least as long
        // (an actor pinned to the owner keeps the owner, whose `asUnownedSerialExecutor()` names this face).
        unowned(unsafe) let owner: CPUExecutor

        init(owner: CPUExecutor) { self.owner = owner }

        func enqueue(_ job: consuming ExecutorJob) {
            owner.hub.push(JobLink.take(job, kind: .serial), on: owner)
        }

        func asUnownedSerialExecutor() -> UnownedSerialExecutor { UnownedSerialExecutor(ordinary: self) }

        func isIsolatingCurrentContext() -> Bool? { owner.isIsolatingCurrentContext() }

        func checkIsolated() { owner.checkIsolated() }
    }
}
