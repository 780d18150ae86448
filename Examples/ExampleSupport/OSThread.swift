#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A plain joinable OS thread (not one of the machine's logical CPUs: a "foreign" thread to the runtime).
public final class OSThread: Sendable {
    // Sendable: `thread` is written once in `init` and only read (joined) afterwards.
    private let thread: pthread_t

    /// The thread-start error: `pthread_create`'s errno value.
    public struct SpawnError: Error, CustomStringConvertible {
        public let errno: Int32
        public var description: String { "pthread_create failed: errno \(errno)" }
    }

    private final class Start {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    /// Starts `body` on a new thread.
    /// - Throws: ``SpawnError`` when the thread cannot be created.
    public init(_ body: @escaping @Sendable () -> Void) throws(SpawnError) {
        let start = Unmanaged.passRetained(Start(body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            Unmanaged<Start>.fromOpaque(argument).takeRetainedValue().body()
            return nil
        }, start)
        guard result == 0 else {
            Unmanaged<Start>.fromOpaque(start).release()
            throw SpawnError(errno: result)
        }
        self.thread = thread
    }

    /// Waits until the thread's body returned. Call it once.
    public func join() { pthread_join(thread, nil) }
}
