extension HotplugState {
    /// Built-in: the slab allocator gives an attaching CPU its magazines (startup, before the CPU starts).
    static let slabPrepare = HotplugState(rawValue: 22)
    /// Built-in: the slab allocator drains a dead CPU's magazines (teardown). Below `tasklets:dead`, so it runs
    /// after the takeover on detach.
    static let slabDead = HotplugState(rawValue: 25)
}

/// The slab caches of a machine, for the built-in hotplug states `slab:prepare` and `slab:dead`. It keeps the
/// caches weakly (a cache keeps its machine, not the other way round) and never refers to the machine.
final class SlabRegistry: HotplugSubsystem {
    private struct Entry {
        weak var cache: SlabCache?
        let id: UInt64
    }

    private struct Contents {
        var caches: [Entry] = []
        /// The machine shut down: no new caches.
        var isClosed = false
    }

    private let contents = Locked(Contents())

    init(_ context: HotplugSubsystemContext) {}

    /// `slab:prepare` and `slab:dead` (PREPARE).
    var hotplugStates: [HotplugBuiltinState] {
        [HotplugBuiltinState(state: .slabPrepare, name: "slab:prepare",
                             startup: { [weak self] cpu in self?.prepare(cpu: cpu) },
                             // slab:dead (above it) has always drained the CPU first; kept so that the pair is
                             // self-contained.
                             teardown: { [weak self] cpu in self?.drain(cpu: cpu) }),
         HotplugBuiltinState(state: .slabDead, name: "slab:dead",
                             startup: nil,
                             teardown: { [weak self] cpu in self?.drain(cpu: cpu) })]
    }

    func register(_ cache: SlabCache) throws(HotplugError) {
        try contents.withLock { (contents) throws(HotplugError) in
            guard !contents.isClosed else { throw .shutDown }
            contents.caches.append(Entry(cache: cache, id: cache.cacheID))
        }
    }

    func unregister(_ id: UInt64) {
        contents.withLock { $0.caches.removeAll { $0.id == id || $0.cache == nil } }
    }

    /// Refuses new caches (the machine shut down).
    func close() { contents.withLock { $0.isClosed = true } }

    /// The live caches (strong references for the duration of a callback).
    private var live: [SlabCache] { contents.withLock { $0.caches.compactMap(\.cache) } }

    /// The caches still alive (for ``Machine/sampleMetrics()``).
    var liveCaches: [SlabCache] { live }

    /// `slab:prepare` startup: magazines for an attaching CPU.
    func prepare(cpu: Int) { for cache in live { cache.prepare(cpu: cpu) } }

    /// `slab:dead` teardown (and `slab:prepare`'s, for a rolled-back attach): drains a dead CPU's magazines.
    func drain(cpu: Int) { for cache in live { cache.release(cpu: cpu, keepMagazines: true) } }
}
