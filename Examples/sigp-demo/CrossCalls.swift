import ExampleSupport
import Hotplug
import Synchronization

/// A cross-call body that spins until released (or until its own time bound), so that a CPU is busy running code.
final class Spinner: Sendable {
    let started = Atomic<Bool>(false)
    let released = Atomic<Bool>(false)
    let ranOn = Atomic<Int>(-1)
    let limitNanoseconds: Int64

    init(limit seconds: Int64 = 15) { limitNanoseconds = seconds * 1_000_000_000 }

    func spin(on machine: Machine) {
        ranOn.store(machine.currentCPU ?? -2, ordering: .relaxed)
        started.store(true, ordering: .releasing)
        let deadline = monotonicNanoseconds() + limitNanoseconds
        var iterations: UInt64 = 0
        while !released.load(ordering: .acquiring) {
            iterations &+= 1
            if iterations & 1023 == 0, monotonicNanoseconds() > deadline { break }
        }
    }
}

/// Where a cross-call body ran: the logical CPU it saw itself on, and the physical CPU the kernel ran it on.
struct CrossCallSample: Sendable, Equatable {
    var logical: Int?
    var physical: Int
}

// Cross-calls checked for where they run (the logical CPU and its physical CPU), and the spinning cross-call that
// keeps a CPU busy for the orders that need a running target.
extension Demo {
    /// run(on:) lands on the right logical CPU and on its physical CPU.
    func checkRunsOn(_ cpu: Int) throws {
        let before = stats(cpu)
        let sample = try machine.run(on: cpu) { [machine] in
            CrossCallSample(logical: machine.currentCPU, physical: ProcFS.currentPhysicalCPU())
        }
        classify(cpu, since: before)
        runCalls += 1
        let physical = try machine.physicalCPU(of: cpu)
        try check(sample.logical == cpu, "run(on:) runs on its target logical CPU",
                  "run(on: \(cpu)) ran on logical CPU \(sample.logical.map(String.init) ?? "none")")
        try check(sample.physical == physical, "run(on:) runs on the target's physical CPU",
                  "run(on: \(cpu)) ran on physical CPU \(sample.physical), pinned to \(physical)")
    }

    func crossCalls() throws {
        guard let target = randomOnline() else { return }
        try checkRunsOn(target)

        let online = machine.online
        let before = Dictionary(uniqueKeysWithValues: online.map { ($0, stats($0)) })
        let results = try machine.runOnEach { [machine] cpu in
            CrossCallSample(logical: machine.currentCPU, physical: ProcFS.currentPhysicalCPU())
        }
        for cpu in online { classify(cpu, since: before[cpu] ?? nil) }
        runOnEachCalls += 1
        runOnEachTargets += results.count
        try check(CPUSet(results.keys) == online, "runOnEach runs on every online CPU",
                  "results from \(CPUSet(results.keys)), online \(online)")
        for (cpu, sample) in results.sorted(by: { $0.key < $1.key }) {
            try check(sample.logical == cpu, "runOnEach runs each body on its CPU",
                      "the body for CPU \(cpu) ran on logical CPU \(sample.logical.map(String.init) ?? "none")")
            let physical = try machine.physicalCPU(of: cpu)
            try check(sample.physical == physical, "runOnEach runs on each CPU's physical CPU",
                      "the body for CPU \(cpu) ran on physical CPU \(sample.physical), pinned to \(physical)")
        }

        // submit + wait without blocking the target for long.
        let spinner = Spinner()
        let call = try machine.submit(on: target) { [machine] in
            spinner.ranOn.store(machine.currentCPU ?? -2, ordering: .relaxed)
        }
        submits += 1
        try check(call.wait(timeout: .seconds(5)), "a submitted cross-call runs", "logical CPU \(target)")
        try check(spinner.ranOn.load(ordering: .relaxed) == target, "a submitted cross-call runs on its target",
                  "submit(on: \(target)) ran on \(spinner.ranOn.load(ordering: .relaxed))")

        try expectError("run(on:) an invalid CPU throws invalidCPU", { $0 == .invalidCPU(count) }) { () throws(HotplugError) in
            do { _ = try machine.run(on: count) { 0 } } catch let error as HotplugError { throw error } catch {}
        }
        if let standby = cpus(in: .standby).randomElement(using: &rng) {
            try expectError("run(on:) a standby CPU throws notOnline", { $0 == .notOnline(cpu: standby) }) { () throws(HotplugError) in
                do { _ = try machine.run(on: standby) { 0 } } catch let error as HotplugError { throw error } catch {}
            }
        }
    }

    /// Submits a spinning cross-call to `target` and waits until it runs.
    func startSpinner(on target: Int) throws -> (Spinner, CrossCall) {
        let spinner = Spinner()
        spinners.append(spinner)
        let before = stats(target)
        let call = try machine.submit(on: target) { [machine] in spinner.spin(on: machine) }
        classify(target, since: before)
        submits += 1
        let running = waitUntil(3_000) { spinner.started.load(ordering: .acquiring) }
        try check(running, "a submitted cross-call starts", "logical CPU \(target) did not start it in 3 s")
        try check(spinner.ranOn.load(ordering: .relaxed) == target, "a submitted cross-call runs on its target",
                  "submitted to \(target), ran on \(spinner.ranOn.load(ordering: .relaxed))")
        return (spinner, call)
    }

    func finishSpinner(_ spinner: Spinner, _ call: CrossCall, _ target: Int) throws {
        spinner.released.store(true, ordering: .releasing)
        try check(call.wait(timeout: .seconds(5)), "a released cross-call finishes", "logical CPU \(target)")
        spinners.removeAll { $0 === spinner }
    }
}
