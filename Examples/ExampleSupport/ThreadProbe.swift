import Hotplug

/// Checks of a logical CPU's thread from the outside, through /proc: where it may run, and whether it burns CPU
/// time while it should sleep (docs/ARCHITECTURE.md, "Logical CPUs and their threads": pinned to exactly one CPU; a
/// parked thread's CPU time does not grow).
public enum ThreadProbe {
    /// A parked or stopped thread may burn at most this share of a core: 0.1% (docs/ARCHITECTURE.md, "Performance
    /// goals").
    public static let idleGrowthPerMille: Int64 = 1

    /// True when `growth` nanoseconds of CPU time in `elapsed` nanoseconds of wall time stay within
    /// ``idleGrowthPerMille`` of a core, plus `slack` nanoseconds.
    public static func isIdle(growth: Int64, elapsed: Int64, slack: Int64 = 0) -> Bool {
        growth * 1_000 <= elapsed * idleGrowthPerMille + slack * 1_000
    }

    /// Nil when the thread of `cpu` is allowed on exactly its physical CPU (`Cpus_allowed_list`); otherwise what
    /// is wrong, in words.
    public static func pinningProblem(_ machine: Machine, cpu: Int) -> String? {
        let tid: Int32?, physical: Int
        do {
            tid = try machine.threadID(of: cpu)
            physical = try machine.physicalCPU(of: cpu)
        } catch {
            return "logical CPU \(cpu): \(error)"
        }
        guard let tid else { return "logical CPU \(cpu) has no thread" }
        let allowed = ProcFS.cpusAllowed(tid)
        guard allowed != [physical] else { return nil }
        return "logical CPU \(cpu) (tid \(tid)): Cpus_allowed_list \(allowed.map { "\($0)" } ?? "unreadable"), "
            + "expected [\(physical)]"
    }

    /// True when the thread sleeps in the kernel (state S in /proc/self/task/TID/stat).
    ///
    /// - Warning: S alone does not make its CPU time final. The kernel shows S from the moment the thread sets
    ///   its state on the way into the wait, while it still runs on its CPU towards `schedule()`; the CPU time it
    ///   used since the last scheduler tick is added to schedstat only at that switch (measured: up to 275 us
    ///   later). Use ``sleepReading(_:)`` twice, ``isSettled(_:_:)``, or ``settledSleep(_:milliseconds:)``.
    public static func isBlocked(_ tid: Int32) -> Bool { ProcFS.threadState(tid) == "S" }

    /// One look at a sleeping thread: its CPU time and voluntary context switches, and when it was taken.
    public struct SleepReading: Sendable, Equatable {
        public let wall: Int64
        public let cpuTime: Int64
        /// The resolution of `cpuTime` (1 ns from schedstat, a clock tick from stat's utime + stime).
        public let resolution: Int64
        public let voluntarySwitches: Int
    }

    /// Two readings at least this far apart that agree show a thread that is really off its CPU.
    public static let settleNanoseconds: Int64 = 1_000_000

    /// The thread's CPU time and switches when it is in state S, nil when it is not (or /proc cannot be read).
    public static func sleepReading(_ tid: Int32) -> SleepReading? {
        guard let before = ProcFS.contextSwitches(tid), isBlocked(tid),
              let time = ProcFS.threadCPUTimeWithResolution(tid),
              let after = ProcFS.contextSwitches(tid), after.voluntary == before.voluntary, isBlocked(tid)
        else { return nil }
        return SleepReading(wall: monotonicNanoseconds(), cpuTime: time.nanoseconds, resolution: time.resolution,
                            voluntarySwitches: after.voluntary)
    }

    /// True when `later` (at least ``settleNanoseconds`` after `earlier`) shows the same CPU time and no new
    /// voluntary switch: the thread did not run in between, so `earlier` already held its final CPU time.
    public static func isSettled(_ earlier: SleepReading, _ later: SleepReading) -> Bool {
        later.wall - earlier.wall >= settleNanoseconds && later.cpuTime == earlier.cpuTime
            && later.voluntarySwitches == earlier.voluntarySwitches
    }

    /// Waits (at most `milliseconds`) until the thread sleeps and stays asleep for ``settleNanoseconds``; returns
    /// the first of the two agreeing readings, from which its CPU time must not grow.
    public static func settledSleep(_ tid: Int32, milliseconds: Int64) -> SleepReading? {
        var candidate: SleepReading?
        var settled: SleepReading?
        _ = waitUntil(milliseconds) {
            guard let reading = sleepReading(tid) else {
                candidate = nil
                return false
            }
            if let earlier = candidate, reading.wall - earlier.wall >= settleNanoseconds {
                if isSettled(earlier, reading) {
                    settled = earlier
                    return true
                }
                candidate = reading
            } else if candidate == nil {
                candidate = reading
            }
            return false
        }
        return settled
    }
}
