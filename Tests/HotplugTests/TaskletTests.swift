import Foundation
import Synchronization
import Testing
@testable import Hotplug

final class Counter: Sendable {
    let value = Atomic<Int>(0)
}

/// Records tasklet runs: which tasklet, on which logical CPU, in which order.
final class RunLog: Sendable {
    private let runs = Locked<[(name: String, cpu: Int?)]>([])
    func record(_ name: String, _ cpu: Int?) { runs.withLock { $0.append((name, cpu)) } }
    var names: [String] { runs.withLock { $0.map(\.name) } }
    var cpus: [Int?] { runs.withLock { $0.map(\.cpu) } }
    func count(_ name: String) -> Int { runs.withLock { $0.filter { $0.name == name }.count } }
}

@Suite struct TaskletTests {
    /// Keeps `cpu` busy in a cross-call (no safe point, so no tasklet runs there) until the gate opens.
    private func occupy(_ m: Machine, _ cpu: Int) throws -> Gate {
        let gate = Gate()
        try m.submit(on: cpu) { gate.spin() }
        #expect(eventually { gate.hasEntered })
        return gate
    }

    @Test func runsAtLeastOnceAfterASchedule() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let log = RunLog()
        let t = Tasklet(m) { log.record("t", m.currentCPU) }
        #expect(try t.schedule(on: 1))
        #expect(eventually { log.count("t") == 1 })
        #expect(log.cpus == [1])
        #expect(try t.schedule(on: 0))
        #expect(eventually { log.count("t") == 2 })
        #expect(!t.isScheduled && !t.isRunning)
    }

    @Test func aParkedCPUIsWokenWhenWorkArrives() throws {
        let m = try Machine(cpus: 2, configuration: .init(pollTime: .zero))
        defer { m.shutdown() }
        let log = RunLog()
        let t = Tasklet(m) { log.record("t", m.currentCPU) }
        for round in 1...20 {
            #expect(eventually { (try? m.runState(of: 1)) == .idle })
            let before = try m.deliveryStatistics(of: 1)
            #expect(try t.schedule(on: 1))
            #expect(eventually { log.count("t") == round })
            let after = try m.deliveryStatistics(of: 1)
            #expect(after.futexWakes == before.futexWakes + 1, "an idle CPU is woken by exactly one futex wake")
            #expect(after.signalsSent == before.signalsSent, "no signal is needed for a tasklet")
        }
    }

    @Test func schedulesBeforeItStartsCoalesce() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let log = RunLog()
        let t = Tasklet(m) { log.record("t", m.currentCPU) }
        let gate = try occupy(m, 1)
        #expect(try t.schedule(on: 1))
        for _ in 0..<5 { #expect(try t.schedule(on: 1) == false) }
        usleep(20_000)
        #expect(log.count("t") == 0)
        gate.release()
        #expect(eventually { log.count("t") == 1 })
        usleep(20_000)
        #expect(log.count("t") == 1, "coalesced schedules ran more than once")
    }

    @Test func neverRunsConcurrentlyWithItself() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let inside = Atomic<Int>(0)
        let overlap = Atomic<Bool>(false)
        let runs = Atomic<Int>(0)
        let t = Tasklet(m) {
            if inside.add(1, ordering: .relaxed).newValue > 1 { overlap.store(true, ordering: .relaxed) }
            usleep(100)
            inside.subtract(1, ordering: .relaxed)
            runs.add(1, ordering: .relaxed)
        }
        let queued = Atomic<Int>(0)
        let rounds = stressIterations(300, long: 20_000)
        var producers: [pthread_t] = []
        for p in 0..<2 {
            producers.append(try Shim.spawnThread {
                for i in 0..<rounds where (try? t.schedule(on: (i + p) % 3)) == true { queued.add(1, ordering: .relaxed) }
            })
        }
        for thread in producers { try Shim.join(thread) }
        #expect(eventually(timeout: .seconds(20)) { !t.isScheduled && !t.isRunning && runs.load(ordering: .relaxed) == queued.load(ordering: .relaxed) })
        let overlapped = overlap.load(ordering: .relaxed)
        #expect(!overlapped, "the tasklet ran concurrently with itself")
        #expect(runs.load(ordering: .relaxed) >= 1)
    }

    @Test func aDisabledTaskletStaysQueuedAndRunsAfterEnable() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let log = RunLog()
        let t = Tasklet(m) { log.record("t", m.currentCPU) }
        t.disable()
        t.disable()
        #expect(try t.schedule(on: 1))
        usleep(30_000)
        #expect(log.count("t") == 0 && t.isScheduled)
        t.enable()
        usleep(30_000)
        #expect(log.count("t") == 0, "ran while still disabled once")
        t.enable()
        #expect(eventually { log.count("t") == 1 })
        #expect(log.cpus == [1])
    }

    @Test func unbalancedEnableTraps() async {
        await #expect(processExitsWith: .failure) {
            let m = try Machine(cpus: 1)
            Tasklet(m) {}.enable()
        }
    }

    @Test func killRemovesAQueuedRunAndWaitsForARunningOne() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let log = RunLog()
        // Queued: removed, never runs.
        let queued = Tasklet(m) { log.record("queued", m.currentCPU) }
        let gate = try occupy(m, 1)
        #expect(try queued.schedule(on: 1))
        let killer = try Shim.spawnThread { try? queued.kill() }
        usleep(20_000)
        gate.release()
        try Shim.join(killer)
        usleep(20_000)
        #expect(log.count("queued") == 0, "a killed tasklet ran")
        #expect(!queued.isScheduled)
        #expect(try queued.schedule(on: 1), "it can be scheduled again after kill")
        #expect(eventually { log.count("queued") == 1 })
        // Running: kill waits for the end of the run.
        let release = Gate()
        let running = Tasklet(m) { release.spin(); log.record("running", m.currentCPU) }
        #expect(try running.schedule(on: 1))
        #expect(eventually { running.isRunning })
        let killed = Atomic<Bool>(false)
        let waiter = try Shim.spawnThread { try? running.kill(); killed.store(true, ordering: .releasing) }
        usleep(50_000)
        let early = killed.load(ordering: .acquiring)
        #expect(!early, "kill returned while the tasklet was running")
        release.release()
        try Shim.join(waiter)
        #expect(log.count("running") == 1)
    }

    @Test func aTaskletCannotKillItself() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let outcome = Locked<HotplugError?>(nil)
        let box = Locked<Tasklet?>(nil)
        let t = Tasklet(m) {
            do { try box.withLock { $0 }?.kill() } catch let error as HotplugError { outcome.withLock { $0 = error } } catch {}
        }
        box.withLock { $0 = t }
        try t.schedule(on: 1)
        #expect(eventually { outcome.withLock { $0 } != nil })
        #expect(outcome.withLock { $0 } == .taskletKillsItself)
        box.withLock { $0 = nil }
    }

    @Test func highRunsBeforeNormal() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let log = RunLog()
        let tasklets = [("n1", Tasklet.Priority.normal), ("h1", .high), ("n2", .normal), ("h2", .high)].map { name, priority in
            Tasklet(m, priority: priority) { log.record(name, m.currentCPU) }
        }
        let gate = try occupy(m, 1)
        for t in tasklets { try t.schedule(on: 1) }
        gate.release()
        #expect(eventually { log.names.count == 4 })
        #expect(log.names == ["h1", "h2", "n1", "n2"])
    }

    @Test func foreignThreadsAndPlacement() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let log = RunLog()
        let tasklets = (0..<30).map { i in Tasklet(m) { log.record("t\(i)", m.currentCPU) } }
        var producers: [pthread_t] = []
        for p in 0..<3 {
            producers.append(try Shim.spawnThread {
                for i in stride(from: p, to: 30, by: 3) { _ = try? tasklets[i].schedule() }   // least loaded CPU
            })
        }
        for thread in producers { try Shim.join(thread) }
        #expect(eventually { log.names.count == 30 })
        #expect(log.cpus.allSatisfy { $0 != nil }, "a tasklet ran off the machine's CPUs")
        // Without a CPU, called on a logical CPU: that CPU.
        let here = Tasklet(m) { log.record("here", m.currentCPU) }
        try m.run(on: 2) { _ = try here.schedule() }
        #expect(eventually { log.count("here") == 1 })
        #expect(log.cpus.last == 2)
    }

    @Test func badCPUIdsAndOfflineCPUs() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let log = RunLog()
        let t = Tasklet(m) { log.record("t", m.currentCPU) }
        #expect(throws: HotplugError.invalidCPU(3)) { try t.schedule(on: 3) }
        #expect(throws: HotplugError.invalidCPU(-1)) { try t.schedule(on: -1) }
        try m.offline(2)
        #expect(try t.schedule(on: 2))   // redirected to an online CPU
        #expect(eventually { log.count("t") == 1 })
        #expect(log.cpus.allSatisfy { $0 == 0 || $0 == 1 })
        m.shutdown()
        #expect(throws: HotplugError.shutDown) { try t.schedule(on: 0) }
    }

    /// Pending tasklets of a detached CPU run exactly once on a survivor, in their original order, after the
    /// survivor's own; none runs on the offline CPU.
    @Test func takeoverKeepsOrderAndRunsAfterTheSurvivorsOwn() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let log = RunLog()
        let own = (1...2).map { i in Tasklet(m) { log.record("s\(i)", m.currentCPU) } }
        let pending = (1...5).map { i in Tasklet(m) { log.record("t\(i)", m.currentCPU) } }
        for t in own + pending { t.disable() }   // queued but held
        for t in own { try t.schedule(on: 0) }
        for t in pending { try t.schedule(on: 2) }
        try m.offline(1)
        try m.offline(2)   // CPU 2's pending runs move to CPU 0, behind CPU 0's own
        #expect(try m.state(of: 2) == .parked)
        #expect(pending.allSatisfy { $0.isScheduled })
        let gate = try occupy(m, 0)
        for t in own + pending { t.enable() }
        gate.release()
        #expect(eventually { log.names.count == 7 })
        usleep(20_000)
        #expect(log.names == ["s1", "s2", "t1", "t2", "t3", "t4", "t5"])
        #expect(log.cpus.allSatisfy { $0 == 0 }, "a run happened elsewhere than the survivor: \(log.cpus)")
    }

    /// Seeded stress: producers schedule tasklets on random CPUs while CPUs are attached and detached with fault
    /// injection; afterwards every tasklet ran exactly as often as a schedule queued it (no loss, no duplicate).
    @Test func stressUnderHotplugLosesAndDuplicatesNothing() throws {
        let seed = ProcessInfo.processInfo.environment["HOTPLUG_SEED"].flatMap { UInt64($0) } ?? 0x7A5C_1E70
        let m = try Machine(cpus: 4)
        defer { m.shutdown() }
        let count = 64
        let runs = (0..<count).map { _ in Counter() }
        let queued = (0..<count).map { _ in Counter() }
        let offlineRun = Atomic<Int>(0)
        let tasklets = (0..<count).map { i in
            Tasklet(m, priority: i % 4 == 0 ? .high : .normal) {
                runs[i].value.add(1, ordering: .relaxed)
                // The online mask changes only inside stop_machine, when no tasklet runs: it is exact here.
                if let cpu = m.currentCPU, !m.online.contains(cpu) { offlineRun.add(1, ordering: .relaxed) }
            }
        }
        let hotplugRounds = stressIterations(120, long: 10_000)
        let stop = Atomic<Bool>(false)
        var threads: [pthread_t] = []
        for p in 0..<2 {
            threads.append(try Shim.spawnThread {
                var rng = SeededGenerator(seed: seed &+ UInt64(p))
                while !stop.load(ordering: .relaxed) {
                    let i = Int.random(in: 0..<count, using: &rng)
                    let cpu = Int.random(in: 0..<4, using: &rng)
                    if (try? tasklets[i].schedule(on: cpu)) == true { queued[i].value.add(1, ordering: .relaxed) }
                }
            })
        }
        let hotplugOps = Atomic<Int>(0)
        let rollbacks = Atomic<Int>(0)
        let hotplug = try Shim.spawnThread {
            var rng = SeededGenerator(seed: seed &+ 99)
            for _ in 0..<hotplugRounds {
                let cpu = Int.random(in: 1..<4, using: &rng)
                let attach = (try? m.state(of: cpu)) != .online
                if Int.random(in: 0..<3, using: &rng) == 0 {   // make this very operation fail once, and roll back
                    try? m.hotplug.injectFailure(cpu: cpu, at: attach ? .bringup : .teardownCPU,
                                                 direction: attach ? .startup : .teardown)
                }
                do {
                    if attach { try m.online(cpu) } else { try m.offline(cpu) }
                    hotplugOps.add(1, ordering: .relaxed)
                } catch {
                    rollbacks.add(1, ordering: .relaxed)
                }
            }
            stop.store(true, ordering: .relaxed)
        }
        try Shim.join(hotplug)
        for thread in threads { try Shim.join(thread) }
        #expect(eventually(timeout: .seconds(30)) { tasklets.allSatisfy { !$0.isScheduled && !$0.isRunning } })
        for i in 0..<count {
            let ran = runs[i].value.load(ordering: .relaxed), wanted = queued[i].value.load(ordering: .relaxed)
            #expect(ran == wanted, "tasklet \(i): ran \(ran) times for \(wanted) queued schedules (seed \(seed))")
        }
        #expect(offlineRun.load(ordering: .relaxed) == 0, "a tasklet ran on an offline CPU")
        #expect(hotplugOps.load(ordering: .relaxed) > 0 && rollbacks.load(ordering: .relaxed) > 0,
                "the run exercised \(hotplugOps.load(ordering: .relaxed)) hotplug operations and \(rollbacks.load(ordering: .relaxed)) rollbacks")
    }
}

@Suite struct TaskletDrainTests {
    /// `count` tasklets that each add one to `ran` after a short busy wait (so that they are not all done by the
    /// time the schedules return), spread over `cpus`, a third of them high priority.
    private func scheduleMany(_ m: Machine, _ count: Int, on cpus: [Int], _ ran: Counter) throws -> [Tasklet] {
        let tasklets = (0..<count).map { i in
            Tasklet(m, priority: i % 3 == 0 ? .high : .normal) {
                let until = ContinuousClock.now + .microseconds(200)
                while ContinuousClock.now < until {}
                ran.value.add(1, ordering: .relaxed)
            }
        }
        for (i, t) in tasklets.enumerated() { try t.schedule(on: cpus[i % cpus.count]) }
        return tasklets
    }

    @Test func drainReturnsOnceEveryScheduledRunHasRun() throws {
        let m = try Machine(cpus: 4)
        defer { m.shutdown() }
        for round in 1...5 {
            let ran = Counter()
            let tasklets = try scheduleMany(m, 400, on: [0, 1, 2, 3], ran)
            try m.drainTasklets(timeout: .seconds(20))
            #expect(ran.value.load(ordering: .relaxed) == tasklets.count, "round \(round)")
            #expect(tasklets.allSatisfy { !$0.isScheduled && !$0.isRunning })
        }
    }

    /// CPU 2's runs are queued by a STARTING teardown of its detach (so they are on its lists when it dies) and
    /// move to a survivor; the drain after the detach waits for them there.
    @Test func drainSeesRunsMovedByATakeover() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let ran = Counter()
        let tasklets = Locked<[Tasklet]>([])
        try m.hotplug.register("test:queue-on-dying", section: .starting, startup: nil, teardown: { cpu in
            guard cpu == 2 else { return }
            let queued = try scheduleMany(m, 200, on: [2], ran)
            tasklets.withLock { $0 = queued }
        })
        try m.offline(2)
        #expect(tasklets.withLock { $0.count } == 200)
        try m.drainTasklets(timeout: .seconds(20))
        #expect(ran.value.load(ordering: .relaxed) == 200)
    }

    /// Batches scheduled over every CPU while another thread detaches and attaches CPUs 1...3: each drain sees
    /// every run of its batch, wherever the takeovers moved them.
    @Test func drainUnderHotplug() throws {
        let m = try Machine(cpus: 4)
        defer { m.shutdown() }
        let stop = Atomic<Bool>(false)
        let cycles = Atomic<Int>(0)
        let done = Atomic<Bool>(false)
        Thread {
            var cpu = 0
            while !stop.load(ordering: .relaxed) {
                cpu = cpu % 3 + 1
                if (try? m.offline(cpu)) != nil { cycles.add(1, ordering: .relaxed) }
                _ = try? m.online(cpu)
            }
            done.store(true, ordering: .releasing)
        }.start()
        defer {
            stop.store(true, ordering: .relaxed)
            _ = eventually { done.load(ordering: .acquiring) }
        }
        let until = ContinuousClock.now + .seconds(2)
        var batches = 0
        while ContinuousClock.now < until {
            let ran = Counter()
            var scheduled = 0
            let tasklets = (0..<100).map { _ in Tasklet(m) { ran.value.add(1, ordering: .relaxed) } }
            for (i, t) in tasklets.enumerated() where (try? t.schedule(on: i % 4)) == true { scheduled += 1 }
            try m.drainTasklets(timeout: .seconds(20))
            #expect(ran.value.load(ordering: .relaxed) == scheduled, "batch \(batches)")
            batches += 1
        }
        print("tasklet drain under hotplug: \(batches) batches, \(cycles.load(ordering: .relaxed)) detaches")
    }

    /// A run that CPU 2 meets while the tasklet still runs on CPU 1 is queued again on CPU 2, behind the drain's
    /// marker there: the drain must look again, and wait for that run too (it is slow, so a drain that returned
    /// after the markers alone would return before it).
    @Test func drainWaitsForARunQueuedAgainBehindItsMarker() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let gate = Gate()
        let started = Atomic<Int>(0)
        let runs = Atomic<Int>(0)   // runs that have ended
        let t = Tasklet(m) {
            if started.add(1, ordering: .relaxed).newValue == 1 { gate.spin() } else { usleep(50_000) }
            runs.add(1, ordering: .relaxed)
        }
        try t.schedule(on: 1)
        #expect(eventually { gate.hasEntered })
        defer { gate.release() }
        #expect(try t.schedule(on: 2))   // CPU 2 takes it while it runs on CPU 1, and queues it again
        let result = Locked<Result<Int, HotplugError>?>(nil)
        Thread {
            let outcome = Result { () throws(HotplugError) in
                try m.drainTasklets(timeout: .seconds(20))
                return runs.load(ordering: .relaxed)
            }
            result.withLock { $0 = outcome }
        }.start()
        usleep(20_000)
        #expect(result.withLock { $0 } == nil, "the drain returned while the first run still ran")
        gate.release()
        #expect(eventually(timeout: .seconds(25)) { result.withLock { $0 } != nil })
        #expect(try result.withLock { $0 }?.get() == 2, "the drain returned before the run queued again had run")
        #expect(m.tasklets.requeues.load(ordering: .relaxed) > 0)
    }

    @Test func drainWhereItWouldWaitForItselfIsRefused() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let fromTasklet = Locked<Result<Void, HotplugError>?>(nil)
        let t = Tasklet(m) { fromTasklet.withLock { $0 = Result { () throws(HotplugError) in try m.drainTasklets() } } }
        try t.schedule(on: 1)
        #expect(eventually { fromTasklet.withLock { $0 } != nil })
        #expect(throws: HotplugError.wouldDeadlock(operation: .taskletDrain, reason: .onLogicalCPU)) {
            try fromTasklet.withLock { $0 }!.get()
        }
        let fromCrossCall = try m.run(on: 0) { Result { () throws(HotplugError) in try m.drainTasklets() } }
        #expect(throws: HotplugError.wouldDeadlock(operation: .taskletDrain, reason: .onLogicalCPU)) {
            try fromCrossCall.get()
        }
        let fromCallback = Locked<Result<Void, HotplugError>?>(nil)
        try m.hotplug.register("test:drain", section: .prepare, startup: nil, teardown: { _ in
            fromCallback.withLock { $0 = Result { () throws(HotplugError) in try m.drainTasklets() } }
        })
        try m.offline(1)
        #expect(throws: HotplugError.wouldDeadlock(operation: .taskletDrain, reason: .insideHotplugCallback)) {
            try fromCallback.withLock { $0 }!.get()
        }
    }

    @Test func drainTimesOutWhenACPUDoesNotComeBack() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let gate = Gate()
        try m.submit(on: 1) { gate.spin() }
        #expect(eventually { gate.hasEntered })
        defer { gate.release() }
        let ran = Counter()
        try Tasklet(m) { ran.value.add(1, ordering: .relaxed) }.schedule(on: 1)
        let started = ContinuousClock.now
        do {
            try m.drainTasklets(timeout: .milliseconds(100))
            Issue.record("the drain returned while CPU 1 could not run its tasklet")
        } catch {
            guard case .timeout(cpu: 1, operation: .taskletDrain, _) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
        }
        #expect(ContinuousClock.now - started < .seconds(5))
        gate.release()
        try m.drainTasklets(timeout: .seconds(10))
        #expect(ran.value.load(ordering: .relaxed) == 1)
        m.shutdown()
        #expect(throws: HotplugError.shutDown) { try m.drainTasklets() }
    }
}
