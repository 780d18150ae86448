import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// Calls made from where they would wait for their caller (a CPU taking itself offline, a hotplug call from a
/// hotplug callback, a stop_machine inside a stop_machine) fail at once with `HotplugError.wouldDeadlock`, and the
/// same calls from the right place still work (docs/ARCHITECTURE.md, "Rules for callbacks and bodies").
///
/// Every case runs in a child process (an exit test) under a watchdog: a call that deadlocks makes the child exit
/// with status 3 after `childLimit`, so the test fails within seconds instead of hanging the run.
@Suite struct ReentrancyTests {
    @Test func aCPUCannotTakeItselfDownFromACrossCallOrATasklet() async throws {
        await #expect(processExitsWith: .success) {
            startWatchdog()
            let m = try Machine(cpus: 3, configuration: .init(responseTimeout: .seconds(2)))
            defer { m.shutdown() }
            // A cross-call on CPU 1 offlining CPU 1.
            let offline = try m.run(on: 1) { () -> HotplugError? in
                do throws(HotplugError) { try m.offline(1) } catch { return error }
                return nil
            }
            childExpect(offline == .wouldDeadlock(operation: .offline, reason: .calledOnTargetCPU), "run(on: 1) { offline(1) }: \(String(describing: offline))")
            // Deconfiguring its own CPU (its thread cannot join itself).
            let deconfigure = try m.run(on: 1) { () -> HotplugError? in
                do throws(HotplugError) { try m.deconfigure(1) } catch { return error }
                return nil
            }
            childExpect(deconfigure == .wouldDeadlock(operation: .deconfigure, reason: .calledOnTargetCPU), "run(on: 1) { deconfigure(1) }: \(String(describing: deconfigure))")
            // A tasklet on CPU 2 offlining CPU 2.
            let fromTasklet = Locked<HotplugError??>(nil)
            let tasklet = Tasklet(m) {
                do throws(HotplugError) { try m.offline(m.currentCPU ?? -1) } catch { fromTasklet.withLock { $0 = .some(error) }; return }
                fromTasklet.withLock { $0 = .some(nil) }
            }
            try tasklet.schedule(on: 2)
            childExpect(eventually { fromTasklet.withLock { $0 != nil } }, "the tasklet on CPU 2 did not finish")
            let taskletError = fromTasklet.withLock { $0 } ?? nil
            childExpect(taskletError == .wouldDeadlock(operation: .offline, reason: .calledOnTargetCPU), "tasklet offline(2) on CPU 2: \(String(describing: taskletError))")
            childExpect(m.online == [0, 1, 2], "nothing went offline: \(m.online)")
            // The same from the right place: CPU 0 offlines CPU 1 (inside run(on: 0)), a tasklet on CPU 0 brings it
            // back, and a cross-call handed to another CPU takes CPU 2 down after the caller's code returned.
            try m.run(on: 0) { () throws in try m.offline(1) }
            childExpect(m.online == [0, 2], "offline(1) from CPU 0: \(m.online)")
            let back = Locked<HotplugError??>(nil)
            let onliner = Tasklet(m) {
                do throws(HotplugError) { try m.online(1) } catch { back.withLock { $0 = .some(error) }; return }
                back.withLock { $0 = .some(nil) }
            }
            try onliner.schedule(on: 0)
            childExpect(eventually { back.withLock { $0 != nil } } && m.online == [0, 1, 2], "online(1) from a tasklet on CPU 0: \(m.online)")
            _ = try m.run(on: 2) { () throws -> CrossCall in
                try m.submit(on: 0) { try? m.offline(2) }
            }
            childExpect(eventually { m.online == [0, 1] }, "offline(2) handed to CPU 0: \(m.online)")
            try m.offline(1)
            try m.deconfigure(1)
            childExpect(m.present == [0, 2], "deconfigure(1) from outside: \(m.present)")
        }
    }

    @Test func shutdownFromACallbackOrABodyRunsAfterTheOperation() async throws {
        await #expect(processExitsWith: .success) {
            startWatchdog()
            // From a PREPARE callback: shutdown returns at once, the attach completes, then the machine shuts down.
            let m = try Machine(cpus: 3, configuration: .init(initiallyOnline: 2))
            let returned = Locked<CPUSet?>(nil)
            try m.hotplug.register("test:shutdown", section: .prepare, invokeOnExisting: false,
                                   startup: { _ in returned.withLock { $0 = m.shutdown() } }, teardown: nil)
            try m.configure(2)
            try m.online(2)
            childExpect(returned.withLock { $0 } == [], "shutdown from a callback returned \(String(describing: returned.withLock { $0 }))")
            childExpect(eventually { m.present.isEmpty }, "the handed-over shutdown did not take the CPUs down: \(m.present)")
            do throws(HotplugError) { try m.online(1); childExpect(false, "online after shutdown did not throw") }
            catch { childExpect(error == .shutDown, "online after shutdown: \(error)") }
            // From a stop_machine body.
            let n = try Machine(cpus: 2)
            try n.stopMachine { _ in _ = n.shutdown() }
            childExpect(eventually { n.present.isEmpty }, "shutdown from a stop_machine body: \(n.present)")
        }
    }

    @Test func aStopMachineBodyCannotOfflineNestOrWaitForAnotherCPU() async throws {
        await #expect(processExitsWith: .success) {
            startWatchdog()
            let m = try Machine(cpus: 3, configuration: .init(responseTimeout: .seconds(2)))
            defer { m.shutdown() }
            let errors = Locked<[String: HotplugError]>([:])
            let started = ContinuousClock.now
            try m.stopMachine(active: [0]) { _ in
                func record(_ what: String, _ call: () throws -> Void) {
                    do { try call() } catch { errors.withLock { $0[what] = asHotplugError(error) } }
                }
                record("offline") { try m.offline(1) }
                record("online") { try m.online(1) }
                record("register") { _ = try m.hotplug.register("test:late", section: .online, startup: nil, teardown: nil) }
                record("stopMachine") { try m.stopMachine { _ in } }
                record("run") { _ = try m.run(on: 1) { 1 } }
                record("runOnEach") { _ = try m.runOnEach { $0 } }
            }
            childExpect(ContinuousClock.now - started < .seconds(1), "the refusals took \(ContinuousClock.now - started)")
            let seen = errors.withLock { $0 }
            for (what, operation) in [("offline", HotplugOperation.offline), ("online", .online),
                                      ("register", .registration), ("stopMachine", .stopMachine),
                                      ("run", .crossCall), ("runOnEach", .crossCall)] {
                childExpect(seen[what] == .wouldDeadlock(operation: operation, reason: .insideStopMachine),
                            "\(what) inside stop_machine: \(String(describing: seen[what]))")
            }
            // What a body may call: a cross-call on its own CPU runs inline, one to another CPU is posted and runs
            // after the stop_machine, the read lock is already held, an order to itself waits for its safe point.
            let ranAfter = Atomic<Int>(0)
            let inBody = Locked<[String]>([])
            try m.stopMachine(active: [1]) { cpu in
                if (try? m.run(on: cpu) { 7 }) == 7 { inBody.withLock { $0.append("run on itself") } }
                if (try? m.submit(on: 2) { ranAfter.store(1, ordering: .releasing) }) != nil {
                    inBody.withLock { $0.append("submit") }
                }
                if ranAfter.load(ordering: .acquiring) == 0 { inBody.withLock { $0.append("not yet") } }
                if m.withCPUsReadLocked({ m.online }) == [0, 1, 2] { inBody.withLock { $0.append("read locked") } }
            }
            childExpect(ContinuousClock.now - started < .seconds(2), "the allowed calls took \(ContinuousClock.now - started)")
            childExpect(inBody.withLock { $0 } == ["run on itself", "submit", "not yet", "read locked"], "\(inBody.withLock { $0 })")
            childExpect(eventually { ranAfter.load(ordering: .acquiring) == 1 }, "the posted call did not run")
            // Waiting for a call to a stopped CPU cancels it at once.
            let waited = Locked<Bool?>(nil)
            try m.stopMachine(active: [0]) { _ in
                let call = try? m.submit(on: 2) {}
                waited.withLock { $0 = call?.wait() }
            }
            childExpect(waited.withLock { $0 } == false, "wait() inside stop_machine: \(String(describing: waited.withLock { $0 }))")
            // From the right place: stop_machine from a cross-call, offline from outside, afterwards.
            let ran = Atomic<Int>(0)
            try m.run(on: 2) { () throws in try m.stopMachine { _ in ran.add(1, ordering: .relaxed) } }
            childExpect(ran.load(ordering: .relaxed) == 1, "stopMachine from a cross-call")
            try m.offline(1)
            childExpect(m.online == [0, 2], "offline(1) afterwards: \(m.online)")
        }
    }

    @Test func hotplugCallsFromAPrepareCallbackAreRefused() async throws {
        await #expect(processExitsWith: .success) {
            startWatchdog()
            try callsFromACallback(section: .prepare)
        }
    }

    @Test func hotplugCallsFromAnOnlineCallbackAreRefused() async throws {
        await #expect(processExitsWith: .success) {
            startWatchdog()
            try callsFromACallback(section: .online)
        }
    }

    /// A STARTING callback runs inside stop_machine: a stop_machine or a cross-call to another CPU is refused.
    @Test func callsFromAStartingCallbackAreRefused() async throws {
        await #expect(processExitsWith: .success) {
            startWatchdog()
            let m = try Machine(cpus: 3, configuration: .init(initiallyOnline: 2, responseTimeout: .seconds(2)))
            defer { m.shutdown() }
            let errors = Locked<[String: HotplugError]>([:])
            try m.hotplug.register("test:starting", section: .starting, invokeOnExisting: false, startup: { cpu in
                guard cpu == 2 else { return }
                do throws(HotplugError) { try m.stopMachine { _ in } } catch { errors.withLock { $0["stopMachine"] = error } }
                do throws(HotplugError) { _ = try m.run(on: 0) { 0 } } catch { errors.withLock { $0["run"] = error } }
                do throws(HotplugError) { try m.offline(1) } catch { errors.withLock { $0["offline"] = error } }
            }, teardown: nil)
            try m.configure(2)
            try m.online(2)
            let seen = errors.withLock { $0 }
            childExpect(seen["stopMachine"] == .wouldDeadlock(operation: .stopMachine, reason: .insideHotplugCallback), "stopMachine: \(String(describing: seen["stopMachine"]))")
            childExpect(seen["run"] == .wouldDeadlock(operation: .crossCall, reason: .insideStopMachine), "run(on: 0): \(String(describing: seen["run"]))")
            childExpect(seen["offline"] == .wouldDeadlock(operation: .offline, reason: .insideHotplugCallback), "offline: \(String(describing: seen["offline"]))")
            childExpect(m.online == [0, 1, 2], "the attach completed: \(m.online)")
        }
    }

    /// A cross-call accepted by a CPU just before it goes offline runs on the way down, while the detach waits for
    /// that CPU to park: a hotplug operation from it is refused.
    @Test func aCrossCallRunOnTheWayOfflineCannotStartAnOperation() async throws {
        await #expect(processExitsWith: .success) {
            startWatchdog()
            let m = try Machine(cpus: 3, configuration: .init(responseTimeout: .seconds(2)))
            defer { m.shutdown() }
            let result = Locked<HotplugError??>(nil)
            try m.hotplug.register("test:dying", section: .starting, invokeOnExisting: false, startup: nil, teardown: { cpu in
                guard cpu == 1 else { return }
                // Queued on the dying CPU itself, inside the stop_machine that takes it down: it runs when the CPU
                // finishes its accepted calls before parking.
                _ = try? m.submit(on: 1) {
                    do throws(HotplugError) { try m.offline(2) } catch { result.withLock { $0 = .some(error) }; return }
                    result.withLock { $0 = .some(nil) }
                }
            })
            try m.offline(1)
            let seen = result.withLock { $0 } ?? nil
            childExpect(seen == .wouldDeadlock(operation: .offline, reason: .callerGoingOffline), "offline(2) on the way down: \(String(describing: seen))")
            childExpect(m.online == [0, 2], "\(m.online)")
        }
    }

    /// A SIGP STOP a CPU sends itself stops it right there, as on S/390, until another CPU STARTs it.
    @Test func aCPUThatStopsItselfWaitsForAStart() async throws {
        await #expect(processExitsWith: .success) {
            startWatchdog()
            let m = try Machine(cpus: 2, configuration: .init(responseTimeout: .seconds(2)))
            defer { m.shutdown() }
            let resumed = Atomic<Bool>(false)
            let call = try m.submit(on: 1) {
                _ = try? m.sigp(1, .stop)
                resumed.store(true, ordering: .releasing)
            }
            childExpect(eventually { (try? m.runState(of: 1)) == .stopped }, "CPU 1 did not stop")
            childExpect(!resumed.load(ordering: .acquiring), "CPU 1 went on while stopped")
            childExpect(try m.sigp(1, .start).conditionCode == .accepted, "START")
            childExpect(call.wait(timeout: .seconds(5)) && resumed.load(ordering: .acquiring), "CPU 1 did not resume")
        }
    }
}

// MARK: Inside the child process

/// Hotplug calls made from a callback of `section` while CPU 2 attaches: each is refused with
/// `.insideHotplugCallback`, a cross-call the callback waits for inherits the refusal, `withCPUsReadLocked` and
/// `hotplug.disable()` work, and the attach itself completes.
private func callsFromACallback(section: HotplugSection) throws {
    let m = try Machine(cpus: 4, configuration: .init(initiallyOnline: 3, responseTimeout: .seconds(2)))
    defer { m.shutdown() }
    let errors = Locked<[String: HotplugError]>([:])
    let worked = Locked<[String]>([])
    try m.hotplug.register("test:reenter", section: section, invokeOnExisting: false, startup: { cpu in
        guard cpu == 3 else { return }
        func record(_ what: String, _ call: () throws -> Void) {
            do { try call() } catch { errors.withLock { $0[what] = asHotplugError(error) } }
        }
        record("register") { _ = try m.hotplug.register("test:nested", section: .online, startup: nil, teardown: nil) }
        record("online") { try m.online(1) }
        record("offline") { try m.offline(1) }
        record("configure") { try m.configure(2) }
        record("stopMachine") { try m.stopMachine { _ in } }
        // A cross-call the callback waits for runs in its context.
        let nested = try m.run(on: 0) { () -> HotplugError? in
            do throws(HotplugError) { try m.offline(1) } catch { return error }
            return nil
        }
        if let nested { errors.withLock { $0["run { offline }"] = nested } }
        if m.withCPUsReadLocked({ m.online.contains(0) }) { worked.withLock { $0.append("read locked") } }
        m.hotplug.disable()
        worked.withLock { $0.append("disabled") }
    }, teardown: nil)
    try m.configure(3)
    try m.online(3)
    let seen = errors.withLock { $0 }
    for (what, operation) in [("register", HotplugOperation.registration), ("online", .online), ("offline", .offline),
                              ("configure", .configure), ("stopMachine", .stopMachine), ("run { offline }", .offline)] {
        childExpect(seen[what] == .wouldDeadlock(operation: operation, reason: .insideHotplugCallback),
                    "\(section) callback, \(what): \(String(describing: seen[what]))")
    }
    childExpect(worked.withLock { $0 } == ["read locked", "disabled"], "\(section) callback: \(worked.withLock { $0 })")
    childExpect(m.online == [0, 1, 2, 3], "the attach completed: \(m.online)")
    // disable() from the callback took effect after the attach; registration still works from outside.
    do throws(HotplugError) {
        try m.offline(1)
        childExpect(false, "offline(1) while disabled succeeded")
    } catch {
        childExpect(error == .busy(cpu: 1, reason: .hotplugDisabled), "offline(1) while disabled: \(error)")
    }
    m.hotplug.enable()
    try m.offline(1)
    childExpect(m.hotplug.states.contains { $0.name == "test:reenter" }, "the state is registered")
    try m.hotplug.register("test:after", section: .online, startup: nil, teardown: nil)
}

/// How long a child may run before the watchdog ends it: each case takes well under a second when nothing
/// deadlocks; a response timeout (2 s in these machines) may pass once or twice before a deadlock shows.
private let childLimit: Duration = .seconds(10)

/// Starts the watchdog of a child process: after `childLimit` it records the deadlock and exits with status 3.
private func startWatchdog() {
    Thread.detachNewThread {
        Thread.sleep(forTimeInterval: Double(childLimit.components.seconds))
        Issue.record("deadlock: the child did not finish within \(childLimit)")
        _exit(3)
    }
}

/// A callback's error as a `HotplugError` (any other error as an `.invalidConfiguration` naming it, which no
/// expectation here matches).
private func asHotplugError(_ error: any Error) -> HotplugError {
    (error as? HotplugError) ?? .invalidConfiguration("not a HotplugError: \(error)")
}

/// A check inside a child process: on failure, records the issue (the parent reports it) and exits with status 1
/// (what comes after a failed check might deadlock).
private func childExpect(_ condition: Bool, _ message: @autoclosure () -> String,
                         sourceLocation: SourceLocation = #_sourceLocation) {
    if !condition {
        Issue.record("\(message())", sourceLocation: sourceLocation)
        exit(1)
    }
}
