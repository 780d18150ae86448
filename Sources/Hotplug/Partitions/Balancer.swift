/// How loaded one partition was over the last sampling interval.
public struct PartitionLoad: Sendable, Equatable {
    public let name: String
    /// Processors the partition owned at the end of the interval.
    public let processors: Int
    /// Tasklet runs queued on its CPUs and not yet taken.
    public let queuedTasklets: Int
    /// The share of its processors' time its CPUs had work during the interval (0...1): time not parked in the
    /// idle wait (``Machine/idleTime(of:)``), so a CPU with work all the time counts as busy even when other
    /// threads or a CPU quota leave it little CPU time. A CPU that came online during the interval adds nothing.
    public let busy: Double
    /// One number to compare partitions: ``busy`` plus queued tasklets per processor over `queueScale`.
    public let pressure: Double
}

/// A move a ``BalancerPolicy`` wants: `count` processors from partition `from` to partition `to` (indices into the
/// loads it was given). The balancer makes it as one bulk move (one stop_machine on each side, however many
/// processors), and gives at most what leaves `from` one processor.
public struct BalancerDecision: Sendable, Equatable {
    public var from: Int
    public var to: Int
    /// Processors to move; a decision with a count below 1 moves nothing.
    public var count: Int

    public init(from: Int, to: Int, count: Int = 1) {
        self.from = from
        self.to = to
        self.count = count
    }
}

/// Decides which partition gives processors to which, and how many, from their loads. Pluggable: a ``Balancer``
/// asks its policy after every sample.
public protocol BalancerPolicy: Sendable {
    /// A move to make now (`from` keeps at least one processor: the balancer checks), or nil.
    mutating func decide(_ loads: [PartitionLoad]) -> BalancerDecision?
}

/// The default policy: move processors from the least to the most pressed partition when the most pressed is at or
/// above ``high``, the least at or below ``low`` and has more than one processor, for ``patience`` consecutive
/// samples (hysteresis: short bursts move nothing); then wait ``cooldown`` samples before the next move, so that the
/// receiver's load can settle.
///
/// How many: a partition's pressure times its processors is the work it has, in processors. The move gives the
/// receiver enough processors for its work to sit at the middle of `low...high`, as far as the donor can give
/// without its own work going above that middle, at least one and at most ``maxStep``. A partition that is
/// saturated (pressure 1, its demand unknown) therefore grows by about half again per move; one that queues work
/// far beyond its processors grows faster.
public struct HysteresisPolicy: BalancerPolicy {
    public private(set) var high: Double
    public private(set) var low: Double
    public private(set) var patience: Int
    public private(set) var cooldown: Int
    /// The most processors one move gives.
    public private(set) var maxStep: Int
    private var streak: (from: Int, to: Int, count: Int)?
    private var quiet = 0

    /// The default policy (`high` 0.6, `low` 0.3, `patience` 3, `cooldown` 3, `maxStep` 8).
    public static let standard = HysteresisPolicy(checked: 0.6, 0.3, 3, 3, 8)

    /// - Parameters:
    ///   - high: the pressure at or above which a partition gets processors; finite, at least `low`.
    ///   - low: the pressure at or below which a partition gives some; finite, at least 0.
    ///   - patience: consecutive samples the same move must be wanted before it is made; at least 1.
    ///   - cooldown: samples to wait after a move; at least 0.
    ///   - maxStep: the most processors one move gives; at least 1 (1: one processor per move).
    /// - Throws: ``HotplugError/invalidArgument(name:value:valid:)`` for a number out of those ranges (a NaN
    ///   threshold would never move anything, a `low` above `high` would move processors back and forth).
    public init(high: Double = 0.6, low: Double = 0.3, patience: Int = 3, cooldown: Int = 3,
                maxStep: Int = 8) throws(HotplugError) {
        guard low.isFinite, low >= 0 else {
            throw .invalidArgument(name: "low", value: "\(low)", valid: "a finite number >= 0")
        }
        guard high.isFinite, high >= low else {
            throw .invalidArgument(name: "high", value: "\(high)", valid: "a finite number >= low (\(low))")
        }
        guard patience >= 1 else { throw .invalidArgument(name: "patience", value: "\(patience)", valid: ">= 1") }
        guard cooldown >= 0 else { throw .invalidArgument(name: "cooldown", value: "\(cooldown)", valid: ">= 0") }
        guard maxStep >= 1 else { throw .invalidArgument(name: "maxStep", value: "\(maxStep)", valid: ">= 1") }
        self.init(checked: high, low, patience, cooldown, maxStep)
    }

    private init(checked high: Double, _ low: Double, _ patience: Int, _ cooldown: Int, _ maxStep: Int) {
        self.high = high
        self.low = low
        self.patience = patience
        self.cooldown = cooldown
        self.maxStep = maxStep
    }

    public mutating func decide(_ loads: [PartitionLoad]) -> BalancerDecision? {
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
        return BalancerDecision(from: from, to: to, count: processorsToMove(from: loads[from], to: loads[to]))
    }

    /// Processors to move (see the type's discussion): what brings the receiver's work to the middle pressure,
    /// limited by what keeps the donor's at or below it and by ``maxStep``; at least 1.
    func processorsToMove(from donor: PartitionLoad, to receiver: PartitionLoad) -> Int {
        let middle = max((high + low) / 2, 0.01)   // high == low == 0 would divide by zero
        let wanted = Int((receiver.pressure * Double(max(1, receiver.processors)) / middle).rounded(.up))
            - receiver.processors
        let kept = max(1, Int((donor.pressure * Double(donor.processors) / middle).rounded(.up)))
        let spare = donor.processors - kept
        return max(1, min(wanted, spare, maxStep))
    }
}

/// Samples the partitions of a pool and moves processors from idle to loaded ones, as its policy says.
///
/// ``step()`` samples once and makes at most one move, of as many processors as the policy decided, as one bulk move
/// (``CPUPool/move(_:from:to:)-([Int],_,_)``: one stop_machine per side whatever the count). A processor whose move
/// fails (an injected or real hotplug failure) is reported, the others of the step move regardless, and the next step
/// goes on. ``start(interval:onOutcome:)`` runs steps on a thread of its own until ``stop()``.
public final class Balancer: @unchecked Sendable {
    // @unchecked: `policy` and the baselines are touched only under `lock` (step is serialised).
    public let pool: CPUPool
    public let partitions: [Partition]
    /// Queued tasklets per processor that count as a pressure of 1.
    public let queueScale: Double
    private var policy: any BalancerPolicy
    private let lock = Lock()
    /// Per partition: online logical CPU -> its idle time at the last sample; and that sample's time.
    private var baselines: [[Int: Duration]]
    private var sampledAt: ContinuousClock.Instant
    /// The thread of ``start(interval:onOutcome:)`` while it runs.
    private let loop = Locked<PeriodicThread?>(nil)

    /// What one step did.
    public enum Outcome: Sendable {
        case stayed
        /// At least one processor moved: one ``CPUPool/Move`` each, all with the step's bulk detach and attach
        /// times; `failures` are the processors of the same step that did not move (back with the donor, or owned by
        /// nobody when even that failed: a critical log message says so).
        case moved([CPUPool.Move], failures: [Int: HotplugError])
        /// No processor of the step moved; `error` is the first processor's failure.
        case failed(from: String, to: String, processors: [Int], error: HotplugError)
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
            // Busy time is the interval less the idle time's growth, not the threads' CPU time: a CPU that has
            // work but shares its physical CPU with other threads (or is throttled by a quota) runs little, yet
            // its partition needs processors all the same.
            var idle: [Int: Duration] = [:]
            var worked = 0.0
            var queued = 0
            for cpu in machine.online {
                queued += (try? machine.queuedTasklets(on: cpu)) ?? 0
                guard let time = try? machine.idleTime(of: cpu) else { continue }   // throws only for a bad id
                idle[cpu] = time
                // Clamped to 0...elapsed: a read racing the end of a park may count a little more idle time than
                // there was, in either sample.
                if let before = baselines[index][cpu] { worked += min(elapsed, max(0, elapsed - (time - before).seconds)) }
            }
            baselines[index] = idle
            let processors = idle.count
            let busy = processors == 0 ? 0 : min(1, worked / (elapsed * Double(processors)))
            let pressure = busy + Double(queued) / (Double(max(1, processors)) * queueScale)
            return PartitionLoad(name: partition.name, processors: processors, queuedTasklets: queued, busy: busy,
                                 pressure: pressure)
        }
    }

    /// Samples, asks the policy, and makes at most one move: the donor's highest-numbered processors, as many as
    /// the policy decided and the donor can give while keeping one, in one bulk move.
    @discardableResult
    public func step() -> Outcome {
        lock.withLock {
            let loads = sampleLocked()
            guard let decision = policy.decide(loads), decision.count >= 1,
                  loads.indices.contains(decision.from), loads.indices.contains(decision.to), decision.from != decision.to
            else { return .stayed }
            let from = partitions[decision.from], to = partitions[decision.to]
            let owned = from.ownedProcessors
            guard owned.count > 1 else { return .stayed }
            let processors = Array(owned.suffix(min(decision.count, owned.count - 1)))
            do throws(HotplugError) {
                let bulk = try pool.move(processors, from: from, to: to)
                guard !bulk.moved.isEmpty else {
                    let first = processors.first { bulk.failures[$0] != nil }
                    return .failed(from: from.name, to: to.name, processors: processors,
                                   error: first.flatMap { bulk.failures[$0] } ?? .invalidConfiguration("nothing moved"))
                }
                let moves = bulk.moved.map {
                    CPUPool.Move(processor: $0, from: from.name, to: to.name, detach: bulk.detach, attach: bulk.attach)
                }
                return .moved(moves, failures: bulk.failures)
            } catch {
                return .failed(from: from.name, to: to.name, processors: processors, error: error)
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
