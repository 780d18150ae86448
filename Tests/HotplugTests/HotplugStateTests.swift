import Foundation
import Testing
@testable import Hotplug

/// A subsystem that records every callback: which state, which direction, on which thread, with the SIGP signal
/// blocked or not; and which states are "live" (started up, not torn down) on each CPU.
final class Recorder: Sendable {
    struct Call: Equatable {
        let name: String
        let direction: HotplugDirection
        let cpu: Int
        let thread: Int32
        let onCPU: Int?
        let sigpBlocked: Bool
    }

    private let calls = Locked<[Call]>([])
    private let live = Locked<[Int: Set<String>]>([:])
    /// Startups of these (name, cpu) fail.
    let failStartup = Locked<Set<String>>([])
    /// Teardowns of these (name, cpu) fail.
    let failTeardown = Locked<Set<String>>([])
    let machine: Locked<Machine?> = Locked(nil)

    struct Refused: Error, CustomStringConvertible {
        let what: String
        var description: String { "refused: \(what)" }
    }

    func callbacks(_ name: String) -> (startup: HotplugCallback, teardown: HotplugCallback) {
        ({ cpu in try self.record(name, .startup, cpu) }, { cpu in try self.record(name, .teardown, cpu) })
    }

    private func record(_ name: String, _ direction: HotplugDirection, _ cpu: Int) throws {
        let key = "\(name)@\(cpu)"
        if direction == .startup, failStartup.withLock({ $0.contains(key) }) { throw Refused(what: "startup \(key)") }
        if direction == .teardown, failTeardown.withLock({ $0.contains(key) }) { throw Refused(what: "teardown \(key)") }
        let onCPU = machine.withLock { $0 }?.currentCPU
        calls.withLock { $0.append(Call(name: name, direction: direction, cpu: cpu, thread: Shim.currentThreadID,
                                        onCPU: onCPU, sigpBlocked: Shim.isSIGPBlocked)) }
        live.withLock { live in
            if direction == .startup { live[cpu, default: []].insert(name) } else { live[cpu, default: []].remove(name) }
        }
    }

    func take() -> [Call] { calls.withLock { all in defer { all.removeAll() }; return all } }
    func live(_ cpu: Int) -> Set<String> { live.withLock { $0[cpu] ?? [] } }
    func order(_ calls: [Call]) -> [String] { calls.map { "\($0.direction == .startup ? "+" : "-")\($0.name)" } }
}

@Suite struct HotplugStateTests {
    /// P1, P2 (PREPARE), S1, S2 (STARTING), O1, O2 (ONLINE), registered in that order.
    private func setUp(cpus: Int = 2) throws -> (Machine, Recorder, [String: HotplugState]) {
        let machine = try Machine(cpus: cpus)
        let recorder = Recorder()
        recorder.machine.withLock { $0 = machine }
        var states: [String: HotplugState] = [:]
        for (name, section) in [("test:p1", HotplugSection.prepare), ("test:p2", .prepare), ("test:s1", .starting),
                                ("test:s2", .starting), ("test:o1", .online), ("test:o2", .online)] {
            let (up, down) = recorder.callbacks(name)
            states[name] = try machine.hotplug.register(name, section: section, startup: up, teardown: down)
        }
        return (machine, recorder, states)
    }

    @Test func callbacksRunInOrderOnTheThreadTheirSectionNames() throws {
        let (m, r, states) = try setUp()
        defer { m.shutdown() }
        // Registration invoked every startup on the CPUs already online.
        #expect(r.live(0) == ["test:p1", "test:p2", "test:s1", "test:s2", "test:o1", "test:o2"])
        #expect(r.live(1) == r.live(0))
        #expect(m.hotplug.states.filter { !$0.isBuiltin }.map(\.name) == ["test:p1", "test:p2", "test:s1", "test:s2", "test:o1", "test:o2"])
        #expect(states["test:p1"]! < states["test:p2"]! && states["test:p2"]! < .bringup)
        #expect(.bringup < states["test:s1"]! && states["test:s2"]! < .teardownCPU && .teardownCPU < states["test:o1"]!)
        _ = r.take()

        let control = Shim.currentThreadID
        let cpuThread = try #require(try m.threadID(of: 1))
        try m.offline(1)
        let down = r.take()
        #expect(r.order(down) == ["-test:o2", "-test:o1", "-test:s2", "-test:s1", "-test:p2", "-test:p1"])
        try m.online(1)
        let up = r.take()
        #expect(r.order(up) == ["+test:p1", "+test:p2", "+test:s1", "+test:s2", "+test:o1", "+test:o2"])
        for call in down + up {
            switch call.name {
            case "test:p1", "test:p2":   // PREPARE: the control thread
                #expect(call.thread == control && call.onCPU == nil, "\(call)")
            case "test:s1", "test:s2":   // STARTING: the target CPU, signal blocked
                #expect(call.thread == cpuThread && call.onCPU == 1 && call.sigpBlocked, "\(call)")
            default:                     // ONLINE: the target CPU at a safe point, signal not blocked
                #expect(call.thread == cpuThread && call.onCPU == 1 && !call.sigpBlocked, "\(call)")
            }
            #expect(call.cpu == 1)
        }
        #expect(try m.hotplug.currentState(of: 1) == .online)
        #expect(try m.hotplug.targetState(of: 1) == .online)
        try m.offline(1)
        #expect(try m.hotplug.currentState(of: 1) == .offline)
        #expect(r.live(1).isEmpty)
    }

    @Test func registrationRollsBackWhenCPUNFails() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let r = Recorder()
        r.failStartup.withLock { _ = $0.insert("test:x@2") }
        let (up, down) = r.callbacks("test:x")
        #expect {
            try m.hotplug.register("test:x", section: .online, startup: up, teardown: down)
        } throws: { error in
            guard case HotplugError.callbackFailed(let failure) = error else { return false }
            return failure.cpu == 2 && failure.direction == .startup && failure.rolledBack
        }
        #expect(r.order(r.take()) == ["+test:x", "+test:x", "-test:x", "-test:x"])
        #expect((0..<3).allSatisfy { r.live($0).isEmpty })
        #expect(m.hotplug.states.allSatisfy { $0.isBuiltin }, "the failed state was not removed")
        // Without invoking: nothing runs now, and the next attach runs it.
        try m.offline(2)
        r.failStartup.withLock { $0.removeAll() }
        let state = try m.hotplug.register("test:x", section: .prepare, invokeOnExisting: false, startup: up, teardown: down)
        #expect(r.take().isEmpty)
        try m.online(2)
        #expect(r.live(2) == ["test:x"] && r.live(0).isEmpty)
        try m.hotplug.unregister(state)
        #expect(r.live(2).isEmpty)
    }

    /// Injecting a failure at every state that may fail, in both directions, returns the CPU to where it started
    /// with every completed step undone; everywhere else injection is refused.
    @Test func faultInjectionAtEveryStateRollsBack() throws {
        let (m, r, states) = try setUp(cpus: 3)
        defer { m.shutdown() }
        let attachPoints: [HotplugState] = [states["test:p1"]!, states["test:p2"]!, .bringup, states["test:o1"]!, states["test:o2"]!]
        let detachPoints: [HotplugState] = [states["test:o2"]!, states["test:o1"]!, .teardownCPU]
        for point in attachPoints {
            try m.offline(2)
            let before = (m.online, m.active, r.live(2), try m.state(of: 2))
            try m.hotplug.injectFailure(cpu: 2, at: point, direction: .startup)
            #expect {
                try m.online(2)
            } throws: { error in
                guard case HotplugError.callbackFailed(let failure) = error else { return false }
                return failure.state == point && failure.rolledBack && failure.underlying is InjectedFailure
            }
            #expect((m.online, m.active, r.live(2), try m.state(of: 2)) == before, "attach failing at \(m.hotplug.name(of: point))")
            #expect(try m.hotplug.currentState(of: 2) == .offline)
            try m.online(2)   // the injection fired once
            #expect(r.live(2) == r.live(0))
        }
        for point in detachPoints {
            let before = (m.online, m.active, r.live(2), try m.state(of: 2))
            try m.hotplug.injectFailure(cpu: 2, at: point, direction: .teardown)
            #expect {
                try m.offline(2)
            } throws: { error in
                guard case HotplugError.callbackFailed(let failure) = error else { return false }
                return failure.state == point && failure.rolledBack && failure.underlying is InjectedFailure
            }
            #expect((m.online, m.active, r.live(2), try m.state(of: 2)) == before, "detach failing at \(m.hotplug.name(of: point))")
            #expect(try m.hotplug.currentState(of: 2) == .online)
            #expect(try m.run(on: 2) { m.currentCPU } == 2)
        }
        let refused: [(HotplugState, HotplugDirection)] = [
            (states["test:p1"]!, .teardown), (states["test:s1"]!, .startup), (states["test:s2"]!, .teardown),
            (.bringup, .teardown), (.teardownCPU, .startup), (HotplugState(rawValue: 77), .startup),
        ]
        for (state, direction) in refused {
            #expect(throws: HotplugError.self) { try m.hotplug.injectFailure(cpu: 2, at: state, direction: direction) }
        }
    }

    /// Every state the table says may fail, in each direction it may fail, the built-in ones included: an injected
    /// failure there returns the CPU to its start state by the same walk run backwards, so the callbacks that ran
    /// are exactly the completed steps, then their mirror image.
    @Test func anInjectedFailureAtEveryFailableStateOfTheTableRollsBackByTheSameWalk() throws {
        let (m, r, states) = try setUp(cpus: 3)
        defer { m.shutdown() }
        let table = m.hotplug.states.map(\.state)
        let mine = states.sorted { $0.value < $1.value }   // the recorder's states, ascending
        var exercised: Set<String> = []
        for direction in [HotplugDirection.startup, .teardown] {
            for point in table where HotplugTable.mayFail(point, direction) {
                let attach = direction == .startup
                if attach { try m.offline(2) }
                let start = try m.hotplug.currentState(of: 2)
                let before = (m.online, m.active, r.live(2), try m.state(of: 2))
                _ = r.take()
                try m.hotplug.injectFailure(cpu: 2, at: point, direction: direction)
                #expect {
                    if attach { try m.online(2) } else { try m.offline(2) }
                } throws: { error in
                    guard case HotplugError.callbackFailed(let failure) = error else { return false }
                    return failure.state == point && failure.direction == direction && failure.rolledBack
                        && failure.underlying is InjectedFailure
                }
                let name = m.hotplug.name(of: point)
                // The steps completed before the failing one, in walk order, then the same steps undone in reverse.
                let completed = attach ? mine.filter { $0.value < point }.map { "+\($0.key)" }
                                       : mine.reversed().filter { $0.value > point }.map { "-\($0.key)" }
                let undone = completed.reversed().map { ($0.hasPrefix("+") ? "-" : "+") + $0.dropFirst() }
                #expect(r.order(r.take()) == completed + undone, "\(direction) failing at \(name)")
                #expect(try m.hotplug.currentState(of: 2) == start, "\(direction) failing at \(name)")
                #expect((m.online, m.active, r.live(2), try m.state(of: 2)) == before, "\(direction) failing at \(name)")
                if attach { try m.online(2) }   // the injection fired once
                exercised.insert("\(name) \(direction)")
            }
        }
        #expect(exercised == ["slab:prepare startup", "executors:dead startup", "tasklets:dead startup", "slab:dead startup", "cpu:bringup startup",
                              "test:p1 startup", "test:p2 startup", "test:o1 startup", "test:o2 startup",
                              "cpu:teardown teardown", "test:o1 teardown", "test:o2 teardown"])
    }

    /// Rollback goes back to where the operation started, not to a fixed end: a CPU left part-way (ONLINE state
    /// o1, online but not active) whose detach fails at cpu:teardown is walked forward to o1 again, and stays
    /// inactive.
    @Test func rollbackReturnsToTheStartStateEvenPartWay() throws {
        let (m, r, states) = try setUp()
        defer { m.shutdown() }
        try m.offline(1)
        try m.hotplug.injectFailure(cpu: 1, at: states["test:o2"]!, direction: .startup)
        r.failTeardown.withLock { _ = $0.insert("test:o1@1") }
        #expect(throws: HotplugError.self) { try m.online(1) }
        r.failTeardown.withLock { $0.removeAll() }
        #expect(try m.hotplug.currentState(of: 1) == states["test:o1"]!)
        _ = r.take()
        try m.hotplug.injectFailure(cpu: 1, at: .teardownCPU, direction: .teardown)
        #expect {
            try m.offline(1)
        } throws: { error in
            guard case HotplugError.callbackFailed(let failure) = error else { return false }
            return failure.state == .teardownCPU && failure.rolledBack
        }
        #expect(r.order(r.take()) == ["-test:o1", "+test:o1"])
        #expect(try m.hotplug.currentState(of: 1) == states["test:o1"]!)
        #expect(m.online.contains(1) && !m.active.contains(1))
        try m.offline(1)
        #expect(try m.hotplug.currentState(of: 1) == .offline && r.live(1).isEmpty)
    }

    /// The shutdown path that retires the CPU it runs on walks the same table: every teardown of a detach, in the
    /// same order, STARTING ones with the signal blocked, all inline on that CPU's own thread.
    @Test func retiringTheCallingCPURunsEveryTeardownInDetachOrder() throws {
        let (m, r, _) = try setUp()
        defer { m.shutdown() }
        _ = r.take()   // the registrations' startups
        try m.offline(1)
        let detach = r.take().filter { $0.cpu == 1 }
        try m.online(1)
        _ = r.take()
        let cpuThread = try #require(try m.threadID(of: 1))
        let call = try m.submit(on: 1) { m.shutdown() }
        #expect(call.wait(timeout: .seconds(20)), "the shutdown did not finish on CPU 1")
        let retire = r.take().filter { $0.cpu == 1 }
        #expect(r.order(retire) == r.order(detach))
        #expect(r.order(retire) == ["-test:o2", "-test:o1", "-test:s2", "-test:s1", "-test:p2", "-test:p1"])
        for call in retire {
            #expect(call.thread == cpuThread && call.onCPU == 1, "\(call)")
            #expect(call.sigpBlocked == call.name.hasPrefix("test:s"), "\(call)")
        }
        #expect(r.live(1).isEmpty && r.live(0).isEmpty)
        #expect(try m.hotplug.currentState(of: 1) == .offline)
        #expect(m.online.isEmpty && m.active.isEmpty && m.present.isEmpty)
        #expect(eventually { !threadExists(cpuThread) }, "CPU 1's thread did not exit")
    }

    /// The table's queries: neighbours, runs of one placement, what may fail, and the states it lists.
    @Test func theStateTableKnowsTheLayout() throws {
        // Regions: ascending, contiguous, from offline to online.
        var next = HotplugState.offline.rawValue
        for region in HotplugTable.regions {
            #expect(region.slots.lowerBound == next, "a gap or overlap before \(region.slots)")
            next = region.slots.upperBound + 1
        }
        #expect(next == HotplugState.online.rawValue + 1)
        #expect(HotplugTable.state(before: .bringup) == HotplugState(rawValue: 39))
        #expect(HotplugTable.state(before: .taskletsStarting) == .bringup)
        #expect(HotplugTable.run(containing: .slabPrepare) == HotplugState(rawValue: 1)...HotplugState.bringup)
        #expect(HotplugTable.run(containing: HotplugState(rawValue: 1)) == HotplugState(rawValue: 1)...HotplugState.bringup)
        #expect(HotplugTable.run(containing: .taskletsStarting) == HotplugState.taskletsStarting...HotplugState(rawValue: 59))
        #expect(HotplugTable.run(containing: .teardownCPU) == HotplugState.teardownCPU...HotplugState.teardownCPU)
        #expect(HotplugTable.run(containing: HotplugState(rawValue: 77)) == HotplugState(rawValue: 61)...HotplugState(rawValue: 99))
        #expect(HotplugTable.run(containing: .online) == HotplugState.online...HotplugState.online)
        let online = HotplugTable.run(containing: HotplugState(rawValue: 61))
        #expect(HotplugTable.end(of: online, toward: .online, .startup) == HotplugState(rawValue: 99))
        #expect(HotplugTable.end(of: online, toward: .offline, .teardown) == .teardownCPU)
        #expect(HotplugTable.end(of: online, toward: HotplugState(rawValue: 70), .startup) == HotplugState(rawValue: 70))
        #expect(HotplugTable.startingEnd(.startup) == HotplugState(rawValue: 59))
        #expect(HotplugTable.startingEnd(.teardown) == .bringup)
        #expect([HotplugState.slabPrepare, .bringup, .teardownCPU, .online].allSatisfy { HotplugTable.placement(of: $0) == .control })
        #expect(HotplugTable.placement(of: .taskletsStarting) == .starting)
        #expect(HotplugTable.placement(of: HotplugState(rawValue: 61)) == .online)
        #expect(HotplugState.bringup.section == .prepare && HotplugState.teardownCPU.section == .online)
        let failable: [(HotplugState, HotplugDirection, Bool)] = [
            (.offline, .startup, false), (.offline, .teardown, false),
            (.slabPrepare, .startup, true), (.slabPrepare, .teardown, false),
            (.bringup, .startup, true), (.bringup, .teardown, false),
            (.taskletsStarting, .startup, false), (.taskletsStarting, .teardown, false),
            (HotplugState(rawValue: 50), .startup, false), (HotplugState(rawValue: 50), .teardown, false),
            (.teardownCPU, .startup, false), (.teardownCPU, .teardown, true),
            (HotplugState(rawValue: 80), .startup, true), (HotplugState(rawValue: 80), .teardown, true),
            (.online, .startup, false), (.online, .teardown, false),
            (HotplugState(rawValue: 101), .startup, false), (HotplugState(rawValue: -1), .teardown, false),
        ]
        for (state, direction, expected) in failable {
            #expect(HotplugTable.mayFail(state, direction) == expected, "\(state) \(direction)")
        }
        // A machine lists its own states and the subsystems' built-in ones, which declared their own slots.
        let m = try Machine(cpus: 1)
        defer { m.shutdown() }
        #expect(m.hotplug.states.map { "\($0.state.rawValue) \($0.name)" } == [
            "0 offline", "22 slab:prepare", "25 slab:dead", "29 executors:dead", "30 tasklets:dead", "40 cpu:bringup",
            "41 tasklets:starting", "42 executors:starting", "60 cpu:teardown", "100 online",
        ])
        #expect(m.hotplug.states.allSatisfy { $0.isBuiltin })
        #expect(m.hotplug.states.allSatisfy { HotplugTable.region(of: $0.state)?.kind != .dynamic })
        for state in m.hotplug.states.map(\.state) {
            #expect(throws: HotplugError.self) { try m.hotplug.unregister(state) }
        }
    }

    @Test func aBuiltinStateOutsideABuiltinSlotOrOnATakenOneTraps() async {
        await #expect(processExitsWith: .failure) {
            let m = try Machine(cpus: 1)
            m.registry.insertBuiltin(HotplugBuiltinState(state: .taskletsDead, name: "test:twin", startup: nil, teardown: nil))
        }
        await #expect(processExitsWith: .failure) {
            let m = try Machine(cpus: 1)
            m.registry.insertBuiltin(HotplugBuiltinState(state: HotplugState(rawValue: 5), name: "test:dynamic",
                                                         startup: nil, teardown: nil))
        }
    }

    @Test func aFailedRollbackIsReportedAndTheCPUStaysWhereItStopped() throws {
        let (m, r, states) = try setUp()
        defer { m.shutdown() }
        try m.offline(1)
        // Attach fails at O2; its rollback tears O1 down, which fails too.
        try m.hotplug.injectFailure(cpu: 1, at: states["test:o2"]!, direction: .startup)
        r.failTeardown.withLock { _ = $0.insert("test:o1@1") }
        #expect {
            try m.online(1)
        } throws: { error in
            guard case HotplugError.callbackFailed(let failure) = error else { return false }
            return failure.state == states["test:o2"]! && !failure.rolledBack
        }
        #expect(try m.hotplug.currentState(of: 1) == states["test:o1"]!, "not where it stopped")
        #expect(r.live(1).contains("test:o1") && !r.live(1).contains("test:o2"))
        #expect(m.online.contains(1) && !m.active.contains(1))
        // Once the subsystem recovers, the next attach continues from there.
        r.failTeardown.withLock { $0.removeAll() }
        try m.online(1)
        #expect(try m.hotplug.currentState(of: 1) == .online && m.active.contains(1))
        #expect(r.live(1) == r.live(0))
    }

    @Test func multiInstanceStatesAddAndRemovePerInstance() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let live = Locked<Set<String>>([])
        let state = try m.hotplug.registerMultiInstance("test:multi", section: .online,
            startup: { cpu, instance in live.withLock { _ = $0.insert("\(instance)@\(cpu)") } },
            teardown: { cpu, instance in live.withLock { _ = $0.remove("\(instance)@\(cpu)") } })
        try m.hotplug.addInstance("a", to: state)
        #expect(live.withLock { $0 } == ["a@0", "a@1", "a@2"])
        try m.hotplug.injectFailure(cpu: 2, at: state, direction: .startup)
        #expect(throws: HotplugError.self) { try m.hotplug.addInstance("b", to: state) }
        #expect(live.withLock { $0 } == ["a@0", "a@1", "a@2"], "instance b was not rolled back on CPUs 0 and 1")
        #expect(m.hotplug.states.first { !$0.isBuiltin }?.instances == ["a"])
        try m.hotplug.addInstance("b", to: state)
        try m.offline(1)
        #expect(live.withLock { $0 } == ["a@0", "a@2", "b@0", "b@2"])
        try m.online(1)
        #expect(live.withLock { $0 }.count == 6)
        try m.hotplug.removeInstance("a", from: state)
        #expect(live.withLock { $0 } == ["b@0", "b@1", "b@2"])
        #expect(m.hotplug.states.first { !$0.isBuiltin }?.instances == ["b"])
        #expect(throws: HotplugError.unknownState(state)) { try m.hotplug.removeInstance("a", from: state) }
    }

    @Test(arguments: [(HotplugSection.prepare, 19), (.starting, 17), (.online, 39)])
    func dynamicRangeExhaustion(section: HotplugSection, capacity: Int) throws {
        let m = try Machine(cpus: 1)
        defer { m.shutdown() }
        var states: [HotplugState] = []
        for i in 0..<capacity { states.append(try m.hotplug.register("test:\(i)", section: section, startup: nil, teardown: nil)) }
        #expect(throws: HotplugError.noFreeState(section: section)) {
            try m.hotplug.register("test:full", section: section, startup: nil, teardown: nil)
        }
        try m.hotplug.unregister(states[3])
        #expect(try m.hotplug.register("test:again", section: section, startup: nil, teardown: nil) == states[3])
        #expect(throws: HotplugError.invalidConfiguration("a hotplug state needs a name (\"subsys:mode\")")) {
            try m.hotplug.register("", section: section, startup: nil, teardown: nil)
        }
    }

    @Test func disabledHotplugIsBusyAndNests() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        m.hotplug.disable()
        m.hotplug.disable()
        #expect(throws: HotplugError.busy(cpu: 1, reason: .hotplugDisabled)) { try m.offline(1) }
        m.hotplug.enable()
        #expect(throws: HotplugError.busy(cpu: 1, reason: .hotplugDisabled)) { try m.offline(1) }
        m.hotplug.enable()
        try m.offline(1)
        m.hotplug.disable()
        #expect(throws: HotplugError.busy(cpu: 1, reason: .hotplugDisabled)) { try m.online(1) }
        m.hotplug.enable()
        try m.online(1)
    }

    @Test func unbalancedEnableTraps() async {
        await #expect(processExitsWith: .failure) {
            let m = try Machine(cpus: 1)
            m.hotplug.enable()
        }
    }

    @Test func theReadLockKeepsTheOnlineMaskStable() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let stop = Locked(false)
        let cycles = Locked(0)
        let cycler = try Shim.spawnThread {
            while !stop.withLock({ $0 }) {
                try? m.offline(1 + cycles.withLock { $0 } % 2)
                try? m.online(1 + cycles.withLock { $0 } % 2)
                cycles.withLock { $0 += 1 }
            }
        }
        for _ in 0..<stressIterations(200, long: 5_000) {
            try m.withCPUsReadLocked {
                let first = m.online
                usleep(200)
                #expect(m.online == first, "the online mask changed under the read lock")
                let ran = try m.runOnEach { cpu in cpu }.keys.sorted()
                #expect(ran == Array(first))
            }
        }
        stop.withLock { $0 = true }
        try Shim.join(cycler)
        #expect(cycles.withLock { $0 } > 0, "the cycler never ran")
    }

    @Test func aWaitingOperationDoesNotMoveTheTargetUnderTheReadLock() throws {
        // A detach that waits for the write lock must not show its target yet: a holder of the read lock sees
        // every CPU at rest (current == target), as Linux sets the target under cpus_write_lock.
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let done = Locked(false)
        var detacher: pthread_t?
        try m.withCPUsReadLocked {
            detacher = try Shim.spawnThread {
                try? m.offline(1)
                done.withLock { $0 = true }
            }
            usleep(50_000)   // the detach is waiting for the write lock by now
            #expect(!done.withLock { $0 })
            #expect(try m.hotplug.targetState(of: 1) == m.hotplug.currentState(of: 1))
        }
        try Shim.join(try #require(detacher))
        #expect(try m.hotplug.targetState(of: 1) == .offline && m.hotplug.currentState(of: 1) == .offline)
    }
}
