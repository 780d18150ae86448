import Foundation
import Testing
@testable import Hotplug

/// Bad input gets a typed error, never a crash or a hang.
@Suite struct BadInputTests {
    @Test func unknownCPUIds() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        for cpu in [-1, 2, 1_000] {
            #expect(throws: HotplugError.invalidCPU(cpu)) { try m.configure(cpu) }
            #expect(throws: HotplugError.invalidCPU(cpu)) { try m.online(cpu) }
            #expect(throws: HotplugError.invalidCPU(cpu)) { try m.offline(cpu) }
            #expect(throws: HotplugError.invalidCPU(cpu)) { try m.deconfigure(cpu) }
            #expect(throws: HotplugError.invalidCPU(cpu)) { try m.state(of: cpu) }
            #expect(throws: HotplugError.invalidCPU(cpu)) { try m.run(on: cpu) { 1 } }
            #expect(throws: HotplugError.invalidCPU(cpu)) { try m.submit(on: cpu) {} }
            #expect(try m.sigp(cpu, .sense) == SIGPResult(conditionCode: .notOperational))
        }
    }

    @Test func offliningTheLastOnlineCPUIsBusy() throws {
        let m = try Machine(cpus: 2, configuration: .init(initiallyOnline: 2))
        defer { m.shutdown() }
        try m.offline(1)
        #expect(throws: HotplugError.busy(cpu: 0, reason: .lastOnlineCPU)) { try m.offline(0) }
        #expect(m.online == [0])
        #expect(try m.run(on: 0) { m.currentCPU } == 0)
    }

    @Test func configuringTwiceAndDeconfiguringAnOnlineCPU() throws {
        let m = try Machine(cpus: 3, configuration: .init(initiallyOnline: 1))
        defer { m.shutdown() }
        try m.configure(1)
        #expect(throws: HotplugError.incorrectState(cpu: 1, state: .parked, operation: .configure)) { try m.configure(1) }
        #expect(throws: HotplugError.incorrectState(cpu: 0, state: .online, operation: .configure)) { try m.configure(0) }
        #expect(throws: HotplugError.incorrectState(cpu: 0, state: .online, operation: .deconfigure)) { try m.deconfigure(0) }
        #expect(throws: HotplugError.notPresent(cpu: 2)) { try m.online(2) }
        #expect(throws: HotplugError.notPresent(cpu: 2)) { try m.offline(2) }
        #expect(throws: HotplugError.notOnline(cpu: 1)) { try m.run(on: 1) { 1 } }
        #expect(throws: HotplugError.notOnline(cpu: 2)) { try m.submit(on: 2) {} }
        #expect(m.online == [0] && m.present == [0, 1])
    }

    @Test func offliningAStoppedCPUIsRefused() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        #expect(try m.sigp(1, .stop) == SIGPResult(conditionCode: .accepted))
        #expect(eventually { (try? m.runState(of: 1)) == .stopped })
        #expect(throws: HotplugError.stoppedByOrder(cpu: 1)) { try m.offline(1) }
        #expect(m.online == [0, 1])
        #expect(try m.sigp(1, .start) == SIGPResult(conditionCode: .accepted))
        try m.offline(1)
    }

    @Test func aSignalTheApplicationAlreadyHandles() throws {
        let signo = Shim.realtimeSignalRange.lowerBound + 9
        signal(signo) { _ in }
        defer { signal(signo, SIG_DFL) }
        #expect(throws: HotplugError.signalInUse(signo)) {
            try Machine(cpus: 1, configuration: .init(signal: signo))
        }
    }

    @Test(arguments: [SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, 0, -3, 4_096])
    func signalsThatCannotCarrySIGP(signo: Int32) {
        #expect(throws: HotplugError.invalidSignal(signo)) {
            try Machine(cpus: 1, configuration: .init(signal: signo))
        }
    }

    @Test func aSecondSignalForSIGPInTheSameProcess() throws {
        let m = try Machine(cpus: 1)
        defer { m.shutdown() }
        #expect(throws: HotplugError.self) {
            try Machine(cpus: 1, configuration: .init(signal: m.signal + 1))
        }
    }

    @Test func impossibleMachines() {
        #expect(throws: HotplugError.invalidConfiguration("a machine needs at least one possible CPU")) {
            try Machine(cpus: 0)
        }
        #expect(throws: HotplugError.invalidConfiguration("initiallyOnline must be in 1...2, got 3")) {
            try Machine(cpus: 2, configuration: .init(initiallyOnline: 3))
        }
        #expect(throws: HotplugError.invalidConfiguration("initiallyOnline must be in 1...2, got 0")) {
            try Machine(cpus: 2, configuration: .init(initiallyOnline: 0))
        }
    }
}
