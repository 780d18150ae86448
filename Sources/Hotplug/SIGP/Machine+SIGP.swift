extension Machine {
    /// Sends a signal-processor order to a logical CPU, as S/390's SIGP instruction does.
    ///
    /// The order is posted in the target's mailbox; then the cheapest sufficient wake-up follows: nothing for a
    /// CPU polling its mailbox, a futex wake for one parked idle, a real signal (`tgkill`) for one running code.
    /// For the signal, the sender waits until the target's handler (or its next safe point) acknowledges,
    /// resending a lost or blocked signal every ``Configuration/resendInterval``.
    ///
    /// Condition codes: 0 accepted; 1 status stored (see ``SIGPResult/status``); 2 busy (a STOP or RESTART is
    /// pending, for every order but the resets); 3 not operational (no such CPU id, or the CPU is in standby).
    /// Orders that are not modelled answer cc 1 with ``SIGPStatus/invalidOrder``.
    ///
    /// An order a CPU sends itself never waits for its own acknowledgement: a STOP stops it on the spot, as on
    /// S/390, until another CPU or thread sends START (a hotplug operation waiting for that CPU waits meanwhile);
    /// with its signal blocked (a stop_machine body, a STARTING callback) the order waits for its next safe point.
    /// From there, an order to another CPU that needs its signal waits out the response bound and throws
    /// ``HotplugError/notResponding(cpu:order:waitedNanoseconds:)``: every other CPU has its signal blocked until
    /// the stop_machine ends (docs/ARCHITECTURE.md, "Rules for callbacks and bodies").
    ///
    /// - Parameters:
    ///   - cpu: the target logical CPU. An id outside `0..<possible` answers cc 3, as on S/390; so does every CPU
    ///     after ``shutdown()`` (all are in standby): no error, the architecture's answer.
    ///   - order: the order code.
    ///   - parameter: the 32-bit parameter (carried by ``SIGPOrder/externalCall``).
    /// - Returns: the condition code and status.
    /// - Throws: ``HotplugError/notResponding(cpu:order:waitedNanoseconds:)`` when a running CPU did not
    ///   acknowledge within ``Configuration/responseTimeout`` and after at least one resend (at most twice the
    ///   bound); the order stays posted, and the CPU reports check stop until it next reaches a safe point.
    @discardableResult
    public func sigp(_ cpu: Int, _ order: SIGPOrder, parameter: UInt32 = 0) throws(HotplugError) -> SIGPResult {
        guard (0..<possibleCount).contains(cpu) else { return SIGPResult(conditionCode: .notOperational) }
        return try cores[cpu].control.sigp(order, parameter: parameter, source: currentCPU, cpu: cpu,
                                           resendNanoseconds: resendNanoseconds,
                                           timeoutNanoseconds: responseNanoseconds)
    }
}
