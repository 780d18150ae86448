import ExampleSupport
import Hotplug
import Logging

/// The demo: the state it keeps between steps (what each CPU's handler must have received, the parked CPUs it
/// watches, the tallies for the report) and its main loop. The checks, the lifecycle steps, the scenarios and the
/// report are extensions in the other files of this folder.
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

}
