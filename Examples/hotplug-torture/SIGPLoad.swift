import ExampleSupport
import Hotplug
import Synchronization

/// SIGP orders to random CPUs while they come and go, from worker threads and from logical CPUs, and the ledger of
/// the interruptions they leave.
///
/// Only orders that leave a CPU running are sent: SENSE, SENSE_RUNNING, EXTERNAL_CALL, EMERGENCY_SIGNAL and
/// CONDITIONAL_EMERGENCY_SIGNAL (a STOP would hold a CPU, and every hotplug operation with it, until a START). Every
/// answer must be one that docs/ARCHITECTURE.md, "SIGP orders", documents for a CPU that is online, parked or
/// changing between the two: never busy (nothing here leaves a STOP or RESTART pending; with `--misuse` the STOP
/// storms do, and busy is then documented), never not-operational (no CPU is in standby), never check-stop (every
/// CPU answers its signals in time).
///
/// Each accepted external call and emergency signal must reach the interrupt handler exactly once: at once on an
/// online CPU, when it comes back on a parked one. The ledger is kept like the tasklets': the credit is raised
/// before the order is sent and lowered when it is not accepted, so the handler never sees more than the credit;
/// at the end, with every CPU online and idle, received == accepted.
final class SIGPLoad: Sendable {
    enum Kind: Int, CaseIterable { case externalCall, emergencySignal }

    private let checks: Checks
    private let credit: [[Counter]]     // [kind][cpu]
    private let received: [[Counter]]   // [kind][cpu]
    let restartsReceived = Counter()
    /// Orders sent, by order and condition code.
    private let answers: [UInt8: [Counter]]
    static let orders: [SIGPOrder] = [.sense, .senseRunning, .externalCall, .emergencySignal, .conditionalEmergencySignal]

    /// `--misuse`: STOP storms leave a STOP pending now and then, and every order but the resets answers busy
    /// (cc 2) meanwhile.
    private let stopsPending: Bool

    init(cpus: Int, checks: Checks, stopsPending: Bool) {
        self.checks = checks
        self.stopsPending = stopsPending
        credit = Kind.allCases.map { _ in (0..<cpus).map { _ in Counter() } }
        received = Kind.allCases.map { _ in (0..<cpus).map { _ in Counter() } }
        answers = Dictionary(uniqueKeysWithValues: SIGPLoad.orders.map { ($0.rawValue, (0..<4).map { _ in Counter() }) })
    }

    // MARK: The interrupt handler (on the target CPU's thread, at its safe point)

    func handle(cpu: Int, _ interruption: SIGPInterruption) {
        let kind: Kind
        switch interruption {
        case .externalCall: kind = .externalCall
        case .emergencySignal: kind = .emergencySignal
        case .restart:
            restartsReceived.add()
            checks.fail(.sigp, "logical CPU \(cpu) received a restart, but no RESTART was sent")
            return
        }
        let got = received[kind.rawValue][cpu].add()
        // Acquire: partner of send's release of the credit (the order's post orders the two as well).
        let allowed = credit[kind.rawValue][cpu].value.load(ordering: .acquiring)
        checks.check(.sigp, got <= allowed,
                     "logical CPU \(cpu) received \(got) \(kind)s, but at most \(allowed) were accepted")
    }

    // MARK: Sending

    /// Sends one order and checks its answer. Returns false only for a violation.
    @discardableResult
    func send(_ machine: Machine, to cpu: Int, _ order: SIGPOrder, parameter: UInt32) -> Bool {
        let kind: Kind? = switch order {
        case .externalCall: .externalCall
        case .emergencySignal, .conditionalEmergencySignal: .emergencySignal
        default: nil
        }
        // Release: partner of the handler's acquiring load.
        if let kind { credit[kind.rawValue][cpu].value.add(1, ordering: .releasing) }
        let result: SIGPResult
        do {
            result = try machine.sigp(cpu, order, parameter: parameter)
        } catch {
            // An order whose signal was not acknowledged stays posted (it is delivered later): it keeps its credit.
            var posted = false
            if case .notResponding = error { posted = true }
            if let kind, !posted { credit[kind.rawValue][cpu].add(-1) }
            checks.fail(.sigp, "SIGP \(order) from \(machine.currentCPU.map { "logical CPU \($0)" } ?? "a worker thread") "
                        + "to logical CPU \(cpu) threw \(error)")
            return false
        }
        answers[order.rawValue]?[result.conditionCode.rawValue].add()
        if let kind, result.conditionCode != .accepted { credit[kind.rawValue][cpu].add(-1) }
        let documented = SIGPLoad.isDocumented(result, for: order) || (stopsPending && result.conditionCode == .busy)
        return checks.check(.sigp, documented,
                            "SIGP \(order) to logical CPU \(cpu) answered \(result)")
    }

    /// The documented answers for a CPU that is online, parked (stopped), or on its way between the two.
    static func isDocumented(_ result: SIGPResult, for order: SIGPOrder) -> Bool {
        switch (order, result.conditionCode) {
        case (_, .accepted): return result.status.isEmpty
        case (.sense, .statusStored):
            return !result.status.isEmpty && result.status.isSubset(of: [.stopped, .externalCallPending])
        case (.senseRunning, .statusStored): return result.status == .notRunning
        case (.externalCall, .statusStored): return result.status == .externalCallPending
        case (.conditionalEmergencySignal, .statusStored): return result.status == .incorrectState
        default: return false
        }
    }

    // MARK: The end

    /// Waits (bounded) until every accepted interruption was received; call it with every CPU online and no order
    /// being sent. Then checks received == accepted for every CPU.
    func settle(cpus: Int, except parked: Set<Int> = [], timeoutMilliseconds: Int64) {
        let pairs = Kind.allCases.flatMap { kind in (0..<cpus).filter { !parked.contains($0) }.map { (kind, $0) } }
        _ = waitUntil(timeoutMilliseconds) {
            pairs.allSatisfy { kind, cpu in received[kind.rawValue][cpu].load == credit[kind.rawValue][cpu].load }
        }
        for (kind, cpu) in pairs {
            let got = received[kind.rawValue][cpu].load, accepted = credit[kind.rawValue][cpu].load
            checks.check(.sigp, got == accepted,
                         "logical CPU \(cpu): \(accepted) \(kind)s accepted, \(got) received by the handler")
        }
    }

    /// Orders sent, by order name and condition code 0...3.
    var answerCounts: [(order: SIGPOrder, byCode: [Int])] {
        SIGPLoad.orders.map { order in (order, answers[order.rawValue]?.map(\.load) ?? []) }
    }

    var total: Int { answers.values.reduce(0) { $0 + $1.reduce(0) { $0 + $1.load } } }

    func accepted(_ kind: Kind) -> Int { credit[kind.rawValue].reduce(0) { $0 + $1.load } }
    func receivedTotal(_ kind: Kind) -> Int { received[kind.rawValue].reduce(0) { $0 + $1.load } }
}
