import Hotplug
import Synchronization

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
