import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// SigBlk of a thread of this process, from /proc.
func blockedSignals(ofThread tid: Int32) throws -> UInt64 {
    let status = try String(contentsOfFile: "/proc/self/task/\(tid)/status", encoding: .utf8)
    guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("SigBlk:") }),
          let mask = UInt64(line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces), radix: 16) else {
        throw HotplugError.invalidConfiguration("no SigBlk for thread \(tid)")
    }
    return mask
}

/// Checks that `error` is a timeout of `operation` on `cpu` after at least `waited`. The switch names every case
/// (no `default`): a new ``HotplugError`` case breaks this build until it is classified here.
func expectTimeout(_ error: HotplugError, cpu: Int, operation: HotplugOperation, atLeast waited: Duration,
                   sourceLocation: SourceLocation = #_sourceLocation) {
    switch error {
    case .timeout(let timedOut, let named, let nanoseconds):
        #expect(timedOut == cpu && named == operation, "\(error)", sourceLocation: sourceLocation)
        #expect(nanoseconds >= waited.nanoseconds, "\(error)", sourceLocation: sourceLocation)
    case .invalidCPU, .notPresent, .notOnline, .incorrectState, .stoppedByOrder, .busy, .notResponding,
         .invalidSignal, .signalInUse, .shutDown, .invalidConfiguration, .system, .callbackFailed, .noFreeState,
         .cannotInject, .unknownState, .taskletKillsItself,
         .wouldDeadlock, .invalidArgument, .duplicateStateName:
        Issue.record("expected a \(operation) timeout on CPU \(cpu), got: \(error)", sourceLocation: sourceLocation)
    }
}

@Suite struct StopMachineTests {
    struct Boom: Error, Equatable { let cpu: Int }

    @Test func idleCPUsAreClaimedWhereTheyParkAndRunNothingDuringTheBody() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let bit = UInt64(1) << UInt64(m.signal - 1)
        let tids = try (0..<3).map { try #require(try m.threadID(of: $0)) }
        #expect(eventually { (1..<3).allSatisfy { (try? m.runState(of: $0)) == .idle } })
        let wakesBefore = try (1..<3).map { try m.deliveryStatistics(of: $0).futexWakes }
        let ran = Counter()
        let tasklet = Tasklet(m) { ran.value.add(1, ordering: .relaxed) }
        let seen = Locked<[Int: (blocked: Bool, state: RunState)]>([:])
        try m.stopMachine(active: [0]) { _ in
            for other in 1..<3 {
                let blocked = ((try? blockedSignals(ofThread: tids[other])) ?? 0) & bit != 0
                seen.withLock { $0[other] = (blocked, (try? m.runState(of: other)) ?? .none) }
            }
            // Work posted to a claimed CPU waits for the end of the stop_machine.
            _ = try? tasklet.schedule(on: 1)
            usleep(20_000)
            #expect(ran.value.load(ordering: .relaxed) == 0, "a claimed CPU ran a tasklet during the body")
        }
        for other in 1..<3 {
            let entry = try #require(seen.withLock { $0[other] })
            #expect(entry.state == .idle, "CPU \(other) was \(entry.state), not left parked")
            #expect(!entry.blocked, "CPU \(other) was woken to block its signal")
        }
        // Not woken to be stopped: at most the wake that the tasklet's release needed.
        let wakesAfter = try (1..<3).map { try m.deliveryStatistics(of: $0).futexWakes }
        #expect(wakesAfter[0] - wakesBefore[0] <= 1 && wakesAfter[1] == wakesBefore[1])
        #expect(eventually { ran.value.load(ordering: .relaxed) == 1 })
    }

    @Test func everyOtherOnlineCPUSpinsWithItsSignalBlocked() throws {
        // CPUs that poll for a long time never park: none is idle, so every one is stopped in the barrier.
        let m = try Machine(cpus: 3, configuration: .init(pollTime: .seconds(30)))
        defer { m.shutdown() }
        let bit = UInt64(1) << UInt64(m.signal - 1)
        let tids = try (0..<3).map { try #require(try m.threadID(of: $0)) }
        let seen = Locked<[Int: (blocked: Bool, state: RunState)]>([:])
        let ranOn = Locked<[Int]>([])
        try m.stopMachine(active: [0]) { cpu in
            ranOn.withLock { $0.append(cpu) }
            for other in 1..<3 {
                let blocked = ((try? blockedSignals(ofThread: tids[other])) ?? 0) & bit != 0
                seen.withLock { $0[other] = (blocked, (try? m.runState(of: other)) ?? .none) }
            }
            #expect(Shim.isSIGPBlocked, "the active CPU runs the body with interrupts off")
        }
        #expect(ranOn.withLock { $0 } == [0])
        for other in 1..<3 {
            let entry = try #require(seen.withLock { $0[other] })
            #expect(entry.blocked, "CPU \(other) did not block its signal during stop_machine")
            #expect(entry.state == .running, "CPU \(other) was \(entry.state), not held in the stopper")
        }
        // Afterwards, interrupts are back on everywhere.
        for cpu in 0..<3 { #expect(try blockedSignals(ofThread: tids[cpu]) & bit == 0) }
        // Without `active`, the body runs once, on the first online CPU.
        try m.offline(0)
        try m.stopMachine { cpu in ranOn.withLock { $0.append(cpu) } }
        #expect(ranOn.withLock { $0 } == [0, 1])
    }

    @Test func aBodysErrorComesOutUnchangedAfterEveryBodyRan() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let ran = Locked<[Int]>([])
        #expect(throws: Boom(cpu: 0)) {
            try m.stopMachine(active: [0, 1, 2]) { cpu in
                ran.withLock { $0.append(cpu) }
                if cpu != 1 { throw Boom(cpu: cpu) }
            }
        }
        #expect(ran.withLock { $0.sorted() } == [0, 1, 2], "a failing body cut the run short")
    }

    @Test func aCPUStuckInALongTaskGivesATimeoutAndNothingChanges() throws {
        let m = try Machine(cpus: 3, configuration: .init(responseTimeout: .milliseconds(200)))
        defer { m.shutdown() }
        let gate = Gate()
        defer { gate.release() }
        try m.submit(on: 1) { gate.spin() }
        #expect(eventually { gate.hasEntered })
        let ran = Atomic<Bool>(false)
        // A body that cannot throw: the call is throws(HotplugError), and the error is a stop_machine timeout.
        do throws(HotplugError) {
            try m.stopMachine(timeout: .milliseconds(100)) { _ in ran.store(true, ordering: .relaxed) }
            Issue.record("stop_machine returned although CPU 1 never arrived")
        } catch {
            expectTimeout(error, cpu: 1, operation: .stopMachine, atLeast: .milliseconds(100))
        }
        let ranEarly = ran.load(ordering: .relaxed)
        #expect(!ranEarly, "the body ran although a CPU never arrived")
        // Hotplug operations that need stop_machine fail the same way, with no state change.
        let before = (m.online, m.active, try m.state(of: 2), try m.hotplug.currentState(of: 2))
        do throws(HotplugError) {
            try m.offline(2)
            Issue.record("offline returned although CPU 1 never arrived")
        } catch {
            expectTimeout(error, cpu: 1, operation: .stopMachine, atLeast: .milliseconds(200))
        }
        #expect((m.online, m.active, try m.state(of: 2), try m.hotplug.currentState(of: 2)) == before)
        #expect(try m.run(on: 2) { m.currentCPU } == 2, "CPU 2 is not back in service")
        gate.release()
        try m.stopMachine { _ in ran.store(true, ordering: .relaxed) }
        let ranLater = ran.load(ordering: .relaxed)
        #expect(ranLater)
        try m.offline(2)
    }

    @Test func aCoordinatorThatNeverArrivesIsAStopMachineTimeout() throws {
        // Called off the machine's CPUs, stop_machine hands the run to the first online CPU by a cross-call; when
        // that CPU is stuck, the error still names stop_machine, not the cross-call that carried it.
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let gate = Gate()
        defer { gate.release() }
        try m.submit(on: 0) { gate.spin() }
        #expect(eventually { gate.hasEntered })
        let ran = Atomic<Bool>(false)
        do throws(HotplugError) {
            try m.stopMachine(active: [0, 1], timeout: .milliseconds(100)) { _ in ran.store(true, ordering: .relaxed) }
            Issue.record("stop_machine returned although CPU 0 never arrived")
        } catch {
            expectTimeout(error, cpu: 0, operation: .stopMachine, atLeast: .milliseconds(100))
        }
        gate.release()
        let ranEarly = ran.load(ordering: .relaxed)
        #expect(!ranEarly, "the body ran although the coordinator never arrived")
        try m.stopMachine(active: [0, 1]) { _ in ran.store(true, ordering: .relaxed) }
        let ranLater = ran.load(ordering: .relaxed)
        #expect(ranLater)
    }

    @Test func callsAreSerialised() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let inside = Atomic<Int>(0)
        let overlap = Atomic<Bool>(false)
        let runs = stressIterations(40, long: 1_000)
        let worker = try Shim.spawnThread {
            for _ in 0..<runs {
                try? m.stopMachine { _ in
                    if inside.add(1, ordering: .relaxed).newValue > 1 { overlap.store(true, ordering: .relaxed) }
                    inside.subtract(1, ordering: .relaxed)
                }
            }
        }
        for _ in 0..<runs {
            try m.stopMachine { _ in
                if inside.add(1, ordering: .relaxed).newValue > 1 { overlap.store(true, ordering: .relaxed) }
                usleep(50)
                inside.subtract(1, ordering: .relaxed)
            }
        }
        try Shim.join(worker)
        let overlapped = overlap.load(ordering: .relaxed)
        #expect(!overlapped)
    }

    @Test func calledOnALogicalCPUItTakesPartInline() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let ranOn = Locked<[Int]>([])
        try m.run(on: 1) {
            try m.stopMachine(active: [0, 1]) { cpu in ranOn.withLock { $0.append(cpu) } }
        }
        #expect(ranOn.withLock { $0.sorted() } == [0, 1])
    }

    @Test func stopOneRunsOnOneCPUWithItsSignalBlocked() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let (cpu, blocked) = try m.stopOne(1) { (m.currentCPU, Shim.isSIGPBlocked) }
        #expect(cpu == 1 && blocked)
        #expect(try m.run(on: 1) { Shim.isSIGPBlocked } == false)
        #expect(throws: Boom(cpu: 1)) { try m.stopOne(1) { () throws -> Int in throw Boom(cpu: m.currentCPU ?? -1) } }
        #expect(try m.run(on: 1) { Shim.isSIGPBlocked } == false, "a throwing body left the signal blocked")
    }
}

@Suite struct PerCPUTests {
    @Test func slotsAreCacheLineAlignedAndLocal() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let counters = PerCPU<Int>(m) { cpu in cpu * 100 }
        #expect(counters.slotStride % 64 == 0)
        for cpu in 0..<3 { #expect(Int(bitPattern: try counters.address(of: cpu)) % 64 == 0) }
        for _ in 0..<10 {
            _ = try m.runOnEach { _ in counters.withLocal { _, value in value += 1 } }
        }
        #expect(try (0..<3).map { cpu in try counters.withSlot(of: cpu) { $0 } } == [10, 110, 210])
        let seen = try counters.forEachOnline { cpu, value in (cpu, value) }
        #expect(seen.mapValues(\.1) == [0: 10, 1: 110, 2: 210])
        #expect(seen.allSatisfy { $0.key == $0.value.0 })
        try m.offline(1)
        #expect(try counters.forEachOnline { _, value in value }.keys.sorted() == [0, 2])
        #expect(try counters.withSlot(of: 1) { $0 } == 110, "an offline CPU's slot keeps its value")
        do throws(HotplugError) {
            _ = try counters.withSlot(of: 3) { $0 }
            Issue.record("a slot past the possible CPUs")
        } catch {
            #expect(error == .invalidCPU(3))
        }
    }

    @Test func wideValuesGetWholeLines() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let wide = PerCPU<(UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)>(m) { _ in
            (0, 0, 0, 0, 0, 0, 0, 0, 0)
        }
        #expect(wide.slotStride == 128)
    }

    @Test func withLocalOffTheMachinesCPUsTraps() async {
        await #expect(processExitsWith: .failure) {
            let m = try Machine(cpus: 1)
            let slots = PerCPU<Int>(m) { _ in 0 }
            slots.withLocal { _, value in value += 1 }
        }
    }
}

@Suite struct StopMachineFromOutsideTests {
    /// From a plain thread, with every online CPU idle: an active set with no online CPU runs the body nowhere, at
    /// once (it once waited for a participant that did not exist until the timeout).
    @Test func anActiveSetWithNoOnlineCPURunsNowhereAtOnce() throws {
        let m = try Machine(cpus: 3, configuration: .init(responseTimeout: .seconds(2)))
        defer { m.shutdown() }
        try m.offline(2)
        #expect(eventually { (0..<2).allSatisfy { (try? m.runState(of: $0)) == .idle } })
        let ran = Counter()
        let started = ContinuousClock.now
        try m.stopMachine(active: [2]) { _ in ran.value.add(1, ordering: .relaxed) }
        #expect(ran.value.load(ordering: .relaxed) == 0)
        #expect(ContinuousClock.now - started < .seconds(1))
        // And with a body to run, from outside, it runs where asked.
        let here = Locked<[Int?]>([])
        try m.stopMachine(active: [1]) { _ in here.withLock { $0.append(m.currentCPU) } }
        #expect(here.withLock { $0 } == [1])
    }
}
