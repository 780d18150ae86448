import CHotplug
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// Every lock here is a runtime lock section (`chp_nostop_enter` / `chp_nostop_leave` in CHotplug.h): on a logical
// CPU, a SIGP STOP that arrives while the thread waits for or holds one of these locks takes effect only after the
// outermost one is released (docs/ARCHITECTURE.md, "SIGP orders"). A thread stopped while holding a lock would keep
// every other thread that needs it (a cross-call queued to any CPU, the hotplug lock, a slab node) waiting until
// somebody STARTs it, past every timeout. The section is entered before locking, so a thread waiting for a lock is
// not stopped there either, and left after unlocking. Cost: a thread-local increment and decrement and one
// predictable branch per lock (no system call).

/// Runs `body` inside a runtime lock section.
@inline(__always)
private func inNoStopSection<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    chp_nostop_enter()
    defer { chp_nostop_leave() }
    return try body()
}

/// A value guarded by a `pthread_mutex_t`, for the runtime's cold paths (lifecycle bookkeeping, cross-call
/// queues).
///
/// Why not `Synchronization.Mutex`: on Linux it hands a contended lock over inside the kernel (priority-inheritance
/// futex), where ThreadSanitizer cannot see the hand-off, so every contended critical section is reported as a
/// race (reproduced with four threads and a sleep inside the lock). ThreadSanitizer intercepts `pthread_mutex_*`,
/// so this lock keeps the sanitizer runs meaningful. No hot path takes it.
final class Locked<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched inside `lock.withLock`.
    private let lock = Lock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    /// Runs `body` with exclusive access to the value, in a runtime lock section (see ``Lock/withLock(_:)``).
    func withLock<T, E: Error>(_ body: (inout Value) throws(E) -> T) throws(E) -> T {
        try lock.withLock { () throws(E) -> T in try body(&value) }
    }
}

/// A reader/writer lock on `pthread_rwlock_t`, writer-preferring so that a stream of readers cannot starve a
/// hotplug operation (ThreadSanitizer understands it, see ``Locked``).
final class ReadWriteLock: @unchecked Sendable {
    // @unchecked: the pthread lock is the synchronisation.
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        lock = .allocate(capacity: 1)
        lock.initialize(to: pthread_rwlock_t())
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        pthread_rwlockattr_setkind_np(&attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        let rc = pthread_rwlock_init(lock, &attributes)
        pthread_rwlockattr_destroy(&attributes)
        precondition(rc == 0, "pthread_rwlock_init failed: \(rc)")
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    /// Runs `body` holding the lock for reading, in a runtime lock section (no SIGP STOP takes effect inside).
    func withReadLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        try inNoStopSection { () throws(E) -> T in
            pthread_rwlock_rdlock(lock)
            defer { pthread_rwlock_unlock(lock) }
            return try body()
        }
    }

    /// Runs `body` holding the lock for writing, in a runtime lock section (no SIGP STOP takes effect inside).
    func withWriteLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        try inNoStopSection { () throws(E) -> T in
            pthread_rwlock_wrlock(lock)
            defer { pthread_rwlock_unlock(lock) }
            return try body()
        }
    }
}

/// A plain `pthread_mutex_t` lock guarding no value of its own (serialisation only).
final class Lock: @unchecked Sendable {
    // @unchecked: the pthread mutex is the synchronisation.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` holding the lock, in a runtime lock section (no SIGP STOP takes effect inside).
    func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        try inNoStopSection { () throws(E) -> T in
            pthread_mutex_lock(mutex)
            defer { pthread_mutex_unlock(mutex) }
            return try body()
        }
    }
}
