import ExampleSupport
import Hotplug
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `--misuse`: wrong calls made at random while the usual load runs, each of which the runtime must refuse at once
/// with the error docs/ARCHITECTURE.md, "Rules for callbacks and bodies", gives for it, and SIGP STOP storms on
/// CPUs busy with cross-calls, under which cross-calls to the other CPUs must keep their timeouts.
///
/// What is done, and what must come back (`HotplugError.wouldDeadlock(operation:reason:)` for each wrong call):
/// - from a cross-call (`run(on:)`, `submit(on:)`) or a tasklet on CPU N: `offline(N)` or `deconfigure(N)`, refused
///   with `calledOnTargetCPU`, or `callerGoingOffline` when N runs it on its way offline (out of the online mask);
///   from a cross-call also the bulk `offline([N, N + 1])`, refused the same way (N anywhere in the set);
/// - from inside this run's own hotplug callbacks (`torture:prepare`, `torture:starting`, `torture:online`, with
///   probability `callbackRate`): `online`, `offline` (single or bulk), `hotplug.register` or `stopMachine`,
///   refused with `insideHotplugCallback`;
/// - from inside a `stopMachine` body: `offline` (single and bulk), `stopMachine`, and `run(on:)` to another CPU,
///   refused with `insideStopMachine`;
/// - SIGP STOP, then START, to a CPU busy in a cross-call, with the hotplug read lock held so that the CPU stays
///   online meanwhile (a detach of it meanwhile throws `stoppedByOrder`, which the on/off thread expects), while the prober thread keeps making `run(on:timeout: .milliseconds(5))` calls to the other
///   CPUs: each must return (done, or timed out) within its timeout plus `stormSlack`, and the busy call must end
///   within `stormSlack` of the START.
///
/// A refusal that takes longer than `refusalBound` is a violation, as is a wrong error or none: a call that
/// deadlocked instead would stop the run, and the watchdog ends it with a FAILED line.
final class MisuseLoad: Sendable {
    let machine: Machine
    let checks: Checks
    let stop = Atomic<Bool>(false)
    /// Whether the hotplug callbacks misbehave now (from the start of the workload to its end: not while the states
    /// are registered, nor during the shutdown).
    let callbacksMisbehave = Atomic<Bool>(false)
    /// The CPU a STOP storm holds now, -1 when none: the prober leaves it out.
    private let stormTarget = Atomic<Int>(-1)
    /// STOPs sent to each CPU, raised before each goes out (with `stormTarget`, for `stopMark`).
    private let stopsSent: [Counter]
    private let seed: UInt64
    /// Draws of the callbacks, which run on many threads: each takes the next number of this counter.
    private let callbackDraws = Counter()
    private let tasklet: Mutex<Tasklet?> = Mutex(nil)

    // What was done.
    let refusals = Counter()
    let fromCrossCalls = Counter()
    let fromTasklets = Counter()
    let fromCallbacks = Counter()
    let fromStopMachine = Counter()
    let storms = Counter()
    let probes = Counter()
    let taskletsScheduled = Counter()
    let taskletsRan = Counter()

    /// Probability that one hotplug callback makes a wrong call.
    static let callbackRate = 0.2
    /// A refusal must come back within this (it does nothing but look at where it is called).
    static let refusalBound: Int64 = 1_000_000_000
    /// How long a probe call may wait for its CPU, and the slack beyond that and beyond the START (a loaded
    /// machine of two cores may leave a thread off its CPU for a while).
    static let probeTimeout: Duration = .milliseconds(5)
    static let probeTimeoutNanoseconds: Int64 = 5_000_000
    static let stormSlack: Int64 = 250_000_000

    init(machine: Machine, checks: Checks, seed: UInt64) {
        self.machine = machine
        self.checks = checks
        self.seed = seed
        stopsSent = (0..<machine.possibleCount).map { _ in Counter() }
    }

    /// Taken before a hotplug operation on `cpu`: with `wasStopped(_:since:)` after it, whether a STOP storm may
    /// have held the CPU meanwhile (a detach then throws `stoppedByOrder`, as documented).
    func stopMark(_ cpu: Int) -> (held: Bool, sent: Int) {
        // Sequentially consistent: partner of the storm's stores before its STOP.
        (stormTarget.load(ordering: .sequentiallyConsistent) == cpu,
         stopsSent[cpu].value.load(ordering: .sequentiallyConsistent))
    }

    func wasStopped(_ cpu: Int, since mark: (held: Bool, sent: Int)) -> Bool {
        mark.held || stopsSent[cpu].value.load(ordering: .sequentiallyConsistent) != mark.sent
    }

    // MARK: One wrong call

    /// Makes one wrong call and checks that it threw `expected` within `refusalBound`.
    private func expectRefusal(_ what: String, _ expected: HotplugError, _ call: () throws(HotplugError) -> Void) {
        let started = monotonicNanoseconds()
        var got: HotplugError?
        do { try call() } catch { got = error }
        let took = monotonicNanoseconds() - started
        refusals.add()
        let here = machine.currentCPU.map { "logical CPU \($0)" } ?? "a thread of no CPU"
        checks.check(.misuse, got == expected,
                     "\(what) on \(here) " + (got.map { "threw \($0)" } ?? "did not throw")
                     + ", expected \(expected)")
        checks.check(.misuse, took <= MisuseLoad.refusalBound,
                     "\(what) on \(here) took \(took / 1_000_000) ms to be refused")
    }

    /// On a CPU running a cross-call or a tasklet: taking that very CPU down.
    private func selfOffline(deconfigure: Bool, bulk: Bool = false) {
        guard let me = machine.currentCPU else {
            checks.fail(.misuse, "a cross-call or tasklet ran on no logical CPU")
            return
        }
        // Stable while this code runs: the CPU leaves the online mask only in a stop_machine it takes part in.
        let reason: DeadlockReason = machine.online.contains(me) ? .calledOnTargetCPU : .callerGoingOffline
        if deconfigure {
            expectRefusal("deconfigure(\(me))", .wouldDeadlock(operation: .deconfigure, reason: reason)) {
                () throws(HotplugError) in try machine.deconfigure(me)
            }
        } else if bulk {
            // The set's CPUs are checked in ascending order: for the last CPU its neighbour comes first.
            let set: CPUSet = [me, (me + 1) % machine.possibleCount]
            expectRefusal("offline(\(set))", .wouldDeadlock(operation: .offline, reason: reason)) {
                () throws(HotplugError) in _ = try machine.offline(set)
            }
        } else {
            expectRefusal("offline(\(me))", .wouldDeadlock(operation: .offline, reason: reason)) {
                () throws(HotplugError) in try machine.offline(me)
            }
        }
    }

    /// Called by every hotplug callback of this run (TortureStates): now and then, a call back into the machine.
    func fromCallback(_ name: String, cpu: Int) {
        guard callbacksMisbehave.load(ordering: .relaxed) else { return }
        var rng = SplitMix64(seed: seed, stream: 1_000 + UInt64(callbackDraws.add()))
        guard rng.chance(MisuseLoad.callbackRate) else { return }
        fromCallbacks.add()
        let other = Int.random(in: 0..<machine.possibleCount, using: &rng)
        let machine = self.machine
        func refused(_ operation: HotplugOperation) -> HotplugError {
            .wouldDeadlock(operation: operation, reason: .insideHotplugCallback)
        }
        switch Int.random(in: 0..<4, using: &rng) {
        case 0 where rng.chance(0.5):
            expectRefusal("online([\(other)]) in \(name)", refused(.online)) { () throws(HotplugError) in
                _ = try machine.online([other] as CPUSet)
            }
        case 0:
            expectRefusal("online(\(other)) in \(name)", refused(.online)) { () throws(HotplugError) in
                try machine.online(other)
            }
        case 1 where rng.chance(0.5):
            expectRefusal("offline([\(other)]) in \(name)", refused(.offline)) { () throws(HotplugError) in
                _ = try machine.offline([other] as CPUSet)
            }
        case 1:
            expectRefusal("offline(\(other)) in \(name)", refused(.offline)) { () throws(HotplugError) in
                try machine.offline(other)
            }
        case 2:
            let stateName = "torture:misuse-\(rng.next() & 0xFFFF_FFFF)"
            expectRefusal("hotplug.register in \(name)", refused(.registration)) { () throws(HotplugError) in
                try machine.hotplug.register(stateName, section: .online, startup: nil, teardown: nil)
            }
        default:
            expectRefusal("stopMachine in \(name)", refused(.stopMachine)) { () throws(HotplugError) in
                try machine.stopMachine { _ in }
            }
        }
    }

    // MARK: The misuse thread

    /// The misuse thread's body: wrong calls at random until told to stop, then a bounded wait for its tasklets.
    func run() {
        var rng = SplitMix64(seed: seed, stream: 900)
        let machine = self.machine
        let tasklet = Tasklet(machine) { [unowned self] in
            taskletsRan.add()
            selfOffline(deconfigure: false)
        }
        self.tasklet.withLock { $0 = tasklet }
        while !stop.load(ordering: .relaxed) {
            switch Int.random(in: 0..<10, using: &rng) {
            case 0...2: crossCall(&rng)
            case 3...4:
                guard let cpu = Array(machine.online).randomElement(using: &rng) else { break }
                // False: still queued from the last draw (it coalesces), and runs once for both.
                if (try? tasklet.schedule(on: cpu)) == true { taskletsScheduled.add() }
            case 5...6: stopMachineBody(&rng)
            default: stopStorm(&rng)
            }
            usleep(UInt32.random(in: 100...2_000, using: &rng))
        }
        // A scheduled run is never lost (the tasklets invariant): wait for the last one, bounded.
        let ran = waitUntil(Torture.drainMilliseconds) { taskletsRan.load >= taskletsScheduled.load }
        checks.check(.misuse, ran, "the misuse tasklet ran \(taskletsRan.load) times of \(taskletsScheduled.load) scheduled")
    }

    /// offline or deconfigure of the CPU a cross-call runs on, the call made with `run(on:)` or `submit(on:)`.
    private func crossCall(_ rng: inout SplitMix64) {
        let cpu = Int.random(in: 0..<machine.possibleCount, using: &rng)
        let deconfigure = rng.chance(0.5), wait = rng.chance(0.5), bulk = rng.chance(0.5)
        do throws(HotplugError) {
            if wait {
                try machine.run(on: cpu) { [self] in selfOffline(deconfigure: deconfigure, bulk: bulk) }
            } else {
                let call = try machine.submit(on: cpu) { [self] in selfOffline(deconfigure: deconfigure, bulk: bulk) }
                checks.check(.progress, call.wait(timeout: .seconds(5)),
                             "a call submitted to logical CPU \(cpu) did not start within 5 s")
            }
            fromCrossCalls.add()
        } catch {
            if case .notOnline = error { return }
            checks.fail(error.isTimeout ? .progress : .misuse, "run(on: \(cpu)) for a wrong call threw \(error)")
        }
    }

    /// Inside a stop_machine body: offline, stopMachine, and a cross-call to another CPU.
    private func stopMachineBody(_ rng: inout SplitMix64) {
        let victim = Int.random(in: 0..<machine.possibleCount, using: &rng)
        let machine = self.machine
        @Sendable func refused(_ operation: HotplugOperation) -> HotplugError {
            .wouldDeadlock(operation: operation, reason: .insideStopMachine)
        }
        do throws(HotplugError) {
            try machine.stopMachine { [self] cpu in
                expectRefusal("offline(\(victim)) in a stop_machine body", refused(.offline)) {
                    () throws(HotplugError) in try machine.offline(victim)
                }
                expectRefusal("offline([\(victim)]) in a stop_machine body", refused(.offline)) {
                    () throws(HotplugError) in _ = try machine.offline([victim] as CPUSet)
                }
                expectRefusal("stopMachine in a stop_machine body", refused(.stopMachine)) {
                    () throws(HotplugError) in try machine.stopMachine { _ in }
                }
                // The online mask is still while the body runs.
                if let other = machine.online.first(where: { $0 != cpu }) {
                    expectRefusal("run(on: \(other)) in a stop_machine body", refused(.crossCall)) {
                        () throws(HotplugError) in try machine.run(on: other) {}
                    }
                }
            }
            fromStopMachine.add()
        } catch {
            checks.fail(error.isTimeout ? .progress : .misuse, "stopMachine for wrong calls threw \(error)")
        }
    }

    // MARK: STOP storms

    /// STOP, then START, to a CPU busy in a cross-call. The hotplug read lock keeps every CPU where it is
    /// meanwhile (an offline of the stopped CPU is refused with `stoppedByOrder`: the on/off thread expects it).
    private func stopStorm(_ rng: inout SplitMix64) {
        let pause = UInt32.random(in: 500...5_000, using: &rng)
        let spin = Int64.random(in: 200_000...2_000_000, using: &rng)
        let pick = rng.next()
        let machine = self.machine
        machine.withCPUsReadLocked {
            let online = Array(machine.online)
            guard online.count >= 2 else { return }
            let target = online[Int(pick % UInt64(online.count))]
            let started = Atomic<Bool>(false), finished = Atomic<Int64>(0)
            let call: CrossCall
            do throws(HotplugError) {
                call = try machine.submit(on: target) {
                    started.store(true, ordering: .releasing)   // partner: the acquiring load below
                    let end = monotonicNanoseconds() + spin
                    while monotonicNanoseconds() < end {}
                    finished.store(monotonicNanoseconds(), ordering: .releasing)   // partner: the acquiring loads below
                }
            } catch {
                checks.fail(.stopStorm, "submit(on: \(target)) under the read lock threw \(error)")
                return
            }
            guard waitUntil(5_000, { started.load(ordering: .acquiring) }) else {
                checks.fail(.progress, "a call submitted to logical CPU \(target) did not start within 5 s")
                return
            }
            storms.add()
            // Sequentially consistent: partner of stopMark's loads.
            stormTarget.store(target, ordering: .sequentiallyConsistent)
            stopsSent[target].value.add(1, ordering: .sequentiallyConsistent)
            defer { stormTarget.store(-1, ordering: .sequentiallyConsistent) }
            order(.stop, to: target)
            usleep(pause)
            // A STOP taken later (deferred to the end of a section) makes START answer busy until then.
            var startedAt: Int64 = 0
            let restarted = waitUntil(5_000) {
                let accepted = order(.start, to: target, busyIsFine: true)
                if accepted { startedAt = monotonicNanoseconds() }
                return accepted
            }
            guard checks.check(.stopStorm, restarted, "SIGP START to logical CPU \(target) was not accepted within 5 s") else {
                return
            }
            let ended = call.wait(timeout: .seconds(5)) && finished.load(ordering: .acquiring) != 0
            let late = finished.load(ordering: .acquiring) - startedAt - spin
            checks.check(.stopStorm, ended && late <= MisuseLoad.stormSlack,
                         "the call on logical CPU \(target) ended " + (ended ? "\(late / 1_000_000) ms" : "not within 5 s")
                         + " after the START (and its own \(spin / 1_000) us)")
        }
    }

    /// Sends `order` and checks it was accepted (or, with `busyIsFine`, answered busy). Returns whether accepted.
    @discardableResult
    private func order(_ order: SIGPOrder, to cpu: Int, busyIsFine: Bool = false) -> Bool {
        do {
            let result = try machine.sigp(cpu, order)
            if result.conditionCode == .busy && busyIsFine { return false }
            return checks.check(.stopStorm, result.conditionCode == .accepted,
                                "SIGP \(order) to busy logical CPU \(cpu) answered \(result)")
        } catch {
            checks.fail(.stopStorm, "SIGP \(order) to busy logical CPU \(cpu) threw \(error)")
            return false
        }
    }

    // MARK: The prober thread

    /// `run(on:timeout: .milliseconds(5))` to random CPUs other than the one a storm holds: each returns within its
    /// timeout and the slack, done or timed out.
    func probe() {
        var rng = SplitMix64(seed: seed, stream: 901)
        while !stop.load(ordering: .relaxed) {
            let held = stormTarget.load(ordering: .sequentiallyConsistent)
            guard let cpu = Array(machine.online).filter({ $0 != held }).randomElement(using: &rng) else {
                usleep(1_000)
                continue
            }
            let started = monotonicNanoseconds()
            do throws(HotplugError) {
                try machine.run(on: cpu, timeout: MisuseLoad.probeTimeout) {}
            } catch {
                switch error {
                case .timeout, .notOnline: break
                default: checks.fail(.stopStorm, "run(on: \(cpu), timeout: 5 ms) threw \(error)")
                }
            }
            let took = monotonicNanoseconds() - started
            probes.add()
            checks.check(.stopStorm, took <= MisuseLoad.probeTimeoutNanoseconds + MisuseLoad.stormSlack,
                         "run(on: \(cpu), timeout: 5 ms) returned after \(took / 1_000_000) ms"
                         + (held >= 0 ? " while logical CPU \(held) was stopped" : ""))
            if held < 0 { usleep(UInt32.random(in: 100...1_000, using: &rng)) }
        }
    }

    // MARK: Shutdown with a busy CPU

    /// At the end, on a machine of its own (the torture's machine is shut down by then, and its final checks want
    /// every CPU to go down): one CPU busy in a long cross-call while `shutdown()` runs. Only that CPU may be left
    /// running, and once its call returns its thread leaves and the process lives on (the SIGP handler stays until
    /// then).
    static func shutdownWithBusyCPU(topology: Topology, checks: Checks) {
        let configuration = Machine.Configuration(responseTimeout: .milliseconds(500))
        let machine: Machine
        do {
            machine = try Machine(topology: topology, cpus: 2, configuration: configuration)
        } catch {
            checks.fail(.busyShutdown, "a machine of 2 CPUs for the shutdown check: \(error)")
            return
        }
        let busy = 1
        let release = Atomic<Bool>(false), started = Atomic<Bool>(false), done = Atomic<Bool>(false)
        // Read before the shutdown, which forgets the thread it leaves running.
        let tid = (try? machine.threadID(of: busy)).flatMap { $0 } ?? 0
        do throws(HotplugError) {
            try machine.submit(on: busy) {
                started.store(true, ordering: .releasing)   // partner: the acquiring load below
                while !release.load(ordering: .acquiring) { usleep(1_000) }   // partner: the releasing store below
                done.store(true, ordering: .releasing)   // partner: the acquiring load below
            }
        } catch {
            checks.fail(.busyShutdown, "submit(on: \(busy)) on the shutdown check's machine threw \(error)")
            machine.shutdown()
            return
        }
        guard checks.check(.busyShutdown, waitUntil(5_000, { started.load(ordering: .acquiring) }),
                           "the long call on logical CPU \(busy) did not start within 5 s") else {
            release.store(true, ordering: .releasing)
            machine.shutdown()
            return
        }
        let before = monotonicNanoseconds()
        let left = machine.shutdown()
        let took = monotonicNanoseconds() - before
        checks.check(.busyShutdown, left == CPUSet([busy]),
                     "shutdown() with logical CPU \(busy) busy left \(left) running, expected \(CPUSet([busy]))")
        checks.check(.busyShutdown, took <= 30_000_000_000, "shutdown() with a busy CPU took \(took / 1_000_000) ms")
        release.store(true, ordering: .releasing)
        checks.check(.busyShutdown, waitUntil(5_000, { done.load(ordering: .acquiring) }),
                     "the long call on logical CPU \(busy) did not return within 5 s of its release")
        // Its thread exits at its next safe point: gone from /proc, and this process still here after it.
        checks.check(.busyShutdown, tid != 0 && waitUntil(5_000, { !ProcFS.threadExists(tid) }),
                     "the thread of logical CPU \(busy) (tid \(tid)) did not exit within 5 s of its call's return")
        usleep(100_000)
        checks.check(.busyShutdown, kill(getpid(), 0) == 0, "the process is not alive after the busy CPU left")
    }
}

extension HotplugError {
    /// A CPU did not reach a safe point in time: the progress invariant's concern, not misuse's.
    var isTimeout: Bool {
        switch self {
        case .timeout, .notResponding: true
        default: false
        }
    }
}
