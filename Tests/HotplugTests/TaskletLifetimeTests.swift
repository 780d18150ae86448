import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// Counts its own deinitialisations: captured by a tasklet's body, it says when the body (and so the tasklet's
/// core, which owns it) was released.
final class ReleaseProbe: Sendable {
    let released: Counter
    init(_ released: Counter) { self.released = released }
    deinit { released.value.add(1, ordering: .releasing) }   // partner of the tests' acquiring loads
    func touch() {}
}

/// The lists hold no reference count per schedule: a tasklet's core stays alive while a run is queued or in
/// progress because its SCHED or RUN bit holds it, and is released once, by whoever ends the last hold of a
/// tasklet whose handle is gone (`TaskletCore`, "Lifetime").
@Suite struct TaskletLifetimeTests {
    private func occupy(_ m: Machine, _ cpu: Int) throws -> Gate {
        let gate = Gate()
        try m.submit(on: cpu) { gate.spin() }
        #expect(eventually { gate.hasEntered })
        return gate
    }

    private func released(_ counter: Counter) -> Int { counter.value.load(ordering: .acquiring) }

    @Test func aTaskletNeverScheduledIsReleasedWithItsHandle() throws {
        let m = try Machine(cpus: 1)
        defer { m.shutdown() }
        let released = Counter()
        do {
            let probe = ReleaseProbe(released)
            _ = Tasklet(m) { probe.touch() }
        }
        #expect(self.released(released) == 1, "a tasklet that was never scheduled outlived its handle")
    }

    @Test func aQueuedTaskletWhoseHandleIsDroppedRunsOnceThenIsReleased() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let released = Counter(), runs = Counter()
        let gate = try occupy(m, 1)
        do {
            let probe = ReleaseProbe(released)
            let t = Tasklet(m) { probe.touch(); runs.value.add(1, ordering: .relaxed) }
            #expect(try t.schedule(on: 1))
        }
        usleep(10_000)
        #expect(self.released(released) == 0, "released while its run was still queued")
        gate.release()
        #expect(eventually { self.released(released) == 1 })
        #expect(runs.value.load(ordering: .relaxed) == 1)
    }

    @Test func aRunningTaskletWhoseHandleIsDroppedFinishesThenIsReleased() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let released = Counter(), runs = Counter()
        let inside = Gate()
        let box = Locked<Tasklet?>(nil)
        do {
            let probe = ReleaseProbe(released)
            let t = Tasklet(m) {
                inside.spin()
                probe.touch()
                runs.value.add(1, ordering: .relaxed)
            }
            box.withLock { $0 = t }
            #expect(try t.schedule(on: 1))
            #expect(eventually { t.isRunning })
        }
        box.withLock { $0 = nil }   // the last handle goes while the body runs
        usleep(10_000)
        #expect(self.released(released) == 0, "released while its body ran")
        inside.release()
        #expect(eventually { self.released(released) == 1 })
        #expect(runs.value.load(ordering: .relaxed) == 1)
    }

    /// The body drops the last handle itself, and schedules it again first: the run queued from inside must
    /// still happen, then the core goes.
    @Test func aTaskletThatDropsItsOwnHandleAfterSchedulingItselfRunsAgainThenIsReleased() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let released = Counter(), runs = Counter()
        let box = Locked<Tasklet?>(nil)
        let gate = try occupy(m, 1)   // the first run starts only once this thread holds no handle
        do {
            let probe = ReleaseProbe(released)
            let t = Tasklet(m) {
                probe.touch()
                if runs.value.add(1, ordering: .relaxed).newValue == 1 {
                    let me = box.withLock { boxed in defer { boxed = nil }; return boxed }
                    _ = try? me?.schedule()   // on this CPU's own list
                }
            }
            box.withLock { $0 = t }
            #expect(try t.schedule(on: 1))
        }
        gate.release()
        #expect(eventually { self.released(released) == 1 })
        #expect(runs.value.load(ordering: .relaxed) == 2)
    }

    /// kill() holds the handle, so a killed run is never an orphan's; the handle dropped after it releases all.
    @Test func aKilledTaskletIsReleasedWithItsHandle() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let released = Counter(), runs = Counter()
        let gate = try occupy(m, 1)
        do {
            let probe = ReleaseProbe(released)
            let t = Tasklet(m) { probe.touch(); runs.value.add(1, ordering: .relaxed) }
            #expect(try t.schedule(on: 1))
            let killer = try Shim.spawnThread { try? t.kill() }
            usleep(10_000)
            gate.release()
            try Shim.join(killer)
        }
        #expect(eventually { self.released(released) == 1 })
        #expect(runs.value.load(ordering: .relaxed) == 0)
    }

    /// Queued on CPU 2's own list by a STARTING teardown running on CPU 2, the handle dropped at once: the takeover
    /// moves the run to a survivor, where it runs once, and the core goes after it.
    @Test func anOrphanOnADyingCPUsOwnListMovesRunsOnceAndIsReleased() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let released = Counter(), runs = Counter()
        let ranOn = Locked<[Int?]>([])
        try m.hotplug.register("test:orphan-on-dying", section: .starting, startup: nil, teardown: { cpu in
            guard cpu == 2 else { return }
            let probe = ReleaseProbe(released)
            let t = Tasklet(m) {
                probe.touch()
                ranOn.withLock { $0.append(m.currentCPU) }
                runs.value.add(1, ordering: .relaxed)
            }
            _ = try? t.schedule()   // this CPU, its own list
        })
        try m.offline(2)
        #expect(eventually { self.released(released) == 1 })
        #expect(runs.value.load(ordering: .relaxed) == 1)
        #expect(ranOn.withLock { $0 }.allSatisfy { $0 == 0 || $0 == 1 }, "ran on \(ranOn.withLock { $0 })")
    }

    /// A disabled orphan can never run; at shutdown its queued run is dropped and its core released.
    @Test func aQueuedOrphanIsReleasedWhenShutdownDropsItsRun() throws {
        let m = try Machine(cpus: 2)
        let released = Counter()
        do {
            let probe = ReleaseProbe(released)
            let t = Tasklet(m) { probe.touch() }
            t.disable()
            #expect(try t.schedule(on: 1))
        }
        usleep(10_000)
        #expect(self.released(released) == 0)
        m.shutdown()
        #expect(eventually { self.released(released) == 1 })
    }

    /// Short-lived tasklets scheduled from plain threads, from CPUs onto themselves and onto others, and from
    /// each other's bodies, handles dropped at once, while CPUs come and go: every schedule runs once, and every
    /// tasklet is released exactly once (ThreadSanitizer checks the hand-overs under `make tsan`).
    @Test func shortLivedTaskletsRunOnceAndAreReleasedUnderHotplug() throws {
        let m = try Machine(cpus: 3)
        defer { m.shutdown() }
        let created = Counter(), released = Counter(), scheduled = Counter(), runs = Counter()
        let rounds = stressIterations(2_000, long: 100_000)
        @Sendable func spawn(on cpu: Int?, chain: Bool) {
            let probe = ReleaseProbe(released)
            created.value.add(1, ordering: .relaxed)
            let t = Tasklet(m, priority: created.value.load(ordering: .relaxed) % 3 == 0 ? .high : .normal) {
                probe.touch()
                runs.value.add(1, ordering: .relaxed)
                if chain { spawn(on: m.currentCPU.map { $0 % 2 == 0 ? $0 : nil } ?? nil, chain: false) }
            }
            if (try? t.schedule(on: cpu)) == true { scheduled.value.add(1, ordering: .relaxed) }
        }
        let stop = Atomic<Bool>(false)
        let cycles = Atomic<Int>(0)
        let hotplug = try Shim.spawnThread {
            var cpu = 0
            while !stop.load(ordering: .relaxed) {
                cpu = cpu % 2 + 1
                if (try? m.offline(cpu)) != nil { cycles.add(1, ordering: .relaxed) }
                _ = try? m.online(cpu)
            }
        }
        var producers: [pthread_t] = []
        for p in 0..<2 {
            producers.append(try Shim.spawnThread {
                for i in 0..<rounds {
                    if i % 4 == p {
                        // From a CPU onto itself (its own list) and onto another CPU.
                        _ = try? m.run(on: i % 3) {
                            spawn(on: nil, chain: true)
                            spawn(on: (i + 1) % 3, chain: false)
                        }
                    } else {
                        spawn(on: i % 3, chain: i % 2 == 0)
                    }
                    if i % 64 == 0 { Shim.yield() }
                }
            })
        }
        for thread in producers { try Shim.join(thread) }
        stop.store(true, ordering: .relaxed)
        try Shim.join(hotplug)
        try m.drainTasklets(timeout: .seconds(20))
        #expect(eventually(timeout: .seconds(20)) {
            self.released(released) == created.value.load(ordering: .relaxed)
                && runs.value.load(ordering: .relaxed) == scheduled.value.load(ordering: .relaxed)
        })
        #expect(runs.value.load(ordering: .relaxed) == scheduled.value.load(ordering: .relaxed),
                "\(runs.value.load(ordering: .relaxed)) runs for \(scheduled.value.load(ordering: .relaxed)) schedules")
        #expect(self.released(released) == created.value.load(ordering: .relaxed),
                "\(self.released(released)) of \(created.value.load(ordering: .relaxed)) tasklets released")
        print("short-lived tasklets: \(created.value.load(ordering: .relaxed)) created, "
              + "\(scheduled.value.load(ordering: .relaxed)) scheduled, \(cycles.load(ordering: .relaxed)) detaches")
    }
}

/// Schedules a CPU makes on itself go on its own list (plain stores); they keep every tasklet rule.
@Suite struct TaskletOwnListTests {
    @Test func ownSchedulesRunOnThatCPUHighFirstAndCoalesce() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let log = RunLog()
        let tasklets = [("n1", Tasklet.Priority.normal), ("h1", .high), ("n2", .normal), ("h2", .high)].map { name, priority in
            Tasklet(m, priority: priority) { log.record(name, m.currentCPU) }
        }
        let coalesced = try m.run(on: 1) { () throws(HotplugError) -> Int in
            var coalesced = 0
            for t in tasklets {
                try t.schedule()
                if try !t.schedule(on: 1) { coalesced += 1 }
            }
            return coalesced
        }
        #expect(coalesced == 4)
        #expect(eventually { log.names.count == 4 })
        usleep(10_000)
        #expect(log.names == ["h1", "h2", "n1", "n2"])
        #expect(log.cpus == [1, 1, 1, 1])
    }

    /// A tasklet that schedules itself again from its body, on its own CPU: the CPU still reaches a safe point
    /// between its runs (a cross-call gets through), as it must for stop_machine.
    @Test func aTaskletReschedulingItselfLeavesItsCPUSafePoints() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let spinning = Atomic<Bool>(true)
        let runs = Counter()
        let box = Locked<Tasklet?>(nil)
        let t = Tasklet(m) {
            runs.value.add(1, ordering: .relaxed)
            if spinning.load(ordering: .relaxed) { _ = try? box.withLock { $0 }?.schedule() }
        }
        box.withLock { $0 = t }
        defer {
            spinning.store(false, ordering: .relaxed)
            box.withLock { $0 = nil }
        }
        try t.schedule(on: 1)
        #expect(eventually { runs.value.load(ordering: .relaxed) > 100 })
        let reached = try m.run(on: 1, timeout: .seconds(5)) { m.currentCPU }
        #expect(reached == 1)
        try m.offline(1)   // a stop_machine with it busy
        #expect(try m.state(of: 1) == .parked)
    }

    /// CPU 1 queues a slow run on itself, then (still in the same cross-call) waits until a drain has queued its
    /// markers on CPU 1's shared lists: the run was scheduled before the drain, so the drain must wait for it,
    /// although its markers and the run are taken at the same safe point.
    @Test func drainWaitsForARunACPUQueuedOnItselfBeforeTheMarkers() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let ran = Counter()
        let slow = Tasklet(m) {
            usleep(50_000)
            ran.value.add(1, ordering: .releasing)   // partner of the acquiring load after the drain
        }
        let gate = Gate()
        let scheduled = Atomic<Bool>(false)
        try m.submit(on: 1) {
            _ = try? slow.schedule()   // CPU 1's own list
            scheduled.store(true, ordering: .releasing)
            gate.spin()
        }
        #expect(eventually { scheduled.load(ordering: .acquiring) })
        let result = Locked<Result<Int, HotplugError>?>(nil)
        Thread {
            let outcome = Result { () throws(HotplugError) in
                try m.drainTasklets(timeout: .seconds(20))
                return ran.value.load(ordering: .acquiring)
            }
            result.withLock { $0 = outcome }
        }.start()
        usleep(20_000)   // the drain queues its markers at once, then waits
        gate.release()
        #expect(eventually(timeout: .seconds(25)) { result.withLock { $0 } != nil })
        #expect(try result.withLock { $0 }?.get() == 1, "the drain returned before a run scheduled ahead of it")
    }

    @Test func ownListsCountInTheQueuedEstimate() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let tasklets = (0..<5).map { _ in Tasklet(m) {} }
        let counted = try m.run(on: 1) { () throws(HotplugError) -> Int in
            for t in tasklets { try t.schedule() }
            return try m.queuedTasklets(on: 1)
        }
        #expect(counted == 5)
        try m.drainTasklets(timeout: .seconds(10))
        #expect(eventually { (try? m.queuedTasklets(on: 1)) == 0 })
    }
}
