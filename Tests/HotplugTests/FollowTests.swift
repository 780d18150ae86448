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
    @Test func theMachineFollowsAShrinkingAndGrowingAffinityMask() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let (first, second) = (try m.physicalCPU(of: 0), try m.physicalCPU(of: 1))
        try #require(first != second, "needs two CPUs in the affinity mask")
        let reference = ReferenceThread()
        defer { reference.finish() }
        let original = try Shim.affinity(of: reference.tid)
        let log = EventLog()
        let follower = try m.follow(affinityOnly(reference.tid), onEvent: log.record)
        defer { follower.stop() }

        // Like `taskset -a -p <first>`: the process mask and every thread's mask shrink to the first CPU.
        let shrunk = ContinuousClock.now
        try Shim.setAffinity(thread: reference.tid, cpus: [first])
        try Shim.setAffinity(thread: try #require(try m.threadID(of: 1)), cpus: [first])
        #expect(eventually { log.first { if case .detached(1, second, [.affinity], _, _) = $0 { true } else { false } } != nil })
        let detached = try #require(log.first { if case .detached = $0 { true } else { false } })
        print("follow: CPU 1 detached \(detached.1 - shrunk) after the mask shrank (\(detached.0))")
        #expect(m.online == CPUSet([0]))

        // The mask grows again: the CPU comes back, pinned to its own CPU again.
        let grown = ContinuousClock.now
        try Shim.setAffinity(thread: reference.tid, cpus: original)
        #expect(eventually { log.first { if case .attached(1, second, _, _) = $0 { true } else { false } } != nil })
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
        let follower = try m.follow(affinityOnly(reference.tid), onEvent: log.record)
        defer { follower.stop() }
        let tid = try #require(try m.threadID(of: 0))
        let physical = try m.physicalCPU(of: 0)
        try Shim.setAffinity(thread: tid, cpus: m.topology.physicalCPUs)   // `taskset -a` with the whole mask
        #expect(eventually { log.first { if case .repinned(0, physical) = $0 { true } else { false } } != nil })
        #expect(try allowedCPUs(ofThread: tid) == "\(physical)")
        #expect(m.online == m.possible)
    }

    /// `stop()` from the follower's own event handler returns; the follower makes no change after the handler,
    /// and its thread ends. Bounded: a stop that never returns fails the test (the follower is leaked then).
    @Test func aFollowerStoppedFromItsOwnHandlerStops() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        try #require(m.topology.physicalCPUs.count >= 2, "needs two CPUs to break a pinning")
        let reference = ReferenceThread()
        defer { reference.finish() }
        let follower = Locked<Follower?>(nil)
        let handled = Locked<(events: Int, returned: Int, thread: Int32)>((0, 0, 0))
        let made = try m.follow(affinityOnly(reference.tid)) { _ in
            handled.withLock { $0.events += 1; $0.thread = Shim.currentThreadID }
            follower.withLock { $0 }?.stop()
            handled.withLock { $0.returned += 1 }
        }
        follower.withLock { $0 = made }
        let tid = try #require(try m.threadID(of: 0))
        try Shim.setAffinity(thread: tid, cpus: m.topology.physicalCPUs)   // the follower repins it: one event
        guard eventually(timeout: .seconds(5), { handled.withLock { $0.returned } == 1 }) else {
            Issue.record("stop() from the event handler did not return")
            return
        }
        let thread = handled.withLock { $0.thread }
        #expect(eventually { !threadExists(thread) }, "the follower's thread did not end")
        try Shim.setAffinity(thread: tid, cpus: m.topology.physicalCPUs)   // no follower to repin it now
        usleep(20_000)
        #expect(handled.withLock { $0.events } == 1)
        #expect(try allowedCPUs(ofThread: tid) != "\(try m.physicalCPU(of: 0))")
        made.stop()   // idempotent, from another thread
    }

    /// A follower dropped without `stop()` ends its thread and no longer keeps the machine alive.
    @Test func aDroppedFollowerEndsItsThreadAndReleasesTheMachine() throws {
        let reference = ReferenceThread()
        defer { reference.finish() }
        weak var weakMachine: Machine?
        let thread = Locked<Int32>(0)
        do {
            let m = try Machine(cpus: 2)
            weakMachine = m
            try #require(m.topology.physicalCPUs.count >= 2, "needs two CPUs to break a pinning")
            var follower: Follower? = try m.follow(affinityOnly(reference.tid)) { _ in
                thread.withLock { $0 = Shim.currentThreadID }
            }
            // One event tells which thread is the follower's.
            try Shim.setAffinity(thread: try #require(try m.threadID(of: 0)), cpus: m.topology.physicalCPUs)
            #expect(eventually { thread.withLock { $0 } != 0 })
            #expect(follower != nil)
            follower = nil
        }
        let tid = thread.withLock { $0 }
        #expect(eventually { !threadExists(tid) }, "the dropped follower's thread still runs")
        #expect(eventually { weakMachine == nil }, "the dropped follower keeps the machine alive")
        weakMachine?.shutdown()   // only when the test failed: the machine was leaked
    }

    @Test func theLastOnlineCPUStaysAndItsFailedDetachIsReportedOnce() throws {
        let m = try Machine(cpus: 2)
        defer { m.shutdown() }
        let (first, second) = (try m.physicalCPU(of: 0), try m.physicalCPU(of: 1))
        try #require(first != second, "needs two CPUs in the affinity mask")
        try m.offline(1)   // the program's own detach: the follower leaves CPU 1 alone
        let reference = ReferenceThread()
        defer { reference.finish() }
        let log = EventLog()
        let follower = try m.follow(affinityOnly(reference.tid), onEvent: log.record)
        defer { follower.stop() }
        try Shim.setAffinity(thread: reference.tid, cpus: [second])   // CPU 0's physical CPU goes away
        #expect(eventually { log.first { if case .failed(0, .offline, .busy(0, .lastOnlineCPU)) = $0 { true } else { false } } != nil })
        usleep(50_000)   // some 50 polls, each retrying the detach
        let failures = log.events.withLock { $0.filter { if case .failed = $0.0 { true } else { false } }.count }
        #expect(failures == 1)
        #expect(m.online == CPUSet([0]))
        #expect(follower.detachedCPUs.isEmpty)
    }

    @Test func cgroupMountsAreFoundInMountinfo() {
        let mountinfo = """
            25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
            28 25 0:25 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
            29 25 0:26 / /sys/fs/cgroup/cpuset rw,relatime shared:10 - cgroup cgroup rw,cpuset
            30 25 0:27 /kubepods/pod1 /sys/fs/cgroup/unified\\040dir rw - cgroup2 cgroup2 rw
            """
        let mounts = CgroupMounts.parse(mountinfo: mountinfo)
        #expect(mounts.v1Cpuset == .init(point: "/sys/fs/cgroup/cpuset", root: "/"))
        #expect(mounts.v2 == .init(point: "/sys/fs/cgroup/unified dir", root: "/kubepods/pod1"))
        #expect(CgroupMounts.directory(of: "/kubepods/pod1/c", under: mounts.v2!) == "/sys/fs/cgroup/unified dir/c")
        #expect(CgroupMounts.directory(of: "/kubepods/pod1", under: mounts.v2!) == "/sys/fs/cgroup/unified dir")
        #expect(CgroupMounts.directory(of: "/other", under: mounts.v2!) == nil)
        #expect(CgroupMounts.directory(of: "/", under: mounts.v1Cpuset!) == "/sys/fs/cgroup/cpuset")
        #expect(CgroupMounts.parse(mountinfo: "garbage\n1 2 3").v2 == nil)
    }

    @Test func theCgroupCpusetIsReadWhereThereIsOne() throws {
        // Where the process's cgroup has a readable cpuset (v2 or v1), it covers the process's affinity mask; where
        // neither hierarchy carries one, there is really nothing to read.
        let mounts = CgroupMounts.read()
        if let cpus = Follower.cgroupCPUs() {
            #expect(Set(try Shim.affinity()).isSubset(of: cpus))
        } else {
            #expect(mounts.v1Cpuset == nil)
            if let v2 = mounts.v2 {
                #expect(KernelFile.read(v2.point + "/cpuset.cpus.effective") == nil)
            }
        }
    }

    @Test func aRealtimeFollowerRunsAtSCHEDFIFOOrIsRefusedWithAnError() throws {
        let m = try Machine(cpus: 1)
        defer { m.shutdown() }
        func fifoThreads() throws -> Int {
            try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").compactMap(Int32.init)
                .filter { sched_getscheduler($0) == SCHED_FIFO }.count
        }
        let before = try fifoThreads()
        do throws(HotplugError) {
            let follower = try m.follow(.init(realtimePriority: 1))
            #expect((try? fifoThreads()) == before + 1)
            follower.stop()
        } catch {
            // Without CAP_SYS_NICE the kernel refuses: a typed error, and no thread left behind.
            guard case .system(_, let code) = error else { Issue.record("unexpected \(error)"); return }
            #expect(code == EPERM)
        }
        // Priority 0 is not a SCHED_FIFO priority: refused whatever the privileges.
        #expect(throws: HotplugError.self) { try m.follow(.init(realtimePriority: 0)) }
        #expect(eventually { (try? fifoThreads()) == before })
    }

    /// Like `taskset -a -p`: every thread of the process gets the new mask. Run in a child process (an exit
    /// test), whose whole mask may change without disturbing the tests beside it.
    @Test func theWholeProcessMaskIsFollowed() async throws {
        try #require(try Shim.affinity().count >= 2, "needs two CPUs in the affinity mask")
        let result = try await #require(processExitsWith: .success, observing: [\.standardOutputContent, \.standardErrorContent]) {
            let original = try Shim.affinity()
            try followShrinkingAndGrowing("process mask", source: .affinity,
                                          shrink: { first in try setEveryThreadsAffinity(to: [first]) },
                                          grow: { try setEveryThreadsAffinity(to: original) })
        }
        print(String(decoding: result.standardOutputContent, as: UTF8.self), terminator: "")
        print(String(decoding: result.standardErrorContent, as: UTF8.self), terminator: "")
    }

    /// Where this machine lets the test create a cgroup v1 cpuset (root, a cpuset hierarchy), a child process moves
    /// itself into a new one and shrinks, then grows, its `cpuset.cpus`: the kernel changes every thread's mask and
    /// the runtime follows both changes (the cgroup source among those that dropped the CPU).
    @Test(.enabled(if: CgroupMounts.read().v1Cpuset != nil && getuid() == 0 && ((try? Shim.affinity().count) ?? 0) >= 2))
    func aShrinkingCgroupCpusetIsFollowed() async throws {
        let result = try await #require(processExitsWith: .success, observing: [\.standardOutputContent, \.standardErrorContent]) {
            let group = try CpusetGroup(name: "hotplug-follow-test-\(getpid())")
            defer { group.remove() }
            check(Follower.cgroupCPUs() == Set(group.cpus), "the follower reads \(String(describing: Follower.cgroupCPUs())), the group has \(group.cpus)")
            try followShrinkingAndGrowing("cpuset.cpus", source: .cgroup,
                                          shrink: { first in try group.setCPUs([first]) },
                                          grow: { try group.setCPUs(group.cpus) })
        }
        print(String(decoding: result.standardOutputContent, as: UTF8.self), terminator: "")
        print(String(decoding: result.standardErrorContent, as: UTF8.self), terminator: "")
    }
}

/// Options that follow only the affinity mask of thread `tid`: no cgroup cpuset, kernel mask or CPU quota (a test
/// runner in a container with a CPU limit would otherwise see its limit followed too).
private func affinityOnly(_ tid: Int32) -> Machine.FollowOptions {
    .init(affinityThread: tid, followCgroup: false, followKernel: false, followQuota: false)
}

/// Inside an exit test: a machine of 2 logical CPUs follows `shrink` (given the first CPU's physical CPU: the
/// process may use only that one now) and `grow`. CPU 1 must be detached with `source` among the sources that
/// dropped it, attached again, and both threads pinned to their CPUs again (a mask change widens CPU 0's too).
private func followShrinkingAndGrowing(_ what: String, source: Follower.Source, shrink: (Int) throws -> Void,
                                       grow: () throws -> Void) throws {
    let m = try Machine(cpus: 2)
    let (first, second) = (try m.physicalCPU(of: 0), try m.physicalCPU(of: 1))
    let log = EventLog()
    let follower = try m.follow(onEvent: log.record)
    let shrunk = ContinuousClock.now
    try shrink(first)
    let detached = waitFor(log) { if case .detached(1, second, let sources, _, _) = $0 { sources.contains(source) } else { false } }
    print("\(what) shrank: CPU 1 \(detached.map { "detached \($0.1 - shrunk) after it (\($0.0))" } ?? "NOT detached")")
    check(detached != nil && m.online == CPUSet([0]), "CPU 1 was not detached: online \(m.online)")
    let grown = ContinuousClock.now
    try grow()
    let attached = waitFor(log) { if case .attached(1, second, _, _) = $0 { true } else { false } }
    print("\(what) grew: CPU 1 \(attached.map { "attached \($0.1 - grown) after it" } ?? "NOT attached")")
    check(attached != nil && m.online == CPUSet([0, 1]), "CPU 1 was not attached again: online \(m.online)")
    check(eventually { (try? allowedCPUs(ofThread: m.threadID(of: 0)!)) == "\(first)" &&
                           (try? allowedCPUs(ofThread: m.threadID(of: 1)!)) == "\(second)" },
          "threads not pinned again")
    follower.stop()
    m.shutdown()
}

/// Inside an exit test: a failed check ends the child process with a message (the parent sees a failure).
private func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition {
        FileHandle.standardError.write(Data("check failed: \(message())\n".utf8))
        exit(1)
    }
}

private func waitFor(_ log: EventLog, _ match: (Follower.Event) -> Bool) -> (Follower.Event, ContinuousClock.Instant)? {
    _ = eventually { log.first(match) != nil }
    return log.first(match)
}

/// Every thread of this process (`/proc/self/task`) gets `cpus`, twice (a thread created meanwhile inherits the
/// mask of its creator, which may not have had the new one yet).
private func setEveryThreadsAffinity(to cpus: [Int]) throws {
    for _ in 0..<2 {
        for entry in try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task") {
            guard let tid = Int32(entry) else { continue }
            do { try Shim.setAffinity(thread: tid, cpus: cpus) } catch { /* the thread exited meanwhile */ }
        }
    }
}

/// A cgroup v1 cpuset made for one test process, which moves into it; `remove()` moves it back and deletes it.
private final class CpusetGroup {
    let parent: String
    let directory: String
    let cpus: [Int]

    init(name: String) throws {
        let mounts = CgroupMounts.read()
        let membership = KernelFile.read("/proc/self/cgroup") ?? ""
        let line = membership.split(separator: "\n").first { $0.split(separator: ":", maxSplits: 2)[1].split(separator: ",").contains("cpuset") }
        let path = line.map { String($0.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)[2]) } ?? "/"
        guard let mount = mounts.v1Cpuset, let parent = CgroupMounts.directory(of: path, under: mount) else {
            throw CocoaError(.fileNoSuchFile)
        }
        self.parent = parent
        directory = parent + "/" + name
        cpus = try Shim.affinity()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        let mems = KernelFile.read(parent + "/cpuset.effective_mems") ?? KernelFile.read(parent + "/cpuset.mems") ?? "0"
        try write(mems, to: "cpuset.mems")
        try setCPUs(cpus)
        try write("\(getpid())", to: "cgroup.procs")
    }

    func setCPUs(_ cpus: [Int]) throws { try write(cpus.map(String.init).joined(separator: ","), to: "cpuset.cpus") }

    func remove() {
        try? "\(getpid())".write(toFile: parent + "/cgroup.procs", atomically: false, encoding: .utf8)
        rmdir(directory)
    }

    private func write(_ text: String, to file: String) throws {
        try text.write(toFile: directory + "/" + file, atomically: false, encoding: .utf8)
    }
}
