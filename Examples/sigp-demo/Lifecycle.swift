import ExampleSupport
import Hotplug

// Lifecycle steps (configure, online, offline, deconfigure), each followed by the checks of what it must leave
// behind, and the typed errors of the steps that must be refused.
extension Demo {
    func lifecycleStep() throws {
        let cpu = Int.random(in: 0..<count, using: &rng)
        switch try machine.state(of: cpu) {
        case .standby: try configure(cpu)
        case .parked: if Bool.random(using: &rng) { try online(cpu) } else { try deconfigure(cpu) }
        case .online:
            if machine.online.count > 1 { try offline(cpu) } else { try lastOnlineRefused(cpu) }
        }
    }

    func configure(_ cpu: Int) throws {
        try machine.configure(cpu)
        lifecycleOperations["configure", default: 0] += 1
        try check(try machine.state(of: cpu) == .parked, "configure leaves the CPU parked", "logical CPU \(cpu)")
        try check(machine.present.contains(cpu) && !machine.online.contains(cpu), "configure: present, not online",
                  "logical CPU \(cpu): present \(machine.present), online \(machine.online)")
        let problem = ThreadProbe.pinningProblem(machine, cpu: cpu)
        try check(problem == nil, "a configured CPU's thread is pinned", problem ?? "")
        try armParkedWatch(cpu)
        try order(cpu, .sense, expect: [Demo.cc1(.stopped)], "a freshly configured (parked)")
        try order(cpu, .start, expect: [Demo.cc1(.incorrectState)], "a parked (lifecycle not online)")
    }

    func online(_ cpu: Int) throws {
        try machine.online(cpu)
        lifecycleOperations["online", default: 0] += 1
        parkedWatch[cpu] = nil
        if wentDown.remove(cpu) != nil { cycles += 1 }
        try check(try machine.state(of: cpu) == .online && machine.online.contains(cpu) && machine.active.contains(cpu),
                  "online: state and masks", "logical CPU \(cpu): online \(machine.online), active \(machine.active)")
        // What was posted while it was parked is delivered now.
        expected[cpu].externalCalls += pending[cpu].externalCalls
        expected[cpu].emergencySignals += pending[cpu].emergencySignals
        pending[cpu] = Interrupts()
        try awaitInterrupts(cpu)
        try checkRunsOn(cpu)
        try order(cpu, .sense, expect: [Demo.cc0], "a just attached")
    }

    func offline(_ cpu: Int) throws {
        let before = stats(cpu)
        try machine.offline(cpu)
        classify(cpu, since: before)
        lifecycleOperations["offline", default: 0] += 1
        wentDown.insert(cpu)
        try check(try machine.state(of: cpu) == .parked && !machine.online.contains(cpu) && !machine.active.contains(cpu),
                  "offline: state and masks", "logical CPU \(cpu): online \(machine.online), active \(machine.active)")
        try check(machine.present.contains(cpu), "offline keeps the CPU present", "logical CPU \(cpu)")
        try check(try machine.runState(of: cpu) == .offline, "an offline CPU's run state is offline",
                  "logical CPU \(cpu): \(try machine.runState(of: cpu))")
        try expectError("submit to a parked CPU throws notOnline", { if case .notOnline(cpu) = $0 { true } else { false } }) {
            () throws(HotplugError) in _ = try machine.submit(on: cpu) {}
        }
        try armParkedWatch(cpu)
        try order(cpu, .sense, expect: [Demo.cc1(.stopped)], "a parked")
    }

    func deconfigure(_ cpu: Int) throws {
        let tid = try threadID(cpu, "to deconfigure")
        try machine.deconfigure(cpu)
        lifecycleOperations["deconfigure", default: 0] += 1
        parkedWatch[cpu] = nil
        pending[cpu] = Interrupts()   // a new thread starts from a fresh control block
        wentDown.insert(cpu)
        try check(try machine.state(of: cpu) == .standby && !machine.present.contains(cpu),
                  "deconfigure: standby, not present", "logical CPU \(cpu): present \(machine.present)")
        try check(try machine.threadID(of: cpu) == nil, "a standby CPU has no thread id", "logical CPU \(cpu)")
        let gone = waitUntil(2_000) { !ProcFS.threadExists(tid) }
        try check(gone, "a deconfigured CPU's thread is gone", "logical CPU \(cpu): /proc/self/task/\(tid) still exists")
        try check(try machine.runState(of: cpu) == RunState.none, "a standby CPU has run state none", "logical CPU \(cpu)")
        try order(cpu, .sense, expect: [Demo.cc3], "a standby")
    }

    func lastOnlineRefused(_ cpu: Int) throws {
        try expectError("offlining the last online CPU throws busy", { if case .busy(cpu, _) = $0 { true } else { false } }) {
            () throws(HotplugError) in try machine.offline(cpu)
        }
        try check(machine.online == [cpu], "the last online CPU stays online", "online \(machine.online)")
    }

    /// Brings CPUs online until at least `n` are.
    func ensureOnline(_ n: Int) throws {
        while machine.online.count < min(n, count) {
            if let parked = cpus(in: .parked).first { try online(parked) }
            else if let standby = cpus(in: .standby).first { try configure(standby) }
            else { break }
        }
    }

    /// Typed lifecycle errors and no-op successes.
    func lifecycleErrors() throws {
        try expectError("configure an invalid CPU throws invalidCPU", { $0 == .invalidCPU(count) }) {
            () throws(HotplugError) in try machine.configure(count)
        }
        try expectError("state(of:) an invalid CPU throws invalidCPU", { $0 == .invalidCPU(-1) }) {
            () throws(HotplugError) in _ = try machine.state(of: -1)
        }
        if let onlineCPU = randomOnline() {
            try expectError("configure an online CPU throws incorrectState",
                            { if case .incorrectState(onlineCPU, .online, _) = $0 { true } else { false } }) {
                () throws(HotplugError) in try machine.configure(onlineCPU)
            }
            try expectError("deconfigure an online CPU throws incorrectState",
                            { if case .incorrectState(onlineCPU, .online, _) = $0 { true } else { false } }) {
                () throws(HotplugError) in try machine.deconfigure(onlineCPU)
            }
            try machine.online(onlineCPU)   // no-op success
            try check(try machine.state(of: onlineCPU) == .online, "online an online CPU is a no-op", "logical CPU \(onlineCPU)")
        }
        if let parked = cpus(in: .parked).randomElement(using: &rng) {
            try machine.offline(parked)   // no-op success
            try check(try machine.state(of: parked) == .parked, "offline a parked CPU is a no-op", "logical CPU \(parked)")
            try expectError("configure a parked CPU throws incorrectState",
                            { if case .incorrectState(parked, .parked, _) = $0 { true } else { false } }) {
                () throws(HotplugError) in try machine.configure(parked)
            }
        }
        if let standby = cpus(in: .standby).randomElement(using: &rng) {
            try expectError("online a standby CPU throws notPresent", { $0 == .notPresent(cpu: standby) }) {
                () throws(HotplugError) in try machine.online(standby)
            }
            try expectError("offline a standby CPU throws notPresent", { $0 == .notPresent(cpu: standby) }) {
                () throws(HotplugError) in try machine.offline(standby)
            }
            try machine.deconfigure(standby)   // no-op success
            try check(try machine.state(of: standby) == .standby, "deconfigure a standby CPU is a no-op", "logical CPU \(standby)")
        }
        if machine.online.count == 1, let last = Array(machine.online).first { try lastOnlineRefused(last) }
    }
}
