import CHotplug

/// The shim's sense-reversing barrier: spin with a pause hint for a bounded budget, then park on a futex, so
/// that oversubscribed episodes never livelock. The participant count may change between episodes.
///
/// Shared state lives in C memory (cache-line padded); each participant keeps its own ``Participant`` value
/// (its local sense), as Concurrency Kit splits `ck_barrier_x_t` and `ck_barrier_x_state_t`.
public final class SpinBarrier: @unchecked Sendable {
    // @unchecked: the shared struct is only touched by the shim's atomics.
    private let shared: OpaquePointer   // chp_barrier_t *: over-aligned, so opaque to Swift

    /// Pause iterations before a participant parks in the kernel.
    public static let defaultSpinBudget: UInt32 = 4_096

    /// One participant's private state: its local sense. Never share one between threads.
    public struct Participant: Sendable {
        fileprivate var state = chp_barrier_state_t()
    }

    /// - Parameter participants: the number of threads of each episode (at least 1; a trap otherwise).
    public init(participants: Int) {
        precondition(participants >= 1, "SpinBarrier needs at least one participant, got \(participants)")
        var shared: OpaquePointer?
        let rc = chp_barrier_create(UInt32(participants), &shared)
        guard rc == 0, let shared else {
            fatalError("SpinBarrier: cannot allocate the barrier: \(Shim.errnoDescription(rc))")
        }
        self.shared = shared
    }

    deinit { chp_barrier_destroy(shared) }

    /// A participant that joins at the barrier's current episode.
    public func makeParticipant() -> Participant {
        var participant = Participant()
        chp_barrier_state_init(shared, &participant.state)
        return participant
    }

    /// Sets the participant count of the next episodes. Call only while no episode is in progress.
    public func setParticipants(_ count: Int) {
        precondition(count >= 1, "SpinBarrier needs at least one participant, got \(count)")
        _ = chp_barrier_set_participants(shared, UInt32(count))
    }

    /// Waits until every participant has arrived. Returns true in exactly one participant per episode.
    @discardableResult
    public func wait(_ participant: inout Participant, spinBudget: UInt32 = SpinBarrier.defaultSpinBudget) -> Bool {
        chp_barrier_wait(shared, &participant.state, spinBudget)
    }
}
