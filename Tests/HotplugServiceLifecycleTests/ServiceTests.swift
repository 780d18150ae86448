import Hotplug
import HotplugServiceLifecycle
import Logging
import ServiceLifecycle
import Synchronization
import Testing

@Suite struct ServiceTests {
    /// The machine, a follower and a balancer in one group: a graceful shutdown stops the balancer and the follower,
    /// then drains the machine's tasklets and shuts it down; all within a bound.
    @Test func aGracefulShutdownStopsEveryServiceAndShutsTheMachineDown() async throws {
        let machine = try Machine(cpus: 2)
        let follower = try machine.follow()
        let pool = try CPUPool(processors: 2)
        let a = try pool.makePartition("a", owning: [0])
        let b = try pool.makePartition("b", owning: [1])
        let balancer = try Balancer(pool: pool, partitions: [a, b])
        defer {
            balancer.stop()
            follower.stop()
            machine.shutdown()
        }
        let ran = Atomic<Int>(0)
        let tasklet = Tasklet(machine) { ran.add(1, ordering: .relaxed) }
        let group = ServiceGroup(services: [
            MachineService(machine: machine, metricsInterval: .milliseconds(5)),
            FollowerService(follower),
            BalancerService(balancer, interval: .milliseconds(5)),
        ], logger: Logger(label: "test"))
        let outcome = try await withThrowingTaskGroup(of: Bool.self) { tasks in
            tasks.addTask {
                try await group.run()
                return true
            }
            // Running: the balancer steps, the follower follows, the machine is up. Generous: in a parallel run of
            // every suite on a loaded machine the cooperative pool may be taken by blocking tests for tens of
            // seconds before the group's task gets a thread.
            let started = ContinuousClock.now
            while !(balancer.isRunning && follower.isFollowing), ContinuousClock.now - started < .seconds(120) { try await Task.sleep(for: .milliseconds(1)) }
            #expect(balancer.isRunning && follower.isFollowing && machine.online.count == 2)
            #expect(try tasklet.schedule(on: 1))
            await group.triggerGracefulShutdown()
            tasks.addTask {
                try await Task.sleep(for: .seconds(40))
                return false   // the deadline, from the shutdown's start: the group did not end
            }
            let first = try await tasks.next() ?? false
            tasks.cancelAll()
            return first
        }
        #expect(outcome, "the service group did not end within 40 s of its graceful shutdown")
        #expect(!balancer.isRunning)
        #expect(!follower.isFollowing)
        #expect(machine.present.isEmpty && machine.online.isEmpty)
        let runs = ran.load(ordering: .relaxed)
        #expect(runs == 1)   // drained before the shutdown
        #expect(throws: HotplugError.shutDown) { try machine.configure(0) }
    }

    /// Cancelling the group (not a graceful shutdown) shuts the machine down too.
    @Test func cancellingTheGroupShutsTheMachineDown() async throws {
        let machine = try Machine(cpus: 2)
        defer { machine.shutdown() }
        let follower = try machine.follow()
        defer { follower.stop() }
        let group = ServiceGroup(services: [MachineService(machine: machine), FollowerService(follower)],
                                 logger: Logger(label: "test"))
        let ended = Atomic<Bool>(false)
        let run = Task {
            try? await group.run()
            ended.store(true, ordering: .releasing)   // partner: the acquiring load below
        }
        try await Task.sleep(for: .milliseconds(20))
        run.cancel()
        let deadline = ContinuousClock.now + .seconds(20)
        while !ended.load(ordering: .acquiring), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(2))
        }
        let groupEnded = ended.load(ordering: .acquiring)
        #expect(groupEnded, "the service group did not end within 20 s of its cancellation")
        #expect(machine.present.isEmpty && !follower.isFollowing)
    }
}
