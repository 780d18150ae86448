import ExampleSupport
import Hotplug

/// The first check that did not hold: its name and what was seen instead.
struct CheckFailed: Error {
    let check: String
    let detail: String
}

/// How a delivery reached its target, told apart by the target's delivery counters before and after.
enum Delivery { case signal, futexWake, noWake }

// Check bookkeeping: every check counts, the first that fails ends the run with its name and what was seen.
// Sending an order goes through `order(_:_:parameter:expect:_:)`, which checks its answer and tallies it; waits are
// bounded (a few seconds), so that a broken expectation fails instead of hanging.
extension Demo {
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
}
