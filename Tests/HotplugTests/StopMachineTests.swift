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

@Suite struct StopMachineTests {
    struct Boom: Error, Equatable { let cpu: Int }

    @Test func everyOtherOnlineCPUSpinsWithItsSignalBlocked() throws {
        let m = try Machine(cpus: 3)
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

    @Test func errorsAreAggregated() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        #expect {
            try m.stopMachine(active: [0, 1, 2]) { cpu in if cpu != 1 { throw Boom(cpu: cpu) } }
        } throws: { error in
            guard let error = error as? StopMachineError else { return false }
            return error.failures.keys.sorted() == [0, 2]
                && error.failures.allSatisfy { ($0.value as? Boom)?.cpu == $0.key }
        }
    }

    @Test func aCPUStuckInALongTaskGivesATimeoutAndNothingChanges() throws {
        let m = try Machine(cpus: 3, configuration: .init(responseTimeout: .milliseconds(200)))
        defer { m.shutdown() }
        let gate = Gate()
        defer { gate.release() }
        try m.submit(on: 1) { gate.spin() }
        #expect(eventually { gate.hasEntered })
        let ran = Atomic<Bool>(false)
        #expect(throws: HotplugError.self) {
            try m.stopMachine(timeout: .milliseconds(100)) { _ in ran.store(true, ordering: .relaxed) }
        }
        let ranEarly = ran.load(ordering: .relaxed)
        #expect(!ranEarly, "the body ran although a CPU never arrived")
        // Hotplug operations that need stop_machine fail the same way, with no state change.
        let before = (m.online, m.active, try m.state(of: 2), try m.hotplug.currentState(of: 2))
        #expect {
            try m.offline(2)
        } throws: { error in
            guard case HotplugError.timeout(let cpu, _, _) = error else { return false }
            return cpu == 1
        }
        #expect((m.online, m.active, try m.state(of: 2), try m.hotplug.currentState(of: 2)) == before)
        #expect(try m.run(on: 2) { m.currentCPU } == 2, "CPU 2 is not back in service")
        gate.release()
        try m.stopMachine { _ in ran.store(true, ordering: .relaxed) }
        let ranLater = ran.load(ordering: .relaxed)
        #expect(ranLater)
        try m.offline(2)
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
    }
}

@Suite struct PerCPUTests {
    @Test func slotsAreCacheLineAlignedAndLocal() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let counters = PerCPU<Int>(m) { cpu in cpu * 100 }
        #expect(counters.slotStride % 64 == 0)
        for cpu in 0..<3 { #expect(Int(bitPattern: counters.address(of: cpu)) % 64 == 0) }
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
