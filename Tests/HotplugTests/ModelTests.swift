import Foundation
import Testing
@testable import Hotplug

/// SplitMix64: small, seedable, reproducible.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A reference model of masks, lifecycle states, registered states, armed injections and what each CPU has set
/// up; the randomized test checks that the machine agrees with it after every operation.
struct HotplugModel {
    struct Registered {
        let state: HotplugState
        let name: String
        let failStartupOn: Int?
    }

    var lifecycle: [LogicalCPUState]
    var registered: [Registered] = []
    var armed: [Int: (state: HotplugState, direction: HotplugDirection)] = [:]
    /// Names whose teardown was skipped by an injected failure while unregistering: still set up on that CPU.
    var leaked: [Int: Set<String>] = [:]

    var online: CPUSet { CPUSet(lifecycle.indices.filter { lifecycle[$0] == .online }) }
    var present: CPUSet { CPUSet(lifecycle.indices.filter { lifecycle[$0] != .standby }) }
    func live(_ cpu: Int) -> Set<String> {
        (lifecycle[cpu] == .online ? Set(registered.map(\.name)) : []).union(leaked[cpu] ?? [])
    }
    func states(in section: HotplugSection) -> [Registered] {
        registered.filter { $0.state.section == section && $0.state != .bringup && $0.state != .teardownCPU }
            .sorted { $0.state < $1.state }
    }

    /// The outcome an attach of `cpu` must have: nil for success, or the failing state (and the armed injection
    /// it consumed, if any).
    mutating func attach(_ cpu: Int) -> HotplugState? {
        let walk = states(in: .prepare).map { ($0.state, $0.failStartupOn == cpu) } + [(HotplugState.bringup, false)]
            + states(in: .online).map { ($0.state, false) }
        for (state, refuses) in walk {
            if let armed = armed[cpu], armed.state == state, armed.direction == .startup {
                self.armed[cpu] = nil
                return state
            }
            if refuses { return state }
        }
        lifecycle[cpu] = .online
        return nil
    }

    mutating func detach(_ cpu: Int) -> HotplugState? {
        let walk = states(in: .online).reversed().map(\.state) + [HotplugState.teardownCPU]
        for state in walk {
            if let armed = armed[cpu], armed.state == state, armed.direction == .teardown {
                self.armed[cpu] = nil
                return state
            }
        }
        lifecycle[cpu] = .parked
        return nil
    }
}

@Suite struct ModelTests {
    @Test func randomOperationsAgreeWithTheReferenceModel() throws {
        let seed = ProcessInfo.processInfo.environment["HOTPLUG_SEED"].flatMap { UInt64($0) } ?? 0x5EED_2000
        let operations = stressIterations(2_000, long: 20_000)
        var rng = SeededGenerator(seed: seed)
        let cpus = 4
        let machine = try Machine(cpus: cpus, configuration: .init(initiallyOnline: 2))
        defer { machine.shutdown() }
        let recorder = Recorder()
        var model = HotplugModel(lifecycle: [.online, .online, .standby, .standby])
        let capacity: [HotplugSection: ClosedRange<Int>] = [.prepare: HotplugState.prepareDynamic,
                                                           .starting: HotplugState.startingDynamic,
                                                           .online: HotplugState.onlineDynamic]
        var counter = 0
        var failures: [String] = []
        var seen: [String: Int] = [:]   // what the run exercised

        func check(_ step: Int, _ what: String) {
            func note(_ message: String) { failures.append("op \(step) (\(what)), seed \(seed): \(message)") }
            if machine.online != model.online { note("online \(machine.online) vs model \(model.online)") }
            if machine.present != model.present { note("present \(machine.present) vs model \(model.present)") }
            if machine.active != model.online { note("active \(machine.active) vs online \(model.online)") }
            for cpu in 0..<cpus {
                if (try? machine.state(of: cpu)) != model.lifecycle[cpu] { note("CPU \(cpu) lifecycle") }
                let expected: HotplugState = model.lifecycle[cpu] == .online ? .online : .offline
                if (try? machine.hotplug.currentState(of: cpu)) != expected { note("CPU \(cpu) hotplug state") }
                if recorder.live(cpu) != model.live(cpu) {
                    note("CPU \(cpu) set up \(recorder.live(cpu).sorted()) vs model \(model.live(cpu).sorted())")
                }
            }
            let names = machine.hotplug.states.filter { !$0.isBuiltin }.map(\.name)
            let expectedNames = model.registered.sorted { $0.state < $1.state }.map(\.name)
            if names != expectedNames { note("states \(names) vs model \(expectedNames)") }
        }

        for step in 0..<operations {
            guard failures.isEmpty else { break }
            let cpu = Int.random(in: 0..<cpus, using: &rng)
            let roll = Int.random(in: 0..<100, using: &rng)
            var what = ""
            switch roll {
            case 0..<25:   // attach
                what = "online \(cpu)"
                let before = model.lifecycle[cpu]
                do {
                    try machine.online(cpu)
                    if before == .parked { seen["attach", default: 0] += 1 }
                    if before == .standby { failures.append("op \(step): online of a standby CPU succeeded (seed \(seed))") }
                    if before == .parked, let failing = model.attach(cpu) {
                        failures.append("op \(step): online \(cpu) succeeded, model expected a failure at \(failing) (seed \(seed))")
                    }
                } catch {
                    switch (before, error) {
                    case (.standby, .notPresent): break
                    case (.parked, .callbackFailed(let failure)):
                        seen["attach rolled back", default: 0] += 1
                        let expected = model.attach(cpu)
                        if failure.state != expected || !failure.rolledBack {
                            failures.append("op \(step): \(failure) vs model \(String(describing: expected)) (seed \(seed))")
                        }
                    default: failures.append("op \(step): online \(cpu) threw \(error) (seed \(seed))")
                    }
                }
            case 25..<50:   // detach
                what = "offline \(cpu)"
                let before = model.lifecycle[cpu]
                let last = model.online.count == 1 && before == .online
                do {
                    try machine.offline(cpu)
                    if before == .online { seen["detach", default: 0] += 1 }
                    if before == .standby || last { failures.append("op \(step): offline \(cpu) succeeded (seed \(seed))") }
                    if before == .online, !last, let failing = model.detach(cpu) {
                        failures.append("op \(step): offline \(cpu) succeeded, model expected a failure at \(failing) (seed \(seed))")
                    }
                } catch {
                    switch (before, error) {
                    case (.standby, .notPresent): break
                    case (.online, .busy) where last: break
                    case (.online, .callbackFailed(let failure)):
                        seen["detach rolled forward", default: 0] += 1
                        let expected = model.detach(cpu)
                        if failure.state != expected || !failure.rolledBack {
                            failures.append("op \(step): \(failure) vs model \(String(describing: expected)) (seed \(seed))")
                        }
                    default: failures.append("op \(step): offline \(cpu) threw \(error) (seed \(seed))")
                    }
                }
            case 50..<58:   // configure
                what = "configure \(cpu)"
                do {
                    try machine.configure(cpu)
                    if model.lifecycle[cpu] != .standby { failures.append("op \(step): configure succeeded (seed \(seed))") }
                    model.lifecycle[cpu] = .parked
                } catch {
                    if model.lifecycle[cpu] == .standby { failures.append("op \(step): configure threw \(error) (seed \(seed))") }
                }
            case 58..<66:   // deconfigure
                what = "deconfigure \(cpu)"
                do {
                    try machine.deconfigure(cpu)
                    if model.lifecycle[cpu] == .online { failures.append("op \(step): deconfigure of an online CPU (seed \(seed))") }
                    model.lifecycle[cpu] = .standby
                } catch {
                    if model.lifecycle[cpu] != .online { failures.append("op \(step): deconfigure threw \(error) (seed \(seed))") }
                }
            case 66..<80:   // register
                let section = [HotplugSection.prepare, .starting, .online].randomElement(using: &rng)!
                counter += 1
                let name = "r\(counter)"
                // Only PREPARE startups refuse (on one CPU), so that no rollback can meet a second failure.
                let refuseOn = section == .prepare && Bool.random(using: &rng) ? Int.random(in: 0..<cpus, using: &rng) : nil
                what = "register \(name) in \(section)" + (refuseOn.map { " refusing on CPU \($0)" } ?? "")
                if let refuseOn { recorder.failStartup.withLock { _ = $0.insert("\(name)@\(refuseOn)") } }
                let (up, down) = recorder.callbacks(name)
                let used = Set(model.registered.map(\.state.rawValue))
                let slot = capacity[section]!.first { !used.contains($0) }
                do {
                    let state = try machine.hotplug.register(name, section: section, startup: up, teardown: down)
                    if state.rawValue != slot { failures.append("op \(step): slot \(state) vs model \(String(describing: slot)) (seed \(seed))") }
                    if let refuseOn, model.lifecycle[refuseOn] == .online {
                        failures.append("op \(step): registration should have failed on CPU \(refuseOn) (seed \(seed))")
                    }
                    model.registered.append(.init(state: state, name: name, failStartupOn: refuseOn))
                    seen["register", default: 0] += 1
                } catch {
                    switch error {
                    case .noFreeState where slot == nil: break
                    case .callbackFailed(let failure) where failure.cpu == refuseOn && failure.rolledBack:
                        seen["registration rolled back", default: 0] += 1
                    default: failures.append("op \(step): register threw \(error) (seed \(seed))")
                    }
                }
            case 80..<88:   // unregister
                guard !model.registered.isEmpty else { continue }
                let victim = model.registered.randomElement(using: &rng)!
                what = "unregister \(victim.name)"
                do {
                    try machine.hotplug.unregister(victim.state)
                    for cpu in 0..<cpus where model.lifecycle[cpu] == .online {
                        if let armed = model.armed[cpu], armed.state == victim.state {
                            if armed.direction == .teardown { model.leaked[cpu, default: []].insert(victim.name) }
                        }
                    }
                    for cpu in 0..<cpus where model.armed[cpu]?.state == victim.state { model.armed[cpu] = nil }
                    model.registered.removeAll { $0.state == victim.state }
                    seen["unregister", default: 0] += 1
                } catch {
                    failures.append("op \(step): unregister threw \(error) (seed \(seed))")
                }
            default:   // inject
                guard model.armed[cpu] == nil else { continue }
                var choices: [(HotplugState, HotplugDirection)] = [(.bringup, .startup), (.teardownCPU, .teardown)]
                choices += model.states(in: .prepare).map { ($0.state, .startup) }
                choices += model.states(in: .online).flatMap { [($0.state, .startup), ($0.state, .teardown)] }
                let (state, direction) = choices.randomElement(using: &rng)!
                what = "inject \(direction) at \(state) on CPU \(cpu)"
                do {
                    try machine.hotplug.injectFailure(cpu: cpu, at: state, direction: direction)
                    model.armed[cpu] = (state, direction)
                } catch {
                    failures.append("op \(step): inject threw \(error) (seed \(seed))")
                }
            }
            check(step, what)
        }
        #expect(failures.isEmpty, "\(failures.prefix(5).joined(separator: "\n"))")
        // The run must have exercised every path, or it proves little.
        for path in ["attach", "detach", "attach rolled back", "detach rolled forward", "register",
                     "registration rolled back", "unregister"] {
            #expect(seen[path, default: 0] > 0, "the run never exercised: \(path) (\(seen))")
        }
    }
}
