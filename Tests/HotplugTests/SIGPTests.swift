import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// Each SIGP order's condition code and status (see `docs/ARCHITECTURE.md`, "SIGP orders"), on real threads and
/// real signals.
@Suite struct SIGPTests {
    private func machine(_ log: InterruptLog, poll: Duration = .microseconds(20), response: Duration = .seconds(5),
                         resend: Duration = .milliseconds(5)) throws -> Machine {
        try Machine(cpus: 2, configuration: .init(pollTime: poll, responseTimeout: response, resendInterval: resend,
                                                   interruptHandler: log.handler))
    }

    private let accepted = SIGPResult(conditionCode: .accepted)
    private let busy = SIGPResult(conditionCode: .busy)
    private func status(_ s: SIGPStatus) -> SIGPResult { SIGPResult(conditionCode: .statusStored, status: s) }

    /// Keeps `cpu` running user code (no safe point) until the returned gate is released.
    private func keepRunning(_ machine: Machine, _ cpu: Int, blockSIGP: Bool = false) throws -> Gate {
        let gate = Gate()
        try machine.submit(on: cpu) {
            if blockSIGP { try? Shim.blockSIGP(true) }
            gate.spin()
            if blockSIGP { try? Shim.blockSIGP(false) }
        }
        #expect(eventually { gate.hasEntered })
        #expect(eventually { (try? machine.runState(of: cpu)) == .running })
        return gate
    }

    @Test func senseExternalCallEmergencyAndStartOnAStoppedCPU() throws {
        let log = InterruptLog()
        let m = try machine(log)
        defer { m.shutdown() }
        #expect(try m.sigp(1, .sense) == accepted)
        #expect(try m.sigp(1, .stop) == accepted)
        #expect(eventually { (try? m.runState(of: 1)) == .stopped })
        #expect(try m.sigp(1, .stop) == accepted)   // already stopped: accepted, no effect
        #expect(try m.sigp(1, .sense) == status(.stopped))
        #expect(try m.sigp(1, .externalCall, parameter: 0xC0FFEE) == accepted)
        #expect(try m.sigp(1, .sense) == status([.stopped, .externalCallPending]))
        #expect(try m.sigp(1, .externalCall, parameter: 1) == status(.externalCallPending))   // only one pending
        for _ in 0..<3 { #expect(try m.sigp(1, .emergencySignal) == accepted) }   // these queue
        #expect(try m.sigp(1, .conditionalEmergencySignal) == accepted)   // not running code
        usleep(20_000)
        #expect(log.count(1) == 0, "a stopped CPU handled an interruption")
        #expect(try m.sigp(1, .start) == accepted)
        #expect(eventually { log.count(1) == 5 })
        #expect(log.count(1) { $0 == .externalCall(parameter: 0xC0FFEE, source: nil) } == 1)
        #expect(log.count(1) { $0 == .emergencySignal } == 4)
        #expect(log.threads(1) == [try #require(try m.threadID(of: 1))])
        #expect(try m.sigp(1, .sense) == accepted)
        #expect(try m.sigp(1, .start) == accepted)   // operating: no effect
        try m.offline(1)
        #expect(try m.sigp(1, .sense) == status(.stopped))
        try m.deconfigure(1)
        #expect(try m.sigp(1, .sense) == SIGPResult(conditionCode: .notOperational))
        #expect(try m.sigp(2, .sense) == SIGPResult(conditionCode: .notOperational))
        #expect(try m.sigp(-1, .stop) == SIGPResult(conditionCode: .notOperational))
    }

    @Test func externalCallCarriesItsSource() throws {
        let log = InterruptLog()
        let m = try machine(log)
        defer { m.shutdown() }
        let result = try m.run(on: 0) { try m.sigp(1, .externalCall, parameter: 42) }
        #expect(result == accepted)
        #expect(eventually { log.count(1) == 1 })
        #expect(log.all(1) == [.externalCall(parameter: 42, source: 0)])
    }

    @Test func stopStopsACPUSpinningInUserCodeAndStartResumesIt() throws {
        let log = InterruptLog()
        let m = try machine(log)
        defer { m.shutdown() }
        let gate = try keepRunning(m, 1)
        defer { gate.release() }
        let tid = try #require(try m.threadID(of: 1))
        #expect(try m.sigp(1, .senseRunning) == accepted)
        let spinsBefore = gate.spins.load(ordering: .relaxed)
        #expect(eventually { gate.spins.load(ordering: .relaxed) > spinsBefore }, "not spinning")

        let before = try m.deliveryStatistics(of: 1)
        #expect(try m.sigp(1, .stop) == accepted)
        #expect(eventually { (try? m.runState(of: 1)) == .stopped })
        let after = try m.deliveryStatistics(of: 1)
        #expect(after.signalsSent > before.signalsSent, "a running CPU is reached by a real signal")
        #expect(after.stopsInHandler == before.stopsInHandler + 1, "stopped wherever it was: in the handler")
        #expect(try m.sigp(1, .sense) == status(.stopped))
        #expect(try m.sigp(1, .senseRunning) == status(.notRunning))

        let stoppedAt = try cpuTime(tid)
        let spinsStopped = gate.spins.load(ordering: .relaxed)
        usleep(200_000)
        #expect(try cpuTime(tid) - stoppedAt < 200_000, "a stopped CPU burned CPU time")
        #expect(gate.spins.load(ordering: .relaxed) == spinsStopped, "the stopped CPU kept spinning")

        #expect(try m.sigp(1, .start) == accepted)
        let resumedAt = try cpuTime(tid)
        #expect(eventually { gate.spins.load(ordering: .relaxed) > spinsStopped }, "START did not resume it")
        #expect(eventually { ((try? cpuTime(tid)) ?? 0) - resumedAt > 1_000_000 })
    }

    @Test func stopAndStoreStatusStoresWhereARunningCPUWas() throws {
        let log = InterruptLog()
        let m = try machine(log)
        defer { m.shutdown() }
        let gate = try keepRunning(m, 1)
        defer { gate.release() }
        #expect(try m.storedStatus(of: 1) == nil)
        #expect(try m.sigp(1, .stopAndStoreStatus) == accepted)
        #expect(eventually { (try? m.runState(of: 1)) == .stopped })
        let stored = try #require(try m.storedStatus(of: 1))
        #expect(stored.instructionPointer != 0)
        #expect(stored.stackPointer != 0)
        // INITIAL_CPU_RESET clears the status area; the CPU stays stopped.
        #expect(try m.sigp(1, .initialCPUReset) == accepted)
        #expect(try m.storedStatus(of: 1) == nil)
        #expect(try m.sigp(1, .sense) == status(.stopped))
        #expect(try m.sigp(1, .start) == accepted)
    }

    @Test func stopAndStoreStatusAtASafePoint() throws {
        let log = InterruptLog()
        let m = try machine(log, poll: .zero)
        defer { m.shutdown() }
        #expect(eventually { (try? m.runState(of: 1)) == .idle })
        let before = try m.deliveryStatistics(of: 1)
        #expect(try m.sigp(1, .stopAndStoreStatus) == accepted)
        #expect(eventually { (try? m.runState(of: 1)) == .stopped })
        let after = try m.deliveryStatistics(of: 1)
        #expect(after.signalsSent == before.signalsSent, "an idle CPU needs no signal")
        #expect(after.futexWakes > before.futexWakes)
        #expect(after.stopsAtSafePoint == before.stopsAtSafePoint + 1)
        let stored = try #require(try m.storedStatus(of: 1))
        #expect(stored.instructionPointer != 0 && stored.stackPointer != 0)
        // Stored again on an already stopped CPU, and on a parked one.
        #expect(try m.sigp(1, .initialCPUReset) == accepted)
        #expect(try m.sigp(1, .stopAndStoreStatus) == accepted)
        #expect(try m.storedStatus(of: 1) != nil)
        #expect(try m.sigp(1, .start) == accepted)
    }

    @Test func busyWhileAStopIsPendingAndAnUnansweredSignalIsReported() throws {
        let log = InterruptLog()
        let m = try machine(log, response: .milliseconds(300), resend: .milliseconds(10))
        defer { m.shutdown() }
        // The CPU runs code with its SIGP signal blocked ("interrupts disabled"), so STOP cannot be taken.
        let gate = try keepRunning(m, 1, blockSIGP: true)
        defer { gate.release() }
        let before = try m.deliveryStatistics(of: 1)
        #expect {
            try m.sigp(1, .stop)
        } throws: { error in
            guard case HotplugError.notResponding(cpu: 1, order: .stop, let waited) = error else { return false }
            return waited >= 300_000_000
        }
        #expect(try m.deliveryStatistics(of: 1).resends > before.resends, "the unanswered signal was not resent")
        // The STOP stays pending: every order but the resets is busy.
        for order in [SIGPOrder.sense, .externalCall, .emergencySignal, .start, .stop, .restart, .stopAndStoreStatus,
                      .conditionalEmergencySignal, .senseRunning] {
            #expect(try m.sigp(1, order) == busy, "\(order) while STOP pending")
        }
        // Resets are accepted while busy (not answered cc 2); this one posts a STOP of its own, which the CPU cannot
        // acknowledge either.
        #expect(throws: HotplugError.self) { try m.sigp(1, .cpuReset) }
        // Interrupts back on: the pending signal arrives and the CPU stops in its handler; it is check-stopped
        // until it reaches a safe point.
        gate.release()
        #expect(eventually { (try? m.runState(of: 1)) == .stopped })
        #expect(try m.sigp(1, .sense) == status([.stopped, .checkStop]))
        #expect(try m.sigp(1, .start) == accepted)
        #expect(eventually { (try? m.sigp(1, .sense)) == accepted })
    }

    @Test func aBlockedSignalIsResentAndDeliveredOnceUnblocked() throws {
        let log = InterruptLog()
        let m = try machine(log, response: .seconds(10), resend: .milliseconds(5))
        defer { m.shutdown() }
        let first = Gate()
        let second = Gate()
        defer { first.release(); second.release() }
        try m.submit(on: 1) {
            try? Shim.blockSIGP(true)
            first.spin()
            try? Shim.blockSIGP(false)
            second.spin()
        }
        #expect(eventually { first.hasEntered })
        let before = try m.deliveryStatistics(of: 1)
        // Unblock only once the sender has resent the blocked signal at least once.
        let sawResend = Atomic<Bool>(false)
        let releaser = try Shim.spawnThread {
            let resent = eventually(timeout: .seconds(8)) { ((try? m.deliveryStatistics(of: 1).resends) ?? 0) > before.resends }
            sawResend.store(resent, ordering: .relaxed)
            first.release()
        }
        #expect(try m.sigp(1, .emergencySignal) == accepted)   // returns once the handler acknowledged
        try Shim.join(releaser)
        let resent = sawResend.load(ordering: .relaxed)
        #expect(resent, "the blocked signal was not resent")
        let after = try m.deliveryStatistics(of: 1)
        #expect(after.signalsReceived > before.signalsReceived, "the handler never ran after the unblock")
        second.release()
        #expect(eventually { log.count(1) { $0 == .emergencySignal } == 1 })
    }

    @Test func restartStartsAStoppedCPUAndRunsTheRestartHandler() throws {
        let log = InterruptLog()
        let m = try machine(log)
        defer { m.shutdown() }
        #expect(try m.sigp(1, .stop) == accepted)
        #expect(eventually { (try? m.runState(of: 1)) == .stopped })
        #expect(try m.sigp(1, .restart) == accepted)
        #expect(eventually { log.count(1) { $0 == .restart } == 1 })
        #expect(try m.sigp(1, .sense) == accepted)
        // On an operating CPU: a restart interruption at its next safe point.
        #expect(try m.sigp(1, .restart) == accepted)
        #expect(eventually { log.count(1) { $0 == .restart } == 2 })
        // A parked CPU belongs to the lifecycle.
        try m.offline(1)
        #expect(try m.sigp(1, .restart) == status(.incorrectState))
        #expect(try m.sigp(1, .start) == status(.incorrectState))
        #expect(try m.sigp(1, .senseRunning) == status(.notRunning))
    }

    @Test func cpuResetClearsPendingInterruptionsAndStops() throws {
        let log = InterruptLog()
        let m = try machine(log)
        defer { m.shutdown() }
        #expect(try m.sigp(1, .stop) == accepted)
        #expect(eventually { (try? m.runState(of: 1)) == .stopped })
        #expect(try m.sigp(1, .externalCall, parameter: 5) == accepted)
        #expect(try m.sigp(1, .emergencySignal) == accepted)
        #expect(try m.sigp(1, .cpuReset) == accepted)
        #expect(try m.sigp(1, .sense) == status(.stopped))   // no external call pending any more
        #expect(try m.sigp(1, .start) == accepted)
        usleep(50_000)
        #expect(log.count(1) == 0, "a reset CPU still handled \(log.all(1))")
        // A reset of an operating CPU places it in the stopped state.
        #expect(try m.sigp(1, .cpuReset) == accepted)
        #expect(eventually { (try? m.runState(of: 1)) == .stopped })
        #expect(try m.sigp(1, .start) == accepted)
    }

    @Test func conditionalEmergencySignalAndSenseRunningFollowTheRunState() throws {
        let log = InterruptLog()
        let m = try machine(log, poll: .zero)
        defer { m.shutdown() }
        let gate = try keepRunning(m, 1)
        #expect(try m.sigp(1, .conditionalEmergencySignal) == status(.incorrectState))
        #expect(try m.sigp(1, .senseRunning) == accepted)
        gate.release()
        #expect(eventually { (try? m.runState(of: 1)) == .idle })
        #expect(try m.sigp(1, .senseRunning) == status(.notRunning))
        #expect(try m.sigp(1, .conditionalEmergencySignal) == accepted)
        #expect(eventually { log.count(1) { $0 == .emergencySignal } == 1 })
    }

    @Test(arguments: [0, 7, 8, 10, 13, 14, 18, 20, 22, 255])
    func ordersNotModelledAreInvalid(code: Int) throws {
        let log = InterruptLog()
        let m = try machine(log)
        defer { m.shutdown() }
        let order = SIGPOrder(rawValue: UInt8(code))
        #expect(try m.sigp(1, order) == status(.invalidOrder))
        try m.offline(1)
        #expect(try m.sigp(1, order) == status(.invalidOrder))
        try m.deconfigure(1)
        #expect(try m.sigp(1, order) == SIGPResult(conditionCode: .notOperational))
    }

    @Test func aPollingCPUReceivesOrdersWithoutAnySignal() throws {
        let log = InterruptLog()
        let m = try machine(log, poll: .seconds(60))
        defer { m.shutdown() }
        let before = try m.deliveryStatistics(of: 1)
        let orders = 200
        for i in 0..<orders {
            #expect(eventually { (try? m.runState(of: 1)) == .polling })
            #expect(try m.sigp(1, .emergencySignal) == accepted)
            #expect(eventually { log.count(1) == i + 1 })
        }
        let after = try m.deliveryStatistics(of: 1)
        #expect(after.signalsSent == before.signalsSent, "signals were sent to a polling CPU")
        #expect(after.futexWakes == before.futexWakes, "futex wakes were sent to a polling CPU")
        #expect(log.count(1) == orders)
    }

    @Test func anIdleCPUIsWokenByFutexNotBySignal() throws {
        let log = InterruptLog()
        let m = try machine(log, poll: .zero)
        defer { m.shutdown() }
        let before = try m.deliveryStatistics(of: 1)
        let orders = 50
        for i in 0..<orders {
            #expect(eventually { (try? m.runState(of: 1)) == .idle })
            #expect(try m.sigp(1, .emergencySignal) == accepted)
            #expect(eventually { log.count(1) == i + 1 })
        }
        let after = try m.deliveryStatistics(of: 1)
        #expect(after.signalsSent == before.signalsSent)
        #expect(after.futexWakes == before.futexWakes + UInt64(orders))
    }

    /// A CPU that sends an order to itself never waits for its own acknowledgement: with its signal blocked (a
    /// stop_machine body, a CPU draining its calls on the way offline) the order waits for its next safe point;
    /// unblocked (a cross-call) the handler takes it on the spot. Before the fix the sender spun for the whole
    /// response timeout and then reported itself as not responding (found by hotplug-torture, seed 1).
    @Test func anOrderToItselfDoesNotWaitForItself() throws {
        let log = InterruptLog()
        let m = try Machine(cpus: 2, configuration: .init(responseTimeout: .seconds(3), interruptHandler: log.handler))
        defer { m.shutdown() }
        func calls(_ parameter: UInt32) -> Int {
            log.count(1) { if case .externalCall(parameter, 1) = $0 { return true }; return false }
        }
        let started = ContinuousClock.now
        try m.stopMachine(active: CPUSet([1])) { cpu in
            if cpu == 1 { _ = try m.sigp(1, .externalCall, parameter: 7) }
        }
        #expect(ContinuousClock.now - started < .seconds(1))
        #expect(eventually { calls(7) == 1 })
        let again = ContinuousClock.now
        let result = try m.run(on: 1) { try m.sigp(1, .externalCall, parameter: 8) }
        #expect(result.conditionCode == .accepted)
        #expect(ContinuousClock.now - again < .seconds(1))
        #expect(eventually { calls(8) == 1 })
        #expect(try m.sigp(1, .sense).conditionCode == .accepted)   // not check-stopped
    }

    /// A STOP that reaches a CPU while it holds a runtime lock (here: another CPU's cross-call queue lock) takes
    /// effect after the lock is released: a cross-call with a 5 ms timeout to that other CPU returns within its
    /// bound while the CPU is stopped, and a stop_machine that times out names the stopped CPU. Every wait is
    /// bounded: a watchdog STARTs the stopped CPU after 600 ms, so a stop inside the lock shows as a late call.
    @Test func aStopNeverParksACPUInsideARuntimeLock() throws {
        let m = try Machine(cpus: 3, configuration: .init(responseTimeout: .seconds(2), resendInterval: .milliseconds(5)))
        defer { m.shutdown() }
        let queueOfTwo = m.cores[2].calls
        final class Flags: Sendable {
            let done = Atomic<Bool>(false)
            let inLoop = Atomic<Bool>(false)
            let round = Atomic<Int>(0)
        }
        let flags = Flags()
        // CPU 1: spends most of its time inside CPU 2's cross-call queue lock, and makes real cross-calls to CPU 2.
        let busy = try m.submit(on: 1) {
            flags.inLoop.store(true, ordering: .releasing)
            var i = 0
            while !flags.done.load(ordering: .acquiring) {
                queueOfTwo.withLock { _ in
                    let end = Shim.monotonicNanoseconds() + 50_000
                    while Shim.monotonicNanoseconds() < end {}
                }
                i += 1
                if i % 16 == 0 { _ = try? m.run(on: 2, timeout: .milliseconds(50)) {} }
            }
        }
        #expect(eventually { flags.inLoop.load(ordering: .acquiring) })
        /// STARTs CPU 1 after 600 ms unless round `r` is over by then.
        func watchdog(_ r: Int) {
            DispatchQueue.global().asyncAfter(deadline: .now() + 0.6) {
                if flags.round.load(ordering: .acquiring) == r { _ = try? m.sigp(1, .start) }
            }
        }
        var worst = Duration.zero
        for r in 1...8 {
            flags.round.store(r, ordering: .releasing)
            #expect(try m.sigp(1, .stop).conditionCode == .accepted)
            #expect(eventually(timeout: .seconds(2)) { (try? m.runState(of: 1)) == .stopped })
            watchdog(r)
            let started = ContinuousClock.now
            do throws(HotplugError) {
                try m.run(on: 2, timeout: .milliseconds(5)) {}
            } catch {
                // CPU 2 may be slow to start it (it shares a core): a timeout in time is a pass.
                guard case .timeout(cpu: 2, operation: .crossCall, _) = error else { throw error }
            }
            worst = max(worst, ContinuousClock.now - started)
            flags.round.store(0, ordering: .releasing)
            #expect(try m.sigp(1, .start).conditionCode == .accepted)
            usleep(2_000)
        }
        #expect(worst < .milliseconds(205), "a call with a 5 ms timeout took \(worst) while CPU 1 was stopped")
        // A stop_machine that times out names the CPU that is stopped, not one held up behind it.
        flags.round.store(100, ordering: .releasing)
        #expect(try m.sigp(1, .stop).conditionCode == .accepted)
        #expect(eventually(timeout: .seconds(2)) { (try? m.runState(of: 1)) == .stopped })
        watchdog(100)
        let started = ContinuousClock.now
        var named: Int?
        do throws(HotplugError) {
            try m.stopMachine(timeout: .milliseconds(100)) { (_: Int) -> Void in }
        } catch {
            guard case .timeout(let cpu, operation: .stopMachine, _) = error else { throw error }
            named = cpu
        }
        let took = ContinuousClock.now - started
        flags.round.store(0, ordering: .releasing)
        #expect(named == 1)
        #expect(took < .milliseconds(400), "stop_machine with a 100 ms timeout took \(took)")
        flags.done.store(true, ordering: .releasing)
        #expect(try m.sigp(1, .start).conditionCode == .accepted)
        #expect(busy.wait(timeout: .seconds(5)))
    }
}
