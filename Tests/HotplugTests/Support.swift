import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// Polls `condition` until it holds or `timeout` passes (every wait in the tests is bounded).
func eventually(timeout: Duration = .seconds(5), _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try condition() { return true }
        usleep(200)
    }
    return try condition()
}

/// `Cpus_allowed_list` of a thread of this process, as the kernel reports it.
func allowedCPUs(ofThread tid: Int32) throws -> String {
    guard let status = KernelFile.read("/proc/self/task/\(tid)/status") else {
        throw HotplugError.invalidConfiguration("cannot read the status of thread \(tid)")
    }
    guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }) else {
        throw HotplugError.invalidConfiguration("no Cpus_allowed_list for thread \(tid)")
    }
    return line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)
}

func threadExists(_ tid: Int32) -> Bool {
    FileManager.default.fileExists(atPath: "/proc/self/task/\(tid)")
}

/// CPU time of a thread of this process, in nanoseconds.
func cpuTime(_ tid: Int32) throws -> Int64 { try Shim.threadCPUTime(tid) }

/// Counts interruptions per CPU, for machines' interrupt handlers.
final class InterruptLog: Sendable {
    private let entries = Locked<[(cpu: Int, interruption: SIGPInterruption, thread: Int32)]>([])

    var handler: @Sendable (Int, SIGPInterruption) -> Void {
        { cpu, interruption in
            let tid = Shim.currentThreadID
            self.entries.withLock { $0.append((cpu, interruption, tid)) }
        }
    }

    func count(_ cpu: Int, _ match: (SIGPInterruption) -> Bool = { _ in true }) -> Int {
        entries.withLock { $0.filter { $0.cpu == cpu && match($0.interruption) }.count }
    }

    func all(_ cpu: Int) -> [SIGPInterruption] { entries.withLock { $0.filter { $0.cpu == cpu }.map(\.interruption) } }
    func threads(_ cpu: Int) -> Set<Int32> { Set(entries.withLock { $0.filter { $0.cpu == cpu }.map(\.thread) }) }
}

/// A flag a cross-call body spins on, so that a CPU keeps running code until the test releases it.
final class Gate: Sendable {
    private let open = Atomic<Bool>(false)
    private let entered = Atomic<Bool>(false)
    let spins = Atomic<UInt64>(0)

    func release() { open.store(true, ordering: .releasing) }
    var hasEntered: Bool { entered.load(ordering: .acquiring) }

    /// Spins in user code (no system calls) until released or `limit` passes.
    func spin(limit: Duration = .seconds(20)) {
        entered.store(true, ordering: .releasing)
        let deadline = ContinuousClock.now + limit
        var i: UInt64 = 0
        while !open.load(ordering: .acquiring) {
            i &+= 1
            spins.add(1, ordering: .relaxed)
            if i & 0xFFFF == 0, ContinuousClock.now > deadline { break }
        }
    }
}

/// Iterations for stress loops: short by default, long with HOTPLUG_STRESS=long (or a number).
func stressIterations(_ short: Int, long: Int) -> Int {
    guard let value = ProcessInfo.processInfo.environment["HOTPLUG_STRESS"] else { return short }
    if value == "long" { return long }
    return Int(value) ?? short
}

/// True when the tests run under ThreadSanitizer (its runtime is linked in).
let runningUnderThreadSanitizer = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__tsan_init") != nil
