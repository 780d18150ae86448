import CHotplug
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A logical CPU's control block in C memory, shared with the signal handler. Every access goes through the
/// shim's functions, whose atomics name their ordering (see the memory-ordering map at the top of `sigp.c`).
struct ControlBlock: @unchecked Sendable {
    // @unchecked: the pointee is only touched by the shim's atomics; the pointer itself is immutable.
    let raw: OpaquePointer   // chp_cpu_t *: over-aligned, so opaque to Swift

    /// The lifecycle word (`CHP_LIFE_*`, mapped in ShimConstants.swift), written by the controlling thread.
    enum Lifecycle {
        case parked, online, offline, exit
    }

    struct Bits: OptionSet {
        let rawValue: UInt32
        static let stop = Bits(rawValue: UInt32(CHP_MB_STOP))
        static let stopStore = Bits(rawValue: UInt32(CHP_MB_STOP_STORE))
        static let restart = Bits(rawValue: UInt32(CHP_MB_RESTART))
        static let externalCall = Bits(rawValue: UInt32(CHP_MB_EXTERNAL_CALL))
        static let emergency = Bits(rawValue: UInt32(CHP_MB_EMERGENCY))
        static let call = Bits(rawValue: UInt32(CHP_MB_CALL))
        static let lifecycle = Bits(rawValue: UInt32(CHP_MB_LIFECYCLE))
        static let stopped = Bits(rawValue: UInt32(CHP_MB_STOPPED))
        static let tasklet = Bits(rawValue: UInt32(CHP_MB_TASKLET))
        static let job = Bits(rawValue: UInt32(CHP_MB_JOB))
        /// Every bit that asks the CPU's loop for attention (an order, a call, work).
        static let orders = Bits(rawValue: UInt32(CHP_MB_ORDERS))
    }

    static func create() throws(HotplugError) -> ControlBlock {
        var raw: OpaquePointer?
        let rc = chp_cpu_create(&raw)
        guard rc == 0, let raw else { throw .system(call: "posix_memalign", errno: rc) }
        return ControlBlock(raw: raw)
    }

    func destroy() { chp_cpu_destroy(raw) }

    // MARK: Senders

    /// Evaluates and posts an order; delivers the wake-up it needs.
    /// - Throws: ``HotplugError/notResponding(cpu:order:waitedNanoseconds:)`` when a running CPU does not
    ///   acknowledge in time, ``HotplugError/system(call:errno:)`` when the signal cannot be sent.
    func sigp(_ order: SIGPOrder, parameter: UInt32, source: Int?, cpu: Int,
              resendNanoseconds: Int64, timeoutNanoseconds: Int64) throws(HotplugError) -> SIGPResult {
        var delivery = chp_delivery_t()
        let result = chp_sigp_post(raw, order.shimCode, parameter, Int32(source ?? -1), &delivery)
        if delivery.ticket != 0 {
            try deliver(delivery, order: order, cpu: cpu, resendNanoseconds: resendNanoseconds,
                        timeoutNanoseconds: timeoutNanoseconds)
        }
        return SIGPResult(shim: result)
    }

    /// Delivers the wake-up a post needs.
    func deliver(_ delivery: chp_delivery_t, order: SIGPOrder, cpu: Int, resendNanoseconds: Int64,
                 timeoutNanoseconds: Int64) throws(HotplugError) {
        let started = Shim.monotonicNanoseconds()
        var delivery = delivery
        switch chp_sigp_deliver(raw, &delivery, resendNanoseconds, timeoutNanoseconds) {
        case 0: return
        case ETIMEDOUT:
            throw .notResponding(cpu: cpu, order: order, waitedNanoseconds: Shim.monotonicNanoseconds() - started)
        case let code: throw .system(call: "tgkill", errno: code)
        }
    }

    /// Posts internal bits; returns what their delivery needs.
    func post(_ bits: Bits) -> chp_delivery_t {
        var delivery = chp_delivery_t()
        chp_cpu_post_bits(raw, bits.rawValue, &delivery)
        return delivery
    }
    /// Returns the bits that were still pending (and are now removed).
    func retract(_ bits: Bits) -> Bits { Bits(rawValue: chp_cpu_retract_bits(raw, bits.rawValue)) }
    func wakeMailbox() { chp_cpu_wake_mailbox(raw) }
    /// Posts bits that need no signal; wakes the CPU only when it is idle.
    func postAndWakeIfIdle(_ bits: Bits) { _ = chp_cpu_post_and_wake_idle(raw, bits.rawValue) }
    /// Claims the CPU for a stop_machine if it is parked in its idle wait with nothing pending: it then stays
    /// there, running nothing, until ``releaseClaim()``. False when it is not idle.
    func claimIdle() -> Bool { chp_cpu_claim_idle(raw) }
    /// Ends a claim; wakes the CPU when orders were posted meanwhile.
    func releaseClaim() { chp_cpu_release_claim(raw) }

    var mailbox: Bits { Bits(rawValue: chp_cpu_mailbox(raw)) }
    var runState: RunState { RunState(shimValue: chp_cpu_run_state(raw)) }
    var threadID: Int32 { chp_cpu_tid(raw) }
    /// Nanoseconds spent parked in the idle wait since the block was made, the current park included.
    var idleNanoseconds: Int64 { chp_cpu_idle_ns(raw) }

    var lifecycle: Lifecycle {
        get { Lifecycle(shimValue: chp_cpu_lifecycle(raw)) ?? .parked }
        nonmutating set { chp_cpu_set_lifecycle(raw, newValue.shimValue) }
    }
    func wakeLifecycle() { chp_cpu_wake_lifecycle(raw) }
    /// Only while no thread uses the block.
    func prepareForNewThread() { chp_cpu_prepare(raw) }

    var storedStatus: StoredStatus? {
        var ip: UInt64 = 0
        var sp: UInt64 = 0
        guard chp_cpu_stored_status(raw, &ip, &sp) else { return nil }
        return StoredStatus(instructionPointer: ip, stackPointer: sp)
    }

    var statistics: DeliveryStatistics {
        var c = chp_cpu_stats_t()
        chp_cpu_statistics(raw, &c)
        return DeliveryStatistics(signalsSent: c.signals_sent, signalsReceived: c.signals_received,
                                  futexWakes: c.futex_wakes, resends: c.resends,
                                  stopsInHandler: c.stops_in_handler, stopsAtSafePoint: c.stops_at_safe_point)
    }

    // MARK: The CPU's own thread

    /// Binds the calling thread to this block (for the signal handler, and its tid for senders), records it as
    /// logical CPU `cpu` of machine `machineID` (read inline by ``Shim/currentLogicalCPU(machineID:)``), then
    /// unblocks the SIGP signal on it.
    /// - Throws: ``HotplugError/system(call:errno:)`` when the signal cannot be unblocked; the thread is bound
    ///   either way, so the caller unbinds it.
    func bindCurrentThread(machineID: UInt64, cpu: Int) throws(HotplugError) {
        let rc = chp_cpu_bind_self(raw)
        chp_cpu_set_self_identity(machineID, cpu)
        if rc != 0 { throw .system(call: "pthread_sigmask", errno: rc) }
    }
    /// Blocks the SIGP signal on the calling thread and unbinds it.
    func unbindCurrentThread() { chp_cpu_unbind_self() }
    func setRunState(_ state: RunState) { chp_cpu_set_run_state(raw, state.shimValue) }
    /// Acknowledges signals and takes the pending bits (STOP-class bits are reported, not taken).
    func safePoint() -> Bits { Bits(rawValue: chp_cpu_safe_point(raw)) }
    /// Stops right here when a STOP-class order is pending, until START or RESTART.
    func stopHere() { _ = chp_cpu_stop_here(raw) }
    /// The pending external call's parameter and source (nil for a foreign thread), if one is pending.
    func takeExternalCall() -> (parameter: UInt32, source: Int?)? {
        var parameter: UInt32 = 0
        var source: Int32 = -1
        guard chp_cpu_take_external_call(raw, &parameter, &source) else { return nil }
        return (parameter, source < 0 ? nil : Int(source))
    }
    /// The number of pending emergency signals, now taken.
    func takeEmergencySignals() -> UInt32 { chp_cpu_take_emergency(raw) }
    /// Returns at once when orders are pending; else polls, then parks in the kernel until one is posted.
    func waitForOrders(pollNanoseconds: Int64) { chp_cpu_wait_for_orders(raw, pollNanoseconds) }
    /// Going offline: clears a pending STOP-class order (an offline CPU is stopped); a STOP_AND_STORE_STATUS
    /// stores the caller's site as the status.
    func absorbStop() { chp_cpu_absorb_stop(raw) }
    /// Records the caller's site as the stop address and becomes quiet and OFFLINE (before it parks).
    func enterOffline() { chp_cpu_enter_offline(raw) }
    /// Blocks in the kernel until the lifecycle lets it run or exit; returns what it saw.
    func parkOffline() -> Lifecycle { Lifecycle(shimValue: chp_cpu_park_offline(raw)) ?? .exit }
}
