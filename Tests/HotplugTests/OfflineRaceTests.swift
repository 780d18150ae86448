import Foundation
import Testing
@testable import Hotplug

/// Orders that meet a CPU on its way offline are neither lost nor allowed to wedge the next attach.
@Suite struct OfflineRaceTests {
    private let accepted = SIGPResult(conditionCode: .accepted)

    @Test func anExternalCallTakenWithTheOfflineRequestIsHandled() throws {
        let log = InterruptLog()
        let m = try Machine(cpus: 2, configuration: .init(interruptHandler: log.handler))
        defer { m.shutdown() }
        let gate = Gate()
        try m.submit(on: 1) { gate.spin() }
        #expect(eventually { gate.hasEntered })
        #expect(try m.sigp(1, .externalCall, parameter: 42) == accepted)   // pending: no safe point yet
        let offliner = try Shim.spawnThread { try? m.offline(1) }
        #expect(eventually { m.active == [0] })   // the offline request is posted
        gate.release()
        try Shim.join(offliner)
        #expect(try m.state(of: 1) == .parked)
        #expect(log.all(1) == [.externalCall(parameter: 42, source: nil)])
        try m.online(1)
        #expect(try m.sigp(1, .sense) == accepted, "the external-call slot stayed claimed")
        #expect(try m.sigp(1, .externalCall, parameter: 43) == accepted)
        #expect(eventually { log.count(1) == 2 })
    }

    @Test func aRestartAcceptedWhileGoingOfflineIsTakenWhenTheCPUComesBack() throws {
        let log = InterruptLog()
        let m = try Machine(cpus: 2, configuration: .init(interruptHandler: log.handler))
        defer { m.shutdown() }
        let first = Gate()
        let second = Gate()
        defer { first.release(); second.release() }
        try m.submit(on: 1) { first.spin() }
        #expect(eventually { first.hasEntered })
        try m.submit(on: 1) { second.spin() }   // queued behind the first
        let offliner = try Shim.spawnThread { try? m.offline(1) }
        #expect(eventually { m.active == [0] })
        first.release()
        #expect(eventually { second.hasEntered })   // the last accepted call runs before the CPU parks
        #expect(try m.sigp(1, .restart) == accepted)   // accepted while the CPU is on its way down
        second.release()
        try Shim.join(offliner)
        #expect(try m.state(of: 1) == .parked)
        try m.online(1)   // the lifecycle's START is never refused as busy
        #expect(eventually { log.count(1) { $0 == .restart } == 1 }, "the accepted RESTART was lost")
        #expect(eventually { (try? m.sigp(1, .sense)) == accepted })
    }

    @Test func storeStatusRightAfterConfigureHasAnAddress() throws {
        for _ in 0..<stressIterations(200, long: 2_000) {
            let m = try Machine(cpus: 2, configuration: .init(initiallyOnline: 1))
            try m.configure(1)
            #expect(try m.sigp(1, .stopAndStoreStatus) == accepted)
            let status = try #require(try m.storedStatus(of: 1))
            #expect(status.instructionPointer != 0 && status.stackPointer != 0)
            m.shutdown()
        }
    }
}
