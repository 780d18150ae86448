import Hotplug

/// The counters of the keys one shard owns: the same code behind both kinds of shard.
struct Counters {
    private var values: [String: Int] = [:]

    /// Adds one to `key`'s counter; returns the new value.
    mutating func increment(_ key: String) -> Int {
        let value = values[key, default: 0] + 1
        values[key] = value
        return value
    }

    func value(of key: String) -> Int? { values[key] }
}

/// One shard of the key-value store, whichever executor it runs on.
protocol Shard: Actor {
    /// The executor a caller's task should prefer so that its nonisolated code runs beside the shard (nil: the
    /// default executor).
    nonisolated var preferredExecutor: (any TaskExecutor)? { get }
    func increment(_ key: String) -> Int
    func value(of key: String) -> Int?
}

/// A shard pinned to one logical CPU: its jobs run on that CPU's thread (or its stand-in while it is detached).
actor PinnedShard: Shard {
    let executor: CPUExecutor
    private var counters = Counters()

    init(executor: CPUExecutor) { self.executor = executor }

    /// The pinning: every job of this actor goes to the CPU's executor.
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
    nonisolated var preferredExecutor: (any TaskExecutor)? { executor }

    func increment(_ key: String) -> Int { counters.increment(key) }
    func value(of key: String) -> Int? { counters.value(of: key) }
}

/// A default actor on Swift's global executor: the `--executor global` peer of ``PinnedShard``.
actor DefaultShard: Shard {
    private var counters = Counters()

    nonisolated var preferredExecutor: (any TaskExecutor)? { nil }

    func increment(_ key: String) -> Int { counters.increment(key) }
    func value(of key: String) -> Int? { counters.value(of: key) }
}

/// The key-value store: one shard per logical CPU, a key's shard chosen by a hash of the key.
struct Store: Sendable {
    let shards: [any Shard]

    /// One shard per possible logical CPU of `machine`: pinned to it (`pinned`), or default actors.
    init(machine: Machine, pinned: Bool) throws(HotplugError) {
        var shards: [any Shard] = []
        for cpu in 0..<machine.possibleCount {
            if pinned { shards.append(PinnedShard(executor: try machine.executor(cpu: cpu))) } else { shards.append(DefaultShard()) }
        }
        self.shards = shards
    }

    /// The shard that owns `key`. FNV-1a of the key's bytes, not `hashValue`, so a key's shard is the same in every
    /// run (`hashValue` is seeded per process).
    func shard(for key: String) -> any Shard {
        shards[Int(FNV.hash(key.utf8) % UInt64(shards.count))]
    }

    /// Increments `key`, the caller's task preferring the shard's executor: the hop into the shard and back stays
    /// on the shard's CPU instead of going through the global executor.
    func increment(_ key: String) async -> Int {
        let shard = shard(for: key)
        return await withTaskExecutorPreference(shard.preferredExecutor) { await shard.increment(key) }
    }

    func value(of key: String) async -> Int? {
        let shard = shard(for: key)
        return await withTaskExecutorPreference(shard.preferredExecutor) { await shard.value(of: key) }
    }
}

/// FNV-1a, 64 bits: a key's shard, and the CPU-bound work of `POST /work`.
enum FNV {
    static let offset: UInt64 = 0xcbf2_9ce4_8422_2325
    static let prime: UInt64 = 0x0000_0100_0000_01b3

    static func hash<S: Sequence>(_ bytes: S, seed: UInt64 = offset) -> UInt64 where S.Element == UInt8 {
        var hash = seed
        for byte in bytes {
            hash ^= UInt64(byte)
            hash &*= prime
        }
        return hash
    }

    /// Hashes `bytes` `rounds` times, each round seeded with the previous round's hash: work that grows linearly
    /// with `rounds * bytes.count` and that the optimiser cannot fold away.
    static func rounds(_ bytes: [UInt8], _ rounds: Int) -> UInt64 {
        var hash = offset
        for _ in 0..<rounds { hash = FNV.hash(bytes, seed: hash) }
        return hash
    }
}
