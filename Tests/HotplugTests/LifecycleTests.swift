import Foundation
import Synchronization
import Testing
@testable import Hotplug

@Suite struct LifecycleTests {
    @Test func onlineThreadsArePinnedToExactlyOneCPU() throws {
        let machine = try Machine()
        defer { machine.shutdown() }
        #expect(machine.online == machine.possible)
        #expect(machine.active == machine.online)
        for cpu in machine.online {
            let tid = try #require(try machine.threadID(of: cpu))
            #expect(try allowedCPUs(ofThread: tid) == "\(try machine.physicalCPU(of: cpu))")
            // And it really runs there.
            let physical = try machine.run(on: cpu) { Shim.currentPhysicalCPU() }
            #expect(physical == (try machine.physicalCPU(of: cpu)))
            // Named for profiles and `top -H`, whatever thread made the machine.
            let name = KernelFile.read("/proc/self/task/\(tid)/comm")?.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(name == "hotplug/\(cpu)")
        }
    }

    @Test func lifecycleAndMasks() throws {
        let machine = try Machine(cpus: 3, configuration: .init(initiallyOnline: 1))
        defer { machine.shutdown() }
        #expect(machine.possible == [0, 1, 2])
        #expect(machine.present == [0] && machine.online == [0] && machine.active == [0])
        #expect(try machine.state(of: 2) == .standby)
        #expect(try machine.runState(of: 2) == RunState.none)
        try machine.configure(2)
        #expect(try machine.state(of: 2) == .parked)
        #expect(try machine.runState(of: 2) == .offline)
        #expect(machine.present == [0, 2] && machine.online == [0])
        try machine.online(2)
        #expect(try machine.state(of: 2) == .online)
        #expect(machine.online == [0, 2] && machine.active == [0, 2])
        try machine.online(2)   // the current state: a no-op success
        try machine.offline(2)
        try machine.offline(2)  // likewise
        #expect(machine.online == [0] && machine.present == [0, 2])
        try machine.deconfigure(2)
        try machine.deconfigure(2)
        #expect(machine.present == [0])
    }

    @Test func parkedThreadBurnsNoCPU() throws {
        let machine = try Machine(cpus: 2)
        defer { machine.shutdown() }
        try machine.offline(1)
        let tid = try #require(try machine.threadID(of: 1))
        #expect(try machine.runState(of: 1) == .offline)
        let before = try cpuTime(tid)
        usleep(200_000)
        let growth = try cpuTime(tid) - before
        // Parked in the kernel: < 0.1% of a core over 200 ms.
        #expect(growth < 200_000, "parked thread used \(growth) ns of CPU in 200 ms")
    }

    @Test func idleOnlineCPUParksInTheKernel() throws {
        let machine = try Machine(cpus: 2, configuration: .init(pollTime: .microseconds(20)))
        defer { machine.shutdown() }
        #expect(eventually { (try? machine.runState(of: 1)) == .idle })
        let tid = try #require(try machine.threadID(of: 1))
        let before = try cpuTime(tid)
        usleep(200_000)
        #expect(try cpuTime(tid) - before < 200_000)
    }

    @Test func deconfigureMakesTheThreadExit() throws {
        let machine = try Machine(cpus: 2)
        defer { machine.shutdown() }
        let tid = try #require(try machine.threadID(of: 1))
        #expect(threadExists(tid))
        try machine.offline(1)
        #expect(threadExists(tid))
        try machine.deconfigure(1)
        #expect(try machine.threadID(of: 1) == nil)
        #expect(eventually { !threadExists(tid) }, "thread \(tid) still in /proc/self/task")
        // And a new thread comes with configure.
        try machine.configure(1)
        try machine.online(1)
        let again = try #require(try machine.threadID(of: 1))
        #expect(again != tid)
        #expect(try machine.run(on: 1) { Shim.currentThreadID } == again)
    }

    @Test func shutdownJoinsEveryThread() throws {
        var tids: [Int32] = []
        do {
            let machine = try Machine(cpus: 3)
            tids = try (0..<3).map { try #require(try machine.threadID(of: $0)) }
            #expect(tids.allSatisfy(threadExists))
        }   // deinit shuts it down
        #expect(eventually { tids.allSatisfy { !threadExists($0) } })
    }

    @Test func shutdownReleasesStoppedCPUs() throws {
        let machine = try Machine(cpus: 2)
        let tid = try #require(try machine.threadID(of: 1))
        #expect(try machine.sigp(1, .stop).conditionCode == .accepted)
        #expect(eventually { (try? machine.runState(of: 1)) == .stopped })
        machine.shutdown()
        #expect(eventually { !threadExists(tid) })
        #expect(throws: HotplugError.shutDown) { try machine.online(1) }
    }

    @Test func oversubscribedMachineDoesNotLivelock() throws {
        let machine = try Machine(cpus: 8, configuration: .init(pollTime: .microseconds(50)))
        defer { machine.shutdown() }
        #expect(machine.online.count == 8)
        for round in 0..<stressIterations(10, long: 500) {
            let results = try machine.runOnEach(timeout: .seconds(30)) { cpu in cpu * 2 + round }
            #expect(results.count == machine.online.count)
            #expect(results.allSatisfy { $0.value == $0.key * 2 + round })
            let victim = 1 + round % 7
            try machine.offline(victim)
            #expect(!machine.online.contains(victim))
            try machine.online(victim)
        }
    }

    @Test func randomLifecycleCyclesLoseNoCrossCall() throws {
        let machine = try Machine(cpus: 4, configuration: .init(initiallyOnline: 4))
        defer { machine.shutdown() }
        var rng = SystemRandomNumberGenerator()
        let ran = Locked([Int: Int]())   // call id -> times run
        var accepted: [Int] = []
        let iterations = stressIterations(300, long: 20_000)
        for i in 0..<iterations {
            let cpu = Int.random(in: 0..<4, using: &rng)
            switch Int.random(in: 0..<5, using: &rng) {
            case 0: try? machine.offline(cpu)
            case 1: try? machine.online(cpu)
            case 2: if (try machine.state(of: cpu)) == .parked { try machine.deconfigure(cpu) }
            case 3: if (try machine.state(of: cpu)) == .standby { try machine.configure(cpu) }
            default:
                do {
                    try machine.submit(on: cpu) { ran.withLock { $0[i, default: 0] += 1 } }
                    accepted.append(i)
                } catch {
                    // Refused, so it must never run. (A `catch HotplugError.notOnline` pattern on a typed-throws
                    // call crashes the 6.3.1 compiler; match inside the block instead.)
                    guard case .notOnline = error else { throw error }
                }
            }
            #expect(!machine.online.isEmpty)
        }
        // Offlining flushes accepted calls; what is still online runs them at its next safe point.
        let expected = Set(accepted)
        #expect(eventually(timeout: .seconds(20)) { ran.withLock { Set($0.keys) } == expected })
        #expect(ran.withLock { $0.values.allSatisfy { $0 == 1 } })
    }
}

@Suite struct LastReferenceTests {
    /// The last reference to a machine may be dropped on one of its own CPUs (a cross-call that captured it):
    /// the shutdown then runs there, takes every other CPU down and retires that one without a hang.
    @Test func aMachineReleasedOnItsOwnCPUShutsDownWithoutHanging() throws {
        var tids: [Int32] = []
        let scopeEnded = Completion()
        let ranOn = Locked<Int?>(nil)
        do {
            let machine = try Machine(cpus: 3)
            tids = try (0..<3).map { try #require(try machine.threadID(of: $0)) }
            // The closure holds the only other reference; it outlives the test's by waiting for the scope to end.
            try machine.submit(on: 1) { [machine] in
                _ = scopeEnded.wait(timeoutNanoseconds: 10_000_000_000)
                ranOn.withLock { $0 = machine.currentCPU }
            }
        }
        scopeEnded.signal()
        #expect(eventually(timeout: .seconds(20)) { tids.allSatisfy { !threadExists($0) } },
                "threads left: \(tids.filter(threadExists))")
        #expect(ranOn.withLock { $0 } == 1)
    }
}
