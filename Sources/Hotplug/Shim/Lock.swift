#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

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

    /// Runs `body` with exclusive access to the value.
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

    func withReadLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    func withWriteLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
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

    func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}
