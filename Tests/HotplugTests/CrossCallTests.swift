import Foundation
import Synchronization
import Testing
@testable import Hotplug

@Suite struct CrossCallTests {
    @Test func runOnRunsOnTheRightThreadAndReturnsItsValue() throws {
        let machine = try Machine(cpus: 3)
        defer { machine.shutdown() }
        for cpu in 0..<3 {
            let (current, tid) = try machine.run(on: cpu) { (machine.currentCPU, Shim.currentThreadID) }
            #expect(current == cpu)
            #expect(tid == (try machine.threadID(of: cpu)))
            #expect(tid != Shim.currentThreadID)
        }
        #expect(machine.currentCPU == nil)
        #expect(try machine.run(on: 2) { "value from \(machine.currentCPU!)" } == "value from 2")
    }

    @Test func runOnRethrowsTheBodysError() throws {
        struct Boom: Error, Equatable {}
        let machine = try Machine(cpus: 2)
        defer { machine.shutdown() }
        #expect(throws: Boom()) { try machine.run(on: 1) { () throws -> Int in throw Boom() } }
    }

    @Test func runOnEachGivesTheLowestCPUsErrorAfterEveryBodyRan() throws {
        struct Boom: Error, Equatable { let cpu: Int }
        let machine = try Machine(cpus: 4)
        defer { machine.shutdown() }
        let ran = Locked<[Int]>([])
        #expect(throws: Boom(cpu: 1)) {
            try machine.runOnEach { cpu in
                ran.withLock { $0.append(cpu) }
                if cpu % 2 == 1 { throw Boom(cpu: cpu) }
            }
        }
        #expect(ran.withLock { $0.sorted() } == [0, 1, 2, 3])
    }

    @Test func runOnEachCoversEveryOnlineCPU() throws {
        let machine = try Machine(cpus: 4)
        defer { machine.shutdown() }
        try machine.offline(2)
        let results = try machine.runOnEach { cpu in (cpu, machine.currentCPU) }
        #expect(Set(results.keys) == [0, 1, 3])
        #expect(results.allSatisfy { $0.key == $0.value.0 && $0.value.1 == $0.key })
    }

    @Test func crossCallsBetweenCPUsDoNotDeadlock() throws {
        let machine = try Machine(cpus: 2)
        defer { machine.shutdown() }
        // CPU 0 calls CPU 1, which calls back into CPU 0 while CPU 0 waits: CPU 0 serves it while waiting.
        let value = try machine.run(on: 0) {
            try machine.run(on: 1) { try machine.run(on: 0) { machine.currentCPU! * 10 } + machine.currentCPU! }
        }
        #expect(value == 1)
        // A CPU calling itself runs inline.
        #expect(try machine.run(on: 1) { try machine.run(on: 1) { machine.currentCPU } } == 1)
        // runOnEach from a CPU runs its own share inline.
        let all = try machine.run(on: 1) { try machine.runOnEach { cpu in cpu } }
        #expect(all == [0: 0, 1: 1])
    }

    @Test func callThatCannotStartInTimeIsCancelled() throws {
        let machine = try Machine(cpus: 2)
        defer { machine.shutdown() }
        let gate = Gate()
        try machine.submit(on: 1) { gate.spin() }
        #expect(eventually { gate.hasEntered })
        let ran = Atomic<Bool>(false)
        // A body that cannot throw: the call is throws(HotplugError), and the error is a cross-call timeout.
        do throws(HotplugError) {
            try machine.run(on: 1, timeout: .milliseconds(50)) { ran.store(true, ordering: .relaxed) }
            Issue.record("the call returned although CPU 1 never reached a safe point")
        } catch {
            expectTimeout(error, cpu: 1, operation: .crossCall, atLeast: .milliseconds(50))
        }
        do throws(HotplugError) {
            _ = try machine.runOnEach(timeout: .milliseconds(50)) { cpu in cpu }
            Issue.record("runOnEach returned although CPU 1 never reached a safe point")
        } catch {
            expectTimeout(error, cpu: 1, operation: .crossCall, atLeast: .milliseconds(50))
        }
        gate.release()
        #expect(try machine.run(on: 1) { 7 } == 7)   // it is back at its safe points
        let didRun = ran.load(ordering: .relaxed)
        #expect(!didRun, "a cancelled cross-call ran")
    }

    @Test func offlineRunsAcceptedCallsFirst() throws {
        let machine = try Machine(cpus: 2)
        defer { machine.shutdown() }
        let gate = Gate()
        let ranOn = Locked<[Int?]>([])
        try machine.submit(on: 1) { gate.spin() }
        #expect(eventually { gate.hasEntered })
        for _ in 0..<5 { try machine.submit(on: 1) { ranOn.withLock { $0.append(machine.currentCPU) } } }
        let offliner = try Shim.spawnThread { try? machine.offline(1) }
        usleep(20_000)
        gate.release()
        try Shim.join(offliner)
        #expect(try machine.state(of: 1) == .parked)
        #expect(ranOn.withLock { $0 } == Array(repeating: 1, count: 5))
        #expect(throws: HotplugError.notOnline(cpu: 1)) { try machine.submit(on: 1) {} }
    }
}
