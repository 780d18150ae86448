/// A CPU bandwidth limit of one cgroup: `quota` microseconds of CPU time every `period` microseconds, that is
/// `quota / period` CPUs (``cpus``). This is how Kubernetes gives a container its CPU limit (`cpu.max` in cgroup v2,
/// `cpu.cfs_quota_us` and `cpu.cfs_period_us` in a cgroup v1 `cpu` hierarchy); the kubelet writes it as
/// `milliCPU x period / 1000` and rewrites it when a pod is resized in place.
///
/// A ``Follower`` reads it for the process's cgroup and every ancestor, and keeps the tightest (see
/// ``Follower/Limit``). The limit is a share of time, not a set of CPUs: it says how many logical CPUs are worth
/// keeping online (``cpuCount(rounding:)``), never which ones.
public struct CPUQuota: Sendable, Equatable, CustomStringConvertible {
    /// Which cgroup version the limit was read from.
    public enum Version: String, Sendable {
        /// A cgroup v1 `cpu` hierarchy: `cpu.cfs_quota_us` and `cpu.cfs_period_us`.
        case v1
        /// The cgroup v2 hierarchy: `cpu.max`.
        case v2
    }

    /// CPU time the cgroup may use every ``period``, in microseconds (positive).
    public let quota: Int
    /// The period, in microseconds (positive).
    public let period: Int
    /// The cgroup the limit belongs to, as `/proc/self/cgroup` names it (the process's own, or an ancestor).
    public let cgroup: String
    /// The hierarchy it was read from.
    public let version: Version

    /// A limit of `quota` microseconds every `period` microseconds; both must be positive.
    /// - Throws: ``HotplugError/invalidArgument(name:value:valid:)`` for a quota or period that is not positive.
    public init(quota: Int, period: Int, cgroup: String = "/", version: Version = .v2) throws(HotplugError) {
        guard quota > 0 else { throw .invalidArgument(name: "quota", value: "\(quota)", valid: "positive microseconds") }
        guard period > 0 else { throw .invalidArgument(name: "period", value: "\(period)", valid: "positive microseconds") }
        self.init(checkedQuota: quota, period: period, cgroup: cgroup, version: version)
    }

    init(checkedQuota quota: Int, period: Int, cgroup: String, version: Version) {
        self.quota = quota
        self.period = period
        self.cgroup = cgroup
        self.version = version
    }

    /// The limit in CPUs (1500000 every 1000000 us: 1.5).
    public var cpus: Double { Double(quota) / Double(period) }

    /// How many whole CPUs the limit is worth: `quota / period` rounded up (what Go, the JDK and .NET do: a
    /// 1.5-CPU limit keeps 2 CPUs busy part of the time) or down (never more threads than the quota can run at
    /// once). Computed in integers, so 1.5 is exactly 2 or 1. Zero only when rounding down a limit under one CPU.
    public func cpuCount(rounding: Follower.Rounding) -> Int {
        switch rounding {
        case .up: quota / period + (quota % period == 0 ? 0 : 1)
        case .down: quota / period
        }
    }

    /// Whether this limit allows fewer CPUs than `other` (compared as fractions, exactly).
    func isTighter(than other: CPUQuota) -> Bool {
        Int128(quota) * Int128(other.period) < Int128(other.quota) * Int128(period)
    }

    public var description: String {
        "\(quota) us / \(period) us (\(Follower.format(cpus: cpus)) CPUs) of \(cgroup) (cgroup \(version.rawValue))"
    }
}

/// The CPU weight of the process's cgroup (`cpu.weight` in cgroup v2, 1...10000, default 100; `cpu.shares` in v1,
/// 2...262144, default 1024): Kubernetes derives it from the container's CPU *request*. It decides how CPU time is
/// shared when CPUs are contended, not how much may be used, so a ``Follower`` reports it for information
/// (``Follower/Limit/weight``) and never follows it as a limit.
public struct CPUWeight: Sendable, Equatable {
    /// The value as the file holds it.
    public let value: Int
    /// `cpu.weight` (v2) or `cpu.shares` (v1).
    public let version: CPUQuota.Version
    /// The cgroup it was read from.
    public let cgroup: String
}

/// A limit file that exists but that a ``Follower`` could not use (``Follower/Event/quotaUnusable(_:)``): the
/// limit in force stays what it was.
public struct QuotaProblem: Sendable, Equatable, CustomStringConvertible {
    /// What was wrong with it.
    public enum Reason: Sendable, Equatable {
        /// Its contents are not a limit (trimmed, at most 64 characters).
        case malformed(String)
        /// It could not be read (``HotplugError/system(call:errno:)``).
        case unreadable(HotplugError)
    }

    /// The file's path.
    public let file: String
    /// Why it was not used.
    public let reason: Reason

    public var description: String {
        switch reason {
        case .malformed(let text): "\(file) holds \"\(text)\", not a CPU limit"
        case .unreadable(let error): "\(file) cannot be read: \(error)"
        }
    }
}

/// What one reading of the quota files found (``CgroupMounts/quota(membership:read:)``).
struct QuotaReading: Sendable, Equatable {
    /// The tightest limit of the cgroup and its ancestors; nil when none has one.
    var tightest: CPUQuota?
    /// The first file that could not be used; the reading then says nothing about the limit.
    var problem: QuotaProblem?
    /// Whether a limit file was found at all (the `cpu` controller is there to read).
    var found = false
}

/// The quota files' formats, parsed in plain Swift.
enum QuotaFormat {
    /// A parsed limit: none, or quota and period.
    enum Limit: Equatable {
        case unlimited
        case limited(quota: Int, period: Int)
    }

    /// cgroup v2 `cpu.max`: `max PERIOD` (no limit) or `QUOTA PERIOD`, both positive integers; nil when malformed.
    static func cpuMax(_ text: String) -> Limit? {
        let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" })
        guard fields.count == 2, let period = positive(fields[1]) else { return nil }
        if fields[0] == "max" { return .unlimited }
        guard let quota = positive(fields[0]) else { return nil }
        return .limited(quota: quota, period: period)
    }

    /// cgroup v1 `cpu.cfs_quota_us`: `-1` (no limit) or a positive integer (the period is another file); nil when
    /// malformed.
    static func cfsQuota(_ text: String) -> Limit? {
        let trimmed = trim(text)
        if trimmed == "-1" { return .unlimited }
        return positive(Substring(trimmed)).map { .limited(quota: $0, period: 0) }
    }

    /// A positive integer alone in a file (`cpu.cfs_period_us`, `cpu.weight`, `cpu.shares`), nil otherwise.
    static func value(_ text: String) -> Int? { positive(Substring(trim(text))) }

    static func trim(_ text: String) -> String {
        String(text.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }

    private static func positive(_ text: Substring) -> Int? {
        guard !text.isEmpty, text.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(text), value > 0 else {
            return nil
        }
        return value
    }
}

extension CgroupMounts {
    /// Reads a file: its contents, nil when it does not exist, or the error (a seam for the parsing tests).
    typealias Reader = (String) throws(HotplugError) -> String?

    /// The cgroup paths from `path` up to the root: `/a/b` gives `/a/b`, `/a`, `/`.
    static func ancestry(of path: String) -> [String] {
        var paths = [path]
        var current = Substring(path)
        while current != "/" && !current.isEmpty {
            guard let slash = current.lastIndex(of: "/") else { break }
            current = slash == current.startIndex ? "/" : current[..<slash]
            paths.append(String(current))
        }
        return paths
    }

    /// The tightest CPU limit of the process's cgroup and every ancestor that this mount namespace shows, in cgroup
    /// v2 and in a v1 `cpu` hierarchy (a controller is on one of them only; both are read, the tightest wins).
    /// `membership` is `/proc/self/cgroup`, read by the caller at each poll so that a move is seen. A level without
    /// the file has no limit (the v2 root has no `cpu.max`); a file that cannot be read or parsed makes the whole
    /// reading a ``QuotaReading/problem``.
    func quota(membership: String, read: Reader = KernelFile.contentsIfPresent) -> QuotaReading {
        var reading = QuotaReading()
        func consider(_ limit: CPUQuota) {
            if reading.tightest.map({ limit.isTighter(than: $0) }) ?? true { reading.tightest = limit }
        }
        func problem(_ file: String, _ reason: QuotaProblem.Reason) -> QuotaReading {
            QuotaReading(tightest: nil, problem: QuotaProblem(file: file, reason: reason), found: true)
        }
        func malformed(_ text: String) -> QuotaProblem.Reason { .malformed(String(QuotaFormat.trim(text).prefix(64))) }
        for line in membership.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            let path = String(parts[2])
            if parts[0] == "0", parts[1].isEmpty, let v2 {
                for cgroup in CgroupMounts.ancestry(of: path) {
                    guard let directory = CgroupMounts.directory(of: cgroup, under: v2) else { break }
                    let file = directory + "/cpu.max"
                    let text: String?
                    do { text = try read(file) } catch { return problem(file, .unreadable(error)) }
                    guard let text else { continue }
                    reading.found = true
                    switch QuotaFormat.cpuMax(text) {
                    case nil: return problem(file, malformed(text))
                    case .unlimited: break
                    case .limited(let quota, let period)?:
                        consider(CPUQuota(checkedQuota: quota, period: period, cgroup: cgroup, version: .v2))
                    }
                }
            } else if parts[1].split(separator: ",").contains("cpu"), let v1Cpu {
                for cgroup in CgroupMounts.ancestry(of: path) {
                    guard let directory = CgroupMounts.directory(of: cgroup, under: v1Cpu) else { break }
                    let file = directory + "/cpu.cfs_quota_us"
                    let text: String?
                    do { text = try read(file) } catch { return problem(file, .unreadable(error)) }
                    guard let text else { continue }
                    reading.found = true
                    switch QuotaFormat.cfsQuota(text) {
                    case nil: return problem(file, malformed(text))
                    case .unlimited: break
                    case .limited(let quota, _)?:
                        // The period only where there is a quota: one read per level in the common case.
                        let periodFile = directory + "/cpu.cfs_period_us"
                        let periodText: String?
                        do { periodText = try read(periodFile) } catch { return problem(periodFile, .unreadable(error)) }
                        guard let periodText, let period = QuotaFormat.value(periodText) else {
                            return problem(periodFile, malformed(periodText ?? ""))
                        }
                        consider(CPUQuota(checkedQuota: quota, period: period, cgroup: cgroup, version: .v1))
                    }
                }
            }
        }
        return reading
    }

    /// The CPU weight of the process's own cgroup (v2 `cpu.weight`, else v1 `cpu.shares`), for information.
    func weight(membership: String, read: Reader = KernelFile.contentsIfPresent) -> CPUWeight? {
        for line in membership.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            let path = String(parts[2])
            if parts[0] == "0", parts[1].isEmpty, let v2, let directory = CgroupMounts.directory(of: path, under: v2),
               let text = (try? read(directory + "/cpu.weight")) ?? nil, let value = QuotaFormat.value(text) {
                return CPUWeight(value: value, version: .v2, cgroup: path)
            }
            if parts[1].split(separator: ",").contains("cpu"), let v1Cpu,
               let directory = CgroupMounts.directory(of: path, under: v1Cpu),
               let text = (try? read(directory + "/cpu.shares")) ?? nil, let value = QuotaFormat.value(text) {
                return CPUWeight(value: value, version: .v1, cgroup: path)
            }
        }
        return nil
    }
}
