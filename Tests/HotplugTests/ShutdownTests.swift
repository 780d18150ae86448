import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// In a child process of an exit test: a failed check prints why and exits 3.
private func check(_ condition: Bool, _ message: String) {
    if !condition {
        FileHandle.standardError.write(Data("check failed: \(message)\n".utf8))
        exit(3)
    }
}

/// Shutdown with a CPU that cannot stop: the others go down, the busy one is reported and left running, and a SIGP
/// signal still pending on it never kills the process.
@Suite struct ShutdownTests {
    @Test func aShutdownWithEveryCPUIdleLeavesNoneRunning() throws {
        let m = try Machine(cpus: 3)
        let tids = try (0..<3).map { try #require(try m.threadID(of: $0)) }
        #expect(m.shutdown().isEmpty)
        #expect(m.present.isEmpty)
        #expect(tids.allSatisfy { !threadExists($0) })
        #expect(m.shutdown().isEmpty)   // idempotent
    }

    /// In a child process: the signal's disposition is process-wide, and before the fix the process died.
    @Test func aBusyCPUIsLeftRunningAloneAndAPendingSignalDoesNotKillTheProcess() async {
        await #expect(processExitsWith: .success) {
            final class Flags: Sendable {
                let entered = Atomic<Bool>(false)
                let release = Atomic<Bool>(false)
                let survived = Atomic<Bool>(false)
            }
            let flags = Flags()
            let m = try Machine(cpus: 4, configuration: .init(responseTimeout: .milliseconds(200),
                                                              resendInterval: .milliseconds(5)))
            let signal = m.signal
            let tids = try (0..<4).map { cpu in try m.threadID(of: cpu) ?? -1 }
            // CPU 2: a long cross-call with its signal blocked, so that a SIGP sent to it now stays pending.
            try m.submit(on: 2) {
                try? Shim.blockSIGP(true)
                flags.entered.store(true, ordering: .releasing)
                let deadline = ContinuousClock.now + .seconds(20)
                while !flags.release.load(ordering: .acquiring) && ContinuousClock.now < deadline { usleep(100) }
                // Unblocks the signal number itself (not through the runtime, which may no longer name it): the
                // pending signal is delivered here, as it is to a busy CPU that a sender signalled just before the
                // shutdown and that runs again only after it.
                var set = sigset_t()
                sigemptyset(&set)
                sigaddset(&set, signal)
                pthread_sigmask(SIG_UNBLOCK, &set, nil)
                flags.survived.store(true, ordering: .releasing)
            }
            check(eventually { flags.entered.load(ordering: .acquiring) }, "CPU 2 never entered its call")
            _ = try? m.sigp(2, .emergencySignal)   // not acknowledged: stays pending on CPU 2
            let started = ContinuousClock.now
            let left = m.shutdown()
            let took = ContinuousClock.now - started
            check(left == [2], "shutdown left \(left) running, expected [2]")
            check(took < .seconds(5), "shutdown took \(took)")
            check(m.present.isEmpty && m.online.isEmpty, "masks after shutdown: present \(m.present), online \(m.online)")
            for cpu in [0, 1, 3] { check(eventually { !threadExists(tids[cpu]) }, "CPU \(cpu)'s thread still exists") }
            check(threadExists(tids[2]), "CPU 2's thread is gone while its call runs")
            check(Shim.signalDisposition(signal) != nil, "the SIGP handler was removed while CPU 2's thread runs")
            flags.release.store(true, ordering: .releasing)
            check(eventually { flags.survived.load(ordering: .acquiring) }, "CPU 2 did not finish its call")
            // At its next safe point the thread left running goes offline and exits; the last one out restores the
            // signal's default disposition.
            check(eventually { !threadExists(tids[2]) }, "CPU 2's thread did not exit after its call")
            check(eventually { Shim.signalDisposition(signal) == nil }, "the default disposition did not come back")
            #expect(throws: HotplugError.shutDown) { try m.online(0) }
        }
    }

    /// The async shutdown drains and joins on a thread of its own: with more shutdowns waiting than the
    /// cooperative pool has threads, each held up by a tasklet that waits for a task of the pool, that task still
    /// runs. A shutdown that drained on the pool's threads would leave it none, and the tasklets would give up.
    /// In a child process: there the pool runs nothing else (in this one, other tests hold its threads).
    @Test func anAsyncShutdownLeavesTheCooperativePoolFree() async {
        await #expect(processExitsWith: .success) {
            final class Flags: Sendable {
                let released = Atomic<Bool>(false)
                let gaveUp = Atomic<Int>(0)
                let running = Atomic<Int>(0)
            }
            let flags = Flags()
            let count = 2 * ProcessInfo.processInfo.activeProcessorCount + 2
            var machines: [Machine] = []
            for _ in 0..<count {
                let m = try Machine(cpus: 1)
                let tasklet = Tasklet(m) {
                    flags.running.add(1, ordering: .relaxed)
                    let deadline = ContinuousClock.now + .seconds(10)
                    while !flags.released.load(ordering: .acquiring) {
                        if ContinuousClock.now > deadline { flags.gaveUp.add(1, ordering: .relaxed); return }
                        usleep(1_000)
                    }
                }
                _ = try tasklet.schedule()
                machines.append(m)
            }
            check(eventually { flags.running.load(ordering: .relaxed) == count }, "the tasklets did not start")
            let all = machines
            let reports = await withTaskGroup(of: Machine.ShutdownReport.self) { group in
                for m in all {
                    group.addTask { await m.shutdown(drainingTasklets: .seconds(20)) }
                }
                group.addTask {
                    try? await Task.sleep(for: .milliseconds(200))   // the shutdowns are waiting by now
                    flags.released.store(true, ordering: .releasing)   // partner of the tasklets' acquire
                    return Machine.ShutdownReport(drainError: nil, leftRunning: [])
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            check(flags.gaveUp.load(ordering: .relaxed) == 0,
                  "\(flags.gaveUp.load(ordering: .relaxed)) tasklets gave up waiting for a task of the pool")
            check(reports.count == count + 1 && reports.allSatisfy { $0.drainError == nil && $0.leftRunning.isEmpty },
                  "reports \(reports)")
            check(all.allSatisfy { $0.present.isEmpty }, "a machine kept CPUs")
            // Idempotent, and a drain of a shut-down machine is not an error.
            let again = await all[0].shutdown(drainingTasklets: nil)
            check(again == Machine.ShutdownReport(drainError: nil, leftRunning: []), "again: \(again)")
        }
    }
}
