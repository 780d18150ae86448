import ExampleSupport
import Hotplug
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The worker threads (`--workers`): each draws actions from its own seeded stream and drives the logical CPUs
/// with them, concurrently with the on/off thread. Every action tolerates what the library documents for a CPU that
/// just went offline (a cross-call's `notOnline`, an order's "stopped" status); anything else is a violation.
/// A CPU that does not reach a safe point within the response bound (a timeout) is a livelock symptom, and a
/// violation of the progress invariant.
final class Workload: Sendable {
    let machine: Machine
    let checks: Checks
    let storm: TaskletStorm
    let slab: SlabChurn
    let sigp: SIGPLoad
    let detachesPerCPU: [Counter]
    let stop = Atomic<Bool>(false)
    private let seed: UInt64
    /// Whether a logical CPU's orders may target the CPU itself (`--no-sigp-to-self` leaves them out).
    private let sigpToSelf: Bool
    /// `--follow`: the outside may change a CPU's thread's affinity (physical placement is not checked here).
    private let follow: Bool

    // What the workers did.
    let crossCalls = Counter()
    let crossCallsRefused = Counter()
    let runOnEachCalls = Counter()
    let stopMachines = Counter()
    let stopMachineBodies = Counter()
    let readLockedChecks = Counter()
    let actions = Counter()

    /// Held tasklets per worker at most, and how long one is held.
    static let maximumHeld = 4
    static let holdNanoseconds: ClosedRange<Int64> = 200_000...5_000_000
    /// Worker 0 shrinks the cache this often.
    static let shrinkInterval: Int64 = 2_000_000_000

    init(machine: Machine, checks: Checks, storm: TaskletStorm, slab: SlabChurn, sigp: SIGPLoad,
         detachesPerCPU: [Counter], seed: UInt64, sigpToSelf: Bool, follow: Bool) {
        self.machine = machine
        self.checks = checks
        self.storm = storm
        self.slab = slab
        self.sigp = sigp
        self.detachesPerCPU = detachesPerCPU
        self.seed = seed
        self.sigpToSelf = sigpToSelf
        self.follow = follow
    }

    enum Action: CaseIterable {
        case taskletBurst, taskletsFromCPU, holdTasklet, slabHere, slabOnCPU, slabOnEachCPU
        case crossCall, submit, runOnEach, ordersHere, ordersFromCPU, stopMachine, readLocked

        /// Relative frequency.
        var weight: Int {
            switch self {
            case .taskletBurst: 20
            case .taskletsFromCPU: 8
            case .holdTasklet: 4
            case .slabHere: 10
            case .slabOnCPU: 14
            case .slabOnEachCPU: 3
            case .crossCall: 10
            case .submit: 4
            case .runOnEach: 2
            case .ordersHere: 10
            case .ordersFromCPU: 4
            case .stopMachine: 2
            case .readLocked: 2
            }
        }

        static let totalWeight = allCases.reduce(0) { $0 + $1.weight }

        static func random(using rng: inout SplitMix64) -> Action {
            var draw = Int.random(in: 0..<totalWeight, using: &rng)
            for action in allCases {
                if draw < action.weight { return action }
                draw -= action.weight
            }
            return .taskletBurst
        }
    }

    /// One worker thread's body.
    func run(worker: Int) {
        var rng = SplitMix64(seed: seed, stream: 100 + UInt64(worker))
        var held: [TaskletStorm.Held] = []
        var nextShrink = monotonicNanoseconds() + Workload.shrinkInterval
        while !stop.load(ordering: .relaxed) {
            perform(Action.random(using: &rng), &rng, &held)
            actions.add()
            releaseDue(&held, now: monotonicNanoseconds())
            if worker == 0, monotonicNanoseconds() >= nextShrink {
                nextShrink += Workload.shrinkInterval
                tolerate("shrink", as: .slab) { () throws -> Void in try slab.shrink() }
            }
            // Leave the cores to the logical CPUs and the on/off thread now and then (2 cores, oversubscribed).
            if rng.chance(0.25) { usleep(UInt32.random(in: 0...100, using: &rng)) }
        }
        releaseDue(&held, now: .max)
    }

    private func perform(_ action: Action, _ rng: inout SplitMix64, _ held: inout [TaskletStorm.Held]) {
        switch action {
        case .taskletBurst: storm.burst(Int.random(in: 1...32, using: &rng), using: &rng)
        case .taskletsFromCPU: taskletsFromCPU(&rng)
        case .holdTasklet: holdTasklet(&rng, &held)
        case .slabHere:
            slab.churn(frees: Int.random(in: 0...8, using: &rng), allocations: Int.random(in: 0...8, using: &rng),
                       pick: rng.next())
        case .slabOnCPU: slabOnCPU(&rng)
        case .slabOnEachCPU: slabOnEachCPU(&rng)
        case .crossCall: crossCall(&rng)
        case .submit: submit(&rng)
        case .runOnEach: runOnEach()
        case .ordersHere: ordersHere(&rng)
        case .ordersFromCPU: ordersFromCPU(&rng)
        case .stopMachine: stopMachine(&rng)
        case .readLocked: readLocked(&rng)
        }
    }

    // MARK: Error handling

    /// Runs a cross-call-like operation; a CPU that is not online (any more) is expected, a timeout breaks the
    /// progress invariant, anything else is a violation of `invariant`.
    @discardableResult
    private func tolerate<T>(_ what: String, as invariant: Invariant = .crossCalls,
                             _ body: () throws -> T) -> T? {
        do {
            return try body()
        } catch let error as HotplugError {
            switch error {
            case .notOnline: crossCallsRefused.add()
            case .timeout: checks.fail(.progress, "\(what): \(error)")
            default: checks.fail(invariant, "\(what) threw \(error)")
            }
        } catch {
            checks.fail(invariant, "\(what) threw \(error)")
        }
        return nil
    }

    private func randomCPU(_ rng: inout SplitMix64) -> Int { Int.random(in: 0..<machine.possibleCount, using: &rng) }

    private func randomOnlineCPU(_ rng: inout SplitMix64) -> Int? { Array(machine.online).randomElement(using: &rng) }

    // MARK: Tasklets

    /// A logical CPU schedules tasklets itself (nil target: on itself).
    private func taskletsFromCPU(_ rng: inout SplitMix64) {
        let cpu = randomCPU(&rng), count = Int.random(in: 1...16, using: &rng), pick = rng.next()
        let storm = self.storm
        tolerate("run(on: \(cpu)) scheduling tasklets") {
            try machine.run(on: cpu) {
                var generator = SplitMix64(seed: pick)
                for _ in 0..<count {
                    let index = Int.random(in: 0..<storm.tasklets.count, using: &generator)
                    storm.schedule(index, on: generator.chance(0.5) ? nil : Int.random(in: 0..<storm.machine.possibleCount, using: &generator))
                }
            }
            crossCalls.add()
        }
    }

    private func holdTasklet(_ rng: inout SplitMix64, _ held: inout [TaskletStorm.Held]) {
        guard held.count < Workload.maximumHeld, let cpu = randomOnlineCPU(&rng) else { return }
        let index = Int.random(in: 0..<storm.tasklets.count, using: &rng)
        held.append(storm.hold(index, on: cpu, detaches: detachesPerCPU[cpu].load,
                               forNanoseconds: Int64.random(in: Workload.holdNanoseconds, using: &rng)))
    }

    private func releaseDue(_ held: inout [TaskletStorm.Held], now: Int64) {
        held.removeAll { entry in
            guard entry.releaseAt <= now else { return false }
            storm.release(entry, detachesNow: detachesPerCPU[entry.cpu].load)
            return true
        }
    }

    // MARK: Slab

    /// A logical CPU frees objects others allocated (cross-CPU frees) and allocates new ones for others to free.
    private func slabOnCPU(_ rng: inout SplitMix64) {
        let cpu = randomCPU(&rng)
        let frees = Int.random(in: 0...24, using: &rng), allocations = Int.random(in: 0...24, using: &rng)
        let pick = rng.next(), slab = self.slab
        tolerate("run(on: \(cpu)) churning the slab", as: .slab) {
            try machine.run(on: cpu) { slab.churn(frees: frees, allocations: allocations, pick: pick) }
            crossCalls.add()
        }
    }

    /// Every online CPU churns its own magazines at once (net zero), racing the others' remote frees.
    private func slabOnEachCPU(_ rng: inout SplitMix64) {
        let rounds = Int.random(in: 20...200, using: &rng), pick = rng.next(), slab = self.slab
        tolerate("runOnEach churning the slab", as: .slab) {
            _ = try machine.runOnEach { cpu in slab.churnLocally(rounds: rounds, pick: pick ^ UInt64(cpu)) }
            runOnEachCalls.add()
        }
    }

    // MARK: Cross-calls

    /// run(on:) lands on its target logical CPU (and, now and then, checked: on its physical CPU; not in follow
    /// mode, where the outside may move a CPU's thread until the follower pins it again: the pinning check, with its
    /// grace period, covers that there).
    private func crossCall(_ rng: inout SplitMix64) {
        let cpu = randomCPU(&rng)
        let physical = rng.chance(0.125) && !follow
        let machine = self.machine
        guard let sample = tolerate("run(on: \(cpu))", { () throws -> (Int?, Int) in
            try machine.run(on: cpu) { (machine.currentCPU, physical ? ProcFS.currentPhysicalCPU() : -1) }
        }) else { return }
        crossCalls.add()
        checks.check(.crossCalls, sample.0 == cpu,
                     "run(on: \(cpu)) ran on \(sample.0.map { "logical CPU \($0)" } ?? "no logical CPU")")
        if physical, let pinned = try? machine.physicalCPU(of: cpu) {
            checks.check(.crossCalls, sample.1 == pinned, "run(on: \(cpu)) ran on physical CPU \(sample.1), pinned to \(pinned)")
        }
    }

    /// submit(on:) + wait: the call runs once, on its target.
    private func submit(_ rng: inout SplitMix64) {
        let cpu = randomCPU(&rng)
        let ranOn = Mutex<[Int?]>([])
        let machine = self.machine
        guard let call = tolerate("submit(on: \(cpu))", { () throws -> CrossCall in
            try machine.submit(on: cpu) { ranOn.withLock { $0.append(machine.currentCPU) } }
        }) else { return }
        crossCalls.add()
        guard call.wait(timeout: .seconds(5)) else {
            checks.fail(.progress, "a call submitted to logical CPU \(cpu) did not start within 5 s")
            return
        }
        let runs = ranOn.withLock { $0 }
        checks.check(.crossCalls, runs == [cpu], "submit(on: \(cpu)) ran on \(runs)")
    }

    /// runOnEach runs each body once on its own CPU, on CPUs that were online.
    private func runOnEach() {
        let machine = self.machine
        guard let results = tolerate("runOnEach", { () throws -> [Int: Int?] in
            try machine.runOnEach { _ in machine.currentCPU }
        }) else { return }
        runOnEachCalls.add()
        for (cpu, ranOn) in results {
            checks.check(.crossCalls, ranOn == cpu, "runOnEach's body for CPU \(cpu) ran on \(ranOn.map(String.init) ?? "none")")
        }
    }

    // MARK: SIGP

    private static func randomOrder(_ rng: inout SplitMix64) -> SIGPOrder {
        SIGPLoad.orders.randomElement(using: &rng) ?? .sense
    }

    /// A burst of orders from this (foreign) thread to random CPUs, online or parked.
    private func ordersHere(_ rng: inout SplitMix64) {
        for _ in 0..<Int.random(in: 1...8, using: &rng) {
            sigp.send(machine, to: randomCPU(&rng), Workload.randomOrder(&rng), parameter: UInt32(truncatingIfNeeded: rng.next()))
        }
    }

    /// A logical CPU sends orders to CPUs, itself included (the external call then names it as its source). An
    /// order to itself from a cross-call it runs while going offline (its signal blocked) is part of the test.
    private func ordersFromCPU(_ rng: inout SplitMix64) {
        let source = randomCPU(&rng)
        let orders = (0..<Int.random(in: 1...4, using: &rng)).map { _ in
            (randomCPU(&rng), Workload.randomOrder(&rng), UInt32(truncatingIfNeeded: rng.next()))
        }.filter { sigpToSelf || $0.0 != source }
        let machine = self.machine, sigp = self.sigp
        tolerate("run(on: \(source)) sending SIGP orders") {
            try machine.run(on: source) {
                for (target, order, parameter) in orders { sigp.send(machine, to: target, order, parameter: parameter) }
            }
            crossCalls.add()
        }
    }

    // MARK: stop_machine and the read lock

    /// stop_machine with no active set runs its body once, on the first online CPU; with one, once on each of
    /// its CPUs that is online. The online mask does not change meanwhile.
    private func stopMachine(_ rng: inout SplitMix64) {
        let active: CPUSet? = rng.chance(0.5)
            ? CPUSet((0..<machine.possibleCount).filter { _ in rng.chance(0.5) })
            : nil
        let seen = Mutex<(ran: [Int], wrong: [String], online: CPUSet?)>(([], [], nil))
        let machine = self.machine
        let ran: Void? = tolerate("stopMachine", as: .stopMachine) {
            try machine.stopMachine(active: active) { [checks] cpu in
                checks.stopMachineBodies.add()
                defer { checks.stopMachineBodies.add(-1) }
                // Long enough (about 20 us) for a CPU that should be stopped but is not to run something meanwhile.
                let until = ContinuousClock.now + .microseconds(20)
                while ContinuousClock.now < until {}
                let here = machine.currentCPU, online = machine.online
                seen.withLock { seen in
                    seen.ran.append(cpu)
                    if here != cpu { seen.wrong.append("the body for CPU \(cpu) ran on \(here.map(String.init) ?? "none")") }
                    if let before = seen.online, before != online { seen.wrong.append("online changed from \(before) to \(online)") }
                    seen.online = online
                }
            }
        }
        guard ran != nil else { return }
        stopMachines.add()
        let (bodies, wrong, online) = seen.withLock { ($0.ran.sorted(), $0.wrong, $0.online) }
        stopMachineBodies.add(bodies.count)
        for problem in wrong { checks.fail(.stopMachine, problem) }
        if let active {
            // With an active set the bodies run on its online CPUs; with none of them online, nowhere.
            if let online {
                let expected = active.filter { online.contains($0) }
                checks.check(.stopMachine, bodies == expected, "stopMachine(active: \(active)) ran on \(bodies), online \(online)")
            } else {
                checks.check(.stopMachine, bodies.isEmpty, "stopMachine(active: \(active)) ran on \(bodies)")
            }
        } else {
            checks.check(.stopMachine, bodies.count == 1 && bodies.first == online?.first(where: { _ in true }),
                         "stopMachine() ran on \(bodies), online \(online.map { "\($0)" } ?? "?")")
        }
    }

    /// Under the hotplug read lock the online mask does not change.
    private func readLocked(_ rng: inout SplitMix64) {
        let wait = UInt32.random(in: 0...200, using: &rng)
        let (before, after) = machine.withCPUsReadLocked { () -> (CPUSet, CPUSet) in
            let before = machine.online
            usleep(wait)
            return (before, machine.online)
        }
        readLockedChecks.add()
        checks.check(.stopMachine, before == after, "the online mask changed under the read lock: \(before) -> \(after)")
    }
}
