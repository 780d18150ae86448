import ExampleSupport
import Hotplug
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `--follow`: the machine follows the CPUs the process may use (`Machine.follow`: the process affinity mask, the
/// cgroup cpuset and the kernel's online CPUs), instead of the on/off thread's random attaches and detaches.
///
/// Whoever changes the machine from outside (an operator writing `/sys/devices/system/cpu/cpuN/online`, a cgroup
/// `cpuset.cpus` write, `taskset -a -p`) drives the hotplug; the workload and every check stay the same. The on/off
/// thread no longer attaches or detaches; it takes the follower's events, and between them checks what must hold
/// then, under the hotplug read lock (the follower may detach at any moment, so the online mask is held still for
/// the time of a check instead of being still between the on/off thread's own operations):
/// - every event of the follower is printed as a `follow-event` line as it happens (standard output; standard error
///   with `--json`), with the latency the follower measured (from the last poll that saw the CPU in its old
///   condition to the end of the operation, which bounds the delay from the change) and when it was printed
///   (`at_ns`, CLOCK_MONOTONIC, which a script can compare with the kernel's `/proc/timer_list` "now at");
/// - the invariant `follow`: each detach and attach completes within `--follow-deadline` (10 ms by default) of the
///   change, no follower operation fails, and no logical CPU stays online on an unusable physical CPU (or detached by
///   the follower on a usable one) for longer than ``FollowMode/staleLimit``;
/// - pinning: a thread of a logical CPU whose physical CPU is usable must be pinned to it; the follower re-pins a
///   thread whose mask a cgroup write or `taskset -a` replaced, so a broken pinning must be repaired within
///   ``FollowMode/repinLimit``. A logical CPU whose physical CPU is not usable cannot be pinned there (the kernel
///   refuses a mask of offline CPUs) and is not checked;
/// - a parked CPU's thread burns no CPU time: its window is checked while it stays parked (the follower wakes it
///   on its own schedule, so the window cannot be closed just before the attach as the on/off thread does);
/// - the progress check watches the workload (operations done), not the attaches and detaches.
/// - the CPU limit (a cgroup quota, or `HOTPLUG_MAX_CPUS`): each `resized` event is printed (source, limit in CPUs,
///   cgroup, target, CPUs detached and attached, latency) and must come within the deadline; the number of logical
///   CPUs online on usable physical CPUs must equal what the limit allows, as this thread reads it itself
///   (`Follower.currentLimit()` and `Limit.cpuCount`), within ``FollowMode/staleLimit``; a quota file the follower
///   cannot use is a violation.
/// At the end the follower gets time to attach what it detached (when the CPU is usable again) and is stopped; a
/// logical CPU whose physical CPU is still unusable stays parked and is left out of the final attach.
final class FollowMode: Sendable {
    let machine: Machine
    let checks: Checks
    let stats: OnOffStats
    /// Each detach and attach must complete within this (ns) of the change.
    let deadline: Int64
    /// What the on/off thread has not yet taken.
    private let pending = Mutex<[Follower.Event]>([])
    private let follower = Mutex<Follower?>(nil)
    let repins = Counter()
    let failures = Counter()
    let sources = Mutex<[Follower.Source]>([])
    private let output: @Sendable (String) -> Void

    /// A logical CPU on the wrong side of its physical CPU's usability for this long is a violation.
    static let staleLimit: Int64 = 1_000_000_000
    /// A thread whose pinning was broken while its CPU stayed usable must be pinned again within this.
    static let repinLimit: Int64 = 1_000_000_000

    /// SCHED_FIFO priority of the follower's thread (`--follow-realtime`), nil for the default policy.
    let realtimePriority: Int32?

    init(machine: Machine, checks: Checks, stats: OnOffStats, deadlineMilliseconds: Double, realtimePriority: Int32?,
         output: @escaping @Sendable (String) -> Void) {
        self.realtimePriority = realtimePriority
        self.machine = machine
        self.checks = checks
        self.stats = stats
        deadline = Int64(deadlineMilliseconds * 1e6)
        self.output = output
    }

    /// Starts following; a violation when the follower cannot start.
    func start() {
        do {
            let options = Machine.FollowOptions(realtimePriority: realtimePriority)
            let started = try machine.follow(options) { [self] event in record(event) }
            let readable = started.readableSources
            sources.withLock { $0 = readable }
            follower.withLock { $0 = started }
            output("follow-event started sources=\(readable.map(\.rawValue).joined(separator: ","))"
                   + " priority=\(realtimePriority.map { "SCHED_FIFO \($0)" } ?? "default")")
        } catch {
            checks.fail(.follow, "could not start following the machine: \(error)")
        }
    }

    /// The physical CPUs usable now (every CPU when the follower did not start).
    func usable() -> Set<Int> {
        follower.withLock { $0 }?.usablePhysicalCPUs() ?? Set(machine.topology.physicalCPUs)
    }

    var detachedCPUs: Set<Int> { follower.withLock { $0 }?.detachedCPUs ?? [] }

    /// The events since the last call (on/off thread).
    func take() -> [Follower.Event] { pending.withLock { events in defer { events = [] }; return events } }

    /// On the follower's thread, as each event happens: print it, count it, check its deadline.
    private func record(_ event: Follower.Event) {
        switch event {
        case .detached(let cpu, let physical, let sources, let latency, let operation):
            let nanoseconds = latency.nanoseconds
            output("follow-event detached cpu=\(cpu) physical=\(physical) sources="
                   + "\(sources.map(\.rawValue).joined(separator: ",")) latency_us=\(nanoseconds / 1_000) "
                   + "operation_us=\(operation.nanoseconds / 1_000) at_ns=\(monotonicNanoseconds())")
            count(stats.detach, nanoseconds)
            stats.detachesPerCPU[cpu].add()
            checks.check(.follow, nanoseconds <= deadline, "logical CPU \(cpu) was detached \(nanoseconds / 1_000) us after "
                         + "physical CPU \(physical) went away (deadline \(deadline / 1_000) us)")
        case .attached(let cpu, let physical, let latency, let operation):
            let nanoseconds = latency.nanoseconds
            output("follow-event attached cpu=\(cpu) physical=\(physical) latency_us=\(nanoseconds / 1_000) "
                   + "operation_us=\(operation.nanoseconds / 1_000) at_ns=\(monotonicNanoseconds())")
            count(stats.attach, nanoseconds)
            stats.cycles.add()
            checks.check(.follow, nanoseconds <= deadline, "logical CPU \(cpu) was attached \(nanoseconds / 1_000) us after "
                         + "physical CPU \(physical) came back (deadline \(deadline / 1_000) us)")
        case .repinned(let cpu, let physical):
            output("follow-event repinned cpu=\(cpu) physical=\(physical)")
            repins.add()
        case .resized(let resize):
            let nanoseconds = resize.latency.nanoseconds
            output(FollowMode.line(resize, online: machine.online.count) + " at_ns=\(monotonicNanoseconds())")
            stats.lastProgress.store(monotonicNanoseconds(), ordering: .relaxed)
            checks.check(.follow, nanoseconds <= deadline, "the follower resized to \(resize.target.map(String.init) ?? "every") "
                         + "CPU(s) \(nanoseconds / 1_000) us after the \(resize.source.rawValue) changed (deadline "
                         + "\(deadline / 1_000) us)")
        case .quotaUnusable(let problem):
            output("follow-event quota-unusable \(problem)")
            failures.add()
            checks.fail(.follow, "the follower could not use a quota file: \(problem)")
        case .failed(let cpu, let operation, let error):
            output("follow-event failed cpu=\(cpu) operation=\(operation) error=\(error)")
            failures.add()
            (operation == .online ? stats.attach : stats.detach).attempts.add()
            checks.fail(.follow, "the follower's \(operation) of logical CPU \(cpu) failed: \(error)")
        }
        pending.withLock { $0.append(event) }
    }

    /// A `resized` event as one line: `follow-event resized source=quota limit=1.50 quota=150000 period=100000
    /// cgroup=/kubepods/pod1/ctr target=2 online=2 detached=3,1 attached= weight=... latency_us=N`.
    static func line(_ resize: Follower.Resize, online: Int) -> String {
        let quota = resize.limit.quota
        return "follow-event resized source=\(resize.source.rawValue)"
            + " limit=\(resize.limit.cpus.map { Follower.format(cpus: $0) } ?? "none")"
            + (quota.map { " quota=\($0.quota) period=\($0.period) cgroup=\($0.cgroup)" } ?? "")
            + (resize.limit.cap.map { " cap=\($0)" } ?? "")
            + " target=\(resize.target.map(String.init) ?? "all") online=\(online)"
            + " detached=\(resize.detached.map(String.init).joined(separator: ","))"
            + " attached=\(resize.attached.map(String.init).joined(separator: ","))"
            + (resize.limit.weight.map { " weight=\($0.value)(\($0.version == .v2 ? "cpu.weight" : "cpu.shares"))" } ?? "")
            + " latency_us=\(resize.latency.nanoseconds / 1_000)"
    }

    /// How many logical CPUs should be online on usable physical CPUs, with `eligible` of them that the follower may
    /// count, under the limit as this thread reads it now (nil when it cannot read it).
    func expectedOnline(eligible: Int) -> Int? {
        guard let follower = follower.withLock({ $0 }), let limit = follower.currentLimit() else { return nil }
        let options = Machine.FollowOptions()
        return limit.cpuCount(usable: eligible, minimum: options.minimumCPUs, rounding: options.rounding)
    }

    private func count(_ side: OnOffStats.Direction, _ nanoseconds: Int64) {
        side.attempts.add()
        side.successes.add()
        side.latencies.withLock { $0.append(nanoseconds) }
        stats.lastProgress.store(monotonicNanoseconds(), ordering: .relaxed)
    }

    /// Gives the follower up to 5 s to attach again every CPU it detached whose physical CPU is usable and to pin
    /// again every thread whose physical CPU is usable, then stops it. Returns the logical CPUs left parked because
    /// their physical CPU is not usable.
    func settleAndStop() -> Set<Int> {
        let deadline = monotonicNanoseconds() + 5_000_000_000
        func waiting() -> Set<Int> {
            let now = self.usable()
            let eligible = (0..<machine.possibleCount).filter { cpu in
                guard let physical = try? machine.physicalCPU(of: cpu), now.contains(physical) else { return false }
                return machine.online.contains(cpu) || detachedCPUs.contains(cpu)
            }
            // Under a CPU limit the follower keeps some of them detached on purpose: only a wrong count waits.
            let short = eligible.filter { machine.online.contains($0) }.count < (expectedOnline(eligible: eligible.count) ?? eligible.count)
            return Set(eligible.filter { cpu in
                short && detachedCPUs.contains(cpu) || ThreadProbe.pinningProblem(machine, cpu: cpu) != nil
                    && ((try? machine.threadID(of: cpu)) ?? nil) != nil
            })
        }
        while !waiting().isEmpty && monotonicNanoseconds() < deadline { usleep(1_000) }
        let late = waiting()
        checks.check(.follow, late.isEmpty, "the follower did not attach (or pin again) logical CPUs \(late.sorted()) "
                     + "within 5 s although their physical CPUs are usable")
        // Stopped but kept: the sources are still read through it (usable() on the caller's thread).
        follower.withLock { $0 }?.stop()
        let usableNow = usable()
        return Set((0..<machine.possibleCount).filter { cpu in
            !machine.online.contains(cpu) && !((try? machine.physicalCPU(of: cpu)).map { usableNow.contains($0) } ?? true)
        })
    }
}

// MARK: - The on/off thread in follow mode

extension OnOffDriver {
    /// One iteration in follow mode: take the follower's events (start watching a CPU it parked, stop watching one
    /// it attached, check the pinning of an attached one).
    func followStep(_ follow: FollowMode, _ local: inout Local) {
        for event in follow.take() {
            switch event {
            case .detached(let cpu, _, _, _, _):
                local.everDetached.insert(cpu)
                machine.withCPUsReadLocked {
                    if (try? machine.state(of: cpu)) == .parked { startWatch(cpu, after: "its detach by the follower", &local) }
                }
            case .attached(let cpu, _, _, _):
                closeWatchSoFar(cpu, &local)
                checkPinning(follow, cpu)
            case .repinned, .failed, .resized, .quotaUnusable:
                break
            }
        }
        local.operations += 1
    }

    /// Between two iterations in follow mode: the checks of `betweenOperations`, with the online mask held still.
    func followChecks(_ follow: FollowMode, _ local: inout Local) {
        // Read before the lock (files and system calls): the read lock holds the follower's operations back.
        let usable = follow.usable(), detached = follow.detachedCPUs
        let eligible = (0..<machine.possibleCount).filter { cpu in
            (try? machine.physicalCPU(of: cpu)).map(usable.contains) ?? false && (machine.online.contains(cpu) || detached.contains(cpu))
        }.count
        let expected = follow.expectedOnline(eligible: eligible)
        machine.withCPUsReadLocked {
            let online = machine.online
            for cpu in 0..<machine.possibleCount where local.operations % 16 == 0 || !online.contains(cpu) {
                states.checkBalance(machine, cpu: cpu, checks: checks)
            }
            slab.checkOfflineCaches(online: online)
            for cpu in local.watches.keys.sorted() where online.contains(cpu) { closeWatchSoFar(cpu, &local) }
            pollWatches(&local)
            for cpu in local.watches.keys.sorted() { checkWatchSoFar(cpu, &local) }
            checkStaleness(usable: usable, detached: detached, online: online, expected: expected, &local)
        }
        if local.operations % 16 == 0 {
            for cpu in 0..<machine.possibleCount { checkPinning(follow, cpu) }
        }
        let now = monotonicNanoseconds()
        if now - local.lastQuiescent >= OnOffDriver.quiescentInterval {
            local.lastQuiescent = now
            guard slab.pause(timeoutMilliseconds: 2_000) else {
                checks.fail(.progress, "the slab churn did not pause within 2 s")
                return
            }
            machine.withCPUsReadLocked { slab.quiescentCheck(online: machine.online) }
            slab.resume()
        }
    }

    /// A logical CPU online on an unusable physical CPU must not stay so for ``FollowMode/staleLimit``, nor may the
    /// number of logical CPUs online on usable physical CPUs differ from what the CPU limit allows (`expected`; every
    /// one the follower may attach, without a limit) for that long.
    private func checkStaleness(usable: Set<Int>, detached: Set<Int>, online: CPUSet, expected: Int?, _ local: inout Local) {
        let now = monotonicNanoseconds()
        let eligible = (0..<machine.possibleCount).filter { cpu in
            (try? machine.physicalCPU(of: cpu)).map(usable.contains) ?? false && (online.contains(cpu) || detached.contains(cpu))
        }
        let onlineUsable = eligible.filter(online.contains).count
        let want = expected ?? eligible.count
        // Key -1: the count (the other keys are logical CPUs).
        if onlineUsable == want {
            local.staleSince[-1] = nil
        } else {
            let since = local.staleSince[-1] ?? now
            local.staleSince[-1] = since
            checks.check(.follow, now - since <= FollowMode.staleLimit,
                         "\(onlineUsable) logical CPUs online on usable physical CPUs while the CPU limit allows \(want) "
                         + "(of \(eligible.count)), for \((now - since) / 1_000_000) ms")
        }
        for cpu in 0..<machine.possibleCount {
            guard let physical = try? machine.physicalCPU(of: cpu) else { continue }
            let stale = online.contains(cpu) && !usable.contains(physical)
            guard stale else {
                local.staleSince[cpu] = nil
                continue
            }
            let since = local.staleSince[cpu] ?? now
            local.staleSince[cpu] = since
            checks.check(.follow, now - since <= FollowMode.staleLimit,
                         "logical CPU \(cpu) is \(online.contains(cpu) ? "online" : "parked") while physical CPU "
                         + "\(physical) is \(usable.contains(physical) ? "" : "not ")usable, for "
                         + "\((now - since) / 1_000_000) ms")
        }
    }

    /// In follow mode: a thread of a logical CPU whose physical CPU is usable is pinned to it, or pinned again
    /// within ``FollowMode/repinLimit``.
    func checkPinning(_ follow: FollowMode, _ cpu: Int) {
        guard let physical = try? machine.physicalCPU(of: cpu), ((try? machine.threadID(of: cpu)) ?? nil) != nil else { return }
        let deadline = monotonicNanoseconds() + FollowMode.repinLimit
        while follow.usable().contains(physical) {
            let problem = ThreadProbe.pinningProblem(machine, cpu: cpu)
            if problem == nil || monotonicNanoseconds() > deadline {
                stats.pinningChecks.add()
                checks.check(.pinning, problem == nil || !follow.usable().contains(physical),
                             (problem ?? "") + " (not pinned again within \(FollowMode.repinLimit / 1_000_000) ms)")
                return
            }
            usleep(1_000)
        }
    }
}
