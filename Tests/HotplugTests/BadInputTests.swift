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

/// Exits 0 when `body` throws `expected`, 1 otherwise (for an exit test whose body crashed before the check
/// existed: a crash, a wrong error and no error all fail it). The child's address space is capped at 4 GiB first,
/// so that a huge allocation fails at once instead of filling the machine's memory; not under ThreadSanitizer,
/// whose shadow memory alone is far larger than that (the child would die of the cap, exit code 66).
func exitZero(ifItThrows expected: HotplugError, _ body: () throws -> Void) -> Never {
    if !runningUnderThreadSanitizer {
        var limit = rlimit(rlim_cur: 4 << 30, rlim_max: 4 << 30)
        guard setrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &limit) == 0 else { exit(2) }
    }
    do {
        try body()
    } catch let error as HotplugError where error == expected {
        exit(0)
    } catch {
        FileHandle.standardError.write(Data("unexpected error: \(error)\n".utf8))
    }
    exit(1)
}

/// Numbers out of range, calls after shutdown, duplicate names and timeouts at their edges.
@Suite struct BadNumbersTests {
    struct Custom: Error {}

    @Test func everyCallAfterShutdownThrowsShutDown() throws {
        let m = try Machine(cpus: 2)
        let counters = PerCPU(m) { _ in 0 }
        let tasklet = Tasklet(m) {}
        m.shutdown()
        #expect(throws: HotplugError.shutDown) { try m.stopMachine { _ in } }
        #expect(throws: HotplugError.shutDown) { try m.stopMachine { (_: Int) throws in throw Custom() } }
        #expect(throws: HotplugError.shutDown) {
            try m.hotplug.injectFailure(cpu: 0, at: .bringup, direction: .startup)
        }
        #expect(throws: HotplugError.shutDown) { let follower = try m.follow(); follower.stop() }
        #expect(throws: HotplugError.shutDown) { try m.run(on: 0) { 1 } }
        #expect(throws: HotplugError.shutDown) { try m.submit(on: 1) {} }
        #expect(throws: HotplugError.shutDown) { try m.runOnEach { $0 } }
        #expect(throws: HotplugError.shutDown) { try m.stopOne(0) { 1 } }
        #expect(throws: HotplugError.shutDown) { try counters.forEachOnline { cpu, _ in cpu } }
        #expect(throws: HotplugError.shutDown) { try tasklet.schedule() }
        #expect(throws: HotplugError.shutDown) {
            try m.hotplug.register("test:late", section: .online, startup: nil, teardown: nil)
        }
        #expect(throws: HotplugError.shutDown) { try m.online(1) }
        // Introspection and a dead CPU's slot stay readable; SIGP answers "not operational", as for standby.
        #expect(try m.sigp(1, .sense) == SIGPResult(conditionCode: .notOperational))
        #expect(try m.state(of: 1) == .standby)
        #expect(try counters.withSlot(of: 1) { $0 } == 0)
    }

    @Test func aStateNameIsRegisteredOnce() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let state = try m.hotplug.register("test:once", section: .online, startup: nil, teardown: nil)
        #expect(throws: HotplugError.duplicateStateName("test:once", existing: state)) {
            try m.hotplug.register("test:once", section: .prepare, startup: nil, teardown: nil)
        }
        #expect(throws: HotplugError.duplicateStateName("test:once", existing: state)) {
            try m.hotplug.registerMultiInstance("test:once", section: .online, startup: nil, teardown: nil)
        }
        #expect(throws: HotplugError.duplicateStateName("online", existing: .online)) {
            try m.hotplug.register("online", section: .online, startup: nil, teardown: nil)
        }
        #expect(m.hotplug.states.filter { $0.name == "test:once" }.count == 1)
        try m.hotplug.unregister(state)
        try m.hotplug.unregister(try m.hotplug.register("test:once", section: .online, startup: nil, teardown: nil))
    }

    @Test func aCallbackMayThrowAnyError() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        #expect {
            try m.hotplug.register("test:custom", section: .online, startup: { _ in throw Custom() }, teardown: nil)
        } throws: { error in
            guard case .callbackFailed(let failure) = error as? HotplugError else { return false }
            return failure.underlying is Custom && failure.rolledBack
        }
        #expect(!m.hotplug.states.contains { $0.name == "test:custom" })
    }

    @Test func perCPUAddressesAreBoundsChecked() async throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let counters = PerCPU(m) { _ in 0 }
        for cpu in [-1, 2, 1_000] {
            #expect(throws: HotplugError.invalidCPU(cpu)) { _ = try counters.address(of: cpu) }
        }
        await #expect(processExitsWith: .success) {
            let m = try Machine(cpus: 2)
            let counters = PerCPU(m) { _ in 0 }
            exitZero(ifItThrows: .invalidCPU(Int.max)) { _ = try counters.address(of: Int.max) }
        }
    }

    @Test func cpuSetIdsAreBounded() async throws {
        #expect(throws: HotplugError.invalidArgument(name: "CPU id", value: "-1", valid: "0...65535")) {
            try CPUSet(validating: [3, -1])
        }
        #expect(throws: HotplugError.invalidArgument(name: "CPU id", value: "\(Int.max)", valid: "0...65535")) {
            try CPUSet(validating: [Int.max])
        }
        #expect(try CPUSet(validating: [0, CPUSet.largestID]).count == 2)
        #expect(!CPUSet([1]).contains(-1) && !CPUSet([1]).contains(Int.max))
        // A trap names the id and the range.
        func expectTrap(_ text: String?, naming bad: Int) {
            #expect(text?.contains("CPU id \(bad) is outside 0...65535") == true, "\(text ?? "no result")")
        }
        expectTrap(await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = CPUSet([-1])
        }.map { String(decoding: $0.standardErrorContent, as: UTF8.self) }, naming: -1)
        expectTrap(await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = CPUSet([Int.max])
        }.map { String(decoding: $0.standardErrorContent, as: UTF8.self) }, naming: Int.max)
        expectTrap(await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            var set: CPUSet = [0]
            set.insert(65_536)
        }.map { String(decoding: $0.standardErrorContent, as: UTF8.self) }, naming: 65_536)
    }

    @Test func hugeCountsAndSizesAreRefused() async throws {
        await #expect(processExitsWith: .success) {
            exitZero(ifItThrows: .invalidArgument(name: "cpus", value: "\(Int.max)", valid: "1...4096")) {
                _ = try Machine(cpus: Int.max)
            }
        }
        await #expect(processExitsWith: .success) {
            exitZero(ifItThrows: .invalidArgument(name: "nodes x cpusPerNode", value: "\(Int.max) x 2",
                                                  valid: "at most 4096 slots")) {
                _ = try Topology.synthetic(nodes: Int.max, cpusPerNode: 2)
            }
        }
        await #expect(processExitsWith: .success) {
            let m = try Machine(cpus: 1)
            exitZero(ifItThrows: .invalidConfiguration("slab cache 'huge': slabBytes must be a power of two in 4096...1073741824 (a page to 1 GiB) holding at least one object, got \(1 << 62)")) {
                _ = try SlabCache(name: "huge", objectSize: 64, machine: m, options: .init(slabBytes: 1 << 62))
            }
        }
        #expect(throws: HotplugError.invalidArgument(name: "cpus", value: "4097", valid: "1...4096")) {
            try Machine(cpus: 4_097, configuration: .init(initiallyOnline: 1))
        }
        #expect(throws: HotplugError.invalidArgument(name: "processors", value: "\(Int.max)", valid: "1...4096")) {
            try CPUPool(processors: Int.max)
        }
        #expect(throws: HotplugError.invalidArgument(name: "resendInterval", value: "0.0 seconds",
                                                     valid: "a positive duration")) {
            try Machine(cpus: 1, configuration: .init(resendInterval: .zero))
        }
    }

    @Test func followIntervalsAndPrioritiesAreChecked() throws {
        let m = try Machine(cpus: 1)
        defer { m.shutdown() }
        for interval in [Duration.zero, .seconds(-1), .seconds(Int64.max)] {
            #expect(throws: HotplugError.self) {
                let follower = try m.follow(.init(interval: interval))
                follower.stop()
            }
        }
        #expect(throws: HotplugError.invalidArgument(name: "realtimePriority", value: "0", valid: "1...99")) {
            let follower = try m.follow(.init(realtimePriority: 0))
            follower.stop()
        }
    }

    @Test func aTimeoutBeyondInt64NanosecondsIsNoLimit() async throws {
        await #expect(processExitsWith: .success) {
            let m = try Machine(cpus: 2)
            let huge = Duration.seconds(Int64.max / 1_000_000_000 + 1)
            guard try m.run(on: 1, timeout: huge, { 7 }) == 7 else { exit(1) }
            try m.stopMachine(timeout: .seconds(Int64.max)) { _ in }
            guard try m.submit(on: 1, {}).wait(timeout: huge) else { exit(1) }
            exit(0)
        }
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        #expect(try m.run(on: 1, timeout: .noTimeout) { 7 } == 7)
        #expect(try m.runOnEach(timeout: .noTimeout) { $0 } == [0: 0, 1: 1])
    }

    @Test func zeroAndNegativeTimeoutsTryOnce() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let gate = DispatchSemaphore(value: 0)
        defer { gate.signal() }
        // CPU 1 is busy (bounded: it gives up after 10 s), so a call to it cannot start now.
        try m.submit(on: 1) { _ = gate.wait(timeout: .now() + 10) }
        let clock = ContinuousClock()
        let started = clock.now
        #expect(try m.submit(on: 1) {}.wait(timeout: .seconds(-1)) == false)
        #expect(try m.submit(on: 1) {}.wait(timeout: .zero) == false)
        for timeout in [Duration.zero, .seconds(-5), .nanoseconds(Int64.min)] {
            #expect {
                try m.run(on: 1, timeout: timeout) { 1 }
            } throws: { error in
                if case .timeout(1, .crossCall, _) = error as? HotplugError { true } else { false }
            }
        }
        #expect(clock.now - started < .seconds(5), "a zero or negative timeout waited")
    }
}
