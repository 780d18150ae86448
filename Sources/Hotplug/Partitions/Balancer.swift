/// How loaded one partition was over the last sampling interval.
public struct PartitionLoad: Sendable, Equatable {
    public let name: String
    /// Processors the partition owned at the end of the interval.
    public let processors: Int
    /// Tasklet runs queued on its CPUs and not yet taken.
    public let queuedTasklets: Int
    /// The share of its processors' time its CPUs' threads ran during the interval (0...1; a parked or idle CPU
    /// adds nothing).
    public let busy: Double
    /// One number to compare partitions: ``busy`` plus queued tasklets per processor over `queueScale`.
    public let pressure: Double
}

/// Decides which partition gives a processor to which, from their loads. Pluggable: a ``Balancer`` asks its policy
/// after every sample.
public protocol BalancerPolicy: Sendable {
    /// A move to make now, as indices into `loads` (`from` keeps at least one processor: the balancer checks), or nil.
    mutating func decide(_ loads: [PartitionLoad]) -> (from: Int, to: Int)?
}

/// The default policy: move one processor from the least to the most pressed partition when the most pressed is
/// at or above ``high``, the least at or below ``low`` and has more than one processor, for ``patience``
/// consecutive samples (hysteresis: short bursts move nothing); then wait ``cooldown`` samples before the next move,
/// so that the receiver's load can settle.
public struct HysteresisPolicy: BalancerPolicy {
    public private(set) var high: Double
    public private(set) var low: Double
    public private(set) var patience: Int
    public private(set) var cooldown: Int
    private var streak: (from: Int, to: Int, count: Int)?
    private var quiet = 0

    /// The default policy (`high` 0.6, `low` 0.3, `patience` 3, `cooldown` 3).
    public static let standard = HysteresisPolicy(checked: 0.6, 0.3, 3, 3)

    /// - Parameters:
    ///   - high: the pressure at or above which a partition gets a processor; finite, at least `low`.
    ///   - low: the pressure at or below which a partition gives one; finite, at least 0.
    ///   - patience: consecutive samples the same move must be wanted before it is made; at least 1.
    ///   - cooldown: samples to wait after a move; at least 0.
    /// - Throws: ``HotplugError/invalidArgument(name:value:valid:)`` for a number out of those ranges (a NaN
    ///   threshold would never move anything, a `low` above `high` would move processors back and forth).
    public init(high: Double = 0.6, low: Double = 0.3, patience: Int = 3, cooldown: Int = 3) throws(HotplugError) {
        guard low.isFinite, low >= 0 else {
            throw .invalidArgument(name: "low", value: "\(low)", valid: "a finite number >= 0")
        }
        guard high.isFinite, high >= low else {
            throw .invalidArgument(name: "high", value: "\(high)", valid: "a finite number >= low (\(low))")
        }
        guard patience >= 1 else { throw .invalidArgument(name: "patience", value: "\(patience)", valid: ">= 1") }
        guard cooldown >= 0 else { throw .invalidArgument(name: "cooldown", value: "\(cooldown)", valid: ">= 0") }
        self.init(checked: high, low, patience, cooldown)
    }

    private init(checked high: Double, _ low: Double, _ patience: Int, _ cooldown: Int) {
        self.high = high
        self.low = low
        self.patience = patience
        self.cooldown = cooldown
    }

    public mutating func decide(_ loads: [PartitionLoad]) -> (from: Int, to: Int)? {
        if quiet > 0 { quiet -= 1; streak = nil; return nil }
        guard loads.count >= 2,
              let to = loads.indices.max(by: { loads[$0].pressure < loads[$1].pressure }),
              let from = loads.indices.filter({ $0 != to && loads[$0].processors > 1 })
                  .min(by: { loads[$0].pressure < loads[$1].pressure }),
              loads[to].pressure >= high, loads[from].pressure <= low else {
            streak = nil
            return nil
        }
        let count = (streak.map { $0.from == from && $0.to == to ? $0.count : 0 } ?? 0) + 1
        guard count >= patience else {
            streak = (from, to, count)
            return nil
        }
        streak = nil
        quiet = cooldown
        return (from, to)
    }
}

/// Samples the partitions of a pool and moves processors from idle to loaded ones, as its policy says.
///
/// ``step()`` samples once and makes at most one move; ``start(interval:onOutcome:)`` runs steps on a thread of its own
/// until ``stop()``. A move that fails (an injected or real hotplug failure) is reported and the next step goes on.
public final class Balancer: @unchecked Sendable {
    // @unchecked: `policy` and the baselines are touched only under `lock` (step is serialised).
    public let pool: CPUPool
    public let partitions: [Partition]
    /// Queued tasklets per processor that count as a pressure of 1.
    public let queueScale: Double
    private var policy: any BalancerPolicy
    private let lock = Lock()
    /// Per partition: logical CPU -> its thread's CPU time at the last sample; and that sample's time.
    private var baselines: [[Int: Duration]]
    private var sampledAt: ContinuousClock.Instant
    /// The thread of ``start(interval:onOutcome:)`` while it runs.
    private let loop = Locked<PeriodicThread?>(nil)

    /// What one step did.
    public enum Outcome: Sendable {
        case stayed
        case moved(CPUPool.Move)
        case failed(from: String, to: String, processor: Int, error: HotplugError)
    }

    /// - Parameters:
    ///   - pool: whose partitions it balances.
    ///   - partitions: at least two partitions of `pool`.
    ///   - policy: decides the moves; ``HysteresisPolicy/standard`` by default.
    ///   - queueScale: queued tasklets per processor that count as a pressure of 1; finite and positive.
    /// - Throws: ``HotplugError/invalidConfiguration(_:)`` for fewer than two partitions or one of another pool;
    ///   ``HotplugError/invalidArgument(name:value:valid:)`` for a `queueScale` that is not finite and positive.
    public init(pool: CPUPool, partitions: [Partition], policy: any BalancerPolicy = HysteresisPolicy.standard,
                queueScale: Double = 64) throws(HotplugError) {
        guard partitions.count >= 2, partitions.allSatisfy({ $0.pool === pool }) else {
            throw .invalidConfiguration("a balancer needs at least two partitions of its pool")
        }
        guard queueScale.isFinite, queueScale > 0 else {
            throw .invalidArgument(name: "queueScale", value: "\(queueScale)", valid: "a finite number > 0")
        }
        self.pool = pool
        self.partitions = partitions
        self.policy = policy
        self.queueScale = queueScale
        baselines = Array(repeating: [:], count: partitions.count)
        sampledAt = ContinuousClock.now
        _ = sampleLocked()
    }

    /// The load of every partition since the previous sample (or since the balancer was created).
    public func sample() -> [PartitionLoad] { lock.withLock { sampleLocked() } }

    private func sampleLocked() -> [PartitionLoad] {
        let now = ContinuousClock.now
        let elapsed = max(1e-9, (now - sampledAt).seconds)
        sampledAt = now
        return partitions.enumerated().map { index, partition in
            let machine = partition.machine
            var times: [Int: Duration] = [:]
            var ran = 0.0
            var queued = 0
            for cpu in machine.online {
                queued += (try? machine.queuedTasklets(on: cpu)) ?? 0
                guard let time = (try? machine.cpuTime(of: cpu)) ?? nil else { continue }
                times[cpu] = time
                if let before = baselines[index][cpu] { ran += (time - before).seconds }
            }
            baselines[index] = times
            let processors = times.count
            let busy = processors == 0 ? 0 : min(1, ran / (elapsed * Double(processors)))
            let pressure = busy + Double(queued) / (Double(max(1, processors)) * queueScale)
            return PartitionLoad(name: partition.name, processors: processors, queuedTasklets: queued, busy: busy,
                                 pressure: pressure)
        }
    }

    /// Samples, asks the policy, and makes at most one move (the donor's highest-numbered processor).
    @discardableResult
    public func step() -> Outcome {
        lock.withLock {
            let loads = sampleLocked()
            guard let decision = policy.decide(loads),
                  loads.indices.contains(decision.from), loads.indices.contains(decision.to), decision.from != decision.to
            else { return .stayed }
            let from = partitions[decision.from], to = partitions[decision.to]
            guard from.ownedProcessors.count > 1, let processor = from.ownedProcessors.last else { return .stayed }
            do throws(HotplugError) {
                return .moved(try pool.move(processor, from: from, to: to))
            } catch {
                return .failed(from: from.name, to: to.name, processor: processor, error: error)
            }
        }
    }

    /// Runs ``step()`` every `interval` on a thread of its own, reporting each outcome but `.stayed`. The thread
    /// holds the balancer weakly: dropping the balancer stops it.
    /// - Throws: ``HotplugError/busy(cpu:reason:)`` with ``BusyReason/alreadyRunning`` (and no CPU) when it already
    ///   runs; ``HotplugError/invalidArgument(name:value:valid:)`` for an `interval` that is not positive or above
    ///   `UInt32.max` microseconds; ``HotplugError/system(call:errno:)`` when the thread cannot start.
    public func start(interval: Duration = .milliseconds(20),
                      onOutcome: @escaping @Sendable (Outcome) -> Void = { _ in }) throws(HotplugError) {
        try loop.withLock { (loop) throws(HotplugError) in
            guard loop == nil else { throw .busy(cpu: nil, reason: .alreadyRunning) }
            // Weak: the thread must not keep a dropped balancer (its pool, its machines) alive.
            loop = try PeriodicThread(interval: interval) { [weak self] in
                guard let self else { return false }
                let outcome = step()
                if case .stayed = outcome {} else { onOutcome(outcome) }
                return true
            }
        }
    }

    /// Whether the thread of ``start(interval:onOutcome:)`` runs (started and not stopped).
    public var isRunning: Bool { loop.withLock { $0 != nil } }

    /// Stops the thread of ``start(interval:onOutcome:)`` and waits for it. Called from `onOutcome` (the
    /// balancer's own thread) it returns at once, and the thread ends when the handler returns.
    public func stop() {
        let thread = loop.withLock { loop -> PeriodicThread? in
            defer { loop = nil }
            return loop
        }
        thread?.stop()   // outside the lock: waiting for the thread must not hold it
    }

    /// A balancer dropped without ``stop()``: its thread ends after the current step (the thread holds the
    /// balancer weakly).
    deinit { stop() }
}

extension Duration {
    /// The duration in seconds, as a `Double`.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
