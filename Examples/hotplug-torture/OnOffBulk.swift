import ExampleSupport
import Hotplug

/// The on/off thread's bulk operations (`Machine.online(_: CPUSet)`, `Machine.offline(_: CPUSet)`): a random set of
/// CPUs attached or detached in one walk, with failures injected into some of them at the points single operations
/// use, checked CPU by CPU (docs/ARCHITECTURE.md, "The hotplug walk"):
///
/// - a CPU with an injected failure is reported failed at exactly that state, rolled back, and is where it started
///   (hotplug state, lifecycle, masks); with `--misuse` a detach of a CPU a STOP storm holds may instead be
///   reported `stoppedByOrder` (its injection stays armed);
/// - every other CPU asked to move is reported changed and is where it was sent;
/// - a CPU of the set already at the target is neither changed nor failed, and stays;
/// - the online mask changed by exactly the CPUs reported changed;
/// - a detach set holding every online CPU (tried on purpose now and then) is refused whole with
///   `busy(cpu:, reason: .lastOnlineCPU)`: nothing moves, and the failures injected into its CPUs stay armed (the
///   next detach of each CPU must meet its failure).
///
/// What the on/off thread checks of single operations holds for each CPU of a set: the callback balances right after
/// the call, parked windows end before a CPU is attached and start after it is detached (or after its attach
/// failed), an attached CPU is pinned, detaches are counted per CPU for the held tasklets.
extension OnOffDriver {
    /// Share of the on/off thread's operations that are bulk operations.
    static let bulkShare = 1.0 / 3
    /// Share of bulk detaches that name every online CPU on purpose (they must be refused whole).
    static let wholeRefusalShare = 1.0 / 16
    /// Share of bulk operations that include a CPU already at the target although more could move.
    static let alreadyThereShare = 0.25

    /// The largest set of a bulk operation: half the machine, at least 2, at most 16 (a set of 16 already puts
    /// 16 bring-ups or deaths into one stop_machine; larger ones add nothing new and slow down the other checks).
    static func largestBulkSet(cpus: Int) -> Int { min(cpus, max(2, min(16, cpus / 2))) }

    /// One bulk operation: attach with the share of CPUs parked (the machine hovers around half online, as with
    /// single operations), else detach; a set of 2 up to ``largestBulkSet(cpus:)`` CPUs.
    func bulkStep(_ local: inout Local) {
        let count = machine.possibleCount
        let online = machine.online
        let offline = (0..<count).filter { !online.contains($0) }
        let attach = online.count == 1 || local.rng.chance(Double(offline.count) / Double(count))
        if !attach && local.rng.chance(OnOffDriver.wholeRefusalShare) {
            detachEveryOnlineCPU(online: online, offline: offline, &local)
            return
        }
        let candidates = attach ? offline : Array(online), others = attach ? Array(online) : offline
        let size = Int.random(in: 2...OnOffDriver.largestBulkSet(cpus: count), using: &local.rng)
        // A detach leaves at least one online CPU out of its set.
        var moving = max(0, min(size, candidates.count - (attach ? 0 : 1)))
        if moving > 1 && !others.isEmpty && local.rng.chance(OnOffDriver.alreadyThereShare) { moving -= 1 }
        let movers = sample(candidates, moving, &local.rng)
        let stayers = sample(others, min(size - moving, others.count), &local.rng)
        bulk(attach: attach, movers: movers, stayers: stayers, online: online, &local)
    }

    /// Attaches or detaches `movers` (not at the target) and `stayers` (already there) in one call, and checks
    /// every CPU of the set.
    private func bulk(attach: Bool, movers: [Int], stayers: [Int], online: CPUSet, _ local: inout Local) {
        let set = CPUSet(movers + stayers)
        let side = attach ? stats.bulkAttach : stats.bulkDetach
        side.calls.add()
        side.cpus.attempts.add(movers.count)
        side.alreadyThere.add(stayers.count)
        var expected: [Int: InjectionPoint] = [:]
        for cpu in movers { expected[cpu] = injection(cpu: cpu, attach: attach, &local) }
        if attach { for cpu in movers { finishWatch(cpu, &local) } }   // measured before the threads are woken
        var marks: [Int: (held: Bool, sent: Int)] = [:]
        if let misuse, !attach { for cpu in movers { marks[cpu] = misuse.stopMark(cpu) } }
        let started = monotonicNanoseconds()
        let outcome = Result { () throws(HotplugError) -> HotplugBatchResult in
            if attach { try machine.online(set) } else { try machine.offline(set) }
        }
        let latency = monotonicNanoseconds() - started
        local.operations += 1
        let name = "bulk \(attach ? "attach" : "detach") of \(set)"
        let result: HotplugBatchResult
        switch outcome {
        case .success(let value): result = value
        case .failure(let error):
            // Nothing refuses a set like this one whole (it leaves a CPU online, hotplug is never disabled here).
            checks.fail(.rollback, "\(name) threw \(error)")
            for cpu in movers { if let point = expected[cpu] { local.pending[cpu * 2 + (attach ? 1 : 0)] = point } }
            return
        }
        let failed = CPUSet(result.failures.keys)
        checks.check(.rollback, result.changed.allSatisfy(set.contains) && failed.allSatisfy(set.contains)
                     && !result.changed.contains(where: failed.contains),
                     "\(name): changed \(result.changed) and failed \(failed) must be disjoint parts of the set")
        for cpu in stayers {
            checks.check(.rollback, !result.changed.contains(cpu) && result.failures[cpu] == nil,
                         "\(name): CPU \(cpu) was already \(attach ? "online" : "parked") but is reported "
                         + (result.failures[cpu].map { "failed (\($0))" } ?? "changed"))
            checkWhere(cpu, online: attach)
        }
        for cpu in movers {
            let what = "\(name): CPU \(cpu)"
            if result.changed.contains(cpu) {
                side.cpus.successes.add()
                moved(cpu, attach: attach, expected: expected[cpu], what: what, &local)
            } else if let error = result.failures[cpu] {
                notMoved(cpu, attach: attach, error, expected: expected[cpu], mark: marks[cpu], side: side.cpus,
                         what: what, &local)
            } else {
                checks.fail(.rollback, "\(what) is reported neither changed nor failed")
            }
            checkWhere(cpu, online: attach == result.changed.contains(cpu))
        }
        for cpu in set { states.checkBalance(machine, cpu: cpu, checks: checks) }
        var after = online
        for cpu in result.changed { if attach { after.insert(cpu) } else { after.remove(cpu) } }
        let now = machine.online
        checks.check(.rollback, now == after,
                     "\(name): online \(now) after it, expected \(after) (before \(online), changed \(result.changed))")
        let moved = result.changed.count
        guard moved > 0 else { return }
        side.latencies.withLock { $0.append(latency) }
        side.cpus.latencies.withLock { $0.append(latency / Int64(moved)) }
        if moved > side.mostMoved.load { side.mostMoved.value.store(moved, ordering: .relaxed) }
    }

    /// A detach of every online CPU (and maybe some parked ones): refused whole, nothing changed. Failures are
    /// injected into some of its CPUs as into any detach; they must stay armed, so each goes to `pending` and the
    /// next detach of its CPU must meet it.
    private func detachEveryOnlineCPU(online: CPUSet, offline: [Int], _ local: inout Local) {
        let parked = sample(offline, Int.random(in: 0...min(2, offline.count), using: &local.rng), &local.rng)
        let set = CPUSet(Array(online) + parked)
        let side = stats.bulkDetach
        side.calls.add()
        for cpu in online {
            if let point = injection(cpu: cpu, attach: false, &local) { local.pending[cpu * 2] = point }
        }
        let outcome = Result { () throws(HotplugError) -> HotplugBatchResult in try machine.offline(set) }
        local.operations += 1
        let name = "bulk detach of every online CPU (\(set))"
        switch outcome {
        case .failure(.busy(let cpu?, .lastOnlineCPU)) where set.contains(cpu):
            side.refusedWhole.add()
            stats.lastProgress.store(monotonicNanoseconds(), ordering: .relaxed)
        case .failure(let error): checks.fail(.rollback, "\(name) threw \(error), expected busy(lastOnlineCPU)")
        case .success(let result): checks.fail(.rollback, "\(name) was not refused: changed \(result.changed), failed "
                                               + "\(result.failures)")
        }
        for cpu in set {
            checkWhere(cpu, online: online.contains(cpu))
            states.checkBalance(machine, cpu: cpu, checks: checks)
        }
        let now = machine.online
        checks.check(.rollback, now == online, "\(name): online \(now) after it, expected \(online) unchanged")
    }

    /// `count` distinct elements of `from`, in random order (a partial Fisher-Yates shuffle).
    private func sample(_ from: [Int], _ count: Int, _ rng: inout SplitMix64) -> [Int] {
        var pool = from
        let count = min(count, pool.count)
        for index in 0..<count { pool.swapAt(index, Int.random(in: index..<pool.count, using: &rng)) }
        return Array(pool.prefix(count))
    }
}
