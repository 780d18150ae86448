import ExampleSupport
import Hotplug
import Synchronization

/// Slab churn with objects handed between CPUs and threads, and the ledger that accounts for every object.
///
/// Logical CPUs (in cross-calls and tasklets) and worker threads allocate objects from one ``SlabCache`` and put
/// them in a shared pool; others take them out and free them: frees on another CPU than the allocating one, on a
/// worker thread (a foreign free), after the allocating CPU was detached. Each CPU's ONLINE hotplug state also
/// keeps one object per online CPU (allocated by its startup on the CPU, freed by its teardown).
///
/// Every object carries a tag while it is out (its address mixed with a constant in word 0, the complement of the
/// address in word 1): an allocation that returns an object still tagged hands out an object in use, and a free
/// that finds the tag damaged frees an object that was overwritten.
///
/// Every churn runs inside a *gate*: ``pause(timeout:)`` closes it and waits until no churn is in progress, so
/// that the cache's statistics can be compared exactly with this ledger (``quiescentCheck(online:)``). Entering
/// never blocks (a closed gate skips the churn), so a logical CPU never waits for the pause.
final class SlabChurn: Sendable {
    let cache: SlabCache
    private let checks: Checks
    /// Objects out, by address, waiting for someone to free them.
    private let pool = Mutex<[UInt]>([])
    /// The object each online CPU's ONLINE state holds (0 when none), touched only on that CPU.
    private let held: PerCPU<UInt>
    let heldCount = Counter()

    let allocated = Counter()
    let freed = Counter()
    let skipped = Counter()
    let shrinks = Counter()
    let quiescentChecks = Counter()

    /// Bit `paused` closes the gate; the bits below count the churns in progress.
    private let gate = Atomic<Int>(0)
    private static let paused = 1 << 40

    /// The pool's size beyond which churn frees more than it allocates.
    static let poolTarget = 2_048
    /// Object size and the small geometry that makes every slow path run often (magazine refills and spills,
    /// depot overflow, slabs mapped and unmapped).
    static let objectSize = 64
    static let options = SlabCache.Options(magazineCapacity: 8, slabBytes: 8_192, minimumFreeSlabsPerNode: 0,
                                           depotMagazinesPerNode: 2)
    private static let tagConstant: UInt = 0x7E57_0B1E_C7A1_1C0D

    init(machine: Machine, checks: Checks) throws(HotplugError) {
        cache = try SlabCache(name: "torture", objectSize: SlabChurn.objectSize, machine: machine,
                              options: SlabChurn.options)
        held = PerCPU(machine) { _ in 0 }
        self.checks = checks
    }

    // MARK: The gate

    /// True when a churn may run now; pair it with ``leave()``.
    private func enter() -> Bool {
        // Acquire: partner of resume's release (what the checker did is visible to the churn).
        let old = gate.add(1, ordering: .acquiring).oldValue
        if old & SlabChurn.paused != 0 {
            gate.subtract(1, ordering: .relaxed)
            skipped.add()
            return false
        }
        return true
    }

    private func leave() {
        // Release: partner of pause's acquiring load (the churn's frees and counts are visible to the checker).
        gate.subtract(1, ordering: .releasing)
    }

    /// Closes the gate and waits until no churn is in progress; false (and the gate open again) on timeout.
    func pause(timeoutMilliseconds: Int64) -> Bool {
        gate.bitwiseOr(SlabChurn.paused, ordering: .relaxed)
        // Acquire: partner of leave's release.
        let idle = waitUntil(timeoutMilliseconds) { gate.load(ordering: .acquiring) & (SlabChurn.paused - 1) == 0 }
        if !idle { resume() }
        return idle
    }

    func resume() {
        // Release: partner of enter's acquire.
        gate.bitwiseAnd(~SlabChurn.paused, ordering: .releasing)
    }

    // MARK: Objects

    private static func tag(_ address: UInt) -> UInt { address ^ tagConstant }

    /// Allocates one object and tags it; nil (and a violation) when the cache cannot.
    private func allocateTagged() -> UInt? {
        let object: UnsafeMutableRawPointer
        do {
            object = try cache.allocate()
        } catch {
            checks.fail(.slab, "allocate failed on \(site()): \(error)")
            return nil
        }
        let address = UInt(bitPattern: object)
        let fresh = object.load(as: UInt.self) != SlabChurn.tag(address)
            || object.load(fromByteOffset: MemoryLayout<UInt>.size, as: UInt.self) != ~address
        checks.check(.slab, fresh, "allocate on \(site()) handed out object 0x\(String(address, radix: 16)) while it is in use")
        object.storeBytes(of: SlabChurn.tag(address), as: UInt.self)
        object.storeBytes(of: ~address, toByteOffset: MemoryLayout<UInt>.size, as: UInt.self)
        allocated.add()
        return address
    }

    /// Checks an object's tag, clears it, frees the object.
    private func freeTagged(_ address: UInt) {
        guard let object = UnsafeMutableRawPointer(bitPattern: address) else {
            checks.fail(.slab, "the ledger holds a null object")
            return
        }
        let intact = object.load(as: UInt.self) == SlabChurn.tag(address)
            && object.load(fromByteOffset: MemoryLayout<UInt>.size, as: UInt.self) == ~address
        checks.check(.slab, intact, "object 0x\(String(address, radix: 16)) was overwritten while it was in use")
        object.storeBytes(of: 0, as: UInt.self)
        cache.free(object)
        freed.add()
    }

    private func site() -> String {
        cache.machine.currentCPU.map { "logical CPU \($0)" } ?? "a worker thread"
    }

    // MARK: Churn

    /// Takes up to `frees` random objects out of the pool and frees them here, then allocates `allocations` new
    /// ones and pools them. Frees more when the pool is above its target. Skipped while the gate is closed.
    func churn(frees: Int, allocations: Int, pick: UInt64) {
        guard enter() else { return }
        defer { leave() }
        var picker = SplitMix64(seed: pick)
        let victims = pool.withLock { pool -> [UInt] in
            let extra = pool.count > SlabChurn.poolTarget ? allocations + 8 : 0
            return (0..<min(frees + extra, pool.count)).map { _ in
                let index = Int.random(in: 0..<pool.count, using: &picker)
                pool.swapAt(index, pool.count - 1)
                return pool.removeLast()
            }
        }
        for address in victims { freeTagged(address) }
        let made = (0..<allocations).compactMap { _ in allocateTagged() }
        pool.withLock { $0 += made }
    }

    /// Allocates and frees `rounds` times here, holding a few objects at a time (net zero): the magazine fast
    /// paths and their refills and spills on one CPU.
    func churnLocally(rounds: Int, pick: UInt64) {
        guard enter() else { return }
        defer { leave() }
        var picker = SplitMix64(seed: pick)
        var local: [UInt] = []
        for _ in 0..<rounds {
            if local.isEmpty || (local.count < 32 && Bool.random(using: &picker)) {
                if let address = allocateTagged() { local.append(address) }
            } else {
                freeTagged(local.removeLast())
            }
        }
        for address in local { freeTagged(address) }
    }

    /// Returns every free slab (and every CPU's magazines) to the system while the churn goes on.
    /// - Throws: what ``SlabCache/shrink()`` throws (a CPU that did not reach a safe point in time).
    func shrink() throws(HotplugError) {
        guard enter() else { return }
        defer { leave() }
        try cache.shrink()
        shrinks.add()
    }

    // MARK: The ONLINE state's object

    /// ONLINE startup, on `cpu` itself: the CPU takes an object of its own.
    func cpuOnline(_ cpu: Int) {
        held.withLocal { _, object in
            checks.check(.callbacks, object == 0,
                         "the ONLINE startup ran twice on logical CPU \(cpu) without its teardown in between")
            if object == 0, let address = allocateTagged() {
                object = address
                heldCount.add()
            }
        }
    }

    /// ONLINE teardown, on `cpu` itself: the CPU frees its object.
    func cpuGoingOffline(_ cpu: Int) {
        held.withLocal { _, object in
            checks.check(.callbacks, object != 0, "the ONLINE teardown ran on logical CPU \(cpu) without its startup")
            if object != 0 {
                freeTagged(object)
                object = 0
                heldCount.add(-1)
            }
        }
    }

    // MARK: Checks

    /// Compares the cache's statistics with the ledger. Call it with the gate closed (``pause(timeoutMilliseconds:)``)
    /// and no hotplug operation in flight, so that both are exact; `online` is the (stable) online mask.
    func quiescentCheck(online: CPUSet) {
        quiescentChecks.add()
        let stats = cache.statistics()
        let out = allocated.load - freed.load
        let pooled = pool.withLock { $0.count } + heldCount.load
        checks.check(.slab, stats.inUse == out,
                     "statistics().inUse \(stats.inUse), but \(allocated.load) allocated - \(freed.load) freed = \(out)")
        checks.check(.slab, pooled == out, "the ledger holds \(pooled) objects, but \(out) are out")
        checks.check(.slab, stats.accountedInUse == stats.inUse,
                     "statistics().accountedInUse \(stats.accountedInUse) != inUse \(stats.inUse) at a quiescent point")
        checkOfflineCaches(stats, online: online)
    }

    /// No CPU outside `online` caches an object (its magazines were drained by `slab:dead`).
    func checkOfflineCaches(online: CPUSet) { checkOfflineCaches(cache.statistics(), online: online) }

    private func checkOfflineCaches(_ stats: SlabCache.Statistics, online: CPUSet) {
        for (cpu, cached) in stats.cachedPerCPU.enumerated() where !online.contains(cpu) {
            checks.check(.offlineCaches, cached == 0, "logical CPU \(cpu) is not online but caches \(cached) objects")
        }
    }

    /// The end of the run: frees every pooled object (half of them on online CPUs, half here), then checks that
    /// nothing is in use, shrinks the cache and checks that no slab stays mapped.
    func finish(machine: Machine) -> SlabTally {
        quiescentCheck(online: machine.online)
        let rest = pool.withLock { pool -> [UInt] in defer { pool.removeAll() }; return pool }
        let online = Array(machine.online)
        for (index, address) in rest.enumerated() {
            if index % 2 == 0 || online.isEmpty {
                freeTagged(address)
            } else {
                let cpu = online[index % online.count]
                do {
                    try machine.run(on: cpu) { self.freeTagged(address) }
                } catch {
                    checks.fail(.progress, "the final free on logical CPU \(cpu) failed: \(error)")
                    freeTagged(address)
                }
            }
        }
        let outByLedger = allocated.load - freed.load - heldCount.load
        let stats = cache.statistics()
        let expected = heldCount.load
        checks.check(.slab, outByLedger == 0, "after freeing every pooled object the ledger still has \(outByLedger) out")
        checks.check(.slab, stats.inUse == expected && stats.accountedInUse == expected,
                     "after freeing everything: inUse \(stats.inUse), accountedInUse \(stats.accountedInUse), "
                     + "expected \(expected) (the online CPUs' own objects)")
        return SlabTally(allocated: allocated.load, freed: freed.load, inUseEnd: stats.inUse - expected,
                         leaked: max(0, max(stats.inUse, stats.accountedInUse) - expected), bytesMappedEnd: nil)
    }

    /// After the machine shut down (every CPU detached, every ONLINE teardown run): nothing in use, nothing cached,
    /// and a shrink unmaps every slab.
    func finishAfterShutdown(_ tally: SlabTally) -> SlabTally {
        var tally = tally
        let stats = cache.statistics()
        checks.check(.slab, heldCount.load == 0, "\(heldCount.load) CPUs still hold their ONLINE object after shutdown")
        checks.check(.slab, stats.inUse == 0 && stats.accountedInUse == 0,
                     "after shutdown: inUse \(stats.inUse), accountedInUse \(stats.accountedInUse)")
        checkOfflineCaches(stats, online: [])
        do {
            try cache.shrink()
        } catch {
            checks.fail(.slab, "shrink after shutdown failed: \(error)")
        }
        let mapped = cache.statistics().bytesMapped
        checks.check(.slab, mapped == 0, "\(mapped) bytes of slabs stay mapped after everything was freed and shrunk")
        tally.inUseEnd = stats.inUse
        tally.leaked = max(tally.leaked, max(stats.inUse, stats.accountedInUse))
        tally.allocated = allocated.load
        tally.freed = freed.load
        tally.bytesMappedEnd = mapped
        return tally
    }
}

/// The slab figures of the report.
struct SlabTally: Sendable {
    var allocated: Int
    var freed: Int
    /// Objects the cache still counts in use at the end (0 when every object came back).
    var inUseEnd: Int
    /// Objects the cache counts in use (or out of their slabs) that nobody holds.
    var leaked: Int
    var bytesMappedEnd: Int?
}
