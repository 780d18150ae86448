@_spi(ExperimentalCustomExecutors) import _Concurrency
import Synchronization

/// How a queued job is run, kept in the job's second executor-private word (see ``JobLink``).
enum JobKind: UInt {
    /// Enqueued on a ``CPUExecutor``'s serial face (an actor's job): run with
    /// `runSynchronously(on: UnownedSerialExecutor)`, so that actors on the same executor switch inline.
    case serial = 0
    /// Enqueued on a ``CPUExecutor`` itself as a task executor (a task that prefers the CPU): run with
    /// `runSynchronously(on: UnownedTaskExecutor)`, so that the task's nonisolated code stays on the CPU.
    case task = 1
    /// Enqueued on the ``PoolExecutor``.
    case pool = 2
}

/// Intrusive queue links through the two words the Swift runtime reserves in every job for the executor that holds
/// it (`ExecutorJob.withUnsafeExecutorPrivateData`): word 0 is the next job of the list the job is in, word 1 its
/// ``JobKind``. A job is in at most one list at a time (it is enqueued once per run), so queueing a job allocates
/// nothing and every list below is a chain of these links.
///
/// A link is the job's address (`UnownedJob`'s bits); 0 ends a chain; ``closed`` marks a list that takes no more.
enum JobLink {
    static let closed: UInt = 1

    @inline(__always)
    static func link(_ job: UnownedJob) -> UInt { unsafeBitCast(job, to: UInt.self) }

    @inline(__always)
    static func job(_ link: UInt) -> UnownedJob { unsafeBitCast(link, to: UnownedJob.self) }

    /// The distance from a job's address to its executor-private words: the runtime's job layout, the same for
    /// every job, learnt from the first job taken (0 until then). Relaxed: every link reaches a reader through a
    /// queue's release/acquire pair after `take` stored it on the enqueuing thread.
    private static let privateOffset = Atomic<Int>(0)

    /// The job's two executor-private words (stable for the job's life): its address plus the runtime's offset,
    /// without a call into the runtime.
    @inline(__always)
    static func words(_ link: UInt) -> UnsafeMutablePointer<UInt> {
        UnsafeMutablePointer(bitPattern: link &+ UInt(bitPattern: privateOffset.load(ordering: .relaxed)))!
    }

    /// Takes an enqueued job: records its kind and returns its link. Asks the runtime where the job's private
    /// words are only for the first job (see ``privateOffset``).
    @inline(__always)
    static func take(_ job: consuming ExecutorJob, kind: JobKind) -> UInt {
        if privateOffset.load(ordering: .relaxed) == 0 {
            let base = job.withUnsafeExecutorPrivateData { UInt(bitPattern: $0.baseAddress) }
            let link = link(UnownedJob(job))
            privateOffset.store(Int(bitPattern: base &- link), ordering: .relaxed)
            words(link)[1] = kind.rawValue
            return link
        }
        let link = link(UnownedJob(job))
        words(link)[1] = kind.rawValue
        return link
    }

    @inline(__always) static func next(_ link: UInt) -> UInt { words(link)[0] }
    @inline(__always) static func setNext(_ link: UInt, _ next: UInt) { words(link)[0] = next }
    @inline(__always) static func kind(_ link: UInt) -> JobKind { JobKind(rawValue: words(link)[1]) ?? .serial }

    /// Reverses a chain in place (a stack's newest-first chain becomes oldest-first); returns the new first link
    /// and the number of links.
    static func reverse(_ first: UInt) -> (first: UInt, count: Int) {
        var head = first
        var reversed: UInt = 0
        var count = 0
        while head != 0 {
            let next = JobLink.next(head)
            setNext(head, reversed)
            reversed = head
            head = next
            count += 1
        }
        return (reversed, count)
    }
}

/// A lock-free multi-producer stack of jobs (Treiber): a push is one CAS, a take takes the whole stack (which makes
/// it free of ABA: nobody ever reads a link of a stack it has not taken). Newest first; the taker reverses.
struct JobStack: ~Copyable {
    let head: Atomic<UInt>

    init(closed: Bool = false) { head = Atomic(closed ? JobLink.closed : 0) }

    /// Pushes `first...last` (a chain, newest first, `last` its oldest). Returns the head it pushed onto (0: the
    /// stack was empty), nil when the stack is closed.
    /// Sequentially consistent: a producer's push and its later load of the host (see ``CPUExecutor``) must not
    /// be reordered against the re-homing's store of the host and its load of the queue.
    @inline(__always)
    func push(first: UInt, last: UInt) -> UInt? {
        var seen = head.load(ordering: .relaxed)
        while true {
            if seen == JobLink.closed { return nil }
            JobLink.setNext(last, seen)   // published by the CAS below
            let (exchanged, current) = head.compareExchange(expected: seen, desired: first,
                                                            ordering: .sequentiallyConsistent)
            if exchanged { return seen }
            seen = current
        }
    }

    /// Takes the whole stack (newest first), leaving it empty; 0 when it is empty or closed (a closed stack stays
    /// closed). Acquire: partner of the pushes' CAS (their links are visible).
    @inline(__always)
    func takeAll() -> UInt {
        var seen = head.load(ordering: .acquiring)
        while seen != 0 && seen != JobLink.closed {
            let (exchanged, current) = head.compareExchange(expected: seen, desired: 0, ordering: .acquiringAndReleasing)
            if exchanged { return seen }
            seen = current
        }
        return 0
    }

    /// Closes the stack and returns what it held (newest first).
    func close() -> UInt {
        let taken = head.exchange(JobLink.closed, ordering: .acquiringAndReleasing)
        return taken == JobLink.closed ? 0 : taken
    }

    /// Opens a closed stack (a CPU coming online); an open stack is left as it is.
    func open() {
        _ = head.compareExchange(expected: JobLink.closed, desired: 0, ordering: .acquiringAndReleasing)
    }

    var isEmpty: Bool {
        let value = head.load(ordering: .relaxed)
        return value == 0 || value == JobLink.closed
    }
}

/// Jobs by priority, FIFO within a priority: one intrusive list per `JobPriority` raw value (0...255) and a bitmap
/// of the non-empty ones, so that the highest priority is found with at most four word scans. Touched by one
/// thread at a time only (the executor's current host); allocated once.
final class JobBuckets: @unchecked Sendable {
    // @unchecked: touched only by the one thread that runs the executor's jobs at a time; a change of that thread
    // (a CPU detached or attached) is ordered by the hotplug walk (docs/ARCHITECTURE.md, "Swift executors").
    private let heads = UnsafeMutablePointer<UInt>.allocate(capacity: 256)
    private let tails = UnsafeMutablePointer<UInt>.allocate(capacity: 256)
    private var bitmap: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    private(set) var count = 0

    init() {
        heads.initialize(repeating: 0, count: 256)
        tails.initialize(repeating: 0, count: 256)
    }

    deinit {
        heads.deallocate()
        tails.deallocate()
    }

    var isEmpty: Bool { count == 0 }

    /// Appends a chain in order (oldest first), each job to its priority's list.
    func append(chain first: UInt) {
        var link = first
        while link != 0 {
            let next = JobLink.next(link)
            append(link)
            link = next
        }
    }

    @inline(__always)
    func append(_ link: UInt) {
        let priority = Int(JobLink.job(link).priority.rawValue)
        JobLink.setNext(link, 0)
        if tails[priority] == 0 {
            heads[priority] = link
            setBit(priority)
        } else {
            JobLink.setNext(tails[priority], link)
        }
        tails[priority] = link
        count += 1
    }

    /// The oldest job of the highest priority, removed; 0 when empty.
    @inline(__always)
    func popHighest() -> UInt {
        guard count > 0 else { return 0 }
        let priority = highestBit()
        let link = heads[priority]
        let next = JobLink.next(link)
        heads[priority] = next
        if next == 0 {
            tails[priority] = 0
            clearBit(priority)
        }
        count -= 1
        return link
    }

    @inline(__always)
    private func highestBit() -> Int {
        if bitmap.3 != 0 { return 192 + 63 - bitmap.3.leadingZeroBitCount }
        if bitmap.2 != 0 { return 128 + 63 - bitmap.2.leadingZeroBitCount }
        if bitmap.1 != 0 { return 64 + 63 - bitmap.1.leadingZeroBitCount }
        return 63 - bitmap.0.leadingZeroBitCount
    }

    @inline(__always)
    private func setBit(_ bit: Int) {
        let mask = UInt64(1) << UInt64(bit & 63)
        switch bit >> 6 {
        case 0: bitmap.0 |= mask
        case 1: bitmap.1 |= mask
        case 2: bitmap.2 |= mask
        default: bitmap.3 |= mask
        }
    }

    @inline(__always)
    private func clearBit(_ bit: Int) {
        let mask = ~(UInt64(1) << UInt64(bit & 63))
        switch bit >> 6 {
        case 0: bitmap.0 &= mask
        case 1: bitmap.1 &= mask
        case 2: bitmap.2 &= mask
        default: bitmap.3 &= mask
        }
    }
}
