import ExampleSupport
import Hotplug

// The progress line (every 2 s) and the final report: orders by condition code, deliveries, lifecycle
// operations, cross-calls, measurements and scenarios.
extension Demo {
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
