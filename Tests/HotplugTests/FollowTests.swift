import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// A thread that only exists so that its affinity mask can stand for "the process's" (changing the test runner's
/// main thread would disturb the tests running beside this one).
private final class ReferenceThread: Sendable {
    let tid: Int32
    private let done = DispatchSemaphore(value: 0)

    init() {
        let ready = DispatchSemaphore(value: 0)
        let box = Locked<Int32>(0)
        let done = self.done
        Thread {
            box.withLock { $0 = Shim.currentThreadID }
            ready.signal()
            done.wait()
        }.start()
        ready.wait()
        tid = box.withLock { $0 }
    }

    func finish() { done.signal() }
}

private final class EventLog: Sendable {
    let events = Locked<[(Follower.Event, ContinuousClock.Instant)]>([])
    func record(_ event: Follower.Event) { events.withLock { $0.append((event, .now)) } }
    func first(_ match: (Follower.Event) -> Bool) -> (Follower.Event, ContinuousClock.Instant)? {
        events.withLock { $0.first { match($0.0) } }
    }
}

@Suite struct FollowTests {
    @Test func kernelCPUListsParse() {
        #expect(Follower.parseList("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11])
        #expect(Follower.parseList("5") == [5])
        #expect(Follower.parseList("") == nil)
        #expect(Follower.parseList("3-1") == nil)
        #expect(Follower.parseList("x") == nil)
    }

    @Test func theMachineFollowsAShrinkingAndGrowingAffinityMask() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let (first, second) = (try m.physicalCPU(of: 0), try m.physicalCPU(of: 1))
        try #require(first != second, "needs two CPUs in the affinity mask")
        let reference = ReferenceThread()
        defer { reference.finish() }
        let original = try Shim.affinity(of: reference.tid)
        let log = EventLog()
        let follower = try m.follow(.init(affinityThread: reference.tid, followCgroup: false, followKernel: false),
                                    onEvent: log.record)
        defer { follower.stop() }

        // Like `taskset -a -p <first>`: the process mask and every thread's mask shrink to the first CPU.
        let shrunk = ContinuousClock.now
        try Shim.setAffinity(thread: reference.tid, cpus: [first])
        try Shim.setAffinity(thread: try #require(try m.threadID(of: 1)), cpus: [first])
        #expect(eventually { log.first { if case .detached(1, second, "affinity mask", _) = $0 { true } else { false } } != nil })
        let detached = try #require(log.first { if case .detached = $0 { true } else { false } })
        print("follow: CPU 1 detached \(detached.1 - shrunk) after the mask shrank (\(detached.0))")
        #expect(m.online == CPUSet([0]))

        // The mask grows again: the CPU comes back, pinned to its own CPU again.
        let grown = ContinuousClock.now
        try Shim.setAffinity(thread: reference.tid, cpus: original)
        #expect(eventually { log.first { if case .attached(1, second, _) = $0 { true } else { false } } != nil })
        let attached = try #require(log.first { if case .attached = $0 { true } else { false } })
        print("follow: CPU 1 attached \(attached.1 - grown) after the mask grew")
        #expect(m.online == CPUSet([0, 1]))
        #expect(try allowedCPUs(ofThread: try #require(try m.threadID(of: 1))) == "\(second)")
    }

    @Test func anOnlineCPUWhosePinningWasBrokenIsPinnedAgain() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let reference = ReferenceThread()
        defer { reference.finish() }
        let log = EventLog()
        let follower = try m.follow(.init(affinityThread: reference.tid, followCgroup: false, followKernel: false),
                                    onEvent: log.record)
        defer { follower.stop() }
        let tid = try #require(try m.threadID(of: 0))
        let physical = try m.physicalCPU(of: 0)
        try Shim.setAffinity(thread: tid, cpus: m.topology.physicalCPUs)   // `taskset -a` with the whole mask
        #expect(eventually { log.first { if case .repinned(0, physical) = $0 { true } else { false } } != nil })
        #expect(try allowedCPUs(ofThread: tid) == "\(physical)")
        #expect(m.online == m.possible)
    }

    @Test func theCgroupCpusetIsReadWhereThereIsOne() throws {
        // On a cgroup v2 host with the cpuset controller, the process's effective cpuset covers its affinity mask;
        // where there is none, there is really no file to read.
        if let cpus = Follower.cgroupCPUs() {
            #expect(Set(try Shim.affinity()).isSubset(of: cpus))
        } else if let line = Shim.readTextFile("/proc/self/cgroup")?.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) {
            let path = String(line.dropFirst(3))
            #expect(Shim.readTextFile("/sys/fs/cgroup\(path == "/" ? "" : path)/cpuset.cpus.effective") == nil)
        }
    }
}
