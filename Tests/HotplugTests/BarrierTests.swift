import Foundation
import Synchronization
import Testing
@testable import Hotplug

@Suite struct BarrierTests {
    /// How long the threads of one ``runBounded(_:threads:_:)`` may take before the test fails instead of waiting
    /// for them. The episodes take well under a second on two busy cores (a few seconds under ThreadSanitizer); a
    /// livelock or a lost wake-up never ends.
    static let deadlineNanoseconds: Int64 = 15_000_000_000

    /// What the threads of one exercise did.
    struct Outcome {
        /// Every thread got through every episode before the deadline.
        var finished: Bool
        /// Voluntary context switches of all the threads while they ran their episodes: a thread that parks in the
        /// kernel (a futex wait) switches voluntarily; one that spins is only ever preempted (an involuntary switch).
        var voluntarySwitches: Int
    }

    /// Runs `body(index)` on `threads` new threads and waits for all of them, for at most ``deadlineNanoseconds``.
    /// Returns true when every thread finished (they are joined). Past the deadline it records an issue naming
    /// `what` and returns false: the threads are detached rather than joined, so that a barrier that never lets
    /// them out fails the test instead of hanging it. They keep what their closures hold alive and end with the
    /// process.
    private func runBounded(_ what: String, threads: Int, _ body: @escaping @Sendable (_ index: Int) -> Void) throws -> Bool {
        let done = Completion()
        let finished = Atomic<Int>(0)
        var spawned: [pthread_t] = []
        for index in 0..<threads {
            spawned.append(try Shim.spawnThread {
                body(index)
                // Relaxed: a count only; the completion (signal / wait) and the joins order what the body wrote.
                if finished.add(1, ordering: .relaxed).newValue == threads { done.signal() }
            })
        }
        guard done.wait(timeoutNanoseconds: Self.deadlineNanoseconds) else {
            for thread in spawned { Shim.detach(thread) }
            Issue.record("""
                \(what) did not finish within \(Self.deadlineNanoseconds / 1_000_000_000) s: livelock or lost wake-up \
                (\(finished.load(ordering: .relaxed)) of \(threads) threads done)
                """)
            return false
        }
        for thread in spawned { try Shim.join(thread) }
        return true
    }

    /// Runs `threads` threads through `episodes` episodes and checks that no one leaves an episode before every
    /// participant arrived, and that exactly one participant per episode is told it was last. Bounded by
    /// ``deadlineNanoseconds`` (``runBounded(_:threads:_:)``).
    /// - Parameter pinnedTo: a physical CPU every thread pins itself to before its first episode (nil: not pinned).
    @discardableResult
    private func exercise(threads: Int, episodes: Int, barrier: SpinBarrier, spinBudget: UInt32,
                          pinnedTo cpu: Int? = nil) throws -> Outcome {
        let arrivals = Atomic<Int>(0)
        let lasts = Atomic<Int>(0)
        let violations = Atomic<Int>(0)
        let pinFailures = Atomic<Int>(0)
        let switches = Atomic<Int>(0)
        let finished = try runBounded("\(episodes) barrier episodes of \(threads) threads", threads: threads) { _ in
            if let cpu {
                do { try Shim.pin(thread: Shim.currentThreadID, to: cpu) } catch { pinFailures.add(1, ordering: .relaxed) }
            }
            let switchesBefore = Self.voluntarySwitchesOfThisThread()
            var me = barrier.makeParticipant()
            for episode in 0..<episodes {
                arrivals.add(1, ordering: .relaxed)
                if barrier.wait(&me, spinBudget: spinBudget) { lasts.add(1, ordering: .relaxed) }
                // Everyone of this episode has arrived before anyone leaves it.
                if arrivals.load(ordering: .relaxed) < (episode + 1) * threads { violations.add(1, ordering: .relaxed) }
                barrier.wait(&me, spinBudget: spinBudget)   // keep episodes apart for the check above
            }
            switches.add(Self.voluntarySwitchesOfThisThread() - switchesBefore, ordering: .relaxed)
        }
        // Only after the joins: the counters are final and the threads' relaxed updates visible.
        guard finished else { return Outcome(finished: false, voluntarySwitches: 0) }
        #expect(pinFailures.load(ordering: .relaxed) == 0, "a thread could not pin itself to CPU \(cpu ?? -1)")
        #expect(violations.load(ordering: .relaxed) == 0)
        #expect(lasts.load(ordering: .relaxed) == episodes)
        return Outcome(finished: true, voluntarySwitches: switches.load(ordering: .relaxed))
    }

    /// The calling thread's voluntary context switches so far (`getrusage(RUSAGE_THREAD)`, Linux): the times it
    /// blocked in the kernel.
    private static func voluntarySwitchesOfThisThread() -> Int {
        var usage = rusage()
        // RUSAGE_THREAD (1): glibc declares it only under _GNU_SOURCE, which Swift's Glibc module does not set.
        guard getrusage(__rusage_who_t(1), &usage) == 0 else { return 0 }
        return usage.ru_nvcsw
    }

    @Test(arguments: [1, 2, 3])
    func episodes(threads: Int) throws {
        try exercise(threads: threads, episodes: 2_000, barrier: SpinBarrier(participants: threads), spinBudget: 4_096)
    }

    /// 8 threads on one CPU with a tiny spin budget: a waiter that has spun out its budget can only be let out by
    /// threads that need its CPU, so it must park in the kernel. Each park is a voluntary context switch of the
    /// waiter; a barrier that spun instead (or yielded: an involuntary switch) would show next to none, and would
    /// take seconds to get through the episodes or never finish.
    @Test func parksWhenOversubscribed() throws {
        let cpu = try #require(try Shim.affinity().first, "the process may run on no CPU")
        let episodes = 500
        let outcome = try exercise(threads: 8, episodes: episodes, barrier: SpinBarrier(participants: 8), spinBudget: 16,
                                   pinnedTo: cpu)
        // 2 barrier episodes per loop, 7 of the 8 participants waiting in each: about 7 000 parks. Asking for one per
        // barrier episode (1 000) leaves room for the waits a late arriver finds already over.
        #expect(!outcome.finished || outcome.voluntarySwitches >= 2 * episodes,
                "the waiters parked \(outcome.voluntarySwitches) times in \(2 * episodes) episodes: they spun instead")
    }

    @Test func participantCountChangesBetweenEpisodes() throws {
        let barrier = SpinBarrier(participants: 2)
        // A run that did not finish leaves threads inside an episode: the barrier cannot be reused after it.
        try #require(try exercise(threads: 2, episodes: 200, barrier: barrier, spinBudget: 64).finished)
        barrier.setParticipants(3)
        try #require(try exercise(threads: 3, episodes: 200, barrier: barrier, spinBudget: 64).finished)
        barrier.setParticipants(1)
        let last = Atomic<Bool>(false)
        let alone = try runBounded("a barrier episode of one participant", threads: 1) { _ in
            var me = barrier.makeParticipant()
            last.store(barrier.wait(&me), ordering: .relaxed)
        }
        #expect(!alone || last.load(ordering: .relaxed), "a lone participant was not told it was last")
    }

    @Test func zeroParticipantsTraps() async {
        await #expect(processExitsWith: .failure) {
            _ = SpinBarrier(participants: 0)
        }
    }
}
