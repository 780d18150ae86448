import ExampleSupport
import Hotplug
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// The SIGP scenarios: orders to stopped, running (in a spinning cross-call), restart-pending, reset and parked
// CPUs, each answer and each side effect checked.
extension Demo {
    /// STOP an idle CPU; while it is stopped, a second EXTERNAL_CALL gets cc 1 + 0x80 and emergency signals queue;
    /// START delivers them, once each.
    func stopAndExternalCall() throws {
        guard let target = randomOnline() else { return }
        try order(target, .stop, expect: [Demo.cc0], "an operating")
        let stopped = waitUntil(2_000) { (try? machine.runState(of: target)) == .stopped }
        try check(stopped, "STOP stops the CPU", "logical CPU \(target) run state \(try machine.runState(of: target))")
        try order(target, .sense, expect: [Demo.cc1(.stopped)], "a stopped")
        try order(target, .senseRunning, expect: [Demo.cc1(.notRunning)], "a stopped")
        try order(target, .stop, expect: [Demo.cc0], "an already stopped")
        try order(target, .conditionalEmergencySignal, expect: [Demo.cc0], "a stopped (not running)")
        let first = parameter(), second = parameter()
        try order(target, .externalCall, parameter: first, expect: [Demo.cc0], "a stopped")
        try order(target, .externalCall, parameter: second, expect: [Demo.cc1(.externalCallPending)],
                  "a stopped, call-pending")
        try order(target, .sense, expect: [Demo.cc1([.stopped, .externalCallPending])], "a stopped, call-pending")
        let emergencies = Int.random(in: 1...3, using: &rng)
        for _ in 0..<emergencies { try order(target, .emergencySignal, expect: [Demo.cc0], "a stopped") }
        if machine.online.count > 1 {
            try expectError("offlining a CPU stopped by SIGP throws stoppedByOrder",
                            { $0 == .stoppedByOrder(cpu: target) }) {
                () throws(HotplugError) in try machine.offline(target)
            }
        }
        try check(recorder.snapshot(cpu: target) == expected[target], "a stopped CPU takes no interruption",
                  "logical CPU \(target) received \(recorder.snapshot(cpu: target)), expected \(expected[target])")
        try order(target, .start, expect: [Demo.cc0], "a stopped")
        expected[target].externalCalls.append(.init(parameter: first, source: nil))
        expected[target].emergencySignals += emergencies + 1
        try awaitInterrupts(target)
        try order(target, .sense, expect: [Demo.cc0], "a restarted")
        try order(target, .start, expect: [Demo.cc0], "an operating (no effect)")
        try order(target, .externalCall, parameter: second, expect: [Demo.cc0], "an operating (slot free again)")
        expected[target].externalCalls.append(.init(parameter: second, source: nil))
        try awaitInterrupts(target)
    }

    /// STOP a CPU spinning in a cross-call: it stops inside the signal handler, its CPU time stops growing; START
    /// resumes it; STOP_AND_STORE_STATUS stores where it was.
    func stopRunning() throws {
        guard let target = randomOnline() else { return }
        let tid = try threadID(target, "online")
        let (spinner, call) = try startSpinner(on: target)
        try order(target, .senseRunning, expect: [Demo.cc0], "a running")
        try order(target, .sense, expect: [Demo.cc0], "a running")
        try order(target, .conditionalEmergencySignal, expect: [Demo.cc1(.incorrectState)], "a running")
        try awaitGrowth(target, tid, "a CPU in a spinning cross-call uses CPU time")

        let before = stats(target)
        try order(target, .stop, expect: [Demo.cc0], "a running")
        try check(try machine.runState(of: target) == .stopped, "STOP to a running CPU returns once it stopped",
                  "logical CPU \(target) run state \(try machine.runState(of: target))")
        let inHandler = waitUntil(1_000) { (stats(target)?.stopsInHandler ?? 0) > (before?.stopsInHandler ?? 0) }
        try check(inHandler, "a running CPU stops inside the signal handler", "logical CPU \(target): stopsInHandler did not grow")
        try awaitBlocked(target, tid, "a stopped CPU's")
        usleep(5_000)
        let t0 = try cpuTime(target, tid), w0 = monotonicNanoseconds()
        usleep(UInt32(Demo.parkedWindow / 1_000))
        let t1 = try cpuTime(target, tid), w1 = monotonicNanoseconds()
        stoppedChecks += 1
        maxStoppedGrowth = max(maxStoppedGrowth, t1 - t0)
        try check(ThreadProbe.isIdle(growth: t1 - t0, elapsed: w1 - w0), "STOP stops a CPU spinning in a cross-call",
                  "logical CPU \(target) (tid \(tid)) used \(t1 - t0) ns of CPU time in \((w1 - w0) / 1_000_000) ms while stopped")
        try order(target, .sense, expect: [Demo.cc1(.stopped)], "a stopped")
        try order(target, .senseRunning, expect: [Demo.cc1(.notRunning)], "a stopped")
        try order(target, .start, expect: [Demo.cc0], "a stopped")
        try awaitGrowth(target, tid, "START resumes a stopped CPU")

        try order(target, .stopAndStoreStatus, expect: [Demo.cc0], "a running")
        try check(try machine.runState(of: target) == .stopped, "STOP_AND_STORE_STATUS stops the CPU",
                  "logical CPU \(target) run state \(try machine.runState(of: target))")
        let status = try machine.storedStatus(of: target)
        try check((status?.instructionPointer ?? 0) != 0 && (status?.stackPointer ?? 0) != 0,
                  "STOP_AND_STORE_STATUS stores a non-zero instruction and stack pointer",
                  "logical CPU \(target): \(String(describing: status))")
        try order(target, .start, expect: [Demo.cc0], "a stopped")
        try finishSpinner(spinner, call, target)
        try awaitInterrupts(target)
    }

    /// A pending RESTART (the target runs a cross-call, so it cannot take it) makes every order but the resets
    /// answer cc 2. Either the CPU takes the restart when the call ends, or a CPU_RESET clears it (and stops the CPU).
    func restartBusy(thenReset: Bool) throws {
        guard let target = randomOnline() else { return }
        let (spinner, call) = try startSpinner(on: target)
        try order(target, .restart, expect: [Demo.cc0], "a running")
        for busyOrder in [SIGPOrder.sense, .senseRunning, .externalCall, .emergencySignal, .conditionalEmergencySignal,
                          .start, .stop, .stopAndStoreStatus, .restart] {
            try order(target, busyOrder, parameter: parameter(), expect: [Demo.cc2], "a restart-pending")
        }
        if thenReset {
            let reset: SIGPOrder = Bool.random(using: &rng) ? .cpuReset : .initialCPUReset
            try order(target, reset, expect: [Demo.cc0], "a restart-pending (resets are accepted)")
            let stopped = waitUntil(2_000) { (try? machine.runState(of: target)) == .stopped }
            try check(stopped, "\(reset) stops an operating CPU", "logical CPU \(target) run state \(try machine.runState(of: target))")
            try order(target, .sense, expect: [Demo.cc1(.stopped)], "a reset")
            try order(target, .start, expect: [Demo.cc0], "a reset")
        }
        try finishSpinner(spinner, call, target)
        if !thenReset { expected[target].restarts += 1 }
        try awaitInterrupts(target)
        try checkRunsOn(target)   // it passed a safe point: nothing else arrives
        try awaitInterrupts(target)
        try order(target, .sense, expect: [Demo.cc0], "an operating")
    }

    /// Resets clear pending interruptions; INITIAL_CPU_RESET also clears the status area; a reset stops an
    /// operating CPU.
    func resets() throws {
        guard let target = randomOnline() else { return }
        try order(target, .stopAndStoreStatus, expect: [Demo.cc0], "an operating")
        let stopped = waitUntil(2_000) { (try? machine.runState(of: target)) == .stopped }
        try check(stopped, "STOP_AND_STORE_STATUS stops the CPU", "logical CPU \(target) run state \(try machine.runState(of: target))")
        let status = try machine.storedStatus(of: target)
        try check((status?.instructionPointer ?? 0) != 0 && (status?.stackPointer ?? 0) != 0,
                  "STOP_AND_STORE_STATUS stores a non-zero instruction and stack pointer",
                  "logical CPU \(target): \(String(describing: status))")
        try order(target, .externalCall, parameter: parameter(), expect: [Demo.cc0], "a stopped")
        try order(target, .emergencySignal, expect: [Demo.cc0], "a stopped")
        try order(target, .sense, expect: [Demo.cc1([.stopped, .externalCallPending])], "a stopped, call-pending")
        try order(target, .cpuReset, expect: [Demo.cc0], "a stopped")
        try order(target, .sense, expect: [Demo.cc1(.stopped)], "a reset (call cleared)")
        try check(try machine.storedStatus(of: target) == status, "CPU_RESET keeps the status area",
                  "logical CPU \(target): \(String(describing: try machine.storedStatus(of: target)))")
        try order(target, .initialCPUReset, expect: [Demo.cc0], "a stopped")
        try check(try machine.storedStatus(of: target) == nil, "INITIAL_CPU_RESET clears the status area",
                  "logical CPU \(target): \(String(describing: try machine.storedStatus(of: target)))")
        try order(target, .start, expect: [Demo.cc0], "a reset")
        try checkRunsOn(target)
        try awaitInterrupts(target)   // the cleared call and signal never arrive

        // A reset to an operating CPU stops it.
        try order(target, .cpuReset, expect: [Demo.cc0], "an operating")
        let stoppedAgain = waitUntil(2_000) { (try? machine.runState(of: target)) == .stopped }
        try check(stoppedAgain, "CPU_RESET stops an operating CPU", "logical CPU \(target) run state \(try machine.runState(of: target))")
        try order(target, .start, expect: [Demo.cc0], "a reset")
        try checkRunsOn(target)
    }

    /// Orders that are not modelled answer cc 1 + INVALID_ORDER; no CPU (or standby) answers cc 3.
    func invalidOrders() throws {
        let present = Array(machine.present)
        if let target = present.randomElement(using: &rng) {
            let code = Demo.unmodelledOrders.randomElement(using: &rng)!
            try order(target, SIGPOrder(rawValue: code), expect: [Demo.cc1(.invalidOrder)], "a present (unmodelled order)")
        }
        if let standby = cpus(in: .standby).randomElement(using: &rng) {
            for o in [SIGPOrder.sense, .start, .externalCall, SIGPOrder(rawValue: 7)] {
                try order(standby, o, expect: [Demo.cc3], "a standby")
            }
        }
        try order(count, .sense, expect: [Demo.cc3], "a nonexistent (id = possible)")
        try order(-1, .stop, expect: [Demo.cc3], "a nonexistent (id -1)")
    }

    /// An external call sent by a logical CPU carries its id as the source.
    func externalCallFromCPU() throws {
        try ensureOnline(2)
        guard let source = randomOnline(), let target = randomOnline(except: source) else { return }
        let value = parameter()
        let beforeSource = stats(source), beforeTarget = stats(target)
        let result = try machine.run(on: source) { [machine] in try machine.sigp(target, .externalCall, parameter: value) }
        classify(source, since: beforeSource)
        classify(target, since: beforeTarget)
        runCalls += 1
        tally(.externalCall, result)
        try check(result == Demo.cc0, "SIGP EXTERNAL_CALL from a logical CPU", "CPU \(source) -> \(target): \(result)")
        expected[target].externalCalls.append(.init(parameter: value, source: source))
        try awaitInterrupts(target)
    }

    /// Orders to a parked CPU: none of them wakes its thread (its CPU time does not grow); interruptions stay
    /// pending until it comes online.
    func parkedOrders() throws {
        if cpus(in: .parked).isEmpty {
            if machine.online.count > 1, let victim = randomOnline() { try offline(victim) }
            else if let standby = cpus(in: .standby).first { try configure(standby) }
        }
        guard let target = cpus(in: .parked).randomElement(using: &rng) else { return }
        if parkedWatch[target] == nil { try armParkedWatch(target) }
        let callPending = !pending[target].externalCalls.isEmpty
        try order(target, .sense, expect: [Demo.cc1(callPending ? [.stopped, .externalCallPending] : .stopped)], "a parked")
        try order(target, .senseRunning, expect: [Demo.cc1(.notRunning)], "a parked")
        try order(target, .start, expect: [Demo.cc1(.incorrectState)], "a parked")
        try order(target, .restart, expect: [Demo.cc1(.incorrectState)], "a parked")
        try order(target, .stop, expect: [Demo.cc0], "a parked")
        try order(target, .stopAndStoreStatus, expect: [Demo.cc0], "a parked")
        let status = try machine.storedStatus(of: target)
        try check((status?.instructionPointer ?? 0) != 0 && (status?.stackPointer ?? 0) != 0,
                  "STOP_AND_STORE_STATUS on a parked CPU stores where it parked", "logical CPU \(target): \(String(describing: status))")
        if !callPending {
            let value = parameter()
            try order(target, .externalCall, parameter: value, expect: [Demo.cc0], "a parked")
            pending[target].externalCalls.append(.init(parameter: value, source: nil))
        }
        try order(target, .externalCall, parameter: parameter(), expect: [Demo.cc1(.externalCallPending)],
                  "a parked, call-pending")
        try order(target, .emergencySignal, expect: [Demo.cc0], "a parked")
        try order(target, .conditionalEmergencySignal, expect: [Demo.cc0], "a parked (not running)")
        pending[target].emergencySignals += 2
        try order(target, .sense, expect: [Demo.cc1([.stopped, .externalCallPending])], "a parked, call-pending")
        if Int.random(in: 0..<3, using: &rng) == 0 {
            try order(target, .initialCPUReset, expect: [Demo.cc0], "a parked")
            pending[target] = Interrupts()
            try check(try machine.storedStatus(of: target) == nil, "INITIAL_CPU_RESET clears the status area",
                      "logical CPU \(target)")
            try order(target, .sense, expect: [Demo.cc1(.stopped)], "a parked, reset,")
        }
        try check(recorder.snapshot(cpu: target) == expected[target], "a parked CPU takes no interruption",
                  "logical CPU \(target) received \(recorder.snapshot(cpu: target)), expected \(expected[target])")
        // None of these orders woke the parked thread.
        try checkParkedWatch(force: target)
    }
}
