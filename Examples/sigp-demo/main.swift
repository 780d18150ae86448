// sigp-demo: drives a Machine's logical CPUs through their lifecycle, sends every modelled SIGP order and checks
// each condition code, status bit and side effect against the design (DESIGN 3.2 and 3.3). Exits 0 when every
// check held; otherwise prints a line starting with `FAILED` that names the check and the seed, and exits 1.
//
// Everything it verifies on the real OS threads:
// - condition codes and status bits of every order, on online, stopped, parked and standby CPUs;
// - only one external call may be pending (cc 1 + 0x80 for the second), emergency signals queue, and every
//   accepted interruption reaches the interrupt handler exactly once (or is cleared by a reset / deconfigure);
// - STOP stops a CPU spinning in a cross-call wherever it is (its thread CPU time stops growing), START resumes
//   it, STOP_AND_STORE_STATUS stores a non-zero instruction and stack pointer;
// - a pending RESTART makes every order but the resets answer cc 2 (busy);
// - cross-calls (`run(on:)`, `runOnEach`) run on the right logical CPU and on its physical CPU;
// - every online CPU's thread is pinned to exactly one CPU (`Cpus_allowed_list`), a parked CPU's thread CPU time
//   does not grow (schedstat), a deconfigured CPU's thread is gone;
// - masks: active ⊆ online ⊆ present ⊆ possible, consistent with each CPU's state; lifecycle errors are typed.
import ArgumentParser
import Dispatch
import ExampleSupport
import Hotplug
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct SIGPDemo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sigp-demo",
        abstract: "Cycle logical CPUs through their lifecycle, send every modelled SIGP order, check every answer.",
        discussion: """
            Exits 0 when every check held. Otherwise prints a line starting with FAILED that names the check and \
            the seed; run again with --seed to repeat the same choices.
            """
    )

    @Option(help: "Logical CPUs (default: one per CPU of the process affinity mask, at least 2; more than the mask holds oversubscribes).")
    var cpus: Int?

    @Option(help: "How long to run, in seconds.")
    var seconds: Double = 10

    @Option(help: "Seed of the random choices (which CPU gets which order and lifecycle step). Default: random, printed.")
    var seed: UInt64?

    @Option(help: "Log level: trace, debug (the library's lifecycle transitions), info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        if let cpus, cpus < 2 { throw ValidationError("--cpus must be at least 2") }
        guard seconds.isFinite, seconds > 0 else { throw ValidationError("--seconds must be a positive number") }
    }

    func run() throws {
        bootstrapLogging(level: logLevel)
        let logger = Logger(label: "sigp-demo")
        let seed = self.seed ?? UInt64.random(in: .min ... .max)

        let topology = try setUp("read the topology", seed: seed) { try Topology.current() }
        let count = cpus ?? max(2, topology.cpus.count)
        Watchdog.start(afterSeconds: seconds + 60, program: "the demo", seed: seed)

        let recorder = InterruptRecorder(cpus: count)
        let machine = try setUp("create a machine of \(count) logical CPUs", seed: seed) {
            let configuration = Machine.Configuration(interruptHandler: { cpu, interruption in
                recorder.record(cpu: cpu, interruption)
            })
            return try Machine(topology: topology, cpus: count, configuration: configuration, logger: logger)
        }

        let physical = topology.physicalCPUs.count
        report("sigp-demo: \(count) logical CPUs on \(physical) physical CPU\(physical == 1 ? "" : "s") "
               + "(\(count > physical ? "oversubscribed" : "one each")), signal \(machine.signal), seed \(seed), "
               + "\(fixed(seconds, 1)) s")

        let demo = Demo(machine: machine, recorder: recorder, seed: seed, logger: logger)
        let failure = demo.run(seconds: seconds)
        let totals = demo.deliveryTotals()
        machine.shutdown()
        demo.printReport(totals: totals, failed: failure != nil)
        if let failure {
            report("FAILED \(failure.check): \(failure.detail) (seed \(seed))")
            throw ExitCode.failure
        }
        report("OK: every check held (seed \(seed))")
    }
}

// MARK: - The demo

struct CheckFailed: Error {
    let check: String
    let detail: String
}

/// What a CPU's interrupt handler receives (or is expected to receive).
struct Interrupts: Equatable, CustomStringConvertible {
    struct ExternalCall: Equatable {
        var parameter: UInt32
        var source: Int?
    }
    var externalCalls: [ExternalCall] = []
    var emergencySignals = 0
    var restarts = 0

    var description: String {
        let calls = externalCalls.map { "0x\(String($0.parameter, radix: 16))@\($0.source.map(String.init) ?? "foreign")" }
        return "external calls [\(calls.joined(separator: ", "))], emergency signals \(emergencySignals), restarts \(restarts)"
    }
}

/// Collects what the interrupt handler receives, on the CPUs' own threads.
final class InterruptRecorder: Sendable {
    private let received: Mutex<[Interrupts]>

    init(cpus: Int) { received = Mutex(Array(repeating: Interrupts(), count: cpus)) }

    func record(cpu: Int, _ interruption: SIGPInterruption) {
        received.withLock { all in
            switch interruption {
            case .externalCall(let parameter, let source):
                all[cpu].externalCalls.append(.init(parameter: parameter, source: source))
            case .emergencySignal:
                all[cpu].emergencySignals += 1
            case .restart:
                all[cpu].restarts += 1
            }
        }
    }

    func snapshot(cpu: Int) -> Interrupts { received.withLock { $0[cpu] } }
}

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

struct CrossCallSample: Sendable, Equatable {
    var logical: Int?
    var physical: Int
}

/// How a delivery reached its target, told apart by the target's delivery counters before and after.
enum Delivery { case signal, futexWake, noWake }

final class Demo {
    let machine: Machine
    let count: Int
    let seed: UInt64
    let recorder: InterruptRecorder
    let logger: Logger
    var rng: SplitMix64

    /// Interruptions each CPU's handler must have received so far.
    var expected: [Interrupts]
    /// Interruptions posted to a parked CPU: they are delivered when it comes online, dropped by deconfigure.
    var pending: [Interrupts]
    var spinners: [Spinner] = []
    var nextParameter: UInt32 = 0x5160_0000

    // Tallies for the report.
    var ordersByCode: [UInt8: [Int]] = [:]   // order code -> count per condition code 0...3
    var deliveries: [Delivery: Int] = [.signal: 0, .futexWake: 0, .noWake: 0]
    var lifecycleOperations: [String: Int] = [:]
    var expectedErrors = 0
    var cycles = 0
    var wentDown = Set<Int>()
    var runCalls = 0, runOnEachCalls = 0, runOnEachTargets = 0, submits = 0
    var checks = 0
    var iterations = 0
    var scenarios: [String: Int] = [:]
    var parkedChecks = 0, maxParkedGrowth: Int64 = 0
    var stoppedChecks = 0, maxStoppedGrowth: Int64 = 0
    var pinChecks = 0
    /// Parked CPUs being watched: wall-clock time and thread CPU time at the snapshot.
    var parkedWatch: [Int: (wall: Int64, cpu: Int64)] = [:]
    let started = monotonicNanoseconds()

    static let parkedWindow: Int64 = 200_000_000
    static let deliveringOrders: Set<SIGPOrder> = [
        .externalCall, .emergencySignal, .conditionalEmergencySignal, .stop, .stopAndStoreStatus, .restart,
        .cpuReset, .initialCPUReset,
    ]
    static let unmodelledOrders: [UInt8] = [0, 7, 8, 10, 13, 14, 15, 18, 20, 22, 0x7F, 0xFF]

    init(machine: Machine, recorder: InterruptRecorder, seed: UInt64, logger: Logger) {
        self.machine = machine
        self.count = machine.possibleCount
        self.seed = seed
        self.recorder = recorder
        self.logger = logger
        self.rng = SplitMix64(seed: seed)
        self.expected = Array(repeating: Interrupts(), count: machine.possibleCount)
        self.pending = Array(repeating: Interrupts(), count: machine.possibleCount)
    }

    // MARK: Main loop

    /// Runs until `seconds` passed; returns the first check that failed, nil when every check held.
    func run(seconds: Double) -> CheckFailed? {
        let deadline = started + Int64(seconds * 1e9)
        var nextProgress = started + 2_000_000_000
        do {
            // One pass over every scenario first, so that even a short run covers everything.
            try checkInvariants()
            for scenario in Scenario.allCases { try run(scenario) }
            while monotonicNanoseconds() < deadline {
                iterations += 1
                try lifecycleStep()
                try run(Scenario.allCases.randomElement(using: &rng)!)
                try checkInvariants()
                if monotonicNanoseconds() >= nextProgress {
                    printProgress()
                    nextProgress += 2_000_000_000
                }
            }
            // Everything accepted has been delivered, nothing twice.
            for cpu in machine.online { try awaitInterrupts(cpu) }
            try check(parkedChecks > 0, "a parked CPU's thread CPU time was measured", "no parked window was measured")
            let totals = deliveryTotals()
            try check(totals.signalsReceived <= totals.signalsSent, "signals received <= signals sent",
                      "received \(totals.signalsReceived), sent \(totals.signalsSent)")
            return nil
        } catch let failure as CheckFailed {
            releaseEverything()
            return failure
        } catch {
            releaseEverything()
            return CheckFailed(check: "unexpected error", detail: "\(error)")
        }
    }

    /// After a failure: let spinning calls end and stopped CPUs run, so that shutdown is quick.
    func releaseEverything() {
        for spinner in spinners { spinner.released.store(true, ordering: .releasing) }
        for cpu in machine.online { _ = try? machine.sigp(cpu, .start) }
    }

    enum Scenario: String, CaseIterable {
        case crossCalls, stopAndExternalCall, stopRunning, restartBusy, restartThenReset, resets, invalidOrders
        case externalCallFromCPU, parkedOrders, lifecycleErrors
    }

    func run(_ scenario: Scenario) throws {
        scenarios[scenario.rawValue, default: 0] += 1
        logger.debug("scenario", metadata: ["scenario": "\(scenario.rawValue)"])
        switch scenario {
        case .crossCalls: try crossCalls()
        case .stopAndExternalCall: try stopAndExternalCall()
        case .stopRunning: try stopRunning()
        case .restartBusy: try restartBusy(thenReset: false)
        case .restartThenReset: try restartBusy(thenReset: true)
        case .resets: try resets()
        case .invalidOrders: try invalidOrders()
        case .externalCallFromCPU: try externalCallFromCPU()
        case .parkedOrders: try parkedOrders()
        case .lifecycleErrors: try lifecycleErrors()
        }
    }

    // MARK: Checks and helpers

    func check(_ condition: Bool, _ name: @autoclosure () throws -> String,
               _ detail: @autoclosure () throws -> String) throws {
        checks += 1
        if !condition { throw CheckFailed(check: try name(), detail: try detail()) }
    }

    func fail(_ name: String, _ detail: String) -> CheckFailed { CheckFailed(check: name, detail: detail) }

    func parameter() -> UInt32 {
        nextParameter &+= 1
        return nextParameter
    }

    func stats(_ cpu: Int) -> DeliveryStatistics? { try? machine.deliveryStatistics(of: cpu) }

    func classify(_ cpu: Int, since before: DeliveryStatistics?) {
        guard let before, let after = stats(cpu) else { return }
        if after.signalsSent > before.signalsSent { deliveries[.signal, default: 0] += 1 }
        else if after.futexWakes > before.futexWakes { deliveries[.futexWake, default: 0] += 1 }
        else { deliveries[.noWake, default: 0] += 1 }
    }

    static func cc1(_ status: SIGPStatus) -> SIGPResult { SIGPResult(conditionCode: .statusStored, status: status) }
    static let cc0 = SIGPResult(conditionCode: .accepted)
    static let cc2 = SIGPResult(conditionCode: .busy)
    static let cc3 = SIGPResult(conditionCode: .notOperational)

    /// Sends one order and checks its answer against `allowed`.
    @discardableResult
    func order(_ cpu: Int, _ order: SIGPOrder, parameter: UInt32 = 0, expect allowed: [SIGPResult],
               _ situation: String) throws -> SIGPResult {
        let wasStopped = (try? machine.runState(of: cpu)) == .stopped
        let before = stats(cpu)
        let result = try machine.sigp(cpu, order, parameter: parameter)
        tally(order, result)
        // START, and RESTART to a stopped CPU, wake a stopped CPU directly: they are not deliveries.
        if result.conditionCode == .accepted, Demo.deliveringOrders.contains(order),
           !(order == .restart && wasStopped) {
            classify(cpu, since: before)
        }
        try check(allowed.contains(result), "SIGP \(order) to \(situation) CPU",
                  "logical CPU \(cpu): expected \(allowed.map(\.description).joined(separator: " or ")), got \(result)")
        return result
    }

    func tally(_ order: SIGPOrder, _ result: SIGPResult) {
        ordersByCode[order.rawValue, default: [0, 0, 0, 0]][result.conditionCode.rawValue] += 1
    }

    func randomOnline(except excluded: Int? = nil) -> Int? {
        machine.online.filter { $0 != excluded }.randomElement(using: &rng)
    }

    func cpus(in state: LogicalCPUState) -> [Int] {
        (0..<count).filter { (try? machine.state(of: $0)) == state }
    }

    func threadID(_ cpu: Int, _ why: String) throws -> Int32 {
        guard let tid = try machine.threadID(of: cpu) else {
            throw fail("a present CPU has a thread", "logical CPU \(cpu) has no thread id (\(why))")
        }
        return tid
    }

    func cpuTime(_ cpu: Int, _ tid: Int32) throws -> Int64 {
        guard let time = ProcFS.threadCPUTime(tid) else {
            throw fail("thread CPU time readable", "logical CPU \(cpu): cannot read the CPU time of thread \(tid)")
        }
        return time
    }

    /// Waits until the thread sleeps in the kernel (state S in /proc/self/task/TID/stat): its CPU time is then
    /// fully accounted (schedstat of a running thread lags by up to a scheduler tick).
    func awaitBlocked(_ cpu: Int, _ tid: Int32, _ what: String) throws {
        let blocked = waitUntil(2_000) { ThreadProbe.isBlocked(tid) }
        try check(blocked, "\(what) thread blocks in the kernel",
                  "logical CPU \(cpu) (tid \(tid)) is in state \(ProcFS.threadState(tid).map(String.init) ?? "?") after 2 s")
    }

    /// Waits until a thread's CPU time grew by at least 1 ms: it really runs.
    func awaitGrowth(_ cpu: Int, _ tid: Int32, _ what: String) throws {
        let base = try cpuTime(cpu, tid)
        var last = base
        let grew = try waitUntil(3_000) {
            last = try cpuTime(cpu, tid)
            return last - base >= 1_000_000
        }
        try check(grew, what, "logical CPU \(cpu) (tid \(tid)) ran only \(last - base) ns of CPU time in 3 s")
    }

    /// Waits until the handler of `cpu` received exactly what is expected (bounded).
    func awaitInterrupts(_ cpu: Int) throws {
        let want = expected[cpu]
        let matched = waitUntil(3_000) { recorder.snapshot(cpu: cpu) == want }
        try check(matched, "every accepted interruption is delivered exactly once",
                  "logical CPU \(cpu): expected \(want); the handler received \(recorder.snapshot(cpu: cpu))")
    }

    func expectError(_ name: String, _ predicate: (HotplugError) -> Bool,
                     _ body: () throws(HotplugError) -> Void) throws {
        do {
            try body()
        } catch {
            try check(predicate(error), name, "threw \(error)")
            expectedErrors += 1
            return
        }
        throw fail(name, "no error was thrown")
    }

    // MARK: Invariants (every iteration)

    func checkInvariants() throws {
        let present = machine.present, online = machine.online, active = machine.active
        try check(!online.isEmpty, "at least one CPU online", "online mask is empty")
        try check(active == online, "active == online between operations", "active \(active), online \(online)")
        for cpu in 0..<count {
            let state = try machine.state(of: cpu)
            let inMasks: LogicalCPUState = online.contains(cpu) ? .online : present.contains(cpu) ? .parked : .standby
            try check(state == inMasks, "masks agree with the lifecycle state",
                      "logical CPU \(cpu) is \(state); masks: present \(present), online \(online)")
            try check(!online.contains(cpu) || present.contains(cpu), "online ⊆ present",
                      "online \(online), present \(present)")
            try check((try machine.threadID(of: cpu) != nil) == present.contains(cpu), "present CPUs have a thread",
                      "logical CPU \(cpu): present \(present.contains(cpu)), thread id \(String(describing: try machine.threadID(of: cpu)))")
        }
        try check(present.allSatisfy { $0 < count }, "present ⊆ possible", "present \(present), possible \(count)")
        try checkPinning()
        try checkParkedWatch(force: nil)
    }

    /// Every online CPU's thread is pinned to exactly its physical CPU.
    func checkPinning() throws {
        for cpu in machine.online {
            let problem = ThreadProbe.pinningProblem(machine, cpu: cpu)
            try check(problem == nil, "online CPU's thread pinned to exactly one CPU", problem ?? "")
            pinChecks += 1
        }
    }

    /// Starts watching a parked CPU's thread: from now on its CPU time must not grow.
    func armParkedWatch(_ cpu: Int) throws {
        let tid = try threadID(cpu, "parked")
        try awaitBlocked(cpu, tid, "a parked CPU's")
        // S shows before the thread is off its CPU; its CPU time is final once it has stayed asleep a while.
        let settled = ThreadProbe.settledSleep(tid, milliseconds: 2_000)
        try check(settled != nil, "a parked CPU's thread stays asleep",
                  "logical CPU \(cpu) (tid \(tid)) did not stay asleep for 1 ms within 2 s")
        if let settled { parkedWatch[cpu] = (settled.wall, settled.cpuTime) }
    }

    /// Checks the parked CPUs watched for at least the window (or `force`, after sleeping out its window).
    func checkParkedWatch(force: Int?) throws {
        if let force, let snapshot = parkedWatch[force] {
            let left = snapshot.wall + Demo.parkedWindow - monotonicNanoseconds()
            if left > 0 { usleep(UInt32(left / 1_000)) }
        }
        let now = monotonicNanoseconds()
        for (cpu, snapshot) in parkedWatch.sorted(by: { $0.key < $1.key }) where now - snapshot.wall >= Demo.parkedWindow {
            try check(try machine.state(of: cpu) == .parked, "watched CPU still parked", "logical CPU \(cpu)")
            let tid = try threadID(cpu, "parked")
            let time = try cpuTime(cpu, tid)
            let elapsed = monotonicNanoseconds() - snapshot.wall
            let growth = time - snapshot.cpu
            maxParkedGrowth = max(maxParkedGrowth, growth)
            parkedChecks += 1
            try check(ThreadProbe.isIdle(growth: growth, elapsed: elapsed), "a parked CPU's thread CPU time does not grow",
                      "logical CPU \(cpu) (tid \(tid)) used \(growth) ns of CPU time in \(elapsed / 1_000_000) ms while parked")
            parkedWatch[cpu] = (monotonicNanoseconds(), time)
        }
    }

    // MARK: Lifecycle

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

    // MARK: Scenarios

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

    /// STOP an idle CPU; while it is stopped, a second EXTERNAL_CALL gets cc 1 + 0x80 and emergency signals queue;
    /// START delivers them, once each.
    func stopAndExternalCall() throws {
        guard let target = randomOnline() else { return }
        try order(target, .stop, expect: [Demo.cc0], "an operating")
        let stopped = waitUntil(2_000) { (try? machine.runState(of: target)) == .stopped }
        try check(stopped, "STOP stops the CPU", "logical CPU \(target) run state \(try machine.runState(of: target))")
        try order(target, .sense, expect: [Demo.cc1(.stopped)], "a stopped")
        try order(target, .senseRunning, expect: [Demo.cc1(.notRunning)], "a stopped")
        try order(target, .stop, expect: [Demo.cc0], "an already stopped")
        try order(target, .conditionalEmergencySignal, expect: [Demo.cc0], "a stopped (not running)")
        let first = parameter(), second = parameter()
        try order(target, .externalCall, parameter: first, expect: [Demo.cc0], "a stopped")
        try order(target, .externalCall, parameter: second, expect: [Demo.cc1(.externalCallPending)],
                  "a stopped, call-pending")
        try order(target, .sense, expect: [Demo.cc1([.stopped, .externalCallPending])], "a stopped, call-pending")
        let emergencies = Int.random(in: 1...3, using: &rng)
        for _ in 0..<emergencies { try order(target, .emergencySignal, expect: [Demo.cc0], "a stopped") }
        if machine.online.count > 1 {
            try expectError("offlining a CPU stopped by SIGP throws stoppedByOrder",
                            { $0 == .stoppedByOrder(cpu: target) }) {
                () throws(HotplugError) in try machine.offline(target)
            }
        }
        try check(recorder.snapshot(cpu: target) == expected[target], "a stopped CPU takes no interruption",
                  "logical CPU \(target) received \(recorder.snapshot(cpu: target)), expected \(expected[target])")
        try order(target, .start, expect: [Demo.cc0], "a stopped")
        expected[target].externalCalls.append(.init(parameter: first, source: nil))
        expected[target].emergencySignals += emergencies + 1
        try awaitInterrupts(target)
        try order(target, .sense, expect: [Demo.cc0], "a restarted")
        try order(target, .start, expect: [Demo.cc0], "an operating (no effect)")
        try order(target, .externalCall, parameter: second, expect: [Demo.cc0], "an operating (slot free again)")
        expected[target].externalCalls.append(.init(parameter: second, source: nil))
        try awaitInterrupts(target)
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

    /// STOP a CPU spinning in a cross-call: it stops inside the signal handler, its CPU time stops growing; START
    /// resumes it; STOP_AND_STORE_STATUS stores where it was.
    func stopRunning() throws {
        guard let target = randomOnline() else { return }
        let tid = try threadID(target, "online")
        let (spinner, call) = try startSpinner(on: target)
        try order(target, .senseRunning, expect: [Demo.cc0], "a running")
        try order(target, .sense, expect: [Demo.cc0], "a running")
        try order(target, .conditionalEmergencySignal, expect: [Demo.cc1(.incorrectState)], "a running")
        try awaitGrowth(target, tid, "a CPU in a spinning cross-call uses CPU time")

        let before = stats(target)
        try order(target, .stop, expect: [Demo.cc0], "a running")
        try check(try machine.runState(of: target) == .stopped, "STOP to a running CPU returns once it stopped",
                  "logical CPU \(target) run state \(try machine.runState(of: target))")
        let inHandler = waitUntil(1_000) { (stats(target)?.stopsInHandler ?? 0) > (before?.stopsInHandler ?? 0) }
        try check(inHandler, "a running CPU stops inside the signal handler", "logical CPU \(target): stopsInHandler did not grow")
        try awaitBlocked(target, tid, "a stopped CPU's")
        usleep(5_000)
        let t0 = try cpuTime(target, tid), w0 = monotonicNanoseconds()
        usleep(UInt32(Demo.parkedWindow / 1_000))
        let t1 = try cpuTime(target, tid), w1 = monotonicNanoseconds()
        stoppedChecks += 1
        maxStoppedGrowth = max(maxStoppedGrowth, t1 - t0)
        try check(ThreadProbe.isIdle(growth: t1 - t0, elapsed: w1 - w0), "STOP stops a CPU spinning in a cross-call",
                  "logical CPU \(target) (tid \(tid)) used \(t1 - t0) ns of CPU time in \((w1 - w0) / 1_000_000) ms while stopped")
        try order(target, .sense, expect: [Demo.cc1(.stopped)], "a stopped")
        try order(target, .senseRunning, expect: [Demo.cc1(.notRunning)], "a stopped")
        try order(target, .start, expect: [Demo.cc0], "a stopped")
        try awaitGrowth(target, tid, "START resumes a stopped CPU")

        try order(target, .stopAndStoreStatus, expect: [Demo.cc0], "a running")
        try check(try machine.runState(of: target) == .stopped, "STOP_AND_STORE_STATUS stops the CPU",
                  "logical CPU \(target) run state \(try machine.runState(of: target))")
        let status = try machine.storedStatus(of: target)
        try check((status?.instructionPointer ?? 0) != 0 && (status?.stackPointer ?? 0) != 0,
                  "STOP_AND_STORE_STATUS stores a non-zero instruction and stack pointer",
                  "logical CPU \(target): \(String(describing: status))")
        try order(target, .start, expect: [Demo.cc0], "a stopped")
        try finishSpinner(spinner, call, target)
        try awaitInterrupts(target)
    }

    /// A pending RESTART (the target runs a cross-call, so it cannot take it) makes every order but the resets
    /// answer cc 2. Either the CPU takes the restart when the call ends, or a CPU_RESET clears it (and stops the CPU).
    func restartBusy(thenReset: Bool) throws {
        guard let target = randomOnline() else { return }
        let (spinner, call) = try startSpinner(on: target)
        try order(target, .restart, expect: [Demo.cc0], "a running")
        for busyOrder in [SIGPOrder.sense, .senseRunning, .externalCall, .emergencySignal, .conditionalEmergencySignal,
                          .start, .stop, .stopAndStoreStatus, .restart] {
            try order(target, busyOrder, parameter: parameter(), expect: [Demo.cc2], "a restart-pending")
        }
        if thenReset {
            let reset: SIGPOrder = Bool.random(using: &rng) ? .cpuReset : .initialCPUReset
            try order(target, reset, expect: [Demo.cc0], "a restart-pending (resets are accepted)")
            let stopped = waitUntil(2_000) { (try? machine.runState(of: target)) == .stopped }
            try check(stopped, "\(reset) stops an operating CPU", "logical CPU \(target) run state \(try machine.runState(of: target))")
            try order(target, .sense, expect: [Demo.cc1(.stopped)], "a reset")
            try order(target, .start, expect: [Demo.cc0], "a reset")
        }
        try finishSpinner(spinner, call, target)
        if !thenReset { expected[target].restarts += 1 }
        try awaitInterrupts(target)
        try checkRunsOn(target)   // it passed a safe point: nothing else arrives
        try awaitInterrupts(target)
        try order(target, .sense, expect: [Demo.cc0], "an operating")
    }

    /// Resets clear pending interruptions; INITIAL_CPU_RESET also clears the status area; a reset stops an
    /// operating CPU.
    func resets() throws {
        guard let target = randomOnline() else { return }
        try order(target, .stopAndStoreStatus, expect: [Demo.cc0], "an operating")
        let stopped = waitUntil(2_000) { (try? machine.runState(of: target)) == .stopped }
        try check(stopped, "STOP_AND_STORE_STATUS stops the CPU", "logical CPU \(target) run state \(try machine.runState(of: target))")
        let status = try machine.storedStatus(of: target)
        try check((status?.instructionPointer ?? 0) != 0 && (status?.stackPointer ?? 0) != 0,
                  "STOP_AND_STORE_STATUS stores a non-zero instruction and stack pointer",
                  "logical CPU \(target): \(String(describing: status))")
        try order(target, .externalCall, parameter: parameter(), expect: [Demo.cc0], "a stopped")
        try order(target, .emergencySignal, expect: [Demo.cc0], "a stopped")
        try order(target, .sense, expect: [Demo.cc1([.stopped, .externalCallPending])], "a stopped, call-pending")
        try order(target, .cpuReset, expect: [Demo.cc0], "a stopped")
        try order(target, .sense, expect: [Demo.cc1(.stopped)], "a reset (call cleared)")
        try check(try machine.storedStatus(of: target) == status, "CPU_RESET keeps the status area",
                  "logical CPU \(target): \(String(describing: try machine.storedStatus(of: target)))")
        try order(target, .initialCPUReset, expect: [Demo.cc0], "a stopped")
        try check(try machine.storedStatus(of: target) == nil, "INITIAL_CPU_RESET clears the status area",
                  "logical CPU \(target): \(String(describing: try machine.storedStatus(of: target)))")
        try order(target, .start, expect: [Demo.cc0], "a reset")
        try checkRunsOn(target)
        try awaitInterrupts(target)   // the cleared call and signal never arrive

        // A reset to an operating CPU stops it.
        try order(target, .cpuReset, expect: [Demo.cc0], "an operating")
        let stoppedAgain = waitUntil(2_000) { (try? machine.runState(of: target)) == .stopped }
        try check(stoppedAgain, "CPU_RESET stops an operating CPU", "logical CPU \(target) run state \(try machine.runState(of: target))")
        try order(target, .start, expect: [Demo.cc0], "a reset")
        try checkRunsOn(target)
    }

    /// Orders that are not modelled answer cc 1 + INVALID_ORDER; no CPU (or standby) answers cc 3.
    func invalidOrders() throws {
        let present = Array(machine.present)
        if let target = present.randomElement(using: &rng) {
            let code = Demo.unmodelledOrders.randomElement(using: &rng)!
            try order(target, SIGPOrder(rawValue: code), expect: [Demo.cc1(.invalidOrder)], "a present (unmodelled order)")
        }
        if let standby = cpus(in: .standby).randomElement(using: &rng) {
            for o in [SIGPOrder.sense, .start, .externalCall, SIGPOrder(rawValue: 7)] {
                try order(standby, o, expect: [Demo.cc3], "a standby")
            }
        }
        try order(count, .sense, expect: [Demo.cc3], "a nonexistent (id = possible)")
        try order(-1, .stop, expect: [Demo.cc3], "a nonexistent (id -1)")
    }

    /// An external call sent by a logical CPU carries its id as the source.
    func externalCallFromCPU() throws {
        try ensureOnline(2)
        guard let source = randomOnline(), let target = randomOnline(except: source) else { return }
        let value = parameter()
        let beforeSource = stats(source), beforeTarget = stats(target)
        let result = try machine.run(on: source) { [machine] in try machine.sigp(target, .externalCall, parameter: value) }
        classify(source, since: beforeSource)
        classify(target, since: beforeTarget)
        runCalls += 1
        tally(.externalCall, result)
        try check(result == Demo.cc0, "SIGP EXTERNAL_CALL from a logical CPU", "CPU \(source) -> \(target): \(result)")
        expected[target].externalCalls.append(.init(parameter: value, source: source))
        try awaitInterrupts(target)
    }

    /// Orders to a parked CPU: none of them wakes its thread (its CPU time does not grow); interruptions stay
    /// pending until it comes online.
    func parkedOrders() throws {
        if cpus(in: .parked).isEmpty {
            if machine.online.count > 1, let victim = randomOnline() { try offline(victim) }
            else if let standby = cpus(in: .standby).first { try configure(standby) }
        }
        guard let target = cpus(in: .parked).randomElement(using: &rng) else { return }
        if parkedWatch[target] == nil { try armParkedWatch(target) }
        let callPending = !pending[target].externalCalls.isEmpty
        try order(target, .sense, expect: [Demo.cc1(callPending ? [.stopped, .externalCallPending] : .stopped)], "a parked")
        try order(target, .senseRunning, expect: [Demo.cc1(.notRunning)], "a parked")
        try order(target, .start, expect: [Demo.cc1(.incorrectState)], "a parked")
        try order(target, .restart, expect: [Demo.cc1(.incorrectState)], "a parked")
        try order(target, .stop, expect: [Demo.cc0], "a parked")
        try order(target, .stopAndStoreStatus, expect: [Demo.cc0], "a parked")
        let status = try machine.storedStatus(of: target)
        try check((status?.instructionPointer ?? 0) != 0 && (status?.stackPointer ?? 0) != 0,
                  "STOP_AND_STORE_STATUS on a parked CPU stores where it parked", "logical CPU \(target): \(String(describing: status))")
        if !callPending {
            let value = parameter()
            try order(target, .externalCall, parameter: value, expect: [Demo.cc0], "a parked")
            pending[target].externalCalls.append(.init(parameter: value, source: nil))
        }
        try order(target, .externalCall, parameter: parameter(), expect: [Demo.cc1(.externalCallPending)],
                  "a parked, call-pending")
        try order(target, .emergencySignal, expect: [Demo.cc0], "a parked")
        try order(target, .conditionalEmergencySignal, expect: [Demo.cc0], "a parked (not running)")
        pending[target].emergencySignals += 2
        try order(target, .sense, expect: [Demo.cc1([.stopped, .externalCallPending])], "a parked, call-pending")
        if Int.random(in: 0..<3, using: &rng) == 0 {
            try order(target, .initialCPUReset, expect: [Demo.cc0], "a parked")
            pending[target] = Interrupts()
            try check(try machine.storedStatus(of: target) == nil, "INITIAL_CPU_RESET clears the status area",
                      "logical CPU \(target)")
            try order(target, .sense, expect: [Demo.cc1(.stopped)], "a parked, reset,")
        }
        try check(recorder.snapshot(cpu: target) == expected[target], "a parked CPU takes no interruption",
                  "logical CPU \(target) received \(recorder.snapshot(cpu: target)), expected \(expected[target])")
        // None of these orders woke the parked thread.
        try checkParkedWatch(force: target)
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

    // MARK: Report

    struct Totals {
        var signalsSent: UInt64 = 0, signalsReceived: UInt64 = 0, futexWakes: UInt64 = 0, resends: UInt64 = 0
        var stopsInHandler: UInt64 = 0, stopsAtSafePoint: UInt64 = 0
    }

    /// The delivery counters of every CPU, summed.
    func deliveryTotals() -> Totals {
        var totals = Totals()
        for cpu in 0..<count {
            guard let s = stats(cpu) else { continue }
            totals.signalsSent += s.signalsSent
            totals.signalsReceived += s.signalsReceived
            totals.futexWakes += s.futexWakes
            totals.resends += s.resends
            totals.stopsInHandler += s.stopsInHandler
            totals.stopsAtSafePoint += s.stopsAtSafePoint
        }
        return totals
    }

    var orderCount: Int { ordersByCode.values.reduce(0) { $0 + $1.reduce(0, +) } }
    var lifecycleCount: Int { lifecycleOperations.values.reduce(0, +) }

    func printProgress() {
        let elapsed = Double(monotonicNanoseconds() - started) / 1e9
        report("[\(fixed(elapsed, 1)) s] iterations \(iterations), lifecycle operations \(lifecycleCount) "
               + "(\(cycles) cycles), orders \(orderCount), cross-calls \(runCalls + runOnEachTargets + submits), "
               + "checks \(checks); online \(machine.online), present \(machine.present)")
    }

    func printReport(totals: Totals, failed: Bool) {
        let elapsed = Double(monotonicNanoseconds() - started) / 1e9
        report("--- report after \(fixed(elapsed, 1)) s, \(iterations) iterations (seed \(seed)) ---")
        report("orders by condition code (\(orderCount) orders):")
        report("  " + pad("order", 24) + pad("cc 0", 8) + pad("cc 1", 8) + pad("cc 2", 8) + pad("cc 3", 8))
        for code in ordersByCode.keys.sorted() {
            let c = ordersByCode[code]!
            report("  " + pad(SIGPOrder(rawValue: code).description, 24) + c.map { pad("\($0)", 8) }.joined())
        }
        report("delivery counters (all CPUs): signals sent \(totals.signalsSent) (resends \(totals.resends)), "
               + "received \(totals.signalsReceived), futex wakes \(totals.futexWakes); stops in the handler "
               + "\(totals.stopsInHandler), at a safe point \(totals.stopsAtSafePoint)")
        let d = deliveries
        report("deliveries made by this demo: \(d.values.reduce(0, +)) = by signal \(d[.signal] ?? 0), "
               + "by futex wake \(d[.futexWake] ?? 0), with no wake-up (polling, stopped or parked target) \(d[.noWake] ?? 0)")
        let ops = ["configure", "online", "offline", "deconfigure"].map { "\($0) \(lifecycleOperations[$0] ?? 0)" }
        report("lifecycle: \(lifecycleCount) operations (\(ops.joined(separator: ", "))), \(cycles) cycles back online, "
               + "\(expectedErrors) expected errors")
        report("cross-calls: run(on:) \(runCalls), runOnEach \(runOnEachCalls) (\(runOnEachTargets) CPU calls), "
               + "submit \(submits)")
        report("measurements: parked windows \(parkedChecks) (max growth \(maxParkedGrowth) ns), stopped windows "
               + "\(stoppedChecks) (max growth \(maxStoppedGrowth) ns), pinning checks \(pinChecks)")
        report("scenarios: " + scenarios.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        report("checks passed: \(failed ? checks - 1 : checks)\(failed ? ", 1 failed" : "")")
    }
}

SIGPDemo.main()
