import Foundation
import Synchronization
import Testing
@testable import Hotplug

/// The follower's CPU limit: the quota files' formats, the ancestor walk, the count rule and the CPU choice as plain
/// tests; and, in child processes on this machine's cgroup v1 `cpu` hierarchy (root only), the follower keeping to a
/// quota that shrinks and grows, a tighter parent, a move to another cgroup, the explicit cap, and quota files it
/// cannot use.
@Suite struct QuotaTests {
    // MARK: Formats and rules

    @Test func cpuMaxIsParsed() {
        #expect(QuotaFormat.cpuMax("max 100000\n") == .unlimited)
        #expect(QuotaFormat.cpuMax("150000 100000\n") == .limited(quota: 150000, period: 100000))
        #expect(QuotaFormat.cpuMax("1000 100000") == .limited(quota: 1000, period: 100000))
        for bad in ["", "max", "150000", "150000 0", "-1 100000", "0 100000", "1.5 100000", "abc 100000",
                    "150000 100000 7", "max max", "+5 100000", "99999999999999999999999 100000"] {
            #expect(QuotaFormat.cpuMax(bad) == nil, "\(bad) should be malformed")
        }
    }

    @Test func cfsQuotaAndValuesAreParsed() {
        #expect(QuotaFormat.cfsQuota("-1\n") == .unlimited)
        #expect(QuotaFormat.cfsQuota("250000\n") == .limited(quota: 250000, period: 0))
        for bad in ["", "0", "-2", "max", "1 2", "garbage"] { #expect(QuotaFormat.cfsQuota(bad) == nil, "\(bad)") }
        #expect(QuotaFormat.value(" 100000\n") == 100000)
        #expect(QuotaFormat.value("0") == nil)
        #expect(QuotaFormat.value("-1") == nil)
    }

    @Test func theCountRoundsUpOrDownWithAMinimumAndACap() throws {
        func count(_ milli: Int, usable: Int = 4, minimum: Int = 1, _ rounding: Follower.Rounding = .up) throws -> Int {
            let quota = try CPUQuota(quota: max(1000, milli * 100), period: 100000)
            return Follower.Limit(quota: quota).cpuCount(usable: usable, minimum: minimum, rounding: rounding)
        }
        // The kubelet's values: quota = milliCPU x 100000 / 1000 (at least 1000).
        #expect(try count(4000) == 4)
        #expect(try count(1500) == 2)
        #expect(try count(1500, .down) == 1)
        #expect(try count(3000) == 3)
        #expect(try count(3000, .down) == 3)
        #expect(try count(500) == 1)
        #expect(try count(500, .down) == 1)            // 0 rounded down, the minimum keeps 1
        #expect(try count(10) == 1)                    // quota 1000: 0.01 CPU
        #expect(try count(500, minimum: 2) == 2)
        #expect(try count(8000) == 4)                  // never more than the usable CPUs
        #expect(try count(2500, usable: 2) == 2)
        #expect(try CPUQuota(quota: 250000, period: 100000).cpus == 2.5)
        #expect(Follower.Limit().cpuCount(usable: 3, minimum: 1, rounding: .up) == 3)
        // The cap overrides the quota, in both directions.
        let tight = try CPUQuota(quota: 100000, period: 100000)
        #expect(Follower.Limit(quota: tight, cap: 3).cpuCount(usable: 4, minimum: 1, rounding: .up) == 3)
        #expect(Follower.Limit(cap: 8).cpuCount(usable: 4, minimum: 1, rounding: .up) == 4)
        #expect(Follower.Limit(quota: tight, cap: 3).source == .cap)
        #expect(Follower.Limit(quota: tight).source == .quota)
        #expect(Follower.Limit().source == nil)
        #expect(throws: HotplugError.self) { try CPUQuota(quota: 0, period: 100000) }
        #expect(throws: HotplugError.self) { try CPUQuota(quota: 1000, period: -1) }
        #expect(Follower.format(cpus: 2.5) == "2.50")
        #expect(Follower.format(cpus: 0.05) == "0.05")
    }

    @Test func theTighterOfTwoQuotasIsComparedExactly() throws {
        let a = try CPUQuota(quota: 150000, period: 100000)   // 1.5
        let b = try CPUQuota(quota: 300000, period: 200000)   // 1.5 too
        let c = try CPUQuota(quota: 149999, period: 100000)
        #expect(!a.isTighter(than: b) && !b.isTighter(than: a))
        #expect(c.isTighter(than: a) && !a.isTighter(than: c))
    }

    @Test func ancestryRunsUpToTheRoot() {
        #expect(CgroupMounts.ancestry(of: "/kubepods/pod1/ctr") == ["/kubepods/pod1/ctr", "/kubepods/pod1", "/kubepods", "/"])
        #expect(CgroupMounts.ancestry(of: "/") == ["/"])
    }

    @Test func theCpuControllerIsFoundInMountinfo() {
        let mounts = CgroupMounts.parse(mountinfo: """
            28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
            29 25 0:26 / /sys/fs/cgroup/cpuset rw,relatime shared:10 - cgroup cgroup rw,cpuset
            """)
        #expect(mounts.v1Cpu == .init(point: "/sys/fs/cgroup/cpu,cpuacct", root: "/"))
        #expect(mounts.v1Cpuset == .init(point: "/sys/fs/cgroup/cpuset", root: "/"))
        let cpuacctOnly = CgroupMounts.parse(mountinfo: "28 25 0:25 / /a rw - cgroup cgroup rw,cpuacct")
        #expect(cpuacctOnly.v1Cpu == nil)
    }

    /// The walk over a made-up file system: the tightest of the cgroup and its ancestors wins (the pod tighter than
    /// its container, as on a shrink the kubelet writes the container first and on a grow the pod first), a level
    /// without the file has none, and a file that cannot be used makes the reading a problem.
    @Test func theTightestAncestorWinsAndProblemsAreNamed() {
        let v2 = CgroupMounts(v2: .init(point: "/cg", root: "/"), v1Cpuset: nil)
        var files: [String: String] = ["/cg/kubepods/pod1/cpu.max": "150000 100000\n",
                                       "/cg/kubepods/pod1/ctr/cpu.max": "400000 100000\n",
                                       "/cg/kubepods/cpu.max": "max 100000\n"]
        let reader: (inout [String: String]) -> CgroupMounts.Reader = { files in
            let snapshot = files
            return { path throws(HotplugError) in
                if snapshot[path] == "EACCES" { throw .system(call: "open", errno: 13) }
                return snapshot[path]
            }
        }
        let membership = "0::/kubepods/pod1/ctr\n"
        var reading = v2.quota(membership: membership, read: reader(&files))
        #expect(reading.tightest?.cgroup == "/kubepods/pod1")
        #expect(reading.tightest?.cpus == 1.5)
        #expect(reading.problem == nil && reading.found)
        files["/cg/kubepods/pod1/ctr/cpu.max"] = "50000 100000\n"
        reading = v2.quota(membership: membership, read: reader(&files))
        #expect(reading.tightest == (try? CPUQuota(quota: 50000, period: 100000, cgroup: "/kubepods/pod1/ctr")))
        files["/cg/kubepods/cpu.max"] = "max"
        reading = v2.quota(membership: membership, read: reader(&files))
        #expect(reading.problem == QuotaProblem(file: "/cg/kubepods/cpu.max", reason: .malformed("max")))
        files["/cg/kubepods/cpu.max"] = "EACCES"
        reading = v2.quota(membership: membership, read: reader(&files))
        #expect(reading.problem?.reason == .unreadable(.system(call: "open", errno: 13)))
        // Nothing to read: no limit, and nothing found.
        reading = v2.quota(membership: "0::/elsewhere\n", read: reader(&files))
        #expect(reading == QuotaReading(tightest: nil, problem: nil, found: false))

        // cgroup v1: the period is read only where there is a quota; a mount whose root is the container's cgroup
        // shows no ancestor above it.
        let v1 = CgroupMounts(v2: nil, v1Cpuset: nil, v1Cpu: .init(point: "/cpu", root: "/pod"))
        var v1Files = ["/cpu/cpu.cfs_quota_us": "200000\n", "/cpu/cpu.cfs_period_us": "100000\n",
                       "/cpu/ctr/cpu.cfs_quota_us": "-1\n"]
        reading = v1.quota(membership: "3:cpu,cpuacct:/pod/ctr\n", read: reader(&v1Files))
        #expect(reading.tightest == (try? CPUQuota(quota: 200000, period: 100000, cgroup: "/pod", version: .v1)))
        v1Files["/cpu/cpu.cfs_period_us"] = "0"
        reading = v1.quota(membership: "3:cpu,cpuacct:/pod/ctr\n", read: reader(&v1Files))
        #expect(reading.problem?.file == "/cpu/cpu.cfs_period_us")
        let weightFiles = ["/cpu/ctr/cpu.shares": "1536\n"]
        #expect(v1.weight(membership: "3:cpu,cpuacct:/pod/ctr\n", read: { path throws(HotplugError) in weightFiles[path] })
                == CPUWeight(value: 1536, version: .v1, cgroup: "/pod/ctr"))
    }

    @Test func theCPUChoiceKeepsNodesBalanced() {
        let node = { (cpu: Int) in cpu / 2 }   // node 0: 0-1, node 1: 2-3
        #expect(CPUChoice.toDetach(2, online: [0, 1, 2, 3], keep: nil, node: node) == [3, 1])
        #expect(CPUChoice.toAttach(1, candidates: [1, 3], online: [0, 2], node: node) == [1])
        #expect(CPUChoice.toDetach(2, online: [0, 1, 2], keep: nil, node: node) == [1, 2])
        #expect(CPUChoice.toAttach(3, candidates: [1, 2, 3], online: [0], node: node) == [2, 1, 3])
        // The follower's own CPU stays; nothing else to give leaves the choice short.
        #expect(CPUChoice.toDetach(2, online: [0, 1, 2, 3], keep: 3, node: node) == [2, 1])
        #expect(CPUChoice.toDetach(2, online: [1], keep: 1, node: node) == [])
        // An unbalanced start is balanced by the grow.
        #expect(CPUChoice.toAttach(2, candidates: [1, 3], online: [0, 2, 4, 5], node: { $0 < 4 ? $0 / 2 : 2 }) == [1, 3])
    }

    @Test func badCapsAndMinimumsAreRefused() throws {
        let m = try Machine(cpus: 1)
        defer { m.shutdown() }
        #expect(throws: HotplugError.invalidArgument(name: "maxCPUs", value: "0", valid: "1 or more, or nil")) {
            try m.follow(.init(maxCPUs: 0))
        }
        #expect(throws: HotplugError.self) { try m.follow(.init(minimumCPUs: 0)) }
        let follower = try m.follow(.init(followCgroup: false, followKernel: false, followQuota: false))
        defer { follower.stop() }
        #expect(throws: HotplugError.self) { try follower.setMaxCPUs(-3) }
    }

    // MARK: Child processes on the cgroup v1 cpu hierarchy

    /// The quota of the child's own cgroup shrinks to 1 CPU: one logical CPU stays online; it grows back: both.
    @Test(.enabled(if: canUseCPUHierarchy))
    func aShrinkingAndGrowingQuotaIsFollowed() async throws {
        let result = try await #require(processExitsWith: .success, observing: [\.standardOutputContent, \.standardErrorContent]) {
            let group = try QuotaGroup("hotplug-quota-\(getpid())")
            defer { group.remove() }
            try group.enter()
            try withFollower { m, log, _ in
                let shrunk = ContinuousClock.now
                try group.setQuota(100_000)
                let resize = log.waitForResize { $0.limit.cpus == 1 && $0.target == 1 }
                check(resize != nil && online(m, 1), "no resize to 1 CPU: online \(m.online), events \(log.all)")
                let r = resize!.0
                check(r.source == .quota && r.limit.quota?.cgroup == group.path && r.detached.count == 1,
                      "unexpected resize \(r)")
                check(r.limit.weight?.value == 1024, "the weight (cpu.shares) is reported: \(r)")
                print("quota 1 CPU: \(r.detached) detached \(resize!.1 - shrunk) after the write (latency \(r.latency))")
                let grown = ContinuousClock.now
                try group.setQuota(-1)
                let back = log.waitForResize { $0.limit.source == nil && $0.attached.count == 1 }
                check(back != nil && online(m, 2), "not grown back: online \(m.online), events \(log.all)")
                print("quota lifted: \(back!.0.attached) attached \(back!.1 - grown) after the write")
                // 1.5 CPUs rounds up to 2 (the default).
                try group.setQuota(150_000)
                check(log.waitForResize { $0.limit.cpus == 1.5 && $0.target == 2 } != nil && online(m, 2),
                      "1.5 CPUs: online \(m.online)")
            }
        }
        printOutput(result)
    }

    /// A parent tighter than the child wins; where the child is the tighter one, the child's own limit rules.
    @Test(.enabled(if: canUseCPUHierarchy))
    func aTighterParentWins() async throws {
        let result = try await #require(processExitsWith: .success, observing: [\.standardOutputContent, \.standardErrorContent]) {
            let parent = try QuotaGroup("hotplug-quota-pod-\(getpid())")
            defer { parent.remove() }
            let child = try QuotaGroup("ctr", in: parent)
            defer { child.remove() }
            // cgroup v1 refuses a child quota above its parent's, so the child has none of its own at first.
            try parent.setQuota(100_000)
            try child.enter()
            try withFollower { m, log, _ in
                let resize = log.waitForResize { $0.target == 1 }
                check(resize?.0.limit.quota?.cgroup == parent.path && online(m, 1),
                      "the parent's limit did not win: online \(m.online), events \(log.all)")
                try parent.setQuota(-1)
                check(log.waitForResize { $0.limit.source == nil } != nil && online(m, 2),
                      "the parent's limit was lifted: online \(m.online), events \(log.all)")
                // Both limited, the parent looser (2 CPUs): the child's own 1-CPU limit rules.
                try parent.setQuota(200_000)
                try child.setQuota(100_000)
                let own = log.waitForResize { $0.target == 1 && $0.limit.quota?.cgroup == child.path }
                check(own != nil && online(m, 1), "the child's own limit: online \(m.online), events \(log.all)")
            }
        }
        printOutput(result)
    }

    /// Moving the process to another cgroup is followed (the follower re-reads `/proc/self/cgroup` at each poll).
    @Test(.enabled(if: canUseCPUHierarchy))
    func aMoveToAnotherCgroupIsFollowed() async throws {
        let result = try await #require(processExitsWith: .success, observing: [\.standardOutputContent, \.standardErrorContent]) {
            let tight = try QuotaGroup("hotplug-quota-a-\(getpid())")
            defer { tight.remove() }
            let loose = try QuotaGroup("hotplug-quota-b-\(getpid())")
            defer { loose.remove() }
            try tight.setQuota(100_000)
            try loose.enter()
            try withFollower { m, log, _ in
                usleep(20_000)
                check(online(m, 2), "nothing limits the loose group: online \(m.online)")
                try tight.enter()
                check(log.waitForResize { $0.target == 1 && $0.limit.quota?.cgroup == tight.path } != nil && online(m, 1),
                      "the move into the tight group was not followed: online \(m.online), events \(log.all)")
                try loose.enter()
                check(log.waitForResize { $0.limit.source == nil } != nil && online(m, 2),
                      "the move back was not followed: online \(m.online), events \(log.all)")
            }
        }
        printOutput(result)
    }

    /// The explicit cap overrides the quota in both directions (`HOTPLUG_MAX_CPUS`, then the option), and nil
    /// goes back to following the quota.
    @Test(.enabled(if: canUseCPUHierarchy))
    func theExplicitCapOverridesTheQuota() async throws {
        let result = try await #require(processExitsWith: .success, observing: [\.standardOutputContent, \.standardErrorContent]) {
            let group = try QuotaGroup("hotplug-quota-cap-\(getpid())")
            defer { group.remove() }
            try group.enter()
            setenv("HOTPLUG_MAX_CPUS", "1", 1)
            try withFollower { m, log, follower in
                check(follower.maxCPUs == 1 && log.waitForResize { $0.source == .cap && $0.target == 1 } != nil
                      && online(m, 1), "HOTPLUG_MAX_CPUS=1 was not followed: online \(m.online), events \(log.all)")
                try follower.setMaxCPUs(nil)   // back to the quota: none
                check(log.waitForResize { $0.limit.source == nil } != nil && online(m, 2),
                      "back to following: online \(m.online), events \(log.all)")
            }
            unsetenv("HOTPLUG_MAX_CPUS")
            try group.setQuota(100_000)
            try withFollower(.init(maxCPUs: 2)) { m, log, follower in
                usleep(30_000)
                check(online(m, 2) && log.resizes.allSatisfy { $0.source == .cap },
                      "the cap of 2 did not override the 1-CPU quota: online \(m.online), events \(log.all)")
                try follower.setMaxCPUs(nil)
                check(log.waitForResize { $0.source == .quota && $0.target == 1 } != nil && online(m, 1),
                      "back to the quota: online \(m.online), events \(log.all)")
            }
        }
        printOutput(result)
    }

    /// A quota file that cannot be used (made up by a bind mount over the cgroup's directory, in a mount namespace
    /// of the child's own) is reported once and changes nothing: nothing is detached when the follower starts on
    /// it, and a limit in force stays in force.
    @Test(.enabled(if: canUseCPUHierarchy))
    func aMalformedOrUnreadableQuotaIsReportedOnceAndChangesNothing() async throws {
        let result = try await #require(processExitsWith: .success, observing: [\.standardOutputContent, \.standardErrorContent]) {
            let group = try QuotaGroup("hotplug-quota-bad-\(getpid())")
            defer { group.remove() }
            try group.setQuota(100_000)
            try group.enter()
            // Before any thread of the machine exists: they inherit this thread's mount namespace.
            check(unshareMountNamespace(), "unshare(CLONE_NEWNS): \(errno)")
            check(mount("none", "/", nil, UInt(MS_REC | MS_PRIVATE), nil) == 0, "mount private: \(errno)")
            let fake = NSTemporaryDirectory() + "hotplug-quota-fake-\(getpid())"
            try FileManager.default.createDirectory(atPath: fake, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: fake) }
            undoOnFailure.append { try? FileManager.default.removeItem(atPath: fake) }
            try "garbage\n".write(toFile: fake + "/cpu.cfs_quota_us", atomically: false, encoding: .utf8)
            check(mount(fake, group.directory, nil, UInt(MS_BIND), nil) == 0, "bind mount: \(errno)")
            undoOnFailure.append { _ = umount(group.directory) }
            try withFollower { m, log, _ in
                let problem = log.wait { if case .quotaUnusable(let p) = $0 { p } else { nil } }
                check(problem?.reason == .malformed("garbage") && problem?.file == group.directory + "/cpu.cfs_quota_us",
                      "no malformed-quota event: \(log.all)")
                usleep(50_000)   // some 50 polls
                check(log.count { if case .quotaUnusable = $0 { true } else { false } } == 1 && online(m, 2)
                      && log.resizes.isEmpty, "a malformed quota changed something: online \(m.online), events \(log.all)")
                // The real file again: its 1-CPU limit is followed.
                check(umount(group.directory) == 0, "umount: \(errno)")
                check(log.waitForResize { $0.target == 1 } != nil && online(m, 1), "the real quota: online \(m.online)")
                // A quota file that cannot be read (a directory: read fails with EISDIR): a new episode, one event,
                // and the 1-CPU limit stays.
                try FileManager.default.removeItem(atPath: fake + "/cpu.cfs_quota_us")
                try FileManager.default.createDirectory(atPath: fake + "/cpu.cfs_quota_us", withIntermediateDirectories: false)
                check(mount(fake, group.directory, nil, UInt(MS_BIND), nil) == 0, "bind mount: \(errno)")
            undoOnFailure.append { _ = umount(group.directory) }
                let unreadable = log.wait { event -> QuotaProblem? in
                    if case .quotaUnusable(let p) = event, case .unreadable = p.reason { p } else { nil }
                }
                check(unreadable?.reason == .unreadable(.system(call: "read", errno: EISDIR)), "no unreadable event: \(log.all)")
                usleep(50_000)
                check(log.count { if case .quotaUnusable = $0 { true } else { false } } == 2 && online(m, 1),
                      "an unreadable quota changed something: online \(m.online), events \(log.all)")
                _ = umount(group.directory)
            }
        }
        printOutput(result)
    }
}

// MARK: - Support

/// Root, a cgroup v1 `cpu` hierarchy, and two CPUs.
private let canUseCPUHierarchy = CgroupMounts.read().v1Cpu != nil && getuid() == 0
    && ((try? Shim.affinity().count) ?? 0) >= 2

/// `unshare(CLONE_NEWNS)` for the calling thread (Glibc's module leaves `unshare` out: it needs `_GNU_SOURCE`).
private func unshareMountNamespace() -> Bool {
    typealias Unshare = @convention(c) (Int32) -> Int32
    guard let process = dlopen(nil, RTLD_NOW), let symbol = dlsym(process, "unshare") else { return false }
    let cloneNewNS: Int32 = 0x0002_0000   // <linux/sched.h>
    return unsafeBitCast(symbol, to: Unshare.self)(cloneNewNS) == 0
}

/// Prints what a child process printed.
private func printOutput(_ result: ExitTest.Result) {
    print(String(decoding: result.standardOutputContent, as: UTF8.self), terminator: "")
    print(String(decoding: result.standardErrorContent, as: UTF8.self), terminator: "")
}

/// A machine of 2 logical CPUs and a follower of the default options (or `options`) around `body`.
private func withFollower(_ options: Machine.FollowOptions = .init(),
                          _ body: (Machine, QuotaLog, Follower) throws -> Void) throws {
    let m = try Machine(cpus: 2)
    let log = QuotaLog()
    let follower = try m.follow(options, onEvent: log.record)
    try body(m, log, follower)
    follower.stop()
    m.shutdown()
}

/// `count` logical CPUs online, within 5 s.
private func online(_ m: Machine, _ count: Int) -> Bool { eventually { m.online.count == count } }

private final class QuotaLog: Sendable {
    let events = Locked<[(Follower.Event, ContinuousClock.Instant)]>([])
    func record(_ event: Follower.Event) { events.withLock { $0.append((event, .now)) } }
    var all: [Follower.Event] { events.withLock { $0.map(\.0) } }
    var resizes: [Follower.Resize] { all.compactMap { if case .resized(let r) = $0 { r } else { nil } } }
    func count(_ match: (Follower.Event) -> Bool) -> Int { all.filter(match).count }

    /// The first event that `extract` maps to a value, waiting up to 5 s.
    func wait<T>(_ extract: (Follower.Event) -> T?) -> T? {
        var found: T?
        _ = eventually { found = all.lazy.compactMap(extract).first; return found != nil }
        return found
    }

    /// The first resize that matches, with when it was recorded, waiting up to 5 s.
    func waitForResize(_ match: (Follower.Resize) -> Bool) -> (Follower.Resize, ContinuousClock.Instant)? {
        var found: (Follower.Resize, ContinuousClock.Instant)?
        _ = eventually {
            for (event, at) in events.withLock({ $0 }) {
                if case .resized(let r) = event, match(r) {
                    found = (r, at)
                    return true
                }
            }
            return false
        }
        return found
    }
}

/// Inside an exit test: what a failed check must undo before the child exits (bind mounts, the groups it made),
/// newest first. Only the exit test's own thread touches it.
nonisolated(unsafe) private var undoOnFailure: [() -> Void] = []

/// Inside an exit test: a failed check undoes what the child set up and ends it with a message (the parent sees a
/// failure).
private func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition {
        FileHandle.standardError.write(Data("check failed: \(message())\n".utf8))
        for undo in undoOnFailure.reversed() { undo() }
        exit(1)
    }
}

/// A cgroup in this machine's v1 `cpu` hierarchy, made for one test process (under the process's own cgroup, or
/// under another such group); `remove()` moves the process back to where it was and deletes the group.
private final class QuotaGroup {
    /// The cgroup path (`/proc/self/cgroup`'s form) and its directory.
    let path: String
    let directory: String
    private let home: String

    init(_ name: String, in parent: QuotaGroup? = nil) throws {
        let mounts = CgroupMounts.read()
        let membership = KernelFile.read("/proc/self/cgroup") ?? ""
        let line = membership.split(separator: "\n").first {
            $0.split(separator: ":", maxSplits: 2)[1].split(separator: ",").contains("cpu")
        }
        let own = line.map { String($0.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)[2]) } ?? "/"
        guard let mount = mounts.v1Cpu, let ownDirectory = CgroupMounts.directory(of: own, under: mount) else {
            throw CocoaError(.fileNoSuchFile)
        }
        home = parent?.home ?? ownDirectory
        path = (parent?.path ?? (own == "/" ? "" : own)) + "/" + name
        directory = (parent?.directory ?? ownDirectory) + "/" + name
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        undoOnFailure.append { [self] in remove() }
    }

    /// Writes `cpu.cfs_quota_us` (-1: no limit); the period stays 100000 us.
    func setQuota(_ microseconds: Int) throws {
        try "\(microseconds)".write(toFile: directory + "/cpu.cfs_quota_us", atomically: false, encoding: .utf8)
    }

    /// Moves the whole process into this group.
    func enter() throws {
        try "\(getpid())".write(toFile: directory + "/cgroup.procs", atomically: false, encoding: .utf8)
    }

    func remove() {
        try? "\(getpid())".write(toFile: home + "/cgroup.procs", atomically: false, encoding: .utf8)
        rmdir(directory)
    }
}
