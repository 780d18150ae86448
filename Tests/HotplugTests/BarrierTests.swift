import Foundation
import Synchronization
import Testing
@testable import Hotplug

@Suite struct BarrierTests {
    /// Runs `threads` threads through `episodes` episodes and checks that no one leaves an episode before every
    /// participant arrived, and that exactly one participant per episode is told it was last.
    private func exercise(threads: Int, episodes: Int, barrier: SpinBarrier, spinBudget: UInt32) throws {
        let arrivals = Atomic<Int>(0)
        let lasts = Atomic<Int>(0)
        let violations = Atomic<Int>(0)
        let done = Completion()
        let finished = Atomic<Int>(0)
        var spawned: [pthread_t] = []
        defer { for thread in spawned { try? Shim.join(thread) } }
        for _ in 0..<threads {
            spawned.append(try Shim.spawnThread {
                var me = barrier.makeParticipant()
                for episode in 0..<episodes {
                    arrivals.add(1, ordering: .relaxed)
                    if barrier.wait(&me, spinBudget: spinBudget) { lasts.add(1, ordering: .relaxed) }
                    // Everyone of this episode has arrived before anyone leaves it.
                    if arrivals.load(ordering: .relaxed) < (episode + 1) * threads { violations.add(1, ordering: .relaxed) }
                    barrier.wait(&me, spinBudget: spinBudget)   // keep episodes apart for the check above
                }
                if finished.add(1, ordering: .relaxed).newValue == threads { done.signal() }
            })
        }
        #expect(done.wait(timeoutNanoseconds: 60_000_000_000), "barrier episodes did not finish: livelock or lost wake-up")
        #expect(violations.load(ordering: .relaxed) == 0)
        #expect(lasts.load(ordering: .relaxed) == episodes)
    }

    @Test(arguments: [1, 2, 3])
    func episodes(threads: Int) throws {
        try exercise(threads: threads, episodes: 2_000, barrier: SpinBarrier(participants: threads), spinBudget: 4_096)
    }

    @Test func parksWhenOversubscribed() throws {
        // 8 threads on (typically) 2 cores with a tiny spin budget: most waits end in the futex.
        try exercise(threads: 8, episodes: 500, barrier: SpinBarrier(participants: 8), spinBudget: 16)
    }

    @Test func participantCountChangesBetweenEpisodes() throws {
        let barrier = SpinBarrier(participants: 2)
        try exercise(threads: 2, episodes: 200, barrier: barrier, spinBudget: 64)
        barrier.setParticipants(3)
        try exercise(threads: 3, episodes: 200, barrier: barrier, spinBudget: 64)
        barrier.setParticipants(1)
        var alone = barrier.makeParticipant()
        #expect(barrier.wait(&alone))
    }

    @Test func zeroParticipantsTraps() async {
        await #expect(processExitsWith: .failure) {
            _ = SpinBarrier(participants: 0)
        }
    }
}
