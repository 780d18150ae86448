import ExampleSupport
import Hotplug
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// What must hold between any two steps: the masks agree with each CPU's lifecycle state, every online CPU's
// thread is pinned to exactly its physical CPU, and a parked CPU's thread uses no CPU time.
extension Demo {
    func checkInvariants() throws {
        let present = machine.present, online = machine.online, active = machine.active
        try check(!online.isEmpty, "at least one CPU online", "online mask is empty")
        try check(active == online, "active == online between operations", "active \(active), online \(online)")
        for cpu in 0..<count {
            let state = try machine.state(of: cpu)
            let inMasks: LogicalCPUState = online.contains(cpu) ? .online : present.contains(cpu) ? .parked : .standby
            try check(state == inMasks, "masks agree with the lifecycle state",
                      "logical CPU \(cpu) is \(state); masks: present \(present), online \(online)")
            try check(!online.contains(cpu) || present.contains(cpu), "online ⊆ present",
                      "online \(online), present \(present)")
            try check((try machine.threadID(of: cpu) != nil) == present.contains(cpu), "present CPUs have a thread",
                      "logical CPU \(cpu): present \(present.contains(cpu)), thread id \(String(describing: try machine.threadID(of: cpu)))")
        }
        try check(present.allSatisfy { $0 < count }, "present ⊆ possible", "present \(present), possible \(count)")
        try checkPinning()
        try checkParkedWatch(force: nil)
    }

    /// Every online CPU's thread is pinned to exactly its physical CPU.
    func checkPinning() throws {
        for cpu in machine.online {
            let problem = ThreadProbe.pinningProblem(machine, cpu: cpu)
            try check(problem == nil, "online CPU's thread pinned to exactly one CPU", problem ?? "")
            pinChecks += 1
        }
    }

    /// Starts watching a parked CPU's thread: from now on its CPU time must not grow.
    func armParkedWatch(_ cpu: Int) throws {
        let tid = try threadID(cpu, "parked")
        try awaitBlocked(cpu, tid, "a parked CPU's")
        // S shows before the thread is off its CPU; its CPU time is final once it has stayed asleep a while.
        let settled = ThreadProbe.settledSleep(tid, milliseconds: 2_000)
        try check(settled != nil, "a parked CPU's thread stays asleep",
                  "logical CPU \(cpu) (tid \(tid)) did not stay asleep for 1 ms within 2 s")
        if let settled { parkedWatch[cpu] = (settled.wall, settled.cpuTime) }
    }

    /// Checks the parked CPUs watched for at least the window (or `force`, after sleeping out its window).
    func checkParkedWatch(force: Int?) throws {
        if let force, let snapshot = parkedWatch[force] {
            let left = snapshot.wall + Demo.parkedWindow - monotonicNanoseconds()
            if left > 0 { usleep(UInt32(left / 1_000)) }
        }
        let now = monotonicNanoseconds()
        for (cpu, snapshot) in parkedWatch.sorted(by: { $0.key < $1.key }) where now - snapshot.wall >= Demo.parkedWindow {
            try check(try machine.state(of: cpu) == .parked, "watched CPU still parked", "logical CPU \(cpu)")
            let tid = try threadID(cpu, "parked")
            let time = try cpuTime(cpu, tid)
            let elapsed = monotonicNanoseconds() - snapshot.wall
            let growth = time - snapshot.cpu
            maxParkedGrowth = max(maxParkedGrowth, growth)
            parkedChecks += 1
            try check(ThreadProbe.isIdle(growth: growth, elapsed: elapsed), "a parked CPU's thread CPU time does not grow",
                      "logical CPU \(cpu) (tid \(tid)) used \(growth) ns of CPU time in \(elapsed / 1_000_000) ms while parked")
            parkedWatch[cpu] = (monotonicNanoseconds(), time)
        }
    }
}
