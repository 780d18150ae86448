import Foundation
import Synchronization
import Testing
@testable import Hotplug

@Suite struct BulkHotplugTests {
    @Test func attachAndDetachASetInOneCall() throws {
        let m = try Machine(cpus: 6, configuration: .init(initiallyOnline: 1))
        defer { m.shutdown() }
        for cpu in 1..<6 { try m.configure(cpu) }
        let up = try m.online([1, 2, 3, 4, 5])
        #expect(up.changed == [1, 2, 3, 4, 5] && up.isComplete)
        #expect(m.online == CPUSet(0..<6) && m.active == CPUSet(0..<6))
        for cpu in 0..<6 { #expect(try m.hotplug.currentState(of: cpu) == .online) }
        // Each CPU runs its own work afterwards.
        for cpu in 0..<6 { #expect(try m.run(on: cpu) { m.currentCPU } == cpu) }
        let down = try m.offline([2, 3, 4, 5])
        #expect(down.changed == [2, 3, 4, 5] && down.isComplete)
        #expect(m.online == [0, 1])
        for cpu in 2..<6 { #expect(try m.hotplug.currentState(of: cpu) == .offline) }
        // Already there: neither changed nor failed.
        let again = try m.offline([2, 3])
        #expect(again.changed.isEmpty && again.isComplete)
    }

    @Test func aFailingCPURollsBackAloneAndTheOthersComplete() throws {
        let m = try Machine(cpus: 5, configuration: .init(initiallyOnline: 1))
        defer { m.shutdown() }
        for cpu in 1..<5 { try m.configure(cpu) }
        let prepare = try m.hotplug.register("test:prepare", section: .prepare, startup: { _ in }, teardown: nil)
        try m.hotplug.injectFailure(cpu: 2, at: .bringup, direction: .startup)
        try m.hotplug.injectFailure(cpu: 3, at: prepare, direction: .startup)
        let up = try m.online([1, 2, 3, 4])
        #expect(up.changed == [1, 4])
        #expect(Set(up.failures.keys) == [2, 3])
        for cpu in [2, 3] {
            guard case .callbackFailed(let failure) = up.failures[cpu] else {
                Issue.record("CPU \(cpu): \(String(describing: up.failures[cpu]))")
                continue
            }
            #expect(failure.rolledBack && failure.cpu == cpu)
            #expect(try m.hotplug.currentState(of: cpu) == .offline)
        }
        #expect(m.online == [0, 1, 4])
        // Detach: a CPU that refuses to die stays online, alone.
        try m.hotplug.injectFailure(cpu: 4, at: .teardownCPU, direction: .teardown)
        let down = try m.offline([1, 4])
        #expect(down.changed == [1])
        #expect(Set(down.failures.keys) == [4])
        #expect(m.online == [0, 4] && m.active == [0, 4])
        #expect(try m.hotplug.currentState(of: 4) == .online)
    }

    @Test func aDetachThatWouldLeaveNoCPUOnlineIsRefusedWhole() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        #expect(throws: HotplugError.busy(cpu: 0, reason: .lastOnlineCPU)) { try m.offline([0, 1, 2]) }
        #expect(m.online == [0, 1, 2])
        for cpu in 0..<3 { #expect(try m.hotplug.currentState(of: cpu) == .online) }
        #expect(throws: HotplugError.invalidCPU(7)) { try m.offline([1, 7]) }
        #expect(m.online == [0, 1, 2])
    }

    @Test func startingCallbacksOfABatchRunWithEveryOtherCPUHeld() throws {
        let m = try Machine(cpus: 5, configuration: .init(initiallyOnline: 1))
        defer { m.shutdown() }
        for cpu in 1..<5 { try m.configure(cpu) }
        // While CPU n walks its STARTING startups, no other CPU of the machine may run anything: not even a CPU
        // this very batch started just before (it holds until the whole batch is up).
        let running = Atomic<Int>(0)
        let overlaps = Counter()
        let tasklets = (0..<5).map { _ in
            Tasklet(m) {
                running.add(1, ordering: .relaxed)
                let until = ContinuousClock.now + .microseconds(300)
                while ContinuousClock.now < until {}
                running.subtract(1, ordering: .relaxed)
            }
        }
        _ = try m.hotplug.register("test:starting", section: .starting, startup: { cpu in
            if running.load(ordering: .relaxed) != 0 { overlaps.value.add(1, ordering: .relaxed) }
            _ = try? tasklets[cpu].schedule(on: cpu)   // runs once this CPU may run again
        }, teardown: nil)
        for _ in 0..<20 {
            let up = try m.online([1, 2, 3, 4])
            #expect(up.isComplete)
            let down = try m.offline([1, 2, 3, 4])
            #expect(down.isComplete)
        }
        #expect(overlaps.value.load(ordering: .relaxed) == 0)
    }
}
